-- When a client asked to stop the running attempt (POST /tasks/<id>/cancel);
-- the worker holding it sees the request at its next lease renewal if the
-- control message did not reach it.
ALTER TABLE tasks ADD COLUMN cancel_requested_at timestamptz;
