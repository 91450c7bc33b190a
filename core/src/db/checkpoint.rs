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
//! pages not yet copied back stay bounded whatever this thread does.
//!
//! The log starts over from its beginning (SQLite's rule) only when a
//! writer finds it all copied back and no reader using it. In a long,
//! continuous burst that never happens on its own: writers append while a
//! `PASSIVE` round copies, so the copy is always behind. The log then grew
//! past the backstop and every commit checkpointed again, each what came
//! since this thread's last round (BENCHMARKS.md, the eleventh section).
//! So once the log holds [`RESTART_PAGES`], the round follows its
//! `PASSIVE` with a `RESTART`: it takes the writer's lock (waiting at most
//! [`RESTART_WAIT`] for it, writers meanwhile unhindered), copies the few
//! pages appended since, and checks that no reader still uses the log;
//! the next writer then starts the log over. Writers wait for it only
//! while it holds their lock: that copy and its sync, and at most
//! [`RESTART_WAIT`] for a reader to finish. A round that cannot have the
//! lock, or finds a reader, is a `PASSIVE` one and leaves the restart to
//! the next.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

use diesel::connection::{Instrumentation, InstrumentationEvent, SimpleConnection};
use diesel::sql_types::Integer;
use diesel::{Connection, QueryResult, QueryableByName, RunQueryDsl, SqliteConnection};

use super::{DbError, DbResult};

/// How often the log is checkpointed. At a few thousand tasks per second a
/// round copies a few thousand pages, each once however often it changed
/// meanwhile; an idle database costs a look at the log's header.
pub const INTERVAL: Duration = Duration::from_millis(100);

/// `wal_autocheckpoint`: a commit that takes the log past this many pages
/// (40 MiB at SQLite's 4 KiB) checkpoints, as before, only if the thread
/// here has not.
pub const BACKSTOP_PAGES: u32 = 10_000;

/// A log this long (pages; 16 MiB) is started over by the next round
/// (see the module's documentation): well below [`BACKSTOP_PAGES`], so a
/// burst does not reach the backstop, and long enough that a round at a
/// few thousand tasks a second restarts it only every few seconds.
pub const RESTART_PAGES: i32 = 4_000;

/// How long a `RESTART` waits for the writer's lock, and, holding it, for
/// a reader still using the log (SQLite's busy handler, `busy_timeout`).
pub const RESTART_WAIT: Duration = Duration::from_millis(2);

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
    // SQLite's own busy handler, short: a `RESTART` that holds the
    // writer's lock must not wait long for a reader with writers queued
    // behind it (the pool's connections wait 10 s: `busy.rs`).
    conn.batch_execute(&format!(
        "PRAGMA busy_timeout = {};",
        RESTART_WAIT.as_millis()
    ))
    .map_err(|e| DbError::Unavailable(format!("{path}: {e}")))?;
    let (stop, stopped) = mpsc::channel::<()>();
    std::thread::Builder::new()
        .name("ferry-checkpoint".into())
        .spawn(move || {
            while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(INTERVAL) {
                // Busy (another process checkpointing) or failing, it is
                // tried again next round; the backstop bounds the log.
                match round(&mut conn) {
                    Ok(true) => tracing::debug!("the WAL starts over"),
                    Ok(false) => {}
                    Err(e) => tracing::debug!(error = %e, "WAL checkpoint"),
                }
            }
        })
        .map_err(|e| DbError::Unavailable(format!("cannot start the checkpoint thread: {e}")))?;
    Ok(Checkpointer { _stop: stop })
}

/// What `PRAGMA wal_checkpoint` answers.
#[derive(QueryableByName)]
struct Checkpointed {
    /// 1 if the checkpoint could not finish (a lock it needed was taken).
    #[diesel(sql_type = Integer)]
    busy: i32,
    /// Pages in the log.
    #[diesel(sql_type = Integer)]
    log: i32,
}

/// One round: a `PASSIVE` checkpoint, and a `RESTART` once the log holds
/// [`RESTART_PAGES`]. Whether the log will start over.
fn round(conn: &mut SqliteConnection) -> QueryResult<bool> {
    let passive = checkpoint(conn, "PASSIVE")?;
    if passive.log < RESTART_PAGES {
        return Ok(false);
    }
    Ok(checkpoint(conn, "RESTART")?.busy == 0)
}

fn checkpoint(conn: &mut SqliteConnection, mode: &str) -> QueryResult<Checkpointed> {
    diesel::sql_query(format!("PRAGMA wal_checkpoint({mode})")).get_result(conn)
}
