//! Admission control over HTTP, on real processes: with `receive_limit`
//! requests already waiting for the database, `/receive` answers
//! `503 overloaded` at once with `Retry-After: 1` and stores nothing, while
//! `/status` and `/health` go on answering; once the database moves again,
//! the waiting request is committed and run, and `/receive` takes new
//! events. The test holds the `tasks` table against writes to make the
//! requests wait, on SQLite, PostgreSQL and standalone. And the limit in
//! force follows the commits' latency: lowered when they take longer than
//! `receive_latency_target` (twice in a row), enforced, and raised again
//! when they do not.

use std::time::Duration;

use ferry_testkit::{Layout, Reply, Stack};
use serde_json::{json, Value};

const DONE: Duration = Duration::from_secs(60);

fn event(id: &str) -> String {
    json!({
        "specversion": "1.0", "type": "org.ferry.echo", "source": "/ferry/overload",
        "id": id, "data": {"n": id}
    })
    .to_string()
}

/// POSTs an event; `None` if no answer came within `timeout`.
async fn post(stack: &Stack, id: &str, timeout: Duration) -> Option<Reply> {
    let request = stack
        .api
        .client
        .post(stack.api.url("/receive"))
        .header("content-type", "application/json")
        .timeout(timeout)
        .body(event(id));
    let response = request.send().await.ok()?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body: Value = response.json().await.ok()?;
    Some(Reply {
        status,
        headers,
        body,
    })
}

/// The api's gauge `name`.
async fn gauge(stack: &Stack, name: &str) -> Option<f64> {
    let response = stack.api.client.get(stack.api.url("/metrics")).send().await;
    let text = response.ok()?.text().await.ok()?;
    ferry_testkit::metric_value(&text, name)
}

/// The api's `ferry_receive_waiting` gauge.
async fn receive_waiting(stack: &Stack) -> Option<f64> {
    gauge(stack, "ferry_receive_waiting").await
}

/// The api's `ferry_receive_limit` gauge: the limit in force.
async fn receive_limit(stack: &Stack) -> usize {
    let limit = gauge(stack, "ferry_receive_limit").await;
    limit.expect("ferry_receive_limit") as usize
}

/// Spawns a POST of a new event; the task answers its status and body.
fn spawn_post(stack: &Stack, id: String) -> tokio::task::JoinHandle<(u16, Value)> {
    let base = stack.api.url("/receive");
    let client = stack.api.client.clone();
    tokio::spawn(async move {
        let response = client
            .post(base)
            .header("content-type", "application/json")
            .body(event(&id))
            .send()
            .await
            .expect("POST /receive");
        let status = response.status().as_u16();
        (status, response.json::<Value>().await.expect("JSON"))
    })
}

