//! The queries behind idempotency keys, delayed tasks and retention, on
//! SQLite and on a PostgreSQL schema of this test's own.

use std::time::Duration;

use chrono::{DateTime, Utc};
use ferry_core::task::{NewTask, Outcome};
use ferry_core::{TaskId, TaskStatus};

use serde_json::json;

mod common;
use common::{lease, on_both_backends};

fn new_task(event_id: &str, key: Option<&str>, run_after: Option<DateTime<Utc>>) -> NewTask {
    NewTask {
        idempotency_key: key.map(str::to_string),
        run_after,
        ..common::new_task(event_id, 3)
    }
}

#[test]
fn a_key_names_one_task_even_within_one_batch() {
    on_both_backends(|db| {
        let stored = db
            .insert_tasks(
                &[
                    new_task("a", Some("k1"), None),
                    new_task("a", Some("k1"), None),
                    new_task("b", Some("k1"), None),
                    new_task("c", Some("k2"), None),
                ],
                Utc::now(),
            )
            .unwrap();
        assert!(stored[0].created && !stored[0].key_conflict);
        assert_eq!(
            (stored[1].id, stored[1].created, stored[1].key_conflict),
            (stored[0].id, false, false)
        );
        assert_eq!(
            (stored[2].id, stored[2].created, stored[2].key_conflict),
            (stored[0].id, false, true)
        );
        assert!(stored[3].created);
        assert_eq!(db.count_with_status(TaskStatus::Pending).unwrap(), 2);
    });
}

#[test]
fn a_delayed_task_is_neither_owed_nor_claimed_before_it_is_due() {
    on_both_backends(|db| {
        let later = Utc::now() + Duration::from_secs(3600);
        let id = db
            .insert_tasks(&[new_task("later", None, Some(later))], lease())
            .unwrap()[0]
            .id;
        // No publish lock for the caller: the relay owns it, once due.
        assert!(db
            .claim_unpublished(10, Duration::from_secs(30))
            .unwrap()
            .is_empty());
        assert!(db.claim(id, "w1", lease()).unwrap().is_none());
        let view = db.task_view(id).unwrap().unwrap();
        assert_eq!(view.status, TaskStatus::Pending);
        let due = view.due_at.expect("a due time");
        assert!((due - later).num_milliseconds().abs() < 1, "{due} {later}");

        let past = Utc::now() - Duration::from_secs(1);
        let due_now = db
            .insert_tasks(&[new_task("past", None, Some(past))], Utc::now())
            .unwrap()[0]
            .id;
        assert_eq!(
            db.claim_unpublished(10, Duration::from_secs(30)).unwrap(),
            vec![due_now]
        );
        assert!(db.claim(due_now, "w1", lease()).unwrap().is_some());
        assert_eq!(db.task_view(due_now).unwrap().unwrap().due_at, None);
    });
}

#[test]
fn retention_deletes_only_old_final_tasks_with_their_attempts() {
    on_both_backends(|db| {
        let tasks: Vec<NewTask> = (0..5)
            .map(|i| new_task(&format!("r{i}"), None, None))
            .collect();
        let ids: Vec<TaskId> = common::insert(db, &tasks);
        // 0, 1, 2 finish (succeeded, failed, succeeded); 3 runs; 4 waits.
        for (i, id) in ids.iter().enumerate().take(4) {
            db.claim(*id, "w1", lease()).unwrap().unwrap();
            let outcome = match i {
                0 | 2 => Outcome::Succeeded(json!(i)),
                1 => Outcome::Failed("no".into()),
                _ => continue,
            };
            assert!(db.finish(id.attempt(1), &outcome).unwrap());
        }
        // Nothing finished before an hour ago.
        let hour_ago = Utc::now() - Duration::from_secs(3600);
        assert_eq!(db.delete_finished_before(hour_ago, 1000).unwrap(), 0);
        // Bounded: two, then the third.
        let now = Utc::now() + Duration::from_millis(1);
        assert_eq!(db.delete_finished_before(now, 2).unwrap(), 2);
        assert_eq!(db.delete_finished_before(now, 2).unwrap(), 1);
        assert_eq!(db.delete_finished_before(now, 2).unwrap(), 0);
        for id in &ids[..3] {
            assert!(db.task_view(*id).unwrap().is_none());
        }
        assert_eq!(db.status(ids[3]).unwrap(), Some(TaskStatus::Running));
        assert_eq!(db.status(ids[4]).unwrap(), Some(TaskStatus::Pending));
        // Their attempts went too: a task stored again under the same id
        // has no history.
        let mut again = new_task("r0-again", None, None);
        again.id = ids[0];
        assert!(db.insert_tasks(&[again], Utc::now()).unwrap()[0].created);
        let view = db.task_view(ids[0]).unwrap().unwrap();
        assert!(view.attempt_history.is_empty(), "{view:?}");
    });
}
