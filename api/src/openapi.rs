//! `GET /openapi.json`: the OpenAPI 3.1 document of the HTTP API, derived
//! from the code by utoipa. Each route's `#[utoipa::path]` (next to its
//! Rocket attribute, from which utoipa takes the method, the path and its
//! parameters) says what it reads and answers; the model types derive
//! their schemas ([`bodies`] has those of the bodies built with `json!`).
//! [`EveryRequest`] adds the refusals any request can meet, whichever route
//! it is for.
//!
//! `api/tests/openapi.rs` holds the document to the app: every mounted
//! route is in it and nothing else, and real answers of every route match
//! the documented statuses, codes and schemas (`api/tests/openapi_http.rs`:
//! also those of real deployments). CI validates it with an OpenAPI
//! validator (`.ci/run`).

pub mod bodies;

use std::sync::OnceLock;

use rocket::http::ContentType;
use rocket::{get, routes, Route};
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::schema::{ObjectBuilder, Schema, SchemaType, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, HeaderBuilder, Ref, RefOr, Response};
use utoipa::{Modify, OpenApi, ToSchema};

use crate::auth::{self, Auth, Read};
use crate::error::ErrorCode;
use bodies::ErrorBody;

/// The document's source: every route's `#[utoipa::path]`.
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "Ferry",
        description = "A task queue with a status-tracking REST API. A producer posts a \
            CloudEvent to `/receive`; Ferry stores it as a task, queues it, and a worker \
            runs the handler its type is routed to. Every refusal is JSON \
            `{\"error\": <code>, \"message\": <text>}`."
    ),
    paths(
        crate::routes::receive::receive,
        crate::routes::status::status,
        crate::routes::status::events,
        crate::routes::tasks::list,
        crate::routes::tasks::counts,
        crate::routes::tasks::record,
        crate::routes::control::cancel,
        crate::routes::control::retry,
        crate::routes::status::health,
        crate::routes::status::ready,
        crate::metrics::metrics,
        openapi_json,
        crate::dashboard::dashboard_page,
        crate::dashboard::dashboard_file,
    ),
    components(schemas(ErrorBody, ErrorCode, ferry_core::db::TaskEvent)),
    modifiers(&EveryRequest, &NullsAreSent, &BearerAuth),
    tags(
        (name = "tasks", description = "Submit events, follow and steer their tasks."),
        (name = "service", description = "Probes and this document."),
        (name = "dashboard", description = "The operator's dashboard: a page and its files, \
            which hold no data (its script reads the task routes)."),
    )
)]
pub struct ApiDoc;

/// The document, built once.
pub fn document() -> &'static utoipa::openapi::OpenApi {
    static DOC: OnceLock<utoipa::openapi::OpenApi> = OnceLock::new();
    DOC.get_or_init(ApiDoc::openapi)
}

/// The document as JSON, serialized once.
pub fn json() -> &'static str {
    static JSON: OnceLock<String> = OnceLock::new();
    JSON.get_or_init(|| {
        // The model serializes to a map with string keys: it cannot fail.
        serde_json::to_string(document()).expect("the OpenAPI document serializes")
    })
}

/// The routes of this module.
pub fn routes() -> Vec<Route> {
    routes![openapi_json]
}

/// This document: what every route reads and answers, OpenAPI 3.1.
#[utoipa::path(
    tag = "service",
    responses(
        (status = 200, description = "The OpenAPI 3.1 document of this API.",
            content_type = "application/json", body = Object),
    )
)]
#[get("/openapi.json")]
fn openapi_json(_auth: Auth<Read>) -> (ContentType, &'static str) {
    (ContentType::JSON, json())
}

/// Every operation of a path, with its method in lowercase.
pub fn operations_mut(item: &mut PathItem) -> impl Iterator<Item = (&'static str, &mut Operation)> {
    [
        ("get", &mut item.get),
        ("put", &mut item.put),
        ("post", &mut item.post),
        ("delete", &mut item.delete),
        ("options", &mut item.options),
        ("head", &mut item.head),
        ("patch", &mut item.patch),
        ("trace", &mut item.trace),
    ]
    .into_iter()
    .filter_map(|(method, op)| op.as_mut().map(|op| (method, op)))
}

