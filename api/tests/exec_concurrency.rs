//! `exec_concurrency` over real processes: a worker runs at most that many
//! `exec` commands at once, whatever its `concurrency` (task slots). A task
//! waiting for an exec permit is `running` (claimed, its lease renewed, a
//! cancel heard); the other handlers do not wait for permits; with the
//! default (the number of CPUs) as many commands as CPUs run at once.
//!
//! The `org.ferry.gate` route (`testkit/fixtures/gate.sh`) holds each
//! command until the test opens the gate, and reports how many other gate
//! commands were running when it started. Nothing here asserts a timing:
//! every wait polls until a generous deadline.

use std::time::{Duration, Instant};

use ferry_testkit::{Layout, Stack};
use serde_json::Value;

const DONE: Duration = Duration::from_secs(60);

/// Every log line the stack's workers wrote (standalone: the api's, which
/// runs them).
fn worker_logs(stack: &Stack) -> String {
    let mut logs = stack.api.proc.log_text();
    for worker in &stack.workers {
        logs.push_str(&worker.log_text());
    }
    logs
}

/// Polls `done` until it holds; fails, saying `what`, after [`DONE`].
async fn until(what: &str, stack: &Stack, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + DONE;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "{what}: not after {DONE:?}; runs {:?}\n{}",
            stack.deployment.runs(),
            worker_logs(stack)
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The ids of the tasks whose gate command started.
fn started(stack: &Stack) -> Vec<String> {
    stack
        .deployment
        .runs()
        .into_iter()
        .map(|(id, _)| id)
        .collect()
}

/// The worker logged that `task` waits for an exec permit.
fn waits_for_a_permit(stack: &Stack, task: &str) -> bool {
    worker_logs(stack)
        .lines()
        .any(|line| line.contains(task) && line.contains("waiting for an exec permit"))
}

/// `exec_concurrency = 1` and 4 slots: one gate command runs, the two other
/// gate tasks are `running` and wait for the permit; an echo task runs
/// meanwhile, a waiting task can be cancelled, and once the gate opens the
/// others run one after the other and succeed.
async fn one_exec_at_a_time(stack: &Stack) {
    let api = &stack.api;
    let mut gated = Vec::new();
    for i in 0..3 {
        gated.push(
            api.submit("org.ferry.gate", &format!("gate-{i}"), Value::Null)
                .await,
        );
    }
    // All three are claimed: 4 slots hold them.
    api.wait_all(&gated, "running", DONE).await;
    until("a gate command started", stack, || {
        !started(stack).is_empty()
    })
    .await;
    let first = started(stack)[0].clone();
    let waiting: Vec<&String> = gated.iter().filter(|id| **id != first).collect();
    for task in &waiting {
        until(&format!("task {task} waits for a permit"), stack, || {
            let now = started(stack);
            assert_eq!(
                now,
                std::slice::from_ref(&first),
                "a second exec command started"
            );
            waits_for_a_permit(stack, task)
        })
        .await;
    }
    // The permit is held by a command that cannot pass the gate yet, so
    // the waiting tasks cannot have started.
    assert_eq!(started(stack), std::slice::from_ref(&first));

    // The other handlers take no permit: an echo task runs meanwhile.
    let echo = api
        .submit("org.ferry.echo", "echo-1", Value::from("beside"))
        .await;
    let view = api.wait_for(&echo, "succeeded", DONE).await;
    assert_eq!(view["result"], "beside", "{view:#}");

    // A task waiting for its permit is running, and a cancel stops it
    // before its command ever starts.
    let cancelled = waiting[1].clone();
    let view = api.status(&cancelled).await.body;
    assert_eq!(view["status"], "running", "{view:#}");
    assert_eq!(view["attempts"], 1, "{view:#}");
    let r = api.post_path(&format!("/tasks/{cancelled}/cancel")).await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    api.wait_for(&cancelled, "cancelled", DONE).await;
    let second = waiting[0].clone();
    assert_eq!(api.status(&second).await.body["status"], "running");

    stack.deployment.open_gate();
    for task in [&first, &second] {
        let view = api.wait_for(task, "succeeded", DONE).await;
        // Neither command started while the other ran.
        assert_eq!(
            view["result"],
            serde_json::json!({"others_running_at_start": 0}),
            "{view:#}"
        );
        assert_eq!(view["attempts"], 1, "{view:#}");
    }
    stack
        .deployment
        .assert_each_ran_once(&[first.clone(), second.clone()]);
}

/// With nothing set, as many gate commands as CPUs (up to the tests' 4
/// slots) run at once: the default bounds `exec` by the cores and no lower.
async fn as_many_execs_as_cpus_by_default(stack: &Stack) {
    let api = &stack.api;
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let n = cpus.min(4);
    let mut gated = Vec::new();
    for i in 0..n {
        gated.push(
            api.submit("org.ferry.gate", &format!("gate-{i}"), Value::Null)
                .await,
        );
    }
    // Every one started while the gate is closed: none waited for another.
    until(&format!("{n} gate commands started"), stack, || {
        started(stack).len() == n
    })
    .await;
    assert!(!gated.iter().any(|task| waits_for_a_permit(stack, task)));
    stack.deployment.open_gate();
    let views = api.wait_all(&gated, "succeeded", DONE).await;
    // The last to start saw every other one running.
    let most = views
        .iter()
        .map(|view| view["result"]["others_running_at_start"].as_u64())
        .max()
        .flatten();
    assert_eq!(most, Some(n as u64 - 1), "{views:#?}");
    stack.deployment.assert_each_ran_once(&gated);
}

macro_rules! exec_tests {
    ($check:path, $env:expr; $($layout:ident => $name:ident),+ $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                let env: &[(&str, &str)] = $env;
                let stack = Stack::start_with(Layout::$layout, 1, |mut d| {
                    for (k, v) in env {
                        d = d.env(k, v);
                    }
                    d
                })
                .await;
                if let Some(stack) = stack {
                    $check(&stack).await;
                }
            }
        )+
    };
}

exec_tests!(one_exec_at_a_time, &[("FERRY_EXEC_CONCURRENCY", "1")];
    Sqlite => one_exec_at_a_time_sqlite,
    Postgres => one_exec_at_a_time_postgres,
    Standalone => one_exec_at_a_time_standalone);

exec_tests!(as_many_execs_as_cpus_by_default, &[];
    Sqlite => as_many_execs_as_cpus_by_default_sqlite,
    Postgres => as_many_execs_as_cpus_by_default_postgres,
    Standalone => as_many_execs_as_cpus_by_default_standalone);
