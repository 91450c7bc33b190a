//! What only one backend can say: every raw SQL statement and every
//! backend-specific clause (`FOR UPDATE SKIP LOCKED`, `unnest`) is here,
//! as a trait implemented for each connection type.
//!
//! The query files (`submit.rs`, `outbox.rs`, `attempts.rs`, `status.rs`)
//! use only diesel's shared form and call these methods where the backends
//! must differ: PostgreSQL has concurrent writers, so it skips rows another
//! transaction holds; SQLite has one writer at a time, so it re-checks
//! conditions in the update. Both record a batch of successes in one
//! statement, each in its own SQL (`unnest` of arrays; on SQLite a JSON
//! array read by `json_each`, kept prepared: `kept.rs`).

use std::collections::HashSet;
use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use serde_json::Value;

use diesel::expression::SqlLiteral;
use diesel::pg::Pg;
use diesel::query_builder::{BoxedSqlQuery, SqlQuery};
use diesel::sql_types::Bool;
use diesel::sqlite::Sqlite;

use super::attempts::order_by_id;
use super::kept::Kept;
use super::outbox::LostWindow;
use super::{schema_pg, schema_sqlite};
use crate::task::{AttemptRef, NewTask, Outcome, TaskId, TaskStatus};

/// How a backend's queries name `status` in a status list that must match
/// a partial index's predicate (`tasks_owed`, `tasks_confirmed`,
/// `tasks_running_lease`, `tasks_finished`).
pub(super) trait StatusText {
    /// `status` as the partial indexes' predicates spell it. On SQLite
    /// `+status`: the unary plus keeps SQLite's planner, which has no
    /// statistics, from taking `status IN (...)` for an equality on
    /// `tasks_by_status` (it then read every pending task and sorted them),
    /// and SQLite's indexes spell their predicates the same way, which is
    /// what lets it see that the query implies them.
    const STATUS: &'static str;
    /// `status` in a statement that finds its rows by id and only checks
    /// their status: spelled so that no index on `status` can serve it, and
    /// the planner takes the ids from the primary key. On PostgreSQL
    /// `(status || '')`: with a bare `status`, whenever the statistics say
    /// a status is rare (`running` always is; `pending` after a quiet
    /// hour), the planner reads that status from `tasks_by_status` or a
    /// partial index instead, and those hold an entry for every task that
    /// passed through it since the last vacuum. Over 20 000 tasks in
    /// batches of ten (BENCHMARKS.md), PostgreSQL spent 5.6 s of CPU on
    /// the outcomes, each batch reading every running entry, against 1.6 s
    /// by id; and 11.0 s on the claims once its statistics said `pending`
    /// was rare, against 1.5 s. On SQLite `+status`, as above.
    const STATUS_BY_ID: &'static str;
    /// The first and second parameters of a raw statement.
    const PARAMS: [&'static str; 2];
}

impl StatusText for PgConnection {
    const STATUS: &'static str = "status";
    const STATUS_BY_ID: &'static str = "(status || '')";
    const PARAMS: [&'static str; 2] = ["$1", "$2"];
}

impl StatusText for SqliteConnection {
    const STATUS: &'static str = "+status";
    const STATUS_BY_ID: &'static str = "+status";
    const PARAMS: [&'static str; 2] = ["?", "?"];
}

/// How a backend reads a batch of tasks by id ([`super::Db::task_views`]).
pub(super) trait BatchRead {
    /// Whether each id is read with its own statement. SQLite: yes, one
    /// statement whose text is the same each time, so that diesel keeps it
    /// prepared; an `IN` list has a placeholder per id, so its text changes
    /// with the batch's size and diesel prepares it anew every time (that
    /// was 43% of the instructions of a `/status` answered alone,
    /// callgrind). PostgreSQL: no, it binds the ids as one array
    /// (`= ANY($1)`), one statement kept prepared whatever the batch.
    const ONE_ID_AT_A_TIME: bool;
}

impl BatchRead for PgConnection {
    const ONE_ID_AT_A_TIME: bool = false;
}

impl BatchRead for SqliteConnection {
    const ONE_ID_AT_A_TIME: bool = true;
}

/// [`BatchRead::ONE_ID_AT_A_TIME`] of `conn`'s backend.
pub(super) fn one_id_at_a_time<C: BatchRead>(_conn: &C) -> bool {
    C::ONE_ID_AT_A_TIME
}

/// `status IN ('pending', 'retrying')` (or `status = 'running'` for one
/// status) as SQL text, not bound parameters: a partial index is used only
/// when the planner can see that the query implies its predicate, which it
/// cannot through parameters (SQLite never, PostgreSQL not in a generic
/// plan). `conn` only chooses the backend's spelling ([`StatusText`]).
pub(super) fn status_in<C: StatusText>(_conn: &C, statuses: &[TaskStatus]) -> SqlLiteral<Bool> {
    diesel::dsl::sql(&spell_status_in(C::STATUS, statuses))
}

/// [`status_in`] for a statement that takes its rows by id
/// ([`StatusText::STATUS_BY_ID`]): it never reads an index on `status`.
pub(super) fn status_by_id<C: StatusText>(_conn: &C, statuses: &[TaskStatus]) -> SqlLiteral<Bool> {
    diesel::dsl::sql(&spell_status_in(C::STATUS_BY_ID, statuses))
}

/// `column = 'a'` or `column IN ('a', 'b')`.
fn spell_status_in(column: &str, statuses: &[TaskStatus]) -> String {
    let list: Vec<String> = statuses
        .iter()
        .map(|s| format!("'{}'", s.as_str()))
        .collect();
    match list.as_slice() {
        [one] => format!("{column} = {one}"),
        _ => format!("{column} IN ({})", list.join(", ")),
    }
}

/// When an owed task is due: its `run_after`, or its creation when it has
/// none. The relay reads owed tasks in this order from the index
/// `tasks_owed` (on this very expression), so a claim is a range read that
/// stops at now: tasks delayed into the future are never read, and the
/// oldest due come first. (A task written by a host whose clock is ahead
/// waits for this host's clock to reach its `created_at`.)
macro_rules! due {
    ($t:ident) => {
        diesel::dsl::sql::<<$t::created_at as diesel::Expression>::SqlType>(
            "coalesce(run_after, created_at)",
        )
    };
}

/// The relay's conditions for a task it owes the broker, on either schema:
/// claimable, due, not confirmed and not being published by anyone.
/// `$claimable` is [`status_in`] of the claimable statuses.
macro_rules! owed {
    ($t:ident, $claimable:expr, $now:expr) => {
        $t::enqueued_at
            .is_null()
            .and($claimable)
            .and(due!($t).le($now))
            .and(
                $t::publish_lock_until
                    .is_null()
                    .or($t::publish_lock_until.lt($now)),
            )
    };
}

/// Up to `$limit` owed tasks, oldest due first: a range read of
/// `tasks_owed` (the claim's select, before its row locking).
macro_rules! owed_ids {
    ($t:ident, $claimable:expr, $now:expr, $limit:expr) => {
        $t::tasks
            .select($t::id)
            .filter(owed!($t, $claimable, $now))
            .order(due!($t))
            .limit($limit)
    };
}

/// A task whose message may be lost: claimable and due, its message
/// confirmed before the window's `stale_before`.
macro_rules! stale {
    ($t:ident, $claimable:expr, $w:expr) => {
        $t::enqueued_at
            .lt($w.stale_before)
            .and($claimable)
            .and($t::run_after.is_null().or($t::run_after.le($w.now)))
    };
}

/// Up to `$n` stale tasks, oldest confirm first: a range read of
/// `tasks_confirmed`.
macro_rules! stale_ids {
    ($t:ident, $claimable:expr, $w:expr, $n:expr) => {
        $t::tasks
            .select($t::id)
            .filter(stale!($t, $claimable, $w))
            .order($t::enqueued_at)
            .limit($n)
    };
}

/// M of [`super::LostBound`]: the claimable tasks confirmed at or before
/// the first parameter, counted up to the second (an index range read of
/// `tasks_confirmed`, whose predicate the literal status list matches);
/// `$1`, `$2` on PostgreSQL, `?` on SQLite.
pub(super) fn count_confirmed<C: StatusText>(_conn: &C) -> String {
    let [first, second] = C::PARAMS;
    format!(
        "SELECT count(*) AS n FROM (SELECT 1 FROM tasks \
         WHERE enqueued_at <= {first} AND {} IN ('pending', 'retrying') LIMIT {second}) AS confirmed",
        C::STATUS
    )
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

/// The rows of `ids` still waiting for their message (claimable,
/// `$claimable` being [`status_by_id`] of [`TaskStatus::CLAIMABLE`]) and
/// locked for publishing, and the marks that record the broker's confirm
/// on them, on either schema. A task a worker has claimed since is not
/// written: the relay never publishes a running or final task, and one
/// that goes back to `retrying` is owed again anyway (`owed_again!`), so
/// a confirm that arrives after the claim costs no write of the row.
macro_rules! publishing {
    ($t:ident, $ids:expr, $claimable:expr) => {
        $t::tasks
            .filter($t::id.eq_any($ids))
            .filter($claimable)
            .filter($t::enqueued_at.is_null())
            .filter($t::publish_lock_until.is_not_null())
    };
}
macro_rules! confirmed {
    ($t:ident, $now:expr) => {
        (
            $t::enqueued_at.eq($now),
            $t::publish_lock_until.eq(None::<DateTime<Utc>>),
        )
    };
}

/// Statements whose row locking differs by backend.
pub(super) trait RowLocking {
    /// Marks those of `ids` still locked for publishing as enqueued at
    /// `now` (see [`super::Db::mark_enqueued`]).
    fn mark_enqueued(&mut self, ids: &[TaskId], now: DateTime<Utc>) -> QueryResult<usize>;

    /// Locks up to `limit` owed tasks for publishing until `until`, oldest
    /// first; the tasks locked (see [`super::Db::claim_unpublished`]).
    fn claim_unpublished(
        &mut self,
        limit: i64,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> QueryResult<Vec<TaskId>>;

    /// Counts M and takes the tasks [`super::LostBound`] allows as owed,
    /// locked for publishing (see [`super::Db::claim_lost`]).
    fn claim_lost(&mut self, window: LostWindow) -> QueryResult<Vec<TaskId>>;
}

/// PostgreSQL's [`RowLocking::mark_enqueued`]: `$1` the ids, `$2` now.
/// The status is spelled [`StatusText::STATUS_BY_ID`].
const PG_MARK_ENQUEUED: &str = "UPDATE tasks SET enqueued_at = $2, publish_lock_until = NULL \
     WHERE id IN ( \
       SELECT id FROM tasks \
       WHERE id = ANY($1) AND (status || '') IN ('pending', 'retrying') \
         AND enqueued_at IS NULL AND publish_lock_until IS NOT NULL \
       ORDER BY id FOR UPDATE SKIP LOCKED \
     )";

impl RowLocking for PgConnection {
    fn mark_enqueued(&mut self, ids: &[TaskId], now: DateTime<Utc>) -> QueryResult<usize> {
        // Rows a worker holds right now are skipped rather than waited for:
        // waiting deadlocked against outcome batches that lock in another
        // order. One statement (`publishing!` and `confirmed!` in SQL), so
        // no transaction around it: the subquery locks the free rows in id
        // order, the update marks them.
        pg_mark_enqueued_query(ids, now).execute(self)
    }

    fn claim_unpublished(
        &mut self,
        limit: i64,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> QueryResult<Vec<TaskId>> {
        use schema_pg::tasks::dsl as t;
        // Relays in several processes skip the rows another one is taking
        // instead of waiting for them.
        self.transaction(|conn| {
            let claimable = status_in(conn, &TaskStatus::CLAIMABLE);
            let candidates = owed_ids!(t, claimable, now, limit)
                .for_update()
                .skip_locked()
                .load::<TaskId>(conn)?;
            diesel::update(t::tasks.filter(t::id.eq_any(&candidates)))
                .set(t::publish_lock_until.eq(until))
                .execute(conn)?;
            Ok(candidates)
        })
    }

    fn claim_lost(&mut self, w: LostWindow) -> QueryResult<Vec<TaskId>> {
        use diesel::sql_types::{BigInt, Bool, Timestamptz};
        use schema_pg::tasks::dsl as t;

        #[derive(QueryableByName)]
        struct Locked {
            #[diesel(sql_type = Bool)]
            locked: bool,
        }

        let Some(limit) = w.bound.count_limit() else {
            return Ok(Vec::new());
        };
        self.transaction(|conn| {
            // One relay decides at a time; the others skip the round rather
            // than wait, and the next one counts what this one took back.
            // Keyed by schema: deployments sharing a database in schemas
            // of their own do not exclude each other.
            let locked = diesel::sql_query(
                "SELECT pg_try_advisory_xact_lock(460070, hashtext(current_schema())) AS locked",
            )
            .get_result::<Locked>(conn)?
            .locked;
            if !locked {
                return Ok(Vec::new());
            }
            let believed = diesel::sql_query(count_confirmed(conn))
                .bind::<Timestamptz, _>(w.measured_at)
                .bind::<BigInt, _>(i64::try_from(limit).unwrap_or(i64::MAX))
                .get_result::<Count>(conn)?
                .n;
            let n = w.bound.republish(u64::try_from(believed).unwrap_or(0));
            if n == 0 {
                return Ok(Vec::new());
            }
            // Rows a worker is claiming right now are skipped: a claimed
            // task's message was not lost.
            let claimable = status_in(conn, &TaskStatus::CLAIMABLE);
            let lost = stale_ids!(t, claimable, w, i64::try_from(n).unwrap_or(i64::MAX))
                .for_update()
                .skip_locked()
                .load::<TaskId>(conn)?;
            diesel::update(t::tasks.filter(t::id.eq_any(&lost)))
                .set((
                    t::enqueued_at.eq(None::<DateTime<Utc>>),
                    t::publish_lock_until.eq(w.until),
                ))
                .execute(conn)?;
            Ok(lost)
        })
    }
}

impl RowLocking for SqliteConnection {
    fn mark_enqueued(&mut self, ids: &[TaskId], now: DateTime<Utc>) -> QueryResult<usize> {
        use schema_sqlite::tasks::dsl as t;
        let claimable = status_by_id(self, &TaskStatus::CLAIMABLE);
        diesel::update(publishing!(t, ids, claimable))
            .set(confirmed!(t, now))
            .execute(self)
    }

    fn claim_unpublished(
        &mut self,
        limit: i64,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> QueryResult<Vec<TaskId>> {
        use schema_sqlite::tasks::dsl as t;
        // SQLite has one writer at a time: the UPDATE re-checks the
        // conditions, so rows another process took meanwhile drop out.
        let claimable = status_in(self, &TaskStatus::CLAIMABLE);
        let candidates = owed_ids!(t, claimable.clone(), now, limit).load::<TaskId>(self)?;
        if candidates.is_empty() {
            return Ok(candidates);
        }
        diesel::update(
            t::tasks
                .filter(t::id.eq_any(&candidates))
                .filter(owed!(t, claimable, now)),
        )
        .set(t::publish_lock_until.eq(until))
        .returning(t::id)
        .get_results::<TaskId>(self)
    }

    fn claim_lost(&mut self, w: LostWindow) -> QueryResult<Vec<TaskId>> {
        use diesel::sql_types::{BigInt, TimestamptzSqlite};
        use schema_sqlite::tasks::dsl as t;
        let Some(limit) = w.bound.count_limit() else {
            return Ok(Vec::new());
        };
        // The write lock from the start (BEGIN IMMEDIATE): relays of other
        // processes count only after this one's take is committed.
        self.immediate_transaction(|conn| {
            let believed = diesel::sql_query(count_confirmed(conn))
                .bind::<TimestamptzSqlite, _>(w.measured_at)
                .bind::<BigInt, _>(i64::try_from(limit).unwrap_or(i64::MAX))
                .get_result::<Count>(conn)?
                .n;
            let n = w.bound.republish(u64::try_from(believed).unwrap_or(0));
            if n == 0 {
                return Ok(Vec::new());
            }
            let claimable = status_in(conn, &TaskStatus::CLAIMABLE);
            let lost = stale_ids!(t, claimable, w, i64::try_from(n).unwrap_or(i64::MAX))
                .load::<TaskId>(conn)?;
            diesel::update(t::tasks.filter(t::id.eq_any(&lost)))
                .set((
                    t::enqueued_at.eq(None::<DateTime<Utc>>),
                    t::publish_lock_until.eq(w.until),
                ))
                .execute(conn)?;
            Ok(lost)
        })
    }
}

/// Statements written set-based for each backend in its own SQL.
pub(super) trait SetBased {
    /// Records every `Outcome::Succeeded` of `attempts` whose attempt still
    /// holds its task, in one statement; the attempts recorded.
    fn record_successes(
        &mut self,
        attempts: &[(AttemptRef, Outcome)],
        now: DateTime<Utc>,
    ) -> QueryResult<HashSet<AttemptRef>>;
}

/// The successes of `attempts`, in id order (so that concurrent batches
/// lock rows in one order).
fn successes(attempts: &[(AttemptRef, Outcome)]) -> Vec<(AttemptRef, &Value)> {
    order_by_id(attempts.iter().map(|(attempt, _)| attempt.task))
        .into_iter()
        .filter_map(|i| match &attempts[i] {
            (attempt, Outcome::Succeeded(result)) => Some((*attempt, result)),
            _ => None,
        })
        .collect()
}

impl SetBased for SqliteConnection {
    fn record_successes(
        &mut self,
        attempts: &[(AttemptRef, Outcome)],
        now: DateTime<Utc>,
    ) -> QueryResult<HashSet<AttemptRef>> {
        use diesel::sql_types::{Integer, Text};

        #[derive(QueryableByName)]
        struct Recorded {
            #[diesel(sql_type = Text)]
            id: TaskId,
            #[diesel(sql_type = Integer)]
            attempts: i32,
        }

        let successes = successes(attempts);
        if successes.is_empty() {
            return Ok(HashSet::new());
        }
        Ok(sqlite_successes_query(&successes, now)
            .load::<Recorded>(self)?
            .into_iter()
            .map(|r| r.id.attempt(r.attempts))
            .collect())
    }
}

/// A JSON array of a batch's rows, each an array of its values: the one
/// parameter through which SQLite's statements take a whole batch
/// (`json_each`), so that their text is the same whatever the batch's size
/// and stays prepared ([`Kept`]). A statement with a parameter per value
/// (a `VALUES` or `IN` list as long as the batch) was parsed and compiled
/// again, `task_events` trigger and all, for every batch: a fifth of a
/// worker's CPU. (A kept statement per row, in the batch's transaction,
/// cost more still: SQLite journals the pages each statement changes, so
/// that the statement alone can be undone.)
pub(super) fn json_rows<T: serde::Serialize>(rows: &[T]) -> String {
    serde_json::to_string(rows).expect("ids, numbers and strings serialize")
}

/// SQLite's statement for a batch of successes, its parameters bound: the
/// same transition as PostgreSQL's ([`PG_SUCCESSES`]). Each row of `?2`
/// ([`json_rows`]) is the id, the attempt and the result's JSON text. The
/// status is spelled [`StatusText::STATUS_BY_ID`], and the statuses are
/// literals, not parameters: SQLite compares a parameter's value with the
/// partial indexes' predicates, and then compiles the statement again
/// whenever that parameter is bound anew (18% of a batch's CPU).
pub(super) fn sqlite_successes_query(
    successes: &[(AttemptRef, &Value)],
    now: DateTime<Utc>,
) -> Kept<'static, Sqlite> {
    use diesel::sql_types::{Text, TimestamptzSqlite};
    let rows: Vec<(TaskId, i32, String)> = successes
        .iter()
        .map(|(a, result)| (a.task, a.attempt, result.to_string()))
        .collect();
    Kept::new(
        "UPDATE tasks SET status = 'succeeded', result = v.value ->> 2, error = NULL, \
           finished_at = ?1, run_after = NULL, worker = NULL, lease_expires_at = NULL, \
           enqueued_at = NULL, publish_lock_until = NULL, updated_at = ?1 \
         FROM json_each(?2) AS v \
         WHERE tasks.id = v.value ->> 0 AND +tasks.status = 'running' \
           AND tasks.attempts = v.value ->> 1 \
         RETURNING id, attempts",
    )
    .bind::<TimestamptzSqlite, _>(now)
    .bind::<Text, _>(json_rows(&rows))
}

/// SQLite's text of a timestamp, as diesel writes a `TimestamptzSqlite`
/// (`%F %T%.f%:z` in UTC), for a timestamp inside [`json_rows`]: the
/// queries compare these as text.
pub(super) fn sqlite_stamp(at: DateTime<Utc>) -> String {
    at.format("%F %T%.f%:z").to_string()
}

/// SQLite's insert of a chunk of new tasks, its parameters bound: the rows
/// of `submit.rs`'s new tasks, from one parameter
/// ([`json_rows`]): each row the id, type, source, event id, the event's
/// JSON text, digest, max attempts, idempotency key, `run_after` and
/// whether the task is due. A due task gets the publish lock `?2` or the
/// enqueued mark `?3`. The ids of the tasks created.
pub(super) fn sqlite_insert_query<'a>(
    tasks: &[&NewTask],
    lock: Option<DateTime<Utc>>,
    enqueued: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    due: &dyn Fn(&NewTask) -> bool,
) -> Kept<'a, Sqlite> {
    use diesel::sql_types::{Nullable, Text, TimestamptzSqlite};
    type Row<'t> = (
        TaskId,
        &'t str,
        &'t str,
        &'t str,
        String,
        &'t str,
        i32,
        Option<&'t str>,
        Option<String>,
        bool,
    );
    let rows: Vec<Row<'_>> = tasks
        .iter()
        .map(|task| {
            (
                task.id,
                task.event_type.as_str(),
                task.source.as_str(),
                task.event_id.as_str(),
                task.event.to_string(),
                task.digest.as_str(),
                task.max_attempts,
                task.idempotency_key.as_deref(),
                task.run_after.map(sqlite_stamp),
                due(task),
            )
        })
        .collect();
    // `WHERE true`: SQLite's parser would otherwise read `ON CONFLICT` as
    // the select's join constraint.
    Kept::new(
        "INSERT INTO tasks (id, event_type, source, event_id, event, event_digest, status, \
           max_attempts, idempotency_key, run_after, publish_lock_until, enqueued_at, \
           created_at, updated_at) \
         SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 5, \
           ?1, value ->> 6, value ->> 7, value ->> 8, \
           CASE WHEN value ->> 9 THEN ?2 END, CASE WHEN value ->> 9 THEN ?3 END, ?4, ?4 \
         FROM json_each(?5) WHERE true \
         ON CONFLICT DO NOTHING RETURNING id",
    )
    .bind::<Text, _>(TaskStatus::Pending)
    .bind::<Nullable<TimestamptzSqlite>, _>(lock)
    .bind::<Nullable<TimestamptzSqlite>, _>(enqueued)
    .bind::<TimestamptzSqlite, _>(now)
    .bind::<Text, _>(json_rows(&rows))
}

/// PostgreSQL's insert of a chunk of new tasks, its parameters bound: the
/// same rows as [`sqlite_insert_query`]'s, each column one array parameter
/// (`unnest`), so that the text is the same for any chunk and the
/// statement stays prepared ([`Kept`]). It reads no table, so the plan
/// PostgreSQL may keep for all parameters is the one it would make for
/// any (unlike the statements that find tasks by id: `kept.rs`). The ids
/// of the tasks created.
pub(super) fn pg_insert_query<'a>(
    tasks: &[&'a NewTask],
    lock: Option<DateTime<Utc>>,
    enqueued: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    due: &dyn Fn(&NewTask) -> bool,
) -> Kept<'a, Pg> {
    use diesel::sql_types::{Array, Bool, Integer, Jsonb, Nullable, Text, Timestamptz, Uuid};
    let column = |f: &dyn Fn(&'a NewTask) -> &'a str| -> Vec<&'a str> {
        tasks.iter().map(|t| f(t)).collect()
    };
    Kept::new(
        "INSERT INTO tasks (id, event_type, source, event_id, event, event_digest, status, \
           max_attempts, idempotency_key, run_after, publish_lock_until, enqueued_at, \
           created_at, updated_at) \
         SELECT v.id, v.event_type, v.source, v.event_id, v.event, v.digest, $1, \
           v.max_attempts, v.key, v.run_after, \
           CASE WHEN v.due THEN $2::timestamptz END, CASE WHEN v.due THEN $3::timestamptz END, \
           $4, $4 \
         FROM unnest($5::uuid[], $6::text[], $7::text[], $8::text[], $9::jsonb[], $10::text[], \
           $11::int4[], $12::text[], $13::timestamptz[], $14::bool[]) \
           AS v(id, event_type, source, event_id, event, digest, max_attempts, key, run_after, due) \
         ON CONFLICT DO NOTHING RETURNING id",
    )
    .bind::<Text, _>(TaskStatus::Pending)
    .bind::<Nullable<Timestamptz>, _>(lock)
    .bind::<Nullable<Timestamptz>, _>(enqueued)
    .bind::<Timestamptz, _>(now)
    .bind::<Array<Uuid>, _>(tasks.iter().map(|t| t.id).collect::<Vec<TaskId>>())
    .bind::<Array<Text>, _>(column(&|t| &t.event_type))
    .bind::<Array<Text>, _>(column(&|t| &t.source))
    .bind::<Array<Text>, _>(column(&|t| &t.event_id))
    .bind::<Array<Jsonb>, _>(tasks.iter().map(|t| &t.event).collect::<Vec<&Value>>())
    .bind::<Array<Text>, _>(column(&|t| &t.digest))
    .bind::<Array<Integer>, _>(tasks.iter().map(|t| t.max_attempts).collect::<Vec<i32>>())
    .bind::<Array<Nullable<Text>>, _>(
        tasks
            .iter()
            .map(|t| t.idempotency_key.as_deref())
            .collect::<Vec<Option<&str>>>(),
    )
    .bind::<Array<Nullable<Timestamptz>>, _>(
        tasks
            .iter()
            .map(|t| t.run_after)
            .collect::<Vec<Option<DateTime<Utc>>>>(),
    )
    .bind::<Array<Bool>, _>(tasks.iter().map(|t| due(t)).collect::<Vec<bool>>())
}

/// SQLite's claim ([`OneStatement::claim_at_once`]), its parameters bound:
/// the same transition as PostgreSQL's ([`pg_claim_query`]); `?5` the ids
/// ([`json_rows`]). The status is spelled [`StatusText::STATUS_BY_ID`].
pub(super) fn sqlite_claim_query<'a>(
    ids: &[TaskId],
    worker: &'a str,
    lease_until: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Kept<'a, Sqlite> {
    use diesel::sql_types::{Text, TimestamptzSqlite};
    let [pending, retrying] = TaskStatus::CLAIMABLE;
    Kept::new(
        "UPDATE tasks SET status = ?1, attempts = attempts + 1, worker = ?2, \
           lease_expires_at = ?3, updated_at = ?4, started_at = coalesce(started_at, ?4) \
         WHERE id IN (SELECT value FROM json_each(?5)) AND +status IN (?6, ?7) \
           AND (run_after IS NULL OR run_after <= ?4) \
         RETURNING id, attempts, max_attempts, event_type, event",
    )
    .bind::<Text, _>(TaskStatus::Running)
    .bind::<Text, _>(worker)
    .bind::<TimestamptzSqlite, _>(lease_until)
    .bind::<TimestamptzSqlite, _>(now)
    .bind::<Text, _>(json_rows(ids))
    .bind::<Text, _>(pending)
    .bind::<Text, _>(retrying)
}

/// PostgreSQL's [`RowLocking::mark_enqueued`], its parameters bound.
pub(super) fn pg_mark_enqueued_query(
    ids: &[TaskId],
    now: DateTime<Utc>,
) -> BoxedSqlQuery<'_, Pg, SqlQuery> {
    use diesel::sql_types::{Array, Timestamptz, Uuid};
    diesel::sql_query(PG_MARK_ENQUEUED)
        .into_boxed()
        .bind::<Array<Uuid>, _>(ids)
        .bind::<Timestamptz, _>(now)
}

