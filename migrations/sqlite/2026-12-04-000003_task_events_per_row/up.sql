-- Nothing to change on SQLite: its update trigger was row-level from the
-- start (AFTER UPDATE OF status ... WHEN); this keeps the migration lists
-- of both backends alike.
SELECT 1;
