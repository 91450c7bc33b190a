//! A backlog is cheap: with many tasks in every state, each query a relay
//! round runs over the table is an index range read in index order, bounded
//! by its LIMIT (or by what is due): no scan of the table, no sort of
//! everything owed. Checked on the plans of the relay's own queries
//! (`Db::relay_plans`) over 20 000 seeded tasks, on SQLite (which has no
//! statistics) and on a PostgreSQL schema of this test's own (analyzed).
//! And the statements that take a batch of tasks by id and check their
//! status (a worker's claim and outcomes, the api's confirms, the cancel
//! of retried tasks, the retention's delete; `Db::by_id_plans`) never read
//! every task of that status, even when PostgreSQL's statistics say the
//! status is rare.

use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::{Connection, PgConnection, SqliteConnection};
use ferry_core::db::Planning;
use ferry_core::Db;

mod common;

/// The index each relay query must read.
const INDEXES: [(&str, &str); 6] = [
    ("claim_unpublished", "tasks_owed"),
    ("any_stale", "tasks_confirmed"),
    ("claim_lost (count)", "tasks_confirmed"),
    ("claim_lost (take)", "tasks_confirmed"),
    ("expire_leases", "tasks_running_lease"),
    ("delete_finished_before", "tasks_finished"),
];

/// Tasks seeded: a fifth each owed now, confirmed an hour ago (stale),
/// running, succeeded, and retrying not before tomorrow.
const SEEDED: usize = 20_000;

const SQLITE_SEED: &str = "
WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 20000)
INSERT INTO tasks (id, event_type, source, event_id, event, status, max_attempts,
                   created_at, updated_at, enqueued_at, run_after, lease_expires_at, finished_at)
SELECT printf('00000000-0000-4000-8000-%012d', n), 'org.ferry.echo', '/ferry/tests', 'seed-' || n, '{}',
       CASE n % 5 WHEN 0 THEN 'pending' WHEN 1 THEN 'pending' WHEN 2 THEN 'running'
                  WHEN 3 THEN 'succeeded' ELSE 'retrying' END,
       3,
       strftime('%Y-%m-%d %H:%M:%f+00:00', 'now', '-2 hours'),
       strftime('%Y-%m-%d %H:%M:%f+00:00', 'now', '-2 hours'),
       CASE WHEN n % 5 = 1 THEN strftime('%Y-%m-%d %H:%M:%f+00:00', 'now', '-1 hour') END,
       CASE WHEN n % 5 = 4 THEN strftime('%Y-%m-%d %H:%M:%f+00:00', 'now', '+1 day') END,
       CASE WHEN n % 5 = 2 THEN strftime('%Y-%m-%d %H:%M:%f+00:00', 'now', '+1 hour') END,
       CASE WHEN n % 5 = 3 THEN strftime('%Y-%m-%d %H:%M:%f+00:00', 'now', '-1 hour') END
FROM g;
";

const PG_SEED: &str = "
INSERT INTO tasks (id, event_type, source, event_id, event, status, max_attempts,
                   created_at, updated_at, enqueued_at, run_after, lease_expires_at, finished_at)
SELECT gen_random_uuid(), 'org.ferry.echo', '/ferry/tests', 'seed-' || n, '{}',
       CASE n % 5 WHEN 0 THEN 'pending' WHEN 1 THEN 'pending' WHEN 2 THEN 'running'
                  WHEN 3 THEN 'succeeded' ELSE 'retrying' END,
       3,
       now() - interval '2 hours' + n * interval '1 ms',
       now() - interval '2 hours',
       CASE WHEN n % 5 = 1 THEN now() - interval '1 hour' + n * interval '1 ms' END,
       CASE WHEN n % 5 = 4 THEN now() + interval '1 day' END,
       CASE WHEN n % 5 = 2 THEN now() + interval '1 hour' END,
       CASE WHEN n % 5 = 3 THEN now() - interval '1 hour' END
FROM generate_series(1, 20000) AS n;
ANALYZE tasks;
";

/// Each relay query's plan reads its index, with no sort and no scan of
/// the table; and a claim still takes owed tasks only.
fn check(db: &Db, backend: &str) {
    let plans = db.relay_plans().unwrap();
    assert_eq!(plans.len(), INDEXES.len(), "{plans:#?}");
    for ((name, plan), (expected_name, index)) in plans.iter().zip(INDEXES) {
        assert_eq!(*name, expected_name);
        let context = format!("{backend} {name}:\n{plan}");
        assert!(plan.contains(index), "not read from {index}: {context}");
        if backend == "sqlite" {
            assert!(!plan.contains("TEMP B-TREE"), "sorted: {context}");
            assert!(!plan.contains("SCAN tasks"), "table scan: {context}");
        } else {
            assert!(!plan.contains("Sort"), "sorted: {context}");
            assert!(!plan.contains("Seq Scan"), "table scan: {context}");
        }
    }
    check_by_id(db, backend);
    let claimed = db.claim_unpublished(500, Duration::from_secs(30)).unwrap();
    assert_eq!(claimed.len(), 500, "{backend}");
    // Not the retries of tomorrow, nor anything confirmed, running or final.
    let views = db.task_views(&claimed).unwrap();
    assert!(
        views
            .iter()
            .all(|v| v.as_ref().unwrap().status == ferry_core::TaskStatus::Pending),
        "{backend}: claimed a task not owed"
    );
    assert!(
        db.count_with_status(ferry_core::TaskStatus::Pending)
            .unwrap() as usize
            <= SEEDED
    );
}

