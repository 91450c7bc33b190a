//! What only one backend can say: every raw SQL statement and every
//! backend-specific clause (`FOR UPDATE SKIP LOCKED`, `unnest`) is here,
//! as a trait implemented for each connection type.
//!
//! The query files (`submit.rs`, `outbox.rs`, `attempts.rs`, `status.rs`)
//! use only diesel's shared form and call these methods where the backends
//! must differ: PostgreSQL has concurrent writers and round trips, so it
//! skips rows another transaction holds and records a batch in one
//! statement; SQLite has one writer at a time and no round trips, so it
//! re-checks conditions in the update and goes row by row.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use diesel::prelude::*;

use diesel::expression::SqlLiteral;
use diesel::sql_types::Bool;

use super::attempts::order_by_id;
use super::outbox::LostWindow;
use super::{schema_pg, schema_sqlite};
use crate::task::{AttemptRef, Outcome, TaskId, TaskStatus};

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
    /// The first and second parameters of a raw statement.
    const PARAMS: [&'static str; 2];
}

impl StatusText for PgConnection {
    const STATUS: &'static str = "status";
    const PARAMS: [&'static str; 2] = ["$1", "$2"];
}

impl StatusText for SqliteConnection {
    const STATUS: &'static str = "+status";
    const PARAMS: [&'static str; 2] = ["?", "?"];
}

/// `status IN ('pending', 'retrying')` (or `status = 'running'` for one
/// status) as SQL text, not bound parameters: a partial index is used only
/// when the planner can see that the query implies its predicate, which it
/// cannot through parameters (SQLite never, PostgreSQL not in a generic
/// plan). `conn` only chooses the backend's spelling ([`StatusText`]).
pub(super) fn status_in<C: StatusText>(_conn: &C, statuses: &[TaskStatus]) -> SqlLiteral<Bool> {
    let list: Vec<String> = statuses
        .iter()
        .map(|s| format!("'{}'", s.as_str()))
        .collect();
    let text = match list.as_slice() {
        [one] => format!("{} = {one}", C::STATUS),
        _ => format!("{} IN ({})", C::STATUS, list.join(", ")),
    };
    diesel::dsl::sql(&text)
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

/// The rows of `ids` still locked for publishing, and the marks that
/// record the broker's confirm on them, on either schema.
macro_rules! publishing {
    ($t:ident, $ids:expr) => {
        $t::tasks
            .filter($t::id.eq_any($ids))
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
    fn mark_enqueued(&mut self, ids: &[TaskId], now: DateTime<Utc>) -> QueryResult<()>;

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

impl RowLocking for PgConnection {
    fn mark_enqueued(&mut self, ids: &[TaskId], now: DateTime<Utc>) -> QueryResult<()> {
        use schema_pg::tasks::dsl as t;
        // Rows a worker holds right now are skipped rather than waited for:
        // waiting deadlocked against outcome batches that lock in another
        // order.
        self.transaction(|conn| {
            let free: Vec<TaskId> = publishing!(t, ids)
                .select(t::id)
                .order(t::id)
                .for_update()
                .skip_locked()
                .load(conn)?;
            diesel::update(t::tasks.filter(t::id.eq_any(&free)))
                .set(confirmed!(t, now))
                .execute(conn)?;
            Ok(())
        })
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
    fn mark_enqueued(&mut self, ids: &[TaskId], now: DateTime<Utc>) -> QueryResult<()> {
        use schema_sqlite::tasks::dsl as t;
        diesel::update(publishing!(t, ids))
            .set(confirmed!(t, now))
            .execute(self)?;
        Ok(())
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

/// Statements that only some backends can make set-based.
pub(super) trait SetBased {
    /// Records every `Outcome::Succeeded` of `attempts` whose attempt still
    /// holds its task, in one statement; the attempts recorded.
    /// `None` if this backend records them one row at a time instead.
    fn record_successes(
        &mut self,
        attempts: &[(AttemptRef, Outcome)],
        now: DateTime<Utc>,
    ) -> QueryResult<Option<HashSet<AttemptRef>>>;
}

impl SetBased for SqliteConnection {
    fn record_successes(
        &mut self,
        _: &[(AttemptRef, Outcome)],
        _: DateTime<Utc>,
    ) -> QueryResult<Option<HashSet<AttemptRef>>> {
        Ok(None)
    }
}

impl SetBased for PgConnection {
    fn record_successes(
        &mut self,
        attempts: &[(AttemptRef, Outcome)],
        now: DateTime<Utc>,
    ) -> QueryResult<Option<HashSet<AttemptRef>>> {
        use diesel::sql_types::{Array, Integer, Jsonb, Text, Timestamptz, Uuid};

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
        for i in order_by_id(attempts.iter().map(|(attempt, _)| attempt.task)) {
            if let (attempt, Outcome::Succeeded(result)) = &attempts[i] {
                ids.push(attempt.task);
                numbers.push(attempt.attempt);
                results.push(result);
            }
        }
        if ids.is_empty() {
            return Ok(Some(HashSet::new()));
        }
        // The same transition as the row-by-row path (`attempts.rs`, whose
        // `attempt_ended!` lists the columns an ended attempt clears), for a
        // whole batch.
        let recorded = diesel::sql_query(
            "UPDATE tasks AS t SET status = $5, result = v.result, error = NULL, \
               finished_at = $4, run_after = NULL, worker = NULL, lease_expires_at = NULL, \
               enqueued_at = NULL, publish_lock_until = NULL, updated_at = $4 \
             FROM unnest($1::uuid[], $2::int4[], $3::jsonb[]) AS v(id, attempt, result) \
             WHERE t.id = v.id AND t.status = $6 AND t.attempts = v.attempt \
             RETURNING t.id, t.attempts",
        )
        .bind::<Array<Uuid>, _>(ids)
        .bind::<Array<Integer>, _>(numbers)
        .bind::<Array<Jsonb>, _>(results)
        .bind::<Timestamptz, _>(now)
        .bind::<Text, _>(TaskStatus::Succeeded)
        .bind::<Text, _>(TaskStatus::Running)
        .load::<Recorded>(self)?;
        Ok(Some(
            recorded
                .into_iter()
                .map(|r| r.id.attempt(r.attempts))
                .collect(),
        ))
    }
}
