-- The fixed statements of the SQLite backend, one block per statement, each after its
-- `-- name: <statement>` line. The claim's UPDATE is built per call (its list of rows) and
-- the settlements below get their key condition appended (see settle() in backend.py).

-- name: due
-- Unkeyed due tasks of one queue, in claim order.
SELECT priority, eta, seq FROM sitq_tasks INDEXED BY sitq_tasks_due
WHERE state = 0 AND concurrency_key IS NULL AND queue = ? AND eta <= ?
ORDER BY priority DESC, eta, seq LIMIT ?;

-- name: keyed_due
-- Keyed due tasks of one queue that are not parked, in claim order.
SELECT priority, eta, seq, concurrency_key, concurrency_limit
FROM sitq_tasks INDEXED BY sitq_tasks_keyed_due
WHERE state = 0 AND concurrency_key IS NOT NULL AND parked = 0 AND queue = ? AND eta <= ?
ORDER BY priority DESC, eta, seq LIMIT ?;

-- name: key_running
-- Running tasks of one key whose lease has not expired: the key's slots in use.
SELECT COUNT(*) FROM sitq_tasks INDEXED BY sitq_tasks_keyed_running
WHERE state = 1 AND concurrency_key IS NOT NULL AND queue = ? AND concurrency_key = ?
AND lease_until > ?;

-- name: park
-- Set aside (up to a budget) the due tasks of a full key whose limit the running count reached.
UPDATE sitq_tasks SET parked = 1 WHERE seq IN (SELECT seq FROM sitq_tasks
INDEXED BY sitq_tasks_keyed WHERE state = 0 AND concurrency_key IS NOT NULL
AND queue = ? AND concurrency_key = ? AND parked = 0 AND eta <= ?
AND concurrency_limit <= ? LIMIT ?);

-- name: parked
-- The parked tasks of one key, in claim order.
SELECT seq, concurrency_limit FROM sitq_tasks INDEXED BY sitq_tasks_keyed
WHERE state = 0 AND concurrency_key IS NOT NULL AND queue = ? AND concurrency_key = ?
AND parked = 1 ORDER BY priority DESC, eta, seq;

-- name: finish
-- Settlements apply only to the claim holding the current fencing token. A success drops its
-- payload (the last parameter before the id says so); a failure keeps it for a requeue.
UPDATE sitq_tasks SET state = ?, value = ?, error = ?, traceback = ?, finished_at = ?,
expires_at = ?, payload = CASE WHEN ? THEN NULL ELSE payload END, worker_id = NULL,
lease_until = NULL
WHERE id = ? AND fence = ? AND state = 1;

-- name: reschedule
UPDATE sitq_tasks SET state = 0, eta = ?, retries = retries + 1, error = ?, traceback = ?,
worker_id = NULL, lease_until = NULL
WHERE id = ? AND fence = ? AND state = 1;

-- name: release
UPDATE sitq_tasks SET state = 0, attempts = attempts - 1, worker_id = NULL,
lease_until = NULL
WHERE id = ? AND fence = ? AND state = 1;

-- name: requeue
-- A failed or cancelled task with its payload, whose record has not expired, becomes pending
-- again, due now, with a new enqueue-order position; everything its runs left is cleared.
UPDATE sitq_tasks SET state = 0, eta = :now, attempts = 0, retries = 0, cancel_requested = 0,
started_at = NULL, finished_at = NULL, expires_at = NULL, value = NULL, error = NULL,
traceback = NULL, progress = NULL, progress_message = NULL, worker_id = NULL,
lease_until = NULL, parked = 0, seq = (SELECT MAX(seq) FROM sitq_tasks) + 1
WHERE id = :id AND state IN (3, 4) AND payload IS NOT NULL
AND (expires_at IS NULL OR expires_at > :now);

-- name: purge_pending
-- Up to a limit of one queue's pending tasks (scheduled ones included).
DELETE FROM sitq_tasks WHERE seq IN (SELECT seq FROM sitq_tasks INDEXED BY sitq_tasks_scheduled
WHERE state = 0 AND queue = ? LIMIT ?);

-- name: purge_finished
-- Up to a limit of one queue's tasks in one finished state.
DELETE FROM sitq_tasks WHERE seq IN (SELECT seq FROM sitq_tasks
INDEXED BY sitq_tasks_queue_finished WHERE state >= 2 AND state = ? AND queue = ? LIMIT ?);

