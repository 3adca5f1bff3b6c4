-- The statements of the PostgreSQL backend, one block per statement, each after its
-- `-- name: <statement>` line. "{schema}" is replaced by the backend's schema name (a checked
-- lowercase identifier) before use, and by nothing else: this is not a format string.
-- Times are the server's, in seconds since the epoch, from clock_timestamp().
-- Notifications are sent by the statements themselves (pg_notify is delivered at commit, and
-- duplicates within a transaction are sent once): work on sitq_work_<schema> (a queue name),
-- done on sitq_done_<schema> (finished ids).

-- name: enqueue_fresh_one
WITH ins AS (
    INSERT INTO "{schema}".tasks (id, queue, priority, eta, payload, options, enqueued_at,
                           result_ttl, concurrency_key, concurrency_limit, function)
    VALUES ($1, $2, $3,
            CASE WHEN $10 THEN (extract(epoch FROM clock_timestamp())::float8) ELSE $4 END,
            $5, $6, (extract(epoch FROM clock_timestamp())::float8), $7, $8, $9, $11)
    RETURNING id
)
SELECT id, pg_notify('sitq_work_{schema}', $2) FROM ins;

-- name: enqueue_fresh
WITH ins AS (
    INSERT INTO "{schema}".tasks (id, queue, priority, eta, payload, options, enqueued_at,
                           result_ttl, concurrency_key, concurrency_limit, function)
    SELECT x.id, x.queue, x.priority,
           CASE WHEN x.immediate THEN (extract(epoch FROM clock_timestamp())::float8)
                ELSE x.eta END,
           x.payload, x.options,
           (extract(epoch FROM clock_timestamp())::float8), x.result_ttl, x.ckey, x.climit,
           x.function
    FROM unnest($1::text[], $2::text[], $3::int[], $4::float8[], $5::bytea[],
                $6::text[], $7::float8[], $8::text[], $9::int[], $10::bool[], $11::text[])
        AS x(id, queue, priority, eta, payload, options, result_ttl, ckey, climit,
             immediate, function)
    RETURNING id, queue
),
notified AS (
    SELECT pg_notify('sitq_work_{schema}', q) FROM (SELECT DISTINCT queue AS q FROM ins) d
)
SELECT id FROM ins UNION ALL SELECT NULL FROM notified;

-- name: enqueue
SELECT * FROM "{schema}".enqueue_ids($1::text[], $2::text[], $3::int[], $4::float8[],
                              $5::bytea[], $6::text[], $7::float8[], $8::text[],
                              $9::int[], $10::bool[], $11::text[]);

-- name: claim_one
-- Claims and lease extensions commit without waiting for the WAL flush: if the server
-- crashed and lost one, the task would simply be claimable again (and the worker's
-- fenced outcome refused), which at-least-once already allows. Outcomes do wait.
-- This statement claims unkeyed tasks only. While keyed tasks are due on these queues
-- it claims nothing and returns one marker row (id NULL, keyed true): those claims go
-- through claim_keyed(), which takes a lock per key. claim_many is the same statement
-- over several queues.
WITH now AS (
    SELECT (extract(epoch FROM clock_timestamp())::float8) AS t,
           set_config('synchronous_commit', 'off', true) AS cfg
),
keyed AS (
    SELECT EXISTS (
        SELECT 1 FROM "{schema}".tasks t
        WHERE t.concurrency_key IS NOT NULL AND t.queue = $1::text
          AND (CASE WHEN t.state = 0 THEN t.eta ELSE t.lease_until END)
              <= (SELECT now.t FROM now)
    ) AS found
),
expired AS (
    SELECT t.id FROM "{schema}".tasks t
    WHERE NOT (SELECT keyed.found FROM keyed) AND t.state = 1
      AND t.concurrency_key IS NULL AND t.lease_until <= (SELECT now.t FROM now)
      AND t.queue = $1::text
    LIMIT $2 FOR UPDATE OF t SKIP LOCKED
),
due AS (
    SELECT t.id FROM "{schema}".tasks t, now
    WHERE NOT (SELECT keyed.found FROM keyed) AND t.state = 0
      AND t.concurrency_key IS NULL
      AND t.queue = $1::text AND t.eta <= now.t
    ORDER BY t.priority DESC, t.eta, t.seq
    LIMIT $2 FOR UPDATE OF t SKIP LOCKED
),
chosen AS (
    SELECT id FROM (SELECT id FROM expired UNION ALL SELECT id FROM due) c LIMIT $2
),
claimed AS (
    UPDATE "{schema}".tasks t SET state = 1, attempts = t.attempts + 1,
        fence = t.fence + 1, lease_until = now.t + $3, worker_id = $4,
        started_at = now.t, progress = NULL, progress_message = NULL
    FROM chosen, now WHERE t.id = chosen.id
    RETURNING t.id, t.queue, t.payload, t.options, t.priority, t.fence, t.attempts,
              t.retries, t.enqueued_at, t.result_ttl, t.cancel_requested, t.eta,
              t.seq, now.t AS now, false AS keyed, t.function
)
SELECT * FROM claimed
UNION ALL
SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
       NULL, true, NULL FROM keyed WHERE keyed.found;

