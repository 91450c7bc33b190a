//! Cancel and retry in the database, on SQLite and on a PostgreSQL schema
//! of this test's own: each a compare-and-set by status.

use chrono::Utc;
use ferry_core::db::{CancelAnswer, Lease, RetryAnswer};
use ferry_core::task::Outcome;
use ferry_core::{Db, TaskId, TaskStatus};
use serde_json::json;

mod common;
use common::{lease, new_task, on_both_backends};

fn insert(db: &Db, event_id: &str) -> TaskId {
    db.insert_tasks(&[new_task(event_id, 2)], Utc::now())
        .unwrap()[0]
        .id
}

#[test]
fn a_cancelled_task_is_never_claimed_and_runs_again_after_a_retry() {
    on_both_backends(|db| {
        let id = insert(db, "pending");
        assert_eq!(
            db.retry(id, |_| 3, Utc::now()).unwrap(),
            RetryAnswer::NotRetryable(TaskStatus::Pending)
        );
        assert_eq!(db.cancel(id).unwrap(), CancelAnswer::Cancelled);
        assert_eq!(db.cancel(id).unwrap(), CancelAnswer::AlreadyCancelled);
        assert!(db.claim(id, "w", lease()).unwrap().is_none());
        let view = db.task_view(id).unwrap().unwrap();
        assert_eq!(view.status, TaskStatus::Cancelled);
        assert!(view.finished_at.is_some());
        // Retried: pending, claimable, a budget of attempts so far + 3.
        assert_eq!(
            db.retry(id, |_| 3, Utc::now()).unwrap(),
            RetryAnswer::Retried { max_attempts: 3 }
        );
        let view = db.task_view(id).unwrap().unwrap();
        assert_eq!((view.status, view.finished_at), (TaskStatus::Pending, None));
        assert_eq!(db.claim(id, "w", lease()).unwrap().unwrap().attempt, 1);
        assert_eq!(db.cancel(TaskId::new()).unwrap(), CancelAnswer::NotFound);
        assert_eq!(
            db.retry(TaskId::new(), |_| 3, Utc::now()).unwrap(),
            RetryAnswer::NotFound
        );
    });
}

#[test]
fn a_running_task_is_asked_to_stop_and_a_retry_after_the_request_cancels_it() {
    on_both_backends(|db| {
        let id = insert(db, "running");
        db.claim(id, "w", lease()).unwrap().unwrap();
        let attempt = id.attempt(1);
        assert_eq!(
            db.renew_lease_or_cancel(attempt, lease()).unwrap(),
            Lease::Held
        );
        assert_eq!(
            db.cancel(id).unwrap(),
            CancelAnswer::StopRequested { attempt: 1 }
        );
        assert_eq!(
            db.renew_lease_or_cancel(attempt, lease()).unwrap(),
            Lease::CancelRequested
        );
        assert_eq!(
            db.renew_lease_or_cancel(id.attempt(2), lease()).unwrap(),
            Lease::Lost
        );
        // The attempt ended in a retry before the stop reached it: cancelled.
        let retry = Outcome::Retry {
            error: "boom".into(),
            run_after: Utc::now(),
        };
        assert!(db.finish(attempt, &retry).unwrap());
        let view = db.task_view(id).unwrap().unwrap();
        assert_eq!(view.status, TaskStatus::Cancelled);
        assert!(db.claim(id, "w", lease()).unwrap().is_none());
        // Retried: the attempts go on, the request is forgotten.
        assert_eq!(
            db.retry(id, |_| 2, Utc::now()).unwrap(),
            RetryAnswer::Retried { max_attempts: 3 }
        );
        let claimed = db.claim(id, "w", lease()).unwrap().unwrap();
        assert_eq!((claimed.attempt, claimed.max_attempts), (2, 3));
        assert_eq!(
            db.renew_lease_or_cancel(id.attempt(2), lease()).unwrap(),
            Lease::Held
        );
        // Stopped by its worker: cancelled, the attempt closed with its error.
        // The request names the attempt it stops.
        assert_eq!(
            db.cancel(id).unwrap(),
            CancelAnswer::StopRequested { attempt: 2 }
        );
        assert!(db
            .finish(id.attempt(2), &Outcome::Cancelled("stopped".into()))
            .unwrap());
        let view = db.task_view(id).unwrap().unwrap();
        assert_eq!(view.status, TaskStatus::Cancelled);
        assert_eq!(view.attempt_history.len(), 2);
        assert_eq!(view.attempt_history[1].error.as_deref(), Some("stopped"));
        // A finished task is not cancelled.
        let done = insert(db, "done");
        db.claim(done, "w", lease()).unwrap().unwrap();
        assert!(db
            .finish(done.attempt(1), &Outcome::Succeeded(json!(1)))
            .unwrap());
        assert_eq!(
            db.cancel(done).unwrap(),
            CancelAnswer::Finished(TaskStatus::Succeeded)
        );
        assert_eq!(
            db.retry(done, |_| 2, Utc::now()).unwrap(),
            RetryAnswer::NotRetryable(TaskStatus::Succeeded)
        );
    });
}

/// A retry while another connection writes (on SQLite, a broker confirm
/// being recorded) waits for it and goes through: it never reads in one
/// transaction and then writes, which SQLite refuses at once with
/// "database is locked" when a write landed in between. (Found by
/// api/tests/property.rs as a 503 from `POST /tasks/<id>/retry`.)
#[test]
fn a_retry_waits_for_another_sqlite_writer() {
    use diesel::connection::SimpleConnection;
    use diesel::Connection;
    let (_dir, db, path) = common::sqlite();
    let id = insert(&db, "failed");
    db.claim(id, "w", lease()).unwrap().unwrap();
    assert!(db
        .finish(id.attempt(1), &Outcome::Failed("boom".into()))
        .unwrap());
    let other = insert(&db, "other");
    let mut writer = diesel::SqliteConnection::establish(&path).unwrap();
    writer
        .batch_execute(&format!(
            "BEGIN IMMEDIATE; UPDATE tasks SET updated_at = updated_at WHERE id = '{other}';"
        ))
        .unwrap();
    let commit = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(300));
        writer.batch_execute("COMMIT;").unwrap();
    });
    assert_eq!(
        db.retry(id, |_| 3, Utc::now()).unwrap(),
        RetryAnswer::Retried { max_attempts: 4 }
    );
    commit.join().unwrap();
}
