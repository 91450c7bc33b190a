//! The plans of the relay's queries, as the database would run them now:
//! for the tests that check each is an index range read bounded by its
//! `LIMIT` (or by what is due), however long the backlog ("a backlog is
//! cheap"). The queries are the relay's own (the macros of `dialect.rs`,
//! `outbox.rs`, `attempts.rs` and `retention.rs`), with their parameters.

use chrono::{DateTime, Utc};
use diesel::backend::Backend;
use diesel::connection::SimpleConnection;
use diesel::pg::Pg;
use diesel::prelude::*;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::sql_types::{BigInt, Untyped};
use diesel::sqlite::Sqlite;
use serde_json::Value;

use super::dialect::{
    count_confirmed, pg_claim_query, pg_mark_enqueued_query, pg_successes_query,
    sqlite_claim_query, sqlite_successes_query, status_by_id, status_in, PG_CLAIM,
    PG_FINISH_SUCCESSES, PG_SUCCESSES,
};
use super::outbox::LostWindow;
use super::retention::FINAL;
use super::{Db, DbResult, LostBound};
use crate::task::{AttemptRef, TaskId, TaskStatus};

/// `EXPLAIN` (PostgreSQL) or `EXPLAIN QUERY PLAN` (SQLite) of a query,
/// with its parameters bound.
struct Explain<Q>(Q);

impl<Q> QueryId for Explain<Q> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<Q> Query for Explain<Q> {
    type SqlType = Untyped;
}

impl<Q, C: Connection> RunQueryDsl<C> for Explain<Q> {}

impl<Q: QueryFragment<Pg>> QueryFragment<Pg> for Explain<Q> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.unsafe_to_cache_prepared();
        out.push_sql("EXPLAIN ");
        self.0.walk_ast(out.reborrow())
    }
}

impl<Q: QueryFragment<Sqlite>> QueryFragment<Sqlite> for Explain<Q> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Sqlite>) -> QueryResult<()> {
        out.unsafe_to_cache_prepared();
        out.push_sql("EXPLAIN QUERY PLAN ");
        self.0.walk_ast(out.reborrow())
    }
}

#[derive(QueryableByName)]
struct PgLine {
    #[diesel(sql_type = diesel::sql_types::Text)]
    #[diesel(column_name = "QUERY PLAN")]
    line: String,
}

#[derive(QueryableByName)]
struct SqliteLine {
    #[diesel(sql_type = diesel::sql_types::Text)]
    detail: String,
}

/// A connection that can show a query's plan, one line per step.
trait Plan: Connection {
    fn plan<Q: QueryFragment<Self::Backend>>(&mut self, query: Q) -> QueryResult<String>
    where
        Self::Backend: Backend;
}

impl Plan for PgConnection {
    fn plan<Q: QueryFragment<Pg>>(&mut self, query: Q) -> QueryResult<String> {
        let lines = Explain(query).load::<PgLine>(self)?;
        Ok(lines
            .into_iter()
            .map(|l| l.line)
            .collect::<Vec<_>>()
            .join("\n"))
    }
}

impl Plan for SqliteConnection {
    fn plan<Q: QueryFragment<Sqlite>>(&mut self, query: Q) -> QueryResult<String> {
        let lines = Explain(query).load::<SqliteLine>(self)?;
        Ok(lines
            .into_iter()
            .map(|l| l.detail)
            .collect::<Vec<_>>()
            .join("\n"))
    }
}

