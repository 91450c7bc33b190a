//! Control: what a client asks of a task it submitted, after the fact —
//! cancel it (`POST /tasks/<id>/cancel`) or run it again
//! (`POST /tasks/<id>/retry`) — and how a running attempt learns that it
//! was cancelled (at its lease renewal, when the control message did not
//! reach its worker).
//!
//! Every write is a compare-and-set on the task's status, so a cancel that
//! races a claim or an outcome either lands before it (the claim finds
//! nothing to claim) or sees the new status and answers for that.

use chrono::{DateTime, Utc};
use diesel::prelude::*;

use super::{Db, DbResult};
use crate::task::{AttemptRef, TaskId, TaskStatus};

/// What a cancel did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelAnswer {
    /// The task was `pending` or `retrying` and is now `cancelled`: it will
    /// never run.
    Cancelled,
    /// The task was already `cancelled`; nothing changed.
    AlreadyCancelled,
    /// The task is `running`: the stop is recorded (`cancel_requested_at`),
    /// and its worker records `cancelled` once the handler is stopped.
    StopRequested {
        /// The attempt running now, the one to stop: a control message
        /// names it, so that arriving late it cannot stop a newer attempt.
        attempt: i32,
    },
    /// The task had already finished (`succeeded` or `failed`); nothing changed.
    Finished(TaskStatus),
    /// No such task.
    NotFound,
}

/// What a retry did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryAnswer {
    /// The task is `pending` again with this many attempts allowed in all;
    /// its message is owed to the broker (the caller publishes it, or the
    /// relay does once `publish_lock_until` passes).
    Retried {
        /// The new attempt budget: attempts so far plus the route's.
        max_attempts: i32,
    },
    /// The task is in this status, which is neither `failed` nor
    /// `cancelled`; nothing changed.
    NotRetryable(TaskStatus),
    /// No such task.
    NotFound,
}

/// What a lease renewal found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lease {
    /// Renewed: the attempt still holds the task.
    Held,
    /// Renewed, and a client has asked to cancel the task: stop the attempt
    /// and record [`crate::task::Outcome::Cancelled`].
    CancelRequested,
    /// The attempt no longer holds the task (taken back); nothing written.
    Lost,
}

/// How many times a cancel re-reads a task whose status changed between its
/// statements (a claim or an outcome landed in between).
const CANCEL_ROUNDS: usize = 4;

impl Db {
    /// Cancels a task: `pending`/`retrying` → `cancelled` at once
    /// (`finished_at` set); `running` → the stop is recorded for its worker.
    pub fn cancel(&self, id: TaskId) -> DbResult<CancelAnswer> {
        let now = Utc::now();
        with_conn!(self, |conn, s| {
            use s::tasks::dsl as t;
            for _ in 0..CANCEL_ROUNDS {
                let cancelled = diesel::update(
                    t::tasks
                        .filter(t::id.eq(id))
                        .filter(t::status.eq_any(TaskStatus::CLAIMABLE)),
                )
                .set((
                    t::status.eq(TaskStatus::Cancelled),
                    t::finished_at.eq(now),
                    t::run_after.eq(None::<DateTime<Utc>>),
                    t::updated_at.eq(now),
                ))
                .execute(conn)?;
                if cancelled == 1 {
                    return Ok(CancelAnswer::Cancelled);
                }
                let requested = diesel::update(
                    t::tasks
                        .filter(t::id.eq(id))
                        .filter(t::status.eq(TaskStatus::Running)),
                )
                .set((
                    // A repeated request moves the time: it is when the
                    // last request was made.
                    t::cancel_requested_at.eq(now),
                    t::updated_at.eq(now),
                ))
                .returning(t::attempts)
                .get_results::<i32>(conn)?;
                if let [attempt] = requested[..] {
                    return Ok(CancelAnswer::StopRequested { attempt });
                }
                let status = t::tasks
                    .select(t::status)
                    .filter(t::id.eq(id))
                    .first::<TaskStatus>(conn)
                    .optional()?;
                match status {
                    None => return Ok(CancelAnswer::NotFound),
                    Some(TaskStatus::Cancelled) => return Ok(CancelAnswer::AlreadyCancelled),
                    Some(status @ (TaskStatus::Succeeded | TaskStatus::Failed)) => {
                        return Ok(CancelAnswer::Finished(status))
                    }
                    // Claimed or ended between the statements: again.
                    Some(_) => continue,
                }
            }
            Err(super::DbError::Unavailable(format!(
                "task {id} kept changing while it was being cancelled"
            )))
        })
    }

