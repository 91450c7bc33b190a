//! Listing: what `GET /tasks`, `GET /tasks/counts` and `GET /tasks/<id>`
//! read. Nothing here writes.
//!
//! The list is newest first, paged by keyset on (`created_at`, `id`)
//! descending: a page asks for the rows strictly below the last row of the
//! page before, so tasks that arrive meanwhile (newer than every listed row)
//! neither shift nor repeat anything, and a deep page costs what the first
//! does. Each filter has an index ending in (`created_at`, `id`)
//! (migration `2026-12-03-000001_task_listing`), so a page is an index range
//! read backwards, never a sort of the table.
//!
//! The counts are one `GROUP BY event_type, status` answered from the
//! (`event_type`, `status`) index alone; the api shares one result between
//! all its callers and recomputes it at most once a second (see
//! `ferry-api`'s `AppState::task_counts`), so polling costs one index scan a
//! second per api process whatever the number of pollers. Maintained
//! counters were not chosen: a counter row updated by every state change
//! would serialize concurrent transitions on PostgreSQL (each holds the
//! row's lock until it commits) and add a write to every claim and outcome.

use std::collections::BTreeMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::{DateTime, SecondsFormat, Utc};
use diesel::prelude::*;
use serde::Serialize;
use serde_json::Value;

use super::{Db, DbResult};
use crate::task::{TaskId, TaskStatus, TaskView};

/// Most rows one page may hold.
pub const MAX_LIMIT: i64 = 500;

/// Rows in a page when the client does not say.
pub const DEFAULT_LIMIT: i64 = 50;

/// Which tasks `GET /tasks` lists; every field set narrows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskFilter {
    /// Any of these statuses (empty: any status).
    pub statuses: Vec<TaskStatus>,
    /// Exactly this event type.
    pub event_type: Option<String>,
    /// Exactly this event source.
    pub source: Option<String>,
    /// Created strictly after this.
    pub created_after: Option<DateTime<Utc>>,
    /// Created strictly before this.
    pub created_before: Option<DateTime<Utc>>,
}

/// Where a page starts: the (`created_at`, `id`) of the last row of the
/// page before. Opaque to clients (URL-safe base64).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// The last row's creation time.
    pub created_at: DateTime<Utc>,
    /// The last row's id.
    pub id: TaskId,
}

impl Cursor {
    /// The cursor after `row`.
    pub fn after(row: &TaskSummary) -> Self {
        Self {
            created_at: row.created_at,
            id: row.id,
        }
    }

    /// The opaque form a client sends back.
    pub fn encode(&self) -> String {
        let text = format!(
            "{}|{}",
            self.created_at.to_rfc3339_opts(SecondsFormat::Nanos, true),
            self.id
        );
        URL_SAFE_NO_PAD.encode(text)
    }

    /// Reads a cursor made by [`Cursor::encode`]; `None` if it is not one.
    pub fn decode(text: &str) -> Option<Self> {
        let bytes = URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')).ok()?;
        let text = String::from_utf8(bytes).ok()?;
        let (created_at, id) = text.split_once('|')?;
        let created_at = DateTime::parse_from_rfc3339(created_at)
            .ok()?
            .with_timezone(&Utc);
        // No task is created after it, and SQLite would misorder it.
        crate::storable::check_time("cursor", created_at).ok()?;
        Some(Self {
            created_at,
            id: id.parse().ok()?,
        })
    }
}

/// One row of `GET /tasks`: what identifies a task and where it is, not
/// its event or result.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema, Queryable)]
pub struct TaskSummary {
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
    /// When it was received.
    #[serde(serialize_with = "crate::rfc3339::at")]
    #[diesel(deserialize_as = super::stamp::Stamp)]
    pub created_at: DateTime<Utc>,
    /// When its first attempt started.
    #[serde(serialize_with = "crate::rfc3339::opt_at")]
    #[diesel(deserialize_as = super::stamp::MaybeStamp)]
    pub started_at: Option<DateTime<Utc>>,
    /// When it reached a final state.
    #[serde(serialize_with = "crate::rfc3339::opt_at")]
    #[diesel(deserialize_as = super::stamp::MaybeStamp)]
    pub finished_at: Option<DateTime<Utc>>,
}

/// What `GET /tasks/<id>` shows: the status view and the event as stored.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct TaskRecord {
    /// Everything `GET /status` shows.
    #[serde(flatten)]
    pub view: TaskView,
    /// The event as received, in CloudEvents' structured JSON form.
    pub event: Value,
}

/// How many tasks are in each status, overall and per event type.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct TaskCounts {
    /// Every task.
    pub total: i64,
    /// Tasks per status; every status is present, zero or not.
    pub by_status: BTreeMap<&'static str, i64>,
    /// Per event type: its tasks per status (only statuses it has).
    pub by_type: BTreeMap<String, BTreeMap<&'static str, i64>>,
}

