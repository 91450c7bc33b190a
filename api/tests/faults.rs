//! Fault injection: workers killed, RabbitMQ and PostgreSQL stopped and
//! restarted under load, the API aborted between commit and publish. Every
//! task accepted with a 202 must reach a final state, and none may succeed
//! twice. These tests change shared services, so they run one at a time in
//! their own nextest profile (`--profile faults`), and each restores the
//! service it stopped even when it fails.

use std::time::{Duration, Instant};

use ferry_testkit::faults::{pg_cluster, rabbitmqctl, run, BrokerStopped, PostgresRestored};
use ferry_testkit::{Api, Deployment, Layout, Proc, Stack};
use serde_json::{json, Value};

const LONG: Duration = Duration::from_secs(180);

/// Submits `n` tasks of `event_type` in batches of 50; returns their ids.
async fn submit_many(api: &Api, event_type: &str, prefix: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    let events: Vec<Value> = (0..n)
        .map(|i| json!({"specversion": "1.0", "type": event_type, "source": "/ferry/faults", "id": format!("{prefix}-{i}"), "data": {"i": i}}))
        .collect();
    for chunk in events.chunks(50) {
        let r = api
            .post(
                Value::Array(chunk.to_vec()).to_string(),
                &[("content-type", "application/cloudevents-batch+json")],
            )
            .await;
        assert_eq!(r.status, 202, "{:?}", r.body);
        ids.extend(
            r.body["tasks"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["id"].as_str().unwrap().to_string()),
        );
    }
    ids
}

/// A PostgreSQL deployment with `workers` replicas, and `n` counting tasks
/// submitted to it; `None` when skipped.
async fn counting_load(workers: usize, prefix: &str, n: usize) -> Option<(Stack, Vec<String>)> {
    let stack = Stack::start_with(Layout::Postgres, workers, |d| d).await?;
    let ids = submit_many(&stack.api, "org.ferry.count", prefix, n).await;
    assert_eq!(ids.len(), n);
    Some((stack, ids))
}

/// Waits for every task to succeed; then each counting handler ran exactly
/// once (README, Guarantees: a handler runs again only when a worker stops
/// or loses its database for longer than a lease).
async fn all_succeed_once(stack: &Stack, ids: &[String]) -> Vec<Value> {
    let tasks = stack.api.wait_all(ids, "succeeded", LONG).await;
    stack.deployment.assert_each_ran_once(ids);
    tasks
}

/// A deployment on PostgreSQL, its API, and one worker (`worker-1`) running
/// a sleep task (3 s); returns them and the task's id.
async fn sleep_task_running(
    setup: impl FnOnce(Deployment) -> Deployment,
) -> Option<(Stack, String)> {
    let mut stack = Stack::start_with(Layout::Postgres, 0, setup).await?;
    stack.workers.push(stack.deployment.worker("worker-1"));
    let id = stack
        .api
        .submit(
            "org.ferry.sleep",
            &ferry_testkit::unique("sleep"),
            Value::Null,
        )
        .await;
    stack.api.wait_for(&id, "running", LONG).await;
    Some((stack, id))
}

/// Sends `signal` to a worker and waits (at most `timeout`) for it to exit.
fn stop(worker: &mut Proc, signal: &str, timeout: Duration) -> std::process::ExitStatus {
    worker.signal(signal);
    worker
        .wait_exit(timeout)
        .unwrap_or_else(|| panic!("{} did not exit after SIG{signal}", worker.name))
}

#[tokio::test]
async fn worker_killed_mid_task() {
    let Some((mut stack, id)) = sleep_task_running(|d| d.env("FERRY_LEASE", "2s")).await else {
        return;
    };
    stop(&mut stack.workers[0], "KILL", Duration::from_secs(10));
    stack.workers.push(stack.deployment.worker("worker-2"));
    let api = &stack.api;
    let task = api.wait_for(&id, "succeeded", LONG).await;
    assert_eq!(task["attempts"], 2, "{task:#}");
    let history = task["attempt_history"].as_array().unwrap();
    assert!(
        history[0]["error"].as_str().unwrap().contains("lease"),
        "{task:#}"
    );
    assert_ne!(history[0]["worker"], history[1]["worker"]);
}

