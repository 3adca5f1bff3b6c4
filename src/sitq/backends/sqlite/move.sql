-- The statements that move tasks to another store (hold, put_stored, drop_held in
-- backend.py), one block per statement, each after its `-- name: <statement>` line.

-- name: held_by
-- The tasks of one queue a mover already holds (running under its worker id).
SELECT seq FROM sitq_tasks INDEXED BY sitq_tasks_queue_running
WHERE state = 1 AND queue = ? AND worker_id = ? LIMIT ?;

-- name: pending
-- Pending tasks of one queue (scheduled ones included), by due time, then enqueue order.
SELECT seq FROM sitq_tasks INDEXED BY sitq_tasks_scheduled
WHERE state = 0 AND queue = ? ORDER BY eta, seq LIMIT ?;

-- name: hold
-- Take one task out of workers' reach: running under the mover's claim, with a lease that
-- never ends; eta, attempts and retries untouched.
UPDATE sitq_tasks SET state = 1, fence = fence + 1, lease_until = :lease_until,
worker_id = :holder, started_at = :now, parked = 0
WHERE seq = :seq AND (state = 0 OR (state = 1 AND worker_id = :holder))
RETURNING id, queue, payload, options, priority, eta, enqueued_at, result_ttl,
          concurrency_key, concurrency_limit, function, attempts, retries, error, traceback,
          fence;

-- name: put_stored
-- A task from another store, pending, as it was stored there.
INSERT INTO sitq_tasks (id, queue, state, priority, eta, payload, options, enqueued_at,
result_ttl, concurrency_key, concurrency_limit, function, attempts, retries, error, traceback)
VALUES (?, ?, 0, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING;

-- name: drop_held
-- Fenced like a settlement: only the hold's current claim removes the task.
DELETE FROM sitq_tasks WHERE id = ? AND fence = ? AND state = 1;
