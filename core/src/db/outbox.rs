//! The outbox: tasks the broker owes a message for.
//!
//! A task is committed before it is published, so a crash in between must
//! not lose it: a task is owed to the broker until its publish is confirmed
//! (`enqueued_at`). Whoever publishes holds a publish lock
//! (`publish_lock_until`) so two publishers rarely send the same task; the
//! relay claims what no one is publishing. A duplicate message is harmless
//! (a claim is a compare-and-set), a missing one is not.

use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::prelude::*;

use super::dialect::RowLocking;
use super::{Db, DbResult};
use crate::task::{TaskId, TaskStatus};

impl Db {
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
        with_conn!(self, |conn, s| Ok(conn.mark_enqueued(ids, now)?))
    }

    /// Forgets every publish of unfinished tasks: for a queue that did not
    /// survive the last process (the in-process queue), so the relay
    /// publishes them again. Returns how many tasks are owed again.
    pub fn forget_enqueued(&self) -> DbResult<usize> {
        with_conn!(self, |conn, s| {
            use s::tasks::dsl as t;
            Ok(diesel::update(
                t::tasks
                    .filter(t::status.eq_any(TaskStatus::CLAIMABLE))
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
        with_conn!(self, |conn, s| Ok(
            conn.claim_unpublished(limit, now, until)?
        ))
    }
}
