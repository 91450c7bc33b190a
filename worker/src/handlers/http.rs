//! `http`: POSTs the event to the route's `url`. 2xx succeeds with the body
//! as the result; 5xx, a timeout or a connection error is retried; any other
//! status fails for good.

use std::time::Duration;

use serde_json::Value;

use super::{HandlerError, TaskContext};

pub(super) async fn run(
    client: &reqwest::Client,
    url: &str,
    timeout: Duration,
    ctx: TaskContext<'_>,
) -> Result<Value, HandlerError> {
    let response = client
        .post(url)
        .timeout(timeout)
        .header("ferry-task-id", ctx.id.to_string())
        .header("ferry-attempt", ctx.attempt.to_string())
        .json(ctx.event)
        .send()
        .await
        .map_err(|e| HandlerError::retryable(format!("POST {url}: {e}")))?;
    let status = response.status();
    let body = response
        .text()
        .await
        .map_err(|e| HandlerError::retryable(format!("reading the response of {url}: {e}")))?;
    if status.is_success() {
        return Ok(serde_json::from_str(&body).unwrap_or(Value::String(body)));
    }
    let message = format!(
        "POST {url} answered {status}: {}",
        super::exec::tail(&body, 2000)
    );
    if status.is_server_error() {
        Err(HandlerError::retryable(message))
    } else {
        Err(HandlerError::fatal(message))
    }
}
