//! The task table's compare-and-set transitions, on SQLite and on a
//! PostgreSQL schema of this test's own.

use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::connection::SimpleConnection;
use diesel::Connection;
use ferry_core::db::{DbError, Publish};
use ferry_core::task::{AttemptWrite, AttemptWritten, NewTask, Outcome, SubmitWrite};
use ferry_core::{Db, TaskId, TaskStatus};
use serde_json::json;

mod common;
use common::{lease, new_task, on_both_backends, on_postgres, sqlite};

/// Inserts the tasks at `at`; returns their ids in order.
fn insert_ids(db: &Db, tasks: &[NewTask], at: DateTime<Utc>) -> Vec<TaskId> {
    let stored = db.insert_tasks(tasks, at).unwrap();
    stored.iter().map(|s| s.id).collect()
}

/// Claims the task and fails its first attempt with a retry that is due now.
fn fail_first_attempt_retry_due_now(db: &Db, id: TaskId) {
    db.claim(id, "w1", lease()).unwrap().unwrap();
    let retry = Outcome::Retry {
        error: "boom".into(),
        run_after: Utc::now() - Duration::from_millis(1),
    };
    assert!(db.finish(id.attempt(1), &retry).unwrap());
}

#[test]
fn an_event_is_stored_once() {
    on_both_backends(|db| {
        let first = db.insert_tasks(&[new_task("e1", 3)], Utc::now()).unwrap();
        assert!(first[0].created);
        let again = db
            .insert_tasks(&[new_task("e1", 3), new_task("e2", 3)], Utc::now())
            .unwrap();
        assert_eq!((again[0].id, again[0].created), (first[0].id, false));
        assert!(again[1].created);
        assert_eq!(db.status(first[0].id).unwrap(), Some(TaskStatus::Pending));
        assert_eq!(db.status(TaskId::new()).unwrap(), None);
    });
}

#[test]
fn only_one_claim_wins_and_finished_tasks_never_run_again() {
    on_both_backends(|db| {
        let id = db.insert_tasks(&[new_task("e1", 3)], Utc::now()).unwrap()[0].id;
        let claimed = db
            .claim(id, "w1", lease())
            .unwrap()
            .expect("first claim wins");
        assert_eq!(claimed.attempt, 1);
        assert!(
            db.claim(id, "w2", lease()).unwrap().is_none(),
            "a running task is not claimable"
        );
        assert!(db.renew_lease(id.attempt(1), lease()).unwrap());
        // A stale attempt number cannot record anything.
        assert!(!db
            .finish(id.attempt(2), &Outcome::Succeeded(json!(null)))
            .unwrap());
        assert!(db
            .finish(id.attempt(1), &Outcome::Succeeded(json!({"ok": true})))
            .unwrap());
        assert!(!db
            .finish(id.attempt(1), &Outcome::Failed("late".into()))
            .unwrap());
        assert!(
            db.claim(id, "w3", lease()).unwrap().is_none(),
            "a finished task is not claimable"
        );
        let view = db.task_view(id).unwrap().unwrap();
        assert_eq!(view.status, TaskStatus::Succeeded);
        assert_eq!(view.result, Some(json!({"ok": true})));
        assert_eq!(view.attempt_history.len(), 1);
        assert_eq!(view.attempt_history[0].worker, "w1");
    });
}

#[test]
fn retries_wait_for_their_time_and_count_attempts() {
    on_both_backends(|db| {
        let id = db.insert_tasks(&[new_task("e1", 2)], Utc::now()).unwrap()[0].id;
        db.claim(id, "w1", lease()).unwrap().unwrap();
        let later = Utc::now() + Duration::from_secs(60);
        assert!(db
            .finish(
                id.attempt(1),
                &Outcome::Retry {
                    error: "boom".into(),
                    run_after: later
                }
            )
            .unwrap());
        assert_eq!(db.status(id).unwrap(), Some(TaskStatus::Retrying));
        assert!(
            db.claim(id, "w1", lease()).unwrap().is_none(),
            "not due yet"
        );
        assert!(
            db.claim_unpublished(10, Duration::from_secs(30))
                .unwrap()
                .is_empty(),
            "relay waits too"
        );

        let id = db.insert_tasks(&[new_task("e2", 2)], Utc::now()).unwrap()[0].id;
        fail_first_attempt_retry_due_now(db, id);
        let second = db
            .claim(id, "w2", lease())
            .unwrap()
            .expect("a due retry is claimable");
        assert_eq!((second.attempt, second.max_attempts), (2, 2));
        assert!(db
            .finish(id.attempt(2), &Outcome::Failed("boom again".into()))
            .unwrap());
        let view = db.task_view(id).unwrap().unwrap();
        assert_eq!(view.status, TaskStatus::Failed);
        assert_eq!(view.error.as_deref(), Some("boom again"));
        assert!(view.finished_at.is_some());
        let errors: Vec<_> = view
            .attempt_history
            .iter()
            .map(|a| a.error.clone())
            .collect();
        assert_eq!(
            errors,
            [Some("boom".to_string()), Some("boom again".to_string())]
        );
    });
}

