-- The statements that move tasks to another store (hold, put_stored, drop_held in
-- _move.py), one block per statement, each after its `-- name: <statement>` line. "{schema}"
-- is replaced as in queries.sql. Times are the server's, from clock_timestamp().

-- name: hold
-- Take tasks out of workers' reach: first those the mover ($3) holds already, then pending
-- ones (scheduled included) in claim order; each becomes running under the mover's claim,
-- with a lease until $4 (the end of time). eta, attempts and retries stay as they are. Rows a
-- worker is claiming at this moment are skipped (they are the worker's).
WITH now AS (SELECT (extract(epoch FROM clock_timestamp())::float8) AS t),
held AS (
    SELECT t.id FROM "{schema}".tasks t
    WHERE t.state = 1 AND t.queue = ANY($1::text[]) AND t.worker_id = $3
    LIMIT $2 FOR UPDATE OF t SKIP LOCKED
),
pending AS (
    SELECT t.id FROM "{schema}".tasks t
    WHERE t.state = 0 AND t.queue = ANY($1::text[])
    ORDER BY t.priority DESC, t.eta, t.seq
    LIMIT $2 FOR UPDATE OF t SKIP LOCKED
),
chosen AS (
    SELECT id FROM (SELECT id FROM held UNION ALL SELECT id FROM pending) c LIMIT $2
)
UPDATE "{schema}".tasks t SET state = 1, fence = t.fence + 1, lease_until = $4,
    worker_id = $3, started_at = now.t
FROM chosen, now WHERE t.id = chosen.id
RETURNING t.id, t.queue, t.payload, t.options, t.priority, t.eta, t.enqueued_at,
          t.result_ttl, t.concurrency_key, t.concurrency_limit, t.function, t.attempts,
          t.retries, t.error, t.traceback, t.fence, t.seq;

-- name: put_stored
-- Tasks from another store, pending, as they were stored there. An id with a live task or
-- result is left alone; an expired result is cleared first. Workers of the queues are woken.
WITH now AS (SELECT (extract(epoch FROM clock_timestamp())::float8) AS t),
input AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::int[], $4::float8[], $5::bytea[],
                         $6::text[], $7::float8[], $8::float8[], $9::text[], $10::int[],
                         $11::text[], $12::int[], $13::int[], $14::text[], $15::text[])
        AS x(id, queue, priority, eta, payload, options, enqueued_at, result_ttl, ckey,
             climit, function, attempts, retries, error, traceback)
),
cleared AS (
    DELETE FROM "{schema}".results r USING input i, now
    WHERE r.id = i.id AND r.expires_at <= now.t
),
ins AS (
    INSERT INTO "{schema}".tasks (id, queue, priority, eta, payload, options, enqueued_at,
                                  result_ttl, concurrency_key, concurrency_limit, function,
                                  attempts, retries, error, traceback)
    SELECT i.id, i.queue, i.priority, i.eta, i.payload, i.options, i.enqueued_at,
           i.result_ttl, i.ckey, i.climit, i.function, i.attempts, i.retries, i.error,
           i.traceback
    FROM input i, now
    WHERE NOT EXISTS (
        SELECT 1 FROM "{schema}".results r WHERE r.id = i.id AND r.expires_at > now.t
    )
    ON CONFLICT (id) DO NOTHING
    RETURNING id, queue
),
notified AS (
    SELECT pg_notify('sitq_work_{schema}', d.q) FROM (SELECT DISTINCT ins.queue AS q FROM ins) d
)
SELECT id FROM ins UNION ALL SELECT NULL FROM notified;

-- name: undo_finished
-- Run after put_stored in its transaction, with the ids it stored: one whose task finished
-- (its row moved to results) while the insert ran is taken out again, as enqueue_ids does.
DELETE FROM "{schema}".tasks t USING "{schema}".results r
WHERE t.id = ANY ($1::text[]) AND r.id = t.id
  AND r.expires_at > extract(epoch FROM clock_timestamp())::float8
RETURNING t.id;

-- name: drop_held
-- Fenced like a settlement: only the hold's current claim removes the task.
DELETE FROM "{schema}".tasks t
USING unnest($1::text[], $2::bigint[]) AS c(id, fence)
WHERE t.id = c.id AND t.fence = c.fence AND t.state = 1
RETURNING t.id;
