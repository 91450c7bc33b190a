//! Fault injection: workers killed, RabbitMQ and PostgreSQL stopped and
//! restarted under load, the API aborted between commit and publish. Every
//! task accepted with a 202 must reach a final state, and none may succeed
//! twice. These tests change shared services, so they run one at a time in
//! their own nextest profile (`--profile faults`), and each restores the
//! service it stopped even when it fails.

mod common;

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Api, Deployment};
use serde_json::{json, Value};

const LONG: Duration = Duration::from_secs(180);

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn wait_port(addr: &str, up: bool, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let addr = addr.parse().unwrap();
    while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok() != up {
        assert!(
            Instant::now() < deadline,
            "{addr} did not come {}",
            if up { "up" } else { "down" }
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// RabbitMQ's app stopped for as long as this lives; started again on drop,
/// even when the test panics.
struct BrokerStopped;

impl BrokerStopped {
    fn new() -> Self {
        run("rabbitmqctl", &["stop_app"]);
        wait_port(common::RABBITMQ, false, Duration::from_secs(60));
        Self
    }
}

impl Drop for BrokerStopped {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl").arg("start_app").status();
        let _ = Command::new("rabbitmqctl").args(["await_startup"]).status();
        wait_port(common::RABBITMQ, true, Duration::from_secs(120));
    }
}

fn pg_cluster(action: &str) -> std::process::ExitStatus {
    let version = std::fs::read_dir("/etc/postgresql")
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .file_name();
    Command::new("pg_ctlcluster")
        .args([
            "--skip-systemctl-redirect",
            version.to_str().unwrap(),
            "main",
            action,
        ])
        .status()
        .unwrap()
}

/// Makes sure PostgreSQL is running again when the test ends.
struct PostgresRestored;

impl Drop for PostgresRestored {
    fn drop(&mut self) {
        let _ = pg_cluster("start");
        wait_port(common::POSTGRES, true, Duration::from_secs(60));
    }
}

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

async fn all_succeed(api: &Api, ids: &[String]) -> Vec<Value> {
    let mut tasks = Vec::with_capacity(ids.len());
    for id in ids {
        tasks.push(api.wait_for(id, "succeeded", LONG).await);
    }
    tasks
}

/// Each task's handler ran, and ran `expected` times in all.
fn runs_per_task(deployment: &Deployment) -> HashMap<String, usize> {
    let mut runs = HashMap::new();
    for (id, _) in deployment.runs() {
        *runs.entry(id).or_default() += 1;
    }
    runs
}

#[tokio::test]
async fn worker_killed_mid_task() {
    require!(rabbitmq, postgres);
    let deployment = Deployment::postgres().env("FERRY_LEASE", "2s");
    let api = deployment.api().await;
    let mut first = deployment.worker("worker-1");
    let id = api.submit("org.ferry.sleep", "killed-1", Value::Null).await;
    api.wait_for(&id, "running", LONG).await;
    first.signal("KILL");
    first
        .wait_exit(Duration::from_secs(10))
        .expect("worker died");
    let _second = deployment.worker("worker-2");
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
    require!(rabbitmq, postgres);
    let deployment = Deployment::postgres();
    let api = deployment.api().await;
    let _a = deployment.worker("worker-a");
    let _b = deployment.worker("worker-b");
    let ids = submit_many(&api, "org.ferry.count", "restart", 500).await;
    {
        let _stopped = BrokerStopped::new();
        // Submissions keep being accepted while the broker is down.
        let more = submit_many(&api, "org.ferry.count", "restart-down", 20).await;
        assert_eq!(more.len(), 20);
    }
    let tasks = all_succeed(&api, &ids).await;
    assert!(tasks.iter().all(|t| t["status"] == "succeeded"));
    let runs = runs_per_task(&deployment);
    for id in &ids {
        assert!(runs.get(id).is_some_and(|&n| n >= 1), "task {id} never ran");
    }
}

#[tokio::test]
async fn broker_down_at_submit() {
    require!(rabbitmq, postgres);
    let deployment = Deployment::postgres();
    let api = deployment.api().await;
    let _worker = deployment.worker("worker");
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
    all_succeed(&api, &ids).await;
    let runs = runs_per_task(&deployment);
    for id in &ids {
        assert_eq!(runs.get(id), Some(&1), "task {id}");
    }
}

#[tokio::test]
async fn api_dies_between_commit_and_publish() {
    require!(rabbitmq, postgres);
    let deployment = Deployment::postgres();
    let doomed = deployment.clone_env("FERRY_FAILPOINT", "abort-after-commit");
    let mut dying = doomed.api().await;
    let event = common::test_file("echo/event.json");
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
    require!(rabbitmq, postgres);
    let deployment = Deployment::postgres();
    let api = deployment.api().await;
    let _a = deployment.worker("worker-a");
    let _b = deployment.worker("worker-b");
    let ids = submit_many(&api, "org.ferry.count", "pg-restart", 200).await;
    {
        let _restored = PostgresRestored;
        assert!(pg_cluster("restart").success());
    }
    let tasks = all_succeed(&api, &ids).await;
    for task in &tasks {
        let successes = task["attempt_history"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["error"].is_null() && a["finished_at"].is_string())
            .count();
        assert_eq!(successes, 1, "{task:#}");
    }
    // While the database is up again, the API answers normally.
    assert_eq!(api.get("/health").await.status, 200);
}

#[tokio::test]
async fn retries_then_failed() {
    require!(rabbitmq, postgres);
    let deployment = Deployment::postgres();
    let api = deployment.api().await;
    let _worker = deployment.worker("worker");
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
    require!(rabbitmq, postgres);
    let deployment = Deployment::postgres();
    let api = deployment.api().await;
    let mut worker = deployment.worker("worker");
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
    worker.signal("TERM");
    let status = worker
        .wait_exit(Duration::from_secs(30))
        .expect("the worker drained and exited");
    assert!(status.success(), "{status:?}");
    for id in &ids {
        let task = api.status(id).await.body;
        assert_eq!(task["status"], "succeeded", "{task:#}");
        assert_eq!(task["attempts"], 1, "{task:#}");
    }
    // Nothing was handed back: a new worker finds nothing to run.
    assert!(!worker.log_text().contains("handing running tasks back"));
}

#[tokio::test]
async fn two_replicas_exactly_once() {
    require!(rabbitmq, postgres);
    let deployment = Deployment::postgres();
    let api = deployment.api().await;
    let _workers: Vec<_> = (0..3)
        .map(|i| deployment.worker(&format!("worker-{i}")))
        .collect();
    let ids = submit_many(&api, "org.ferry.count", "exactly-once", 2000).await;
    all_succeed(&api, &ids).await;
    let runs = runs_per_task(&deployment);
    assert_eq!(runs.len(), 2000);
    for id in &ids {
        assert_eq!(runs.get(id), Some(&1), "task {id}");
    }
}

/// A message that is not a task id goes to the dead-letter queue.
#[tokio::test]
async fn poison_messages_are_dead_lettered() {
    use lapin::options::{BasicGetOptions, BasicPublishOptions};
    require!(rabbitmq, postgres);
    let deployment = Deployment::postgres();
    let api = deployment.api().await;
    let _worker = deployment.worker("worker");
    // Once a task has run, the queue exists and the worker consumes it.
    let id = api
        .submit("org.ferry.echo", "before-poison", Value::Null)
        .await;
    api.wait_for(&id, "succeeded", LONG).await;
    let connection =
        lapin::Connection::connect(common::BROKER_URL, lapin::ConnectionProperties::default())
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
    let dead = format!("{}.dead", deployment.queue);
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
            run(
                "rabbitmqctl",
                &["eval", &format!("application:set_env(rabbit, {setting}).")],
            );
        }
        Self
    }
}