#[test]
fn the_relay_publishes_what_the_broker_never_confirmed() {
    on_both_backends(|db| {
        let past = Utc::now() - Duration::from_secs(1);
        let future = Utc::now() + Duration::from_secs(60);
        let orphan = db.insert_tasks(&[new_task("orphan", 3)], past).unwrap()[0].id;
        let being_published = db.insert_tasks(&[new_task("busy", 3)], future).unwrap()[0].id;
        let confirmed = db.insert_tasks(&[new_task("done", 3)], past).unwrap()[0].id;
        db.mark_enqueued(&[confirmed]).unwrap();
        let claimed = db.claim_unpublished(10, Duration::from_secs(30)).unwrap();
        assert_eq!(claimed, vec![orphan]);
        assert!(
            db.claim_unpublished(10, Duration::from_secs(30))
                .unwrap()
                .is_empty(),
            "a second relay gets nothing"
        );
        db.release_publish(&[orphan]).unwrap();
        assert_eq!(
            db.claim_unpublished(10, Duration::from_secs(30)).unwrap(),
            vec![orphan]
        );
        // Once its owner's lock runs out, a task being published is the relay's too.
        db.release_publish(&[being_published]).unwrap();
        assert_eq!(
            db.claim_unpublished(10, Duration::from_secs(30)).unwrap(),
            vec![being_published]
        );
    });
}

#[test]
fn expired_leases_are_taken_back() {
    on_both_backends(|db| {
        let ids = insert_ids(db, &[new_task("retry", 2), new_task("last", 1)], Utc::now());
        db.mark_enqueued(&ids).unwrap();
        let expired = Utc::now() - Duration::from_secs(1);
        for id in &ids {
            db.claim(*id, "dead-worker", expired).unwrap().unwrap();
        }
        assert_eq!(db.expire_leases().unwrap(), 2);
        assert_eq!(db.status(ids[0]).unwrap(), Some(TaskStatus::Retrying));
        assert_eq!(db.status(ids[1]).unwrap(), Some(TaskStatus::Failed));
        // The lost attempt can no longer record its outcome.
        assert!(!db
            .finish(ids[0].attempt(1), &Outcome::Succeeded(json!(1)))
            .unwrap());
        // The retry is due now and goes back through the relay.
        assert_eq!(
            db.claim_unpublished(10, Duration::from_secs(30)).unwrap(),
            vec![ids[0]]
        );
        let second = db.claim(ids[0], "w2", lease()).unwrap().unwrap();
        assert_eq!(second.attempt, 2);
        let view = db.task_view(ids[0]).unwrap().unwrap();
        assert_eq!(view.attempt_history.len(), 2);
        assert!(view.attempt_history[0]
            .error
            .as_deref()
            .unwrap()
            .contains("lease"));
    });
}

#[test]
fn a_late_publish_confirm_does_not_hide_a_retry() {
    on_both_backends(|db| {
        let lock = Utc::now() + Duration::from_secs(10);
        let id = db.insert_tasks(&[new_task("fast", 3)], lock).unwrap()[0].id;
        // A worker got the message and failed the attempt before the
        // publisher recorded the broker's confirm.
        fail_first_attempt_retry_due_now(db, id);
        db.mark_enqueued(&[id]).unwrap();
        assert_eq!(
            db.claim_unpublished(10, Duration::from_secs(30)).unwrap(),
            vec![id],
            "the retry is still owed a publish"
        );
    });
}

