//! Handlers: what a route runs for a task. One file each.

mod echo;
mod exec;
mod fail;
mod http;
mod sleep;

use std::time::Duration;

use ferry_core::routes::HandlerSpec;
use ferry_core::TaskId;
use serde_json::Value;

/// What a handler is given.
#[derive(Debug, Clone, Copy)]
pub struct TaskContext<'a> {
    /// The task's id.
    pub id: TaskId,
    /// This attempt's number, from 1.
    pub attempt: i32,
    /// The whole event.
    pub event: &'a Value,
}

/// Why an attempt failed, and whether another attempt may help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandlerError {
    /// A failure another attempt may get past: the task is retried if its
    /// route allows more attempts.
    #[error("{0}")]
    Retryable(String),
    /// A failure no attempt will get past: the task fails for good.
    #[error("{0}")]
    Fatal(String),
}

impl HandlerError {
    /// A failure another attempt may get past.
    pub fn retryable(message: impl Into<String>) -> Self {
        Self::Retryable(message.into())
    }

    /// A failure no attempt will get past.
    pub fn fatal(message: impl Into<String>) -> Self {
        Self::Fatal(message.into())
    }

    /// What went wrong, as the status report shows it.
    pub fn message(&self) -> &str {
        match self {
            Self::Retryable(message) | Self::Fatal(message) => message,
        }
    }

    /// Whether another attempt may help.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Retryable(_))
    }
}

/// The handlers of one worker process, with what they share (an HTTP client).
#[derive(Debug, Clone)]
pub struct Handlers {
    http: reqwest::Client,
}

impl Default for Handlers {
    fn default() -> Self {
        Self::new()
    }
}

impl Handlers {
    /// Builds the handler set.
    pub fn new() -> Self {
        Self {
            http: reqwest::Client::new(),
        }
    }

    /// Runs one attempt, bounded by `timeout` (a timeout is retryable).
    pub async fn run(
        &self,
        spec: &HandlerSpec,
        timeout: Duration,
        ctx: TaskContext<'_>,
    ) -> Result<Value, HandlerError> {
        let attempt = async {
            match spec {
                HandlerSpec::Echo => echo::run(ctx),
                HandlerSpec::Sleep { duration } => sleep::run(*duration).await,
                HandlerSpec::Fail => fail::run(ctx),
                HandlerSpec::Exec { command } => exec::run(command, ctx).await,
                HandlerSpec::Http { url } => http::run(&self.http, url, timeout, ctx).await,
            }
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(HandlerError::retryable(format!(
                "timed out after {}",
                humantime_like(timeout)
            ))),
        }
    }
}

fn humantime_like(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}
