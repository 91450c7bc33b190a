//! The task model: ids, states, attempts, what happens to a task over its
//! life (stored, claimed, ended) and what a status report shows.
//!
//! Ids and states are diesel types, so queries compare them as values of
//! the model, never as strings.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use diesel::deserialize::{self, FromSql, FromSqlRow};
use diesel::expression::AsExpression;
use diesel::pg::Pg;
use diesel::serialize::{self, IsNull, Output, ToSql};
use diesel::sql_types::{Text, Uuid as SqlUuid};
use diesel::sqlite::Sqlite;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

/// A task's id: a UUID v7, stored natively on PostgreSQL and as text on SQLite.
///
/// Version 7 ids begin with their creation time in milliseconds (then 74
/// random bits), so tasks stored together sort together: a batch's inserts,
/// and later its claims and outcomes, land on the last few pages of every
/// index keyed by id (`tasks`' own, `task_attempts`, `task_events`) instead
/// of one page per task scattered across each. Random (v4) ids made SQLite
/// write about 110 KiB per task; v7 ids, about 46 KiB (BENCHMARKS.md).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, AsExpression, FromSqlRow, Serialize, ToSchema,
)]
#[diesel(sql_type = SqlUuid)]
#[diesel(sql_type = Text)]
#[serde(transparent)]
pub struct TaskId(pub Uuid);

impl TaskId {
    /// A fresh id: later than every id this process made before.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    /// This task's attempt number `attempt` (1 for the first).
    pub fn attempt(self, attempt: i32) -> AttemptRef {
        AttemptRef {
            task: self,
            attempt,
        }
    }
}

impl Default for TaskId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl FromStr for TaskId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

impl ToSql<SqlUuid, Pg> for TaskId {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
        <Uuid as ToSql<SqlUuid, Pg>>::to_sql(&self.0, out)
    }
}

impl FromSql<SqlUuid, Pg> for TaskId {
    fn from_sql(bytes: diesel::pg::PgValue<'_>) -> deserialize::Result<Self> {
        <Uuid as FromSql<SqlUuid, Pg>>::from_sql(bytes).map(Self)
    }
}

impl ToSql<Text, Sqlite> for TaskId {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Sqlite>) -> serialize::Result {
        out.set_value(self.to_string());
        Ok(IsNull::No)
    }
}

impl FromSql<Text, Sqlite> for TaskId {
    fn from_sql(bytes: diesel::sqlite::SqliteValue<'_, '_, '_>) -> deserialize::Result<Self> {
        let text = <String as FromSql<Text, Sqlite>>::from_sql(bytes)?;
        Ok(text.parse()?)
    }
}

/// Where a task is. Stored as its lowercase name ([`TaskStatus::as_str`]).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, AsExpression, FromSqlRow, Serialize, ToSchema,
)]
#[diesel(sql_type = Text)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    /// Stored, waiting for a worker.
    Pending,
    /// A worker holds it.
    Running,
    /// An attempt failed; another is scheduled.
    Retrying,
    /// Done; `result` holds the handler's output.
    Succeeded,
    /// Done; `error` holds the last attempt's error.
    Failed,
    /// Stopped before it finished.
    Cancelled,
}

impl TaskStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [Self; 6] = [
        Self::Pending,
        Self::Running,
        Self::Retrying,
        Self::Succeeded,
        Self::Failed,
        Self::Cancelled,
    ];

    /// The states a worker may claim (and the relay publishes).
    pub const CLAIMABLE: [Self; 2] = [Self::Pending, Self::Retrying];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Retrying => "retrying",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// Whether the task will never run again.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
}

impl fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TaskStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| format!("unknown task status {s:?}"))
    }
}

impl ToSql<Text, Pg> for TaskStatus {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
        <str as ToSql<Text, Pg>>::to_sql(self.as_str(), out)
    }
}

impl FromSql<Text, Pg> for TaskStatus {
    fn from_sql(bytes: diesel::pg::PgValue<'_>) -> deserialize::Result<Self> {
        let text = <String as FromSql<Text, Pg>>::from_sql(bytes)?;
        Ok(text.parse()?)
    }
}

impl ToSql<Text, Sqlite> for TaskStatus {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Sqlite>) -> serialize::Result {
        out.set_value(self.as_str());
        Ok(IsNull::No)
    }
}

