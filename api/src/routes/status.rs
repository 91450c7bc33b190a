//! `GET /status/<id>`: where a task is. `GET /health`: is the API serving.

use rocket::http::Status;
use rocket::{get, routes, Route, State};
use serde_json::json;

use ferry_core::TaskId;

use crate::error::{ApiError, ErrorCode, JsonResponse};
use crate::AppState;

/// The routes of this module.
pub fn routes() -> Vec<Route> {
    routes![status, health]
}

#[get("/status/<id>")]
async fn status(id: &str, state: &State<AppState>) -> Result<JsonResponse, ApiError> {
    let id: TaskId = id.parse().map_err(|_| {
        ApiError::new(
            ErrorCode::InvalidId,
            format!("{id:?} is not a task id (a UUID)"),
        )
    })?;
    let view = state.task_view(id).await?;
    match view {
        Some(view) => Ok(JsonResponse::new(Status::Ok, view)),
        None => Err(ApiError::new(
            ErrorCode::TaskNotFound,
            format!("no task has id {id}"),
        )),
    }
}

#[get("/health")]
async fn health(state: &State<AppState>) -> Result<JsonResponse, ApiError> {
    state.db.run_blocking(|db| db.ping()).await?;
    Ok(JsonResponse::new(
        Status::Ok,
        json!({ "status": "ok", "database": state.db.backend() }),
    ))
}
