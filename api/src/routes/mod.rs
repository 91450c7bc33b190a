//! HTTP routes, one module per feature.

pub mod control;
pub mod receive;
pub mod status;
pub mod tasks;

use ferry_core::TaskId;

use crate::error::{ApiError, ErrorCode};

/// The task id in a route's path: a UUID, else `400 invalid_id`.
pub(crate) fn parse_task_id(id: &str) -> Result<TaskId, ApiError> {
    id.parse().map_err(|_| {
        ApiError::new(
            ErrorCode::InvalidId,
            format!("{id:?} is not a task id (a UUID)"),
        )
    })
}

/// `404 task_not_found` for `id`.
pub(crate) fn task_not_found(id: TaskId) -> ApiError {
    ApiError::new(ErrorCode::TaskNotFound, format!("no task has id {id}"))
}
