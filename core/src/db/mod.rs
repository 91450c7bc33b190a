//! The database: the record of every task. SQLite (embedded default) or
//! PostgreSQL (production), behind one set of queries.
//!
//! Every method here is blocking; async code calls them through
//! [`Db::run`], which moves the work onto tokio's blocking pool so a pooled
//! connection is never held across an `.await`. Every state change is a
//! compare-and-set on the row, so a late or duplicate caller changes nothing.

pub mod schema_pg;
pub mod schema_sqlite;

use std::collections::hash_map::{Entry, HashMap};
use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, CustomizeConnection, Pool as R2d2Pool};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};
use serde_json::Value;

use crate::task::{AttemptView, TaskId, TaskStatus, TaskView};

const PG_MIGRATIONS: EmbeddedMigrations = embed_migrations!("../migrations/postgres");
const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("../migrations/sqlite");

/// Why a database call failed.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The database cannot be reached (or is busy); retry later.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A query failed for another reason.
    #[error("database error: {0}")]
    Query(diesel::result::Error),
    /// Migrations could not be applied.
    #[error("migrations failed: {0}")]
    Migration(String),
    /// A batch this call was part of failed (see [`DbError::isolate`]).
    #[error("database error: {0}")]
    Batch(String),
}

impl DbError {
    /// The same error for every caller whose write shared the failed
    /// transaction; whether it is worth retrying is kept.
    pub fn for_each_caller(&self) -> Self {
        match self {
            Self::Unavailable(m) => Self::Unavailable(m.clone()),
            other => Self::Batch(other.to_string()),
        }
    }

    /// Runs a group commit's `items` together through `run` (one answer
    /// per item, in order), so that one item cannot fail the others. If the
    /// batch fails for a reason that may belong to one item (anything but
    /// an unavailable database), each item is run again on its own: the
    /// others commit as if it had not been there, and only the offending
    /// item gets its error. An unavailable database fails every item at
    /// once, as retrying them one by one would not help.
    pub fn isolate<Req, T>(
        batch: &'static str,
        items: &[Req],
        run: impl Fn(&[Req]) -> DbResult<Vec<T>>,
    ) -> Vec<DbResult<T>> {
        match run(items) {
            Ok(answers) => answers.into_iter().map(Ok).collect(),
            Err(e) if items.len() == 1 => vec![Err(e)],
            Err(e) if e.is_unavailable() => {
                (0..items.len()).map(|_| Err(e.for_each_caller())).collect()
            }
            Err(e) => {
                tracing::warn!(batch, items = items.len(), error = %e, "a batch failed; running its items one at a time");
                items
                    .iter()
                    .map(|item| {
                        run(std::slice::from_ref(item)).and_then(|mut answers| {
                            answers.pop().ok_or_else(|| {
                                DbError::Batch("a batch of one gave no answer".into())
                            })
                        })
                    })
                    .collect()
            }
        }
    }

