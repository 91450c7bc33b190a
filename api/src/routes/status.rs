//! `GET /status/<id>`: where a task is; with `?wait=`, a long poll until it
//! is final. `GET /status/<id>/events`: its changes as Server-Sent Events.
//! `GET /health`: is the API serving. `GET /ready`: do its database and
//! broker answer.
//!
//! Waiters read nothing themselves: the api's hub ([`crate::hub`]) reads
//! the changes of every watched task in one query and wakes them.

use std::sync::Arc;
use std::time::Duration;

use ferry_core::db::TaskEvent;
use ferry_core::task::TaskView;
use ferry_core::{TaskId, TaskStatus};
use rocket::http::Status;
use rocket::request::{FromRequest, Outcome, Request};
use rocket::response::stream::{Event, EventStream};
use rocket::{get, routes, Route, Shutdown, State};
use serde_json::json;

use crate::auth::{Auth, Read};
use crate::error::{ApiError, ErrorCode, JsonResponse};
use crate::routes::{parse_task_id, task_not_found};
use crate::AppState;

/// The longest `?wait=`.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// The routes of this module.
pub fn routes() -> Vec<Route> {
    routes![status, events, health, ready]
}

/// `?wait=`: `30s`, `500ms`, `2m`, or a whole number of seconds; at most
/// [`MAX_WAIT`]. Anything else is `400 invalid_parameter` naming `wait`.
pub fn parse_wait(text: &str) -> Result<Duration, ApiError> {
    let trimmed = text.trim();
    let wait = if !trimmed.is_empty() && trimmed.bytes().all(|b| b.is_ascii_digit()) {
        trimmed.parse::<u64>().ok().map(Duration::from_secs)
    } else {
        humantime::parse_duration(trimmed).ok()
    };
    match wait {
        Some(wait) if wait <= MAX_WAIT => Ok(wait),
        Some(_) => Err(ApiError::new(
            ErrorCode::InvalidParameter,
            format!("wait: {text:?} is longer than the longest wait, 60s"),
        )),
        None => Err(ApiError::new(
            ErrorCode::InvalidParameter,
            format!(
                "wait: {text:?} is not a duration (such as 30s, 500ms, 2m, or a number of seconds)"
            ),
        )),
    }
}

/// Where a task is: its status, result or error, and every attempt; with
/// `?wait=`, once it is final or the wait ends.
#[utoipa::path(
    tag = "tasks",
    params(
        ("id" = ferry_core::TaskId, Path, description = "The task's id (a UUID)."),
        ("wait" = Option<String>, Query, description = "Long poll: answer as soon as the task is \
            final, or with its status when this ends: `30s`, `500ms`, `2m` or a number of \
            seconds; at most 60s."),
    ),
    responses(
        (status = 200, description = "The task's status.", body = ferry_core::task::TaskView),
        (status = 400, description = "`invalid_id`: the id is not a UUID; `invalid_parameter`: \
            a `wait` that is not a duration or is over 60s", body = crate::openapi::bodies::ErrorBody),
        (status = 404, description = "`task_not_found`: no task has this id", body = crate::openapi::bodies::ErrorBody),
    )
)]
#[get("/status/<id>?<wait>")]
async fn status(
    _auth: Auth<Read>,
    id: &str,
    wait: Option<&str>,
    state: &State<AppState>,
    shutdown: Shutdown,
) -> Result<JsonResponse, ApiError> {
    let id = parse_task_id(id)?;
    let wait = wait.map(parse_wait).transpose()?;
    // A succeeded task's answer never changes: the one read before serves.
    if let Some(body) = state.final_views.get(id) {
        return Ok(JsonResponse::shared(Status::Ok, body));
    }
    let view = state
        .task_view(id)
        .await?
        .ok_or_else(|| task_not_found(id))?;
    let Some(wait) = wait.filter(|wait| !wait.is_zero() && !view.status.is_final()) else {
        return Ok(answer(state, &view));
    };
    // The hub reads the task's events from the first, so a change made
    // between the read above and this registration is not missed.
    let mut watch = state.hub.watch(id);
    let finished = async {
        loop {
            if watch.events().last().is_some_and(|e| e.status.is_final()) {
                return;
            }
            watch.changed().await;
        }
    };
    tokio::select! {
        _ = tokio::time::timeout(wait, finished) => {}
        () = shutdown => {}
    }
    drop(watch);
    // Final, or where it is when the wait ends: read again (with the other
    // readers of the moment).
    let view = state
        .task_view(id)
        .await?
        .ok_or_else(|| task_not_found(id))?;
    Ok(answer(state, &view))
}

/// `view`'s answer; a succeeded task's is kept for the next asks.
fn answer(state: &AppState, view: &TaskView) -> JsonResponse {
    if view.status != TaskStatus::Succeeded {
        return JsonResponse::new(Status::Ok, view);
    }
    let body: Arc<[u8]> = serde_json::to_vec(view)
        .expect("a task view serializes")
        .into();
    state.final_views.keep(view, &body);
    JsonResponse::shared(Status::Ok, body)
}

/// The `Last-Event-ID` header, unchecked: the route answers a bad one.
struct LastEventId(Option<String>);

#[rocket::async_trait]
impl<'r> FromRequest<'r> for LastEventId {
    type Error = std::convert::Infallible;

    async fn from_request(request: &'r Request<'_>) -> Outcome<Self, Self::Error> {
        let value = request.headers().get_one("Last-Event-ID");
        Outcome::Success(Self(value.map(str::to_string)))
    }
}

