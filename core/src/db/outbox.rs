//! The outbox: tasks the broker owes a message for.
//!
//! A task is committed before it is published, so a crash in between must
//! not lose it: a task is owed to the broker until its publish is confirmed
//! (`enqueued_at`). Whoever publishes holds a publish lock
//! (`publish_lock_until`) so two publishers rarely send the same task; the
//! relay claims what no one is publishing. A duplicate message is harmless
//! (a claim is a compare-and-set), a missing one is not.
//!
//! A confirm is not the end of it: the broker can still lose a message it
//! confirmed (a purged or deleted queue, a node's disk). Such a task is
//! `pending` with `enqueued_at` set, like any task whose message waits in
//! the queue; [`Db::claim_lost`] tells them apart by the queue's depth
//! (see [`LostBound`]) and gives them back to the outbox.

use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::prelude::*;

use super::dialect::{status_in, RowLocking};
use super::{Db, DbResult};
use crate::task::{TaskId, TaskStatus};

/// Tasks counted at most when the relay compares what the database
/// believes the queue holds with the queue's depth: the count is an index
/// range read, so it is bounded however long the backlog. The cost of the
/// bound: lost messages are found once the ready messages name fewer than
/// this many tasks (see [`LostBound`]).
pub const LOST_COUNT_CAP: u64 = 10_000;

/// The relay's rule for how many tasks whose message was confirmed may be
/// republished as lost in one round, without flooding a queue that is
/// merely long.
///
/// Let M be the claimable tasks whose message the broker confirmed before
/// the queue's ready depth was measured (`enqueued_at` ≤ the time the
/// depth was asked for; claimed tasks are not counted), and D the most
/// tasks the ready messages can name (`Queue::tasks_in`: a RabbitMQ
/// message names up to `MESSAGE_TASKS`, so D is the depth times that).
/// Each task of M has its message ready in the queue (counted in D), or
/// held unacknowledged by a worker that has not claimed it yet (in its
/// prefetch), or lost. D also counts tasks not in M (duplicates, tasks
/// cancelled or claimed since, tasks confirmed after the measure, the
/// room of messages that name fewer than the most), which only lowers
/// M − D. So at most M − D tasks are missing, and a round
/// republishes at most `min(M − D, batch)` tasks, of those whose message
/// was confirmed more than `republish_after` ago and that are due, oldest
/// `enqueued_at` first: a queue is first in, first out, so the ready
/// messages belong to the most recently confirmed tasks, and the missing
/// ones are among the oldest.
///
/// A long queue with nothing lost has D ≥ M and republishes nothing; a
/// queue that lost some messages and still holds others republishes the
/// lost ones once what it holds names fewer than M (at the latest once it
/// is empty), so a loss beside a queue of one-task messages costs time,
/// never the task. A
/// worker's prefetched messages are not in D: they are republished only
/// once older than `republish_after` (bounded by the workers' prefetch,
/// and a duplicate is harmless: the claim is a compare-and-set). M is
/// counted up to `min(D + batch, LOST_COUNT_CAP)`, which is all the rule
/// needs below the cap; a queue deeper than [`LOST_COUNT_CAP`] republishes
/// nothing until it drains below it, so a loss inside a deep backlog costs
/// time, never the task. `enqueued_at` is written on the clock of the
/// process that saw the confirm: hosts whose clocks disagree can only
/// count in M tasks confirmed just after D was measured, which are not
/// stale, so the error is a few harmless duplicates among the stale ones,
/// never a flood. Republished tasks lose `enqueued_at` in the same
/// transaction, so the next count no longer holds them, and relays of
/// several processes take the decision one at a time
/// ([`Db::claim_lost`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LostBound {
    /// The most tasks the queue's ready messages name, D.
    pub depth: u64,
    /// Most tasks republished in one round.
    pub batch: u64,
}

impl LostBound {
    /// How many confirmed, unclaimed tasks to count (M is needed only up
    /// to D + batch); `None` when D alone rules out a loss this round.
    pub fn count_limit(self) -> Option<u64> {
        (self.depth < LOST_COUNT_CAP)
            .then(|| self.depth.saturating_add(self.batch).min(LOST_COUNT_CAP))
    }

    /// How many stale tasks may be republished, given `believed` (M,
    /// counted up to [`LostBound::count_limit`]).
    pub fn republish(self, believed: u64) -> u64 {
        believed.saturating_sub(self.depth).min(self.batch)
    }
}

/// [`Db::any_stale`]'s probe: the oldest confirm of a claimable task
/// before `$before`, one entry of `tasks_confirmed`. `$claimable` is
/// [`status_in`] of the claimable statuses.
macro_rules! oldest_stale {
    ($t:ident, $claimable:expr, $before:expr) => {
        $t::tasks
            .select($t::enqueued_at)
            .filter($t::enqueued_at.lt($before))
            .filter($claimable)
            // In index order: without it PostgreSQL may guess that a
            // table scan finds one row sooner, and read much of it.
            .order($t::enqueued_at)
            .limit(1)
    };
}

