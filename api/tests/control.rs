//! `POST /tasks/<id>/cancel` and `/retry` over HTTP, with real processes:
//! a cancel from the api reaches a worker process (or standalone's
//! in-process workers), which kills the running `exec` command with its
//! whole process group and records `cancelled`; a cancelled or failed task
//! runs again after a retry.

use std::time::{Duration, Instant};

use ferry_testkit::{Layout, Stack};
use serde_json::{json, Value};

const DONE: Duration = Duration::from_secs(60);

/// One slot per worker: a running `hang` task keeps every later task
/// queued (its message waits in the queue, its row `pending`).
async fn start(layout: Layout, worker_env: &[(&str, &str)]) -> Option<Stack> {
    let env: Vec<(String, String)> = worker_env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Stack::start_with(layout, 1, move |mut d| {
        d = d.env("FERRY_CONCURRENCY", "1");
        for (k, v) in &env {
            d = d.env(k, v);
        }
        d
    })
    .await
}

/// Whether process `pid` runs (a zombie is dead: it only waits to be reaped).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses.
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

/// Waits until `pids` are all gone; fails after `timeout`.
async fn wait_gone(pids: &[u32], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while pids.iter().any(|&pid| alive(pid)) {
        assert!(
            Instant::now() < deadline,
            "still alive after {timeout:?}: {:?}",
            pids.iter().filter(|&&p| alive(p)).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Submits a `hang` task and waits until it runs and wrote its pids.
async fn hanging(stack: &Stack, id: &str) -> (String, (u32, u32)) {
    let task = stack.api.submit("org.ferry.hang", id, Value::Null).await;
    stack.api.wait_for(&task, "running", DONE).await;
    let deadline = Instant::now() + DONE;
    loop {
        if let Some(pids) = stack.deployment.hang_pids(&task) {
            assert!(alive(pids.0) && alive(pids.1), "{pids:?}");
            return (task, pids);
        }
        assert!(Instant::now() < deadline, "the hang task wrote no pids");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Cancels the running `task` and returns how long until `/status` said
/// `cancelled`, and its view then.
async fn cancel_running(stack: &Stack, task: &str) -> (Duration, Value) {
    let api = &stack.api;
    let started = Instant::now();
    let r = api.post_path(&format!("/tasks/{task}/cancel")).await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    assert_eq!(
        r.body,
        json!({"id": task, "status": "running", "cancel_requested": true, "status_url": format!("/status/{task}")})
    );
    assert_eq!(r.headers["location"], format!("/status/{task}"));
    // Until the stop lands, /status says it was asked for (with a control
    // message it may land before this read; without one it takes up to a
    // second, the lease renewal).
    let asked = api.status(task).await.body;
    match asked["status"].as_str() {
        Some("running") => assert!(asked["cancel_requested_at"].is_string(), "{asked:#}"),
        Some("cancelled") => {}
        _ => panic!("{asked:#}"),
    }
    let view = api.wait_for(task, "cancelled", DONE).await;
    assert!(view["cancel_requested_at"].is_null(), "{view:#}");
    (started.elapsed(), view)
}

fn assert_cancelled_attempt(view: &Value) {
    assert_eq!(view["attempts"], 1, "{view:#}");
    assert!(view["finished_at"].is_string(), "{view:#}");
    assert!(view["result"].is_null(), "{view:#}");
    let history = view["attempt_history"].as_array().unwrap();
    assert_eq!(history.len(), 1, "{view:#}");
    assert!(history[0]["finished_at"].is_string(), "{view:#}");
    assert!(
        history[0]["error"].as_str().unwrap().contains("cancelled"),
        "{view:#}"
    );
}

/// Cancel (queued, running, twice, finished) and retry (cancelled, failed,
/// succeeded) on one stack.
async fn cancel_and_retry(stack: &Stack) {
    let api = &stack.api;
    let deployment = &stack.deployment;

    // The only slot runs a hang task; a counting task waits behind it.
    let (hang, (command, grandchild)) = hanging(stack, "hang-1").await;
    let queued = api.submit("org.ferry.count", "queued-1", Value::Null).await;
    assert_eq!(api.status(&queued).await.body["status"], "pending");

    // A pending task is cancelled at once, and again is the same answer.
    let expected =
        json!({"id": queued, "status": "cancelled", "status_url": format!("/status/{queued}")});
    for _ in 0..2 {
        let r = api.post_path(&format!("/tasks/{queued}/cancel")).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert_eq!(r.body, expected);
    }
    let view = api.status(&queued).await.body;
    assert_eq!(view["status"], "cancelled", "{view:#}");
    assert_eq!(view["attempts"], 0, "{view:#}");
    assert!(view["finished_at"].is_string(), "{view:#}");

    // The running task stops within a second: the command and the process
    // it started are killed.
    let (took, view) = cancel_running(stack, &hang).await;
    assert!(took < Duration::from_secs(2), "cancel took {took:?}");
    eprintln!("running task cancelled in {took:?}");
    assert_cancelled_attempt(&view);
    wait_gone(&[command, grandchild], Duration::from_secs(2)).await;
    let r = api.post_path(&format!("/tasks/{hang}/cancel")).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["status"], "cancelled");

    // The slot is free: the cancelled task's message is delivered and
    // acknowledged without running. A task behind it runs, so the worker
    // got past it.
    let after = api.submit("org.ferry.count", "after-1", Value::Null).await;
    api.wait_for(&after, "succeeded", DONE).await;
    assert_eq!(api.status(&queued).await.body["status"], "cancelled");
    let runs = deployment.runs_per_task();
    assert_eq!(runs.get(&queued), None, "the cancelled task ran: {runs:?}");
    assert_eq!(runs.get(&hang), Some(&1), "{runs:?}");

    // A finished task cannot be cancelled, nor retried unless it failed.
    let r = api.post_path(&format!("/tasks/{after}/cancel")).await;
    r.assert_error(409, "task_finished");
    assert_eq!(r.body["status"], "succeeded");
    assert_eq!(r.body["id"], after.as_str());
    let r = api.post_path(&format!("/tasks/{after}/retry")).await;
    r.assert_error(409, "task_not_retryable");
    assert_eq!(r.body["status"], "succeeded");
    assert_eq!(api.status(&after).await.body["status"], "succeeded");

    // A cancelled task runs after a retry.
    let r = api.post_path(&format!("/tasks/{queued}/retry")).await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    assert_eq!(r.body["status"], "pending");
    assert_eq!(r.body["max_attempts"], 3);
    let view = api.wait_for(&queued, "succeeded", DONE).await;
    assert_eq!(view["attempts"], 1, "{view:#}");
    assert_eq!(view["result"], json!({"counted": true}));
    assert_eq!(deployment.runs_per_task().get(&queued), Some(&1));

    // A failed task runs again: its attempts go on from 4, with a new
    // budget of 3, and the first three stay in its history.
    let failing = api.submit("org.ferry.fail", "fail-1", Value::Null).await;
    let view = api.wait_for(&failing, "failed", DONE).await;
    assert_eq!(view["attempts"], 3, "{view:#}");
    let r = api.post_path(&format!("/tasks/{failing}/retry")).await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    assert_eq!(r.body["max_attempts"], 6);
    let view = api.status(&failing).await.body;
    assert_ne!(view["status"], "failed", "{view:#}");
    assert!(view["finished_at"].is_null(), "{view:#}");
    let view = api.wait_for(&failing, "failed", DONE).await;
    assert_eq!(view["attempts"], 6, "{view:#}");
    assert_eq!(view["max_attempts"], 6, "{view:#}");
    let history = view["attempt_history"].as_array().unwrap();
    let numbers: Vec<i64> = history
        .iter()
        .map(|a| a["attempt"].as_i64().unwrap())
        .collect();
    assert_eq!(numbers, [1, 2, 3, 4, 5, 6], "{view:#}");
    assert!(
        view["error"].as_str().unwrap().contains("attempt 6"),
        "{view:#}"
    );

    // Unknown and malformed ids.
    let unknown = "4b9b8e0e-6a3c-4d25-9d4e-2f0f6a7d1c11";
    for action in ["cancel", "retry"] {
        api.post_path(&format!("/tasks/{unknown}/{action}"))
            .await
            .assert_error(404, "task_not_found");
        api.post_path(&format!("/tasks/not-a-uuid/{action}"))
            .await
            .assert_error(400, "invalid_id");
    }
}

/// The worker hears no control message (its subscription is off): the
/// cancel still lands, at its next lease renewal (at most a second later).
async fn cancel_lands_through_the_lease(stack: &Stack) {
    let (hang, (command, grandchild)) = hanging(stack, "hang-fallback").await;
    let (took, view) = cancel_running(stack, &hang).await;
    eprintln!("running task cancelled through the lease renewal in {took:?}");
    assert!(took < Duration::from_secs(3), "cancel took {took:?}");
    assert_cancelled_attempt(&view);
    wait_gone(&[command, grandchild], Duration::from_secs(2)).await;
    let log = match stack.workers.first() {
        Some(worker) => worker.log_text(),
        None => stack.api.proc.log_text(),
    };
    assert!(
        log.contains("cancel found at lease renewal"),
        "the lease renewal did not stop it:\n{log}"
    );
}

macro_rules! control_tests {
    ($check:path, $env:expr; $($layout:ident => $name:ident),+ $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                if let Some(stack) = start(Layout::$layout, $env).await {
                    $check(&stack).await;
                }
            }
        )+
    };
}

control_tests!(cancel_and_retry, &[];
    Sqlite => cancel_and_retry_sqlite,
    Postgres => cancel_and_retry_postgres,
    Standalone => cancel_and_retry_standalone);

control_tests!(cancel_lands_through_the_lease, &[("FERRY_TEST_IGNORE_CONTROL", "1")];
    Sqlite => cancel_without_control_message_sqlite,
    Postgres => cancel_without_control_message_postgres,
    Standalone => cancel_without_control_message_standalone);
