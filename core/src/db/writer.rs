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
//! turn: writes outside a transaction, checkpoints, and other programs
//! writing the file.
//!
//! A lock is the whole open file's, so each connection opens the file
//! for itself (two connections of one process wait for each other as two
//! processes do), and the kernel drops it if its process dies. A thread
//! that already holds a turn through one connection does not wait for
//! another turn on a second one (it would wait for itself): that
//! transaction goes to SQLite's lock and busy handler as before.

use std::cell::Cell;
use std::fs::{File, OpenOptions};
use std::path::Path;

thread_local! {
    /// Whether a connection on this thread holds a turn.
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
    fn an_in_memory_database_has_no_lock_file() {
        assert!(Turns::open(":memory:").is_none());
        assert!(Turns::open("file::memory:?cache=shared").is_none());
    }
}