-- name: claim_many
WITH now AS (
    SELECT (extract(epoch FROM clock_timestamp())::float8) AS t,
           set_config('synchronous_commit', 'off', true) AS cfg
),
keyed AS (
    SELECT EXISTS (
        SELECT 1 FROM "{schema}".tasks t
        WHERE t.concurrency_key IS NOT NULL AND t.queue = ANY($1::text[])
          AND (CASE WHEN t.state = 0 THEN t.eta ELSE t.lease_until END)
              <= (SELECT now.t FROM now)
    ) AS found
),
expired AS (
    SELECT t.id FROM "{schema}".tasks t
    WHERE NOT (SELECT keyed.found FROM keyed) AND t.state = 1
      AND t.concurrency_key IS NULL AND t.lease_until <= (SELECT now.t FROM now)
      AND t.queue = ANY($1::text[])
    LIMIT $2 FOR UPDATE OF t SKIP LOCKED
),
due AS (
    SELECT t.id FROM "{schema}".tasks t, now
    WHERE NOT (SELECT keyed.found FROM keyed) AND t.state = 0
      AND t.concurrency_key IS NULL
      AND t.queue = ANY($1::text[]) AND t.eta <= now.t
    ORDER BY t.priority DESC, t.eta, t.seq
    LIMIT $2 FOR UPDATE OF t SKIP LOCKED
),
chosen AS (
    SELECT id FROM (SELECT id FROM expired UNION ALL SELECT id FROM due) c LIMIT $2
),
claimed AS (
    UPDATE "{schema}".tasks t SET state = 1, attempts = t.attempts + 1,
        fence = t.fence + 1, lease_until = now.t + $3, worker_id = $4,
        started_at = now.t, progress = NULL, progress_message = NULL
    FROM chosen, now WHERE t.id = chosen.id
    RETURNING t.id, t.queue, t.payload, t.options, t.priority, t.fence, t.attempts,
              t.retries, t.enqueued_at, t.result_ttl, t.cancel_requested, t.eta,
              t.seq, now.t AS now, false AS keyed, t.function
)
SELECT * FROM claimed
UNION ALL
SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
       NULL, true, NULL FROM keyed WHERE keyed.found;

-- name: claim_keyed
SELECT * FROM "{schema}".claim_keyed($1::text[], $2, $3, $4);

-- name: extend
UPDATE "{schema}".tasks t SET lease_until = (extract(epoch FROM clock_timestamp())::float8) + $3
FROM unnest($1::text[], $2::bigint[]) AS c(id, fence),
     (SELECT set_config('synchronous_commit', 'off', true)) AS cfg
WHERE t.id = c.id AND t.fence = c.fence AND t.state = 1
  AND (t.concurrency_key IS NULL
       OR t.lease_until > (extract(epoch FROM clock_timestamp())::float8))
RETURNING t.id, t.fence, t.cancel_requested;

