-- Version 3: what operators read and do. Each task records its function and, while it runs,
-- its last progress (worker records are kept in a file of their own: see backend.py). Listings
-- page through indexes in each status's order, and only where no index already gives that order:
-- * pending, every queue: sitq_tasks_pending. On one queue, the claim indexes already hold
--   the order (sitq_tasks_due, sitq_tasks_keyed_due) but for parked tasks, which get a small
--   index of their own (only keyed tasks waiting for a slot are ever in it);
-- * running and finished, with or without a queue: sitq_tasks_running, sitq_tasks_queue_running,
--   sitq_tasks_finished and sitq_tasks_queue_finished (the state leads the finished ones, so
--   that one index serves the three final states).
ALTER TABLE sitq_tasks ADD COLUMN function TEXT NOT NULL DEFAULT '';
ALTER TABLE sitq_tasks ADD COLUMN progress REAL;
ALTER TABLE sitq_tasks ADD COLUMN progress_message TEXT;
CREATE INDEX sitq_tasks_pending ON sitq_tasks (priority DESC, eta, seq) WHERE state = 0;
CREATE INDEX sitq_tasks_parked
    ON sitq_tasks (queue, priority DESC, eta, seq) WHERE state = 0 AND parked = 1;
CREATE INDEX sitq_tasks_running ON sitq_tasks (started_at, seq) WHERE state = 1;
CREATE INDEX sitq_tasks_queue_running ON sitq_tasks (queue, started_at, seq) WHERE state = 1;
CREATE INDEX sitq_tasks_finished ON sitq_tasks (state, finished_at, seq) WHERE state >= 2;
CREATE INDEX sitq_tasks_queue_finished
    ON sitq_tasks (state, queue, finished_at, seq) WHERE state >= 2;