impl LastEventId {
    /// The last event the client saw: 0 (none) without the header; a
    /// value that is not a whole number is `400 invalid_header`.
    fn seq(&self) -> Result<i32, ApiError> {
        let Some(text) = &self.0 else { return Ok(0) };
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Ok(0);
        }
        trimmed
            .parse::<u64>()
            .map(|n| i32::try_from(n).unwrap_or(i32::MAX))
            .map_err(|_| {
                ApiError::new(
                    ErrorCode::InvalidHeader,
                    format!("Last-Event-ID: {text:?} is not an event id from this stream (a whole number)"),
                )
            })
    }
}

/// One change as an SSE event: named for the status, its id the task's
/// sequence number, its data `{"id", "seq", "status", "at"}`.
fn sse_event(event: &TaskEvent) -> Event {
    Event::json(event)
        .event(event.status.as_str())
        .id(event.seq.to_string())
}

/// The task's changes as Server-Sent Events, one per change, ending after
/// the final one.
#[utoipa::path(
    tag = "tasks",
    params(
        ("id" = ferry_core::TaskId, Path, description = "The task's id (a UUID)."),
        ("Last-Event-ID" = Option<String>, Header, description = "The `id` of the last event \
            seen (a whole number): a reconnect resumes after it and loses no change."),
    ),
    responses(
        (status = 200, description = "`text/event-stream`: one event per change, oldest first, \
            named for the status (`event: succeeded`), its `id` the change's `seq`, its `data` a \
            `TaskEvent` (`{\"id\", \"seq\", \"status\", \"at\"}`); comment lines keep a quiet \
            stream open. The stream ends after the final status.",
            content_type = "text/event-stream", body = String),
        (status = 400, description = "`invalid_id`: the id is not a UUID; `invalid_header`: a \
            `Last-Event-ID` that is not a whole number", body = crate::openapi::bodies::ErrorBody),
        (status = 404, description = "`task_not_found`: no task has this id", body = crate::openapi::bodies::ErrorBody),
    )
)]
#[get("/status/<id>/events")]
async fn events(
    _auth: Auth<Read>,
    id: &str,
    last: LastEventId,
    state: &State<AppState>,
    shutdown: Shutdown,
) -> Result<EventStream![Event + 'static], ApiError> {
    let id: TaskId = parse_task_id(id)?;
    let mut cursor = last.seq()?;
    if state.task_view(id).await?.is_none() {
        return Err(task_not_found(id));
    }
    let mut watch = state.hub.watch(id);
    // The listener closes a connection nothing was written to for
    // `request_timeout`: a comment line keeps a quiet stream open.
    let heartbeat = (state.config.request_timeout / 2).max(Duration::from_millis(50));
    let stream = EventStream! {
        loop {
            let events = watch.events();
            let after = cursor;
            for event in events.iter().filter(|e| e.seq > after) {
                cursor = event.seq;
                yield sse_event(event);
            }
            // Every task has at least its first event: none yet means the
            // hub has not read it yet. The stream ends after a final status
            // that is the task's latest.
            if events.last().is_some_and(|e| e.status.is_final() && e.seq <= cursor) {
                break;
            }
            tokio::select! {
                () = watch.changed() => {}
                () = shutdown.clone() => break,
            }
        }
    };
    Ok(stream.heartbeat(heartbeat))
}

/// Whether the API serves and its database answers (the broker is not
/// checked).
#[utoipa::path(
    tag = "service",
    responses(
        (status = 200, description = "Serving; the database answered.", body = crate::openapi::bodies::Health),
    )
)]
#[get("/health")]
async fn health(state: &State<AppState>) -> Result<JsonResponse, ApiError> {
    state.db.run_blocking(|db| db.ping()).await?;
    Ok(JsonResponse::new(
        Status::Ok,
        json!({ "status": "ok", "database": state.db.backend() }),
    ))
}

/// Whether the API can do its work: its database answers a query and its
/// broker a connection (in standalone, the in-process queue always does),
/// each within 3 s. For an orchestrator's readiness probe; `/health` is
/// the liveness one.
#[utoipa::path(
    tag = "service",
    responses(
        (status = 200, description = "Ready: the database and the broker answered.", body = crate::openapi::bodies::Ready),
        (status = 503, description = "`not_ready`: the database or the broker (named in `message`, and by its field) did not answer; sent with `Retry-After: 5`",
            body = crate::openapi::bodies::ErrorBody,
            headers(("Retry-After" = i32, description = "Seconds to wait: 5."))),
    )
)]
#[get("/ready")]
async fn ready(state: &State<AppState>) -> JsonResponse {
    let readiness = state.probe.ready().await;
    if readiness.is_ready() {
        JsonResponse::new(Status::Ok, readiness.body())
    } else {
        JsonResponse::new(Status::ServiceUnavailable, readiness.body())
            .with_header("Retry-After", "5".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_ready_is_the_error_code() {
        assert_eq!(ErrorCode::NotReady.as_str(), ferry_core::probe::NOT_READY);
    }

    #[test]
    fn waits_parse_with_a_cap() {
        for (text, wait) in [
            ("30s", 30_000),
            ("500ms", 500),
            ("2m", 60_000 * 2),
            ("10", 10_000),
            ("0", 0),
            ("60", 60_000),
            ("1m", 60_000),
        ] {
            match parse_wait(text) {
                Ok(got) if wait <= 60_000 => assert_eq!(got, Duration::from_millis(wait), "{text}"),
                Ok(got) => panic!("{text}: {got:?} is over the cap"),
                Err(_) if wait > 60_000 => {}
                Err(e) => panic!("{text}: {e:?}"),
            }
        }
        for text in ["61", "2m", "1h", "", "-1", "soon", "1.5", "30 parsecs"] {
            assert!(parse_wait(text).is_err(), "{text}");
        }
    }
}
