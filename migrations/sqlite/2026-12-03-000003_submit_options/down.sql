DROP INDEX tasks_finished;
DROP INDEX tasks_idempotency_key;
ALTER TABLE tasks DROP COLUMN idempotency_key;
