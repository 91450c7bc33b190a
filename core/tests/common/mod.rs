//! What the database tests share: a task to insert, and a fresh database of
//! each backend to run a check on.

#![allow(dead_code)]

use std::time::Duration;

use chrono::{DateTime, Utc};
use ferry_core::task::NewTask;
use ferry_core::{Db, TaskId};
use ferry_testkit::PgSchema;
use serde_json::json;

/// An `org.ferry.echo` task for the event `event_id`, allowed
/// `max_attempts`, not delayed and without an idempotency key.
pub fn new_task(event_id: &str, max_attempts: i32) -> NewTask {
    NewTask {
        id: TaskId::new(),
        event_type: "org.ferry.echo".into(),
        source: "/ferry/tests".into(),
        event_id: event_id.into(),
        event: json!({"specversion": "1.0", "id": event_id, "data": {"n": 1}}),
        digest: format!("digest of {event_id}"),
        max_attempts,
        idempotency_key: None,
        run_after: None,
    }
}

/// A migrated SQLite database in a fresh file (kept while the directory
/// lives), and the file's path.
pub fn sqlite() -> (tempfile::TempDir, Db, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db").display().to_string();
    let db = Db::connect(&format!("sqlite://{path}"), 4).unwrap();
    db.migrate().unwrap();
    (dir, db, path)
}

/// Runs `check` against a fresh SQLite file and, when PostgreSQL answers
/// (under CI it must), against a fresh schema.
pub fn on_both_backends(check: impl Fn(&Db)) {
    let (_dir, db, _) = sqlite();
    check(&db);
    on_postgres(|db, _| check(db));
}

/// Runs `check` on a fresh PostgreSQL schema (given with its URL), when
/// PostgreSQL answers; the test kit's CI rule decides when it does not. The
/// schema is dropped when the check ends, passed or failed.
pub fn on_postgres(check: impl Fn(&Db, &str)) {
    if !ferry_testkit::services::require_named("postgres") {
        return;
    }
    let schema = PgSchema::new();
    let url = schema.url();
    let pg = Db::connect(&url, 4).unwrap();
    // Migrating twice (a second replica starting) is harmless.
    pg.migrate().unwrap();
    pg.migrate().unwrap();
    check(&pg, &url);
}

/// Inserts the tasks now; returns their ids in order.
pub fn insert(db: &Db, tasks: &[NewTask]) -> Vec<TaskId> {
    db.insert_tasks(tasks, Utc::now())
        .unwrap()
        .iter()
        .map(|s| s.id)
        .collect()
}

/// A lease that outlasts any test step.
pub fn lease() -> DateTime<Utc> {
    Utc::now() + Duration::from_secs(30)
}
