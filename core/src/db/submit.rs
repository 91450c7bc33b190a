//! Submit: `/receive` stores tasks, once per event.
//!
//! A task is stored at most once per (source, id) event: a repeated event
//! gets the existing task back, or a conflict if it carries other content.
//! New tasks come with a publish lock for their caller, who publishes them
//! right after the commit; the relay (`outbox.rs`) takes over only if that
//! lock runs out. A request's `Idempotency-Key` names at most one task
//! too: the same key with the same event is that task again, with another
//! event a key conflict. A delayed task (`run_after` in the future) gets no
//! publish lock: the relay publishes it once due. With the in-process queue
//! a due task is stored as enqueued already ([`Publish::Enqueued`]), which
//! spares a second write of every row.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use diesel::prelude::*;

use super::dialect::{OneStatement, RowLocking};
use super::{Db, DbResult};
use crate::task::{NewTask, Stored, SubmitWrite, TaskId, TaskStatus};

/// Rows per insert statement. The statement's parameters are the same for
/// any chunk (the rows are one JSON parameter on SQLite, one array per
/// column on PostgreSQL: `dialect.rs`); the chunk bounds how much one
/// statement carries.
const INSERT_CHUNK: usize = 500;

/// What an insert records of how its due tasks reach the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Publish {
    /// The caller publishes them and then records the confirm
    /// ([`Db::mark_enqueued`]); until this time nobody else does, after it
    /// the relay does.
    LockedUntil(DateTime<Utc>),
    /// They count as enqueued from the commit: for the in-process queue,
    /// whose publish cannot fail while the process lives, and which starts
    /// empty, so that a new process owes every unfinished task again
    /// ([`Db::forget_enqueued`]). The confirm's separate update of each row
    /// is spared.
    Enqueued,
}

impl Db {
    /// Stores tasks in one transaction. An event already stored (same source
    /// and id) is not stored again: its existing task is returned. New tasks
    /// are marked as being published by the caller until `publish_lock_until`,
    /// after which the relay takes them over; those not yet due (`run_after`
    /// later than now) are left to the relay from the start. A task whose
    /// `idempotency_key` is already held returns the holder, marked
    /// `key_conflict` if its event differs.
    pub fn insert_tasks(
        &self,
        tasks: &[NewTask],
        publish_lock_until: DateTime<Utc>,
    ) -> DbResult<Vec<Stored>> {
        let tasks: Vec<&NewTask> = tasks.iter().collect();
        self.insert_task_refs(&tasks, Publish::LockedUntil(publish_lock_until))
    }

    /// [`Db::insert_tasks`] for tasks owned elsewhere (the requests of a
    /// group commit), without copying them; `publish` says what is
    /// recorded of the due tasks' publish.
    pub fn insert_task_refs(&self, tasks: &[&NewTask], publish: Publish) -> DbResult<Vec<Stored>> {
        self.insert_and_mark_enqueued(tasks, publish, &[])
    }

    /// The api's group commit: the tasks of the [`SubmitWrite::Insert`]s
    /// stored as [`Db::insert_task_refs`] stores them, and the
    /// [`SubmitWrite::Confirmed`]s recorded as [`Db::mark_enqueued`] does,
    /// in one transaction (inserts alone, one statement, in none). On
    /// SQLite, which has one writer at a time, the confirms then take no
    /// turn at the lock of their own. The tasks stored for each write, in
    /// order (none for a confirm).
    pub fn write_submits(
        &self,
        writes: &[SubmitWrite],
        publish: Publish,
    ) -> DbResult<Vec<Vec<Stored>>> {
        let tasks: Vec<&NewTask> = writes.iter().flat_map(SubmitWrite::tasks).collect();
        let confirmed: Vec<TaskId> = writes
            .iter()
            .flat_map(SubmitWrite::confirmed)
            .copied()
            .collect();
        let mut stored = self
            .insert_and_mark_enqueued(&tasks, publish, &confirmed)?
            .into_iter();
        Ok(writes
            .iter()
            .map(|write| stored.by_ref().take(write.tasks().len()).collect())
            .collect())
    }

