-- A digest of the whole event: the same (source, id) with another digest is
-- a conflicting event (409), not a repeat of the stored one.
ALTER TABLE tasks ADD COLUMN event_digest text;
