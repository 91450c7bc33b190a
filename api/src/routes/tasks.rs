//! `GET /tasks`: tasks newest first, filtered and paged by keyset.
//! `GET /tasks/counts`: how many tasks are in each status, overall and per
//! type. `GET /tasks/<id>`: one task's whole record.
//!
//! The queries are `core/src/db/listing.rs`; this file reads and checks the
//! query string (every bad value is a `400 invalid_parameter` naming its
//! parameter) and shares the counts between callers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use rocket::http::uri::Origin;
use rocket::http::{RawStr, Status};
use rocket::{get, routes, Route, State};
use serde_json::json;
use tokio::sync::Mutex;

use ferry_core::db::listing::{Cursor, TaskCounts, TaskFilter, DEFAULT_LIMIT, MAX_LIMIT};
use ferry_core::{storable, TaskStatus};

use crate::auth::{Auth, Read};
use crate::error::{ApiError, ErrorCode, JsonResponse};
use crate::routes::{parse_task_id, task_not_found};
use crate::AppState;

/// The routes of this module.
pub fn routes() -> Vec<Route> {
    routes![list, counts, record]
}

/// How long one computation of the counts is served to every caller.
pub const COUNTS_MAX_AGE: Duration = Duration::from_secs(1);

/// The counts last computed, shared by every `/tasks/counts` caller of this
/// process (managed by Rocket). A caller finding them older than
/// [`COUNTS_MAX_AGE`] recomputes them while holding the lock, so callers
/// arriving meanwhile wait for that one query instead of running their own:
/// however many clients poll, the database sees at most one count query a
/// second from each api process.
#[derive(Debug, Default)]
pub struct SharedCounts(Mutex<Option<(Instant, Arc<TaskCounts>)>>);

impl SharedCounts {
    async fn get(&self, state: &AppState) -> Result<(Arc<TaskCounts>, Instant), ApiError> {
        let mut last = self.0.lock().await;
        if let Some((at, counts)) = &*last {
            if at.elapsed() < COUNTS_MAX_AGE {
                return Ok((counts.clone(), *at));
            }
        }
        let counts = Arc::new(state.db.run_blocking(|db| db.task_counts()).await?);
        let at = Instant::now();
        *last = Some((at, counts.clone()));
        Ok((counts, at))
    }
}

fn invalid(parameter: &str, message: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        ErrorCode::InvalidParameter,
        format!("{parameter}: {message}"),
    )
}

/// A time as a client writes it: RFC 3339. A `+` offset that arrived
/// unencoded reads as a space in a query string; it is taken back.
fn parse_time(parameter: &str, value: &str) -> Result<DateTime<Utc>, ApiError> {
    let at = DateTime::parse_from_rfc3339(value)
        .or_else(|e| DateTime::parse_from_rfc3339(&value.replace(' ', "+")).map_err(|_| e))
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            invalid(
                parameter,
                format!("{value:?} is not an RFC 3339 time ({e}), such as 2026-12-03T20:00:00Z"),
            )
        })?;
    // SQLite compares times as text: one past year 9999 would misorder.
    storable::check_time(parameter, at).map_err(|e| invalid(parameter, e.reason))?;
    Ok(at)
}

/// What a `/tasks` query string asks for.
#[derive(Debug, Default)]
struct ListQuery {
    filter: TaskFilter,
    cursor: Option<Cursor>,
    limit: i64,
}

