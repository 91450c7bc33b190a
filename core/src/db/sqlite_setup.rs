//! How SQLite runs in this process: its memory from mimalloc, no memory
//! statistics, no mutex per connection.
//!
//! In a SQLite burst the writers' turns are the bottleneck (each of the
//! three writing processes waits for the others about a third of the time;
//! BENCHMARKS.md, sixteenth section), so what a turn costs is what the
//! production layout's throughput on SQLite is. A profile of the workers'
//! write threads there put about a fifth of their CPU in glibc's `malloc`
//! and `free` (SQLite's own allocations: the binaries' Rust allocations
//! already go to mimalloc) and in `pthread_mutex_unlock`: SQLite takes a
//! global mutex around every allocation to keep its memory statistics, and
//! the connection's own mutex around every call into its API.
//!
//! - **mimalloc** (`SQLITE_CONFIG_MALLOC`): thread-local heaps, no arena
//!   locks.
//! - **No memory statistics** (`SQLITE_CONFIG_MEMSTATUS` off): Ferry reads
//!   none (`sqlite3_memory_used`, a soft heap limit).
//! - **Multi-thread mode** (`SQLITE_CONFIG_MULTITHREAD`): SQLite's own
//!   global structures keep their mutexes; a connection has none, which is
//!   safe because no connection is ever used by two threads at once (a
//!   diesel connection is not `Sync`; the pool hands it to one thread at a
//!   time).
//!
//! `sqlite3_config` works only before SQLite initializes, which the first
//! connection opened (or [`super::busy::install`]) does: [`configure`] runs
//! first, once per process; called later, SQLite refuses and keeps its
//! defaults, which work the same, only slower.

// SQLite's C API, and the allocator functions handed to it.
#![allow(unsafe_code)]

use std::ffi::{c_int, c_void};
use std::sync::Once;

use libmimalloc_sys as mi;
use libsqlite3_sys as ffi;

/// Configures SQLite for this process (see the module's documentation).
/// Call before opening a SQLite connection; calls after the first do
/// nothing.
pub fn configure() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let methods = ffi::sqlite3_mem_methods {
            xMalloc: Some(malloc),
            xFree: Some(free),
            xRealloc: Some(realloc),
            xSize: Some(size),
            xRoundup: Some(roundup),
            xInit: Some(init),
            xShutdown: Some(shutdown),
            pAppData: std::ptr::null_mut(),
        };
        // SAFETY: `sqlite3_config` takes these options' arguments as its C
        // API declares them (a pointer to the methods, which SQLite copies;
        // an int; none), and is called here before any other thread of this
        // process can open a connection (the pool opens its first after
        // this returns).
        let answers = unsafe {
            [
                ffi::sqlite3_config(ffi::SQLITE_CONFIG_MALLOC, &methods as *const _),
                ffi::sqlite3_config(ffi::SQLITE_CONFIG_MEMSTATUS, 0 as c_int),
                ffi::sqlite3_config(ffi::SQLITE_CONFIG_MULTITHREAD),
            ]
        };
        if answers.iter().any(|rc| *rc != ffi::SQLITE_OK) {
            tracing::debug!(
                ?answers,
                "SQLite was initialized before it could be configured: its defaults stay"
            );
        }
    });
}

/// SQLite asks for `n` bytes (8-byte aligned: mimalloc aligns to 16).
unsafe extern "C" fn malloc(n: c_int) -> *mut c_void {
    // SAFETY: any size may be asked of mimalloc; SQLite never asks for a
    // negative one.
    unsafe { mi::mi_malloc(n.max(0) as usize) }
}

unsafe extern "C" fn free(p: *mut c_void) {
    // SAFETY: `p` came from `malloc` or `realloc` above, or is null.
    unsafe { mi::mi_free(p) }
}

unsafe extern "C" fn realloc(p: *mut c_void, n: c_int) -> *mut c_void {
    // SAFETY: as `free`.
    unsafe { mi::mi_realloc(p, n.max(0) as usize) }
}

/// The size SQLite may use of an allocation: at least what it asked for.
unsafe extern "C" fn size(p: *mut c_void) -> c_int {
    // SAFETY: as `free`.
    let usable = unsafe { mi::mi_usable_size(p) };
    c_int::try_from(usable).unwrap_or(c_int::MAX)
}

/// What an allocation of `n` bytes would really get.
unsafe extern "C" fn roundup(n: c_int) -> c_int {
    // SAFETY: a pure function of its argument.
    let good = unsafe { mi::mi_good_size(n.max(0) as usize) };
    c_int::try_from(good).unwrap_or(n)
}

unsafe extern "C" fn init(_: *mut c_void) -> c_int {
    ffi::SQLITE_OK
}

unsafe extern "C" fn shutdown(_: *mut c_void) {}

#[cfg(test)]
mod tests {
    use diesel::connection::SimpleConnection;
    use diesel::prelude::*;
    use diesel::sql_types::BigInt;

    #[test]
    fn sqlite_runs_on_the_configured_allocator() {
        super::configure();
        let mut conn = SqliteConnection::establish(":memory:").unwrap();
        conn.batch_execute(
            "CREATE TABLE t (x TEXT); \
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000) \
             INSERT INTO t SELECT printf('%0500d', i) FROM n;",
        )
        .unwrap();
        let rows: i64 = diesel::dsl::sql::<BigInt>("SELECT count(*) FROM t WHERE x LIKE '%7'")
            .get_result(&mut conn)
            .unwrap();
        assert_eq!(rows, 200);
        // SAFETY: reads of SQLite's counters, and an allocation of SQLite's
        // given back to it.
        let (used, threadsafe, from_mimalloc) = unsafe {
            let p = libsqlite3_sys::sqlite3_malloc(100);
            let from_mimalloc = !p.is_null() && super::mi::mi_is_in_heap_region(p);
            libsqlite3_sys::sqlite3_free(p);
            (
                libsqlite3_sys::sqlite3_memory_used(),
                libsqlite3_sys::sqlite3_threadsafe(),
                from_mimalloc,
            )
        };
        assert!(from_mimalloc, "SQLite allocates from glibc's malloc");
        // Each test runs in a process of its own (nextest): nothing opened
        // SQLite before `configure`, so its statistics are off and nothing
        // was counted.
        assert_eq!(used, 0, "SQLite kept its memory statistics");
        assert_eq!(threadsafe, 1, "the library is built thread-safe");
    }
}
