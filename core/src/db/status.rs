//! Status: what `GET /status` and monitoring read. Nothing here writes.
//!
//! A task's view is its row joined to its attempt rows: on PostgreSQL one
//! query for a whole batch of ids, on SQLite one prepared query per id of
//! the batch, on one connection (see [`Db::task_views`] and the dialect's
//! `BatchRead`).

use std::collections::hash_map::{Entry, HashMap};
use std::collections::HashSet;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use serde_json::Value;

use super::dialect::one_id_at_a_time;
use super::stamp::{MaybeStamp, Stamp};
use super::{Db, DbResult};
use crate::task::{AttemptView, TaskId, TaskStatus, TaskView};

#[derive(Queryable)]
struct TaskRow {
    id: TaskId,
    status: TaskStatus,
    event_type: String,
    source: String,
    event_id: String,
    attempts: i32,
    max_attempts: i32,
    #[diesel(deserialize_as = Stamp)]
    created_at: DateTime<Utc>,
    #[diesel(deserialize_as = MaybeStamp)]
    started_at: Option<DateTime<Utc>>,
    #[diesel(deserialize_as = MaybeStamp)]
    finished_at: Option<DateTime<Utc>>,
    result: Option<Value>,
    error: Option<String>,
    #[diesel(deserialize_as = MaybeStamp)]
    run_after: Option<DateTime<Utc>>,
    #[diesel(deserialize_as = MaybeStamp)]
    cancel_requested_at: Option<DateTime<Utc>>,
}

/// A task's attempt columns, as [`view_rows!`] reads them.
type AttemptRow = (i32, String, Stamp, Option<Stamp>, Option<String>);

/// The rows of the views of `$ids` on `$conn`, whose schema is `$s`: each
/// task joined to its attempts, a row per attempt.
macro_rules! view_rows {
    ($conn:ident, $s:ident, $ids:expr) => {{
        let ids: &[TaskId] = $ids;
        let conn = $conn;
        use $s::task_attempts::dsl as a;
        use $s::tasks::dsl as t;
        let columns = (
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
                t::run_after,
                t::cancel_requested_at,
            ),
            (
                a::attempt,
                a::worker,
                a::started_at,
                a::finished_at,
                a::error,
            )
                .nullable(),
        );
        // SQLite reads id by id, PostgreSQL all at once (`BatchRead`).
        if one_id_at_a_time(conn) {
            let mut rows = Vec::new();
            let mut seen = HashSet::with_capacity(ids.len());
            for id in ids.iter().filter(|id| seen.insert(**id)) {
                rows.extend(
                    t::tasks
                        .left_join(a::task_attempts.on(a::task_id.eq(t::id)))
                        .select(columns)
                        .filter(t::id.eq(id))
                        .order(a::attempt)
                        .load::<(TaskRow, Option<AttemptRow>)>(conn)?,
                );
            }
            rows
        } else {
            // The ids are repeated in the join so the attempts are found
            // by their index even before PostgreSQL has statistics for
            // the table (without them it scans all attempts for a hash
            // join).
            t::tasks
                .left_join(a::task_attempts.on(a::task_id.eq(t::id).and(a::task_id.eq_any(ids))))
                .select(columns)
                .filter(t::id.eq_any(ids))
                .order((t::id, a::attempt))
                .load::<(TaskRow, Option<AttemptRow>)>(conn)?
        }
    }};
}

impl Db {
    /// How many tasks are in `status` (for benchmarks and monitoring).
    pub fn count_with_status(&self, status: TaskStatus) -> DbResult<i64> {
        with_conn!(self, |conn, s| {
            use s::tasks::dsl as t;
            Ok(t::tasks
                .filter(t::status.eq(status))
                .count()
                .get_result(conn)?)
        })
    }

    /// How many tasks are in each status (the statuses that have any), for
    /// the `ferry_tasks` gauges. One `GROUP BY status` read from the
    /// `tasks_by_status` index (`status, created_at, id`, migration
    /// `2026-12-03-000001_task_listing`, on both backends) without touching
    /// the table (PostgreSQL: a parallel index-only scan; SQLite: `SCAN
    /// tasks USING COVERING INDEX`): linear in the rows, about 130 ms at
    /// 1 000 000 rows on either backend, never a sort. The
    /// caller caches it (`metrics_counts_max_age`) and runs one at a time,
    /// so scrapes do not add up.
    pub fn status_counts(&self) -> DbResult<Vec<(TaskStatus, i64)>> {
        with_conn!(self, |conn, s| {
            use diesel::dsl::count_star;
            use s::tasks::dsl as t;
            Ok(t::tasks
                .group_by(t::status)
                .select((t::status, count_star()))
                .load::<(TaskStatus, i64)>(conn)?)
        })
    }

