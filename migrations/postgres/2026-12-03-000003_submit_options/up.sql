-- Idempotency-Key on /receive: a producer's key names at most one task, for
-- as long as the task is kept; its event's digest (event_digest) tells a
-- repeat (200) from a reuse with another body (422).
ALTER TABLE tasks ADD COLUMN idempotency_key text;
CREATE UNIQUE INDEX tasks_idempotency_key ON tasks (idempotency_key) WHERE idempotency_key IS NOT NULL;
-- Retention: the relay deletes final tasks by finished_at.
CREATE INDEX tasks_finished ON tasks (finished_at) WHERE status IN ('succeeded', 'failed', 'cancelled');