-- name: settle
WITH now AS (SELECT (extract(epoch FROM clock_timestamp())::float8) AS t),
fin_in AS (
    SELECT * FROM unnest($1::text[], $2::bigint[], $3::smallint[], $4::bytea[],
                         $5::text[], $6::text[], $7::float8[])
        AS x(id, fence, status, value, error, traceback, ttl)
),
moved AS (
    DELETE FROM "{schema}".tasks t USING fin_in i
    WHERE t.id = i.id AND t.fence = i.fence AND t.state = 1
    RETURNING t.id, t.fence, t.queue, t.attempts, t.enqueued_at, t.eta, t.started_at,
              t.concurrency_key, t.concurrency_limit, t.priority, t.function, t.result_ttl,
              -- A success drops what a requeue would need; a failure keeps it.
              CASE WHEN i.status = 2 THEN NULL ELSE t.payload END AS payload,
              CASE WHEN i.status = 2 THEN NULL ELSE t.options END AS options
),
finished AS (
    INSERT INTO "{schema}".results AS r (id, queue, status, attempts, enqueued_at, eta,
                             started_at, finished_at, expires_at, value, error,
                             traceback, function, priority, fence, payload, options,
                             result_ttl, concurrency_key, concurrency_limit)
    SELECT m.id, m.queue, i.status, m.attempts, m.enqueued_at, m.eta, m.started_at,
           now.t, now.t + i.ttl, i.value, i.error, i.traceback, m.function, m.priority,
           m.fence, m.payload, m.options, m.result_ttl, m.concurrency_key,
           m.concurrency_limit
    FROM moved m JOIN fin_in i ON i.id = m.id AND i.fence = m.fence, now
    ON CONFLICT (id) DO UPDATE SET (queue, status, attempts, enqueued_at, eta, started_at,
        finished_at, expires_at, value, error, traceback, function, priority, fence,
        payload, options, result_ttl, concurrency_key, concurrency_limit)
      = ROW(excluded.queue, excluded.status, excluded.attempts, excluded.enqueued_at,
        excluded.eta, excluded.started_at, excluded.finished_at, excluded.expires_at,
        excluded.value, excluded.error, excluded.traceback, excluded.function,
        excluded.priority, excluded.fence, excluded.payload, excluded.options,
        excluded.result_ttl, excluded.concurrency_key, excluded.concurrency_limit)
    RETURNING id
),
rescheduled AS (
    UPDATE "{schema}".tasks t SET state = 0, eta = r.eta, retries = t.retries + 1,
        error = r.error, traceback = r.traceback, worker_id = NULL,
        lease_until = NULL
    FROM unnest($8::text[], $9::bigint[], $10::float8[], $11::text[], $12::text[])
        AS r(id, fence, eta, error, traceback)
    WHERE t.id = r.id AND t.fence = r.fence AND t.state = 1
    RETURNING t.id, t.fence, t.queue
),
released AS (
    -- A release with a delay is due that many seconds after now; without one, as it was.
    UPDATE "{schema}".tasks t SET state = 0, attempts = t.attempts - 1, worker_id = NULL,
        lease_until = NULL, eta = CASE WHEN r.delay > 0 THEN now.t + r.delay ELSE t.eta END
    FROM unnest($13::text[], $14::bigint[], $15::float8[]) AS r(id, fence, delay), now
    WHERE t.id = r.id AND t.fence = r.fence AND t.state = 1
    RETURNING t.id, t.fence, t.queue
),
done_note AS (
    SELECT pg_notify('sitq_done_{schema}', CASE WHEN length(ids) > 7000 THEN '*' ELSE ids END)
    FROM (SELECT string_agg(id, ',') AS ids FROM finished) x WHERE ids IS NOT NULL
),
work_note AS (
    SELECT pg_notify('sitq_work_{schema}', q) FROM (
        SELECT queue AS q FROM rescheduled UNION SELECT queue FROM released
        UNION SELECT queue FROM moved WHERE concurrency_key IS NOT NULL
    ) d
)
SELECT 'f' AS kind, m.id, m.fence FROM moved m JOIN finished f ON f.id = m.id
UNION ALL SELECT 's', id, fence FROM rescheduled
UNION ALL SELECT 'r', id, fence FROM released
UNION ALL SELECT 'n', NULL, NULL FROM done_note
UNION ALL SELECT 'n', NULL, NULL FROM work_note;