    /// Whether retrying later may help.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

impl From<diesel::r2d2::PoolError> for DbError {
    fn from(e: diesel::r2d2::PoolError) -> Self {
        Self::Unavailable(e.to_string())
    }
}

impl From<diesel::result::Error> for DbError {
    fn from(e: diesel::result::Error) -> Self {
        use diesel::result::{DatabaseErrorKind as Kind, Error};
        match &e {
            // Lost connections, and conflicts that a retry resolves.
            Error::DatabaseError(
                Kind::ClosedConnection | Kind::UnableToSendCommand | Kind::SerializationFailure,
                _,
            ) => Self::Unavailable(e.to_string()),
            // SQLite's busy/locked after busy_timeout, PostgreSQL shutting down.
            Error::DatabaseError(_, info)
                if info.message().contains("database is locked")
                    || info.message().contains("deadlock detected")
                    || info.message().contains("terminating connection") =>
            {
                Self::Unavailable(e.to_string())
            }
            _ => Self::Query(e),
        }
    }
}

/// A result from this module.
pub type DbResult<T> = Result<T, DbError>;

#[derive(Debug, Clone)]
enum Pool {
    Postgres(R2d2Pool<ConnectionManager<PgConnection>>),
    Sqlite(R2d2Pool<ConnectionManager<SqliteConnection>>),
}

/// Runs `$body` with `$conn` bound to a pooled connection and `$schema` to the
/// matching schema module, once per backend, so each query is written once.
macro_rules! with_conn {
    ($db:expr, |$conn:ident, $schema:ident| $body:expr) => {
        match &$db.pool {
            Pool::Postgres(pool) => {
                let $conn: &mut PgConnection = &mut *pool.get()?;
                #[allow(unused_imports)]
                use self::schema_pg as $schema;
                $body
            }
            Pool::Sqlite(pool) => {
                let $conn: &mut SqliteConnection = &mut *pool.get()?;
                #[allow(unused_imports)]
                use self::schema_sqlite as $schema;
                $body
            }
        }
    };
}

#[derive(Debug)]
struct SqlitePragmas;

impl CustomizeConnection<SqliteConnection, diesel::r2d2::Error> for SqlitePragmas {
    fn on_acquire(&self, conn: &mut SqliteConnection) -> Result<(), diesel::r2d2::Error> {
        // WAL lets the API read while workers write; busy_timeout makes
        // writers from several processes queue instead of failing. Each
        // pooled connection keeps its own page cache on top of the kernel's:
        // 1 MiB each (SQLite's default is 2 MiB) keeps a pool's memory small,
        // and the task lookups are by primary key, which need few pages.
        conn.batch_execute(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
             PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON; \
             PRAGMA cache_size = -1024;",
        )
        .map_err(diesel::r2d2::Error::QueryError)
    }
}

/// A new task, as `/receive` stores it.
#[derive(Debug, Clone)]
pub struct NewTask {
    /// Its id.
    pub id: TaskId,
    /// The event's type.
    pub event_type: String,
    /// The event's source.
    pub source: String,
    /// The event's id.
    pub event_id: String,
    /// The whole event.
    pub event: Value,
    /// The event's digest ([`crate::event::Event::digest`]): a repeated
    /// (source, id) with another digest is a conflict, not the same event.
    pub digest: String,
    /// Attempts its route allows.
    pub max_attempts: i32,
}

/// What storing a task did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    /// The task's id: the new one, or the existing task's for a repeated event.
    pub id: TaskId,
    /// Its status now.
    pub status: TaskStatus,
    /// False when the same (source, id) event was already a task.
    pub created: bool,
    /// True when that existing task holds a different event under the
    /// same (source, id): nothing was stored.
    pub conflict: bool,
}

/// A task a worker has claimed: what it needs to run the attempt.
#[derive(Debug, Clone)]
pub struct Claimed {
    /// The attempt number this claim is (1 for the first).
    pub attempt: i32,
    /// Attempts the route allowed when the task was received.
    pub max_attempts: i32,
    /// The event's type.
    pub event_type: String,
    /// The whole event.
    pub event: Value,
}

/// How an attempt ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The handler succeeded with this result.
    Succeeded(Value),
    /// The attempt failed; run another after `run_after`.
    Retry {
        /// The attempt's error.
        error: String,
        /// When the next attempt may start.
        run_after: DateTime<Utc>,
    },
    /// The task failed for good.
    Failed(String),
    /// The handler succeeded, but its output cannot be stored (see
    /// [`crate::storable`]): the task failed for good with `error`, and
    /// `output` is the output made storable (escaped).
    Unstorable {
        /// Why the output cannot be stored.
        error: String,
        /// The output in a storable form.
        output: Value,
    },
    /// The worker stopped before the attempt finished (shutdown past its
    /// drain timeout): the task is retried now, and this attempt does not
    /// count against `max_attempts`.
    HandedBack(String),
}

#[derive(Queryable)]
struct TaskRow {
    id: TaskId,
    status: String,
    event_type: String,
    source: String,
    event_id: String,
    attempts: i32,
    max_attempts: i32,
    created_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    result: Option<Value>,
    error: Option<String>,
}

fn parse_status(s: &str) -> DbResult<TaskStatus> {
    s.parse()
        .map_err(|e: String| DbError::Query(diesel::result::Error::DeserializationError(e.into())))
}

const CLAIMABLE: [&str; 2] = ["pending", "retrying"];

/// Rows per multi-row insert: 10 bind parameters each, well under SQLite's
/// and PostgreSQL's limits.
const INSERT_CHUNK: usize = 500;

/// Indexes of `ids` in id order: batches lock rows in one global order.
fn order_by_id(ids: impl Iterator<Item = TaskId>) -> Vec<usize> {
    let mut order: Vec<(TaskId, usize)> = ids.zip(0..).collect();
    order.sort_by_key(|(id, _)| id.0);
    order.into_iter().map(|(_, i)| i).collect()
}

/// Statements that only some backends can make set-based.
trait SetBased {
    /// Records every `Outcome::Succeeded` of `attempts` whose attempt still
    /// holds its task, in one statement; the (task, attempt) pairs recorded.
    /// `None` if this backend records them one row at a time instead.
    fn record_successes(
        &mut self,
        attempts: &[(TaskId, i32, Outcome)],
        now: DateTime<Utc>,
    ) -> QueryResult<Option<HashSet<(TaskId, i32)>>>;
}

