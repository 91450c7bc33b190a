-- Every state change of every task, in order: what GET /status/<id>/events
-- streams and replays after a Last-Event-ID, and what the api's shared
-- reader (the waiters' hub) reads. Written by triggers on tasks, in the
-- transaction of the change itself, so no code path (claim, outcome, lease
-- expiry, cancel, retry) can change a status without its event, and an
-- event never exists for a change that rolled back.
CREATE TABLE task_events (
    task_id text NOT NULL,
    -- 1 for the insert, then one more per change of status.
    seq     integer NOT NULL,
    status  text NOT NULL,
    -- The task's updated_at with the change: the writer's clock.
    at      text NOT NULL,
    PRIMARY KEY (task_id, seq)
) WITHOUT ROWID;

CREATE TRIGGER task_events_insert AFTER INSERT ON tasks
BEGIN
    INSERT INTO task_events (task_id, seq, status, at)
    VALUES (NEW.id, 1, NEW.status, NEW.updated_at);
END;

-- Only a real change of status: a lease renewal or a publish mark is none.
-- SQLite has one writer at a time, so max + 1 cannot collide.
CREATE TRIGGER task_events_update AFTER UPDATE OF status ON tasks
WHEN OLD.status IS NOT NEW.status
BEGIN
    INSERT INTO task_events (task_id, seq, status, at)
    VALUES (NEW.id,
            COALESCE((SELECT max(seq) FROM task_events WHERE task_id = NEW.id), 0) + 1,
            NEW.status, NEW.updated_at);
END;

-- Retention deletes tasks in batches: their events go with them.
CREATE TRIGGER task_events_delete AFTER DELETE ON tasks
BEGIN
    DELETE FROM task_events WHERE task_id = OLD.id;
END;

-- Tasks that existed before: their current state is their first event.
INSERT INTO task_events (task_id, seq, status, at)
SELECT id, 1, status, updated_at FROM tasks;