impl FromSql<Text, Sqlite> for TaskStatus {
    fn from_sql(bytes: diesel::sqlite::SqliteValue<'_, '_, '_>) -> deserialize::Result<Self> {
        let text = <String as FromSql<Text, Sqlite>>::from_sql(bytes)?;
        Ok(text.parse()?)
    }
}

/// One attempt at running a task: the task and its attempt number. Every
/// write about a running attempt names it, so a late write from an attempt
/// that lost its lease cannot touch the attempt that replaced it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, diesel::Queryable)]
pub struct AttemptRef {
    /// The task.
    pub task: TaskId,
    /// Its attempt number (1 for the first).
    pub attempt: i32,
}

/// A new task, as `/receive` stores it.
#[derive(Debug, Clone)]
pub struct NewTask {
    /// Its id.
    pub id: TaskId,
    /// The event's type.
    pub event_type: String,
    /// The event's source.
    pub source: String,
    /// The event's id.
    pub event_id: String,
    /// The whole event.
    pub event: Value,
    /// The event's digest ([`crate::event::Event::digest`]): a repeated
    /// (source, id) with another digest is a conflict, not the same event.
    pub digest: String,
    /// Attempts its route allows.
    pub max_attempts: i32,
    /// The request's `Idempotency-Key`: at most one task holds a key.
    pub idempotency_key: Option<String>,
    /// Not run before this (the event's `notbefore`, or its arrival plus
    /// `delayseconds`); a task due later is not published on receipt but
    /// by the relay once due.
    pub run_after: Option<DateTime<Utc>>,
}

/// What storing a task did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    /// The task's id: the new one, or the existing task's for a repeated event.
    pub id: TaskId,
    /// Its status now.
    pub status: TaskStatus,
    /// False when the same (source, id) event was already a task.
    pub created: bool,
    /// True when that existing task holds a different event under the
    /// same (source, id): nothing was stored.
    pub conflict: bool,
    /// True when this request's `Idempotency-Key` is held by that existing
    /// task and its event differs from this one: nothing was stored.
    pub key_conflict: bool,
}

/// A task a worker has claimed: what it needs to run the attempt.
#[derive(Debug, Clone)]
pub struct Claimed {
    /// The attempt number this claim is (1 for the first).
    pub attempt: i32,
    /// Attempts the route allowed when the task was received.
    pub max_attempts: i32,
    /// The event's type.
    pub event_type: String,
    /// The whole event.
    pub event: Value,
}

/// One write of the api's group commit ([`crate::Db::write_submits`]).
#[derive(Debug, Clone)]
pub enum SubmitWrite {
    /// A `/receive` request's tasks, to store.
    Insert(Vec<NewTask>),
    /// Tasks stored and published before, whose publish the broker
    /// confirmed: recorded as enqueued ([`crate::Db::mark_enqueued`]).
    Confirmed(Vec<TaskId>),
}

impl SubmitWrite {
    /// The tasks it stores (none for a confirm).
    pub fn tasks(&self) -> &[NewTask] {
        match self {
            Self::Insert(tasks) => tasks,
            Self::Confirmed(_) => &[],
        }
    }

    /// The tasks whose confirm it records (none for an insert).
    pub fn confirmed(&self) -> &[TaskId] {
        match self {
            Self::Insert(_) => &[],
            Self::Confirmed(ids) => ids,
        }
    }
}

/// One write of a worker's group commit ([`crate::Db::write_attempts`]).
#[derive(Debug, Clone)]
pub enum AttemptWrite {
    /// Claim this task.
    Claim(TaskId),
    /// Record how this attempt ended.
    Finish(AttemptRef, Outcome),
}

/// The answer to an [`AttemptWrite`].
#[derive(Debug, Clone)]
pub enum AttemptWritten {
    /// The claim: `None` if the task was not claimable.
    Claimed(Option<Claimed>),
    /// The outcome: false if the attempt no longer held the task, and
    /// nothing was written.
    Finished(bool),
}