impl SetBased for SqliteConnection {
    fn record_successes(
        &mut self,
        _: &[(TaskId, i32, Outcome)],
        _: DateTime<Utc>,
    ) -> QueryResult<Option<HashSet<(TaskId, i32)>>> {
        Ok(None)
    }
}

impl SetBased for PgConnection {
    fn record_successes(
        &mut self,
        attempts: &[(TaskId, i32, Outcome)],
        now: DateTime<Utc>,
    ) -> QueryResult<Option<HashSet<(TaskId, i32)>>> {
        use diesel::sql_types::{Array, Integer, Jsonb, Timestamptz, Uuid};

        #[derive(QueryableByName)]
        struct Recorded {
            #[diesel(sql_type = Uuid)]
            id: TaskId,
            #[diesel(sql_type = Integer)]
            attempts: i32,
        }

        let mut ids = Vec::new();
        let mut numbers = Vec::new();
        let mut results = Vec::new();
        // In id order, so concurrent batches lock rows in one order.
        for i in order_by_id(attempts.iter().map(|(id, _, _)| *id)) {
            if let (id, attempt, Outcome::Succeeded(result)) = &attempts[i] {
                ids.push(*id);
                numbers.push(*attempt);
                results.push(result);
            }
        }
        if ids.is_empty() {
            return Ok(Some(HashSet::new()));
        }
        // The same transition as the row-by-row path, for a whole batch.
        let recorded = diesel::sql_query(
            "UPDATE tasks AS t SET status = 'succeeded', result = v.result, error = NULL, \
               finished_at = $4, run_after = NULL, worker = NULL, lease_expires_at = NULL, \
               enqueued_at = NULL, publish_lock_until = NULL, updated_at = $4 \
             FROM unnest($1::uuid[], $2::int4[], $3::jsonb[]) AS v(id, attempt, result) \
             WHERE t.id = v.id AND t.status = 'running' AND t.attempts = v.attempt \
             RETURNING t.id, t.attempts",
        )
        .bind::<Array<Uuid>, _>(ids)
        .bind::<Array<Integer>, _>(numbers)
        .bind::<Array<Jsonb>, _>(results)
        .bind::<Timestamptz, _>(now)
        .load::<Recorded>(self)?;
        Ok(Some(
            recorded.into_iter().map(|r| (r.id, r.attempts)).collect(),
        ))
    }
}

/// A handle on the database pool; cheap to clone.
#[derive(Debug, Clone)]
pub struct Db {
    pool: Pool,
}

impl Db {
    /// Connects a pool to `url` (`sqlite://PATH` or `postgres://…`).
    pub fn connect(url: &str, pool_size: u32) -> DbResult<Self> {
        fn builder<M: diesel::r2d2::ManageConnection>(size: u32) -> diesel::r2d2::Builder<M> {
            R2d2Pool::builder()
                .max_size(size)
                .min_idle(Some(1))
                .connection_timeout(Duration::from_secs(5))
        }
        let pool = if let Some(path) = url.strip_prefix("sqlite://") {
            Pool::Sqlite(
                builder(pool_size)
                    .connection_customizer(Box::new(SqlitePragmas))
                    .build(ConnectionManager::new(path))
                    .map_err(|e| DbError::Unavailable(format!("{path}: {e}")))?,
            )
        } else {
            Pool::Postgres(
                builder(pool_size)
                    .build(ConnectionManager::new(url))
                    .map_err(|e| DbError::Unavailable(e.to_string()))?,
            )
        };
        Ok(Self { pool })
    }

