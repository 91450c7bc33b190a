//! Handlers: what a route runs for a task. One file each.
//!
//! Every handler runs in one of the worker's task slots (`concurrency`).
//! An `exec` command also needs one of the worker's exec permits
//! (`exec_concurrency`, the number of CPUs by default): a command is taken
//! to be CPU-bound, and 64 slots must not fork 64 of them onto two cores.
//! The other handlers wait on the network or a timer and take no permit.

mod echo;
mod exec;
mod fail;
mod http;
mod sleep;

use std::sync::Arc;
use std::time::Duration;

use ferry_core::routes::HandlerSpec;
use ferry_core::TaskId;
use serde_json::Value;
use tokio::sync::{Semaphore, SemaphorePermit};

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

/// The handlers of one worker process, with what they share (an HTTP
/// client, the exec permits).
#[derive(Debug, Clone)]
pub struct Handlers {
    http: reqwest::Client,
    /// `exec_concurrency` permits: one per `exec` command running now.
    exec_permits: Arc<Semaphore>,
    exec_concurrency: usize,
}

impl Default for Handlers {
    fn default() -> Self {
        Self::new(ferry_core::config::default_exec_concurrency())
    }
}

impl Handlers {
    /// Builds the handler set; at most `exec_concurrency` `exec` commands
    /// run at once through it.
    pub fn new(exec_concurrency: usize) -> Self {
        Self {
            http: reqwest::Client::new(),
            exec_permits: Arc::new(Semaphore::new(exec_concurrency)),
            exec_concurrency,
        }
    }

    /// Runs one attempt, bounded by `timeout` (a timeout is retryable).
    ///
    /// An `exec` attempt first waits for an exec permit, and its timeout
    /// counts from when it has one, when its command starts: a wait in the
    /// worker's own line is no fault of the command's. Meanwhile the task
    /// is `running` (it was claimed) and the caller keeps renewing its
    /// lease and hearing cancels, which drop this future, wait included.
    pub async fn run(
        &self,
        spec: &HandlerSpec,
        timeout: Duration,
        ctx: TaskContext<'_>,
    ) -> Result<Value, HandlerError> {
        // Held until the command has exited (or was killed with the future).
        let _permit = match spec {
            HandlerSpec::Exec { .. } => Some(self.exec_permit().await),
            _ => None,
        };
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

impl Handlers {
    /// One of the exec permits, waited for if every one is taken.
    async fn exec_permit(&self) -> SemaphorePermit<'_> {
        if let Ok(permit) = self.exec_permits.try_acquire() {
            return permit;
        }
        tracing::debug!(
            exec_concurrency = self.exec_concurrency,
            "waiting for an exec permit: as many exec commands run as exec_concurrency allows"
        );
        self.exec_permits
            .acquire()
            .await
            .expect("the exec semaphore is never closed")
    }
}

fn humantime_like(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn exec(script: &str) -> HandlerSpec {
        HandlerSpec::Exec {
            command: vec!["sh".into(), "-c".into(), script.into()],
        }
    }

    /// An `exec` attempt waits for a permit, and the wait is not counted in
    /// its timeout; the other handlers take no permit.
    #[tokio::test]
    async fn exec_waits_for_a_permit_outside_its_timeout() {
        let handlers = Handlers::new(1);
        let event = json!({"data": {"n": 1}});
        let ctx = TaskContext {
            id: TaskId::new(),
            attempt: 1,
            event: &event,
        };
        let held = handlers.exec_permits.try_acquire().unwrap();
        // Not an exec: runs while the only permit is held.
        assert_eq!(
            handlers
                .run(&HandlerSpec::Echo, Duration::from_secs(60), ctx)
                .await,
            Ok(json!({"n": 1}))
        );
        let timeout = Duration::from_secs(2);
        let spec = exec("cat >/dev/null; echo '{\"ran\": true}'");
        let mut waiting = std::pin::pin!(handlers.run(&spec, timeout, ctx));
        // Held past the attempt's timeout: were the wait counted, the
        // attempt would time out instead of running once it has the permit.
        let wait = tokio::time::sleep(timeout + Duration::from_secs(1));
        tokio::select! {
            result = &mut waiting => panic!("ran without the permit: {result:?}"),
            () = wait => {}
        }
        drop(held);
        assert_eq!(waiting.await, Ok(json!({"ran": true})));
        assert_eq!(handlers.exec_permits.available_permits(), 1);
    }
}