/// The refusals any request can meet, whatever its route: those of the
/// listener before Rocket sees it (`api/src/listener.rs`), an unexpected
/// error, and the database's absence for every route that reads or writes
/// it (all but this document).
#[derive(Debug)]
pub struct EveryRequest;

/// `(status, codes and when)` that any request can be answered with.
const ANY_REQUEST: &[(u16, &str)] = &[
    (
        400,
        "refused before routing: `malformed_request` (the request does not parse, or its \
         framing is ambiguous), `malformed_content_length`, `invalid_header` (a header \
         value that is not UTF-8)",
    ),
    (
        408,
        "`request_timeout`: the headers or the body did not arrive within `request_timeout`",
    ),
    (414, "`uri_too_long`: the request target is over 8 KiB"),
    (
        431,
        "`headers_too_large`: the header section is over 64 KiB or 100 fields",
    ),
    (500, "`internal`: an unexpected error (the cause is logged)"),
];

/// The paths whose answers never fail for the database: this document and
/// the dashboard's files, all compiled in; `/ready`, which says what does not
/// answer in its own 503; `/metrics`, whose counts come from a cache that a
/// failed recount leaves as it was.
const WITHOUT_DATABASE: &[&str] = &[
    "/openapi.json",
    "/",
    "/dashboard/{file}",
    "/ready",
    "/metrics",
];

/// The response of every route that uses the database when it cannot.
const DATABASE_UNAVAILABLE: &str = "`database_unavailable`: the task database cannot be reached \
     (or SQLite stayed locked); retry after `Retry-After` seconds";

/// An error response: `description`, with the error body.
pub fn error_response(description: &str) -> Response {
    let mut response = Response::new(description);
    response.content.insert(
        "application/json".into(),
        ContentBuilder::new()
            .schema(Some(RefOr::Ref(Ref::from_schema_name(ErrorBody::name()))))
            .build(),
    );
    response
}

/// Adds `description` to the `status` response of `op`: to its
/// description if the route documents that status already, else as a new
/// error response.
fn add_error(op: &mut Operation, status: u16, description: &str) {
    match op.responses.responses.get_mut(&status.to_string()) {
        Some(RefOr::T(response)) => {
            response.description = format!("{}; or {description}", response.description);
        }
        Some(RefOr::Ref(_)) => {}
        None => {
            op.responses
                .responses
                .insert(status.to_string(), error_response(description).into());
        }
    }
}

impl Modify for EveryRequest {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        for (path, item) in doc.paths.paths.iter_mut() {
            let uses_database = !WITHOUT_DATABASE.contains(&path.as_str());
            for (_, op) in operations_mut(item) {
                for (status, description) in ANY_REQUEST {
                    add_error(op, *status, description);
                }
                if uses_database {
                    add_error(op, 503, DATABASE_UNAVAILABLE);
                    if let Some(RefOr::T(response)) = op.responses.responses.get_mut("503") {
                        if response.headers.contains_key("Retry-After") {
                            continue; // The route says it already.
                        }
                        let seconds = ObjectBuilder::new().schema_type(Type::Integer).build();
                        response.headers.insert(
                            "Retry-After".into(),
                            HeaderBuilder::new()
                                .schema(seconds)
                                .description(Some("Seconds to wait: 5."))
                                .build(),
                        );
                    }
                }
            }
        }
    }
}

/// Ferry sends every field of its answers, `null` when it has no value
/// (no `skip_serializing_if` anywhere in them), while utoipa takes an
/// `Option` field for one that may be absent: every nullable property is
/// made required. (The request schemas have no nullable property.) And a
/// parameter is never `null`: it is sent or left out.
#[derive(Debug)]
pub struct NullsAreSent;

fn nullable(schema: &RefOr<Schema>) -> bool {
    let Ok(schema) = serde_json::to_value(schema) else {
        return false;
    };
    let null = serde_json::json!("null");
    let typed_null = |s: &serde_json::Value| {
        s["type"] == null || s["type"].as_array().is_some_and(|t| t.contains(&null))
    };
    typed_null(&schema)
        || schema["oneOf"]
            .as_array()
            .is_some_and(|items| items.iter().any(typed_null))
}