impl SetBased for PgConnection {
    fn record_successes(
        &mut self,
        attempts: &[(AttemptRef, Outcome)],
        now: DateTime<Utc>,
    ) -> QueryResult<HashSet<AttemptRef>> {
        pg_successes(self, PG_SUCCESSES, attempts, now)
    }
}

/// The successes of a batch, for a whole batch: the same transition as the
/// row-by-row path (`attempts.rs`, whose `attempt_ended!` lists the columns
/// an ended attempt clears). `$1` to `$3` the batch, `$4` now, `$5` and `$6`
/// the statuses after and before. The status is spelled
/// [`StatusText::STATUS_BY_ID`].
pub(super) const PG_SUCCESSES: &str =
    "UPDATE tasks AS t SET status = $5, result = v.result, error = NULL, \
       finished_at = $4, run_after = NULL, worker = NULL, lease_expires_at = NULL, \
       enqueued_at = NULL, publish_lock_until = NULL, updated_at = $4 \
     FROM unnest($1::uuid[], $2::int4[], $3::jsonb[]) AS v(id, attempt, result) \
     WHERE t.id = v.id AND (t.status || '') = $6 AND t.attempts = v.attempt \
     RETURNING t.id, t.attempts";

/// [`PG_SUCCESSES`] with the attempt rows closed, as the transaction in
/// `attempts.rs` closes them: a task's only unfinished attempt row is the
/// one that just ended. The same parameters.
pub(super) static PG_FINISH_SUCCESSES: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH done AS ({PG_SUCCESSES}), closed AS ( \
           UPDATE task_attempts AS a SET finished_at = $4 FROM done \
           WHERE a.task_id = done.id AND a.finished_at IS NULL \
         ) \
         SELECT id, attempts FROM done"
    )
});