#[tokio::test]
async fn broker_restart_under_load() {
    let Some((stack, mut ids)) = counting_load(2, "restart", 500).await else {
        return;
    };
    let api = &stack.api;
    {
        let _stopped = BrokerStopped::new();
        // Submissions keep being accepted while the broker is down...
        ids.extend(submit_many(api, "org.ferry.count", "restart-down", 20).await);
    }
    // ...and every task accepted, before or during the outage, succeeds.
    // No worker stopped and no database went away: each handler ran once
    // (a message redelivered after the restart is not run again).
    all_succeed_once(&stack, &ids).await;
}

#[tokio::test]
async fn broker_down_at_submit() {
    let Some(stack) = Stack::start(Layout::Postgres).await else {
        return;
    };
    let api = &stack.api;
    let ids = {
        let _stopped = BrokerStopped::new();
        let mut ids = Vec::new();
        for i in 0..20 {
            ids.push(
                api.submit("org.ferry.count", &format!("down-{i}"), Value::Null)
                    .await,
            );
        }
        ids
    };
    all_succeed_once(&stack, &ids).await;
}

#[tokio::test]
async fn api_dies_between_commit_and_publish() {
    if !Layout::Postgres.available() {
        return;
    }
    let deployment = Deployment::postgres();
    let mut dying = deployment
        .api_with(&[], &[("FERRY_FAILPOINT", "abort-after-commit")])
        .await;
    let event = ferry_testkit::test_file("echo/event.json");
    let sent = dying
        .client
        .post(format!("{}/receive", dying.base))
        .header("content-type", "application/json")
        .body(event)
        .send()
        .await;
    assert!(sent.is_err(), "the API should have died: {sent:?}");
    dying
        .proc
        .wait_exit(Duration::from_secs(10))
        .expect("the API aborted");
    // A fresh API and a worker: the relay finds the committed, unpublished task.
    let api = deployment.api().await;
    let _worker = deployment.worker("worker");
    let again = api.post_file("echo/event.json").await;
    assert_eq!(
        again.status, 200,
        "the first request committed the task: {:?}",
        again.body
    );
    let id = again.body["id"].as_str().unwrap().to_string();
    let task = api.wait_for(&id, "succeeded", LONG).await;
    assert_eq!(task["attempts"], 1, "{task:#}");
}

#[tokio::test]
async fn database_restart() {
    let Some((stack, ids)) = counting_load(2, "pg-restart", 200).await else {
        return;
    };
    let api = &stack.api;
    {
        let _restored = PostgresRestored;
        assert!(pg_cluster("restart").success());
    }
    // The restart was far shorter than a lease (30 s): no attempt was taken
    // back, so each handler ran once.
    let tasks = all_succeed_once(&stack, &ids).await;
    for task in &tasks {
        let successes = task["attempt_history"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["error"].is_null() && a["finished_at"].is_string())
            .count();
        assert_eq!(successes, 1, "{task:#}");
    }
    // The API and the workers reconnected: a task submitted now runs.
    let id = api
        .submit("org.ferry.echo", "after-pg-restart", json!({"n": 1}))
        .await;
    let task = api.wait_for(&id, "succeeded", LONG).await;
    assert_eq!(task["result"], json!({"n": 1}), "{task:#}");
}

#[tokio::test]
async fn retries_then_failed() {
    let Some(stack) = Stack::start(Layout::Postgres).await else {
        return;
    };
    let api = &stack.api;
    let id = api.submit("org.ferry.fail", "retries-1", Value::Null).await;
    let task = api.wait_for(&id, "failed", LONG).await;
    assert_eq!(task["attempts"], 3, "{task:#}");
    let history = task["attempt_history"].as_array().unwrap();
    assert_eq!(history.len(), 3);
    let time = |v: &Value| chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap()).unwrap();
    // retry_backoff is 200ms, doubled per attempt, with ±25% jitter.
    for (i, min_ms) in [(1, 150), (2, 300)] {
        let gap = time(&history[i]["started_at"]) - time(&history[i - 1]["finished_at"]);
        assert!(
            gap.num_milliseconds() >= min_ms,
            "backoff before attempt {}: {gap}",
            i + 1
        );
    }
}

