//! The database: the record of every task. SQLite (embedded default) or
//! PostgreSQL (production), behind one set of queries.
//!
//! Every method here is blocking; async code calls them through
//! [`Db::run_blocking`], which moves the work onto tokio's blocking pool so
//! a pooled connection is never held across an `.await`. Every state change
//! is a compare-and-set on the row, so a late or duplicate caller changes
//! nothing.
//!
//! This file holds the pool, its connections and migrations. The queries
//! live in files named for what happens to a task, in the order it happens:
//!
//! - `submit.rs`: `/receive` stores tasks, once per event.
//! - `outbox.rs`: the relay publishes what the broker has not confirmed,
//!   and marks what it has; what it confirmed and then lost is owed again.
//! - `attempts.rs`: workers claim tasks, hold leases and record how
//!   attempts ended; lost leases are taken back.
//! - `status.rs`: what `GET /status` and monitoring read.
//! - `retention.rs`: final tasks are deleted once older than `retention`.
//! - `control.rs`: what a client asks afterwards: cancel a task, run a
//!   finished one again.
//! - `listing.rs`: what `GET /tasks` (pages, counts, full records) reads.
//! - `events.rs`: every change of status, as triggers record it: what
//!   `GET /status/<id>/events` streams and the api's waiters' hub reads.
//!
//! Those files use only diesel's shared form, written once for both
//! backends (through `with_conn!`, below); what only one backend can say
//! (raw SQL, `SKIP LOCKED`, `unnest`) is in `dialect.rs`. Errors and their
//! classification are in `error.rs`. `pool.rs` is the pool's connection
//! manager (it skips the checkout ping of a connection known good).
//! `counts.rs` counts statements and transactions for the benchmark
//! harness, only when asked to. `plans.rs` shows the plans of the relay's
//! queries, for the tests that keep them index range reads.

pub mod schema_pg;
pub mod schema_sqlite;

use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::r2d2::{CustomizeConnection, Pool as R2d2Pool};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

const PG_MIGRATIONS: EmbeddedMigrations = embed_migrations!("../migrations/postgres");
const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("../migrations/sqlite");

#[derive(Debug, Clone)]
enum Pool {
    Postgres(R2d2Pool<pool::Manager<PgConnection>>),
    Sqlite(R2d2Pool<pool::Manager<SqliteConnection>>),
}

/// Runs `$body` with `$conn` bound to a pooled connection and `$schema` to the
/// matching schema module, once per backend, so each query is written once.
macro_rules! with_conn {
    ($db:expr, |$conn:ident, $schema:ident| $body:expr) => {
        match &$db.pool {
            $crate::db::Pool::Postgres(pool) => {
                let $conn: &mut ::diesel::PgConnection = &mut *pool.get()?;
                #[allow(unused_imports)]
                use $crate::db::schema_pg as $schema;
                $body
            }
            $crate::db::Pool::Sqlite(pool) => {
                let mut conn = $crate::db::writer::SqliteConn::get($db.id(), pool)?;
                let $conn: &mut ::diesel::SqliteConnection = &mut *conn;
                #[allow(unused_imports)]
                use $crate::db::schema_sqlite as $schema;
                $body
            }
        }
    };
}

// After the macro: the query files use it. The relay's queries are
// macros of their files (`#[macro_use]`), so that `plans.rs`, last, can
// show the plans of the very queries the relay runs.
#[macro_use]
mod attempts;
mod control;
pub mod counts;
#[macro_use]
mod dialect;
mod error;
mod events;
mod kept;
pub mod listing;
#[macro_use]
mod outbox;
pub mod pool;
#[macro_use]
mod retention;
mod busy;
pub mod checkpoint;
mod plans;
mod sqlite_setup;
mod stamp;
mod status;
mod submit;
mod writer;
pub use writer::WriterTurn;

pub use control::{CancelAnswer, Lease, RetryAnswer};
pub use error::{DbError, DbResult};
pub use events::{TaskEvent, EVENTS_CHUNK};
pub use outbox::{LostBound, LOST_COUNT_CAP};
pub use submit::Publish;

#[derive(Debug)]
struct SqlitePragmas;

