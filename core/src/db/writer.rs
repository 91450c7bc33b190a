//! SQLite's writers take turns through the kernel, not by polling.
//!
//! SQLite has one writer at a time, and in the production layout three
//! processes write one file (the api's inserts, each worker's claims and
//! outcomes). A writer that finds SQLite's lock taken can only poll for
//! it: the busy handler (`busy.rs`) sleeps 50 µs to 1 ms between tries,
//! and the lock sits free while it sleeps. In a burst each of those
//! writers slept about a third of its time, a sleep every 2 ms (`perf
//! trace` of clock_nanosleep, BENCHMARKS.md).
//!
//! So each outermost transaction on a SQLite connection of Ferry's first
//! takes an exclusive `flock` on a file beside the database
//! (`<database>-writer`), and gives it back once its `COMMIT` or
//! `ROLLBACK` has run. A writer that finds it taken sleeps in the kernel,
//! which wakes it the moment the holder lets go: the turns pass from one
//! transaction to the next without a gap, and SQLite's own lock is free
//! when each takes it. The busy handler stays for what does not take a
//! turn: checkpoints, and other programs writing the file. Writes that
//! run alone (a statement is a transaction of its own, which diesel does
//! not announce) take theirs through [`super::pool::in_turn`], and the
//! group commits hold one around a whole batch ([`WriterTurn`]).
//!
//! A lock is the whole open file's, so each connection opens the file
//! for itself (two connections of one process wait for each other as two
//! processes do), and the kernel drops it if its process dies. A thread
//! that already holds a turn through one connection does not wait for
//! another turn on a second one (it would wait for itself): that
//! transaction goes to SQLite's lock and busy handler as before.

use std::cell::{Cell, RefCell};
use std::fs::{File, OpenOptions};
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::path::Path;

use diesel::r2d2::{Pool, PooledConnection};
use diesel::SqliteConnection;

use super::pool::{give_back_turn, take_turn, Manager};

thread_local! {
    /// Whether this thread holds a turn (through a connection or a
    /// [`WriterTurn`]).
    static HOLDING: Cell<bool> = const { Cell::new(false) };
}

/// One connection's handle on the writers' lock file.
#[derive(Debug)]
pub(super) struct Turns {
    file: File,
    /// This connection holds the lock.
    held: bool,
}

impl Turns {
    /// The lock file of the database at `path`, opened (created if
    /// missing) for one connection. `None` for an in-memory database, or
    /// if the file cannot be opened (the connection then has only SQLite's
    /// lock, as before).
    pub(super) fn open(path: &str) -> Option<Self> {
        if path.is_empty() || path.starts_with(":memory:") || path.starts_with("file:") {
            return None;
        }
        let lock = format!("{path}-writer");
        match OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(Path::new(&lock))
        {
            Ok(file) => Some(Self { file, held: false }),
            Err(e) => {
                tracing::warn!(file = %lock, error = %e, "SQLite writers will poll for the lock");
                None
            }
        }
    }

    /// Waits for the turn, unless this connection or another on this
    /// thread holds one. Whether this call took it (and so gives it back).
    pub(super) fn take(&mut self) -> bool {
        if self.held || HOLDING.with(Cell::get) {
            return false;
        }
        match self.file.lock() {
            Ok(()) => {
                self.held = true;
                HOLDING.with(|h| h.set(true));
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "the SQLite writers' lock could not be taken");
                false
            }
        }
    }

    /// Gives the turn back, if this connection holds it.
    pub(super) fn give_back(&mut self) {
        if !self.held {
            return;
        }
        if let Err(e) = self.file.unlock() {
            tracing::warn!(error = %e, "the SQLite writers' lock could not be released");
        }
        self.held = false;
        HOLDING.with(|h| h.set(false));
    }
}

/// A pooled connection to a SQLite database.
type Pooled = PooledConnection<Manager<SqliteConnection>>;

thread_local! {
    /// The connection a [`WriterTurn`] checked out and took its turn
    /// through, with the id of its database ([`super::Db`]'s), while the
    /// turn lasts.
    static RESERVED: RefCell<Option<(usize, Pooled)>> = const { RefCell::new(None) };
    /// This thread holds a [`WriterTurn`].
    static BATCH_TURN: Cell<bool> = const { Cell::new(false) };
}

/// Gives back the turn a batch's connection holds, and the connection to
/// its pool.
fn end_batch_turn(reserved: Option<(usize, Pooled)>) {
    if let Some((_, mut conn)) = reserved {
        give_back_turn(&mut *conn);
    }
}

