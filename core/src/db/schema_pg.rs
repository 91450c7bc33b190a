//! The PostgreSQL schema: native uuid, jsonb and timestamptz columns.

// The table! macro writes one item per column; the columns are
// documented in the migrations.
#![allow(missing_docs)]

diesel::table! {
    tasks (id) {
        id -> Uuid,
        event_type -> Text,
        source -> Text,
        event_id -> Text,
        event -> Jsonb,
        event_digest -> Nullable<Text>,
        status -> Text,
        attempts -> Integer,
        max_attempts -> Integer,
        result -> Nullable<Jsonb>,
        error -> Nullable<Text>,
        worker -> Nullable<Text>,
        lease_expires_at -> Nullable<Timestamptz>,
        run_after -> Nullable<Timestamptz>,
        enqueued_at -> Nullable<Timestamptz>,
        publish_lock_until -> Nullable<Timestamptz>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        started_at -> Nullable<Timestamptz>,
        finished_at -> Nullable<Timestamptz>,
        cancel_requested_at -> Nullable<Timestamptz>,
        idempotency_key -> Nullable<Text>,
    }
}

diesel::table! {
    task_attempts (task_id, attempt) {
        task_id -> Uuid,
        attempt -> Integer,
        worker -> Text,
        started_at -> Timestamptz,
        finished_at -> Nullable<Timestamptz>,
        error -> Nullable<Text>,
    }
}

diesel::table! {
    task_events (task_id, seq) {
        task_id -> Uuid,
        seq -> Integer,
        status -> Text,
        at -> Timestamptz,
    }
}

diesel::joinable!(task_attempts -> tasks (task_id));
diesel::allow_tables_to_appear_in_same_query!(tasks, task_attempts);
