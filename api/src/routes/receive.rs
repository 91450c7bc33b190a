//! `POST /receive`: an event (or a batch) becomes tasks. The answer comes
//! once the rows are committed; the task ids are published with confirms
//! off the request path, and a publish that fails or never happens (the
//! process died) is left to the relay, so a 202 always means the task is
//! recorded and will run.
//!
//! An `Idempotency-Key` header names the task as the (source, id) pair
//! does: the same key with the same event is the stored task again (200),
//! with another event a `422 idempotency_key_reused`. An event with a
//! `notbefore` time still to come is stored but not published: the relay
//! publishes it once due.

use rocket::data::{Data, ToByteUnit};
use rocket::http::Status;
use rocket::request::{self, FromRequest, Request};
use rocket::{post, routes, Route, State};
use serde_json::{json, Value};

use ferry_core::event::{decode_header_value, Event};
use ferry_core::task::{NewTask, Stored};
use ferry_core::TaskId;

use crate::auth::{Auth, Submit};
use crate::error::{ApiError, ErrorCode, JsonResponse};
use crate::AppState;

/// The routes of this module.
pub fn routes() -> Vec<Route> {
    routes![receive]
}

/// The request's media type and its `ce-*` headers (binary mode).
#[derive(Debug)]
pub struct EventHeaders {
    media_type: Option<String>,
    full_content_type: Option<String>,
    attributes: Vec<(String, String)>,
    idempotency_keys: Vec<String>,
}

/// The header that names a task for producers whose event ids are not
/// stable across retries.
pub const IDEMPOTENCY_KEY: &str = "Idempotency-Key";
/// The longest `Idempotency-Key` accepted, in bytes.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 255;

/// The request's `Idempotency-Key`, if it sent one: one header of 1 to
/// [`MAX_IDEMPOTENCY_KEY_BYTES`] visible ASCII characters (no spaces).
fn idempotency_key(values: &[String]) -> Result<Option<String>, ApiError> {
    let bad = |reason: &str| {
        ApiError::new(
            ErrorCode::InvalidHeader,
            format!("the header {IDEMPOTENCY_KEY} {reason}"),
        )
    };
    match values {
        [] => Ok(None),
        [key] if key.is_empty() => Err(bad("is empty")),
        [key] if key.len() > MAX_IDEMPOTENCY_KEY_BYTES => Err(bad(&format!(
            "is longer than {MAX_IDEMPOTENCY_KEY_BYTES} bytes"
        ))),
        [key] if !key.bytes().all(|b| b.is_ascii_graphic()) => Err(bad(
            "must be visible ASCII characters only (no spaces or control characters)",
        )),
        [key] => Ok(Some(key.clone())),
        _ => Err(bad("is sent more than once")),
    }
}

#[rocket::async_trait]
impl<'r> FromRequest<'r> for EventHeaders {
    type Error = std::convert::Infallible;

    async fn from_request(request: &'r Request<'_>) -> request::Outcome<Self, Self::Error> {
        let full_content_type = request
            .headers()
            .get_one("Content-Type")
            .map(str::to_string);
        let media_type = full_content_type.as_deref().map(|ct| {
            ct.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        });
        let attributes = request
            .headers()
            .iter()
            .filter_map(|h| {
                let name = h.name().as_str().to_ascii_lowercase();
                let attribute = name.strip_prefix("ce-")?.to_string();
                Some((attribute, h.value().to_string()))
            })
            .collect();
        let idempotency_keys = request
            .headers()
            .get(IDEMPOTENCY_KEY)
            .map(str::to_string)
            .collect();
        request::Outcome::Success(Self {
            media_type,
            full_content_type,
            attributes,
            idempotency_keys,
        })
    }
}

enum Mode {
    Structured,
    Batch,
    Binary,
}

fn mode(headers: &EventHeaders) -> Result<Mode, ApiError> {
    if headers.attributes.iter().any(|(k, _)| k == "specversion") {
        return Ok(Mode::Binary);
    }
    match headers.media_type.as_deref() {
        Some("application/json" | "application/cloudevents+json") => Ok(Mode::Structured),
        Some("application/cloudevents-batch+json") => Ok(Mode::Batch),
        Some(other) => Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            format!(
                "Content-Type {other:?} is not accepted; send application/json, \
                 application/cloudevents+json or application/cloudevents-batch+json \
                 (or a binary-mode event with ce-* headers)"
            ),
        )),
        None => Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            "a Content-Type header is required (application/json or application/cloudevents+json)",
        )),
    }
}

fn invalid_event(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::InvalidEvent, message)
}

fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::new(
            ErrorCode::EmptyBody,
            "the request body is empty",
        ));
    }
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            ErrorCode::MalformedJson,
            format!("the body is not valid JSON: {e}"),
        )
    })
}

fn task_json(stored: &Stored) -> Value {
    let mut task = json!({
        "id": stored.id,
        "status": stored.status,
        "status_url": format!("/status/{}", stored.id),
    });
    if stored.conflict {
        task["error"] = ErrorCode::EventConflict.as_str().into();
    }
    task
}

