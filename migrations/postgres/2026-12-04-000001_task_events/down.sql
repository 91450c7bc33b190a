DROP TRIGGER task_events_delete ON tasks;
DROP TRIGGER task_events_update ON tasks;
DROP TRIGGER task_events_insert ON tasks;
DROP FUNCTION task_events_deleted();
DROP FUNCTION task_events_updated();
DROP FUNCTION task_events_inserted();
DROP TABLE task_events;
