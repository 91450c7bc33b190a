//! Schemas of the bodies the routes build with `json!` (answers of
//! `/receive`, cancel, retry, `/health`, the error body) and of what
//! `/receive` reads (CloudEvents). They exist for the document only: the
//! test `api/tests/openapi.rs` checks real answers against them, so they
//! cannot drift from what the routes send.

use std::collections::BTreeMap;

use ferry_core::db::listing::{TaskCounts, TaskSummary};
use ferry_core::{TaskId, TaskStatus};
use serde_json::Value;
use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Schema, Type};
use utoipa::openapi::RefOr;
use utoipa::{IntoParams, PartialSchema, ToSchema};

use crate::error::ErrorCode;

impl PartialSchema for ErrorCode {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some(
                "A stable machine-readable code; the README's error tables say when each is sent.",
            ))
            .enum_values(Some(ErrorCode::ALL.map(ErrorCode::as_str)))
            .into()
    }
}

impl ToSchema for ErrorCode {}

/// Every refusal: `{"error", "message"}`. A refusal that names a task adds
/// `task` or `id`, `status` and `status_url`; one for a missing scope
/// adds `scope`.
#[derive(Debug, ToSchema)]
pub struct ErrorBody {
    /// The code, for programs.
    pub error: ErrorCode,
    /// What went wrong, for a person.
    pub message: String,
    /// `event_conflict`, `idempotency_key_reused`: the task that holds the
    /// event or the key.
    #[schema(required = false)]
    pub task: TaskId,
    /// `task_finished`, `task_not_retryable`: the task refused.
    #[schema(required = false)]
    pub id: TaskId,
    /// `task_finished`, `task_not_retryable`: the status that refused it.
    #[schema(required = false)]
    pub status: TaskStatus,
    /// Where the task named (`task` or `id`) is reported.
    #[schema(required = false)]
    pub status_url: String,
    /// `event_conflict` on a batch: every event's task, in the order of the
    /// batch (its other events were stored).
    #[schema(required = false)]
    pub tasks: Vec<TaskAnswer>,
    /// `forbidden`: the scope the route needs (`submit`, `read`, `admin`).
    #[schema(required = false)]
    pub scope: String,
    /// `not_ready`: `ok`, or `unreachable: ` and why.
    #[schema(required = false)]
    pub database: String,
    /// `not_ready`: `ok`, or `unreachable: ` and why.
    #[schema(required = false)]
    pub broker: String,
}

/// One event's task, as `/receive` answers it.
#[derive(Debug, ToSchema)]
pub struct TaskAnswer {
    /// The task's id (the existing task's for a repeated event).
    pub id: TaskId,
    /// Its status now.
    pub status: TaskStatus,
    /// Where it is reported: `/status/<id>`.
    pub status_url: String,
    /// In the `tasks` of a batch's `409`: `event_conflict` on an event
    /// whose (`source`, `id`) holds another event (nothing stored for it).
    #[schema(required = false, value_type = String, pattern = "^event_conflict$")]
    pub error: ErrorCode,
}

/// A batch's answer: one task per event, in the order of the batch.
#[derive(Debug, ToSchema)]
pub struct BatchAnswer {
    /// The events' tasks.
    pub tasks: Vec<TaskAnswer>,
}

/// What `/receive` answers: one task, or a batch's tasks.
#[derive(Debug, ToSchema)]
#[serde(untagged)]
pub enum ReceiveAnswer {
    /// One event (structured or binary mode).
    One(TaskAnswer),
    /// A batch.
    Batch(BatchAnswer),
}

/// A page of `GET /tasks`.
#[derive(Debug, ToSchema)]
pub struct TaskPage {
    /// Tasks newest first.
    pub tasks: Vec<TaskSummary>,
    /// The relative URL of the next page when this one is full, else null.
    pub next: Option<String>,
}

/// `GET /tasks/counts`.
#[derive(Debug, ToSchema)]
pub struct CountsAnswer {
    /// The counts.
    #[serde(flatten)]
    pub counts: TaskCounts,
    /// How old the counts are, in milliseconds (at most 1 000).
    pub age_ms: u64,
}

