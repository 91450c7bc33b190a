//! `GET /status/<id>`: where a task is. `GET /health`: is the API serving.

use rocket::http::Status;
use rocket::{get, routes, Route, State};
use serde_json::json;

use crate::auth::{Auth, Read};
use crate::error::{ApiError, JsonResponse};
use crate::routes::{parse_task_id, task_not_found};
use crate::AppState;

/// The routes of this module.
pub fn routes() -> Vec<Route> {
    routes![status, health]
}

/// Where a task is: its status, result or error, and every attempt.
#[utoipa::path(
    tag = "tasks",
    params(("id" = ferry_core::TaskId, Path, description = "The task's id (a UUID).")),
    responses(
        (status = 200, description = "The task's status.", body = ferry_core::task::TaskView),
        (status = 400, description = "`invalid_id`: the id is not a UUID", body = crate::openapi::bodies::ErrorBody),
        (status = 404, description = "`task_not_found`: no task has this id", body = crate::openapi::bodies::ErrorBody),
    )
)]
#[get("/status/<id>")]
async fn status(
    _auth: Auth<Read>,
    id: &str,
    state: &State<AppState>,
) -> Result<JsonResponse, ApiError> {
    let id = parse_task_id(id)?;
    let view = state.task_view(id).await?;
    match view {
        Some(view) => Ok(JsonResponse::new(Status::Ok, view)),
        None => Err(task_not_found(id)),
    }
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
