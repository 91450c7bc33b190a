-- Every task Ferry accepted: the database is the record, RabbitMQ only delivers.
CREATE TABLE tasks (
    id               uuid PRIMARY KEY,
    event_type       text NOT NULL,
    source           text NOT NULL,
    event_id         text NOT NULL,
    event            jsonb NOT NULL,
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'running', 'retrying', 'succeeded', 'failed', 'cancelled')),
    attempts         integer NOT NULL DEFAULT 0,
    max_attempts     integer NOT NULL,
    result           jsonb,
    error            text,
    -- The worker holding the current attempt, and until when.
    worker           text,
    lease_expires_at timestamptz,
    -- A retry is not claimed before this.
    run_after        timestamptz,
    -- Set once the broker confirmed the task's message; null means the relay owes a publish.
    enqueued_at      timestamptz,
    -- A publisher (the API right after commit, or a relay) owns the publish until then.
    publish_lock_until timestamptz,
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL,
    started_at       timestamptz,
    finished_at      timestamptz,
    -- CloudEvents: the same (source, id) is the same event.
    CONSTRAINT tasks_event_key UNIQUE (source, event_id)
);

-- The relay's scan: tasks the broker does not hold yet.
CREATE INDEX tasks_unpublished ON tasks (run_after) WHERE enqueued_at IS NULL AND status IN ('pending', 'retrying');
-- The lease sweep: running tasks whose worker may be gone.
CREATE INDEX tasks_running_lease ON tasks (lease_expires_at) WHERE status = 'running';

CREATE TABLE task_attempts (
    task_id     uuid NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    attempt     integer NOT NULL,
    worker      text NOT NULL,
    started_at  timestamptz NOT NULL,
    finished_at timestamptz,
    error       text,
    PRIMARY KEY (task_id, attempt)
);