    /// Which backend this is: `"postgres"` or `"sqlite"`.
    pub fn backend(&self) -> &'static str {
        match self.pool {
            Pool::Postgres(_) => "postgres",
            Pool::Sqlite(_) => "sqlite",
        }
    }

    /// Applies pending migrations. Safe to call from several processes at once.
    pub fn migrate(&self) -> DbResult<()> {
        let err = |e: Box<dyn std::error::Error + Send + Sync>| DbError::Migration(e.to_string());
        match &self.pool {
            Pool::Postgres(pool) => {
                let conn = &mut *pool.get()?;
                // Replicas start together; one migrates while the others wait.
                conn.batch_execute("SELECT pg_advisory_lock(460069)")?;
                let result = conn
                    .run_pending_migrations(PG_MIGRATIONS)
                    .map(drop)
                    .map_err(err);
                conn.batch_execute("SELECT pg_advisory_unlock(460069)")?;
                result
            }
            Pool::Sqlite(pool) => {
                let conn = &mut *pool.get()?;
                conn.run_pending_migrations(SQLITE_MIGRATIONS)
                    .map(drop)
                    .map_err(err)
            }
        }
    }

    /// Runs blocking database work off the async threads.
    pub async fn run<T, F>(&self, f: F) -> DbResult<T>
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

    /// Stores tasks in one transaction. An event already stored (same source
    /// and id) is not stored again: its existing task is returned. New tasks
    /// are marked as being published by the caller until `publish_lock_until`,
    /// after which the relay takes them over.
    pub fn insert_tasks(
        &self,
        tasks: &[NewTask],
        publish_lock_until: DateTime<Utc>,
    ) -> DbResult<Vec<Stored>> {
        self.insert_task_refs(&tasks.iter().collect::<Vec<_>>(), publish_lock_until)
    }

    /// [`Db::insert_tasks`] for tasks owned elsewhere (the requests of a
    /// group commit), without copying them.
    pub fn insert_task_refs(
        &self,
        tasks: &[&NewTask],
        publish_lock_until: DateTime<Utc>,
    ) -> DbResult<Vec<Stored>> {
        let now = Utc::now();
        with_conn!(self, |conn, s| {
            use s::tasks::dsl as t;
            conn.transaction(|conn| {
                let mut created = std::collections::HashSet::with_capacity(tasks.len());
                // One multi-row statement per chunk; chunks keep the bind
                // parameters under the backends' limits.
                for chunk in tasks.chunks(INSERT_CHUNK) {
                    let rows: Vec<_> = chunk
                        .iter()
                        .map(|task| {
                            (
                                t::id.eq(task.id),
                                t::event_type.eq(&task.event_type),
                                t::source.eq(&task.source),
                                t::event_id.eq(&task.event_id),
                                t::event.eq(&task.event),
                                t::event_digest.eq(&task.digest),
                                t::status.eq(TaskStatus::Pending.as_str()),
                                t::max_attempts.eq(task.max_attempts),
                                t::publish_lock_until.eq(publish_lock_until),
                                t::created_at.eq(now),
                                t::updated_at.eq(now),
                            )
                        })
                        .collect();
                    created.extend(
                        diesel::insert_into(t::tasks)
                            .values(rows)
                            .on_conflict_do_nothing()
                            .returning(t::id)
                            .get_results::<TaskId>(conn)?,
                    );
                }
                let mut stored = Vec::with_capacity(tasks.len());
                for task in tasks {
                    if created.contains(&task.id) {
                        stored.push(Stored {
                            id: task.id,
                            status: TaskStatus::Pending,
                            created: true,
                            conflict: false,
                        });
                        continue;
                    }
                    // The same event was already a task (or came twice in this batch).
                    let (id, status, digest) = t::tasks
                        .select((t::id, t::status, t::event_digest))
                        .filter(t::source.eq(&task.source))
                        .filter(t::event_id.eq(&task.event_id))
                        .first::<(TaskId, String, Option<String>)>(conn)?;
                    stored.push(Stored {
                        id,
                        status: parse_status(&status)?,
                        created: false,
                        // Tasks stored before digests were kept have none.
                        conflict: digest.is_some_and(|d| d != task.digest),
                    });
                }
                Ok(stored)
            })
        })
    }

    /// Records that the broker confirmed these tasks' messages. Only rows
    /// still locked for publishing are marked: a task that was claimed and
    /// sent back to retrying meanwhile had its lock cleared, and must stay
    /// owed to the relay.
    ///
    /// On PostgreSQL, rows a worker holds right now are skipped rather than
    /// waited for: waiting deadlocked against outcome batches that lock in
    /// another order. Skipping is safe: a claimed task is not the relay's to
    /// publish, and one whose claim rolled back is republished when its
    /// publish lock runs out, a harmless duplicate.
    pub fn mark_enqueued(&self, ids: &[TaskId]) -> DbResult<()> {
        let now = Utc::now();
        let set = |enqueued_at: DateTime<Utc>| (enqueued_at, None::<DateTime<Utc>>);
        match &self.pool {
            Pool::Postgres(pool) => {
                use schema_pg::tasks::dsl as t;
                let conn = &mut *pool.get()?;
                conn.transaction(|conn| {
                    let free: Vec<TaskId> = t::tasks
                        .select(t::id)
                        .filter(t::id.eq_any(ids))
                        .filter(t::enqueued_at.is_null())
                        .filter(t::publish_lock_until.is_not_null())
                        .order(t::id)
                        .for_update()
                        .skip_locked()
                        .load(conn)?;
                    let (enqueued_at, lock) = set(now);
                    diesel::update(t::tasks.filter(t::id.eq_any(&free)))
                        .set((
                            t::enqueued_at.eq(enqueued_at),
                            t::publish_lock_until.eq(lock),
                        ))
                        .execute(conn)?;
                    Ok::<_, DbError>(())
                })?;
            }
            Pool::Sqlite(pool) => {
                use schema_sqlite::tasks::dsl as t;
                let conn = &mut *pool.get()?;
                let (enqueued_at, lock) = set(now);
                diesel::update(
                    t::tasks
                        .filter(t::id.eq_any(ids))
                        .filter(t::enqueued_at.is_null())
                        .filter(t::publish_lock_until.is_not_null()),
                )
                .set((
                    t::enqueued_at.eq(enqueued_at),
                    t::publish_lock_until.eq(lock),
                ))
                .execute(conn)?;
            }
        }
        Ok(())
    }

    /// Forgets every publish of unfinished tasks: for a queue that did not
    /// survive the last process (the in-process queue), so the relay
    /// publishes them again. Returns how many tasks are owed again.
    pub fn forget_enqueued(&self) -> DbResult<usize> {
        with_conn!(self, |conn, s| {
            use s::tasks::dsl as t;
            Ok(diesel::update(
                t::tasks
                    .filter(t::status.eq_any(CLAIMABLE))
                    .filter(t::enqueued_at.is_not_null()),
            )
            .set(t::enqueued_at.eq(None::<DateTime<Utc>>))
            .execute(conn)?)
        })
    }

    /// Gives a publish back to the relay at once (the broker did not confirm).
    pub fn release_publish(&self, ids: &[TaskId]) -> DbResult<()> {
        with_conn!(self, |conn, s| {
            use s::tasks::dsl as t;
            diesel::update(
                t::tasks
                    .filter(t::id.eq_any(ids))
                    .filter(t::enqueued_at.is_null()),
            )
            .set(t::publish_lock_until.eq(None::<DateTime<Utc>>))
            .execute(conn)?;
            Ok(())
        })
    }

    /// The relay's claim: up to `limit` tasks that are due and that no
    /// broker holds and no publisher owns, locked for `lock_for`. On
    /// PostgreSQL, relays in several processes skip the rows another one is
    /// taking (`FOR UPDATE SKIP LOCKED`) instead of waiting for them.
    pub fn claim_unpublished(&self, limit: i64, lock_for: Duration) -> DbResult<Vec<TaskId>> {
        let now = Utc::now();
        let until = now + lock_for;
        // The same conditions on either schema.
        macro_rules! owed {
            ($t:ident) => {
                $t::enqueued_at
                    .is_null()
                    .and($t::status.eq_any(CLAIMABLE))
                    .and($t::run_after.is_null().or($t::run_after.le(now)))
                    .and(
                        $t::publish_lock_until
                            .is_null()
                            .or($t::publish_lock_until.lt(now)),
                    )
            };
        }
        match &self.pool {
            Pool::Postgres(pool) => {
                use schema_pg::tasks::dsl as t;
                let conn = &mut *pool.get()?;
                conn.transaction(|conn| {
                    let candidates = t::tasks
                        .select(t::id)
                        .filter(owed!(t))
                        .order(t::created_at)
                        .limit(limit)
                        .for_update()
                        .skip_locked()
                        .load::<TaskId>(conn)?;
                    diesel::update(t::tasks.filter(t::id.eq_any(&candidates)))
                        .set(t::publish_lock_until.eq(until))
                        .execute(conn)?;
                    Ok(candidates)
                })
            }
            Pool::Sqlite(pool) => {
                use schema_sqlite::tasks::dsl as t;
                let conn = &mut *pool.get()?;
                // SQLite has one writer at a time: the UPDATE re-checks the
                // conditions, so rows another process took meanwhile drop out.
                let candidates = t::tasks
                    .select(t::id)
                    .filter(owed!(t))
                    .order(t::created_at)
                    .limit(limit)
                    .load::<TaskId>(conn)?;
                if candidates.is_empty() {
                    return Ok(candidates);
                }
                Ok(
                    diesel::update(t::tasks.filter(t::id.eq_any(&candidates)).filter(owed!(t)))
                        .set(t::publish_lock_until.eq(until))
                        .returning(t::id)
                        .get_results::<TaskId>(conn)?,
                )
            }
        }
    }

    /// Takes back running tasks whose lease ran out (their worker is gone):
    /// they are retried, or failed if they used all their attempts. Returns
    /// how many were taken back.
    pub fn expire_leases(&self) -> DbResult<usize> {
        let now = Utc::now();
        const LOST: &str = "the worker running this attempt stopped renewing its lease";
        with_conn!(self, |conn, s| {
            use s::task_attempts::dsl as a;
            use s::tasks::dsl as t;
            conn.transaction(|conn| {
                let expired = t::status
                    .eq(TaskStatus::Running.as_str())
                    .and(t::lease_expires_at.lt(now));
                let retried = diesel::update(
                    t::tasks
                        .filter(expired)
                        .filter(t::attempts.lt(t::max_attempts)),
                )
                .set((
                    t::status.eq(TaskStatus::Retrying.as_str()),
                    t::error.eq(LOST),
                    t::worker.eq(None::<String>),
                    t::lease_expires_at.eq(None::<DateTime<Utc>>),
                    t::run_after.eq(now),
                    t::enqueued_at.eq(None::<DateTime<Utc>>),
                    t::publish_lock_until.eq(None::<DateTime<Utc>>),
                    t::updated_at.eq(now),
                ))
                .returning((t::id, t::attempts))
                .get_results::<(TaskId, i32)>(conn)?;
                let failed = diesel::update(t::tasks.filter(expired))
                    .set((
                        t::status.eq(TaskStatus::Failed.as_str()),
                        t::error.eq(LOST),
                        t::worker.eq(None::<String>),
                        t::lease_expires_at.eq(None::<DateTime<Utc>>),
                        t::finished_at.eq(now),
                        t::updated_at.eq(now),
                    ))
                    .returning((t::id, t::attempts))
                    .get_results::<(TaskId, i32)>(conn)?;
                for (id, attempt) in retried.iter().chain(&failed) {
                    diesel::update(
                        a::task_attempts
                            .filter(a::task_id.eq(id))
                            .filter(a::attempt.eq(attempt))
                            .filter(a::finished_at.is_null()),
                    )
                    .set((a::finished_at.eq(now), a::error.eq(LOST)))
                    .execute(conn)?;
                }
                Ok(retried.len() + failed.len())
            })
        })
    }

    /// Claims a task for `worker`: pending or due-retrying → running, one more
    /// attempt, leased until `lease_until`. `None` if it is not claimable
    /// (running elsewhere, finished, cancelled, not due, or unknown).
    pub fn claim(
        &self,
        id: TaskId,
        worker: &str,
        lease_until: DateTime<Utc>,
    ) -> DbResult<Option<Claimed>> {
        Ok(self.claim_many(&[id], worker, lease_until)?.remove(0))
    }

    /// [`Db::claim`] for several tasks in one transaction (group commit);
    /// one answer per id, in order.
    pub fn claim_many(
        &self,
        ids: &[TaskId],
        worker: &str,
        lease_until: DateTime<Utc>,
    ) -> DbResult<Vec<Option<Claimed>>> {
        let now = Utc::now();
        with_conn!(self, |conn, s| {
            use s::task_attempts::dsl as a;
            use s::tasks::dsl as t;
            conn.transaction(|conn| {
                // One statement claims the batch; PostgreSQL locks the rows
                // in index order, so concurrent batches cannot deadlock.
                let claimed = diesel::update(
                    t::tasks
                        .filter(t::id.eq_any(ids))
                        .filter(t::status.eq_any(CLAIMABLE))
                        .filter(t::run_after.is_null().or(t::run_after.le(now))),
                )
                .set((
                    t::status.eq(TaskStatus::Running.as_str()),
                    t::attempts.eq(t::attempts + 1),
                    t::worker.eq(worker),
                    t::lease_expires_at.eq(lease_until),
                    t::updated_at.eq(now),
                ))
                .returning((
                    t::id,
                    t::attempts,
                    t::max_attempts,
                    t::event_type,
                    t::event,
                    t::started_at,
                ))
                .get_results::<(TaskId, i32, i32, String, Value, Option<DateTime<Utc>>)>(conn)?;
                if claimed.is_empty() {
                    return Ok(vec![None; ids.len()]);
                }
                let first_attempts: Vec<TaskId> = claimed
                    .iter()
                    .filter(|c| c.5.is_none())
                    .map(|c| c.0)
                    .collect();
                if !first_attempts.is_empty() {
                    diesel::update(t::tasks.filter(t::id.eq_any(&first_attempts)))
                        .set(t::started_at.eq(now))
                        .execute(conn)?;
                }
                let attempt_rows: Vec<_> = claimed
                    .iter()
                    .map(|(id, attempt, ..)| {
                        (
                            a::task_id.eq(*id),
                            a::attempt.eq(*attempt),
                            a::worker.eq(worker),
                            a::started_at.eq(now),
                        )
                    })
                    .collect();
                diesel::insert_into(a::task_attempts)
                    .values(attempt_rows)
                    .execute(conn)?;
                // A task delivered twice in one batch is claimed once: the
                // first of its callers gets it.
                let mut by_id: std::collections::HashMap<TaskId, Claimed> = claimed
                    .into_iter()
                    .map(|(id, attempt, max_attempts, event_type, event, _)| {
                        let claim = Claimed {
                            attempt,
                            max_attempts,
                            event_type,
                            event,
                        };
                        (id, claim)
                    })
                    .collect();
                Ok(ids.iter().map(|id| by_id.remove(id)).collect())
            })
        })
    }

    /// Extends the lease of a running attempt. False if the attempt no
    /// longer holds the task (its lease expired and it was taken back).
    pub fn renew_lease(
        &self,
        id: TaskId,
        attempt: i32,
        lease_until: DateTime<Utc>,
    ) -> DbResult<bool> {
        with_conn!(self, |conn, s| {
            use s::tasks::dsl as t;
            let renewed = diesel::update(
                t::tasks
                    .filter(t::id.eq(id))
                    .filter(t::status.eq(TaskStatus::Running.as_str()))
                    .filter(t::attempts.eq(attempt)),
            )
            .set(t::lease_expires_at.eq(lease_until))
            .execute(conn)?;
            Ok(renewed == 1)
        })
    }

    /// Records how an attempt ended. False if the attempt no longer holds
    /// the task, in which case nothing is written.
    pub fn finish(&self, id: TaskId, attempt: i32, outcome: &Outcome) -> DbResult<bool> {
        Ok(self.finish_many(&[(id, attempt, outcome.clone())])?[0])
    }

    /// [`Db::finish`] for several attempts in one transaction (group
    /// commit); one answer per attempt, in order.
    pub fn finish_many(&self, attempts: &[(TaskId, i32, Outcome)]) -> DbResult<Vec<bool>> {
        let now = Utc::now();
        let none_time = None::<DateTime<Utc>>;
        with_conn!(self, |conn, s| {
            use s::task_attempts::dsl as a;
            use s::tasks::dsl as t;
            conn.transaction(|conn| {
                let mut answers = vec![false; attempts.len()];
                let mut succeeded = Vec::new();
                // Successes in one statement where the backend can; the
                // other outcomes, and every outcome on SQLite (where a
                // statement costs no round trip), one row at a time.
                let set_based = conn.record_successes(attempts, now)?;
                for i in order_by_id(attempts.iter().map(|(id, _, _)| *id)) {
                    let (id, attempt, outcome) = &attempts[i];
                    if let (Some(recorded), Outcome::Succeeded(_)) = (&set_based, outcome) {
                        if recorded.contains(&(*id, *attempt)) {
                            answers[i] = true;
                            succeeded.push(*id);
                        }
                        continue;
                    }
                    let (status, result, error, finished_at, run_after) = match outcome {
                        Outcome::Succeeded(value) => {
                            (TaskStatus::Succeeded, Some(value), None, Some(now), None)
                        }
                        Outcome::Retry { error, run_after } => (
                            TaskStatus::Retrying,
                            None,
                            Some(error.as_str()),
                            None,
                            Some(*run_after),
                        ),
                        Outcome::Failed(error) => (
                            TaskStatus::Failed,
                            None,
                            Some(error.as_str()),
                            Some(now),
                            None,
                        ),
                        Outcome::Unstorable { error, output } => (
                            TaskStatus::Failed,
                            Some(output),
                            Some(error.as_str()),
                            Some(now),
                            None,
                        ),
                        Outcome::HandedBack(error) => (
                            TaskStatus::Retrying,
                            None,
                            Some(error.as_str()),
                            None,
                            Some(now),
                        ),
                    };
                    let uncounted = i32::from(matches!(outcome, Outcome::HandedBack(_)));
                    let updated = diesel::update(
                        t::tasks
                            .filter(t::id.eq(id))
                            .filter(t::status.eq(TaskStatus::Running.as_str()))
                            .filter(t::attempts.eq(attempt)),
                    )
                    .set((
                        t::status.eq(status.as_str()),
                        t::result.eq(result),
                        t::error.eq(error),
                        t::finished_at.eq(finished_at),
                        t::run_after.eq(run_after),
                        t::max_attempts.eq(t::max_attempts + uncounted),
                        t::worker.eq(None::<String>),
                        t::lease_expires_at.eq(none_time),
                        // A retry goes back through the relay when it is due.
                        t::enqueued_at.eq(none_time),
                        t::publish_lock_until.eq(none_time),
                        t::updated_at.eq(now),
                    ))
                    .execute(conn)?;
                    if updated == 0 {
                        continue;
                    }
                    answers[i] = true;
                    if error.is_none() {
                        succeeded.push(*id);
                        continue;
                    }
                    diesel::update(
                        a::task_attempts
                            .filter(a::task_id.eq(id))
                            .filter(a::attempt.eq(attempt)),
                    )
                    .set((a::finished_at.eq(now), a::error.eq(error)))
                    .execute(conn)?;
                }
                // A task's only unfinished attempt row is the one that just
                // ended (a lost attempt's row is closed when it is taken back).
                if !succeeded.is_empty() {
                    diesel::update(
                        a::task_attempts
                            .filter(a::task_id.eq_any(&succeeded))
                            .filter(a::finished_at.is_null()),
                    )
                    .set(a::finished_at.eq(now))
                    .execute(conn)?;
                }
                Ok(answers)
            })
        })
    }

    /// How many tasks are in `status` (for benchmarks and monitoring).
    pub fn count_with_status(&self, status: TaskStatus) -> DbResult<i64> {
        with_conn!(self, |conn, s| {
            use s::tasks::dsl as t;
            Ok(t::tasks
                .filter(t::status.eq(status.as_str()))
                .count()
                .get_result(conn)?)
        })
    }

    /// A task's status, or `None` if there is no such task.
    pub fn status(&self, id: TaskId) -> DbResult<Option<TaskStatus>> {
        with_conn!(self, |conn, s| {
            use s::tasks::dsl as t;
            t::tasks
                .select(t::status)
                .filter(t::id.eq(id))
                .first::<String>(conn)
                .optional()?
                .map(|s| parse_status(&s))
                .transpose()
        })
    }

    /// Everything `GET /status` shows, or `None` if there is no such task.
    pub fn task_view(&self, id: TaskId) -> DbResult<Option<TaskView>> {
        Ok(self.task_views(&[id])?.pop().flatten())
    }

    /// [`Db::task_view`] of several tasks in one query (the tasks joined to
    /// their attempts, a row per attempt), answered in the order asked.
    pub fn task_views(&self, ids: &[TaskId]) -> DbResult<Vec<Option<TaskView>>> {
        type AttemptRow = (
            i32,
            String,
            DateTime<Utc>,
            Option<DateTime<Utc>>,
            Option<String>,
        );
        let rows = with_conn!(self, |conn, s| {
            use s::task_attempts::dsl as a;
            use s::tasks::dsl as t;
            // The ids are repeated in the join so the attempts are found by
            // their index even before PostgreSQL has statistics for the table
            // (without them it scans all attempts for a hash join).
            t::tasks
                .left_join(a::task_attempts.on(a::task_id.eq(t::id).and(a::task_id.eq_any(ids))))
                .select((
                    (
                        t::id,
                        t::status,
                        t::event_type,
                        t::source,
                        t::event_id,
                        t::attempts,
                        t::max_attempts,
                        t::created_at,
                        t::started_at,
                        t::finished_at,
                        t::result,
                        t::error,
                    ),
                    (
                        a::attempt,
                        a::worker,
                        a::started_at,
                        a::finished_at,
                        a::error,
                    )
                        .nullable(),
                ))
                .filter(t::id.eq_any(ids))
                .order((t::id, a::attempt))
                .load::<(TaskRow, Option<AttemptRow>)>(conn)?
        });
        let mut views: HashMap<TaskId, TaskView> = HashMap::with_capacity(ids.len());
        for (row, attempt) in rows {
            let view = match views.entry(row.id) {
                Entry::Occupied(view) => view.into_mut(),
                Entry::Vacant(slot) => slot.insert(TaskView {
                    id: row.id,
                    status: parse_status(&row.status)?,
                    event_type: row.event_type,
                    source: row.source,
                    event_id: row.event_id,
                    attempts: row.attempts,
                    max_attempts: row.max_attempts,
                    created_at: row.created_at,
                    started_at: row.started_at,
                    finished_at: row.finished_at,
                    result: row.result,
                    error: row.error,
                    attempt_history: Vec::new(),
                }),
            };
            if let Some((attempt, worker, started_at, finished_at, error)) = attempt {
                view.attempt_history.push(AttemptView {
                    attempt,
                    worker,
                    started_at,
                    finished_at,
                    error,
                });
            }
        }
        // An id asked twice gets its view twice: moved out at its last ask.
        let last: HashMap<TaskId, usize> = ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
        Ok(ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                if last[id] == i {
                    views.remove(id)
                } else {
                    views.get(id).cloned()
                }
            })
            .collect())
    }
}
