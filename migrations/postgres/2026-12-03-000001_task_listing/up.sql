-- GET /tasks: newest first, keyset on (created_at, id) descending. One index
-- per filter, each ending in (created_at, id), so the first page of any
-- filter is an index range read in order, never a sort of the table.
CREATE INDEX tasks_by_created ON tasks (created_at, id);
CREATE INDEX tasks_by_status ON tasks (status, created_at, id);
CREATE INDEX tasks_by_type ON tasks (event_type, created_at, id);
CREATE INDEX tasks_by_source ON tasks (source, created_at, id);
-- GET /tasks/counts: a GROUP BY over (event_type, status) answered from this
-- index alone (a covering index scan), not from the table's rows.
CREATE INDEX tasks_by_type_status ON tasks (event_type, status);