    fn insert_and_mark_enqueued(
        &self,
        tasks: &[&NewTask],
        publish: Publish,
        confirmed: &[TaskId],
    ) -> DbResult<Vec<Stored>> {
        if tasks.is_empty() {
            // No transaction for a lone statement.
            if !confirmed.is_empty() {
                self.mark_enqueued(confirmed)?;
            }
            return Ok(Vec::new());
        }
        let now = Utc::now();
        let (lock, enqueued) = match publish {
            Publish::LockedUntil(until) => (Some(until), None),
            Publish::Enqueued => (None, Some(now)),
        };
        // A batch of inserts alone (no confirms, one chunk) is one statement:
        // atomic on its own, so it needs no transaction, and on PostgreSQL
        // it is one round trip instead of three (`BEGIN`, `INSERT`,
        // `COMMIT`). What follows it for tasks that were not created
        // (those already stored) only reads.
        let lone = confirmed.is_empty() && tasks.len() <= INSERT_CHUNK;
        with_conn!(self, |conn, s| {
            use s::tasks::dsl as t;
            let store = on_conn(&*conn, |conn| {
                let mut created = HashSet::with_capacity(tasks.len());
                // One statement per chunk, kept prepared (`dialect.rs`).
                for chunk in tasks.chunks(INSERT_CHUNK) {
                    let due = |task: &NewTask| is_due(task, now);
                    created.extend(conn.insert_at_once(chunk, lock, enqueued, now, &due)?);
                }
                let mut stored = Vec::with_capacity(tasks.len());
                for task in tasks {
                    if created.contains(&task.id) {
                        stored.push(Stored {
                            id: task.id,
                            status: TaskStatus::Pending,
                            created: true,
                            conflict: false,
                            key_conflict: false,
                        });
                        continue;
                    }
                    // The key is held (by a task stored earlier, or earlier
                    // in this batch): the holder answers, whatever the
                    // (source, id) says.
                    if let Some(key) = &task.idempotency_key {
                        let holder = t::tasks
                            .select((t::id, t::status, t::event_digest))
                            .filter(t::idempotency_key.eq(key))
                            .first::<(TaskId, TaskStatus, Option<String>)>(conn)
                            .optional()?;
                        if let Some((id, status, digest)) = holder {
                            stored.push(Stored {
                                id,
                                status,
                                created: false,
                                conflict: false,
                                key_conflict: digest.as_deref() != Some(task.digest.as_str()),
                            });
                            continue;
                        }
                    }
                    // The same event was already a task (or came twice in this batch).
                    let (id, status, digest) = t::tasks
                        .select((t::id, t::status, t::event_digest))
                        .filter(t::source.eq(&task.source))
                        .filter(t::event_id.eq(&task.event_id))
                        .first::<(TaskId, TaskStatus, Option<String>)>(conn)?;
                    stored.push(Stored {
                        id,
                        status,
                        created: false,
                        // Tasks stored before digests were kept have none.
                        conflict: digest.is_some_and(|d| d != task.digest),
                        key_conflict: false,
                    });
                }
                // Last, so that on PostgreSQL the confirmed rows are locked
                // only for the commit: a worker's claim of one waits for it.
                if !confirmed.is_empty() {
                    conn.mark_enqueued(confirmed, now)?;
                }
                Ok(stored)
            });
            if lone {
                super::pool::in_turn(conn, store)
            } else {
                conn.transaction(store)
            }
        })
    }
}

/// `f`, a closure over a connection of `conn`'s type (which the closure's
/// body needs before it is called).
fn on_conn<C, R>(_conn: &C, f: impl FnOnce(&mut C) -> R) -> impl FnOnce(&mut C) -> R {
    f
}

/// Whether `task` may run now: not delayed, or its `run_after` has passed.
fn is_due(task: &NewTask, now: DateTime<Utc>) -> bool {
    task.run_after.is_none_or(|at| at <= now)
}
