//! Retention: final tasks are deleted some time after they finished.
//!
//! The relay calls this every round with the configured `retention`; each
//! call deletes at most one batch, so a large backlog is worked off over
//! several statements and rounds instead of one long transaction.

use chrono::{DateTime, Utc};
use diesel::prelude::*;

use super::dialect::{status_by_id, status_in};
use super::{Db, DbResult};
use crate::task::{TaskId, TaskStatus};

/// The states a task is deleted in, once old enough.
pub(super) const FINAL: [TaskStatus; 3] = [
    TaskStatus::Succeeded,
    TaskStatus::Failed,
    TaskStatus::Cancelled,
];

/// Up to `$limit` final tasks that finished before `$cutoff`, oldest
/// first: a range read of `tasks_finished`. `$finals` is [`status_in`] of
/// [`FINAL`].
macro_rules! expired_finals {
    ($t:ident, $finals:expr, $cutoff:expr, $limit:expr) => {
        $t::tasks
            .select($t::id)
            .filter($finals)
            .filter($t::finished_at.lt($cutoff))
            .order($t::finished_at)
            .limit($limit)
    };
}

/// Those of `$ids` still final and finished before `$cutoff`: what the
/// delete takes. `$finals` is [`status_by_id`] of [`FINAL`], so that the
/// ids are read from the primary key rather than every final task from
/// `tasks_by_status`.
macro_rules! finals_by_id {
    ($t:ident, $ids:expr, $finals:expr, $cutoff:expr) => {
        $t::tasks
            .filter($t::id.eq_any($ids))
            .filter($finals)
            .filter($t::finished_at.lt($cutoff))
    };
}

impl Db {
    /// Deletes up to `limit` final tasks (succeeded, failed, cancelled) that
    /// finished before `cutoff`, with their attempts; returns how many tasks
    /// were deleted. The scan uses the partial index `tasks_finished`.
    pub fn delete_finished_before(&self, cutoff: DateTime<Utc>, limit: i64) -> DbResult<usize> {
        with_conn!(self, |conn, s| {
            use s::task_attempts::dsl as a;
            use s::tasks::dsl as t;
            conn.transaction(|conn| {
                let finals = status_in(&*conn, &FINAL);
                let again = status_by_id(&*conn, &FINAL);
                let ids: Vec<TaskId> = expired_finals!(t, finals, cutoff, limit).load(conn)?;
                if ids.is_empty() {
                    return Ok(0);
                }
                // The conditions again: a task retried meanwhile is kept.
                let deleted: Vec<TaskId> = diesel::delete(finals_by_id!(t, &ids, again, cutoff))
                    .returning(t::id)
                    .get_results(conn)?;
                // The foreign key cascades on both backends (SQLite's
                // connections turn `foreign_keys` on); this does not depend
                // on it.
                diesel::delete(a::task_attempts.filter(a::task_id.eq_any(&deleted)))
                    .execute(conn)?;
                Ok(deleted.len())
            })
        })
    }
}