    /// A task's status, or `None` if there is no such task.
    pub fn status(&self, id: TaskId) -> DbResult<Option<TaskStatus>> {
        with_conn!(self, |conn, s| {
            use s::tasks::dsl as t;
            Ok(t::tasks
                .select(t::status)
                .filter(t::id.eq(id))
                .first::<TaskStatus>(conn)
                .optional()?)
        })
    }

    /// Everything `GET /status` shows, or `None` if there is no such task.
    pub fn task_view(&self, id: TaskId) -> DbResult<Option<TaskView>> {
        Ok(self.task_views(&[id])?.pop().flatten())
    }

    /// [`Db::task_view`] of several tasks in one query (the tasks joined to
    /// their attempts, a row per attempt), answered in the order asked.
    pub fn task_views(&self, ids: &[TaskId]) -> DbResult<Vec<Option<TaskView>>> {
        let rows = with_conn!(self, |conn, s| view_rows!(conn, s, ids));
        Ok(views_in_order(rows, ids))
    }

    /// [`Db::task_views`] on the calling thread, when that costs no wait:
    /// on SQLite, with a pooled connection free at once (a reader in WAL
    /// mode does not wait for the writer). `None` otherwise (PostgreSQL,
    /// whose read is a round trip; or every connection taken), for the
    /// caller to read another way. For `/status`, which would otherwise
    /// hand its read to the read batcher's thread and wait to be woken.
    pub fn task_views_without_waiting(
        &self,
        ids: &[TaskId],
    ) -> Option<DbResult<Vec<Option<TaskView>>>> {
        let super::Pool::Sqlite(pool) = &self.pool else {
            return None;
        };
        let mut conn = pool.try_get()?;
        let conn: &mut diesel::SqliteConnection = &mut conn;
        let read = || -> DbResult<_> {
            use super::schema_sqlite as s;
            Ok(view_rows!(conn, s, ids))
        };
        Some(read().map(|rows| views_in_order(rows, ids)))
    }
}

/// The views of `ids` from their rows ([`view_rows!`]), in the order asked.
fn views_in_order(
    rows: Vec<(TaskRow, Option<AttemptRow>)>,
    ids: &[TaskId],
) -> Vec<Option<TaskView>> {
    let mut views: HashMap<TaskId, TaskView> = HashMap::with_capacity(ids.len());
    for (row, attempt) in rows {
        let view = match views.entry(row.id) {
            Entry::Occupied(view) => view.into_mut(),
            Entry::Vacant(slot) => slot.insert(TaskView {
                id: row.id,
                status: row.status,
                event_type: row.event_type,
                source: row.source,
                event_id: row.event_id,
                attempts: row.attempts,
                max_attempts: row.max_attempts,
                created_at: row.created_at,
                // Only a task waiting to be claimed waits for it.
                due_at: row
                    .run_after
                    .filter(|_| TaskStatus::CLAIMABLE.contains(&row.status)),
                started_at: row.started_at,
                finished_at: row.finished_at,
                // Only a running task has a stop still to come.
                cancel_requested_at: row
                    .cancel_requested_at
                    .filter(|_| row.status == TaskStatus::Running),
                result: row.result,
                error: row.error,
                attempt_history: Vec::new(),
            }),
        };
        if let Some((attempt, worker, started_at, finished_at, error)) = attempt {
            view.attempt_history.push(AttemptView {
                attempt,
                worker,
                started_at: started_at.0,
                finished_at: finished_at.map(DateTime::from),
                error,
            });
        }
    }
    // An id asked twice gets its view twice: moved out at its last ask.
    let last: HashMap<TaskId, usize> = ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
    ids.iter()
        .enumerate()
        .map(|(i, id)| {
            if last[id] == i {
                views.remove(id)
            } else {
                views.get(id).cloned()
            }
        })
        .collect()
}