/// A writers' turn a batch thread holds around a whole group commit, so
/// that it gathers its batch once it has the turn (the requests that came
/// in while it waited join it, instead of waiting for a turn of their own)
/// and writes it at once. It takes a pooled connection first and the turn
/// second, like every other writer: a thread waiting for the turn while
/// holding the pool's last connection could otherwise wait on this one,
/// which would be waiting for a connection. The connection is the one the
/// batch's statements then run on ([`SqliteConn`]). Given back when
/// dropped, on the thread that took it.
#[derive(Debug)]
pub struct WriterTurn {
    /// Not `Send`: the turn and the connection are this thread's.
    _thread: PhantomData<*const ()>,
}

impl WriterTurn {
    /// Waits for a connection of `pool` (the database `db`) and then for
    /// the turn, through that connection's handle on the lock file; `None`
    /// if either cannot be had (the batch then takes its turn as each
    /// transaction does).
    pub(super) fn take(db: usize, pool: &Pool<Manager<SqliteConnection>>) -> Option<Self> {
        if BATCH_TURN.with(Cell::get) {
            return None;
        }
        let mut conn = pool.get().ok()?;
        if !take_turn(&mut *conn) {
            return None;
        }
        RESERVED.with(|r| *r.borrow_mut() = Some((db, conn)));
        BATCH_TURN.with(|t| t.set(true));
        Some(Self {
            _thread: PhantomData,
        })
    }
}

impl Drop for WriterTurn {
    fn drop(&mut self) {
        BATCH_TURN.with(|t| t.set(false));
        // If a statement has the connection out now, it ends the turn
        // when it puts it back ([`SqliteConn`]'s drop).
        end_batch_turn(RESERVED.with(|r| r.borrow_mut().take()));
    }
}

/// The connection `with_conn!` runs a SQLite body on: the one this thread
/// reserved for its [`WriterTurn`] on the same database, if it holds one,
/// or one from the pool.
pub(super) enum SqliteConn {
    Reserved(Option<(usize, Pooled)>),
    Pooled(Pooled),
}

impl SqliteConn {
    pub(super) fn get(
        db: usize,
        pool: &Pool<Manager<SqliteConnection>>,
    ) -> Result<Self, diesel::r2d2::PoolError> {
        let reserved = RESERVED.with(|r| {
            let mut r = r.borrow_mut();
            match r.take() {
                Some((id, conn)) if id == db => Some((id, conn)),
                other => {
                    *r = other;
                    None
                }
            }
        });
        match reserved {
            Some(reserved) => Ok(Self::Reserved(Some(reserved))),
            None => pool.get().map(Self::Pooled),
        }
    }
}

impl Deref for SqliteConn {
    type Target = SqliteConnection;

    fn deref(&self) -> &SqliteConnection {
        match self {
            Self::Reserved(Some((_, conn))) | Self::Pooled(conn) => conn,
            Self::Reserved(None) => unreachable!("put back only when dropped"),
        }
    }
}

impl DerefMut for SqliteConn {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        match self {
            Self::Reserved(Some((_, conn))) | Self::Pooled(conn) => conn,
            Self::Reserved(None) => unreachable!("put back only when dropped"),
        }
    }
}

impl Drop for SqliteConn {
    fn drop(&mut self) {
        if let Self::Reserved(reserved) = self {
            let reserved = reserved.take();
            if BATCH_TURN.with(Cell::get) {
                // For the batch's next statement, until its turn ends.
                RESERVED.with(|r| *r.borrow_mut() = reserved);
            } else {
                end_batch_turn(reserved);
            }
        }
    }
}

impl Drop for Turns {
    fn drop(&mut self) {
        self.give_back();
    }
}

#[cfg(test)]
mod tests {
    use diesel::connection::SimpleConnection;
    use diesel::r2d2::PooledConnection;
    use diesel::{Connection, SqliteConnection};

    use super::super::pool::{in_turn, Manager};
    use super::super::{Db, Pool};
    use super::*;

    type Conn = PooledConnection<Manager<SqliteConnection>>;

    /// A pool on a fresh database file, the file's path, and the writers'
    /// lock file opened apart, as another process would.
    fn database(dir: &tempfile::TempDir) -> (Db, File) {
        let path = dir.path().join("turns.db");
        let db = Db::connect(&format!("sqlite://{}", path.display()), 4).unwrap();
        let lock = File::open(format!("{}-writer", path.display())).unwrap();
        (db, lock)
    }

    fn conn(db: &Db) -> Conn {
        match &db.pool {
            Pool::Sqlite(pool) => pool.get().unwrap(),
            Pool::Postgres(_) => unreachable!("a SQLite pool"),
        }
    }

    /// Whether another process would find the turn taken.
    fn taken(lock: &File) -> bool {
        match lock.try_lock() {
            Ok(()) => {
                lock.unlock().unwrap();
                false
            }
            Err(_) => true,
        }
    }

