DROP TRIGGER task_events_delete;
DROP TRIGGER task_events_update;
DROP TRIGGER task_events_insert;
DROP TABLE task_events;
