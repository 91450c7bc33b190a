//! `POST /tasks/<id>/cancel` and `POST /tasks/<id>/retry`: a client steers
//! a task it submitted.
//!
//! - cancel: a `pending` or `retrying` task is `cancelled` at once (200); a
//!   `running` one is asked to stop (202): the stop is recorded in the
//!   database and every worker is told on the control exchange
//!   (`ferry_core::control`); the worker running it kills the handler and
//!   records `cancelled`. A `cancelled` task answers 200 again; a finished
//!   one is `409 task_finished`.
//! - retry: a `failed` or `cancelled` task is `pending` again with a fresh
//!   attempt budget and is published (202); any other status is
//!   `409 task_not_retryable`.

use std::time::Duration;

use chrono::Utc;
use rocket::http::Status;
use rocket::{post, routes, Route, State};
use serde_json::json;

use ferry_core::db::{CancelAnswer, RetryAnswer};
use ferry_core::{TaskId, TaskStatus};

use crate::auth::{Admin, Auth};
use crate::error::{ApiError, ErrorCode, JsonResponse};
use crate::routes::{parse_task_id, task_not_found};
use crate::AppState;

/// Longest a cancel waits for the broker to take its control message; past
/// that the worker finds the request at its next lease renewal.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(2);

/// The routes of this module.
pub fn routes() -> Vec<Route> {
    routes![cancel, retry]
}

/// A 409 that names the task's status.
fn conflict(code: ErrorCode, id: TaskId, status: TaskStatus, message: String) -> JsonResponse {
    JsonResponse::new(
        Status::Conflict,
        json!({
            "error": code,
            "message": message,
            "id": id,
            "status": status,
            "status_url": format!("/status/{id}"),
        }),
    )
}

/// Cancels a task: at once if it waits, by stopping its worker if it runs.
#[utoipa::path(
    tag = "tasks",
    params(("id" = ferry_core::TaskId, Path, description = "The task's id (a UUID).")),
    responses(
        (status = 200, description = "The task was `pending` or `retrying` and is `cancelled` \
            (or was already): it never runs.", body = crate::openapi::bodies::Cancelled),
        (status = 202, description = "The task is `running`: its worker is told to stop it and \
            record `cancelled`.", body = crate::openapi::bodies::CancelRequested,
            headers(("Location" = String, description = "The task's `status_url`."))),
        (status = 400, description = "`invalid_id`: the id is not a UUID", body = crate::openapi::bodies::ErrorBody),
        (status = 404, description = "`task_not_found`: no task has this id", body = crate::openapi::bodies::ErrorBody),
        (status = 409, description = "`task_finished`: the task already `succeeded` or `failed`; \
            `status` says which", body = crate::openapi::bodies::ErrorBody),
    )
)]
#[post("/tasks/<id>/cancel")]
async fn cancel(
    _auth: Auth<Admin>,
    id: &str,
    state: &State<AppState>,
) -> Result<JsonResponse, ApiError> {
    let id = parse_task_id(id)?;
    let answer = state.db.run_blocking(move |db| db.cancel(id)).await?;
    if let CancelAnswer::Cancelled = answer {
        state.hints.send(id, None, TaskStatus::Cancelled);
    }
    let status_url = format!("/status/{id}");
    Ok(match answer {
        CancelAnswer::Cancelled | CancelAnswer::AlreadyCancelled => JsonResponse::new(
            Status::Ok,
            json!({ "id": id, "status": TaskStatus::Cancelled, "status_url": status_url }),
        ),
        CancelAnswer::StopRequested { attempt } => {
            // The message names the attempt: late, it cannot stop a newer one.
            let stop = state.queue.publish_cancel(id.attempt(attempt));
            let told = tokio::time::timeout(CONTROL_TIMEOUT, stop).await;
            match told {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(task = %id, error = %e, "cancel not broadcast; the lease renewal will stop it")
                }
                Err(_) => {
                    tracing::warn!(task = %id, "cancel broadcast timed out; the lease renewal will stop it")
                }
            }
            JsonResponse::new(
                Status::Accepted,
                json!({
                    "id": id,
                    "status": TaskStatus::Running,
                    "cancel_requested": true,
                    "status_url": status_url,
                }),
            )
            .with_header("Location", status_url)
        }
        CancelAnswer::Finished(status) => conflict(
            ErrorCode::TaskFinished,
            id,
            status,
            format!("task {id} already finished ({status}); there is nothing to cancel"),
        ),
        CancelAnswer::NotFound => return Err(task_not_found(id)),
    })
}

/// Runs a `failed` or `cancelled` task again, with a fresh attempt budget.
#[utoipa::path(
    tag = "tasks",
    params(("id" = ferry_core::TaskId, Path, description = "The task's id (a UUID).")),
    responses(
        (status = 202, description = "The task is `pending` again and queued.", body = crate::openapi::bodies::Retried,
            headers(("Location" = String, description = "The task's `status_url`."))),
        (status = 400, description = "`invalid_id`: the id is not a UUID", body = crate::openapi::bodies::ErrorBody),
        (status = 404, description = "`task_not_found`: no task has this id", body = crate::openapi::bodies::ErrorBody),
        (status = 409, description = "`task_not_retryable`: the task is neither `failed` nor \
            `cancelled`; `status` says what it is", body = crate::openapi::bodies::ErrorBody),
    )
)]
#[post("/tasks/<id>/retry")]
async fn retry(
    _auth: Auth<Admin>,
    id: &str,
    state: &State<AppState>,
) -> Result<JsonResponse, ApiError> {
    let id = parse_task_id(id)?;
    let config = state.config.clone();
    // The route's attempts, as /receive gives a new task; a type no route
    // takes any more still gets one attempt (its worker then fails it).
    let budget = move |event_type: &str| {
        config.routes.get(event_type).map_or(1, |route| {
            i32::try_from(route.retry.attempts).unwrap_or(i32::MAX)
        })
    };
    let lock = Utc::now() + crate::PUBLISH_LOCK;
    let answer = state
        .db
        .run_blocking(move |db| db.retry(id, budget, lock))
        .await?;
    match answer {
        RetryAnswer::Retried { max_attempts } => {
            state.hints.send(id, None, TaskStatus::Pending);
            // As /receive does: published now, or by the relay once the lock passes.
            state.publish_soon(vec![id]);
            let status_url = format!("/status/{id}");
            Ok(JsonResponse::new(
                Status::Accepted,
                json!({
                    "id": id,
                    "status": TaskStatus::Pending,
                    "max_attempts": max_attempts,
                    "status_url": status_url,
                }),
            )
            .with_header("Location", status_url))
        }
        RetryAnswer::NotRetryable(status) => Ok(conflict(
            ErrorCode::TaskNotRetryable,
            id,
            status,
            format!("task {id} is {status}; only a failed or cancelled task can be retried"),
        )),
        RetryAnswer::NotFound => Err(task_not_found(id)),
    }
}
