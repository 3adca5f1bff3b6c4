-- Version 3: the operating steps. Tasks and results carry the function's name; a running
-- task its last progress, saved under the current claim's fence and cleared at each claim.
-- A failed or cancelled result keeps what a requeue needs (payload, options, result_ttl,
-- concurrency key and limit); a success drops the payload and options, as before. Every
-- result keeps its last fence: a requeued task's claims go on counting from it, so a
-- worker that lost its claim before the task finished can never match a new one.
--
-- Listings read each page through an index, one per kind of state, each partial or on a
-- table that state already writes, so no write pays for a state it does not touch:
--   pending of one queue: the claim indexes tasks_due_plain and tasks_due_keyed, merged;
--   pending of every queue: tasks_pending_order (written by enqueues and retries only);
--   running: tasks_running by queue (every queue: one probe per queue with running tasks);
--   finished: results_listing by queue and status (every queue: one probe per queue).
-- The pending order runs priority down and due time up: a page after a cursor reads two
-- ranges of the index, the rest of the cursor's priority and then the lower priorities.
--
-- claim_keyed() and enqueue_ids() are replaced: the claim returns the function and clears
-- the progress, the enqueue stores the function.
ALTER TABLE "{schema}".tasks
    ADD COLUMN function text NOT NULL DEFAULT '',
    ADD COLUMN progress float8,
    ADD COLUMN progress_message text;
ALTER TABLE "{schema}".results
    ADD COLUMN function text NOT NULL DEFAULT '',
    ADD COLUMN priority integer NOT NULL DEFAULT 0,
    ADD COLUMN fence bigint,
    ADD COLUMN payload bytea,
    ADD COLUMN options text,
    ADD COLUMN result_ttl float8,
    ADD COLUMN concurrency_key text,
    ADD COLUMN concurrency_limit integer;
CREATE INDEX tasks_pending_order ON "{schema}".tasks (priority DESC, eta, seq) WHERE state = 0;
CREATE INDEX tasks_running ON "{schema}".tasks (queue, started_at, seq) WHERE state = 1;
CREATE INDEX results_listing ON "{schema}".results (queue, status, finished_at DESC, id DESC);
-- Worker records: the engine's JSON, until expires_at (by the worker's clock).
CREATE TABLE "{schema}".workers (
    worker_id text PRIMARY KEY,
    data bytea NOT NULL,
    expires_at float8 NOT NULL
);

DROP FUNCTION "{schema}".claim_keyed(text[], integer, float8, text);
CREATE FUNCTION "{schema}".claim_keyed(p_queues text[], p_n integer, p_lease float8, p_worker text)
RETURNS TABLE (id text, queue text, payload bytea, options text, priority integer,
               fence bigint, attempts integer, retries integer, enqueued_at float8,
               result_ttl float8, cancel_requested boolean, eta float8, seq bigint,
               now float8, keyed boolean, function text)
