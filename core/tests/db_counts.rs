//! What the happy path costs the database, counted by
//! `ferry_core::db::counts`: statements, transactions and checkout pings
//! per task, on SQLite and on a PostgreSQL schema of this test's own; and
//! that skipping the pool's checkout ping does not hand out a connection
//! that failed.
//!
//! The counts are the process's: the tests here take turns ([`counted`]),
//! and nextest runs each test in a process of its own.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use chrono::Utc;
use diesel::connection::SimpleConnection;
use diesel::{Connection, PgConnection, RunQueryDsl};
use ferry_core::db::{counts, pool};
use ferry_core::task::{AttemptRef, NewTask, Outcome};
use ferry_core::{Db, TaskId, TaskStatus};
use ferry_testkit::PgSchema;
use serde_json::json;

mod common;
use common::{lease, new_task, sqlite};

static SERIAL: Mutex<()> = Mutex::new(());

/// Turns counting on (before any pool is made) and takes this test's turn.
fn counted() -> MutexGuard<'static, ()> {
    counts::count();
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The process's counts so far, by name.
fn totals() -> HashMap<String, u64> {
    counts::snapshot()
        .lines()
        .filter_map(|line| {
            let (name, value) = line.split_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// What was counted since `before`, by name.
fn since(before: &HashMap<String, u64>) -> HashMap<String, u64> {
    totals()
        .into_iter()
        .map(|(name, now)| {
            let was = before.get(&name).copied().unwrap_or(0);
            (name, now - was)
        })
        .collect()
}

/// Per task: statements, transactions (explicit and implicit) and pings.
#[derive(Debug, Clone, Copy, PartialEq)]
struct PerTask {
    statements: f64,
    transactions: f64,
    pings: f64,
    round_trips: f64,
}

impl PerTask {
    fn of(counted: &HashMap<String, u64>, tasks: usize) -> Self {
        let per = |name: &str| counted[name] as f64 / tasks as f64;
        Self {
            statements: per("statements"),
            transactions: per("begins") + per("implicit"),
            pings: per("pings"),
            round_trips: per("round_trips"),
        }
    }
}

/// Runs `n` tasks through the happy path as the services batch it (one
/// insert, one publish mark, one claim and one outcome batch, each a call
/// of its own) and counts what it cost.
fn happy_path(db: &Db, n: usize) -> PerTask {
    let tasks: Vec<NewTask> = (0..n)
        .map(|_| new_task(&TaskId::new().to_string(), 3))
        .collect();
    let before = totals();
    let stored = db
        .insert_tasks(&tasks, Utc::now() + Duration::from_secs(30))
        .unwrap();
    let ids: Vec<TaskId> = stored.iter().map(|s| s.id).collect();
    db.mark_enqueued(&ids).unwrap();
    let claims = db.claim_many(&ids, "w1", lease()).unwrap();
    assert!(claims.iter().all(Option::is_some));
    let outcomes: Vec<(AttemptRef, Outcome)> = ids
        .iter()
        .map(|id| (id.attempt(1), Outcome::Succeeded(json!({"ok": true}))))
        .collect();
    assert!(db.finish_many(&outcomes).unwrap().into_iter().all(|r| r));
    let cost = PerTask::of(&since(&before), n);
    for id in ids {
        assert_eq!(db.status(id).unwrap(), Some(TaskStatus::Succeeded));
    }
    cost
}

/// A fresh PostgreSQL schema's URL, its connections named `app`, if
/// PostgreSQL answers.
fn postgres(app: &str) -> Option<(PgSchema, String)> {
    if !ferry_testkit::services::require_named("postgres") {
        return None;
    }
    let schema = PgSchema::new();
    let url = format!("{}&application_name={app}", schema.url());
    Some((schema, url))
}

fn connect(url: &str, size: u32) -> Db {
    let db = Db::connect(url, size).unwrap();
    db.migrate().unwrap();
    db
}

/// Prints the happy path's cost per task for batches of 1 and of 20.
fn report(backend: &str, db: &Db) -> (PerTask, PerTask) {
    let one = happy_path(db, 1);
    let twenty = happy_path(db, 20);
    eprintln!("{backend} per task, batches of 1: {one:?}");
    eprintln!("{backend} per task, batches of 20: {twenty:?}");
    (one, twenty)
}

#[test]
fn the_happy_path_costs_per_task() {
    let _turn = counted();
    let (_dir, db, _) = sqlite();
    let (one, _) = report("sqlite", &db);
    // Every call checks out a connection that just succeeded.
    assert_eq!(one.pings, 0.0);
    if let Some((_schema, url)) = postgres("ferry_counts") {
        let (one, _) = report("postgres", &connect(&url, 4));
        assert_eq!(one.pings, 0.0);
    }
}

/// A connection is pinged at checkout only if it did not succeed within
/// the last [`pool::FRESH`].
#[test]
fn a_connection_that_just_succeeded_is_not_pinged() {
    let _turn = counted();
    let check = |db: &Db| {
        let before = totals();
        for _ in 0..10 {
            db.status(TaskId::new()).unwrap();
        }
        assert_eq!(since(&before)["pings"], 0);
        std::thread::sleep(pool::FRESH + Duration::from_millis(200));
        let before = totals();
        db.status(TaskId::new()).unwrap();
        db.status(TaskId::new()).unwrap();
        assert_eq!(since(&before)["pings"], 1, "idle for longer: pinged once");
    };
    let dir = tempfile::tempdir().unwrap();
    check(&connect(
        &format!("sqlite://{}", dir.path().join("t.db").display()),
        1,
    ));
    if let Some((_schema, url)) = postgres("ferry_fresh") {
        check(&connect(&url, 1));
    }
}

/// A connection whose last query failed is pinged at its next checkout,
/// however recent the failure; once one succeeds, it is not.
#[test]
fn a_connection_whose_query_failed_is_pinged() {
    let _turn = counted();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db").display().to_string();
    let db = connect(&format!("sqlite://{path}"), 1);
    let mut other = diesel::SqliteConnection::establish(&path).unwrap();
    db.status(TaskId::new()).unwrap();
    other
        .batch_execute("ALTER TABLE tasks RENAME TO tasks_gone")
        .unwrap();
    let pings = |call: &dyn Fn() -> bool| {
        let before = totals();
        let ok = call();
        (ok, since(&before)["pings"])
    };
    // A write: diesel reports the failures of a SQLite read's steps to its
    // hook as successes (on PostgreSQL it reports every failure).
    let renew = || db.renew_lease(TaskId::new().attempt(1), lease()).is_ok();
    assert_eq!(pings(&renew), (false, 0), "it had just succeeded");
    assert_eq!(pings(&renew), (false, 1), "its last query failed");
    other
        .batch_execute("ALTER TABLE tasks_gone RENAME TO tasks")
        .unwrap();
    assert_eq!(pings(&renew), (true, 1), "its last query failed");
    assert_eq!(pings(&renew), (true, 0), "it had just succeeded");
}

/// A connection whose server went away is dropped when it is returned,
/// not handed out again: one call may fail (it was not pinged), the next
/// runs on a new connection.
#[test]
fn a_connection_that_lost_its_server_is_dropped() {
    let _turn = counted();
    let app = format!("ferry_lost_{}", std::process::id());
    let Some((_schema, url)) = postgres(&app) else {
        return;
    };
    let db = connect(&url, 1);
    db.status(TaskId::new()).unwrap();
    let mut admin = PgConnection::establish(&ferry_testkit::postgres_url()).unwrap();
    #[derive(diesel::QueryableByName)]
    struct Terminated {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        terminated: bool,
    }
    let terminate = |admin: &mut PgConnection| {
        diesel::sql_query(
            "SELECT pg_terminate_backend(pid) AS terminated FROM pg_stat_activity \
             WHERE application_name = $1",
        )
        .bind::<diesel::sql_types::Text, _>(&app)
        .load::<Terminated>(admin)
        .unwrap()
    };
    let killed = terminate(&mut admin);
    assert_eq!(killed.len(), 1, "the pool's one connection");
    assert!(killed[0].terminated);
    // Well within FRESH: the connection is handed out unpinged, and fails.
    let before = totals();
    let failed = db.status(TaskId::new()).unwrap_err();
    assert!(failed.is_unavailable(), "{failed}");
    for _ in 0..3 {
        db.status(TaskId::new()).unwrap();
    }
    let counted = since(&before);
    assert_eq!(
        counted["connections"], 1,
        "one new connection replaced the lost one"
    );
    assert_eq!(
        counted["pings"], 0,
        "the lost one was dropped when returned, not pinged at checkout"
    );
}

/// A claim is one statement on the task rows (status, attempt, lease and,
/// on the first attempt, started_at) and one insert of the attempt rows: on
/// SQLite in one transaction, on PostgreSQL both in one statement (its own
/// transaction). A later attempt keeps the first one's start.
#[test]
fn a_claim_is_one_update_and_keeps_the_first_start() {
    let _turn = counted();
    let check = |db: &Db| {
        let ids = common::insert(db, &[new_task("a", 3), new_task("b", 3)]);
        let before = totals();
        let claims = db.claim_many(&ids, "w1", lease()).unwrap();
        assert!(claims.iter().all(Option::is_some));
        let counted = since(&before);
        let names = ["update", "insert", "other", "begins", "implicit"];
        let counted: Vec<u64> = names.iter().map(|n| counted[*n]).collect();
        let expected = match db.backend() {
            "postgres" => [0, 0, 1, 0, 1],
            _ => [1, 1, 0, 1, 0],
        };
        assert_eq!(counted, expected, "{names:?}");
        let first = db.task_view(ids[0]).unwrap().unwrap();
        let started = first.started_at.expect("the first claim sets started_at");
        let retry = Outcome::Retry {
            error: "again".into(),
            run_after: Utc::now() - Duration::from_millis(1),
        };
        assert!(db.finish(ids[0].attempt(1), &retry).unwrap());
        let again = db.claim(ids[0], "w2", lease()).unwrap().unwrap();
        assert_eq!(again.attempt, 2);
        let view = db.task_view(ids[0]).unwrap().unwrap();
        assert_eq!(view.started_at, Some(started), "the first attempt's start");
        let workers: Vec<(i32, &str)> = view
            .attempt_history
            .iter()
            .map(|a| (a.attempt, a.worker.as_str()))
            .collect();
        assert_eq!(workers, [(1, "w1"), (2, "w2")]);
        assert!(view.attempt_history[1].started_at >= started);
        let claim = claims[1].as_ref().unwrap();
        assert_eq!((claim.attempt, claim.max_attempts), (1, 3));
        assert_eq!(claim.event_type, "org.ferry.echo");
        assert_eq!(claim.event["id"], "b");
    };
    let (_dir, db, _) = sqlite();
    check(&db);
    if let Some((_schema, url)) = postgres("ferry_claim") {
        check(&connect(&url, 4));
    }
}

/// A batch of successes costs the same statements however many it holds:
/// the task rows are updated in one statement on both backends (with the
/// attempt rows, on PostgreSQL; on SQLite the batch is one parameter, a
/// JSON array).
#[test]
fn a_batch_of_successes_is_set_based() {
    let _turn = counted();
    let check = |db: &Db| {
        let finish = |n: usize| {
            let tasks: Vec<NewTask> = (0..n)
                .map(|_| new_task(&TaskId::new().to_string(), 3))
                .collect();
            let ids = common::insert(db, &tasks);
            db.claim_many(&ids, "w1", lease()).unwrap();
            let outcomes: Vec<(AttemptRef, Outcome)> = ids
                .iter()
                .map(|id| (id.attempt(1), Outcome::Succeeded(json!({"id": id}))))
                .collect();
            let before = totals();
            assert!(db.finish_many(&outcomes).unwrap().into_iter().all(|r| r));
            let counted = since(&before);
            for id in &ids {
                let view = db.task_view(*id).unwrap().unwrap();
                assert_eq!(view.status, TaskStatus::Succeeded);
                assert_eq!(view.result, Some(json!({"id": id})));
                assert!(view.finished_at.is_some() && view.error.is_none());
                assert!(view.attempt_history[0].finished_at.is_some());
            }
            (
                counted["statements"],
                counted["begins"],
                counted["implicit"],
            )
        };
        // The task rows, the attempt rows: in one transaction on SQLite,
        // in one statement on PostgreSQL. No statement looks for retries
        // to cancel: there are none.
        let one = finish(1);
        let expected = match db.backend() {
            "postgres" => (1, 0, 1),
            _ => (2, 1, 0),
        };
        assert_eq!(one, expected);
        assert_eq!(finish(5), one);
        assert_eq!(finish(50), one);
        // A retry in the batch, of a task a client asked to cancel while
        // it ran: that one is looked for, and cancelled.
        let ids = common::insert(db, &[new_task("ok", 3), new_task("stop", 3)]);
        db.claim_many(&ids, "w1", lease()).unwrap();
        db.cancel(ids[1]).unwrap();
        let retry = Outcome::Retry {
            error: "boom".into(),
            run_after: Utc::now(),
        };
        let before = totals();
        let answers = db
            .finish_many(&[
                (ids[0].attempt(1), Outcome::Succeeded(json!(1))),
                (ids[1].attempt(1), retry),
            ])
            .unwrap();
        assert_eq!(answers, [true, true]);
        assert_eq!(
            since(&before)["update"],
            5,
            "successes, the retry, its attempt row, the cancel, the successes' attempt rows"
        );
        assert_eq!(db.status(ids[0]).unwrap(), Some(TaskStatus::Succeeded));
        assert_eq!(db.status(ids[1]).unwrap(), Some(TaskStatus::Cancelled));
    };
    let (_dir, db, _) = sqlite();
    check(&db);
    if let Some((_schema, url)) = postgres("ferry_successes") {
        check(&connect(&url, 4));
    }
}

/// The statements of the happy path stay prepared on their connection
/// (`Kept` in `core/src/db/kept.rs`, or diesel's own query builder): the
/// first batch on a connection prepares each once, and the next batches,
/// of other sizes, prepare nothing. A statement that diesel prepares again
/// each time (a `sql_query`, an `IN` list, a `VALUES` list as long as the
/// batch) is never cached, so it would be missing from the first count.
#[test]
fn the_happy_path_prepares_its_statements_once_per_connection() {
    let _turn = counted();
    let check = |db: &Db, first_batch: u64| {
        let prepares = |n: usize| {
            let before = totals();
            happy_path(db, n);
            since(&before)["prepares"]
        };
        assert_eq!(
            prepares(3),
            first_batch,
            "{}: the first batch",
            db.backend()
        );
        for n in [1, 7, 20] {
            assert_eq!(prepares(n), 0, "{}: a batch of {n}", db.backend());
        }
    };
    // One connection, so that every batch runs on it. SQLite: the insert,
    // the claim's update and attempt insert, the successes' update and
    // attempt rows', and the status read that checks them (its publish
    // mark, off the happy path since the api stores tasks enqueued, is an
    // `IN` list). PostgreSQL: the insert (an array per column), the claim,
    // the outcome (both with the attempt rows) and the status read; the
    // confirm's mark, off the happy path, is not kept (`core/src/db/kept.rs`).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db").display().to_string();
    check(&connect(&format!("sqlite://{path}"), 1), 6);
    if let Some((_schema, url)) = postgres("ferry_prepares") {
        check(&connect(&url, 1), 4);
    }
}

/// The publish mark is one statement outside any transaction on both
/// backends; on PostgreSQL it skips the rows another transaction holds
/// rather than waiting for them.
#[test]
fn a_publish_mark_is_one_statement_and_skips_held_rows() {
    let _turn = counted();
    let publishing = |db: &Db, events: &[&str]| {
        let tasks: Vec<NewTask> = events.iter().map(|e| new_task(e, 3)).collect();
        let stored = db
            .insert_tasks(&tasks, Utc::now() + Duration::from_secs(30))
            .unwrap();
        stored.iter().map(|s| s.id).collect::<Vec<TaskId>>()
    };
    let check = |db: &Db| {
        let ids = publishing(db, &["a", "b"]);
        let before = totals();
        db.mark_enqueued(&ids).unwrap();
        let counted = since(&before);
        assert_eq!(
            (
                counted["statements"],
                counted["begins"],
                counted["implicit"]
            ),
            (1, 0, 1)
        );
    };
    let (_dir, db, _) = sqlite();
    check(&db);
    let Some((_schema, url)) = postgres("ferry_mark") else {
        return;
    };
    let db = connect(&url, 4);
    check(&db);
    #[derive(diesel::QueryableByName)]
    struct Enqueued {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        enqueued: bool,
    }
    let enqueued = |conn: &mut PgConnection, id: TaskId| {
        diesel::sql_query(format!(
            "SELECT enqueued_at IS NOT NULL AS enqueued FROM tasks WHERE id = '{id}'"
        ))
        .get_result::<Enqueued>(conn)
        .unwrap()
        .enqueued
    };
    let ids = publishing(&db, &["held", "free"]);
    let mut other = PgConnection::establish(&url).unwrap();
    other
        .transaction(|conn| {
            // A worker holds "held" (its claim, say).
            conn.batch_execute(&format!(
                "SELECT id FROM tasks WHERE id = '{}' FOR UPDATE",
                ids[0]
            ))?;
            // Waiting for the held row would block here for good.
            db.mark_enqueued(&ids).unwrap();
            Ok::<_, diesel::result::Error>(())
        })
        .unwrap();
    assert!(!enqueued(&mut other, ids[0]), "skipped, not waited for");
    assert!(enqueued(&mut other, ids[1]));
    db.mark_enqueued(&ids).unwrap();
    assert!(enqueued(&mut other, ids[0]), "marked once free");
}