fn require_nullables(schema: &mut RefOr<Schema>) {
    match schema {
        RefOr::T(Schema::Object(object)) => {
            let names: Vec<String> = object
                .properties
                .iter()
                .filter(|(name, property)| nullable(property) && !object.required.contains(name))
                .map(|(name, _)| name.clone())
                .collect();
            object.required.extend(names);
        }
        RefOr::T(Schema::AllOf(all)) => all.items.iter_mut().for_each(require_nullables),
        _ => {}
    }
}

/// A parameter a client leaves out is absent, never `null` (utoipa makes
/// an `Option` header nullable).
fn not_null(schema: &mut RefOr<Schema>) {
    if let RefOr::T(Schema::Object(object)) = schema {
        if let SchemaType::Array(types) = &object.schema_type {
            let mut types: Vec<Type> = types
                .iter()
                .filter(|t| **t != Type::Null)
                .cloned()
                .collect();
            object.schema_type = match types.len() {
                1 => SchemaType::Type(types.remove(0)),
                _ => SchemaType::Array(types),
            };
        }
    }
}

impl Modify for NullsAreSent {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        for item in doc.paths.paths.values_mut() {
            for (_, op) in operations_mut(item) {
                for parameter in op.parameters.iter_mut().flatten() {
                    parameter.schema.iter_mut().for_each(not_null);
                }
            }
        }
        if let Some(components) = doc.components.as_mut() {
            components.schemas.values_mut().for_each(require_nullables);
        }
    }
}

/// The security scheme's name in the document.
pub const BEARER: &str = "bearer";

/// Whether the document's `method path` is one of the auth guard's
/// [`auth::OPEN_ROUTES`] (which name paths as Rocket mounts them).
fn is_open(method: &str, path: &str) -> bool {
    let mounted = path.replace('{', "<").replace('}', ">");
    auth::OPEN_ROUTES
        .iter()
        .any(|(m, p)| m.as_str().eq_ignore_ascii_case(method) && *p == mounted)
}

/// The scope a route needs: `submit` to post events, `admin` to steer
/// tasks, `read` for everything else.
fn scope(method: &str, path: &str) -> &'static str {
    match (method, path) {
        ("post", "/receive") => "submit",
        ("post", _) => "admin",
        _ => "read",
    }
}

/// Bearer tokens: when `server.conf` lists `[[tokens]]`, every route but
/// the [`auth::OPEN_ROUTES`] needs `Authorization: Bearer <token>` of a token
/// with the route's scope, else `401 unauthorized` (with
/// `WWW-Authenticate: Bearer`) or `403 forbidden`.
#[derive(Debug)]
pub struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some(
                "A token listed in `server.conf` (`[[tokens]]`, stored as its SHA-256), with the \
                 route's scope: `submit` for `POST /receive`, `admin` for cancel and retry, `read` \
                 for the rest. With no token configured the API is open.",
            ))
            .build();
        doc.components
            .get_or_insert_with(Default::default)
            .add_security_scheme(BEARER, SecurityScheme::Http(scheme));
        for (path, item) in doc.paths.paths.iter_mut() {
            for (method, op) in operations_mut(item) {
                if is_open(method, path) {
                    continue;
                }
                let scope = scope(method, path);
                op.security = Some(vec![SecurityRequirement::new(BEARER, [scope])]);
                add_error(
                    op,
                    401,
                    "`unauthorized`: tokens are configured and the request has none, a \
                     malformed `Authorization` header or an unknown token",
                );
                if let Some(RefOr::T(response)) = op.responses.responses.get_mut("401") {
                    let text = ObjectBuilder::new().schema_type(Type::String).build();
                    response.headers.insert(
                        "WWW-Authenticate".into(),
                        HeaderBuilder::new()
                            .schema(text)
                            .description(Some("`Bearer`, with an `error` when a token was sent."))
                            .build(),
                    );
                }
                add_error(
                    op,
                    403,
                    &format!("`forbidden`: the token does not have the `{scope}` scope"),
                );
            }
        }
    }
}
