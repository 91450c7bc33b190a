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

#[get("/health")]
async fn health(state: &State<AppState>) -> Result<JsonResponse, ApiError> {
    state.db.run_blocking(|db| db.ping()).await?;
    Ok(JsonResponse::new(
        Status::Ok,
        json!({ "status": "ok", "database": state.db.backend() }),
    ))
}