-- name: cancel
WITH now AS (SELECT (extract(epoch FROM clock_timestamp())::float8) AS t),
pending AS (
    DELETE FROM "{schema}".tasks WHERE id = $1 AND state = 0
    RETURNING id, queue, attempts, enqueued_at, eta, started_at, result_ttl, function,
              priority, fence, payload, options, concurrency_key, concurrency_limit
),
cancelled AS (
    -- The payload stays, so that a requeue can run the task after all.
    INSERT INTO "{schema}".results (id, queue, status, attempts, enqueued_at, eta,
                             started_at, finished_at, expires_at, error, function,
                             priority, fence, payload, options, result_ttl,
                             concurrency_key, concurrency_limit)
    SELECT p.id, p.queue, 4, p.attempts, p.enqueued_at, p.eta, p.started_at, now.t,
           now.t + p.result_ttl, 'cancelled before it started', p.function, p.priority,
           p.fence, p.payload, p.options, p.result_ttl, p.concurrency_key,
           p.concurrency_limit
    FROM pending p, now
    ON CONFLICT (id) DO UPDATE SET (status, queue, attempts, enqueued_at, eta, started_at,
        finished_at, expires_at, value, error, traceback, function, priority, fence,
        payload, options, result_ttl, concurrency_key, concurrency_limit)
      = ROW(4, excluded.queue, excluded.attempts, excluded.enqueued_at, excluded.eta,
        excluded.started_at, excluded.finished_at, excluded.expires_at, NULL,
        excluded.error, NULL, excluded.function, excluded.priority, excluded.fence,
        excluded.payload, excluded.options, excluded.result_ttl,
        excluded.concurrency_key, excluded.concurrency_limit)
    RETURNING id
),
note AS (SELECT pg_notify('sitq_done_{schema}', id) FROM cancelled),
requested AS (
    UPDATE "{schema}".tasks SET cancel_requested = true WHERE id = $1 AND state = 1
    RETURNING id
)
SELECT (SELECT count(*) FROM note) AS cancelled,
       (SELECT count(*) FROM requested) AS requested,
       (SELECT count(*) FROM "{schema}".results r, now
        WHERE r.id = $1 AND r.expires_at > now.t) AS finished,
       EXISTS (SELECT FROM "{schema}".tasks WHERE id = $1) AS live;

-- name: get
SELECT id, queue, state, attempts, enqueued_at, eta, started_at,
       NULL::float8 AS finished_at, NULL::bytea AS value, error, traceback, function,
       priority, progress, progress_message, worker_id
FROM "{schema}".tasks WHERE id = $1
UNION ALL
SELECT id, queue, status, attempts, enqueued_at, eta, started_at, finished_at,
       value, error, traceback, function, priority, NULL, NULL, NULL
FROM "{schema}".results
WHERE id = $1 AND expires_at > (extract(epoch FROM clock_timestamp())::float8);

-- name: next_due
-- Keyed tasks already due are left out: they wait for a slot, which a settlement
-- (notified) or a lease expiry (the last term) frees. The keyed term also covers
-- keyed leases, through the one index of keyed rows by their next due time.
WITH now AS (SELECT (extract(epoch FROM clock_timestamp())::float8) AS t)
SELECT least(
    (SELECT min(eta) FROM "{schema}".tasks
     WHERE state = 0 AND concurrency_key IS NULL AND queue = ANY($1::text[])),
    (SELECT min(CASE WHEN state = 0 THEN eta ELSE lease_until END)
     FROM "{schema}".tasks
     WHERE concurrency_key IS NOT NULL AND queue = ANY($1::text[])
       AND (CASE WHEN state = 0 THEN eta ELSE lease_until END)
           > (SELECT now.t FROM now)),
    (SELECT min(lease_until) FROM "{schema}".tasks WHERE state = 1)
) - now.t FROM now;