impl ListQuery {
    fn parse(origin: &Origin<'_>) -> Result<Self, ApiError> {
        let mut query = Self {
            limit: DEFAULT_LIMIT,
            ..Self::default()
        };
        let mut seen = Vec::new();
        let Some(raw) = origin.query() else {
            return Ok(query);
        };
        for (name, value) in raw.segments() {
            // `status` may be given several times; the others once.
            if name != "status" {
                if seen.contains(&name) {
                    return Err(invalid(name, "given more than once"));
                }
                seen.push(name);
            }
            // `type` and `source` are compared with stored text: what no
            // task can hold (a NUL, which PostgreSQL refuses even as a
            // parameter, or more than the attribute limit) is refused.
            let nonempty = || {
                if value.is_empty() {
                    return Err(invalid(name, "must not be empty"));
                }
                storable::check_text_len(name, value, storable::MAX_KEY_ATTRIBUTE_BYTES)
                    .map_err(|e| invalid(name, e.reason))?;
                Ok(value.to_string())
            };
            match name {
                "status" => {
                    for status in value.split(',') {
                        let status = status.trim().parse::<TaskStatus>().map_err(|_| {
                            invalid(
                                "status",
                                format!(
                                    "{status:?} is not a status (one of {})",
                                    TaskStatus::ALL.map(TaskStatus::as_str).join(", ")
                                ),
                            )
                        })?;
                        if !query.filter.statuses.contains(&status) {
                            query.filter.statuses.push(status);
                        }
                    }
                }
                "type" => query.filter.event_type = Some(nonempty()?),
                "source" => query.filter.source = Some(nonempty()?),
                "created_after" => query.filter.created_after = Some(parse_time(name, value)?),
                "created_before" => query.filter.created_before = Some(parse_time(name, value)?),
                "cursor" => {
                    query.cursor = Some(Cursor::decode(value).ok_or_else(|| {
                        invalid(
                            "cursor",
                            "not a cursor this server made (use the `next` link as given)",
                        )
                    })?);
                }
                "limit" => {
                    query.limit = value
                        .parse::<i64>()
                        .ok()
                        .filter(|n| (1..=MAX_LIMIT).contains(n))
                        .ok_or_else(|| {
                            invalid(
                                "limit",
                                format!("{value:?} is not a whole number from 1 to {MAX_LIMIT}"),
                            )
                        })?;
                }
                _ => {
                    return Err(invalid(
                        name,
                        "unknown parameter (known: status, type, source, created_after, \
                         created_before, limit, cursor)",
                    ))
                }
            }
        }
        Ok(query)
    }

    /// The relative URL of the page after `cursor`, with the same filters.
    fn next(&self, cursor: Cursor) -> String {
        let encode = |value: &str| RawStr::new(value).percent_encode().to_string();
        let time = |t: DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Nanos, true);
        let filter = &self.filter;
        let mut pairs: Vec<(&str, String)> = filter
            .statuses
            .iter()
            .map(|s| ("status", s.as_str().to_string()))
            .collect();
        if let Some(event_type) = &filter.event_type {
            pairs.push(("type", encode(event_type)));
        }
        if let Some(source) = &filter.source {
            pairs.push(("source", encode(source)));
        }
        if let Some(t) = filter.created_after {
            pairs.push(("created_after", time(t)));
        }
        if let Some(t) = filter.created_before {
            pairs.push(("created_before", time(t)));
        }
        pairs.push(("limit", self.limit.to_string()));
        pairs.push(("cursor", cursor.encode()));
        let query: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!("/tasks?{}", query.join("&"))
    }
}

/// A page of tasks, newest first: `{"tasks": [...], "next": url or null}`.
/// `next` is set when the page is full (there may be more).
#[utoipa::path(
    tag = "tasks",
    params(crate::openapi::bodies::ListParams),
    responses(
        (status = 200, description = "A page of tasks, newest first.", body = crate::openapi::bodies::TaskPage),
        (status = 400, description = "`invalid_parameter`: a parameter that is unknown, repeated \
            (all but `status`), empty or out of range; the message starts with its name",
            body = crate::openapi::bodies::ErrorBody),
    )
)]
#[get("/tasks")]
async fn list(
    _auth: Auth<Read>,
    origin: &Origin<'_>,
    state: &State<AppState>,
) -> Result<JsonResponse, ApiError> {
    let query = ListQuery::parse(origin)?;
    let (filter, cursor, limit) = (query.filter.clone(), query.cursor, query.limit);
    let tasks = state
        .db
        .run_blocking(move |db| db.list_tasks(&filter, cursor, limit))
        .await?;
    let next = match tasks.last() {
        Some(last) if tasks.len() as i64 == query.limit => Some(query.next(Cursor::after(last))),
        _ => None,
    };
    Ok(JsonResponse::new(
        Status::Ok,
        json!({ "tasks": tasks, "next": next }),
    ))
}