#[test]
fn a_confirm_after_the_claim_writes_no_row() {
    on_both_backends(|db| {
        let lock = Utc::now() + Duration::from_secs(10);
        let ids = insert_ids(
            db,
            &[
                new_task("claimed", 3),
                new_task("done", 3),
                new_task("waiting", 3),
            ],
            lock,
        );
        let (claimed, done, waiting) = (ids[0], ids[1], ids[2]);
        db.claim(claimed, "w1", lease()).unwrap().unwrap();
        db.claim(done, "w1", lease()).unwrap().unwrap();
        db.finish(done.attempt(1), &Outcome::Succeeded(json!(null)))
            .unwrap();
        // The workers got their messages before the api recorded the
        // confirms: only the task still waiting for its message is written.
        assert_eq!(db.mark_enqueued(&ids).unwrap(), 1);
        assert_eq!(db.mark_enqueued(&ids).unwrap(), 0, "marked once");
        // The waiting task is not the relay's to publish; neither are the
        // others, whose publish lock nobody cleared.
        db.release_publish(&ids).unwrap();
        assert!(db
            .claim_unpublished(10, Duration::from_secs(30))
            .unwrap()
            .is_empty());
        // A claimed task that fails goes back through the relay, confirm
        // or none.
        let retry = Outcome::Retry {
            error: "boom".into(),
            run_after: Utc::now() - Duration::from_millis(1),
        };
        assert!(db.finish(claimed.attempt(1), &retry).unwrap());
        assert_eq!(
            db.claim_unpublished(10, Duration::from_secs(30)).unwrap(),
            vec![claimed]
        );
        assert_eq!(db.status(waiting).unwrap(), Some(TaskStatus::Pending));
    });
}

#[test]
fn unfinished_tasks_are_owed_again_when_the_queue_is_lost() {
    on_both_backends(|db| {
        let ids = insert_ids(
            db,
            &[new_task("queued", 3), new_task("done", 3)],
            Utc::now(),
        );
        let (queued, done) = (ids[0], ids[1]);
        db.mark_enqueued(&[queued, done]).unwrap();
        db.claim(done, "w1", lease()).unwrap().unwrap();
        db.finish(done.attempt(1), &Outcome::Succeeded(json!(null)))
            .unwrap();
        assert!(db
            .claim_unpublished(10, Duration::from_secs(30))
            .unwrap()
            .is_empty());
        assert_eq!(db.forget_enqueued().unwrap(), 1);
        assert_eq!(
            db.claim_unpublished(10, Duration::from_secs(30)).unwrap(),
            vec![queued]
        );
    });
}

#[test]
fn tasks_stored_as_enqueued_are_owed_only_when_due_or_when_the_queue_is_lost() {
    // The in-process queue's insert: a due task counts as enqueued from
    // its commit; a delayed one is left to the relay, as with RabbitMQ.
    on_both_backends(|db| {
        let mut delayed = new_task("delayed", 3);
        delayed.run_after = Some(Utc::now() + Duration::from_millis(300));
        let due = new_task("due", 3);
        let stored = db
            .insert_task_refs(&[&due, &delayed], Publish::Enqueued)
            .unwrap();
        let (due, delayed) = (stored[0].id, stored[1].id);
        assert!(db
            .claim_unpublished(10, Duration::from_secs(30))
            .unwrap()
            .is_empty());
        std::thread::sleep(Duration::from_millis(400));
        assert_eq!(
            db.claim_unpublished(10, Duration::from_secs(30)).unwrap(),
            vec![delayed]
        );
        assert_eq!(db.forget_enqueued().unwrap(), 1);
        assert_eq!(
            db.claim_unpublished(10, Duration::from_secs(30)).unwrap(),
            vec![due]
        );
    });
}

