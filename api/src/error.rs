//! The API's one response type for JSON bodies, and its errors. What a
//! client sees is a stable code and a message; causes are logged, not sent.

use std::sync::Arc;

use rocket::http::{ContentType, Header, Status};
use rocket::request::Request;
use rocket::response::{self, Responder, Response};
use serde::Serialize;
use serde_json::json;

use ferry_core::db::DbError;

/// A JSON body with a status and extra headers.
#[derive(Debug)]
pub struct JsonResponse {
    /// HTTP status.
    pub status: Status,
    /// The body, serialized.
    pub body: Body,
    /// Extra headers (`Location`, `Retry-After`).
    pub headers: Vec<Header<'static>>,
}

/// A [`JsonResponse`]'s serialized body.
#[derive(Debug, Clone)]
pub enum Body {
    /// Serialized for this answer.
    Owned(String),
    /// Serialized once, answered many times ([`crate::final_views`]).
    Shared(Arc<[u8]>),
}

impl JsonResponse {
    /// A body with a status and no extra headers.
    pub fn new(status: Status, body: impl Serialize) -> Self {
        Self {
            status,
            // Ferry's bodies are maps with string keys: they always serialize.
            body: Body::Owned(serde_json::to_string(&body).expect("a response body serializes")),
            headers: Vec::new(),
        }
    }

    /// A body serialized before, shared with other answers.
    pub fn shared(status: Status, body: Arc<[u8]>) -> Self {
        Self {
            status,
            body: Body::Shared(body),
            headers: Vec::new(),
        }
    }

    /// Adds a header.
    pub fn with_header(mut self, name: &'static str, value: String) -> Self {
        self.headers.push(Header::new(name, value));
        self
    }
}

impl<'r> Responder<'r, 'static> for JsonResponse {
    fn respond_to(self, _: &'r Request<'_>) -> response::Result<'static> {
        let mut response = Response::build();
        response.status(self.status).header(ContentType::JSON);
        match self.body {
            Body::Owned(body) => response.sized_body(body.len(), std::io::Cursor::new(body)),
            Body::Shared(body) => response.sized_body(body.len(), std::io::Cursor::new(body)),
        };
        for header in self.headers {
            response.header(header);
        }
        response.ok()
    }
}

/// The stable machine-readable code of every error the API answers with, as
/// `{"error": code, …}`. README.md's error tables list exactly these, with
/// the status of each (a unit test checks it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// 400: the body is empty or only whitespace.
    EmptyBody,
    /// 400: the body is not valid JSON.
    MalformedJson,
    /// 400: the body could not be read from the connection.
    UnreadableBody,
    /// 400: a task id in the path (`/status/<id>`, `/tasks/<id>/…`) that is
    /// not a UUID.
    InvalidId,
    /// 400: a header value Ferry cannot read.
    InvalidHeader,
    /// 400: a query parameter Ferry cannot use (`GET /tasks`); the message
    /// names it.
    InvalidParameter,
    /// 401: no bearer token, a malformed one, or one the server does not
    /// know, when tokens are configured.
    Unauthorized,
    /// 403: a known token without the scope the route needs.
    Forbidden,
    /// 404: no such task.
    TaskNotFound,
    /// 404: no such route.
    NotFound,
    /// 413: the body is over `max_body_bytes`.
    PayloadTooLarge,
    /// 415: no accepted `Content-Type`.
    UnsupportedMediaType,
    /// 409: the (`source`, `id`) is a task with another event.
    EventConflict,
    /// 409: cancel of a task that already `succeeded` or `failed`.
    TaskFinished,
    /// 409: retry of a task that is neither `failed` nor `cancelled`.
    TaskNotRetryable,
    /// 422: valid JSON that is not an event Ferry can store.
    InvalidEvent,
    /// 422: no route for the event's type.
    UnroutedEvent,
    /// 422: the `Idempotency-Key` is held by a task with another event.
    IdempotencyKeyReused,
    /// 500: an unexpected error (also any 5xx Rocket answers with).
    Internal,
    /// 503: the database cannot be reached.
    DatabaseUnavailable,
    /// 503: `GET /ready`: the database or the broker does not answer.
    NotReady,
    /// 503: `/receive` has the limit in force of requests waiting already.
    Overloaded,
    /// 400: a request Rocket itself refuses.
    BadRequest,
    /// 405: a wrong method, if Rocket ever says so (it answers 404).
    MethodNotAllowed,
    /// 422: a request Rocket itself cannot process.
    UnprocessableEntity,
    /// 503: Rocket itself is unavailable.
    Unavailable,
    /// Any other status Rocket answers with.
    Error,
    /// 400: the request does not parse (refused by the listener).
    MalformedRequest,
    /// 400: a `Content-Length` that is not one plain decimal.
    MalformedContentLength,
    /// 408: the headers or the body did not arrive in time.
    RequestTimeout,
    /// 414: the request target is too long.
    UriTooLong,
    /// 431: the header section is too large.
    HeadersTooLarge,
}

