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

/// Commits `tasks` new tasks (batch `batch`), each event padded with
/// `padding` bytes.
fn insert_padded(db: &ferry_core::Db, batch: usize, tasks: usize, padding: usize) {
    let padding = "x".repeat(padding);
    let tasks: Vec<NewTask> = (0..tasks)
        .map(|i| NewTask {
            event: json!({"specversion": "1.0", "padding": padding}),
            ..new_task(&format!("{batch}-{i}"), 3)
        })
        .collect();
    db.insert_tasks(&tasks, Utc::now()).unwrap();
}

#[test]
fn the_wal_is_checkpointed_off_the_write_path() {
    let (_dir, db, path) = sqlite();
    // The thread is spawned with the pool; it takes its name once it runs.
    let deadline = Instant::now() + Duration::from_secs(5);
    while checkpoint_threads() != 1 {
        assert!(
            Instant::now() < deadline,
            "{} checkpoint threads for one pool",
            checkpoint_threads()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let size = || std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let before = size();

    // About 2 MiB of events, in 20 commits: some 500 pages of the WAL.
    for batch in 0..20 {
        insert_padded(&db, batch, 100, 1000);
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

/// A writer that commits without pause for longer than a checkpoint round
/// never finds the log all copied back, so SQLite never starts it over on
/// its own: without the thread's `RESTART`, the `-wal` file grew by every
/// page written (past the commit-time backstop, where commits checkpoint
/// again). With it, the log starts over once it holds
/// `checkpoint::RESTART_PAGES`, and the file stays below the backstop
/// however much is written.
#[test]
fn a_log_written_without_pause_starts_over() {
    use ferry_core::db::checkpoint::{BACKSTOP_PAGES, RESTART_PAGES};
    let (_dir, db, path) = sqlite();
    let wal = format!("{path}-wal");
    let wal_pages = || std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0) / 4096;

    // Some 4 KiB events in commits of 20 with a millisecond between them,
    // as a batch thread under load writes: about twice the backstop in all.
    let commits = 2 * BACKSTOP_PAGES as usize / 20;
    for commit in 0..commits {
        insert_padded(&db, commit, 20, 4000);
        std::thread::sleep(Duration::from_millis(1));
    }
    let pages = wal_pages();
    assert!(
        pages < u64::from(BACKSTOP_PAGES),
        "the log reached {pages} pages after some {} were written: it never started over \
         (it should once it holds {RESTART_PAGES})",
        2 * BACKSTOP_PAGES
    );
}