/// Runs `sql` ([`PG_SUCCESSES`] or a statement around it, returning `id`
/// and `attempts`) for the successes of `attempts`; the attempts recorded.
fn pg_successes(
    conn: &mut PgConnection,
    sql: &str,
    attempts: &[(AttemptRef, Outcome)],
    now: DateTime<Utc>,
) -> QueryResult<HashSet<AttemptRef>> {
    use diesel::sql_types::{Integer, Uuid};

    #[derive(QueryableByName)]
    struct Recorded {
        #[diesel(sql_type = Uuid)]
        id: TaskId,
        #[diesel(sql_type = Integer)]
        attempts: i32,
    }

    let successes = successes(attempts);
    if successes.is_empty() {
        return Ok(HashSet::new());
    }
    let recorded = pg_successes_query(sql, &successes, now).load::<Recorded>(conn)?;
    Ok(recorded
        .into_iter()
        .map(|r| r.id.attempt(r.attempts))
        .collect())
}

/// `sql` ([`PG_SUCCESSES`] or a statement around it) with its parameters
/// bound for `successes`, in the order given.
pub(super) fn pg_successes_query<'a>(
    sql: &'a str,
    successes: &[(AttemptRef, &'a Value)],
    now: DateTime<Utc>,
) -> Kept<'a, Pg> {
    use diesel::sql_types::{Array, Integer, Jsonb, Text, Timestamptz, Uuid};
    let ids: Vec<TaskId> = successes.iter().map(|(a, _)| a.task).collect();
    let numbers: Vec<i32> = successes.iter().map(|(a, _)| a.attempt).collect();
    let results: Vec<&Value> = successes.iter().map(|(_, r)| *r).collect();
    Kept::new(sql)
        .bind::<Array<Uuid>, _>(ids)
        .bind::<Array<Integer>, _>(numbers)
        .bind::<Array<Jsonb>, _>(results)
        .bind::<Timestamptz, _>(now)
        .bind::<Text, _>(TaskStatus::Succeeded)
        .bind::<Text, _>(TaskStatus::Running)
}