impl Db {
    /// Records that the broker confirmed these tasks' messages; how many
    /// rows were marked. Only rows still waiting for their message and
    /// locked for publishing are marked: a task that a worker claimed
    /// meanwhile needs no mark (the relay publishes only claimable tasks),
    /// and one that was claimed and sent back to retrying had its lock
    /// cleared, and must stay owed to the relay.
    ///
    /// On PostgreSQL, rows a worker holds right now are skipped rather than
    /// waited for: waiting deadlocked against outcome batches that lock in
    /// another order. Skipping is safe: a claimed task is not the relay's to
    /// publish, and one whose claim rolled back is republished when its
    /// publish lock runs out, a harmless duplicate.
    pub fn mark_enqueued(&self, ids: &[TaskId]) -> DbResult<usize> {
        let now = Utc::now();
        with_conn!(self, |conn, s| Ok(super::pool::in_turn(conn, |conn| {
            conn.mark_enqueued(ids, now)
        })?))
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

    /// Whether some claimable task's message was confirmed before
    /// `stale_before` and the task is not claimed yet: the relay's cheap
    /// first look for lost messages (one index probe), before it asks the
    /// broker for the queue's depth.
    pub fn any_stale(&self, stale_before: DateTime<Utc>) -> DbResult<bool> {
        with_conn!(self, |conn, s| {
            use s::tasks::dsl as t;
            let claimable = status_in(conn, &TaskStatus::CLAIMABLE);
            let found =
                oldest_stale!(t, claimable, stale_before).load::<Option<DateTime<Utc>>>(conn)?;
            Ok(!found.is_empty())
        })
    }

    /// Takes back, as owed, the tasks whose message the broker confirmed
    /// but no longer holds, by [`LostBound`]: at most
    /// `bound.republish(M)` of the claimable, due tasks confirmed before
    /// `stale_before`, oldest confirm first, where M counts the claimable
    /// tasks confirmed at or before `measured_at` (when the depth was
    /// asked for). They lose `enqueued_at` and are locked for publishing
    /// until `lock_for` from now, like [`Db::claim_unpublished`]'s: the
    /// caller publishes them, or the relay does once the lock runs out.
    ///
    /// Count and take are one transaction, and one relay at a time decides
    /// (a transaction-scoped advisory lock on PostgreSQL, which others skip
    /// instead of waiting for; SQLite's write lock, taken at the start), so
    /// relays in several processes never each republish the same shortfall.
    pub fn claim_lost(
        &self,
        bound: LostBound,
        measured_at: DateTime<Utc>,
        stale_before: DateTime<Utc>,
        lock_for: Duration,
    ) -> DbResult<Vec<TaskId>> {
        let now = Utc::now();
        let until = now + lock_for;
        let window = LostWindow {
            bound,
            measured_at,
            stale_before,
            now,
            until,
        };
        with_conn!(self, |conn, s| Ok(conn.claim_lost(window)?))
    }
}

/// [`Db::claim_lost`]'s arguments, as `dialect.rs` takes them.
#[derive(Debug, Clone, Copy)]
pub(super) struct LostWindow {
    pub(super) bound: LostBound,
    pub(super) measured_at: DateTime<Utc>,
    pub(super) stale_before: DateTime<Utc>,
    pub(super) now: DateTime<Utc>,
    pub(super) until: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bound(depth: u64, batch: u64) -> LostBound {
        LostBound { depth, batch }
    }

    #[test]
    fn a_queue_holding_every_message_republishes_nothing() {
        assert_eq!(bound(0, 500).republish(0), 0);
        assert_eq!(bound(100, 500).republish(100), 0);
        // Duplicates and messages of cancelled tasks make D exceed M.
        assert_eq!(bound(120, 500).republish(100), 0);
    }

    #[test]
    fn at_most_the_shortfall_and_the_batch() {
        // A purged queue: everything counted is missing, a batch a round.
        assert_eq!(bound(0, 500).republish(200), 200);
        assert_eq!(bound(0, 500).republish(2_000), 500);
        // 30 of 130 missing.
        assert_eq!(bound(100, 500).republish(130), 30);
        assert_eq!(bound(100, 10).republish(130), 10);
    }

    #[test]
    fn the_count_stops_where_the_rule_does() {
        // M is needed only up to D + batch: more cannot raise the answer.
        assert_eq!(bound(100, 500).count_limit(), Some(600));
        let b = bound(100, 500);
        assert_eq!(b.republish(600), b.republish(1_000_000));
        // Capped, so a deep backlog is never counted row by row.
        assert_eq!(bound(9_800, 500).count_limit(), Some(LOST_COUNT_CAP));
        // A capped count is at most M, so the answer is at most the true
        // shortfall: never more republished than can be missing.
        let b = bound(9_800, 500);
        assert_eq!(b.republish(LOST_COUNT_CAP), 200);
        assert!(b.republish(LOST_COUNT_CAP) <= b.republish(10_300));
    }

    #[test]
    fn a_queue_deeper_than_the_cap_is_not_counted() {
        assert_eq!(bound(LOST_COUNT_CAP, 500).count_limit(), None);
        assert_eq!(bound(1_000_000, 500).count_limit(), None);
        assert_eq!(bound(u64::MAX, u64::MAX).republish(u64::MAX), 0);
    }
}