LANGUAGE plpgsql VOLATILE SET plan_cache_mode = force_generic_plan AS $fn$
#variable_conflict use_column
DECLARE
    v_now float8 := extract(epoch FROM clock_timestamp())::float8;
    v_keyed boolean;
    v_pool text[] := ARRAY[]::text[];
    v_seen text[] := ARRAY[]::text[];
    v_wake boolean := false;
    v_more boolean;
    v_chosen text[];
    v_max bigint;
    v_round integer := 0;
    v_need integer;
    v_scanned integer;
    v_kq text[];
    v_kk text[];
    v_kl integer[];
    v_kh bigint[];
    v_locked boolean[];
    v_running integer;
    v_taken integer;
    i integer;
    r record;
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    v_keyed := EXISTS (
        SELECT 1 FROM "{schema}".tasks t
        WHERE t.concurrency_key IS NOT NULL AND t.queue = ANY (p_queues)
          AND (CASE WHEN t.state = 0 THEN t.eta ELSE t.lease_until END) <= v_now);
    WHILE v_keyed AND cardinality(v_pool) < p_n LOOP
        v_round := v_round + 1;
        IF v_round > 4 THEN
            -- Keys that may still have room are left to the next claim: wake it.
            v_wake := true;
            EXIT;
        END IF;
        v_need := p_n - cardinality(v_pool);
        -- Keys with room (by this snapshot), in the order of their first claimable task:
        -- expired leases first, then an ordered scan of due keyed tasks that skips the
        -- rows of full keys.
        WITH running AS (
            SELECT t.queue AS q, t.concurrency_key AS k, count(*)::integer AS n
            FROM "{schema}".tasks t
            WHERE t.state = 1 AND t.concurrency_key IS NOT NULL
              AND t.queue = ANY (p_queues) AND t.lease_until > v_now
            GROUP BY 1, 2
        ),
        expired AS (
            SELECT t.queue AS q, t.concurrency_key AS k, t.concurrency_limit AS lim,
                   0 AS grp, t.priority AS pri, t.eta AS e, t.seq AS sq
            FROM "{schema}".tasks t
            WHERE t.state = 1 AND t.concurrency_key IS NOT NULL
              AND t.queue = ANY (p_queues) AND t.lease_until <= v_now
        ),
        scan AS (
            SELECT s.* FROM (SELECT DISTINCT unnest(p_queues) AS q) qs
            CROSS JOIN LATERAL (
                SELECT t.queue AS q, t.concurrency_key AS k, t.concurrency_limit AS lim,
                       1 AS grp, t.priority AS pri, t.eta AS e, t.seq AS sq
                FROM "{schema}".tasks t
                WHERE t.state = 0 AND t.concurrency_key IS NOT NULL AND t.queue = qs.q
                  AND t.eta <= v_now
                ORDER BY t.priority DESC, t.eta, t.seq
                LIMIT 200
            ) s
        ),
        cand AS (
            SELECT c.q, c.k, c.lim,
                   row_number() OVER (ORDER BY c.grp, c.pri DESC, c.e, c.sq) AS rn
            FROM (SELECT * FROM expired UNION ALL SELECT * FROM scan) c
            LEFT JOIN running ru ON ru.q = c.q AND ru.k = c.k
            WHERE coalesce(ru.n, 0) < coalesce(c.lim, 1)
              AND (c.q || ' ' || c.k) <> ALL (v_seen)
        ),
        keys AS (
            SELECT x.q, x.k, x.lim, x.rn FROM (
                SELECT DISTINCT ON (cand.q, cand.k) cand.q, cand.k, cand.lim, cand.rn
                FROM cand ORDER BY cand.q, cand.k, cand.rn
            ) x ORDER BY x.rn LIMIT v_need
        )
        SELECT (SELECT max(n) FROM (SELECT count(*)::integer AS n FROM scan GROUP BY scan.q) c),
               array_agg(keys.q), array_agg(keys.k),
               array_agg(keys.lim)
        INTO v_scanned, v_kq, v_kk, v_kl
        FROM keys;
        IF v_scanned >= 200 AND coalesce(cardinality(v_kq), 0) < v_need THEN
            -- Too many blocked rows to skip in order: visit each key once instead.
            WITH RECURSIVE running AS (
                SELECT t.queue AS q, t.concurrency_key AS k, count(*)::integer AS n
                FROM "{schema}".tasks t
                WHERE t.state = 1 AND t.concurrency_key IS NOT NULL
                  AND t.queue = ANY (p_queues) AND t.lease_until > v_now
                GROUP BY 1, 2
            ),
            walk AS (
                -- One probe per key: the key's first pending row in claim order.
                SELECT h.* FROM (SELECT DISTINCT unnest(p_queues) AS q) qs
                CROSS JOIN LATERAL (
                    SELECT t.queue AS q, t.concurrency_key AS k, t.concurrency_limit AS lim,
                           t.priority AS pri, t.eta AS e, t.seq AS sq
                    FROM "{schema}".tasks t
                    WHERE t.state = 0 AND t.concurrency_key IS NOT NULL AND t.queue = qs.q
                    ORDER BY t.concurrency_key, t.priority DESC, t.eta, t.seq LIMIT 1
                ) h
                UNION ALL
                SELECT h.* FROM walk w
                CROSS JOIN LATERAL (
                    SELECT t.queue AS q, t.concurrency_key AS k, t.concurrency_limit AS lim,
                           t.priority AS pri, t.eta AS e, t.seq AS sq
                    FROM "{schema}".tasks t
                    WHERE t.state = 0 AND t.concurrency_key IS NOT NULL AND t.queue = w.q
                      AND t.concurrency_key > w.k
                    ORDER BY t.concurrency_key, t.priority DESC, t.eta, t.seq LIMIT 1
                ) h
            ),
            heads AS (
                SELECT t.queue AS q, t.concurrency_key AS k, t.concurrency_limit AS lim,
                       0 AS grp, t.priority AS pri, t.eta AS e, t.seq AS sq
                FROM "{schema}".tasks t
                WHERE t.state = 1 AND t.concurrency_key IS NOT NULL
                  AND t.queue = ANY (p_queues) AND t.lease_until <= v_now
                UNION ALL
                SELECT w.q, w.k, w.lim, 1, w.pri, w.e, w.sq FROM walk w WHERE w.e <= v_now
                UNION ALL
                -- A key whose first row is not due yet (a later ETA at a higher
                -- priority) may still have due rows behind it.
                SELECT w.q, w.k, h.lim, 1, h.pri, h.e, h.sq
                FROM walk w CROSS JOIN LATERAL (
                    SELECT t.concurrency_limit AS lim, t.priority AS pri, t.eta AS e,
                           t.seq AS sq
                    FROM "{schema}".tasks t
                    WHERE t.state = 0 AND t.queue = w.q AND t.concurrency_key = w.k
                      AND t.eta <= v_now
                    ORDER BY t.priority DESC, t.eta, t.seq LIMIT 1
                ) h
                WHERE w.e > v_now
            ),
            keys AS (
                SELECT x.q, x.k, x.lim FROM (
                    SELECT DISTINCT ON (c.q, c.k) c.q, c.k, c.lim, c.grp, c.pri, c.e, c.sq
                    FROM heads c
                    LEFT JOIN running ru ON ru.q = c.q AND ru.k = c.k
                    WHERE coalesce(ru.n, 0) < coalesce(c.lim, 1)
                      AND (c.q || ' ' || c.k) <> ALL (v_seen)
                    ORDER BY c.q, c.k, c.grp, c.pri DESC, c.e, c.sq
                ) x ORDER BY x.grp, x.pri DESC, x.e, x.sq LIMIT v_need
            )
            SELECT array_agg(keys.q), array_agg(keys.k), array_agg(keys.lim)
            INTO v_kq, v_kk, v_kl
            FROM keys;
        END IF;
        EXIT WHEN v_kq IS NULL;
        v_more := cardinality(v_kq) >= v_need;
        -- Lock the keys. Blocking waits happen only in ascending hash order over the whole
        -- claim (a lock at or below one already held is only tried), so claimers can
        -- never wait for each other in a cycle; the lock then covers count and claim.
        SELECT array_agg(hashtextextended('"{schema}" ' || x.q || ' ' || x.k, 0) ORDER BY x.i)
        INTO v_kh FROM unnest(v_kq, v_kk) WITH ORDINALITY AS x(q, k, i);
        v_locked := array_fill(false, ARRAY[cardinality(v_kq)]);
        FOR r IN SELECT x.h, x.i FROM unnest(v_kh) WITH ORDINALITY AS x(h, i) ORDER BY x.h
        LOOP
            v_seen := v_seen || (v_kq[r.i] || ' ' || v_kk[r.i]);
            IF v_max IS NULL OR r.h > v_max THEN
                PERFORM pg_advisory_xact_lock(r.h);
                v_max := r.h;
                v_locked[r.i] := true;
            ELSIF pg_try_advisory_xact_lock(r.h) THEN
                v_locked[r.i] := true;
            ELSE
                -- Another claimer is deciding about this key; make sure someone looks
                -- again once it is done.
                v_wake := true;
            END IF;
        END LOOP;
        v_now := extract(epoch FROM clock_timestamp())::float8;
        -- Each statement from here on sees every claim committed before the locks were
        -- taken, so the counts are exact; later settlements only free slots.
        FOR i IN 1 .. cardinality(v_kq) LOOP
            CONTINUE WHEN NOT v_locked[i];
            SELECT count(*)::integer INTO v_running FROM "{schema}".tasks t
            WHERE t.state = 1 AND t.queue = v_kq[i] AND t.concurrency_key = v_kk[i]
              AND t.lease_until > v_now;
            v_taken := 0;
            IF v_running >= coalesce(v_kl[i], 1) THEN
                -- Filled since the look above: other keys may take its place.
                v_more := true;
                CONTINUE;
            END IF;
            FOR r IN
                SELECT t.id AS tid, t.concurrency_limit AS lim FROM "{schema}".tasks t
                WHERE t.state = 1 AND t.queue = v_kq[i] AND t.concurrency_key = v_kk[i]
                  AND t.lease_until <= v_now
                ORDER BY t.priority DESC, t.eta, t.seq
                LIMIT least(p_n, coalesce(v_kl[i], 1) - v_running)
                FOR UPDATE OF t SKIP LOCKED
            LOOP
                IF v_running + v_taken < coalesce(r.lim, 1) THEN
                    v_pool := v_pool || r.tid;
                    v_taken := v_taken + 1;
                END IF;
            END LOOP;
            CONTINUE WHEN v_taken >= least(p_n, coalesce(v_kl[i], 1) - v_running);
            FOR r IN
                SELECT t.id AS tid, t.concurrency_limit AS lim FROM "{schema}".tasks t
                WHERE t.state = 0 AND t.queue = v_kq[i] AND t.concurrency_key = v_kk[i]
                  AND t.eta <= v_now
                ORDER BY t.priority DESC, t.eta, t.seq
                LIMIT least(p_n, coalesce(v_kl[i], 1) - v_running) - v_taken
                FOR UPDATE OF t SKIP LOCKED
            LOOP
                IF v_running + v_taken < coalesce(r.lim, 1) THEN
                    v_pool := v_pool || r.tid;
                    v_taken := v_taken + 1;
                END IF;
            END LOOP;
        END LOOP;
        EXIT WHEN NOT v_more;
    END LOOP;
    -- The keyed rows taken above compete with unkeyed ones in the usual order.
    WITH exp AS (
        SELECT t.id AS tid, 1 AS grp, t.priority AS pri, t.eta AS e, t.seq AS sq
        FROM "{schema}".tasks t
        WHERE t.state = 1 AND t.concurrency_key IS NULL AND t.queue = ANY (p_queues)
          AND t.lease_until <= v_now
        LIMIT p_n FOR UPDATE OF t SKIP LOCKED
    ),
    due AS (
        SELECT d.* FROM (SELECT DISTINCT unnest(p_queues) AS q) qs
        CROSS JOIN LATERAL (
            SELECT t.id AS tid, 0 AS grp, t.priority AS pri, t.eta AS e, t.seq AS sq
            FROM "{schema}".tasks t
            WHERE t.state = 0 AND t.concurrency_key IS NULL AND t.queue = qs.q
              AND t.eta <= v_now
            ORDER BY t.priority DESC, t.eta, t.seq
            LIMIT p_n FOR UPDATE OF t SKIP LOCKED
        ) d
    ),
    pool AS (
        SELECT t.id AS tid, t.state::integer AS grp, t.priority AS pri, t.eta AS e,
               t.seq AS sq
        FROM "{schema}".tasks t WHERE t.id = ANY (v_pool)
    )
    SELECT array_agg(c.tid) INTO v_chosen FROM (
        SELECT a.tid FROM (
            SELECT * FROM exp UNION ALL SELECT * FROM due UNION ALL SELECT * FROM pool
        ) a
        ORDER BY a.grp DESC, a.pri DESC, a.e, a.sq
        LIMIT p_n
    ) c;
    IF v_wake THEN
        PERFORM pg_notify('sitq_work_{schema}', x.q)
        FROM (SELECT DISTINCT unnest(p_queues) AS q) x;
    END IF;
    IF v_chosen IS NULL THEN
        IF v_keyed THEN
            RETURN QUERY SELECT NULL::text, NULL::text, NULL::bytea, NULL::text,
                NULL::integer, NULL::bigint, NULL::integer, NULL::integer, NULL::float8,
                NULL::float8, NULL::boolean, NULL::float8, NULL::bigint, v_now, true,
                NULL::text;
        END IF;
        RETURN;
    END IF;
    RETURN QUERY
    WITH claimed AS (
        UPDATE "{schema}".tasks t SET state = 1, attempts = t.attempts + 1, fence = t.fence + 1,
            lease_until = v_now + p_lease, worker_id = p_worker, started_at = v_now,
            progress = NULL, progress_message = NULL
        WHERE t.id = ANY (v_chosen)
        RETURNING t.id, t.queue, t.payload, t.options, t.priority, t.fence, t.attempts,
                  t.retries, t.enqueued_at, t.result_ttl, t.cancel_requested, t.eta, t.seq,
                  t.function
    )
    SELECT c.id, c.queue, c.payload, c.options, c.priority, c.fence, c.attempts, c.retries,
           c.enqueued_at, c.result_ttl, c.cancel_requested, c.eta, c.seq, v_now, v_keyed,
           c.function
    FROM claimed c;
