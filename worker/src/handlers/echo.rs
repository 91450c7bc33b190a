//! `echo`: the result is the event's `data`.

use serde_json::Value;

use super::{HandlerError, TaskContext};

pub(super) fn run(ctx: TaskContext<'_>) -> Result<Value, HandlerError> {
    Ok(ctx.event.get("data").cloned().unwrap_or(Value::Null))
}
