-- GET /tasks filtered by type and status together: the first page is an
-- index range read in order, not one filter's index checked row by row.
-- The same index answers GET /tasks/counts (its (event_type, status) prefix),
-- so it replaces the counts' own index.
CREATE INDEX tasks_by_type_status_created ON tasks (event_type, status, created_at, id);
DROP INDEX tasks_by_type_status;