-- name: save_progress
-- Fenced like a settlement: a stale claim's progress is dropped.
UPDATE sitq_tasks SET progress = ?, progress_message = ?
WHERE id = ? AND fence = ? AND state = 1;

-- name: put_worker
-- Worker records are in the attached file of their own (see backend.py).
INSERT INTO sitq_live.sitq_workers (worker_id, data, expires_at) VALUES (?, ?, ?)
ON CONFLICT (worker_id) DO UPDATE SET data = excluded.data, expires_at = excluded.expires_at;

-- name: list_workers
SELECT worker_id, data, expires_at FROM sitq_live.sitq_workers WHERE expires_at > ? ORDER BY worker_id;

-- Counts per queue and state (stats). Each status is counted from an index that holds every
-- task of it (the rows themselves, wide with payloads, are never read), grouped in index order;
-- the results that have expired but are not purged yet are counted apart, through the expiry
-- index, and taken off. Read in one transaction.

-- name: stats_pending
-- Pending tasks per queue, and how many of them are scheduled (due after ?).
SELECT queue, COUNT(*), SUM(eta > ?) FROM sitq_tasks INDEXED BY sitq_tasks_scheduled
WHERE state = 0 GROUP BY queue;

-- name: stats_running
SELECT queue, COUNT(*) FROM sitq_tasks INDEXED BY sitq_tasks_queue_running
WHERE state = 1 GROUP BY queue;

-- name: stats_finished
SELECT state, queue, COUNT(*) FROM sitq_tasks INDEXED BY sitq_tasks_queue_finished
WHERE state >= 2 GROUP BY state, queue;

-- name: stats_expired
-- Tasks whose record has expired at ?, by queue, state and whether due after ?.
SELECT queue, state, eta > ?, COUNT(*) FROM sitq_tasks INDEXED BY sitq_tasks_expiry
WHERE expires_at IS NOT NULL AND expires_at <= ? GROUP BY 1, 2, 3;

-- name: replace_find
-- Debounce (enqueue_replacing): what the id holds, read in the write transaction that then
-- stores or replaces it.
SELECT queue, state, expires_at, concurrency_key FROM sitq_tasks WHERE id = ?;

-- name: replace_task
-- A pending or finished task becomes the new call, pending, due at :eta, with a new
-- enqueue-order position; a pending one keeps its enqueue time. Everything a run left is
-- cleared; the fence goes on. Never a running task: its claim holds it.
UPDATE sitq_tasks SET state = 0, priority = :priority, eta = :eta, payload = :payload,
options = :options, enqueued_at = CASE WHEN state = 0 THEN enqueued_at ELSE :enqueued_at END,
result_ttl = :result_ttl, concurrency_key = :concurrency_key,
concurrency_limit = :concurrency_limit, function = :function, attempts = 0, retries = 0,
cancel_requested = 0, started_at = NULL, finished_at = NULL, expires_at = NULL, value = NULL,
error = NULL, traceback = NULL, progress = NULL, progress_message = NULL, worker_id = NULL,
lease_until = NULL, parked = 0, seq = (SELECT MAX(seq) FROM sitq_tasks) + 1
WHERE id = :id AND state <> 1;
-- name: locks_held
-- Which of the locks named in a JSON array are held at ?, and until when.
SELECT name, expires_at FROM sitq_locks
WHERE name IN (SELECT value FROM json_each(?)) AND expires_at > ?;

-- name: take_lock
-- Take a lock that is free or whose TTL ran out (at the last parameter).
INSERT INTO sitq_locks (name, token, expires_at) VALUES (?, ?, ?)
ON CONFLICT (name) DO UPDATE SET token = excluded.token, expires_at = excluded.expires_at
WHERE sitq_locks.expires_at <= ?;

-- name: release_later
-- A release due again later: at ? (this machine's now plus the release's delay).
UPDATE sitq_tasks SET state = 0, attempts = attempts - 1, eta = ?, worker_id = NULL,
lease_until = NULL
WHERE id = ? AND fence = ? AND state = 1;

-- name: id_expires
-- Whether an id is stored, and when its result expires (NULL while it is not finished).
SELECT expires_at FROM sitq_tasks WHERE id = ?;

-- name: drop_expired_id
-- Forget an id whose result expired at or before ?, so that it can be stored again.
DELETE FROM sitq_tasks WHERE id = ? AND expires_at IS NOT NULL AND expires_at <= ?;
