-- The update trigger of task_events, row by row: the statement-level one
-- went quadratic. Its INSERT joined the transition tables (new_rows JOIN
-- old_rows ON id), and PL/pgSQL keeps the plan of a statement without
-- parameters from its first call in a session: planned for a 1-row
-- update, it is a nested loop, and an UPDATE of n rows then costs n². At
-- a million pending tasks the relay's mark of a large batch ran for
-- minutes, publish locks ran out and tasks were published twice.
--
-- Now a row-level trigger whose WHEN is evaluated by the executor itself,
-- without calling PL/pgSQL: an update that changes no status (a lease
-- renewal, a publish mark, a publish lock) costs nothing, and each change
-- of status is one indexed max(seq) probe and one insert, linear in rows.
--
-- Measured on PostgreSQL 15, 100 000 pending tasks, after a 1-row update
-- in the same session (the plan the old trigger then keeps), ms:
--                               no trigger  statement (old)  EXECUTE'd  this
--   20 000-row publish mark          461          34 236        1 029     396
--   20 000-row status change         486          57 896          747     835
--   256-row status change (claim)      7              33           15      19
--   2 000 1-row lease renewals        95             146          345     113
--   100 000-row publish mark       2 809               -        2 928   3 136
--   100 000-row status change      3 099               -        3 327   4 284
-- (The alternative kept the statement-level trigger and EXECUTEd its
-- insert, planned each call with the real transition-table sizes: linear
-- too, but it plans on every update of tasks, which the hot single-row
-- updates pay for.)
--
-- Same events as before: seq is max + 1 per task (the row lock of the
-- update serializes one task's changes), only real changes of status.
DROP TRIGGER task_events_update ON tasks;
DROP FUNCTION task_events_updated();

CREATE FUNCTION task_event_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO task_events (task_id, seq, status, at)
    VALUES (NEW.id,
            COALESCE((SELECT max(e.seq) FROM task_events e WHERE e.task_id = NEW.id), 0) + 1,
            NEW.status, NEW.updated_at);
    RETURN NULL;
END $$;

CREATE TRIGGER task_events_update AFTER UPDATE OF status ON tasks
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION task_event_changed();