-- name: purge
-- Expired worker records go too ($2: the caller's clock, which wrote their expiry).
WITH stale_locks AS (
    DELETE FROM "{schema}".locks WHERE expires_at <= now()
),
stale_workers AS (
    DELETE FROM "{schema}".workers WHERE expires_at <= $2
)
DELETE FROM "{schema}".results WHERE id IN (
    SELECT id FROM "{schema}".results
    WHERE expires_at <= (extract(epoch FROM clock_timestamp())::float8) LIMIT $1
);

-- name: put_cron
INSERT INTO "{schema}".crons (name, definition, last_tick) VALUES ($1, $2, $3)
ON CONFLICT (name) DO UPDATE SET definition = excluded.definition;

-- name: delete_cron
DELETE FROM "{schema}".crons WHERE name = $1 RETURNING true;

-- name: list_crons
SELECT name, definition, last_tick FROM "{schema}".crons;

-- name: advance_cron
UPDATE "{schema}".crons SET last_tick = $3 WHERE name = $1 AND last_tick = $2
RETURNING true;

-- name: acquire_lock
-- Lock times are the server's: now() of the statement's own transaction.
INSERT INTO "{schema}".locks AS l (name, token, expires_at)
VALUES ($1, $2, now() + $3 * interval '1 second')
ON CONFLICT (name) DO UPDATE SET token = excluded.token,
    expires_at = excluded.expires_at
WHERE l.expires_at <= now()
RETURNING true;

-- name: acquire_any_lock
-- Of the locks named in $1, the first one not held (in $1's order) is taken for token $2
-- for $3 seconds, as acquire_lock takes one; a client that took it in the meantime keeps it
-- (then "taken" is null while "tried" names it: the caller looks again). "wait": seconds
-- until the first held lock frees. Lock times are the server's, as in acquire_lock.
WITH held AS (
    SELECT name, expires_at FROM "{schema}".locks
    WHERE name = ANY($1::text[]) AND expires_at > now()
),
pick AS (
    SELECT w.name FROM unnest($1::text[]) WITH ORDINALITY AS w(name, ord)
    WHERE NOT EXISTS (SELECT 1 FROM held h WHERE h.name = w.name)
    ORDER BY w.ord LIMIT 1
),
taken AS (
    INSERT INTO "{schema}".locks AS l (name, token, expires_at)
    SELECT name, $2, now() + $3 * interval '1 second' FROM pick
    ON CONFLICT (name) DO UPDATE SET token = excluded.token,
        expires_at = excluded.expires_at
    WHERE l.expires_at <= now()
    RETURNING l.name
)
SELECT (SELECT name FROM taken) AS taken, (SELECT name FROM pick) AS tried,
       extract(epoch FROM (SELECT min(expires_at) FROM held) - now())::float8 AS wait;

-- name: extend_lock
UPDATE "{schema}".locks SET expires_at = now() + $3 * interval '1 second'
WHERE name = $1 AND token = $2 AND expires_at > now()
RETURNING true;

-- name: release_lock
DELETE FROM "{schema}".locks WHERE name = $1 AND token = $2
RETURNING expires_at > now() AS held;

-- name: stats
WITH now AS (SELECT (extract(epoch FROM clock_timestamp())::float8) AS t)
SELECT queue, CASE WHEN state = 1 THEN 'running'
                   WHEN eta > now.t THEN 'scheduled' ELSE 'pending' END AS kind,
       count(*)::int AS n
FROM "{schema}".tasks, now GROUP BY 1, 2
UNION ALL
SELECT queue, CASE status WHEN 2 THEN 'succeeded' WHEN 3 THEN 'failed'
                          ELSE 'cancelled' END, count(*)::int
FROM "{schema}".results, now WHERE expires_at > now.t GROUP BY 1, 2;

-- Listings: one page of a status, after a position ($2.. below; the first page starts
-- from a position before every task), never reading a payload. Each statement fetches one
-- row more than the page, to tell whether another page follows. The indexes they read are
-- described in migrations/0003_operating.sql.

-- name: list_pending_queue
-- $1 queue, ($2 priority, $3 eta, $4 seq) the position, $5 rows. Priority runs down and
-- due time up: the rest of the position's priority, then the lower ones, each a range of
-- the claim indexes (unkeyed and keyed rows apart).
SELECT p.* FROM (
    (SELECT t.id, t.queue, t.state, t.attempts, t.enqueued_at, t.eta, t.started_at,
            NULL::float8 AS finished_at, t.error, t.traceback, t.function, t.priority,
            t.progress, t.progress_message, t.worker_id, t.seq
     FROM "{schema}".tasks t
     WHERE t.state = 0 AND t.concurrency_key IS NULL AND t.queue = $1::text
       AND t.priority = $2::integer AND (t.eta, t.seq) > ($3::float8, $4::bigint)
     ORDER BY t.priority DESC, t.eta, t.seq LIMIT $5)
    UNION ALL
    (SELECT t.id, t.queue, t.state, t.attempts, t.enqueued_at, t.eta, t.started_at,
            NULL::float8, t.error, t.traceback, t.function, t.priority,
            t.progress, t.progress_message, t.worker_id, t.seq
     FROM "{schema}".tasks t
     WHERE t.state = 0 AND t.concurrency_key IS NULL AND t.queue = $1::text
       AND t.priority < $2::integer
     ORDER BY t.priority DESC, t.eta, t.seq LIMIT $5)
    UNION ALL
    (SELECT t.id, t.queue, t.state, t.attempts, t.enqueued_at, t.eta, t.started_at,
            NULL::float8, t.error, t.traceback, t.function, t.priority,
            t.progress, t.progress_message, t.worker_id, t.seq
     FROM "{schema}".tasks t
     WHERE t.state = 0 AND t.concurrency_key IS NOT NULL AND t.queue = $1::text
       AND t.priority = $2::integer AND (t.eta, t.seq) > ($3::float8, $4::bigint)
     ORDER BY t.priority DESC, t.eta, t.seq LIMIT $5)
    UNION ALL
    (SELECT t.id, t.queue, t.state, t.attempts, t.enqueued_at, t.eta, t.started_at,
            NULL::float8, t.error, t.traceback, t.function, t.priority,
            t.progress, t.progress_message, t.worker_id, t.seq
     FROM "{schema}".tasks t
     WHERE t.state = 0 AND t.concurrency_key IS NOT NULL AND t.queue = $1::text
       AND t.priority < $2::integer
     ORDER BY t.priority DESC, t.eta, t.seq LIMIT $5)
) p
ORDER BY p.priority DESC, p.eta, p.seq LIMIT $5;

-- name: list_pending_all
-- ($1 priority, $2 eta, $3 seq) the position, $4 rows; through tasks_pending_order.
SELECT p.* FROM (
    (SELECT t.id, t.queue, t.state, t.attempts, t.enqueued_at, t.eta, t.started_at,
            NULL::float8 AS finished_at, t.error, t.traceback, t.function, t.priority,
            t.progress, t.progress_message, t.worker_id, t.seq
     FROM "{schema}".tasks t
     WHERE t.state = 0 AND t.priority = $1::integer
       AND (t.eta, t.seq) > ($2::float8, $3::bigint)
     ORDER BY t.priority DESC, t.eta, t.seq LIMIT $4)
    UNION ALL
    (SELECT t.id, t.queue, t.state, t.attempts, t.enqueued_at, t.eta, t.started_at,
            NULL::float8, t.error, t.traceback, t.function, t.priority,
            t.progress, t.progress_message, t.worker_id, t.seq
     FROM "{schema}".tasks t
     WHERE t.state = 0 AND t.priority < $1::integer
     ORDER BY t.priority DESC, t.eta, t.seq LIMIT $4)
) p
ORDER BY p.priority DESC, p.eta, p.seq LIMIT $4;

-- name: list_running_queue
-- $1 queue, ($2 started_at, $3 seq) the position, $4 rows; through tasks_running.
SELECT t.id, t.queue, t.state, t.attempts, t.enqueued_at, t.eta, t.started_at,
       NULL::float8 AS finished_at, t.error, t.traceback, t.function, t.priority,
       t.progress, t.progress_message, t.worker_id, t.seq
FROM "{schema}".tasks t
WHERE t.state = 1 AND t.queue = $1::text
  AND (t.started_at, t.seq) > ($2::float8, $3::bigint)
ORDER BY t.started_at, t.seq LIMIT $4;

-- name: list_running_all
-- ($1 started_at, $2 seq) the position, $3 rows: the queues with running tasks, one index
-- probe each, then a page of each, merged.
WITH RECURSIVE queues (q) AS (
    (SELECT t.queue FROM "{schema}".tasks t WHERE t.state = 1 ORDER BY t.queue LIMIT 1)
    UNION ALL
    SELECT (SELECT t.queue FROM "{schema}".tasks t
            WHERE t.state = 1 AND t.queue > queues.q ORDER BY t.queue LIMIT 1)
    FROM queues WHERE queues.q IS NOT NULL
)
SELECT p.* FROM queues CROSS JOIN LATERAL (
    SELECT t.id, t.queue, t.state, t.attempts, t.enqueued_at, t.eta, t.started_at,
           NULL::float8 AS finished_at, t.error, t.traceback, t.function, t.priority,
           t.progress, t.progress_message, t.worker_id, t.seq
    FROM "{schema}".tasks t
    WHERE t.state = 1 AND t.queue = queues.q
      AND (t.started_at, t.seq) > ($1::float8, $2::bigint)
    ORDER BY t.started_at, t.seq LIMIT $3
) p
ORDER BY p.started_at, p.seq LIMIT $3;

-- name: list_finished_queue
-- $1 queue, $2 status, ($3 finished_at, $4 id) the position, $5 rows; most recent first,
-- through results_listing. Expired results are passed over.
SELECT r.id, r.queue, r.status AS state, r.attempts, r.enqueued_at, r.eta, r.started_at,
       r.finished_at, r.error, r.traceback, r.function, r.priority,
       NULL::float8 AS progress, NULL::text AS progress_message, NULL::text AS worker_id,
       NULL::bigint AS seq
FROM "{schema}".results r
WHERE r.queue = $1::text AND r.status = $2::smallint
  AND (r.finished_at, r.id) < ($3::float8, $4::text)
  AND r.expires_at > (extract(epoch FROM clock_timestamp())::float8)
ORDER BY r.finished_at DESC, r.id DESC LIMIT $5;

-- name: list_finished_all
-- $1 status, ($2 finished_at, $3 id) the position, $4 rows: the queues with results, one
-- index probe each, then a page of each, merged.
WITH RECURSIVE queues (q) AS (
    (SELECT r.queue FROM "{schema}".results r ORDER BY r.queue LIMIT 1)
    UNION ALL
    SELECT (SELECT r.queue FROM "{schema}".results r
            WHERE r.queue > queues.q ORDER BY r.queue LIMIT 1)
    FROM queues WHERE queues.q IS NOT NULL
)
SELECT p.* FROM queues CROSS JOIN LATERAL (
    SELECT r.id, r.queue, r.status AS state, r.attempts, r.enqueued_at, r.eta,
           r.started_at, r.finished_at, r.error, r.traceback, r.function, r.priority,
           NULL::float8 AS progress, NULL::text AS progress_message,
           NULL::text AS worker_id, NULL::bigint AS seq
    FROM "{schema}".results r
    WHERE r.queue = queues.q AND r.status = $1::smallint
      AND (r.finished_at, r.id) < ($2::float8, $3::text)
      AND r.expires_at > (extract(epoch FROM clock_timestamp())::float8)
    ORDER BY r.finished_at DESC, r.id DESC LIMIT $4
) p
ORDER BY p.finished_at DESC, p.id DESC LIMIT $4;

-- name: requeue
-- Moves each failed or cancelled result that still has its payload back to tasks, due
-- now, as a new enqueue (a new seq; attempts, retries and progress from their defaults),
-- with its fence, and wakes the workers of its queue. The row lock of the DELETE makes
-- each task requeue once however many callers race. Per id: whether it was requeued, and
-- whether it was known (live, or with an unexpired result) to tell refused from unknown.
WITH now AS (SELECT (extract(epoch FROM clock_timestamp())::float8) AS t),
taken AS (
    DELETE FROM "{schema}".results r USING now
    WHERE r.id = ANY ($1::text[]) AND r.status IN (3, 4) AND r.payload IS NOT NULL
      AND r.expires_at > now.t
    RETURNING r.id, r.queue, r.priority, r.payload, r.options, r.enqueued_at, r.result_ttl,
              r.concurrency_key, r.concurrency_limit, r.function, r.fence
),
requeued AS (
    INSERT INTO "{schema}".tasks (id, queue, priority, eta, payload, options, enqueued_at,
                           result_ttl, concurrency_key, concurrency_limit, function,
                           fence)
    SELECT k.id, k.queue, k.priority, now.t, k.payload, k.options, k.enqueued_at,
           coalesce(k.result_ttl, 0), k.concurrency_key, k.concurrency_limit, k.function,
           coalesce(k.fence, 0)
    FROM taken k, now
    RETURNING id, queue
),
notified AS (
    SELECT pg_notify('sitq_work_{schema}', d.q) FROM (SELECT DISTINCT queue AS q FROM requeued) d
)
SELECT x.id, x.id IN (SELECT requeued.id FROM requeued) AS requeued,
       EXISTS (SELECT FROM "{schema}".tasks t WHERE t.id = x.id)
       OR EXISTS (SELECT FROM "{schema}".results r, now
                  WHERE r.id = x.id AND r.expires_at > now.t) AS known
FROM unnest($1::text[]) AS x(id)
UNION ALL SELECT NULL, NULL, NULL FROM notified;

-- name: purge_pending
-- $1 queue, $2 rows. Scheduled tasks are pending too; a task claimed meanwhile is not
-- deleted (the DELETE checks its state again).
DELETE FROM "{schema}".tasks WHERE state = 0 AND id IN (
    SELECT p.id FROM (
        (SELECT t.id FROM "{schema}".tasks t
         WHERE t.state = 0 AND t.concurrency_key IS NULL AND t.queue = $1::text LIMIT $2)
        UNION ALL
        (SELECT t.id FROM "{schema}".tasks t
         WHERE t.state = 0 AND t.concurrency_key IS NOT NULL AND t.queue = $1::text LIMIT $2)
    ) p LIMIT $2
);

-- name: purge_finished
-- $1 queue, $2 status, $3 rows; through results_listing.
DELETE FROM "{schema}".results WHERE id IN (
    SELECT r.id FROM "{schema}".results r
    WHERE r.queue = $1::text AND r.status = $2::smallint LIMIT $3
);

-- name: save_progress
-- Fenced like a lease extension, and as lightly committed: a lost progress report is
-- replaced by the next.
UPDATE "{schema}".tasks t SET progress = p.value, progress_message = p.message
FROM unnest($1::text[], $2::bigint[], $3::float8[], $4::text[])
        AS p(id, fence, value, message),
     (SELECT set_config('synchronous_commit', 'off', true)) AS cfg
WHERE t.id = p.id AND t.fence = p.fence AND t.state = 1;

-- name: put_worker
INSERT INTO "{schema}".workers (worker_id, data, expires_at) VALUES ($1, $2, $3)
ON CONFLICT (worker_id) DO UPDATE SET data = excluded.data, expires_at = excluded.expires_at;

-- name: remove_worker
DELETE FROM "{schema}".workers WHERE worker_id = $1;

-- name: list_workers
SELECT worker_id, data, expires_at FROM "{schema}".workers WHERE expires_at > $1;

-- name: replace_live
-- Debounce (enqueue_replacing), one transaction of the statements replace_*: the live row of
-- the id, locked (a claim skips it from here on; a claim that holds it is waited for, and then
-- it reads as running).
SELECT queue, state FROM "{schema}".tasks WHERE id = $1 FOR UPDATE;

-- name: replace_pending
-- The locked pending row becomes the new call, due at $3, with a new enqueue-order position;
-- its enqueue time and fence are kept, what a retry left is cleared.
UPDATE "{schema}".tasks SET priority = $2, eta = $3, payload = $4, options = $5,
    result_ttl = $6, concurrency_key = $7, concurrency_limit = $8, function = $9,
    attempts = 0, retries = 0, error = NULL, traceback = NULL, cancel_requested = false,
    progress = NULL, progress_message = NULL, seq = DEFAULT
WHERE id = $1 AND state = 0
RETURNING pg_notify('sitq_work_{schema}', queue);

-- name: replace_result
-- The id's result, locked, whether it is still live, and its fence.
SELECT queue, expires_at > (extract(epoch FROM clock_timestamp())::float8), fence
FROM "{schema}".results WHERE id = $1 FOR UPDATE;

-- name: replace_insert
-- The new call as a new row (its result, expired or not, gone), its fence going on from $11;
-- no row if another step stored the id meanwhile (the caller rolls back and looks again).
WITH gone AS (DELETE FROM "{schema}".results WHERE id = $1),
ins AS (
    INSERT INTO "{schema}".tasks (id, queue, priority, eta, payload, options, enqueued_at,
                           result_ttl, concurrency_key, concurrency_limit, function, fence)
    VALUES ($1, $10, $2, $3, $4, $5, (extract(epoch FROM clock_timestamp())::float8), $6, $7,
            $8, $9, $11)
    ON CONFLICT (id) DO NOTHING
    RETURNING queue
)
SELECT pg_notify('sitq_work_{schema}', queue) FROM ins;