/// `POST /tasks/<id>/cancel` of a `pending`, `retrying` or `cancelled` task.
#[derive(Debug, ToSchema)]
pub struct Cancelled {
    /// The task.
    pub id: TaskId,
    /// `cancelled`.
    #[schema(value_type = String, pattern = "^cancelled$")]
    pub status: TaskStatus,
    /// Where it is reported.
    pub status_url: String,
}

/// `POST /tasks/<id>/cancel` of a `running` task: its worker is told to stop.
#[derive(Debug, ToSchema)]
pub struct CancelRequested {
    /// The task.
    pub id: TaskId,
    /// `running`: it becomes `cancelled` once its worker stops it.
    #[schema(value_type = String, pattern = "^running$")]
    pub status: TaskStatus,
    /// Always true.
    pub cancel_requested: bool,
    /// Where it is reported.
    pub status_url: String,
}

/// `POST /tasks/<id>/retry`: the task is `pending` again.
#[derive(Debug, ToSchema)]
pub struct Retried {
    /// The task.
    pub id: TaskId,
    /// `pending`.
    #[schema(value_type = String, pattern = "^pending$")]
    pub status: TaskStatus,
    /// The new budget: attempts made so far plus the route's.
    pub max_attempts: i32,
    /// Where it is reported.
    pub status_url: String,
}

/// `GET /health`.
#[derive(Debug, ToSchema)]
pub struct Health {
    /// `ok`.
    #[schema(pattern = "^ok$")]
    pub status: String,
    /// The backend that answered: `sqlite` or `postgres`.
    #[schema(pattern = "^(sqlite|postgres)$")]
    pub database: String,
}

/// `GET /ready`: the database and the broker answered.
#[derive(Debug, ToSchema)]
pub struct Ready {
    /// `ready`.
    #[schema(pattern = "^ready$")]
    pub status: String,
    /// `ok`.
    #[schema(pattern = "^ok$")]
    pub database: String,
    /// `ok`.
    #[schema(pattern = "^ok$")]
    pub broker: String,
}

/// The query of `GET /tasks`; every parameter is optional and narrows the
/// list. Anything else (an unknown or repeated parameter, an empty value)
/// is a `400 invalid_parameter` naming it.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Tasks in this status; repeat it, or separate statuses with commas
    /// (`status=failed,cancelled`).
    #[param(explode = true, style = Form)]
    pub status: Option<Vec<TaskStatus>>,
    /// The event's exact type.
    #[param(rename = "type", min_length = 1, max_length = 1024)]
    pub event_type: Option<String>,
    /// The event's exact source.
    #[param(min_length = 1, max_length = 1024)]
    pub source: Option<String>,
    /// Created strictly after this RFC 3339 time.
    pub created_after: Option<chrono::DateTime<chrono::Utc>>,
    /// Created strictly before this RFC 3339 time.
    pub created_before: Option<chrono::DateTime<chrono::Utc>>,
    /// Rows per page (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
    /// Where the page starts: take it from `next`, never build it.
    pub cursor: Option<String>,
}

/// The headers `/receive` reads besides `Content-Type`.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Header)]
pub struct ReceiveHeaders {
    /// Names the task as (`source`, `id`) does: the same key with the same
    /// event returns the existing task (200), with another event
    /// `422 idempotency_key_reused`. 1 to 255 visible ASCII characters,
    /// sent once; not with a batch.
    #[param(
        rename = "Idempotency-Key",
        min_length = 1,
        max_length = 255,
        pattern = "^[!-~]+$"
    )]
    pub idempotency_key: Option<String>,
    /// Binary mode: its presence makes the `ce-*` headers the event's
    /// attributes (percent-encoded) and the body its `data`.
    #[param(rename = "ce-specversion", pattern = "^1\\.")]
    pub ce_specversion: Option<String>,
    /// Binary mode: the event's type.
    #[param(rename = "ce-type")]
    pub ce_type: Option<String>,
    /// Binary mode: the event's source.
    #[param(rename = "ce-source")]
    pub ce_source: Option<String>,
    /// Binary mode: the event's id.
    #[param(rename = "ce-id")]
    pub ce_id: Option<String>,
    /// Binary mode: do not run before this RFC 3339 time (in a structured
    /// event, the `notbefore` attribute; in a 0.1 event,
    /// `extensions.notbefore`). Any other `ce-*` header is an attribute too.
    #[param(rename = "ce-notbefore")]
    pub ce_notbefore: Option<chrono::DateTime<chrono::Utc>>,
}

