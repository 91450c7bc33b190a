//! SQLite's WAL is checkpointed by a thread of each process's own, not by
//! the commits: what the writers append reaches the database file without
//! a writer checkpointing (the commit-time checkpoint only starts past
//! 10 000 pages, many more than this test writes), and the thread ends
//! with the last handle on the pool.

use std::time::{Duration, Instant};

use chrono::Utc;
use ferry_core::task::NewTask;
use serde_json::json;

mod common;
use common::{new_task, sqlite};

/// The threads of this process named as the checkpoint thread is (a
/// thread's name is cut to 15 bytes).
fn checkpoint_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim() == "ferry-checkpoin")
        .count()
}

#[test]
fn the_wal_is_checkpointed_off_the_write_path() {
    let (_dir, db, path) = sqlite();
    assert_eq!(checkpoint_threads(), 1);
    let size = || std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let before = size();

    // About 2 MiB of events, in 20 commits: some 500 pages of the WAL.
    let padding = "x".repeat(1000);
    for batch in 0..20 {
        let tasks: Vec<NewTask> = (0..100)
            .map(|i| NewTask {
                event: json!({"specversion": "1.0", "padding": padding}),
                ..new_task(&format!("{batch}-{i}"), 3)
            })
            .collect();
        db.insert_tasks(&tasks, Utc::now()).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while size() < before + 2_000_000 {
        assert!(
            Instant::now() < deadline,
            "the database file stayed at {} bytes (from {before}): nothing checkpointed the WAL",
            size()
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    drop(db);
    let deadline = Instant::now() + Duration::from_secs(5);
    while checkpoint_threads() > 0 {
        assert!(
            Instant::now() < deadline,
            "the checkpoint thread outlived its pool"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