impl CustomizeConnection<SqliteConnection, diesel::r2d2::Error> for SqlitePragmas {
    fn on_acquire(&self, conn: &mut SqliteConnection) -> Result<(), diesel::r2d2::Error> {
        // WAL lets the API read while workers write; the busy handler
        // (`busy`, installed as the connection opened; no `busy_timeout`
        // here, which would replace it) makes writers from several
        // processes queue instead of failing, switching to WAL included.
        // Each pooled connection keeps its own page cache on top of the
        // kernel's: 1 MiB each (SQLite's default is 2 MiB) keeps a pool's
        // memory small, and the task lookups are by primary key, which need
        // few pages. Temporary files in memory: a multi-row insert or update
        // whose rows fire triggers keeps a statement journal, and in a file
        // each one cost an open, writes and an unlink (13 KiB written per
        // task in the embedded mode; BENCHMARKS.md).
        conn.batch_execute(
            "PRAGMA journal_mode = WAL; \
             PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; \
             PRAGMA cache_size = -1024; PRAGMA temp_store = MEMORY;",
        )
        .map_err(diesel::r2d2::Error::QueryError)?;
        // Checkpoints run on a thread of their own (`checkpoint.rs`); a
        // commit checkpoints only past this backstop.
        conn.batch_execute(&format!(
            "PRAGMA wal_autocheckpoint = {};",
            checkpoint::BACKSTOP_PAGES
        ))
        .map_err(diesel::r2d2::Error::QueryError)
    }
}

/// The names (`2026-11-23-000000_create_tasks`) of the applied `versions`
/// of `source`, in the order they were applied.
fn migration_names<DB: diesel::backend::Backend>(
    source: &EmbeddedMigrations,
    versions: Vec<String>,
) -> Vec<String>
where
    EmbeddedMigrations: diesel::migration::MigrationSource<DB>,
{
    let migrations =
        diesel::migration::MigrationSource::<DB>::migrations(source).unwrap_or_default();
    versions
        .iter()
        .map(|version| {
            migrations
                .iter()
                .map(|m| m.name())
                .find(|name| name.version().to_string() == *version)
                .map_or_else(|| version.to_string(), |name| name.to_string())
        })
        .collect()
}

/// A handle on the database pool; cheap to clone.
#[derive(Debug, Clone)]
pub struct Db {
    pool: Pool,
    /// SQLite: the thread checkpointing the WAL, stopped with the last
    /// clone.
    _checkpointer: Option<std::sync::Arc<checkpoint::Checkpointer>>,
    /// SQLite: the database's path.
    sqlite_path: Option<std::sync::Arc<str>>,
}

/// How a process's PostgreSQL sessions plan the statements they keep
/// prepared (SQLite has no choice to make).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Planning {
    /// PostgreSQL's own: a plan for each run's values, or after five runs
    /// one for all values if it costs no more. The api's: its listing
    /// filters need the values they are run with.
    #[default]
    Default,
    /// One plan per statement and connection, made at its first run for
    /// any values (`plan_cache_mode = force_generic_plan`), with sequential
    /// scans priced out (`enable_seqscan = off`). The workers': every
    /// statement they repeat finds its rows through an index (by id, or a
    /// relay's partial index), and a claim or an outcome planned with each
    /// batch was a third of the server's time per statement at 1 000/s.
    /// Without `enable_seqscan = off`, a plan made while the table was
    /// new and without statistics scanned it, and was kept
    /// (`core/src/db/kept.rs`).
    Generic,
}

impl Planning {
    /// What each new PostgreSQL session runs first.
    const fn setup(self) -> Option<&'static str> {
        match self {
            Self::Default => None,
            Self::Generic => {
                Some("SET plan_cache_mode = force_generic_plan; SET enable_seqscan = off")
            }
        }
    }
}

impl Db {
    /// Connects a pool to `url` (`sqlite://PATH` or `postgres://…`).
    pub fn connect(url: &str, pool_size: u32) -> DbResult<Self> {
        Self::connect_planned(url, pool_size, Planning::Default)
    }

