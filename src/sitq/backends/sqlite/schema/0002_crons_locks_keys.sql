-- Version 2: cron schedules, locks, and concurrency keys. Tasks with a key leave the unkeyed
-- claim index for indexes of their own; ``parked`` marks pending keyed tasks set aside because
-- their key was full, so that claims never walk over them again until a slot frees.
CREATE TABLE sitq_crons (
    name TEXT PRIMARY KEY,
    definition BLOB NOT NULL,
    last_tick REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE sitq_locks (
    name TEXT PRIMARY KEY,
    token TEXT NOT NULL,
    expires_at REAL NOT NULL
) WITHOUT ROWID;
ALTER TABLE sitq_tasks ADD COLUMN parked INTEGER NOT NULL DEFAULT 0;
DROP INDEX sitq_tasks_due;
CREATE INDEX sitq_tasks_due
    ON sitq_tasks (queue, priority DESC, eta, seq) WHERE state = 0 AND concurrency_key IS NULL;
CREATE INDEX sitq_tasks_keyed_due
    ON sitq_tasks (queue, priority DESC, eta, seq, concurrency_key, concurrency_limit)
    WHERE state = 0 AND concurrency_key IS NOT NULL AND parked = 0;
CREATE INDEX sitq_tasks_keyed
    ON sitq_tasks (queue, concurrency_key, parked, priority DESC, eta, seq, concurrency_limit)
    WHERE state = 0 AND concurrency_key IS NOT NULL;
CREATE INDEX sitq_tasks_keyed_running
    ON sitq_tasks (queue, concurrency_key, lease_until)
    WHERE state = 1 AND concurrency_key IS NOT NULL;