#[test]
fn lost_messages_are_taken_back_within_the_depth_bound() {
    use ferry_core::db::LostBound;
    let bound = |depth| LostBound { depth, batch: 10 };
    let lock = Duration::from_secs(30);
    on_both_backends(|db| {
        let tasks: Vec<NewTask> = ["a", "b", "c", "d", "e"]
            .iter()
            .map(|id| new_task(id, 3))
            .collect();
        let ids = insert_ids(db, &tasks, Utc::now());
        let before_confirms = Utc::now();
        // Confirmed one at a time, a to e: enqueued_at orders them.
        for id in &ids {
            std::thread::sleep(Duration::from_millis(5));
            db.mark_enqueued(&[*id]).unwrap();
        }
        std::thread::sleep(Duration::from_millis(5));
        let (measured_at, stale_before) = (Utc::now(), Utc::now());
        // c is claimed: its message was delivered, not lost.
        db.claim(ids[2], "w1", lease()).unwrap().unwrap();
        assert!(!db.any_stale(before_confirms).unwrap());
        assert!(db.any_stale(stale_before).unwrap());

        // M = 4 (a, b, d, e): a queue holding 4 or more lost nothing.
        for depth in [4, 5] {
            let taken = db
                .claim_lost(bound(depth), measured_at, stale_before, lock)
                .unwrap();
            assert!(taken.is_empty(), "depth {depth}: {taken:?}");
        }
        // Not older than republish_after: nothing, however short the queue.
        assert!(db
            .claim_lost(bound(0), measured_at, before_confirms, lock)
            .unwrap()
            .is_empty());
        // Confirmed after the depth was measured: not counted in M.
        assert!(db
            .claim_lost(bound(0), before_confirms, stale_before, lock)
            .unwrap()
            .is_empty());
        // Two missing: the two oldest confirms, locked for publishing.
        assert_eq!(
            db.claim_lost(bound(2), measured_at, stale_before, lock)
                .unwrap(),
            vec![ids[0], ids[1]]
        );
        assert!(db.claim_unpublished(10, lock).unwrap().is_empty());
        // They are owed now, not counted: d and e are what M holds.
        assert!(db
            .claim_lost(bound(2), measured_at, stale_before, lock)
            .unwrap()
            .is_empty());
        let mut rest = db
            .claim_lost(bound(0), measured_at, stale_before, lock)
            .unwrap();
        rest.sort_by_key(|id| id.0);
        let mut expected = vec![ids[3], ids[4]];
        expected.sort_by_key(|id| id.0);
        assert_eq!(rest, expected);
        assert!(!db.any_stale(stale_before).unwrap());
        // Published and confirmed again, like any owed task.
        db.release_publish(&ids).unwrap();
        let mut owed = db.claim_unpublished(10, lock).unwrap();
        owed.sort_by_key(|id| id.0);
        let mut expected = vec![ids[0], ids[1], ids[3], ids[4]];
        expected.sort_by_key(|id| id.0);
        assert_eq!(owed, expected);
    });
}

#[test]
fn batches_keep_one_answer_per_caller() {
    on_both_backends(|db| {
        // The same event twice in one insert batch is one task.
        let stored = db
            .insert_tasks(
                &[
                    new_task("twice", 3),
                    new_task("twice", 3),
                    new_task("other", 3),
                ],
                Utc::now(),
            )
            .unwrap();
        assert!(stored[0].created && !stored[1].created && stored[2].created);
        assert_eq!(stored[0].id, stored[1].id);
        let (id, other) = (stored[0].id, stored[2].id);
        // A task delivered twice in one claim batch is claimed once.
        let claims = db
            .claim_many(&[id, other, id, TaskId::new()], "w1", lease())
            .unwrap();
        assert_eq!(claims[0].as_ref().map(|c| c.attempt), Some(1));
        assert_eq!(claims[1].as_ref().map(|c| c.attempt), Some(1));
        assert!(claims[2].is_none() && claims[3].is_none());
        // Outcomes in one batch: each answered on its own.
        let recorded = db
            .finish_many(&[
                (id.attempt(1), Outcome::Succeeded(json!("a"))),
                (other.attempt(2), Outcome::Succeeded(json!("stale attempt"))),
                (other.attempt(1), Outcome::Failed("boom".into())),
            ])
            .unwrap();
        assert_eq!(recorded, [true, false, true]);
        let view = db.task_view(id).unwrap().unwrap();
        assert_eq!(
            (view.status, view.result),
            (TaskStatus::Succeeded, Some(json!("a")))
        );
        assert!(view.attempt_history[0].finished_at.is_some());
        let view = db.task_view(other).unwrap().unwrap();
        assert_eq!(view.status, TaskStatus::Failed);
        assert_eq!(view.attempt_history[0].error.as_deref(), Some("boom"));
    });
}

/// Two relays on PostgreSQL: rows one is taking are skipped by the other,
/// which neither waits for them nor publishes them too.
#[test]
fn relays_skip_rows_another_relay_holds() {
    on_postgres(|db, url| {
        let past = Utc::now() - Duration::from_secs(1);
        let ids = insert_ids(db, &[new_task("a", 3), new_task("b", 3)], past);
        let mut other = diesel::PgConnection::establish(url).unwrap();
        other
            .transaction(|conn| {
                // Another relay is in the middle of taking task "a".
                conn.batch_execute(&format!(
                    "SELECT id FROM tasks WHERE id = '{}' FOR UPDATE",
                    ids[0]
                ))?;
                // Waiting for the locked row would block here for good.
                let claimed = db.claim_unpublished(10, Duration::from_secs(30)).unwrap();
                assert_eq!(claimed, vec![ids[1]]);
                Ok::<_, diesel::result::Error>(())
            })
            .unwrap();
        assert_eq!(
            db.claim_unpublished(10, Duration::from_secs(30)).unwrap(),
            vec![ids[0]]
        );
    });
}

