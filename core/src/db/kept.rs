//! Raw SQL that stays prepared on its connection.
//!
//! diesel prepares again, each time it runs, every `sql_query`, every
//! `sql()` fragment and every `IN` list of `eq_any`: it cannot tell that
//! their text is the same as last time. On SQLite, where a statement is a
//! call into the library, that compile was most of a statement's cost: a
//! worker's claim and outcome statements, each with a `VALUES` or `IN`
//! list as long as its batch, were parsed and compiled again (their
//! `task_events` trigger included) for every batch, a fifth of a worker's
//! CPU (BENCHMARKS.md).
//!
//! A [`Kept`] statement is SQL text whose parameters are numbered (`$1` on
//! PostgreSQL, `?1` on SQLite) and bound apart: the text never changes
//! between runs, so diesel keeps the statement in the connection's cache,
//! by its text, and the backend compiles it once per connection. SQLite's
//! statements take a whole batch as one parameter (`dialect.rs`
//! `json_rows`).
//!
//! On PostgreSQL a kept statement is a named prepared statement, and what
//! it saves depends on its plan. The insert reads no table, so any plan
//! of it is the same (`dialect.rs` `pg_insert_query`). A worker's claim
//! and outcome find tasks by id, and are kept for the workers' sessions,
//! which plan each once for any batch with sequential scans priced out
//! (`Planning::Generic` in `mod.rs`): at 1 000/s, where batches hold a
//! task or two, planning them with each batch was a third of the server's
//! time per statement, and their plans made once read the primary key
//! (`relay_plans.rs` checks them on a new table and on a table whose
//! statistics say every task succeeded). Without `enable_seqscan = off`,
//! such a plan, made while the table was new and without statistics,
//! scanned the whole table, and was kept: in a burst of 20 000 tasks the
//! server's CPU per task doubled (BENCHMARKS.md, ninth section). Planned
//! with each run's values instead (`plan_cache_mode = force_custom_plan`),
//! they cost more than they saved (tenth section). The confirm's mark
//! (`RowLocking::mark_enqueued`), which the api runs, is not kept: the
//! api's sessions plan as PostgreSQL chooses, for the listing's filters.

use diesel::backend::Backend;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::result::Error;
use diesel::serialize::ToSql;
use diesel::sql_types::{HasSqlType, Untyped};
use diesel::{QueryResult, RunQueryDsl};
use std::marker::PhantomData;

/// SQL text with numbered parameters and their values; see the module.
pub(super) struct Kept<'a, DB: Backend> {
    sql: &'a str,
    binds: Vec<Box<dyn QueryFragment<DB> + Send + 'a>>,
}

impl<'a, DB: Backend> Kept<'a, DB> {
    /// `sql`, whose parameters are `$1`, `$2` … or `?1`, `?2` …, each
    /// bound in that order by [`Kept::bind`]; a parameter may appear more
    /// than once. The text must be the same each time the statement runs
    /// (the statement cache is keyed by it): values go in parameters.
    pub(super) fn new(sql: &'a str) -> Self {
        Self {
            sql,
            binds: Vec::new(),
        }
    }

    /// Binds the next parameter, as SQL type `ST`.
    pub(super) fn bind<ST, V>(mut self, value: V) -> Self
    where
        DB: HasSqlType<ST>,
        V: ToSql<ST, DB> + Send + 'a,
        ST: Send + 'a,
    {
        self.binds.push(Box::new(Bind {
            value,
            sql_type: PhantomData::<ST>,
        }));
        self
    }
}

struct Bind<ST, V> {
    value: V,
    sql_type: PhantomData<ST>,
}

impl<ST, V, DB> QueryFragment<DB> for Bind<ST, V>
where
    DB: Backend + HasSqlType<ST>,
    V: ToSql<ST, DB>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        out.push_bind_param::<ST, V>(&self.value)
    }
}

impl<DB: Backend> QueryFragment<DB> for Kept<'_, DB> {
    /// The text with each numbered parameter replaced by the backend's own
    /// placeholder for its value (a parameter used twice is bound twice).
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        let mut rest = self.sql;
        while let Some(at) = rest.find(['$', '?']) {
            let digits = rest[at + 1..]
                .bytes()
                .take_while(u8::is_ascii_digit)
                .count();
            if digits == 0 {
                out.push_sql(&rest[..=at]);
                rest = &rest[at + 1..];
                continue;
            }
            out.push_sql(&rest[..at]);
            let bind = rest[at + 1..at + 1 + digits]
                .parse::<usize>()
                .ok()
                .and_then(|n| self.binds.get(n.checked_sub(1)?))
                .ok_or_else(|| {
                    Error::QueryBuilderError(
                        format!("parameter {} is not bound", &rest[at..at + 1 + digits]).into(),
                    )
                })?;
            bind.walk_ast(out.reborrow())?;
            rest = &rest[at + 1 + digits..];
        }
        out.push_sql(rest);
        Ok(())
    }
}

impl<DB: Backend> QueryId for Kept<'_, DB> {
    type QueryId = ();
    // No type names the statement: diesel keys its cache by the text.
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<DB: Backend> Query for Kept<'_, DB> {
    type SqlType = Untyped;
}

impl<Conn: diesel::Connection> RunQueryDsl<Conn> for Kept<'_, Conn::Backend> {}

#[cfg(test)]
mod tests {
    use super::*;
    use diesel::debug_query;
    use diesel::pg::Pg;
    use diesel::sql_types::{Integer, Text};
    use diesel::sqlite::Sqlite;

    #[test]
    fn numbered_parameters_become_the_backends_placeholders_in_order_of_use() {
        let sql = "SELECT $2, $1 WHERE a = $2 AND b = '$'";
        let query = Kept::<Pg>::new(sql)
            .bind::<Integer, _>(1)
            .bind::<Text, _>("x");
        assert_eq!(
            debug_query(&query).to_string(),
            "SELECT $1, $2 WHERE a = $3 AND b = '$' -- binds: [\"x\", 1, \"x\"]"
        );
        let query = Kept::<Sqlite>::new("SELECT ?1 + ?1, ?").bind::<Integer, _>(7);
        assert_eq!(
            debug_query(&query).to_string(),
            "SELECT ? + ?, ? -- binds: [7, 7]"
        );
    }

    #[test]
    fn a_parameter_without_a_value_is_an_error_not_a_panic() {
        let query = Kept::<Pg>::new("SELECT $1, $3")
            .bind::<Integer, _>(1)
            .bind::<Integer, _>(2);
        let mut out = diesel::pg::PgQueryBuilder::default();
        let err = query.to_sql(&mut out, &Pg).unwrap_err();
        assert!(err.to_string().contains("$3"), "{err}");
    }

    #[test]
    fn diesel_may_keep_it_prepared() {
        let query = Kept::<Sqlite>::new("SELECT ?1").bind::<Integer, _>(1);
        assert!(query.is_safe_to_cache_prepared(&Sqlite).unwrap());
        // Unlike its own raw SQL.
        let raw = diesel::sql_query("SELECT ?").bind::<Integer, _>(1);
        assert!(!QueryFragment::<Sqlite>::is_safe_to_cache_prepared(&raw, &Sqlite).unwrap());
    }
}