/// Tasks per status, overall and per type, at most [`COUNTS_MAX_AGE`] old
/// (`age_ms` says how old).
#[utoipa::path(
    tag = "tasks",
    responses(
        (status = 200, description = "Tasks per status, overall and per type.", body = crate::openapi::bodies::CountsAnswer),
    )
)]
#[get("/tasks/counts")]
async fn counts(
    _auth: Auth<Read>,
    state: &State<AppState>,
    shared: &State<SharedCounts>,
) -> Result<JsonResponse, ApiError> {
    let (counts, at) = shared.get(state).await?;
    let mut body = serde_json::to_value(&*counts).map_err(|e| {
        tracing::error!(error = %e, "counts do not serialize");
        ApiError::new(ErrorCode::Internal, "internal error")
    })?;
    body["age_ms"] = json!(at.elapsed().as_millis() as u64);
    Ok(JsonResponse::new(Status::Ok, body))
}

/// Everything about one task: the status view, the event as stored and
/// every attempt.
#[utoipa::path(
    tag = "tasks",
    params(("id" = ferry_core::TaskId, Path, description = "The task's id (a UUID).")),
    responses(
        (status = 200, description = "The task's whole record.", body = ferry_core::db::listing::TaskRecord),
        (status = 400, description = "`invalid_id`: the id is not a UUID", body = crate::openapi::bodies::ErrorBody),
        (status = 404, description = "`task_not_found`: no task has this id", body = crate::openapi::bodies::ErrorBody),
    )
)]
#[get("/tasks/<id>")]
async fn record(
    _auth: Auth<Read>,
    id: &str,
    state: &State<AppState>,
) -> Result<JsonResponse, ApiError> {
    let id = parse_task_id(id)?;
    match state.db.run_blocking(move |db| db.task_record(id)).await? {
        Some(record) => Ok(JsonResponse::new(Status::Ok, record)),
        None => Err(task_not_found(id)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::TaskId;

    fn parse(uri: &str) -> Result<ListQuery, String> {
        ListQuery::parse(&Origin::parse(uri).unwrap()).map_err(|e| e.message)
    }

    #[test]
    fn statuses_come_repeated_or_comma_separated() {
        let q = parse("/tasks?status=failed,cancelled&status=failed&status=pending").unwrap();
        assert_eq!(
            q.filter.statuses,
            [
                TaskStatus::Failed,
                TaskStatus::Cancelled,
                TaskStatus::Pending
            ]
        );
    }

    #[test]
    fn bad_values_name_their_parameter() {
        for (uri, parameter) in [
            ("/tasks?status=done", "status:"),
            ("/tasks?status=", "status:"),
            ("/tasks?limit=0", "limit:"),
            ("/tasks?limit=501", "limit:"),
            ("/tasks?limit=ten", "limit:"),
            ("/tasks?created_after=yesterday", "created_after:"),
            (
                "/tasks?created_before=2026-13-01T00:00:00Z",
                "created_before:",
            ),
            ("/tasks?cursor=abc", "cursor:"),
            // Past year 9999 (in UTC), which SQLite's text would misorder.
            ("/tasks?created_before=9999-12-31T23:59:59-23:59", "created_before:"),
            (
                "/tasks?cursor=OTk5OS0xMi0zMVQyMzo1OTo1OS0yMzo1OXw0YjliOGUwZS02YTNjLTRkMjUtOWQ0ZS0yZjBmNmE3ZDFjMTE",
                "cursor:",
            ),
            ("/tasks?type=", "type:"),
            ("/tasks?source=a&source=b", "source:"),
            ("/tasks?colour=red", "colour:"),
        ] {
            let message = parse(uri).unwrap_err();
            assert!(message.starts_with(parameter), "{uri}: {message}");
        }
    }

    #[test]
    fn an_unencoded_plus_offset_is_read_as_meant() {
        let q = parse("/tasks?created_after=2026-12-03T20:00:00+01:00").unwrap();
        assert_eq!(
            q.filter.created_after,
            Some("2026-12-03T19:00:00Z".parse().unwrap())
        );
    }

    #[test]
    fn the_next_link_keeps_every_filter() {
        let q = parse(
            "/tasks?status=failed&type=a%26b&source=%2Fs%20x&created_after=2026-12-03T20:00:00Z&limit=7",
        )
        .unwrap();
        let cursor = Cursor {
            created_at: Utc::now(),
            id: TaskId::new(),
        };
        let next = q.next(cursor);
        let again = parse(&next).unwrap();
        assert_eq!(again.filter, q.filter);
        assert_eq!(again.limit, 7);
        assert_eq!(again.cursor, Some(cursor));
    }
}
