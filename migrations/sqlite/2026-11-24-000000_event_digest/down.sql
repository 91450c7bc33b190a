ALTER TABLE tasks DROP COLUMN event_digest;
