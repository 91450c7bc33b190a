//! `fail`: always fails, retryably; for demos and tests of retries.

use serde_json::Value;

use super::{HandlerError, TaskContext};

pub(super) fn run(ctx: TaskContext<'_>) -> Result<Value, HandlerError> {
    Err(HandlerError::retryable(format!(
        "the fail handler fails every attempt (this was attempt {})",
        ctx.attempt
    )))
}
