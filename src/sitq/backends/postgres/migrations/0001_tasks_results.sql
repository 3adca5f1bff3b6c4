-- Version 1: live tasks in tasks (claimed through partial indexes of due, scheduled and leased
-- rows), finished ones in results.
CREATE TABLE "{schema}".tasks (
    id text PRIMARY KEY,
    seq bigint GENERATED ALWAYS AS IDENTITY,
    queue text NOT NULL,
    state smallint NOT NULL DEFAULT 0,
    priority integer NOT NULL,
    eta float8 NOT NULL DEFAULT (extract(epoch FROM clock_timestamp())::float8),
    payload bytea NOT NULL,
    options text NOT NULL,
    attempts integer NOT NULL DEFAULT 0,
    retries integer NOT NULL DEFAULT 0,
    fence bigint NOT NULL DEFAULT 0,
    lease_until float8,
    worker_id text,
    cancel_requested boolean NOT NULL DEFAULT false,
    enqueued_at float8 NOT NULL DEFAULT (extract(epoch FROM clock_timestamp())::float8),
    started_at float8,
    result_ttl float8 NOT NULL,
    error text,
    traceback text,
    concurrency_key text,
    concurrency_limit integer
) WITH (fillfactor = 70);
CREATE INDEX tasks_due ON "{schema}".tasks (queue, priority DESC, eta, seq) WHERE state = 0;
CREATE INDEX tasks_scheduled ON "{schema}".tasks (queue, eta) WHERE state = 0;
CREATE INDEX tasks_leases ON "{schema}".tasks (lease_until) WHERE state = 1;
CREATE TABLE "{schema}".results (
    id text PRIMARY KEY,
    queue text NOT NULL,
    status smallint NOT NULL,
    attempts integer NOT NULL,
    enqueued_at float8 NOT NULL,
    eta float8 NOT NULL,
    started_at float8,
    finished_at float8 NOT NULL,
    expires_at float8 NOT NULL,
    value bytea,
    error text,
    traceback text
);
CREATE INDEX results_expiry ON "{schema}".results (expires_at);