impl ErrorCode {
    /// Every code, in the order of README.md's tables.
    pub const ALL: [Self; 32] = [
        Self::EmptyBody,
        Self::MalformedJson,
        Self::UnreadableBody,
        Self::InvalidId,
        Self::InvalidHeader,
        Self::InvalidParameter,
        Self::Unauthorized,
        Self::Forbidden,
        Self::TaskNotFound,
        Self::NotFound,
        Self::PayloadTooLarge,
        Self::UnsupportedMediaType,
        Self::EventConflict,
        Self::TaskFinished,
        Self::TaskNotRetryable,
        Self::InvalidEvent,
        Self::UnroutedEvent,
        Self::IdempotencyKeyReused,
        Self::Internal,
        Self::DatabaseUnavailable,
        Self::NotReady,
        Self::Overloaded,
        Self::BadRequest,
        Self::MethodNotAllowed,
        Self::UnprocessableEntity,
        Self::Unavailable,
        Self::Error,
        Self::MalformedRequest,
        Self::MalformedContentLength,
        Self::RequestTimeout,
        Self::UriTooLong,
        Self::HeadersTooLarge,
    ];

    /// The code as a client reads it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::EmptyBody => "empty_body",
            Self::MalformedJson => "malformed_json",
            Self::UnreadableBody => "unreadable_body",
            Self::InvalidId => "invalid_id",
            Self::InvalidHeader => "invalid_header",
            Self::InvalidParameter => "invalid_parameter",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::TaskNotFound => "task_not_found",
            Self::NotFound => "not_found",
            Self::PayloadTooLarge => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::EventConflict => "event_conflict",
            Self::TaskFinished => "task_finished",
            Self::TaskNotRetryable => "task_not_retryable",
            Self::InvalidEvent => "invalid_event",
            Self::UnroutedEvent => "unrouted_event",
            Self::IdempotencyKeyReused => "idempotency_key_reused",
            Self::Internal => "internal",
            Self::DatabaseUnavailable => "database_unavailable",
            Self::NotReady => "not_ready",
            Self::Overloaded => "overloaded",
            Self::BadRequest => "bad_request",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::UnprocessableEntity => "unprocessable_entity",
            Self::Unavailable => "unavailable",
            Self::Error => "error",
            Self::MalformedRequest => "malformed_request",
            Self::MalformedContentLength => "malformed_content_length",
            Self::RequestTimeout => "request_timeout",
            Self::UriTooLong => "uri_too_long",
            Self::HeadersTooLarge => "headers_too_large",
        }
    }

    /// The status this code is answered with; `None` for [`ErrorCode::Error`],
    /// which goes with whatever status Rocket chose.
    pub const fn status(self) -> Option<Status> {
        Some(match self {
            Self::EmptyBody
            | Self::MalformedJson
            | Self::UnreadableBody
            | Self::InvalidId
            | Self::InvalidHeader
            | Self::InvalidParameter
            | Self::BadRequest
            | Self::MalformedRequest
            | Self::MalformedContentLength => Status::BadRequest,
            Self::Unauthorized => Status::Unauthorized,
            Self::Forbidden => Status::Forbidden,
            Self::TaskNotFound | Self::NotFound => Status::NotFound,
            Self::MethodNotAllowed => Status::MethodNotAllowed,
            Self::RequestTimeout => Status::RequestTimeout,
            Self::EventConflict | Self::TaskFinished | Self::TaskNotRetryable => Status::Conflict,
            Self::PayloadTooLarge => Status::PayloadTooLarge,
            Self::UriTooLong => Status::UriTooLong,
            Self::UnsupportedMediaType => Status::UnsupportedMediaType,
            Self::InvalidEvent
            | Self::UnroutedEvent
            | Self::IdempotencyKeyReused
            | Self::UnprocessableEntity => Status::UnprocessableEntity,
            Self::HeadersTooLarge => Status::RequestHeaderFieldsTooLarge,
            Self::Internal => Status::InternalServerError,
            Self::DatabaseUnavailable | Self::NotReady | Self::Overloaded | Self::Unavailable => {
                Status::ServiceUnavailable
            }
            Self::Error => return None,
        })
    }

    /// The code a bare status gets when Rocket itself answers (no route, etc.).
    pub fn for_status(status: Status) -> Self {
        match status.code {
            400 => Self::BadRequest,
            404 => Self::NotFound,
            405 => Self::MethodNotAllowed,
            413 => Self::PayloadTooLarge,
            415 => Self::UnsupportedMediaType,
            422 => Self::UnprocessableEntity,
            503 => Self::Unavailable,
            500..=599 => Self::Internal,
            _ => Self::Error,
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// An error as the client sees it: `{"error": code, "message": …}`.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: Status,
    /// Stable machine-readable code.
    pub code: ErrorCode,
    /// What went wrong, for a person.
    pub message: String,
}

impl ApiError {
    /// An error with a code and message, answered with the code's status.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::with_status(
            code.status().unwrap_or(Status::InternalServerError),
            code,
            message,
        )
    }

    /// An error answered with `status` (Rocket's own, for its catcher).
    pub fn with_status(status: Status, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        if e.is_unavailable() {
            tracing::warn!(error = %e, "database unavailable");
            Self::new(
                ErrorCode::DatabaseUnavailable,
                "the task database cannot be reached; retry later",
            )
        } else {
            tracing::error!(error = %e, "database error");
            Self::new(ErrorCode::Internal, "internal error")
        }
    }
}

