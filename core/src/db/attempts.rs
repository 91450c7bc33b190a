//! Attempts: a worker claims a task, holds it by a lease it renews, and
//! records how the attempt ended; the relay takes back tasks whose lease
//! ran out (their worker is gone).
//!
//! Every write names the attempt ([`AttemptRef`]) and is a compare-and-set
//! on it: only the attempt that holds the task (running, with that attempt
//! number) changes it, so a worker that lost its lease cannot record an
//! outcome over the attempt that replaced it.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use diesel::dsl::{case_when, SqlTypeOf};
use diesel::prelude::*;
use serde_json::Value;

use super::dialect::{status_by_id, status_in, ClaimedRow, OneStatement, SetBased};
use super::{Db, DbError, DbResult};
use crate::task::{AttemptRef, AttemptWrite, AttemptWritten, Claimed, Outcome, TaskId, TaskStatus};

/// The rows of `$t` (a `tasks` dsl) that attempt `$attempt` still holds.
macro_rules! held_by {
    ($t:ident, $attempt:expr) => {
        $t::tasks
            .filter($t::id.eq($attempt.task))
            .filter($t::status.eq(TaskStatus::Running))
            .filter($t::attempts.eq($attempt.attempt))
    };
}

/// The columns every statement that ends an attempt writes: the attempt no
/// longer holds the task. (`dialect.rs` spells the same in its set-based
/// raw SQL.)
macro_rules! attempt_ended {
    ($t:ident, $now:expr) => {
        (
            $t::worker.eq(None::<String>),
            $t::lease_expires_at.eq(None::<DateTime<Utc>>),
            $t::updated_at.eq($now),
        )
    };
}

/// The publish marks cleared when a task may run again: it goes back
/// through the relay when it is due.
macro_rules! owed_again {
    ($t:ident) => {
        (
            $t::enqueued_at.eq(None::<DateTime<Utc>>),
            $t::publish_lock_until.eq(None::<DateTime<Utc>>),
        )
    };
}

/// Those of `$ids` that went back to `retrying` although a client asked to
/// cancel them while they ran: they become `cancelled` instead (the attempt
/// ended before the cancel reached its worker). `$retrying` is
/// [`status_by_id`] of `retrying`: a bound status lets SQLite, which has no
/// statistics, read every retrying task from `tasks_by_status` instead of
/// the ids from the primary key, a scan as long as the backlog.
macro_rules! cancel_requested_retries {
    ($t:ident, $ids:expr, $retrying:expr, $now:expr) => {
        diesel::update(
            $t::tasks
                .filter($t::id.eq_any($ids))
                .filter($retrying)
                .filter($t::cancel_requested_at.is_not_null()),
        )
        .set((
            $t::status.eq(TaskStatus::Cancelled),
            $t::finished_at.eq($now),
            $t::run_after.eq(None::<DateTime<Utc>>),
        ))
    };
}

/// The tasks of `$ids` a claim takes: claimable (`$claimable`, [`status_by_id`]
/// of [`TaskStatus::CLAIMABLE`], for the reason given at
/// `cancel_requested_retries!`) and due.
macro_rules! claimable_by_id {
    ($t:ident, $ids:expr, $claimable:expr, $now:expr) => {
        $t::tasks
            .filter($t::id.eq_any($ids))
            .filter($claimable)
            .filter($t::run_after.is_null().or($t::run_after.le($now)))
    };
}

/// Running tasks whose lease ran out before `$now`: a range read of
/// `tasks_running_lease`. `$running` is [`status_in`] of `running`.
macro_rules! lease_lost {
    ($t:ident, $running:expr, $now:expr) => {
        $running.and($t::lease_expires_at.lt($now))
    };
}