/// Waits until `n` `/receive` requests hold a place.
async fn wait_until_waiting(stack: &Stack, n: u32) {
    let deadline = std::time::Instant::now() + DONE;
    while receive_waiting(stack).await != Some(f64::from(n)) {
        assert!(
            std::time::Instant::now() < deadline,
            "no {n} requests waiting: {:?}",
            receive_waiting(stack).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn refuses_past_the_limit(stack: &Stack) {
    let hold = stack.deployment.hold_writes();
    // The one place goes to a request that now waits for the held table.
    let waiting = spawn_post(stack, "admitted".into());
    // Once it holds the place, the next request is refused without
    // waiting for the database.
    wait_until_waiting(stack, 1).await;
    let reply = post(stack, "refused", DONE).await.expect("an answer");
    let message = reply.assert_error(503, "overloaded");
    assert!(message.contains("waiting for the database"), "{message}");
    assert_eq!(
        reply
            .headers
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    let metrics = stack.api.client.get(stack.api.url("/metrics")).send().await;
    let metrics = metrics.expect("GET /metrics").text().await.expect("text");
    assert!(
        metrics.contains(
            "ferry_http_requests_total{method=\"POST\",route=\"/receive\",status=\"503\"} 1"
        ),
        "{metrics}"
    );
    // Reads are not refused, nor held by the writes.
    let health = stack.api.get("/health").await;
    assert_eq!(health.status, 200, "{:?}", health.body);
    let unknown = stack
        .api
        .status("0b5e5f8e-67e8-4a43-9a44-4c1b0d2e9f10")
        .await;
    unknown.assert_error(404, "task_not_found");

    drop(hold);
    let (status, body) = waiting.await.expect("the admitted request");
    assert_eq!(status, 202, "{body:?}");
    let admitted = body["id"].as_str().expect("a task id").to_string();
    stack.api.wait_for(&admitted, "succeeded", DONE).await;
    // The refused event was not stored: sent again, it is a new task.
    let again = post(stack, "refused", DONE).await.expect("an answer");
    assert_eq!(again.status, 202, "{:?}", again.body);
    let id = again.task_id();
    stack.api.wait_for(&id, "succeeded", DONE).await;
}

/// One `/receive` whose commit is held three times the target (1s).
async fn slow_commit(stack: &Stack, id: &str) {
    let hold = stack.deployment.hold_writes();
    let slow = spawn_post(stack, id.into());
    wait_until_waiting(stack, 1).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    drop(hold);
    let (status, body) = slow.await.expect("the slow request");
    assert_eq!(status, 202, "{body:?}");
}

/// `receive_limit` 64, `receive_latency_target` 1s: commits held past the
/// target twice in a row lower the limit in force (to 32: halved at most),
/// requests past that are refused, and commits within it raise it again.
async fn the_limit_follows_commit_latency(stack: &Stack) {
    assert_eq!(
        receive_limit(stack).await,
        64,
        "at the start, receive_limit"
    );
    slow_commit(stack, "slow-1").await;
    assert_eq!(
        receive_limit(stack).await,
        64,
        "one slow window may be a stall"
    );
    slow_commit(stack, "slow-2").await;
    let lowered = receive_limit(stack).await;
    assert_eq!(lowered, 32, "64 scaled by 1s / 3s, halved at most");

    // The lowered limit is the one enforced.
    let hold = stack.deployment.hold_writes();
    let admitted: Vec<_> = (0..lowered)
        .map(|i| spawn_post(stack, format!("admitted-{i}")))
        .collect();
    wait_until_waiting(stack, lowered as u32).await;
    let reply = post(stack, "refused", DONE).await.expect("an answer");
    let message = reply.assert_error(503, "overloaded");
    assert!(message.starts_with("32 requests"), "{message}");
    drop(hold);
    let mut ids = Vec::new();
    for request in admitted {
        let (status, body) = request.await.expect("an admitted request");
        assert_eq!(status, 202, "{body:?}");
        ids.push(body["id"].as_str().expect("an id").to_string());
    }
    for id in &ids {
        stack.api.wait_for(id, "succeeded", DONE).await;
    }

    // Commits within the target, with the limit in use: it grows back.
    let deadline = std::time::Instant::now() + DONE;
    let mut round = 0;
    while receive_limit(stack).await <= lowered {
        assert!(
            std::time::Instant::now() < deadline,
            "the limit stayed at {lowered}"
        );
        let requests: Vec<_> = (0..lowered + 1)
            .map(|i| spawn_post(stack, format!("round-{round}-{i}")))
            .collect();
        for request in requests {
            let (status, body) = request.await.expect("a request");
            assert!(status == 202 || status == 503, "{status} {body:?}");
        }
        round += 1;
    }
}

async fn start(layout: Layout) -> Option<Stack> {
    Stack::start_with(layout, 1, |d| d.env("FERRY_RECEIVE_LIMIT", "1")).await
}

async fn start_adaptive(layout: Layout) -> Option<Stack> {
    Stack::start_with(layout, 1, |d| {
        d.env("FERRY_RECEIVE_LIMIT", "64")
            .env("FERRY_RECEIVE_LATENCY_TARGET", "1s")
    })
    .await
}

#[tokio::test]
async fn the_limit_follows_commit_latency_sqlite() {
    if let Some(stack) = start_adaptive(Layout::Sqlite).await {
        the_limit_follows_commit_latency(&stack).await;
    }
}

#[tokio::test]
async fn the_limit_follows_commit_latency_postgres() {
    if let Some(stack) = start_adaptive(Layout::Postgres).await {
        the_limit_follows_commit_latency(&stack).await;
    }
}

#[tokio::test]
async fn the_limit_follows_commit_latency_standalone() {
    if let Some(stack) = start_adaptive(Layout::Standalone).await {
        the_limit_follows_commit_latency(&stack).await;
    }
}

#[tokio::test]
async fn overloaded_receive_is_refused_sqlite() {
    if let Some(stack) = start(Layout::Sqlite).await {
        refuses_past_the_limit(&stack).await;
    }
}

#[tokio::test]
async fn overloaded_receive_is_refused_postgres() {
    if let Some(stack) = start(Layout::Postgres).await {
        refuses_past_the_limit(&stack).await;
    }
}

#[tokio::test]
async fn overloaded_receive_is_refused_standalone() {
    if let Some(stack) = start(Layout::Standalone).await {
        refuses_past_the_limit(&stack).await;
    }
}