#[test]
fn status_reads_of_many_tasks_in_one_query_answer_each_in_order() {
    on_both_backends(|db| {
        let ids = insert_ids(db, &[new_task("e1", 3), new_task("e2", 3)], Utc::now());
        let (twice, fresh) = (ids[0], ids[1]);
        fail_first_attempt_retry_due_now(db, twice);
        db.claim(twice, "w2", lease()).unwrap().unwrap();
        let unknown = TaskId::new();
        let views = db.task_views(&[twice, unknown, fresh, twice]).unwrap();
        assert_eq!(views.len(), 4);
        assert!(views[1].is_none(), "an unknown id has no view");
        let fresh_view = views[2].as_ref().unwrap();
        assert_eq!(
            (fresh_view.id, fresh_view.status),
            (fresh, TaskStatus::Pending)
        );
        assert!(fresh_view.attempt_history.is_empty());
        for view in [&views[0], &views[3]] {
            let view = view.as_ref().expect("an id asked twice is answered twice");
            assert_eq!((view.id, view.status), (twice, TaskStatus::Running));
            let history: Vec<(i32, &str)> = view
                .attempt_history
                .iter()
                .map(|a| (a.attempt, a.worker.as_str()))
                .collect();
            assert_eq!(history, [(1, "w1"), (2, "w2")]);
            assert_eq!(view.attempt_history[0].error.as_deref(), Some("boom"));
        }
        assert!(db.task_views(&[]).unwrap().is_empty());
    });
}

#[test]
fn a_batch_of_mixed_outcomes_records_each_that_holds_its_task() {
    on_both_backends(|db| {
        let tasks: Vec<NewTask> = (0..4).map(|i| new_task(&format!("e{i}"), 3)).collect();
        let ids = insert_ids(db, &tasks, Utc::now());
        for &id in &ids {
            db.claim(id, "w1", lease()).unwrap().unwrap();
        }
        let retry = Outcome::Retry {
            error: "boom".into(),
            run_after: Utc::now() + Duration::from_secs(60),
        };
        let answers = db
            .finish_many(&[
                (ids[0].attempt(1), Outcome::Succeeded(json!({"n": 0}))),
                (ids[1].attempt(1), retry),
                // A stale attempt number: not this task's attempt any more.
                (ids[2].attempt(2), Outcome::Succeeded(json!({"n": 2}))),
                (ids[3].attempt(1), Outcome::Succeeded(json!({"n": 3}))),
                // The same task again with an attempt it is not on.
                (ids[3].attempt(2), Outcome::Succeeded(json!({"n": -3}))),
            ])
            .unwrap();
        assert_eq!(answers, [true, true, false, true, false]);
        let views: Vec<_> = db
            .task_views(&ids)
            .unwrap()
            .into_iter()
            .map(Option::unwrap)
            .collect();
        let statuses: Vec<TaskStatus> = views.iter().map(|v| v.status).collect();
        assert_eq!(
            statuses,
            [
                TaskStatus::Succeeded,
                TaskStatus::Retrying,
                TaskStatus::Running,
                TaskStatus::Succeeded
            ]
        );
        assert_eq!(views[0].result, Some(json!({"n": 0})));
        assert_eq!(views[3].result, Some(json!({"n": 3})));
        assert!(views[0].finished_at.is_some() && views[0].error.is_none());
        assert!(views[0].attempt_history[0].finished_at.is_some());
        assert!(views[2].attempt_history[0].finished_at.is_none());
        assert_eq!(views[1].attempt_history[0].error.as_deref(), Some("boom"));
        // A recorded outcome is final: the same success again records nothing.
        let again = db
            .finish_many(&[(ids[0].attempt(1), Outcome::Succeeded(json!(null)))])
            .unwrap();
        assert_eq!(again, [false]);
    });
}

/// Installs triggers that refuse three marked tasks at three steps: the
/// insert of an event whose id starts `poison`, the claim of `claim-poison…`
/// and the success of `finish-poison…`. Refusals no check foresees.
const POISON_SQLITE: &str = "
    CREATE TRIGGER poison_insert BEFORE INSERT ON tasks
    WHEN NEW.event_id LIKE 'poison%'
    BEGIN SELECT RAISE(ABORT, 'poisoned insert'); END;
    CREATE TRIGGER poison_update BEFORE UPDATE ON tasks
    WHEN (NEW.status = 'running' AND NEW.event_id LIKE 'claim-poison%')
      OR (NEW.status = 'succeeded' AND NEW.event_id LIKE 'finish-poison%')
    BEGIN SELECT RAISE(ABORT, 'poisoned update'); END;";

