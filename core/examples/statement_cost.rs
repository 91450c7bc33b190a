//! What the happy path's statements cost per task (CPU and elapsed time),
//! apart from any broker or HTTP: N tasks inserted, claimed and finished
//! in batches of B on one connection, on a new SQLite file or, given a
//! URL, on PostgreSQL (whose `search_path` should name an empty schema:
//! the tasks stay there).
//! `cargo run --release -p ferry-core --example statement_cost -- N B [URL]`
//!
//! On SQLite the statements run on the calling thread, so its CPU is
//! their whole cost; on PostgreSQL the server's share is in the elapsed
//! time (one connection, one statement at a time), not in the CPU.
use std::time::{Duration, Instant};

use chrono::Utc;
use ferry_core::task::{AttemptRef, NewTask, Outcome};
use ferry_core::{Db, TaskId};
use serde_json::json;

/// Nanoseconds this thread has run on a CPU.
fn cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let b: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(16);
    let dir = tempfile::tempdir().unwrap();
    let url = args
        .next()
        .unwrap_or_else(|| format!("sqlite://{}/t.db", dir.path().display()));
    let db = Db::connect(&url, 1).unwrap();
    db.migrate().unwrap();
    let tasks: Vec<NewTask> = (0..n)
        .map(|i| NewTask {
            id: TaskId::new(),
            event_type: "org.ferry.echo".into(),
            source: "/bench".into(),
            event_id: format!("e{i}"),
            event: json!({"specversion": "1.0", "id": format!("e{i}"), "source": "/bench",
                "type": "org.ferry.echo", "data": {"n": i}}),
            digest: format!("digest {i}"),
            max_attempts: 3,
            idempotency_key: None,
            run_after: None,
        })
        .collect();
    let lease = || Utc::now() + Duration::from_secs(60);
    let mut ids: Vec<TaskId> = Vec::with_capacity(n);
    let started = Instant::now();
    let t = cpu_ns();
    for chunk in tasks.chunks(b) {
        ids.extend(
            db.insert_tasks(chunk, lease())
                .unwrap()
                .iter()
                .map(|s| s.id),
        );
    }
    let insert = cpu_ns() - t;
    let insert_wall = started.elapsed();
    let started = Instant::now();
    let t = cpu_ns();
    for chunk in ids.chunks(b) {
        assert!(db
            .claim_many(chunk, "w", lease())
            .unwrap()
            .iter()
            .all(Option::is_some));
    }
    let claim = cpu_ns() - t;
    let claim_wall = started.elapsed();
    let started = Instant::now();
    let t = cpu_ns();
    for chunk in ids.chunks(b) {
        let outcomes: Vec<(AttemptRef, Outcome)> = chunk
            .iter()
            .map(|id| (id.attempt(1), Outcome::Succeeded(json!({"ok": true}))))
            .collect();
        assert!(db.finish_many(&outcomes).unwrap().into_iter().all(|r| r));
    }
    let finish = cpu_ns() - t;
    let finish_wall = started.elapsed();
    let per = |ns: u64| ns as f64 / 1000.0 / n as f64;
    let wall = |d: Duration| per(d.as_nanos() as u64);
    println!(
        "{} {n} tasks, batches of {b}: µs of CPU per task: insert {:.1}, claim {:.1}, finish {:.1}; \
         elapsed µs per task: insert {:.1}, claim {:.1}, finish {:.1}",
        db.backend(),
        per(insert),
        per(claim),
        per(finish),
        wall(insert_wall),
        wall(claim_wall),
        wall(finish_wall)
    );
}