/// PostgreSQL's claim ([`OneStatement::claim_at_once`]), its parameters
/// bound: the claim's `UPDATE` and the attempt rows' `INSERT` together.
/// The status is spelled [`StatusText::STATUS_BY_ID`].
pub(super) fn pg_claim_query<'a>(
    ids: &'a [TaskId],
    worker: &'a str,
    lease_until: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Kept<'a, Pg> {
    use diesel::sql_types::{Array, Text, Timestamptz, Uuid};
    // The same claim as the transaction's in `attempts.rs`; the rows are
    // locked in index order there as here.
    Kept::new(PG_CLAIM)
        .bind::<Array<Uuid>, _>(ids)
        .bind::<Text, _>(worker)
        .bind::<Timestamptz, _>(lease_until)
        .bind::<Timestamptz, _>(now)
        .bind::<Text, _>(TaskStatus::Running)
        .bind::<Array<Text>, _>(TaskStatus::CLAIMABLE.as_slice())
}

/// PostgreSQL's claim: `$1` the ids, `$2` the worker, `$3` the lease's
/// end, `$4` now, `$5` running, `$6` the claimable statuses.
pub(super) const PG_CLAIM: &str = "WITH claimed AS ( \
       UPDATE tasks SET status = $5, attempts = attempts + 1, worker = $2, \
         lease_expires_at = $3, updated_at = $4, \
         started_at = CASE WHEN started_at IS NULL THEN $4 ELSE started_at END \
       WHERE id = ANY($1) AND (status || '') = ANY($6) \
         AND (run_after IS NULL OR run_after <= $4) \
       RETURNING id, attempts, max_attempts, event_type, event \
     ), attempt_rows AS ( \
       INSERT INTO task_attempts (task_id, attempt, worker, started_at) \
       SELECT id, attempts, $2, $4 FROM claimed \
     ) \
     SELECT id, attempts, max_attempts, event_type, event FROM claimed";