const POISON_POSTGRES: &str = "
    CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF (TG_OP = 'INSERT' AND NEW.event_id LIKE 'poison%')
           OR (TG_OP = 'UPDATE' AND NEW.status = 'running' AND NEW.event_id LIKE 'claim-poison%')
           OR (TG_OP = 'UPDATE' AND NEW.status = 'succeeded' AND NEW.event_id LIKE 'finish-poison%')
        THEN RAISE EXCEPTION 'poisoned %', TG_OP; END IF;
        RETURN NEW;
    END $$;
    CREATE TRIGGER poison BEFORE INSERT OR UPDATE ON tasks
    FOR EACH ROW EXECUTE FUNCTION poison();";

/// Group commit is not shared fate: in every batch (the api's inserts and
/// confirms, a worker's claims and outcomes), one item the database
/// refuses fails alone, and the others are committed and answered as if it
/// had not been there.
#[test]
fn a_refused_item_fails_only_itself_in_every_batch() {
    let check = |db: &Db| {
        // Stored before, its publish lock run out: the confirm below is
        // what keeps it from the relay.
        let published = db.insert_tasks(&[new_task("a", 3)], Utc::now()).unwrap()[0].id;
        // Inserts, one request per item as /receive batches them, and a
        // confirm, in the api's one batch.
        let writes: Vec<SubmitWrite> = ["b", "poison-1", "", "claim-poison", "finish-poison"]
            .iter()
            .map(|id| match *id {
                "" => SubmitWrite::Confirmed(vec![published]),
                id => SubmitWrite::Insert(vec![new_task(id, 3)]),
            })
            .collect();
        let stored = DbError::isolate("insert", &writes, |writes| {
            db.write_submits(writes, Publish::LockedUntil(Utc::now()))
        });
        assert!(
            matches!(stored[1], Err(DbError::Query(_))),
            "{:?}",
            stored[1]
        );
        assert!(
            stored[2].as_ref().unwrap().is_empty(),
            "a confirm stores nothing"
        );
        let ids: Vec<TaskId> = std::iter::once(published)
            .chain([0, 3, 4].iter().map(|&i| {
                let stored = stored[i].as_ref().unwrap();
                assert!(stored[0].created);
                stored[0].id
            }))
            .collect();
        assert_eq!(db.count_with_status(TaskStatus::Pending).unwrap(), 4);
        let mut owed = db.claim_unpublished(10, Duration::from_secs(30)).unwrap();
        owed.sort_by_key(|id| id.0);
        let mut inserted = ids[1..].to_vec();
        inserted.sort_by_key(|id| id.0);
        assert_eq!(
            owed, inserted,
            "the confirm was recorded, the inserts' locks ran out"
        );
        // Claims: the refused claim fails alone; the others run.
        let claims: Vec<AttemptWrite> = ids.iter().map(|&id| AttemptWrite::Claim(id)).collect();
        let claimed = DbError::isolate("attempt", &claims, |w| db.write_attempts(w, "w1", lease()));
        assert!(
            matches!(claimed[2], Err(DbError::Query(_))),
            "{:?}",
            claimed[2]
        );
        for i in [0, 1, 3] {
            assert!(
                matches!(&claimed[i], Ok(AttemptWritten::Claimed(Some(c))) if c.attempt == 1),
                "{:?}",
                claimed[i]
            );
        }
        // Outcomes and claims together: the refused success fails alone; the
        // others are recorded, the duplicate claim answered as such.
        let writes = vec![
            AttemptWrite::Finish(ids[0].attempt(1), Outcome::Succeeded(json!({"i": 0}))),
            AttemptWrite::Claim(ids[1]),
            AttemptWrite::Finish(ids[3].attempt(1), Outcome::Succeeded(json!({"i": 3}))),
            AttemptWrite::Finish(ids[1].attempt(1), Outcome::Succeeded(json!({"i": 1}))),
        ];
        let written = DbError::isolate("attempt", &writes, |w| db.write_attempts(w, "w1", lease()));
        assert!(
            matches!(written[0], Ok(AttemptWritten::Finished(true))),
            "{written:?}"
        );
        assert!(
            matches!(written[1], Ok(AttemptWritten::Claimed(None))),
            "{written:?}"
        );
        assert!(
            matches!(written[2], Err(DbError::Query(_))),
            "{:?}",
            written[2]
        );
        assert!(
            matches!(written[3], Ok(AttemptWritten::Finished(true))),
            "{written:?}"
        );
        assert_eq!(db.count_with_status(TaskStatus::Succeeded).unwrap(), 2);
        assert_eq!(db.status(ids[3]).unwrap(), Some(TaskStatus::Running));
        assert_eq!(db.status(ids[2]).unwrap(), Some(TaskStatus::Pending));
    };
    let (_dir, sqlite, path) = sqlite();
    diesel::SqliteConnection::establish(&path)
        .unwrap()
        .batch_execute(POISON_SQLITE)
        .unwrap();
    check(&sqlite);
    on_postgres(|db, url| {
        diesel::PgConnection::establish(url)
            .unwrap()
            .batch_execute(POISON_POSTGRES)
            .unwrap();
        check(db);
    });
}