/// Claims the tasks `$ids` (see [`Db::claim_many`]) on `$conn`, whose
/// schema is `$s`: the rows claimed, in no order.
macro_rules! claim_rows {
    ($conn:ident, $s:ident, $ids:expr, $worker:expr, $lease_until:expr, $now:expr) => {{
        use $s::task_attempts::dsl as a;
        use $s::tasks::dsl as t;
        let (ids, worker, lease_until, now) = ($ids, $worker, $lease_until, $now);
        match $conn.claim_at_once(ids, worker, lease_until, now)? {
            Some(claimed) => Ok::<_, DbError>(claimed),
            None => $conn.transaction::<_, DbError, _>(|conn| {
                // One statement claims the batch, first attempts' start
                // included; PostgreSQL locks the rows in index order, so
                // concurrent batches cannot deadlock.
                let claimable = status_by_id(&*conn, &TaskStatus::CLAIMABLE);
                let claimed = diesel::update(claimable_by_id!(t, ids, claimable, now))
                    .set((
                        t::status.eq(TaskStatus::Running),
                        t::attempts.eq(t::attempts + 1),
                        t::worker.eq(worker),
                        t::lease_expires_at.eq(lease_until),
                        t::updated_at.eq(now),
                        // When the first attempt started.
                        t::started_at.eq(case_when::<_, _, SqlTypeOf<t::started_at>>(
                            t::started_at.is_null(),
                            now,
                        )
                        .otherwise(t::started_at)),
                    ))
                    .returning((t::id, t::attempts, t::max_attempts, t::event_type, t::event))
                    .get_results::<(TaskId, i32, i32, String, Value)>(conn)?;
                if claimed.is_empty() {
                    return Ok(claimed);
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
                Ok(claimed)
            }),
        }
    }};
}

/// Records how the attempts `$attempts` ended (see [`Db::finish_many`]) on
/// `$conn`, whose schema is `$s`: whether each was recorded, in order.
macro_rules! finish_rows {
    ($conn:ident, $s:ident, $attempts:expr, $now:expr) => {{
        use $s::task_attempts::dsl as a;
        use $s::tasks::dsl as t;
        let (attempts, now): (&[(AttemptRef, Outcome)], _) = ($attempts, $now);
        let all_succeeded = attempts
            .iter()
            .all(|(_, outcome)| matches!(outcome, Outcome::Succeeded(_)));
        // The happy path, where the backend can, in one statement.
        let at_once = if all_succeeded {
            $conn.finish_successes_at_once(attempts, now)?
        } else {
            None
        };
        match at_once {
            Some(recorded) => Ok::<_, DbError>(
                attempts
                    .iter()
                    .map(|(a, _)| recorded.contains(a))
                    .collect::<Vec<bool>>(),
            ),
            None => $conn.transaction::<_, DbError, _>(|conn| {
                let mut answers = vec![false; attempts.len()];
                let mut succeeded = Vec::new();
                // Successes, the happy path, in one statement; the other
                // outcomes one row at a time.
                let recorded = conn.record_successes(attempts, now)?;
                for i in order_by_id(attempts.iter().map(|(attempt, _)| attempt.task)) {
                    let (attempt, outcome) = &attempts[i];
                    if let Outcome::Succeeded(_) = outcome {
                        if recorded.contains(attempt) {
                            answers[i] = true;
                            succeeded.push(attempt.task);
                        }
                        continue;
                    }
                    let (status, result, error, finished_at, run_after) = ending(outcome, now);
                    let uncounted = i32::from(matches!(outcome, Outcome::HandedBack(_)));
                    let updated = diesel::update(held_by!(t, attempt))
                        .set((
                            (
                                t::status.eq(status),
                                t::result.eq(result),
                                t::error.eq(error),
                                t::finished_at.eq(finished_at),
                                t::run_after.eq(run_after),
                                t::max_attempts.eq(t::max_attempts + uncounted),
                            ),
                            attempt_ended!(t, now),
                            // A retry goes back through the relay when it is due.
                            owed_again!(t),
                        ))
                        .execute(conn)?;
                    if updated == 0 {
                        continue;
                    }
                    answers[i] = true;
                    diesel::update(
                        a::task_attempts
                            .filter(a::task_id.eq(attempt.task))
                            .filter(a::attempt.eq(attempt.attempt)),
                    )
                    .set((a::finished_at.eq(now), a::error.eq(error)))
                    .execute(conn)?;
                }
                // An attempt that ended in a retry after a client asked to
                // cancel it: the task is cancelled, not run again. Only
                // the outcomes that retry can leave a task retrying: a
                // batch without one (all successes, say) needs no statement.
                let retried: Vec<TaskId> = attempts
                    .iter()
                    .zip(&answers)
                    .filter(|((_, outcome), recorded)| {
                        **recorded
                            && matches!(outcome, Outcome::Retry { .. } | Outcome::HandedBack(_))
                    })
                    .map(|((attempt, _), _)| attempt.task)
                    .collect();
                if !retried.is_empty() {
                    let retrying = status_by_id(&*conn, &[TaskStatus::Retrying]);
                    cancel_requested_retries!(t, &retried, retrying, now).execute(conn)?;
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
            }),
        }
    }};
}

/// The answers to a claim of `ids`, in their order, from the rows claimed.
/// A task delivered twice in one batch is claimed once: the first of its
/// callers gets it.
fn claims_in_order(ids: &[TaskId], rows: Vec<ClaimedRow>) -> Vec<Option<Claimed>> {
    let mut by_id: HashMap<TaskId, Claimed> = rows
        .into_iter()
        .map(|(id, attempt, max_attempts, event_type, event)| {
            let claim = Claimed {
                attempt,
                max_attempts,
                event_type,
                event,
            };
            (id, claim)
        })
        .collect();
    ids.iter().map(|id| by_id.remove(id)).collect()
}

/// Indexes of `ids` in id order: batches lock rows in one global order.
pub(super) fn order_by_id(ids: impl Iterator<Item = TaskId>) -> Vec<usize> {
    let mut order: Vec<(TaskId, usize)> = ids.zip(0..).collect();
    order.sort_by_key(|(id, _)| id.0);
    order.into_iter().map(|(_, i)| i).collect()
}

impl Db {
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
            let rows = claim_rows!(conn, s, ids, worker, lease_until, now)?;
            Ok(claims_in_order(ids, rows))
        })
    }

    /// Extends the lease of a running attempt. False if the attempt no
    /// longer holds the task (its lease expired and it was taken back).
    pub fn renew_lease(&self, attempt: AttemptRef, lease_until: DateTime<Utc>) -> DbResult<bool> {
        with_conn!(self, |conn, s| {
            use s::tasks::dsl as t;
            let renewed = diesel::update(held_by!(t, attempt))
                .set(t::lease_expires_at.eq(lease_until))
                .execute(conn)?;
            Ok(renewed == 1)
        })
    }

    /// Records how an attempt ended. False if the attempt no longer holds
    /// the task, in which case nothing is written.
    pub fn finish(&self, attempt: AttemptRef, outcome: &Outcome) -> DbResult<bool> {
        Ok(self.finish_many(&[(attempt, outcome.clone())])?[0])
    }

    /// [`Db::finish`] for several attempts in one transaction (group
    /// commit); one answer per attempt, in order.
    pub fn finish_many(&self, attempts: &[(AttemptRef, Outcome)]) -> DbResult<Vec<bool>> {
        let now = Utc::now();
        with_conn!(self, |conn, s| finish_rows!(conn, s, attempts, now))
    }

    /// A worker's group commit: its claims (as [`Db::claim_many`], for
    /// `worker`, leased until `lease_until`) and its outcomes (as
    /// [`Db::finish_many`]) in one transaction. SQLite has one writer at a
    /// time: each transaction a worker does not open is one turn at the
    /// lock the api's inserts need not wait for. One answer per write, in
    /// order.
    pub fn write_attempts(
        &self,
        writes: &[AttemptWrite],
        worker: &str,
        lease_until: DateTime<Utc>,
    ) -> DbResult<Vec<AttemptWritten>> {
        let now = Utc::now();
        let mut claims = Vec::new();
        let mut outcomes = Vec::new();
        for write in writes {
            match write {
                AttemptWrite::Claim(id) => claims.push(*id),
                AttemptWrite::Finish(attempt, outcome) => {
                    outcomes.push((*attempt, outcome.clone()))
                }
            }
        }
        let (claimed, recorded) = with_conn!(self, |conn, s| {
            super::pool::in_turn(conn, |conn| {
                match (claims.is_empty(), outcomes.is_empty()) {
                    (false, false) => conn.transaction::<_, DbError, _>(|conn| {
                        let rows = claim_rows!(conn, s, &claims, worker, lease_until, now)?;
                        let recorded = finish_rows!(conn, s, &outcomes, now)?;
                        Ok((rows, recorded))
                    }),
                    (false, true) => Ok((
                        claim_rows!(conn, s, &claims, worker, lease_until, now)?,
                        Vec::new(),
                    )),
                    (true, false) => Ok((Vec::new(), finish_rows!(conn, s, &outcomes, now)?)),
                    (true, true) => Ok((Vec::new(), Vec::new())),
                }
            })
        })?;
        let mut claimed = claims_in_order(&claims, claimed).into_iter();
        let mut recorded = recorded.into_iter();
        Ok(writes
            .iter()
            .map(|write| match write {
                AttemptWrite::Claim(_) => AttemptWritten::Claimed(claimed.next().flatten()),
                AttemptWrite::Finish(..) => {
                    AttemptWritten::Finished(recorded.next().unwrap_or(false))
                }
            })
            .collect())
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
                let running = status_in(conn, &[TaskStatus::Running]);
                let retried = diesel::update(
                    t::tasks
                        .filter(lease_lost!(t, running.clone(), now))
                        .filter(t::attempts.lt(t::max_attempts)),
                )
                .set((
                    t::status.eq(TaskStatus::Retrying),
                    t::error.eq(LOST),
                    t::run_after.eq(now),
                    attempt_ended!(t, now),
                    owed_again!(t),
                ))
                .returning((t::id, t::attempts))
                .get_results::<AttemptRef>(conn)?;
                let failed = diesel::update(t::tasks.filter(lease_lost!(t, running, now)))
                    .set((
                        t::status.eq(TaskStatus::Failed),
                        t::error.eq(LOST),
                        t::finished_at.eq(now),
                        attempt_ended!(t, now),
                    ))
                    .returning((t::id, t::attempts))
                    .get_results::<AttemptRef>(conn)?;
                let retried_ids: Vec<TaskId> = retried.iter().map(|a| a.task).collect();
                let retrying = status_by_id(&*conn, &[TaskStatus::Retrying]);
                cancel_requested_retries!(t, &retried_ids, retrying, now).execute(conn)?;
                for attempt in retried.iter().chain(&failed) {
                    diesel::update(
                        a::task_attempts
                            .filter(a::task_id.eq(attempt.task))
                            .filter(a::attempt.eq(attempt.attempt))
                            .filter(a::finished_at.is_null()),
                    )
                    .set((a::finished_at.eq(now), a::error.eq(LOST)))
                    .execute(conn)?;
                }
                Ok(retried.len() + failed.len())
            })
        })
    }
}

/// What an outcome writes to its task: status, result, error, finished_at
/// and run_after.
type Ending<'a> = (
    TaskStatus,
    Option<&'a Value>,
    Option<&'a str>,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
);

fn ending(outcome: &Outcome, now: DateTime<Utc>) -> Ending<'_> {
    match outcome {
        Outcome::Succeeded(value) => (TaskStatus::Succeeded, Some(value), None, Some(now), None),
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
        Outcome::Cancelled(error) => (
            TaskStatus::Cancelled,
            None,
            Some(error.as_str()),
            Some(now),
            None,
        ),
    }
}
