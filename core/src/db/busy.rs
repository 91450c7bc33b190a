//! SQLite's busy handler, Ferry's own.
//!
//! SQLite has one writer at a time, and in the production layout on SQLite
//! three processes write (the api's inserts, each worker's claims and
//! outcomes). A writer that finds the lock taken calls the connection's
//! busy handler, and `PRAGMA busy_timeout`'s handler sleeps 1, 2, 5, 10,
//! 15, 20, 25, 25, 25, 50, 50 and then 100 ms between tries: a commit that
//! loses the lock five times in a row has slept 33 ms although each of the
//! others held it for well under a millisecond, and the lock sits free
//! while it sleeps. Those sleeps were most of SQLite's submit p99 under
//! load (BENCHMARKS.md).
//!
//! So every SQLite connection this process opens gets [`busy`] instead: it
//! retries after 50 µs, doubling up to 1 ms, for [`BUSY_TIMEOUT`] in all.
//! A try is a lock call on the WAL index; a thousand a second cost nothing
//! beside the wait they cut. Diesel does not hand out the connection's
//! `sqlite3` handle, so the handler is installed from
//! `sqlite3_auto_extension`, which SQLite calls for each connection opened
//! in the process, before any statement of it runs. `PRAGMA busy_timeout`
//! must not be set afterwards: it would put SQLite's handler back.
//!
//! Ferry's own write transactions wait for their turn before they begin
//! (`writer.rs`), in the kernel rather than by polling, so SQLite's lock is
//! free when they reach it; this handler is left with the waits of what
//! takes no turn: checkpoints, the statements that take none, other
//! programs writing the file.

// The two calls into SQLite's C API below.
#![allow(unsafe_code)]

use std::cell::Cell;
use std::ffi::{c_char, c_int, c_void};
use std::sync::Once;
use std::time::{Duration, Instant};

use libsqlite3_sys as ffi;

/// How long a writer waits for the lock before its statement fails with
/// "database is locked" (as `busy_timeout = 10000` did).
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// The first wait between tries; it doubles up to [`MAX_WAIT`].
const FIRST_WAIT: Duration = Duration::from_micros(50);
/// The longest wait between tries.
const MAX_WAIT: Duration = Duration::from_millis(1);

thread_local! {
    /// When the current wait for the lock began (the handler runs on the
    /// thread whose statement waits).
    static WAITING_SINCE: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Installs [`busy`] on every SQLite connection opened from now on in this
/// process. Call before opening one; calls after the first do nothing.
pub fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Installing initializes SQLite, after which it takes no more
        // configuration.
        super::sqlite_setup::configure();
        // SAFETY: `on_open` has the signature SQLite's C API declares for
        // an extension entry point, and lives for the whole process.
        let rc = unsafe { ffi::sqlite3_auto_extension(Some(on_open)) };
        if rc != ffi::SQLITE_OK {
            tracing::warn!(rc, "SQLite's busy handler could not be replaced");
        }
    });
}

/// Called by SQLite as each connection is opened.
unsafe extern "C" fn on_open(
    db: *mut ffi::sqlite3,
    _error: *mut *mut c_char,
    _api: *const ffi::sqlite3_api_routines,
) -> c_int {
    // SAFETY: `db` is the connection being opened, valid during this call;
    // `busy` has the signature of a busy handler and ignores its argument.
    unsafe { ffi::sqlite3_busy_handler(db, Some(busy), std::ptr::null_mut()) }
}

/// The busy handler: `count` is how many times it was called for this
/// wait. Nonzero: try again; zero: give up (`SQLITE_BUSY`).
unsafe extern "C" fn busy(_arg: *mut c_void, count: c_int) -> c_int {
    let now = Instant::now();
    let since = WAITING_SINCE.with(|since| match since.get() {
        Some(t) if count > 0 => t,
        _ => {
            since.set(Some(now));
            now
        }
    });
    if now.saturating_duration_since(since) >= BUSY_TIMEOUT {
        return 0;
    }
    std::thread::sleep(wait(count));
    1
}

/// The wait before try `count + 1`.
fn wait(count: c_int) -> Duration {
    let doublings = count.clamp(0, 16) as u32;
    (FIRST_WAIT * (1 << doublings)).min(MAX_WAIT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use diesel::connection::SimpleConnection;
    use diesel::{Connection, SqliteConnection};

    #[test]
    fn waits_are_short_and_bounded() {
        assert_eq!(wait(0), Duration::from_micros(50));
        assert_eq!(wait(1), Duration::from_micros(100));
        assert_eq!(wait(4), Duration::from_micros(800));
        assert_eq!(wait(5), MAX_WAIT);
        assert_eq!(wait(c_int::MAX), MAX_WAIT);
    }

    /// With no `busy_timeout` set, SQLite's own answer to a taken lock is
    /// an immediate "database is locked": a writer that waits for another
    /// connection's lock instead is waiting in [`busy`].
    #[test]
    fn a_writer_waits_for_the_lock_in_the_handler() {
        install();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("busy.db");
        let path = path.to_str().unwrap().to_string();
        let mut holder = SqliteConnection::establish(&path).unwrap();
        holder
            .batch_execute("PRAGMA journal_mode = WAL; CREATE TABLE t (x INTEGER);")
            .unwrap();
        holder
            .batch_execute("BEGIN IMMEDIATE; INSERT INTO t VALUES (1);")
            .unwrap();
        let writer = std::thread::spawn(move || {
            let mut conn = SqliteConnection::establish(&path).unwrap();
            conn.batch_execute("INSERT INTO t VALUES (2);")
        });
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            !writer.is_finished(),
            "the writer waits while the lock is held"
        );
        holder.batch_execute("COMMIT;").unwrap();
        writer
            .join()
            .unwrap()
            .expect("the writer got the lock once it was free");
    }
}