/// An event, or a batch of events, becomes tasks: stored, then queued.
///
/// The mode is chosen by the headers: a `ce-specversion` header is a
/// binary-mode event (its attributes are `ce-*` headers, the body of any
/// type is its `data`); otherwise `Content-Type` says: one structured event
/// (`application/json`, `application/cloudevents+json`) or a batch
/// (`application/cloudevents-batch+json`). The same (`source`, `id`), or
/// the same `Idempotency-Key`, with the same event is the same task (200).
#[utoipa::path(
    tag = "tasks",
    params(crate::openapi::bodies::ReceiveHeaders),
    request_body(
        description = "A structured event, a batch, or (binary mode) the event's data. At most \
            `max_body_bytes`.",
        content(
            (crate::openapi::bodies::StructuredEvent = "application/json", example = json!({
                "specversion": "1.0", "type": "org.ferry.echo", "source": "/ferry/demo",
                "id": "demo-1", "data": {"hello": "world"}
            })),
            (crate::openapi::bodies::StructuredEvent = "application/cloudevents+json", example = json!({
                "specversion": "1.0", "type": "org.ferry.echo", "source": "/ferry/demo",
                "id": "later-1", "notbefore": "2026-12-03T21:00:00Z", "data": 17
            })),
            (crate::openapi::bodies::EventBatch = "application/cloudevents-batch+json", example = json!([
                {"specversion": "1.0", "type": "org.ferry.echo", "source": "/ferry/demo", "id": "b-1"},
                {"cloudEventsVersion": "0.1", "eventType": "org.ferry.echo", "source": "/ferry/demo",
                 "eventID": "b-2", "data": [1, 2]}
            ])),
            ("*/*"),
        ),
    ),
    responses(
        (status = 200, description = "Every event was already a task (same `source` and `id`, or \
            same `Idempotency-Key`, with the same content): the existing tasks, with their status now.",
            headers(("Location" = String, description = "The task's `status_url` (not for a batch).")),
            body = crate::openapi::bodies::ReceiveAnswer),
        (status = 202, description = "Stored (committed) and queued: one task, or for a batch \
            `{\"tasks\": [...]}`.",
            headers(("Location" = String, description = "The task's `status_url` (not for a batch).")),
            body = crate::openapi::bodies::ReceiveAnswer),
        (status = 400, description = "`empty_body`, `malformed_json`, `unreadable_body`; \
            `invalid_header`: a `ce-*` value with a broken `%` sequence or not UTF-8, a bad \
            `Idempotency-Key`, or one on a batch", body = crate::openapi::bodies::ErrorBody),
        (status = 409, description = "`event_conflict`: the (`source`, `id`) is a task whose \
            event differs; `task` names it (a batch's other events are stored, and `tasks` lists \
            each event's task)", body = crate::openapi::bodies::ErrorBody),
        (status = 413, description = "`payload_too_large`: the body is over `max_body_bytes`",
            body = crate::openapi::bodies::ErrorBody),
        (status = 415, description = "`unsupported_media_type`: no `Content-Type`, or another \
            one, and no `ce-specversion` header", body = crate::openapi::bodies::ErrorBody),
        (status = 422, description = "`invalid_event`: not an event Ferry can store; \
            `unrouted_event`: no route for its type; `idempotency_key_reused`: the key is held by \
            a task with another event (`task` names it)", body = crate::openapi::bodies::ErrorBody),
        (status = 503, description = "`overloaded`: as many requests as the limit in force \
            already wait for the database (`receive_limit`, or fewer while commits are slower \
            than `receive_latency_target`); nothing was stored, retry after `Retry-After` seconds",
            headers(("Retry-After" = i64, description = "Seconds to wait: 1 for `overloaded`, \
                5 for `database_unavailable`.")),
            body = crate::openapi::bodies::ErrorBody),
    )
)]
#[post("/receive", data = "<body>")]
async fn receive(
    _auth: Auth<Submit>,
    headers: EventHeaders,
    body: Data<'_>,
    state: &State<AppState>,
) -> Result<JsonResponse, ApiError> {
    let mode = mode(&headers)?;
    let key = idempotency_key(&headers.idempotency_keys)?;
    if key.is_some() && matches!(mode, Mode::Batch) {
        return Err(ApiError::new(
            ErrorCode::InvalidHeader,
            format!(
                "the header {IDEMPOTENCY_KEY} is not accepted with a batch: \
                 send the events one per request, or rely on their (source, id)"
            ),
        ));
    }
    let limit = state.config.max_body_bytes;
    let body = body.open(limit.bytes()).into_bytes().await.map_err(|e| {
        ApiError::new(
            ErrorCode::UnreadableBody,
            format!("cannot read the body: {e}"),
        )
    })?;
    if !body.is_complete() {
        return Err(ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("the body is larger than the limit of {limit} bytes"),
        ));
    }
    // Taken once the body is in, so a client that sends slowly holds no
    // place; held until the rows are committed (the answer does not wait
    // for the broker).
    let Some(_admitted) = state.admit() else {
        return Err(ApiError::new(
            ErrorCode::Overloaded,
            format!(
                "{} requests are already waiting for the database; retry after a second",
                state.receive_limit()
            ),
        ));
    };
    let events = match mode {
        Mode::Structured => {
            vec![Event::from_json(parse_json(&body)?).map_err(|e| invalid_event(e.0))?]
        }
        Mode::Batch => {
            Event::batch_from_json(parse_json(&body)?).map_err(|e| invalid_event(e.0))?
        }
        Mode::Binary => {
            let mut attributes = Vec::with_capacity(headers.attributes.len());
            for (name, value) in headers.attributes {
                let decoded = decode_header_value(&value).map_err(|reason| {
                    ApiError::new(
                        ErrorCode::InvalidHeader,
                        format!("the header ce-{name} {reason}"),
                    )
                })?;
                attributes.push((name, decoded));
            }
            vec![
                Event::from_binary(attributes, headers.full_content_type.as_deref(), &body)
                    .map_err(|e| invalid_event(e.0))?,
            ]
        }
    };
    let mut tasks = Vec::with_capacity(events.len());
    let mut counters = Vec::with_capacity(events.len());
    for event in events {
        let Some(route) = state.config.routes.get(&event.event_type) else {
            return Err(ApiError::new(
                ErrorCode::UnroutedEvent,
                format!(
                    "no route handles events of type {:?} (and there is no \"*\" route)",
                    event.event_type
                ),
            ));
        };
        counters.push(state.task_metrics.of(&route.event_type));
        tasks.push(NewTask {
            id: TaskId::new(),
            // A batch never has one (refused above): one event, one key.
            idempotency_key: key.clone(),
            run_after: event.not_before,
            digest: event.digest(),
            max_attempts: i32::try_from(route.retry.attempts).unwrap_or(i32::MAX),
            event_type: event.event_type,
            source: event.source,
            event_id: event.id,
            event: event.body,
        });
    }
    let events: Vec<(String, String)> = tasks
        .iter()
        .map(|t| (t.source.clone(), t.event_id.clone()))
        .collect();
    let due: Vec<_> = tasks.iter().map(|t| t.run_after).collect();
    let stored = state.store(tasks).await?;
    for (task, metrics) in stored.iter().zip(&counters) {
        if task.created {
            metrics.received.increment(1);
        }
    }
    // Committed: from here on the task exists whatever happens to the publish.
    #[cfg(feature = "failpoints")]
    if std::env::var("FERRY_FAILPOINT").as_deref() == Ok("abort-after-commit") {
        std::process::abort();
    }
    // A delayed task is published by the relay once due.
    let now = chrono::Utc::now();
    let new: Vec<TaskId> = stored
        .iter()
        .zip(&due)
        .filter(|(s, due)| s.created && due.is_none_or(|at| at <= now))
        .map(|(s, _)| s.id)
        .collect();
    if !new.is_empty() {
        state.publish_stored(new);
    }
    if let Some(held) = stored.iter().find(|s| s.key_conflict) {
        let task = held.id;
        let key = key.unwrap_or_default();
        let message = format!(
            "task {task} already holds the {IDEMPOTENCY_KEY} {key:?} for another event; \
             send a new key for a new event"
        );
        let body = json!({
            "error": ErrorCode::IdempotencyKeyReused,
            "message": message,
            "task": task,
            "status_url": format!("/status/{task}"),
        });
        return Ok(JsonResponse::new(Status::UnprocessableEntity, body));
    }
    if let Some(i) = stored.iter().position(|s| s.conflict) {
        let (source, id) = &events[i];
        let task = stored[i].id;
        let message = format!(
            "task {task} already holds the event with source {source:?} and id {id:?}, \
             and this one differs from it; send a new id for a new event"
        );
        let mut body = json!({
            "error": ErrorCode::EventConflict,
            "message": message,
            "task": task,
            "status_url": format!("/status/{task}"),
        });
        if matches!(mode, Mode::Batch) {
            // The batch's other events were stored: say where each one is.
            body["tasks"] = stored.iter().map(task_json).collect();
        }
        return Ok(JsonResponse::new(Status::Conflict, body));
    }
    let any_new = stored.iter().any(|s| s.created);
    let status = if any_new {
        Status::Accepted
    } else {
        Status::Ok
    };
    let response = match mode {
        Mode::Batch => JsonResponse::new(
            status,
            json!({ "tasks": stored.iter().map(task_json).collect::<Vec<_>>() }),
        ),
        Mode::Structured | Mode::Binary => {
            let task = &stored[0];
            JsonResponse::new(status, task_json(task))
                .with_header("Location", format!("/status/{}", task.id))
        }
    };
    Ok(response)
}