/// A claimed row: id, attempt, max_attempts, event_type, event.
pub(super) type ClaimedRow = (TaskId, i32, i32, String, Value);

/// What PostgreSQL says in one statement (a data-modifying `WITH`) where
/// SQLite needs several in a transaction. One statement is a transaction
/// of its own: PostgreSQL saves the `BEGIN` and `COMMIT` round trips.
pub(super) trait OneStatement {
    /// Claims `ids` (see [`super::Db::claim_many`]): the claim's `UPDATE`
    /// and the attempt rows' `INSERT` together; the rows claimed. `None`
    /// if this backend cannot say it in one statement.
    fn claim_at_once(
        &mut self,
        ids: &[TaskId],
        worker: &str,
        lease_until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> QueryResult<Option<Vec<ClaimedRow>>>;

    /// Inserts a chunk of new tasks for `submit.rs` (`lock`, or
    /// `enqueued`, for those `due`) in one statement kept prepared; the
    /// ids of those created.
    fn insert_at_once(
        &mut self,
        tasks: &[&NewTask],
        lock: Option<DateTime<Utc>>,
        enqueued: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
        due: &dyn Fn(&NewTask) -> bool,
    ) -> QueryResult<Vec<TaskId>>;

    /// Records a batch of successes only (see [`SetBased`]) and closes
    /// their attempt rows together; the attempts recorded. `None` if this
    /// backend cannot say it in one statement.
    fn finish_successes_at_once(
        &mut self,
        attempts: &[(AttemptRef, Outcome)],
        now: DateTime<Utc>,
    ) -> QueryResult<Option<HashSet<AttemptRef>>>;
}

/// SQLite says each of these with statements kept prepared ([`Kept`]) that
/// take the batch as one parameter ([`json_rows`]): the insert in one, the
/// claim and the successes each in a transaction of two.
impl OneStatement for SqliteConnection {
    fn insert_at_once(
        &mut self,
        tasks: &[&NewTask],
        lock: Option<DateTime<Utc>>,
        enqueued: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
        due: &dyn Fn(&NewTask) -> bool,
    ) -> QueryResult<Vec<TaskId>> {
        #[derive(QueryableByName)]
        struct Created {
            #[diesel(sql_type = diesel::sql_types::Text)]
            id: TaskId,
        }
        let created = sqlite_insert_query(tasks, lock, enqueued, now, due).load::<Created>(self)?;
        Ok(created.into_iter().map(|c| c.id).collect())
    }