/// The transactions of this process's counted connections so far:
/// explicit ones begun and committed, and statements sent outside one
/// (each a transaction of its own; the pool's checkout pings left out).
fn transactions() -> (u64, u64, u64) {
    use ferry_core::db::counts;
    let counts = counts::parse(&counts::snapshot());
    let count = |name: &str| counts[name];
    (
        count("begins"),
        count("commits"),
        count("implicit") - count("pings"),
    )
}

/// Each process's writes are one transaction a batch: the api's inserts
/// with the confirms of tasks it published, a worker's claims with its
/// outcomes; each write answered in its place.
#[test]
fn each_process_writes_a_batch_in_one_transaction() {
    // Counts the connections made from here on.
    ferry_core::db::counts::count();
    on_both_backends(|db| {
        let first = db
            .insert_tasks(&[new_task("first", 3)], Utc::now())
            .unwrap()[0]
            .id;
        let before = transactions();
        let writes = vec![
            SubmitWrite::Insert(vec![new_task("x", 3), new_task("y", 3)]),
            SubmitWrite::Confirmed(vec![first]),
            SubmitWrite::Insert(vec![new_task("first", 3)]),
        ];
        let stored = db
            .write_submits(&writes, Publish::LockedUntil(Utc::now()))
            .unwrap();
        let (begins, commits, implicit) = transactions();
        assert_eq!(
            (begins - before.0, commits - before.1, implicit - before.2),
            (1, 1, 0)
        );
        assert_eq!(stored.iter().map(Vec::len).collect::<Vec<_>>(), [2, 0, 1]);
        // Inserts alone are one statement, atomic without a transaction.
        let before = transactions();
        let alone = vec![
            SubmitWrite::Insert(vec![new_task("z", 3)]),
            SubmitWrite::Insert(vec![new_task("x", 3), new_task("w", 3)]),
        ];
        let stored_alone = db
            .write_submits(&alone, Publish::LockedUntil(Utc::now()))
            .unwrap();
        let (begins, commits, implicit) = transactions();
        assert!(
            (begins - before.0, commits - before.1) == (0, 0) && implicit - before.2 >= 1,
            "{:?}",
            (begins - before.0, commits - before.1, implicit - before.2)
        );
        let created: Vec<Vec<bool>> = stored_alone
            .iter()
            .map(|s| s.iter().map(|s| s.created).collect())
            .collect();
        assert_eq!(
            created,
            [vec![true], vec![false, true]],
            "x was stored before"
        );
        assert_eq!(stored_alone[1][0].id, stored[0][0].id);
        assert!(stored[0].iter().all(|s| s.created));
        assert_eq!(stored[2][0].id, first, "the same event is the same task");
        let (x, y) = (stored[0][0].id, stored[0][1].id);
        let mut owed = db.claim_unpublished(10, Duration::from_secs(30)).unwrap();
        owed.sort_by_key(|id| id.0);
        let mut expected = vec![x, y, stored_alone[0][0].id, stored_alone[1][1].id];
        expected.sort_by_key(|id| id.0);
        assert_eq!(owed, expected, "the confirmed task is not owed");

        db.claim(first, "w1", lease()).unwrap().unwrap();
        let before = transactions();
        let writes = vec![
            AttemptWrite::Claim(x),
            AttemptWrite::Finish(first.attempt(1), Outcome::Succeeded(json!({"ok": 1}))),
            AttemptWrite::Claim(y),
            AttemptWrite::Claim(x),
            AttemptWrite::Finish(x.attempt(2), Outcome::Failed("not its attempt".into())),
        ];
        let written = db.write_attempts(&writes, "w2", lease()).unwrap();
        let (begins, commits, implicit) = transactions();
        assert_eq!(
            (begins - before.0, commits - before.1, implicit - before.2),
            (1, 1, 0)
        );
        assert!(
            matches!(&written[..], [
                AttemptWritten::Claimed(Some(cx)),
                AttemptWritten::Finished(true),
                AttemptWritten::Claimed(Some(cy)),
                AttemptWritten::Claimed(None),
                AttemptWritten::Finished(false),
            ] if cx.attempt == 1 && cy.attempt == 1),
            "{written:?}"
        );
        assert_eq!(db.status(first).unwrap(), Some(TaskStatus::Succeeded));
        assert_eq!(db.status(x).unwrap(), Some(TaskStatus::Running));
        assert_eq!(db.status(y).unwrap(), Some(TaskStatus::Running));
    });
}

