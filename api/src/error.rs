//! The API's one response type for JSON bodies, and its errors. What a
//! client sees is a stable code and a message; causes are logged, not sent.

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
    pub body: String,
    /// Extra headers (`Location`, `Retry-After`).
    pub headers: Vec<Header<'static>>,
}

impl JsonResponse {
    /// A body with a status and no extra headers.
    pub fn new(status: Status, body: impl Serialize) -> Self {
        Self {
            status,
            // Ferry's bodies are maps with string keys: they always serialize.
            body: serde_json::to_string(&body).expect("a response body serializes"),
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
        let body = self.body;
        let mut response = Response::build();
        response
            .status(self.status)
            .header(ContentType::JSON)
            .sized_body(body.len(), std::io::Cursor::new(body));
        for header in self.headers {
            response.header(header);
        }
        response.ok()
    }
}

/// An error as the client sees it: `{"error": code, "message": …}`.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: Status,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// What went wrong, for a person.
    pub message: String,
}

impl ApiError {
    /// An error with a status, code and message.
    pub fn new(status: Status, code: &'static str, message: impl Into<String>) -> Self {
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
                Status::ServiceUnavailable,
                "database_unavailable",
                "the task database cannot be reached; retry later",
            )
        } else {
            tracing::error!(error = %e, "database error");
            Self::new(Status::InternalServerError, "internal", "internal error")
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
            response = response.with_header("Retry-After", "5".into());
        }
        response.respond_to(request)
    }
}

/// The code a bare status gets when Rocket itself answers (no route, etc.).
pub fn code_for(status: Status) -> &'static str {
    match status.code {
        400 => "bad_request",
        404 => "not_found",
        405 => "method_not_allowed",
        413 => "payload_too_large",
        415 => "unsupported_media_type",
        422 => "unprocessable_entity",
        503 => "unavailable",
        500..=599 => "internal",
        _ => "error",
    }
}

/// Every error Rocket produces is JSON too.
#[rocket::catch(default)]
pub fn default_catcher(status: Status, _request: &Request<'_>) -> ApiError {
    let message = status.reason_lossy().to_string();
    ApiError::new(status, code_for(status), message)
}