    #[test]
    fn a_transaction_holds_the_turn_from_begin_to_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let (db, lock) = database(&dir);
        let mut conn = conn(&db);
        conn.batch_execute("CREATE TABLE t (x INTEGER)").unwrap();
        assert!(!taken(&lock), "no turn outside a transaction");

        conn.transaction::<_, diesel::result::Error, _>(|conn| {
            assert!(taken(&lock), "the turn is taken as the transaction begins");
            // A savepoint's end is not the transaction's.
            conn.transaction::<_, diesel::result::Error, _>(|conn| {
                conn.batch_execute("INSERT INTO t VALUES (1)")
            })?;
            assert!(taken(&lock), "held after a savepoint is released");
            conn.batch_execute("INSERT INTO t VALUES (2)")
        })
        .unwrap();
        assert!(!taken(&lock), "given back after the commit");

        let failed = conn.transaction::<(), _, _>(|conn| {
            conn.batch_execute("INSERT INTO t VALUES (3)")?;
            assert!(taken(&lock));
            Err(diesel::result::Error::RollbackTransaction)
        });
        assert!(failed.is_err());
        assert!(!taken(&lock), "given back after a rollback");

        in_turn(&mut *conn, |conn| {
            assert!(taken(&lock), "in_turn holds it for a statement alone");
            conn.transaction::<_, diesel::result::Error, _>(|conn| {
                conn.batch_execute("INSERT INTO t VALUES (4)")
            })
            .unwrap();
            assert!(taken(&lock), "a transaction inside keeps in_turn's turn");
        });
        assert!(!taken(&lock), "given back after in_turn");
    }

    #[test]
    fn a_writer_waits_for_the_turn_and_gets_it_once_it_is_given_back() {
        let dir = tempfile::tempdir().unwrap();
        let (db, lock) = database(&dir);
        conn(&db)
            .batch_execute("CREATE TABLE t (x INTEGER)")
            .unwrap();
        // Another process's writer holds the turn.
        lock.lock().unwrap();
        let writer = {
            let db = db.clone();
            std::thread::spawn(move || {
                conn(&db).transaction::<_, diesel::result::Error, _>(|conn| {
                    conn.batch_execute("INSERT INTO t VALUES (1)")
                })
            })
        };
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(!writer.is_finished(), "the writer waits for the turn");
        lock.unlock().unwrap();
        writer
            .join()
            .unwrap()
            .expect("it writes once the turn is free");
    }

    #[test]
    fn a_thread_holding_a_turn_does_not_wait_for_itself() {
        let dir = tempfile::tempdir().unwrap();
        let (db, lock) = database(&dir);
        let (mut outer, mut inner) = (conn(&db), conn(&db));
        outer.batch_execute("CREATE TABLE t (x INTEGER)").unwrap();
        outer
            .transaction::<_, diesel::result::Error, _>(|_| {
                // A second connection's transaction on the same thread goes
                // to SQLite's lock (free here) instead of waiting forever.
                inner.transaction::<_, diesel::result::Error, _>(|conn| {
                    conn.batch_execute("INSERT INTO t VALUES (1)")
                })?;
                assert!(taken(&lock), "still the outer transaction's turn");
                Ok(())
            })
            .unwrap();
        assert!(!taken(&lock));
    }

    #[test]
    fn a_batch_holds_the_turn_and_runs_on_the_connection_it_took_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("turns.db");
        // One connection: the batch's statements can only run on the one
        // its turn took.
        let db = Db::connect(&format!("sqlite://{}", path.display()), 1).unwrap();
        db.migrate().unwrap();
        let lock = File::open(format!("{}-writer", path.display())).unwrap();

        let turn = db.writer_turn().expect("SQLite has turns");
        assert!(taken(&lock), "held once taken");
        assert!(
            db.writer_turn().is_none(),
            "a thread holding a batch's turn does not wait for another"
        );
        // From the pool, they would find none (the turn's is out) and fail
        // after the pool's timeout.
        db.ping()
            .expect("a statement runs on the turn's connection");
        db.mark_enqueued(&[crate::task::TaskId::new()])
            .expect("a write runs on the turn's connection");
        assert!(
            taken(&lock),
            "a statement's own turn does not end the batch's"
        );
        drop(turn);
        assert!(!taken(&lock), "given back when dropped");
        // The connection is back in the pool.
        db.ping().unwrap();
    }

    #[test]
    fn an_in_memory_database_has_no_lock_file() {
        assert!(Turns::open(":memory:").is_none());
        assert!(Turns::open("file::memory:?cache=shared").is_none());
    }
}