    /// [`Db::connect`], its PostgreSQL sessions planning as `planning` says.
    pub fn connect_planned(url: &str, pool_size: u32, planning: Planning) -> DbResult<Self> {
        // Before the pool's first connection: counting is per connection.
        counts::install();
        fn builder<M: diesel::r2d2::ManageConnection>(size: u32) -> diesel::r2d2::Builder<M> {
            R2d2Pool::builder()
                .max_size(size)
                .min_idle(Some(1))
                .connection_timeout(Duration::from_secs(5))
        }
        if let Some(path) = url.strip_prefix("sqlite://") {
            busy::install();
            let pool = builder(pool_size)
                .connection_customizer(Box::new(SqlitePragmas))
                .build(pool::Manager::sqlite(path))
                .map_err(|e| DbError::Unavailable(format!("{path}: {e}")))?;
            let checkpointer = checkpoint::spawn(path)?;
            Ok(Self {
                pool: Pool::Sqlite(pool),
                _checkpointer: Some(std::sync::Arc::new(checkpointer)),
                sqlite_path: Some(path.into()),
            })
        } else {
            let pool = builder(pool_size)
                .build(pool::Manager::with_setup(url, planning.setup()))
                .map_err(|e| DbError::Unavailable(e.to_string()))?;
            Ok(Self {
                pool: Pool::Postgres(pool),
                _checkpointer: None,
                sqlite_path: None,
            })
        }
    }

    /// SQLite: waits for a connection and then the writers' turn, which
    /// this thread holds (and its statements on this database run on that
    /// connection) until the answer is dropped: see [`writer::WriterTurn`].
    /// `None` on PostgreSQL.
    pub fn writer_turn(&self) -> Option<writer::WriterTurn> {
        match &self.pool {
            Pool::Sqlite(pool) => writer::WriterTurn::take(self.id(), pool),
            Pool::Postgres(_) => None,
        }
    }

    /// What tells this database's pool from another's in this process:
    /// the same for every clone.
    fn id(&self) -> usize {
        self.sqlite_path
            .as_ref()
            .map_or(0, |path| std::sync::Arc::as_ptr(path).cast::<u8>() as usize)
    }

    /// Which backend this is: `"postgres"` or `"sqlite"`.
    pub fn backend(&self) -> &'static str {
        match self.pool {
            Pool::Postgres(_) => "postgres",
            Pool::Sqlite(_) => "sqlite",
        }
    }

    /// Applies pending migrations; returns the names of those it applied,
    /// oldest first (none when the database was up to date). Safe to call
    /// from several processes at once.
    pub fn migrate(&self) -> DbResult<Vec<String>> {
        let err = |e: Box<dyn std::error::Error + Send + Sync>| DbError::Migration(e.to_string());
        match &self.pool {
            Pool::Postgres(pool) => {
                let conn = &mut *pool.get()?;
                // Replicas start together; one migrates while the others wait.
                conn.batch_execute("SELECT pg_advisory_lock(460069)")?;
                let result = conn
                    .run_pending_migrations(PG_MIGRATIONS)
                    .map(|applied| applied.iter().map(ToString::to_string).collect())
                    .map_err(err);
                conn.batch_execute("SELECT pg_advisory_unlock(460069)")?;
                Ok(migration_names::<diesel::pg::Pg>(&PG_MIGRATIONS, result?))
            }
            Pool::Sqlite(pool) => {
                let conn = &mut *pool.get()?;
                let applied = conn
                    .run_pending_migrations(SQLITE_MIGRATIONS)
                    .map(|applied| applied.iter().map(ToString::to_string).collect())
                    .map_err(err)?;
                Ok(migration_names::<diesel::sqlite::Sqlite>(
                    &SQLITE_MIGRATIONS,
                    applied,
                ))
            }
        }
    }

    /// Runs blocking database work off the async threads: every method
    /// of [`Db`] blocks, so async code calls them through this.
    pub async fn run_blocking<T, F>(&self, f: F) -> DbResult<T>
    where
        F: FnOnce(&Db) -> DbResult<T> + Send + 'static,
        T: Send + 'static,
    {
        let db = self.clone();
        match tokio::task::spawn_blocking(move || f(&db)).await {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(DbError::Unavailable(format!(
                "database task cancelled: {e}"
            ))),
        }
    }

    /// Checks that a connection can be had and used.
    pub fn ping(&self) -> DbResult<()> {
        with_conn!(self, |conn, s| {
            conn.batch_execute("SELECT 1")?;
            Ok(())
        })
    }
}
