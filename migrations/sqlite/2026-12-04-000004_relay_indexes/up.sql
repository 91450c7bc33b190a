-- The relay's queries as index range reads however long the backlog.
--
-- The claim of owed tasks reads them in the order they are due (run_after,
-- or created_at for a task never delayed) from tasks_owed, from the oldest
-- due to now, and stops at its LIMIT; tasks delayed into the future are
-- past the range's end. tasks_unpublished (on run_after) could not give
-- that order.
--
-- SQLite has no statistics: given `status IN (...)` it took the equality
-- on tasks_by_status (status, created_at, id) over any range of a partial
-- index, so every relay query read all tasks of those statuses and sorted
-- them (a million pending, every round). The relay's queries now say
-- `+status`, which no index on status can serve, and the partial indexes
-- say `+status` in their predicate too, so SQLite still sees that the
-- query implies it. Their columns and order are as before.
--
-- Measured on 1 000 000 pending tasks of which the oldest 990 000
-- confirmed: a claim of 500 took 1.09 s and the lost-message probe 1.30 s
-- (each read every pending task and sorted them); now 1 ms and 0.1 ms.
CREATE INDEX tasks_owed ON tasks (coalesce(run_after, created_at))
    WHERE enqueued_at IS NULL AND +status IN ('pending', 'retrying');
DROP INDEX tasks_unpublished;

DROP INDEX tasks_confirmed;
CREATE INDEX tasks_confirmed ON tasks (enqueued_at, status)
    WHERE enqueued_at IS NOT NULL AND +status IN ('pending', 'retrying');

DROP INDEX tasks_running_lease;
CREATE INDEX tasks_running_lease ON tasks (lease_expires_at) WHERE +status = 'running';

DROP INDEX tasks_finished;
CREATE INDEX tasks_finished ON tasks (finished_at) WHERE +status IN ('succeeded', 'failed', 'cancelled');
