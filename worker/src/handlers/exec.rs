//! `exec`: runs the route's `command` with the event JSON on stdin and
//! `FERRY_TASK_ID`, `FERRY_ATTEMPT` in its environment. Its stdout is the
//! result (JSON if it parses, else text). A non-zero exit fails the attempt
//! with the tail of stderr: exit code 75 (`EX_TEMPFAIL`) or death by a signal
//! is retried, any other code fails the task for good. The command starts
//! only once the attempt holds one of the worker's exec permits
//! (`exec_concurrency`; see [`super::Handlers::run`]).
//!
//! The command runs in a process group of its own. An attempt that is
//! stopped before the command exits (a cancel, a timeout, a lost lease,
//! shutdown past the drain timeout) drops this handler's future, and that
//! kills the whole group with SIGKILL: the command and whatever it started.

use std::process::Stdio;

use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use super::{HandlerError, TaskContext};

/// The exit code that asks for a retry.
pub const EXIT_RETRY: i32 = 75;

/// Kills a process group with SIGKILL when dropped, unless disarmed (its
/// id set to `None` once the command ran to its end). The group's id is its
/// leader's pid (the command's), which the kernel does not give to another
/// process while the leader is unreaped or any member of its group lives.
#[derive(Debug)]
struct GroupKiller(Option<u32>);

impl Drop for GroupKiller {
    fn drop(&mut self) {
        let Some(group) = self.0 else { return };
        // `kill` rather than a libc call: the workspace forbids unsafe code.
        let killed = std::process::Command::new("kill")
            .args(["-KILL", "--", &format!("-{group}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if let Err(e) = killed {
            tracing::warn!(group, error = %e, "could not kill the command's process group");
        }
    }
}

/// The last `max` bytes of `text`, cut at a character boundary.
pub(crate) fn tail(text: &str, max: usize) -> &str {
    let text = text.trim_end();
    if text.len() <= max {
        return text;
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

pub(super) async fn run(command: &[String], ctx: TaskContext<'_>) -> Result<Value, HandlerError> {
    let input = serde_json::to_vec(ctx.event)
        .map_err(|e| HandlerError::fatal(format!("cannot serialize the event: {e}")))?;
    let mut child = Command::new(&command[0])
        .args(&command[1..])
        .env("FERRY_TASK_ID", ctx.id.to_string())
        .env("FERRY_ATTEMPT", ctx.attempt.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // A timed-out, cancelled or abandoned attempt must not leave its
        // process behind, nor the processes it started: see `GroupKiller`.
        .kill_on_drop(true)
        .process_group(0)
        .spawn()
        .map_err(|e| HandlerError::fatal(format!("cannot start {:?}: {e}", command[0])))?;
    let mut group = GroupKiller(child.id());
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let writer = async move {
        // A command that does not read its stdin closes the pipe early; that is its business.
        let _ = stdin.write_all(&input).await;
    };
    let (_, output) = tokio::join!(writer, child.wait_with_output());
    // It ran to its end: whatever it left behind is its own business.
    group.0 = None;
    let output = output
        .map_err(|e| HandlerError::retryable(format!("waiting for {:?}: {e}", command[0])))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        let (what, retryable) = match output.status.code() {
            Some(code) => (format!("exit code {code}"), code == EXIT_RETRY),
            None => ("killed by a signal".to_string(), true),
        };
        let message = format!("{} failed with {what}: {}", command[0], tail(&stderr, 2000));
        return Err(if retryable {
            HandlerError::Retryable(message)
        } else {
            HandlerError::Fatal(message)
        });
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    Ok(serde_json::from_str(&stdout)
        .unwrap_or_else(|_| Value::String(stdout.trim_end().to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::TaskId;
    use serde_json::json;

    fn sh(script: &str) -> Vec<String> {
        vec!["sh".into(), "-c".into(), script.into()]
    }

    async fn exec(script: &str) -> Result<Value, HandlerError> {
        let event = json!({"data": {"n": 1}});
        let ctx = TaskContext {
            id: TaskId::new(),
            attempt: 2,
            event: &event,
        };
        run(&sh(script), ctx).await
    }

    #[tokio::test]
    async fn stdout_json_is_the_result() {
        let result = exec(r#"cat >/dev/null; echo "{\"attempt\": $FERRY_ATTEMPT}""#).await;
        assert_eq!(result, Ok(json!({"attempt": 2})));
    }

    #[tokio::test]
    async fn stdin_is_the_event_and_text_stays_text() {
        assert_eq!(exec("cat").await, Ok(json!({"data": {"n": 1}})));
        assert_eq!(exec("echo hello").await, Ok(json!("hello")));
    }

    #[tokio::test]
    async fn exit_codes_decide_retries() {
        let err = exec("echo boom >&2; exit 3").await.unwrap_err();
        let HandlerError::Fatal(message) = &err else {
            panic!("exit 3 is fatal: {err:?}");
        };
        assert!(
            message.contains("exit code 3") && message.contains("boom"),
            "{message}"
        );
        assert!(matches!(
            exec("exit 75").await,
            Err(HandlerError::Retryable(_))
        ));
        assert!(matches!(
            exec("kill -9 $$").await,
            Err(HandlerError::Retryable(_))
        ));
    }

    #[test]
    fn tails_are_cut_at_char_boundaries() {
        assert_eq!(tail("abcdé", 2), "é");
        assert_eq!(tail("abc\n", 10), "abc");
    }
}