END
$fn$;


DROP FUNCTION "{schema}".enqueue_ids(text[], text[], integer[], float8[], bytea[], text[],
                                  float8[], text[], integer[], boolean[]);
CREATE FUNCTION "{schema}".enqueue_ids(text[], text[], integer[], float8[], bytea[], text[],
                                float8[], text[], integer[], boolean[], text[])
RETURNS SETOF text LANGUAGE plpgsql VOLATILE SET plan_cache_mode = force_generic_plan
AS $fn$
DECLARE
    v_ids text[];
BEGIN
    WITH now AS (SELECT extract(epoch FROM clock_timestamp())::float8 AS t),
    input AS (
        SELECT * FROM unnest($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
            AS x(id, queue, priority, eta, payload, options, result_ttl, ckey, climit,
                 immediate, function)
    ),
    cleared AS (
        DELETE FROM "{schema}".results r USING input i, now
        WHERE r.id = i.id AND r.expires_at <= now.t
    ),
    ins AS (
        INSERT INTO "{schema}".tasks (id, queue, priority, eta, payload, options, enqueued_at,
                               result_ttl, concurrency_key, concurrency_limit, function)
        SELECT i.id, i.queue, i.priority, CASE WHEN i.immediate THEN now.t ELSE i.eta END,
               i.payload, i.options, now.t, i.result_ttl, i.ckey, i.climit, i.function
        FROM input i, now
        WHERE NOT EXISTS (
            SELECT 1 FROM "{schema}".results r WHERE r.id = i.id AND r.expires_at > now.t
        )
        ON CONFLICT (id) DO NOTHING
        RETURNING id, queue
    ),
    notified AS (
        SELECT pg_notify('sitq_work_{schema}', d.q)
        FROM (SELECT DISTINCT ins.queue AS q FROM ins) d
    )
    SELECT array_agg(x.id) FILTER (WHERE x.id IS NOT NULL) INTO v_ids
    FROM (SELECT ins.id FROM ins UNION ALL SELECT NULL FROM notified) x;
    IF v_ids IS NULL THEN
        RETURN;
    END IF;
    RETURN QUERY
    WITH undone AS (
        DELETE FROM "{schema}".tasks t USING "{schema}".results r
        WHERE t.id = ANY (v_ids) AND r.id = t.id
          AND r.expires_at > extract(epoch FROM clock_timestamp())::float8
        RETURNING t.id
    )
    SELECT x.id FROM unnest(v_ids) AS x(id)
    WHERE x.id NOT IN (SELECT undone.id FROM undone);
END
$fn$;