impl Db {
    /// The plan of each query a relay round runs over the whole table
    /// (those by id are primary key lookups), named by the method that
    /// runs it: `claim_unpublished`, `any_stale`, `claim_lost (count)`,
    /// `claim_lost (take)`, `expire_leases`, `delete_finished_before`.
    #[doc(hidden)]
    pub fn relay_plans(&self) -> DbResult<Vec<(&'static str, String)>> {
        let now = Utc::now();
        let stale_before = now - chrono::Duration::minutes(5);
        let w = LostWindow {
            bound: LostBound {
                depth: 0,
                batch: 500,
            },
            measured_at: now,
            stale_before,
            now,
            until: now,
        };
        let cutoff: DateTime<Utc> = now - chrono::Duration::days(7);
        with_conn!(self, |conn, s| {
            use s::tasks::dsl as t;
            let [c1, c2, c3] = [(); 3].map(|()| status_in(&*conn, &TaskStatus::CLAIMABLE));
            let running = status_in(&*conn, &[TaskStatus::Running]);
            let finals = status_in(&*conn, &FINAL);
            let count = count_confirmed(&*conn);
            Ok(vec![
                (
                    "claim_unpublished",
                    conn.plan(owed_ids!(t, c1, now, 500_i64))?,
                ),
                ("any_stale", conn.plan(oldest_stale!(t, c2, stale_before))?),
                (
                    "claim_lost (count)",
                    conn.plan(
                        diesel::sql_query(count)
                            .bind::<<t::created_at as Expression>::SqlType, _>(now)
                            .bind::<BigInt, _>(600_i64),
                    )?,
                ),
                (
                    "claim_lost (take)",
                    conn.plan(stale_ids!(t, c3, w, 500_i64))?,
                ),
                (
                    "expire_leases",
                    conn.plan(t::tasks.select(t::id).filter(lease_lost!(t, running, now)))?,
                ),
                (
                    "delete_finished_before",
                    conn.plan(expired_finals!(t, finals, cutoff, 1000_i64))?,
                ),
            ])
        })
    }

    /// The plan of each statement that takes a batch of tasks by id and
    /// checks their status (`ids`, as many as a batch holds): none may read
    /// every task of that status, however long the backlog in it. Named
    /// `claim_many`, `cancel_requested_retries`, `delete_finished_before
    /// (by id)` and `record_successes`, and on PostgreSQL also its own
    /// statements for the claim (`claim_at_once`) and the confirm
    /// (`mark_enqueued`).
    #[doc(hidden)]
    pub fn by_id_plans(&self, ids: &[TaskId]) -> DbResult<Vec<(&'static str, String)>> {
        let now = Utc::now();
        // The default retention's.
        let cutoff: DateTime<Utc> = now - chrono::Duration::days(7);
        with_conn!(self, |conn, s| {
            use s::tasks::dsl as t;
            let claimable = status_by_id(&*conn, &TaskStatus::CLAIMABLE);
            let retrying = status_by_id(&*conn, &[TaskStatus::Retrying]);
            let finals = status_by_id(&*conn, &FINAL);
            let raw = conn.raw_by_id_plans(ids, now)?;
            let mut plans = vec![
                (
                    "claim_many",
                    conn.plan(
                        diesel::update(claimable_by_id!(t, ids, claimable, now))
                            .set(t::status.eq(TaskStatus::Running)),
                    )?,
                ),
                (
                    "cancel_requested_retries",
                    conn.plan(cancel_requested_retries!(t, ids, retrying, now))?,
                ),
                (
                    "delete_finished_before (by id)",
                    conn.plan(diesel::delete(finals_by_id!(t, ids, finals, cutoff)))?,
                ),
            ];
            plans.extend(raw);
            Ok(plans)
        })
    }
}

impl Db {
    /// The plans PostgreSQL makes once, for any batch, of the statements a
    /// worker keeps prepared that take tasks by id (`claim_at_once`,
    /// `record_successes`, `finish_successes_at_once`), on a connection of
    /// this pool: as a worker's sessions plan them when this pool's are
    /// [`super::Planning::Generic`]. `ids` fill the parameters, which such
    /// a plan does not look at. None on SQLite, whose statements have one
    /// plan anyway.
    #[doc(hidden)]
    pub fn kept_plans(&self, ids: &[TaskId]) -> DbResult<Vec<(&'static str, String)>> {
        with_conn!(self, |conn, _s| Ok(conn.kept_plans(ids)?))
    }
}