    fn finish_successes_at_once(
        &mut self,
        attempts: &[(AttemptRef, Outcome)],
        now: DateTime<Utc>,
    ) -> QueryResult<Option<HashSet<AttemptRef>>> {
        use diesel::sql_types::{Text, TimestamptzSqlite};
        self.transaction(|conn| {
            let recorded = conn.record_successes(attempts, now)?;
            if recorded.is_empty() {
                return Ok(Some(recorded));
            }
            // As the transaction in `attempts.rs` closes them: a task's
            // only unfinished attempt row is the one that just ended.
            let ids: Vec<TaskId> = recorded.iter().map(|a| a.task).collect();
            Kept::new(
                "UPDATE task_attempts SET finished_at = ?1 \
                 WHERE task_id IN (SELECT value FROM json_each(?2)) AND finished_at IS NULL",
            )
            .bind::<TimestamptzSqlite, _>(now)
            .bind::<Text, _>(json_rows(&ids))
            .execute(conn)?;
            Ok(Some(recorded))
        })
    }

    fn claim_at_once(
        &mut self,
        ids: &[TaskId],
        worker: &str,
        lease_until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> QueryResult<Option<Vec<ClaimedRow>>> {
        use diesel::sql_types::{Integer, Json, Text, TimestamptzSqlite};

        #[derive(QueryableByName)]
        struct Claimed {
            #[diesel(sql_type = Text)]
            id: TaskId,
            #[diesel(sql_type = Integer)]
            attempts: i32,
            #[diesel(sql_type = Integer)]
            max_attempts: i32,
            #[diesel(sql_type = Text)]
            event_type: String,
            #[diesel(sql_type = Json)]
            event: Value,
        }

        self.transaction(|conn| {
            let claimed =
                sqlite_claim_query(ids, worker, lease_until, now).load::<Claimed>(conn)?;
            if claimed.is_empty() {
                return Ok(Some(Vec::new()));
            }
            let rows: Vec<(TaskId, i32)> = claimed.iter().map(|c| (c.id, c.attempts)).collect();
            Kept::new(
                "INSERT INTO task_attempts (task_id, attempt, worker, started_at) \
                 SELECT value ->> 0, value ->> 1, ?1, ?2 FROM json_each(?3)",
            )
            .bind::<Text, _>(worker)
            .bind::<TimestamptzSqlite, _>(now)
            .bind::<Text, _>(json_rows(&rows))
            .execute(conn)?;
            Ok(Some(
                claimed
                    .into_iter()
                    .map(|c| (c.id, c.attempts, c.max_attempts, c.event_type, c.event))
                    .collect(),
            ))
        })
    }
}

impl OneStatement for PgConnection {
    /// One statement kept prepared ([`pg_insert_query`]).
    fn insert_at_once(
        &mut self,
        tasks: &[&NewTask],
        lock: Option<DateTime<Utc>>,
        enqueued: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
        due: &dyn Fn(&NewTask) -> bool,
    ) -> QueryResult<Vec<TaskId>> {
        #[derive(QueryableByName)]
        struct Created {
            #[diesel(sql_type = diesel::sql_types::Uuid)]
            id: TaskId,
        }
        let created = pg_insert_query(tasks, lock, enqueued, now, due).load::<Created>(self)?;
        Ok(created.into_iter().map(|c| c.id).collect())
    }

