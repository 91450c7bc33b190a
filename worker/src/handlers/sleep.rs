//! `sleep`: waits the route's `duration`, then succeeds.

use std::time::Duration;

use serde_json::{json, Value};

use super::HandlerError;

pub(super) async fn run(duration: Duration) -> Result<Value, HandlerError> {
    tokio::time::sleep(duration).await;
    Ok(json!({ "slept_ms": duration.as_millis() as u64 }))
}
