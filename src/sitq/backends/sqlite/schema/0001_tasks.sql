-- Version 1: live and finished tasks in one table, with the claim, lease and expiry indexes.
CREATE TABLE IF NOT EXISTS sitq_tasks (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    queue TEXT NOT NULL,
    state INTEGER NOT NULL,
    priority INTEGER NOT NULL,
    eta REAL NOT NULL,
    payload BLOB,
    options TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    retries INTEGER NOT NULL DEFAULT 0,
    fence INTEGER NOT NULL DEFAULT 0,
    lease_until REAL,
    worker_id TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    enqueued_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    expires_at REAL,
    result_ttl REAL NOT NULL,
    value BLOB,
    error TEXT,
    traceback TEXT,
    concurrency_key TEXT,
    concurrency_limit INTEGER
);
CREATE INDEX IF NOT EXISTS sitq_tasks_due
    ON sitq_tasks (queue, priority DESC, eta, seq) WHERE state = 0;
CREATE INDEX IF NOT EXISTS sitq_tasks_scheduled ON sitq_tasks (queue, eta) WHERE state = 0;
CREATE INDEX IF NOT EXISTS sitq_tasks_leases ON sitq_tasks (lease_until) WHERE state = 1;
CREATE INDEX IF NOT EXISTS sitq_tasks_expiry
    ON sitq_tasks (expires_at) WHERE expires_at IS NOT NULL;