#[tokio::test]
async fn graceful_sigterm() {
    let Some(mut stack) = Stack::start(Layout::Postgres).await else {
        return;
    };
    let api = &stack.api;
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(
            api.submit("org.ferry.sleep", &format!("term-{i}"), Value::Null)
                .await,
        );
    }
    for id in &ids {
        api.wait_for(id, "running", LONG).await;
    }
    let worker = &mut stack.workers[0];
    let pid = worker.pid();
    let status = stop(worker, "TERM", Duration::from_secs(30));
    assert!(status.success(), "{status:?}");
    assert!(
        worker
            .log_text()
            .contains("waiting for running tasks to finish"),
        "the worker did not drain:\n{}",
        worker.log_text()
    );
    // No other worker ever ran: the terminated one finished every task in
    // its one attempt before it exited.
    for id in &ids {
        let task = api.status(id).await.body;
        assert_eq!(task["status"], "succeeded", "{task:#}");
        assert_eq!(task["attempts"], 1, "{task:#}");
        let attempt = &task["attempt_history"][0];
        assert!(
            attempt["worker"]
                .as_str()
                .is_some_and(|w| w.contains(&format!("-{pid}-"))),
            "{task:#}"
        );
        assert!(attempt["error"].is_null(), "{task:#}");
        assert!(attempt["finished_at"].is_string(), "{task:#}");
    }
}

#[tokio::test]
async fn two_replicas_exactly_once() {
    let Some((stack, ids)) = counting_load(3, "exactly-once", 2000).await else {
        return;
    };
    all_succeed_once(&stack, &ids).await;
}

