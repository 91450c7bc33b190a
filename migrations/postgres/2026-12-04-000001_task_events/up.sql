-- Every state change of every task, in order: what GET /status/<id>/events
-- streams and replays after a Last-Event-ID, and what the api's shared
-- reader (the waiters' hub) reads. Written by triggers on tasks, in the
-- transaction of the change itself, so no code path (claim, outcome, lease
-- expiry, cancel, retry) can change a status without its event, and an
-- event never exists for a change that rolled back.
CREATE TABLE task_events (
    task_id uuid NOT NULL,
    -- 1 for the insert, then one more per change of status.
    seq     integer NOT NULL,
    status  text NOT NULL,
    -- The task's updated_at with the change: the writer's clock.
    at      timestamptz NOT NULL,
    PRIMARY KEY (task_id, seq)
);

-- Statement-level triggers with transition tables: a batch (a claim of 256
-- tasks, a set-based success) costs one trigger call, not one per row.
-- (PostgreSQL allows no column list with transition tables, so the update
-- trigger runs on every update of tasks and keeps the rows whose status
-- changed; a lease renewal inserts nothing.)
CREATE FUNCTION task_events_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO task_events (task_id, seq, status, at)
    SELECT n.id, 1, n.status, n.updated_at FROM new_rows n;
    RETURN NULL;
END $$;

CREATE FUNCTION task_events_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- The row lock the update holds serializes changes of one task, so
    -- max + 1 cannot collide.
    INSERT INTO task_events (task_id, seq, status, at)
    SELECT n.id,
           COALESCE((SELECT max(e.seq) FROM task_events e WHERE e.task_id = n.id), 0) + 1,
           n.status, n.updated_at
    FROM new_rows n JOIN old_rows o ON o.id = n.id
    WHERE o.status IS DISTINCT FROM n.status;
    RETURN NULL;
END $$;

-- Retention deletes tasks in batches: their events go in the same statement.
CREATE FUNCTION task_events_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM task_events e USING old_rows o WHERE e.task_id = o.id;
    RETURN NULL;
END $$;

CREATE TRIGGER task_events_insert AFTER INSERT ON tasks
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION task_events_inserted();
CREATE TRIGGER task_events_update AFTER UPDATE ON tasks
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION task_events_updated();
CREATE TRIGGER task_events_delete AFTER DELETE ON tasks
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION task_events_deleted();

-- Tasks that existed before: their current state is their first event.
INSERT INTO task_events (task_id, seq, status, at)
SELECT id, 1, status, updated_at FROM tasks;
