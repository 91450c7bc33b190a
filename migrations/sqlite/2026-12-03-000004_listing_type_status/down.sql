CREATE INDEX tasks_by_type_status ON tasks (event_type, status);
DROP INDEX tasks_by_type_status_created;
