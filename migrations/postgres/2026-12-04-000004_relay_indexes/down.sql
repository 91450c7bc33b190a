CREATE INDEX tasks_unpublished ON tasks (run_after) WHERE enqueued_at IS NULL AND status IN ('pending', 'retrying');
DROP INDEX tasks_owed;