/// How an attempt ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The handler succeeded with this result.
    Succeeded(Value),
    /// The attempt failed; run another after `run_after`.
    Retry {
        /// The attempt's error.
        error: String,
        /// When the next attempt may start.
        run_after: DateTime<Utc>,
    },
    /// The task failed for good.
    Failed(String),
    /// The handler succeeded, but its output cannot be stored (see
    /// [`crate::storable`]): the task failed for good with `error`, and
    /// `output` is the output made storable (escaped).
    Unstorable {
        /// Why the output cannot be stored.
        error: String,
        /// The output in a storable form.
        output: Value,
    },
    /// The worker stopped before the attempt finished (shutdown past its
    /// drain timeout): the task is retried now, and this attempt does not
    /// count against `max_attempts`.
    HandedBack(String),
    /// A client cancelled the task while this attempt ran
    /// (`POST /tasks/<id>/cancel`): the handler was stopped and the task is
    /// `cancelled`; the string is the attempt's error.
    Cancelled(String),
}

impl Outcome {
    /// The status the task goes to when this outcome is recorded.
    pub fn status(&self) -> TaskStatus {
        match self {
            Self::Succeeded(_) => TaskStatus::Succeeded,
            Self::Retry { .. } | Self::HandedBack(_) => TaskStatus::Retrying,
            Self::Failed(_) | Self::Unstorable { .. } => TaskStatus::Failed,
            Self::Cancelled(_) => TaskStatus::Cancelled,
        }
    }
}

/// One attempt at running a task, as the status report shows it.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct AttemptView {
    /// 1 for the first attempt.
    pub attempt: i32,
    /// The worker that ran it.
    pub worker: String,
    /// When it was claimed.
    #[serde(serialize_with = "crate::rfc3339::at")]
    pub started_at: DateTime<Utc>,
    /// When its outcome was recorded; null while it runs or if its worker died.
    #[serde(serialize_with = "crate::rfc3339::opt_at")]
    pub finished_at: Option<DateTime<Utc>>,
    /// Its error, if it failed.
    pub error: Option<String>,
}

/// What `GET /status/<id>` reports.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct TaskView {
    /// The task's id.
    pub id: TaskId,
    /// Where it is.
    pub status: TaskStatus,
    /// The event's type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The event's source.
    pub source: String,
    /// The event's id.
    pub event_id: String,
    /// Attempts started so far.
    pub attempts: i32,
    /// Attempts allowed by its route.
    pub max_attempts: i32,
    /// When it was received.
    #[serde(serialize_with = "crate::rfc3339::at")]
    pub created_at: DateTime<Utc>,
    /// Not run before this: a delayed task's due time while it waits, or a
    /// retry's; null when there is nothing to wait for.
    #[serde(serialize_with = "crate::rfc3339::opt_at")]
    pub due_at: Option<DateTime<Utc>>,
    /// When its first attempt started.
    #[serde(serialize_with = "crate::rfc3339::opt_at")]
    pub started_at: Option<DateTime<Utc>>,
    /// When it reached a final state.
    #[serde(serialize_with = "crate::rfc3339::opt_at")]
    pub finished_at: Option<DateTime<Utc>>,
    /// While it runs: when a client asked to cancel it
    /// (`POST /tasks/<id>/cancel`) and its worker has not yet stopped it;
    /// else null.
    #[serde(serialize_with = "crate::rfc3339::opt_at")]
    pub cancel_requested_at: Option<DateTime<Utc>>,
    /// The handler's result, once succeeded.
    #[schema(required = true)]
    pub result: Option<Value>,
    /// The last error, once failed (or between retries).
    pub error: Option<String>,
    /// Every attempt, oldest first.
    pub attempt_history: Vec<AttemptView>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_in_the_order_they_were_made() {
        // Storage relies on it: ids made together share index pages.
        let ids: Vec<TaskId> = (0..10_000).map(|_| TaskId::new()).collect();
        assert!(ids.iter().all(|id| id.0.get_version_num() == 7));
        assert!(ids.windows(2).all(|w| w[0].0 < w[1].0));
        // SQLite stores the text form: it must sort the same way.
        let texts: Vec<String> = ids.iter().map(|id| id.0.to_string()).collect();
        assert!(texts.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn statuses_round_trip() {
        for status in TaskStatus::ALL {
            assert_eq!(status.as_str().parse::<TaskStatus>(), Ok(status));
        }
        assert!("done".parse::<TaskStatus>().is_err());
    }

    #[test]
    fn ids_parse_strictly() {
        let id = TaskId::new();
        assert_eq!(id.to_string().parse::<TaskId>().unwrap(), id);
        assert!("not-a-uuid".parse::<TaskId>().is_err());
    }
}