impl<'r> Responder<'r, 'static> for ApiError {
    fn respond_to(self, request: &'r Request<'_>) -> response::Result<'static> {
        let mut response = JsonResponse::new(
            self.status,
            json!({ "error": self.code, "message": self.message }),
        );
        if self.status == Status::ServiceUnavailable {
            // Overload passes quickly: the queue of waiting requests drains
            // in milliseconds. An unreachable database takes longer.
            let after = if self.code == ErrorCode::Overloaded {
                "1"
            } else {
                "5"
            };
            response = response.with_header("Retry-After", after.into());
        }
        response.respond_to(request)
    }
}

/// Every error Rocket produces is JSON too.
#[rocket::catch(default)]
pub fn default_catcher(status: Status, _request: &Request<'_>) -> ApiError {
    let message = status.reason_lossy().to_string();
    ApiError::with_status(status, ErrorCode::for_status(status), message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};

    /// Every `| Status | `error` | When |` table of README.md, as
    /// (status cell, code) rows.
    fn readme_rows() -> Vec<(String, String)> {
        let readme = include_str!("../../README.md");
        let mut rows = Vec::new();
        let mut in_table = false;
        for line in readme.lines() {
            if line.trim() == "| Status | `error` | When |" {
                in_table = true;
                continue;
            }
            if !line.starts_with('|') {
                in_table = false;
                continue;
            }
            if !in_table || line.starts_with("|---") {
                continue;
            }
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            rows.push((cells[1].to_string(), cells[2].trim_matches('`').to_string()));
        }
        rows
    }

    #[test]
    fn the_readme_lists_every_code_with_its_status() {
        let rows = readme_rows();
        let codes: BTreeMap<&str, ErrorCode> =
            ErrorCode::ALL.iter().map(|c| (c.as_str(), *c)).collect();
        assert_eq!(codes.len(), ErrorCode::ALL.len(), "codes are unique");
        for (status, code) in &rows {
            let Some(known) = codes.get(code.as_str()) else {
                panic!("README.md lists {code:?}, which the API never sends");
            };
            let expected = known
                .status()
                .map_or("other".to_string(), |s| s.code.to_string());
            assert_eq!(status, &expected, "README.md's status for {code:?}");
        }
        let listed: BTreeSet<&str> = rows.iter().map(|(_, code)| code.as_str()).collect();
        let missing: Vec<&str> = codes
            .keys()
            .filter(|c| !listed.contains(*c))
            .copied()
            .collect();
        assert!(missing.is_empty(), "README.md does not list {missing:?}");
    }

    #[test]
    fn rocket_statuses_keep_their_codes() {
        for (status, code) in [
            (400, "bad_request"),
            (404, "not_found"),
            (405, "method_not_allowed"),
            (413, "payload_too_large"),
            (415, "unsupported_media_type"),
            (422, "unprocessable_entity"),
            (503, "unavailable"),
            (500, "internal"),
            (502, "internal"),
            (418, "error"),
        ] {
            let status = Status::from_code(status).unwrap();
            assert_eq!(ErrorCode::for_status(status).as_str(), code, "{status}");
        }
    }
}
