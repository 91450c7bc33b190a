//! Events: every change of a task's status, in order, as the triggers of
//! migration `2026-12-04-000001_task_events` write them (in the
//! transaction of the change). `GET /status/<id>/events` streams them and
//! replays them after a `Last-Event-ID`; the api's one shared reader (its
//! waiters' hub) reads the new ones of every watched task in one query.
//! Nothing here writes: the triggers do.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use serde::Serialize;

use super::{Db, DbResult};
use crate::task::{TaskId, TaskStatus};

/// Tasks whose events one statement reads, at most (bound parameters stay
/// well under both backends' limits).
pub const EVENTS_CHUNK: usize = 500;

/// One change of a task's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Queryable, Serialize, utoipa::ToSchema)]
pub struct TaskEvent {
    /// The task.
    #[serde(rename = "id")]
    pub task: TaskId,
    /// Its place among the task's events: 1 for the insert, then one more
    /// per change.
    pub seq: i32,
    /// The status the task went to.
    pub status: TaskStatus,
    /// When (the writer's clock).
    #[serde(serialize_with = "crate::rfc3339::at")]
    #[diesel(deserialize_as = super::stamp::Stamp)]
    pub at: DateTime<Utc>,
}

impl Db {
    /// The events of each `(task, after)` of `tasks` whose `seq` is above
    /// `after`, ordered by task and then `seq`: one statement per
    /// [`EVENTS_CHUNK`] tasks, whatever their number.
    pub fn task_events_after(&self, tasks: &[(TaskId, i32)]) -> DbResult<Vec<TaskEvent>> {
        let mut events = Vec::new();
        for chunk in tasks.chunks(EVENTS_CHUNK) {
            let after: HashMap<TaskId, i32> = chunk.iter().copied().collect();
            let ids: Vec<TaskId> = after.keys().copied().collect();
            // One lower bound for the chunk keeps the statement simple and
            // still skips most old rows; the exact bound is applied below.
            let floor = chunk.iter().map(|(_, seq)| *seq).min().unwrap_or(0);
            let rows: Vec<TaskEvent> = with_conn!(self, |conn, s| {
                use s::task_events::dsl as e;
                e::task_events
                    .select((e::task_id, e::seq, e::status, e::at))
                    .filter(e::task_id.eq_any(&ids))
                    .filter(e::seq.gt(floor))
                    .order((e::task_id, e::seq))
                    .load(conn)?
            });
            events.extend(rows.into_iter().filter(|ev| ev.seq > after[&ev.task]));
        }
        Ok(events)
    }

    /// The events of one task above `after`, in order.
    pub fn task_events(&self, task: TaskId, after: i32) -> DbResult<Vec<TaskEvent>> {
        self.task_events_after(&[(task, after)])
    }
}