/// Batches by id read the primary key, not every task of a status: a claim
/// that scanned the pending tasks slowed a 1 000 000-task drain on SQLite
/// tenfold, and on PostgreSQL an outcome batch of ten read every running
/// task of a burst from `tasks_by_status`.
fn check_by_id(db: &Db, backend: &str) {
    let ids: Vec<ferry_core::TaskId> = (0..64).map(|_| ferry_core::TaskId::new()).collect();
    let plans = db.by_id_plans(&ids).unwrap();
    let names: Vec<&str> = plans.iter().map(|(name, _)| *name).collect();
    assert!(names.contains(&"record_successes"), "{backend}: {names:?}");
    assert!(names.contains(&"claim_at_once"), "{backend}: {names:?}");
    if backend == "postgres" {
        assert!(names.contains(&"mark_enqueued"), "{names:?}");
    }
    for (name, plan) in plans {
        let context = format!("{backend} {name}:\n{plan}");
        for index in [
            "tasks_by_status",
            "tasks_by_type_status_created",
            "tasks_running_lease",
            "tasks_owed",
            "tasks_confirmed",
            "tasks_finished",
        ] {
            assert!(!plan.contains(index), "read from {index}: {context}");
        }
        if backend == "sqlite" {
            // No statistics: the ids, from the primary key.
            assert!(
                plan.contains("sqlite_autoindex_tasks_1"),
                "not by id: {context}"
            );
            assert!(!plan.contains("SCAN tasks"), "table scan: {context}");
        } else {
            assert!(plan.contains("tasks_pkey"), "not by id: {context}");
            assert!(!plan.contains("Seq Scan on tasks"), "table scan: {context}");
        }
    }
}

/// 20 000 tasks, all succeeded, analyzed: PostgreSQL's statistics then say
/// that no task is pending, running or retrying, as they do after a quiet
/// spell (and always nearly do of `running`).
const PG_SEED_ALL_SUCCEEDED: &str = "
INSERT INTO tasks (id, event_type, source, event_id, event, status, max_attempts,
                   created_at, updated_at, finished_at)
SELECT gen_random_uuid(), 'org.ferry.echo', '/ferry/tests', 'seed-' || n, '{}', 'succeeded', 3,
       now() - interval '2 hours' + n * interval '1 ms', now(), now()
FROM generate_series(1, 20000) AS n;
ANALYZE tasks;
";

/// Whatever the statistics say of a status, a statement that takes its
/// tasks by id reads them by id: the planner would otherwise read a
/// status it believes rare from its index, which holds an entry for every
/// task that passed through that status since the last vacuum.
#[test]
fn statements_by_id_read_the_primary_key_when_a_status_looks_rare() {
    common::on_postgres(|db, url| {
        PgConnection::establish(url)
            .unwrap()
            .batch_execute(PG_SEED_ALL_SUCCEEDED)
            .unwrap();
        check_by_id(db, "postgres");
    });
}

/// A worker's sessions plan its claim and outcome statements once, for
/// any batch (`Planning::Generic`): those plans read the primary key and
/// never scan the table, on a table just made (no statistics: PostgreSQL
/// then guesses it small, and a plan made once is kept) as on one whose
/// statistics say every task succeeded.
#[test]
fn a_workers_plans_made_once_read_the_primary_key() {
    common::on_postgres(|_db, url| {
        let worker = Db::connect_planned(url, 1, Planning::Generic).unwrap();
        let check = |when: &str| {
            let ids: Vec<ferry_core::TaskId> = (0..64).map(|_| ferry_core::TaskId::new()).collect();
            let plans = worker.kept_plans(&ids).unwrap();
            assert_eq!(plans.len(), 3, "{plans:#?}");
            for (name, plan) in plans {
                let context = format!("{when}, {name}:\n{plan}");
                assert!(plan.contains("tasks_pkey"), "not by id: {context}");
                assert!(!plan.contains("Seq Scan on tasks"), "a scan: {context}");
            }
        };
        check("a new table");
        PgConnection::establish(url)
            .unwrap()
            .batch_execute(PG_SEED_ALL_SUCCEEDED)
            .unwrap();
        check("every task succeeded");
    });
}

#[test]
fn the_relays_queries_read_an_index_in_order_over_a_backlog() {
    let (_dir, db, path) = common::sqlite();
    SqliteConnection::establish(&path)
        .unwrap()
        .batch_execute(SQLITE_SEED)
        .unwrap();
    check(&db, "sqlite");
    common::on_postgres(|db, url| {
        PgConnection::establish(url)
            .unwrap()
            .batch_execute(PG_SEED)
            .unwrap();
        check(db, "postgres");
    });
}
