DROP INDEX tasks_finished;
CREATE INDEX tasks_finished ON tasks (finished_at) WHERE status IN ('succeeded', 'failed', 'cancelled');
DROP INDEX tasks_running_lease;
CREATE INDEX tasks_running_lease ON tasks (lease_expires_at) WHERE status = 'running';
DROP INDEX tasks_confirmed;
CREATE INDEX tasks_confirmed ON tasks (enqueued_at, status) WHERE enqueued_at IS NOT NULL AND status IN ('pending', 'retrying');
CREATE INDEX tasks_unpublished ON tasks (run_after) WHERE enqueued_at IS NULL AND status IN ('pending', 'retrying');
DROP INDEX tasks_owed;
