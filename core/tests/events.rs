//! The `task_events` triggers, on SQLite and on a PostgreSQL schema of
//! this test's own: every change of status on every path (insert, batched
//! claim, retry, set-based success, lease expiry, cancel, retry by a
//! client) is one event, numbered in order; what changes no status (a
//! lease renewal, a publish mark) is none; retention deletes a task's
//! events with it.

use std::time::Duration;

use chrono::Utc;
use ferry_core::db::{CancelAnswer, RetryAnswer, TaskEvent};
use ferry_core::task::Outcome;
use ferry_core::{Db, TaskId, TaskStatus};
use serde_json::json;

mod common;
use common::{insert, lease, new_task, on_both_backends};

use TaskStatus::*;

fn statuses(db: &Db, id: TaskId, after: i32) -> Vec<(i32, TaskStatus)> {
    db.task_events(id, after)
        .unwrap()
        .into_iter()
        .map(|e| (e.seq, e.status))
        .collect()
}

#[test]
fn every_change_of_status_is_one_event_in_order() {
    on_both_backends(|db| {
        let ids = insert(db, &[new_task("a", 3), new_task("b", 2)]);
        let (a, b) = (ids[0], ids[1]);
        assert_eq!(statuses(db, a, 0), [(1, Pending)]);
        db.mark_enqueued(&ids).unwrap();
        // Both claimed in one statement.
        let claimed = db.claim_many(&ids, "w", lease()).unwrap();
        assert!(claimed.iter().all(Option::is_some));
        assert!(db.renew_lease(a.attempt(1), lease()).unwrap());
        assert_eq!(statuses(db, a, 0), [(1, Pending), (2, Running)]);

        // a: a retry, then a success (set-based on PostgreSQL).
        let retry = Outcome::Retry {
            error: "again".into(),
            run_after: Utc::now(),
        };
        assert!(db.finish(a.attempt(1), &retry).unwrap());
        db.claim(a, "w", lease()).unwrap().unwrap();
        let done = Outcome::Succeeded(json!({"ok": true}));
        assert!(db.finish_many(&[(a.attempt(2), done)]).unwrap()[0]);
        let all = [
            (1, Pending),
            (2, Running),
            (3, Retrying),
            (4, Running),
            (5, Succeeded),
        ];
        assert_eq!(statuses(db, a, 0), all);
        assert_eq!(statuses(db, a, 3), all[3..]);

        // b: its worker is gone (its lease is made to have run out), the
        // relay takes it back, a client cancels it and then retries it.
        db.renew_lease(b.attempt(1), Utc::now() - Duration::from_secs(1))
            .unwrap();
        assert_eq!(db.expire_leases().unwrap(), 1);
        assert_eq!(db.cancel(b).unwrap(), CancelAnswer::Cancelled);
        assert!(matches!(
            db.retry(b, |_| 2, Utc::now()).unwrap(),
            RetryAnswer::Retried { .. }
        ));
        assert_eq!(
            statuses(db, b, 0),
            [
                (1, Pending),
                (2, Running),
                (3, Retrying),
                (4, Cancelled),
                (5, Pending)
            ]
        );

        // The shared reader's query: each task after its own seq.
        let events: Vec<TaskEvent> = db.task_events_after(&[(a, 4), (b, 2)]).unwrap();
        let got: Vec<(TaskId, i32)> = events.iter().map(|e| (e.task, e.seq)).collect();
        let mut want = vec![(a, 5), (b, 3), (b, 4), (b, 5)];
        want.sort_by_key(|(id, seq)| (id.to_string(), *seq));
        let mut got_sorted = got.clone();
        got_sorted.sort_by_key(|(id, seq)| (id.to_string(), *seq));
        assert_eq!(got_sorted, want);
        let at = events[0].at;
        assert!((Utc::now() - at).num_seconds().abs() < 60, "{at}");

        // Retention takes a's events with it, and leaves b's.
        let deleted = db
            .delete_finished_before(Utc::now() + Duration::from_secs(3600), 10)
            .unwrap();
        assert_eq!(deleted, 1);
        assert!(statuses(db, a, 0).is_empty());
        assert_eq!(statuses(db, b, 0).len(), 5);
    });
}