/// The plans of the statements a backend keeps prepared, as a session
/// makes them, for [`Db::kept_plans`].
trait KeptPlans {
    fn kept_plans(&mut self, ids: &[TaskId]) -> QueryResult<Vec<(&'static str, String)>>;
}

impl KeptPlans for SqliteConnection {
    fn kept_plans(&mut self, _ids: &[TaskId]) -> QueryResult<Vec<(&'static str, String)>> {
        Ok(Vec::new())
    }
}

impl KeptPlans for PgConnection {
    fn kept_plans(&mut self, ids: &[TaskId]) -> QueryResult<Vec<(&'static str, String)>> {
        let n = ids.len();
        let ids = format!(
            "ARRAY[{}]::uuid[]",
            ids.iter()
                .map(|id| format!("'{id}'"))
                .collect::<Vec<_>>()
                .join(",")
        );
        let successes = (
            "uuid[], int4[], jsonb[], timestamptz, text, text",
            format!(
                "({ids}, array_fill(1, ARRAY[{n}]), array_fill('null'::jsonb, ARRAY[{n}]), \
                 now(), 'succeeded', 'running')"
            ),
        );
        let statements = [
            (
                "claim_at_once",
                PG_CLAIM,
                (
                    "uuid[], text, timestamptz, timestamptz, text, text[]",
                    format!(
                        "({ids}, 'worker', now(), now(), 'running', ARRAY['pending', 'retrying'])"
                    ),
                ),
            ),
            ("record_successes", PG_SUCCESSES, successes.clone()),
            (
                "finish_successes_at_once",
                PG_FINISH_SUCCESSES.as_str(),
                successes,
            ),
        ];
        let mut plans = Vec::new();
        for (name, sql, (types, values)) in statements {
            self.batch_execute(&format!("PREPARE ferry_kept_plan ({types}) AS {sql}"))?;
            let lines = diesel::sql_query(format!("EXPLAIN EXECUTE ferry_kept_plan {values}"))
                .load::<PgLine>(self);
            self.batch_execute("DEALLOCATE ferry_kept_plan")?;
            let plan = lines?.into_iter().map(|l| l.line).collect::<Vec<_>>();
            plans.push((name, plan.join("\n")));
        }
        Ok(plans)
    }
}

/// The plans of a backend's own statements that take tasks by id
/// (`dialect.rs`), for [`Db::by_id_plans`].
trait RawByIdPlans: Plan {
    fn raw_by_id_plans(
        &mut self,
        ids: &[TaskId],
        now: DateTime<Utc>,
    ) -> QueryResult<Vec<(&'static str, String)>>;
}

/// A success for each of `ids`, as an outcome batch records them.
fn successes<'a>(ids: &[TaskId], result: &'a Value) -> Vec<(AttemptRef, &'a Value)> {
    ids.iter().map(|id| (id.attempt(1), result)).collect()
}

impl RawByIdPlans for PgConnection {
    fn raw_by_id_plans(
        &mut self,
        ids: &[TaskId],
        now: DateTime<Utc>,
    ) -> QueryResult<Vec<(&'static str, String)>> {
        let result = Value::Null;
        Ok(vec![
            (
                "record_successes",
                self.plan(pg_successes_query(
                    PG_SUCCESSES,
                    &successes(ids, &result),
                    now,
                ))?,
            ),
            (
                "claim_at_once",
                self.plan(pg_claim_query(ids, "worker", now, now))?,
            ),
            (
                "mark_enqueued",
                self.plan(pg_mark_enqueued_query(ids, now))?,
            ),
        ])
    }
}

impl RawByIdPlans for SqliteConnection {
    fn raw_by_id_plans(
        &mut self,
        ids: &[TaskId],
        now: DateTime<Utc>,
    ) -> QueryResult<Vec<(&'static str, String)>> {
        let result = Value::Null;
        Ok(vec![
            (
                "record_successes",
                self.plan(sqlite_successes_query(&successes(ids, &result), now))?,
            ),
            (
                "claim_at_once",
                self.plan(sqlite_claim_query(ids, "worker", now, now))?,
            ),
        ])
    }
}
