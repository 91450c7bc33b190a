DROP TRIGGER task_events_update ON tasks;
DROP FUNCTION task_event_changed();

CREATE FUNCTION task_events_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO task_events (task_id, seq, status, at)
    SELECT n.id,
           COALESCE((SELECT max(e.seq) FROM task_events e WHERE e.task_id = n.id), 0) + 1,
           n.status, n.updated_at
    FROM new_rows n JOIN old_rows o ON o.id = n.id
    WHERE o.status IS DISTINCT FROM n.status;
    RETURN NULL;
END $$;

CREATE TRIGGER task_events_update AFTER UPDATE ON tasks
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION task_events_updated();