    /// Makes a `failed` or `cancelled` task `pending` again, with a fresh
    /// budget: `max_attempts` becomes the attempts so far plus
    /// `budget(event_type)` (the route's `max_attempts`). Its attempts stay
    /// in its history and the next one continues their numbering; result,
    /// error, `finished_at` and any cancel request are cleared. The task is
    /// locked for publishing until `publish_lock_until`, as a new task is.
    pub fn retry(
        &self,
        id: TaskId,
        budget: impl Fn(&str) -> i32,
        publish_lock_until: DateTime<Utc>,
    ) -> DbResult<RetryAnswer> {
        let now = Utc::now();
        // No transaction: the update is a compare-and-set on what was read.
        // (A read and then a write in one SQLite transaction fails at once
        // with "database is locked", busy_timeout or not, when another
        // connection writes in between — a broker confirm being recorded.)
        with_conn!(self, |conn, s| {
            use s::tasks::dsl as t;
            let row = t::tasks
                .select((t::status, t::attempts, t::event_type))
                .filter(t::id.eq(id))
                .first::<(TaskStatus, i32, String)>(conn)
                .optional()?;
            let Some((status, attempts, event_type)) = row else {
                return Ok(RetryAnswer::NotFound);
            };
            if !RETRYABLE.contains(&status) {
                return Ok(RetryAnswer::NotRetryable(status));
            }
            let max_attempts = attempts.saturating_add(budget(&event_type).max(1));
            let retried = diesel::update(
                t::tasks
                    .filter(t::id.eq(id))
                    .filter(t::status.eq(status))
                    .filter(t::attempts.eq(attempts)),
            )
            .set((
                (
                    t::status.eq(TaskStatus::Pending),
                    t::max_attempts.eq(max_attempts),
                    t::result.eq(None::<serde_json::Value>),
                    t::error.eq(None::<String>),
                    t::finished_at.eq(None::<DateTime<Utc>>),
                    t::run_after.eq(None::<DateTime<Utc>>),
                ),
                (
                    t::cancel_requested_at.eq(None::<DateTime<Utc>>),
                    t::enqueued_at.eq(None::<DateTime<Utc>>),
                    t::publish_lock_until.eq(publish_lock_until),
                    t::updated_at.eq(now),
                ),
            ))
            .execute(conn)?;
            if retried == 1 {
                return Ok(RetryAnswer::Retried { max_attempts });
            }
            // Someone else retried (or deleted) it between the statements.
            let status = t::tasks
                .select(t::status)
                .filter(t::id.eq(id))
                .first::<TaskStatus>(conn)
                .optional()?;
            Ok(status.map_or(RetryAnswer::NotFound, RetryAnswer::NotRetryable))
        })
    }

    /// [`Db::renew_lease`] that also says whether a client asked to cancel
    /// the task: the fallback for a cancel whose control message did not
    /// reach the worker.
    pub fn renew_lease_or_cancel(
        &self,
        attempt: AttemptRef,
        lease_until: DateTime<Utc>,
    ) -> DbResult<Lease> {
        with_conn!(self, |conn, s| {
            use s::tasks::dsl as t;
            let renewed = diesel::update(
                t::tasks
                    .filter(t::id.eq(attempt.task))
                    .filter(t::status.eq(TaskStatus::Running))
                    .filter(t::attempts.eq(attempt.attempt)),
            )
            .set(t::lease_expires_at.eq(lease_until))
            .returning(t::cancel_requested_at)
            .get_results::<Option<DateTime<Utc>>>(conn)?;
            Ok(match renewed.first() {
                None => Lease::Lost,
                Some(None) => Lease::Held,
                Some(Some(_)) => Lease::CancelRequested,
            })
        })
    }
}

/// The states `POST /tasks/<id>/retry` runs again.
const RETRYABLE: [TaskStatus; 2] = [TaskStatus::Failed, TaskStatus::Cancelled];
