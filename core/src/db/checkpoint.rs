//! SQLite's WAL checkpoints, off the write path.
//!
//! In WAL mode a commit appends pages to the `-wal` file, and a checkpoint
//! copies them back into the database file. By default the connection whose
//! commit takes the log past 1 000 pages runs that checkpoint itself, before
//! its commit returns: the api's insert batch or a worker's outcome batch,
//! with its callers waiting. In a profile of a SQLite burst that was 19% of
//! both batch threads' time (BENCHMARKS.md, the eleventh section).
//!
//! So each process that opens a SQLite pool runs a checkpoint of its own
//! every [`INTERVAL`] on a thread of its own, on a connection of its own
//! (not the pool's, whose connections it would take from requests; and
//! not counted by `counts.rs`, so the harness's statements per task are the
//! tasks'). It is `PASSIVE`: it copies what
//! no reader still needs and waits for no one, and writers go on appending
//! meanwhile (SQLite's checkpoint lock is not the writer's lock); when two
//! processes try at once, one does it and the other returns at once. The
//! commit-time checkpoint stays as a backstop ([`BACKSTOP_PAGES`]), so the
//! pages not yet copied back stay bounded whatever this thread does. The
//! log starts over from its beginning (SQLite's rule, as before) only when
//! a writer finds it all copied back and no reader using it: in a long,
//! continuous burst some reader always is, the log passes the backstop,
//! and commits checkpoint again, each what came since this thread's last
//! round (BENCHMARKS.md, the eleventh section).

use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

use diesel::connection::{Instrumentation, InstrumentationEvent, SimpleConnection};
use diesel::{Connection, SqliteConnection};

use super::{DbError, DbResult};

/// How often the log is checkpointed. At a few thousand tasks per second a
/// round copies a few thousand pages, each once however often it changed
/// meanwhile; an idle database costs a look at the log's header.
pub const INTERVAL: Duration = Duration::from_millis(100);

/// `wal_autocheckpoint`: a commit that takes the log past this many pages
/// (40 MiB at SQLite's 4 KiB) checkpoints, as before, only if the thread
/// here has not.
pub const BACKSTOP_PAGES: u32 = 10_000;

/// Stops the checkpoint thread when the last handle on the pool is dropped.
#[derive(Debug)]
pub(super) struct Checkpointer {
    _stop: mpsc::Sender<()>,
}

/// A connection's hook that sees nothing: the checkpoints are not the
/// tasks' statements.
struct Uncounted;

impl Instrumentation for Uncounted {
    fn on_connection_event(&mut self, _: InstrumentationEvent<'_>) {}
}

/// Opens the checkpoint connection to the database at `path` (here, so
/// that a database that cannot be opened fails [`crate::Db::connect`]) and
/// starts its thread.
pub(super) fn spawn(path: &str) -> DbResult<Checkpointer> {
    let mut conn = SqliteConnection::establish(path)
        .map_err(|e| DbError::Unavailable(format!("{path}: {e}")))?;
    conn.set_instrumentation(Uncounted);
    let (stop, stopped) = mpsc::channel::<()>();
    std::thread::Builder::new()
        .name("ferry-checkpoint".into())
        .spawn(move || {
            while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(INTERVAL) {
                // Busy (another process checkpointing) or failing, it is
                // tried again next round; the backstop bounds the log.
                if let Err(e) = conn.batch_execute("PRAGMA wal_checkpoint(PASSIVE)") {
                    tracing::debug!(error = %e, "WAL checkpoint");
                }
            }
        })
        .map_err(|e| DbError::Unavailable(format!("cannot start the checkpoint thread: {e}")))?;
    Ok(Checkpointer { _stop: stop })
}