    fn finish_successes_at_once(
        &mut self,
        attempts: &[(AttemptRef, Outcome)],
        now: DateTime<Utc>,
    ) -> QueryResult<Option<HashSet<AttemptRef>>> {
        pg_successes(self, &PG_FINISH_SUCCESSES, attempts, now).map(Some)
    }

    fn claim_at_once(
        &mut self,
        ids: &[TaskId],
        worker: &str,
        lease_until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> QueryResult<Option<Vec<ClaimedRow>>> {
        use diesel::sql_types::{Integer, Jsonb, Text, Uuid};

        #[derive(QueryableByName)]
        struct Claimed {
            #[diesel(sql_type = Uuid)]
            id: TaskId,
            #[diesel(sql_type = Integer)]
            attempts: i32,
            #[diesel(sql_type = Integer)]
            max_attempts: i32,
            #[diesel(sql_type = Text)]
            event_type: String,
            #[diesel(sql_type = Jsonb)]
            event: Value,
        }

        let claimed = pg_claim_query(ids, worker, lease_until, now).load::<Claimed>(self)?;
        Ok(Some(
            claimed
                .into_iter()
                .map(|c| (c.id, c.attempts, c.max_attempts, c.event_type, c.event))
                .collect(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    /// A timestamp inside a batch's JSON is the same text diesel binds,
    /// or queries that compare `run_after` with a bound now would order
    /// them wrongly.
    #[test]
    fn a_stamp_in_json_is_the_text_diesel_writes() {
        use diesel::sql_types::{Text, TimestamptzSqlite};

        #[derive(QueryableByName)]
        struct Written {
            #[diesel(sql_type = Text)]
            t: String,
        }

        let mut conn = SqliteConnection::establish(":memory:").unwrap();
        for at in [
            Utc.with_ymd_and_hms(2026, 12, 5, 2, 7, 12).unwrap(),
            Utc.timestamp_opt(1_780_000_000, 123_456_789).unwrap(),
            Utc::now(),
        ] {
            let written = diesel::sql_query("SELECT ? AS t")
                .bind::<TimestamptzSqlite, _>(at)
                .get_result::<Written>(&mut conn)
                .unwrap();
            assert_eq!(sqlite_stamp(at), written.t);
        }
    }
}
