//! The SQLite schema: the same columns as text, read into the same Rust types.

// The table! macro writes one item per column; the columns are
// documented in the migrations.
#![allow(missing_docs)]

diesel::table! {
    tasks (id) {
        id -> Text,
        event_type -> Text,
        source -> Text,
        event_id -> Text,
        event -> Json,
        event_digest -> Nullable<Text>,
        status -> Text,
        attempts -> Integer,
        max_attempts -> Integer,
        result -> Nullable<Json>,
        error -> Nullable<Text>,
        worker -> Nullable<Text>,
        lease_expires_at -> Nullable<TimestamptzSqlite>,
        run_after -> Nullable<TimestamptzSqlite>,
        enqueued_at -> Nullable<TimestamptzSqlite>,
        publish_lock_until -> Nullable<TimestamptzSqlite>,
        created_at -> TimestamptzSqlite,
        updated_at -> TimestamptzSqlite,
        started_at -> Nullable<TimestamptzSqlite>,
        finished_at -> Nullable<TimestamptzSqlite>,
        cancel_requested_at -> Nullable<TimestamptzSqlite>,
        idempotency_key -> Nullable<Text>,
    }
}

diesel::table! {
    task_attempts (task_id, attempt) {
        task_id -> Text,
        attempt -> Integer,
        worker -> Text,
        started_at -> TimestamptzSqlite,
        finished_at -> Nullable<TimestamptzSqlite>,
        error -> Nullable<Text>,
    }
}

diesel::table! {
    task_events (task_id, seq) {
        task_id -> Text,
        seq -> Integer,
        status -> Text,
        at -> TimestamptzSqlite,
    }
}

diesel::joinable!(task_attempts -> tasks (task_id));
diesel::allow_tables_to_appear_in_same_query!(tasks, task_attempts);