/// `/status` on SQLite reads on the request's own thread when a pooled
/// connection is free: the same views as the batched read, in the order
/// asked, unknown and repeated ids included. PostgreSQL's read is a round
/// trip, always left to the batch.
#[test]
fn a_read_without_waiting_is_the_batched_read_on_sqlite_only() {
    on_both_backends(|db| {
        let ids = insert_ids(db, &[new_task("e1", 3), new_task("e2", 3)], Utc::now());
        db.claim(ids[0], "w1", lease()).unwrap().unwrap();
        let asked = [ids[1], TaskId::new(), ids[0], ids[1]];
        let batched = db.task_views(&asked).unwrap();
        assert!(batched[0].is_some() && batched[1].is_none() && batched[2].is_some());
        let now = db.task_views_without_waiting(&asked);
        match db.backend() {
            "sqlite" => assert_eq!(now.expect("a connection is free").unwrap(), batched),
            _ => assert!(now.is_none(), "PostgreSQL read on the caller's thread"),
        }
    });
}

/// Events and results travel to SQLite inside one JSON parameter per
/// batch (`dialect.rs` `json_rows`): whatever text they hold comes back as
/// it went in, on either backend, beside ordinary tasks of the same
/// batches, and a delayed task keeps its `run_after`.
#[test]
fn any_text_in_an_event_or_a_result_is_stored_as_sent() {
    on_both_backends(|db| {
        let odd = json!({
            "quotes": "\"'\\\\ \\u0000 \u{1F600} \u{7f} \u{2028}",
            "nested": {"array": [1, -0.5, 12345678901234567890u64, null, true]},
            "key with \"quotes\"": "value",
            "long": "x".repeat(300),
        });
        let mut tasks = vec![
            new_task("plain-1", 3),
            new_task("odd", 3),
            new_task("plain-2", 3),
        ];
        tasks[1].event["data"] = odd.clone();
        tasks[1].idempotency_key = Some("key \"odd\" \u{1F600}".into());
        let later = Utc::now() + Duration::from_secs(3600);
        tasks[2].run_after = Some(later);
        let ids = insert_ids(db, &tasks, Utc::now() + Duration::from_secs(30));
        let views = db.task_views(&ids).unwrap();
        for (task, view) in tasks.iter().zip(&views) {
            let view = view.as_ref().unwrap();
            assert_eq!(
                (
                    view.event_type.as_str(),
                    view.source.as_str(),
                    view.event_id.as_str()
                ),
                (
                    task.event_type.as_str(),
                    task.source.as_str(),
                    task.event_id.as_str()
                )
            );
        }
        let due_at = views[2].as_ref().unwrap().due_at.expect("delayed");
        assert!(
            (due_at - later).num_milliseconds().abs() < 1,
            "{due_at} {later}"
        );
        let claimed = db.claim_many(&ids, "w1", lease()).unwrap();
        assert!(claimed[2].is_none(), "not due for an hour");
        for i in [0, 1] {
            let event = &claimed[i].as_ref().expect("claimed").event;
            assert!(*event == tasks[i].event, "{}: {event}", db.backend());
        }
        let finished = db
            .finish_many(&[
                (ids[0].attempt(1), Outcome::Succeeded(json!("plain"))),
                (ids[1].attempt(1), Outcome::Succeeded(odd.clone())),
            ])
            .unwrap();
        assert_eq!(finished, [true, true]);
        let views = db.task_views(&ids[..2]).unwrap();
        assert_eq!(views[0].as_ref().unwrap().result, Some(json!("plain")));
        assert_eq!(views[1].as_ref().unwrap().result, Some(odd.clone()));
        // The same key is the same task.
        let again = db
            .insert_tasks(
                &[NewTask {
                    id: TaskId::new(),
                    ..tasks[1].clone()
                }],
                Utc::now(),
            )
            .unwrap();
        assert_eq!((again[0].id, again[0].created), (ids[1], false));
    });
}