impl Drop for ConsumerTimeout {
    fn drop(&mut self) {
        for setting in ["consumer_timeout, 1800000", "channel_tick_interval, 60000"] {
            let _ = Command::new("rabbitmqctl")
                .args(["eval", &format!("application:set_env(rabbit, {setting}).")])
                .status();
        }
    }
}

/// A task that runs longer than the broker lets a delivery go unacked: the
/// broker closes the worker's channel and redelivers, the task still runs
/// once and its outcome is recorded once.
#[tokio::test]
async fn task_longer_than_consumer_timeout() {
    require!(rabbitmq, postgres);
    let _timeout = ConsumerTimeout::set(1000);
    let deployment = Deployment::postgres();
    let api = deployment.api().await;
    let worker = deployment.worker("worker");
    let id = api
        .submit("org.ferry.slow-count", "long-1", Value::Null)
        .await;
    let task = api.wait_for(&id, "succeeded", LONG).await;
    assert_eq!(task["attempts"], 1, "{task:#}");
    assert_eq!(runs_per_task(&deployment).get(&id), Some(&1));
    let log = worker.log_text();
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
    require!(rabbitmq, postgres);
    let deployment = Deployment::postgres().env("FERRY_DRAIN_TIMEOUT", "1s");
    let api = deployment.api().await;
    let mut first = deployment.worker("worker-1");
    let id = api.submit("org.ferry.sleep", "drain-1", Value::Null).await;
    api.wait_for(&id, "running", LONG).await;
    first.signal("TERM");
    let status = first
        .wait_exit(Duration::from_secs(30))
        .expect("the worker exited after its drain timeout");
    assert!(status.success(), "{status:?}");
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
    let _second = deployment.worker("worker-2");
    let task = api.wait_for(&id, "succeeded", LONG).await;
    assert_eq!(task["attempts"], 2, "{task:#}");
}