/// A message that is not a task id goes to the dead-letter queue.
#[tokio::test]
async fn poison_messages_are_dead_lettered() {
    use lapin::options::{BasicGetOptions, BasicPublishOptions};
    let Some(stack) = Stack::start(Layout::Postgres).await else {
        return;
    };
    let (api, deployment) = (&stack.api, &stack.deployment);
    // Once a task has run, the queue exists and the worker consumes it.
    let id = api
        .submit("org.ferry.echo", "before-poison", Value::Null)
        .await;
    api.wait_for(&id, "succeeded", LONG).await;
    let connection = lapin::Connection::connect(
        &deployment.broker_url,
        lapin::ConnectionProperties::default(),
    )
    .await
    .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .basic_publish(
            "".into(),
            deployment.queue.as_str().into(),
            BasicPublishOptions::default(),
            b"not a task id",
            lapin::BasicProperties::default(),
        )
        .await
        .unwrap();
    // The worker keeps working after it.
    let id = api
        .submit("org.ferry.echo", "after-poison", Value::Null)
        .await;
    api.wait_for(&id, "succeeded", LONG).await;
    let dead = deployment.dead_queue();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = channel
            .basic_get(dead.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap();
        if let Some(message) = got {
            assert_eq!(message.delivery.data, b"not a task id");
            break;
        }
        assert!(Instant::now() < deadline, "nothing reached {dead}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// RabbitMQ's `consumer_timeout` lowered for as long as this lives; the
/// default (30 minutes) is restored on drop, even when the test panics.
struct ConsumerTimeout;

impl ConsumerTimeout {
    fn set(millis: u64) -> Self {
        // Channels check the timeout on their tick (a minute by default);
        // both settings are read by channels opened after this.
        for setting in [
            format!("consumer_timeout, {millis}"),
            "channel_tick_interval, 200".into(),
        ] {
            run(rabbitmqctl(&[
                "eval",
                &format!("application:set_env(rabbit, {setting})."),
            ]));
        }
        Self
    }
}

impl Drop for ConsumerTimeout {
    fn drop(&mut self) {
        for setting in ["consumer_timeout, 1800000", "channel_tick_interval, 60000"] {
            let _ = rabbitmqctl(&["eval", &format!("application:set_env(rabbit, {setting}).")])
                .status();
        }
    }
}

/// A task that runs longer than the broker lets a delivery go unacked: the
/// broker closes the worker's channel and redelivers, the task still runs
/// once and its outcome is recorded once.
#[tokio::test]
async fn task_longer_than_consumer_timeout() {
    if !Layout::Postgres.available() {
        return;
    }
    let _timeout = ConsumerTimeout::set(1000);
    let Some(stack) = Stack::start(Layout::Postgres).await else {
        return;
    };
    let api = &stack.api;
    let id = api
        .submit("org.ferry.slow-count", "long-1", Value::Null)
        .await;
    let task = api.wait_for(&id, "succeeded", LONG).await;
    assert_eq!(task["attempts"], 1, "{task:#}");
    stack
        .deployment
        .assert_each_ran_once(std::slice::from_ref(&id));
    let log = stack.workers[0].log_text();
    assert!(
        log.contains("reconnecting"),
        "the broker should have closed the channel:\n{log}"
    );
    // The worker consumes again after the broker closed its channel.
    let next = api
        .submit("org.ferry.echo", "after-timeout", Value::Null)
        .await;
    api.wait_for(&next, "succeeded", LONG).await;
}

/// SIGTERM with a task that outlasts the drain timeout: it is handed back,
/// not left running, and the interrupted attempt does not count.
#[tokio::test]
async fn drain_timeout_hands_running_tasks_back() {
    let Some((mut stack, id)) = sleep_task_running(|d| d.env("FERRY_DRAIN_TIMEOUT", "1s")).await
    else {
        return;
    };
    let status = stop(&mut stack.workers[0], "TERM", Duration::from_secs(30));
    assert!(status.success(), "{status:?}");
    let api = &stack.api;
    let task = api.status(&id).await.body;
    assert_eq!(task["status"], "retrying", "{task:#}");
    assert_eq!(
        task["max_attempts"], 4,
        "the interrupted attempt does not count: {task:#}"
    );
    assert!(
        task["attempt_history"][0]["error"]
            .as_str()
            .unwrap()
            .contains("shut down"),
        "{task:#}"
    );
    stack.workers.push(stack.deployment.worker("worker-2"));
    let task = stack.api.wait_for(&id, "succeeded", LONG).await;
    assert_eq!(task["attempts"], 2, "{task:#}");
}

/// The lines `rabbitmqctl args` prints, split at tabs.
fn rabbitmqctl_rows(args: &[&str]) -> Vec<Vec<String>> {
    let out = rabbitmqctl(args).output().expect("run rabbitmqctl");
    assert!(out.status.success(), "rabbitmqctl {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| line.split('\t').map(str::to_string).collect())
        .collect()
}

/// How many consumers `queue` has.
fn consumers(queue: &str) -> usize {
    rabbitmqctl_rows(&[
        "list_queues",
        "-q",
        "--no-table-headers",
        "name",
        "consumers",
    ])
    .iter()
    .find(|row| row[0] == queue)
    .and_then(|row| row.get(1)?.parse().ok())
    .unwrap_or(0)
}

/// The broker closes a worker's channel while the worker's one slot runs a
/// long task: the worker consumes again while the task still runs, rather
/// than when a slot frees (it reads its consumer's stream, where a closed
/// channel shows, only with a slot free).
#[tokio::test]
async fn channel_closed_while_every_slot_is_taken() {
    let Some(stack) =
        Stack::start_with(Layout::Postgres, 1, |d| d.env("FERRY_CONCURRENCY", "1")).await
    else {
        return;
    };
    let (api, queue) = (&stack.api, &stack.deployment.queue);
    let id = api
        .submit(
            "org.ferry.sleep-30s",
            &ferry_testkit::unique("busy"),
            Value::Null,
        )
        .await;
    api.wait_for(&id, "running", LONG).await;
    let name = format!("ferry-worker-{}", stack.workers[0].pid());
    let connection = rabbitmqctl_rows(&[
        "list_connections",
        "-q",
        "--no-table-headers",
        "pid",
        "client_properties",
    ])
    .into_iter()
    .find(|row| {
        row.get(1)
            .is_some_and(|p| p.contains(&format!("\"{name}\"")))
    })
    .unwrap_or_else(|| panic!("no connection named {name}"));
    assert_eq!(consumers(queue), 1);
    run(rabbitmqctl(&[
        "close_connection",
        &connection[0],
        "closed by a test",
    ]));
    // Closed, then consumed again, well before the task's 30 s are over.
    let deadline = Instant::now() + Duration::from_secs(20);
    while consumers(queue) == 0 {
        assert!(
            Instant::now() < deadline,
            "the worker did not consume again while its slot was taken:\n{}",
            stack.workers[0].log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let task = api.status(&id).await;
    assert_eq!(task.body["status"], "running", "{:#}", task.body);
    let log = stack.workers[0].log_text();
    assert!(log.contains("every slot was taken; reconnecting"), "{log}");
}