impl TaskCounts {
    /// Counts from (type, status, count) rows.
    fn from_rows(rows: Vec<(String, TaskStatus, i64)>) -> Self {
        let mut counts = Self {
            by_status: TaskStatus::ALL.iter().map(|s| (s.as_str(), 0)).collect(),
            ..Self::default()
        };
        for (event_type, status, n) in rows {
            counts.total += n;
            *counts.by_status.entry(status.as_str()).or_default() += n;
            *counts
                .by_type
                .entry(event_type)
                .or_default()
                .entry(status.as_str())
                .or_default() += n;
        }
        counts
    }
}

/// The shared conditions of a page, on either schema.
macro_rules! listed {
    ($t:ident, $filter:expr, $after:expr, $limit:expr) => {{
        let filter: &TaskFilter = $filter;
        let mut query = $t::tasks
            .select((
                $t::id,
                $t::status,
                $t::event_type,
                $t::source,
                $t::event_id,
                $t::attempts,
                $t::created_at,
                $t::started_at,
                $t::finished_at,
            ))
            .order(($t::created_at.desc(), $t::id.desc()))
            .limit($limit)
            .into_boxed();
        // One status is bound as `=`: PostgreSQL reads `= ANY(array)` as a
        // set, not as an equality it can use to keep an index's order.
        match filter.statuses[..] {
            [] => {}
            [status] => query = query.filter($t::status.eq(status)),
            _ => query = query.filter($t::status.eq_any(filter.statuses.clone())),
        }
        if let Some(event_type) = &filter.event_type {
            query = query.filter($t::event_type.eq(event_type.clone()));
        }
        if let Some(source) = &filter.source {
            query = query.filter($t::source.eq(source.clone()));
        }
        if let Some(after) = filter.created_after {
            query = query.filter($t::created_at.gt(after));
        }
        if let Some(before) = filter.created_before {
            query = query.filter($t::created_at.lt(before));
        }
        if let Some(Cursor { created_at, id }) = $after {
            // (created_at, id) < (cursor): the `<=` bounds the index range,
            // the rest drops the rows of the cursor's own instant already
            // listed.
            query = query.filter(
                $t::created_at
                    .le(created_at)
                    .and($t::created_at.lt(created_at).or($t::id.lt(id))),
            );
        }
        query
    }};
}

impl Db {
    /// Up to `limit` tasks matching `filter`, newest first (by
    /// `created_at`, then `id`), starting after `after`.
    pub fn list_tasks(
        &self,
        filter: &TaskFilter,
        after: Option<Cursor>,
        limit: i64,
    ) -> DbResult<Vec<TaskSummary>> {
        with_conn!(self, |conn, s| {
            use s::tasks::dsl as t;
            Ok(listed!(t, filter, after, limit).load::<TaskSummary>(conn)?)
        })
    }

    /// How many tasks are in each status, overall and per type: one
    /// `GROUP BY` over the (`event_type`, `status`) index.
    pub fn task_counts(&self) -> DbResult<TaskCounts> {
        let rows = with_conn!(self, |conn, s| {
            use diesel::dsl::count_star;
            use s::tasks::dsl as t;
            t::tasks
                .group_by((t::event_type, t::status))
                .select((t::event_type, t::status, count_star()))
                .load::<(String, TaskStatus, i64)>(conn)?
        });
        Ok(TaskCounts::from_rows(rows))
    }

    /// Everything about a task: its status view with every attempt, and the
    /// event as stored; `None` if there is no such task.
    pub fn task_record(&self, id: TaskId) -> DbResult<Option<TaskRecord>> {
        let Some(view) = self.task_view(id)? else {
            return Ok(None);
        };
        // The event never changes once stored, so reading it apart from the
        // view shows nothing inconsistent.
        let event = with_conn!(self, |conn, s| {
            use s::tasks::dsl as t;
            t::tasks
                .select(t::event)
                .filter(t::id.eq(id))
                .first::<Value>(conn)
                .optional()?
        });
        Ok(event.map(|event| TaskRecord { view, event }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_garbage() {
        let cursor = Cursor {
            created_at: "2026-12-03T20:01:02.123456789Z".parse().unwrap(),
            id: TaskId::new(),
        };
        assert_eq!(Cursor::decode(&cursor.encode()), Some(cursor));
        for bad in ["", "!!", "bm90IGEgY3Vyc29y", &URL_SAFE_NO_PAD.encode("x|y")] {
            assert_eq!(Cursor::decode(bad), None, "{bad}");
        }
    }
}