/// A structured CloudEvents 1.x event (`specversion` `1.0`, or any `1.x`).
/// Any other attribute is an extension, kept as sent.
#[derive(Debug, ToSchema)]
pub struct CloudEvent {
    /// `1.0` (any `1.x` is read the same way).
    #[schema(pattern = "^1\\.")]
    pub specversion: String,
    /// The event's type: picks the route.
    #[serde(rename = "type")]
    #[schema(min_length = 1, max_length = 1024)]
    pub event_type: String,
    /// Who sent it; with `id`, names the event.
    #[schema(min_length = 1, max_length = 1024)]
    pub source: String,
    /// The event's id, unique per `source`.
    #[schema(min_length = 1, max_length = 1024)]
    pub id: String,
    /// Ferry's extension: do not run before this RFC 3339 time.
    #[schema(required = false)]
    pub notbefore: chrono::DateTime<chrono::Utc>,
    /// The payload (what `echo` answers, what `exec` reads).
    #[schema(required = false)]
    pub data: Value,
    /// Binary data, base64.
    #[schema(required = false)]
    pub data_base64: String,
    /// The media type of `data`.
    #[schema(required = false)]
    pub datacontenttype: String,
    /// Other attributes and extensions.
    #[serde(flatten)]
    pub extensions: BTreeMap<String, Value>,
}

/// A CloudEvents 0.1 event, as pacifica sends them.
#[derive(Debug, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CloudEventV01 {
    /// `0.1`.
    pub cloud_events_version: String,
    /// The event's type: picks the route.
    #[schema(min_length = 1, max_length = 1024)]
    pub event_type: String,
    /// Who sent it; with `eventID`, names the event.
    #[schema(min_length = 1, max_length = 1024)]
    pub source: String,
    /// The event's id, unique per `source`.
    #[serde(rename = "eventID")]
    #[schema(min_length = 1, max_length = 1024)]
    pub event_id: String,
    /// Extension attributes; `notbefore` (an RFC 3339 time) delays the task.
    #[schema(required = false)]
    pub extensions: BTreeMap<String, Value>,
    /// The payload.
    #[schema(required = false)]
    pub data: Value,
    /// Other attributes (`eventTime`, `contentType`, …).
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

/// One structured event: CloudEvents 1.x (`specversion`) or 0.1
/// (`cloudEventsVersion`).
#[derive(Debug)]
pub struct StructuredEvent;

impl PartialSchema for StructuredEvent {
    fn schema() -> RefOr<Schema> {
        // anyOf, not oneOf: an extension attribute may make a 1.x event
        // look like a 0.1 one too; `specversion` wins.
        let one_of = OneOfBuilder::new()
            .item(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                CloudEvent::name(),
            )))
            .item(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                CloudEventV01::name(),
            )))
            .build();
        let any_of = utoipa::openapi::schema::AnyOf {
            items: one_of.items,
            description: Some(
                "A structured event: CloudEvents 1.x, or 0.1 as pacifica sends it.".into(),
            ),
            ..Default::default()
        };
        Schema::AnyOf(any_of).into()
    }
}

impl ToSchema for StructuredEvent {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push((CloudEvent::name().into(), CloudEvent::schema()));
        CloudEvent::schemas(schemas);
        schemas.push((CloudEventV01::name().into(), CloudEventV01::schema()));
        CloudEventV01::schemas(schemas);
    }
}

/// `application/cloudevents-batch+json`: a non-empty array of events.
#[derive(Debug)]
pub struct EventBatch;

impl PartialSchema for EventBatch {
    fn schema() -> RefOr<Schema> {
        ArrayBuilder::new()
            .items(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                StructuredEvent::name(),
            )))
            .min_items(Some(1))
            .description(Some("A batch: one task per event, stored together."))
            .into()
    }
}

impl ToSchema for EventBatch {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push((StructuredEvent::name().into(), StructuredEvent::schema()));
        StructuredEvent::schemas(schemas);
    }
}
