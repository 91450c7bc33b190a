-- The relay's search for lost messages: claimable tasks whose message the
-- broker confirmed, oldest confirm first. It counts those confirmed before
-- a time (up to a cap) and takes the oldest, so both are range reads of
-- this index, bounded per round however many tasks wait in the queue.
-- Queries must spell the status list as literals to match the predicate.
-- status is a column too: SQLite then answers the count from the index
-- alone (it checks the query's status terms against the index's columns).
CREATE INDEX tasks_confirmed ON tasks (enqueued_at, status) WHERE enqueued_at IS NOT NULL AND status IN ('pending', 'retrying');
