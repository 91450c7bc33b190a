//! `GET /metrics` and `GET /ready` over HTTP, on real processes: the api's
//! and a worker's `http_port`, in each layout. Every scrape is parsed as
//! Prometheus parses it (`prometheus-parse`), and each metric is checked to
//! move when it should: tasks received, started and finished (a success, a
//! retried failure, a task failed for good), attempt durations, retries,
//! relay publishes, a lease expiry (a worker killed mid-task), a message
//! dead-lettered, HTTP answers by route template, group-commit sizes, the
//! task-count gauges and the worker's gauges. `/ready` answers 200, and
//! 503 naming the broker (a broker URL on a closed port) or the database
//! (PostgreSQL reached through a forwarder the test then closes).

use std::time::{Duration, Instant};

use ferry_testkit::{require, Deployment, Layout, Stack};
use prometheus_parse::{Sample, Scrape, Value};
use serde_json::{json, Value as Json};

/// The longest a metric may take to show what the test did.
const SETTLE: Duration = Duration::from_secs(30);
const DONE: Duration = Duration::from_secs(60);

/// One scrape, parsed.
#[derive(Debug)]
struct Metrics {
    text: String,
    samples: Vec<Sample>,
}

impl Metrics {
    /// The sum of the samples of `name` whose labels include `labels`
    /// (0 if there is none); a histogram's `_count` and `_sum` are samples
    /// of their own.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels)
            .map(|s| match &s.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
                other => panic!("{name} is not a number: {other:?}"),
            })
            .sum()
    }

    fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&str, &str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
        })
    }

    /// Whether `name` has a sample at all.
    fn has(&self, name: &str) -> bool {
        self.matching(name, &[]).next().is_some()
    }
}

/// GETs `url` (a `/metrics`), checks the content type and parses it.
async fn scrape(url: &str) -> Metrics {
    let response = reqwest::get(url)
        .await
        .unwrap_or_else(|e| panic!("{url}: {e}"));
    assert_eq!(response.status(), 200, "{url}");
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{url}: {content_type}"
    );
    let text = response.text().await.unwrap();
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .unwrap_or_else(|e| panic!("{url}: not the text format ({e}):\n{text}"));
    assert!(!scrape.samples.is_empty(), "{url}: no samples");
    Metrics {
        text,
        samples: scrape.samples,
    }
}

/// Scrapes `url` until `check` holds; fails with the last scrape after
/// [`SETTLE`].
async fn until(url: &str, what: &str, check: impl Fn(&Metrics) -> bool) -> Metrics {
    let deadline = Instant::now() + SETTLE;
    loop {
        let metrics = scrape(url).await;
        if check(&metrics) {
            return metrics;
        }
        assert!(
            Instant::now() < deadline,
            "{url}: {what} did not happen:\n{}",
            metrics.text
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// GETs `url` and returns its status, content type and JSON body.
async fn get_json(url: &str) -> (u16, String, Json) {
    let response = reqwest::get(url)
        .await
        .unwrap_or_else(|e| panic!("{url}: {e}"));
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{url}: {status}, not JSON ({e}): {text}"));
    (status, content_type, body)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port()
}

/// Starts a `ferry-worker` of `deployment` with `--http-port`, and waits
/// until the port answers `/health`; returns it and the port's base URL.
async fn worker_with_port(
    deployment: &Deployment,
    name: &str,
    env: &[(&str, &str)],
) -> (ferry_testkit::Proc, String) {
    let port = free_port();
    let worker = deployment.spawn(
        "ferry-worker",
        &["--http-port", &port.to_string()],
        name,
        None,
        env,
    );
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + DONE;
    loop {
        if let Ok(r) = reqwest::get(format!("{base}/health")).await {
            assert_eq!(r.status(), 200);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the worker's port never answered:\n{}",
            worker.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (worker, base)
}

/// Publishes a message that is not a task id to the deployment's queue.
async fn publish_unreadable(deployment: &Deployment) {
    let connection = lapin::Connection::connect(
        &deployment.broker_url,
        lapin::ConnectionProperties::default(),
    )
    .await
    .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(lapin::options::ConfirmSelectOptions::default())
        .await
        .unwrap();
    channel
        .basic_publish(
            "".into(),
            deployment.queue.as_str().into(),
            lapin::options::BasicPublishOptions::default(),
            b"not a task id",
            lapin::BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let _ = connection.close(200, "published".into()).await;
}

/// Everything the metrics count, in one deployment of `layout`.
async fn metrics_move(layout: Layout) {
    let Some(stack) = Stack::start_with(layout, 0, |d| {
        d.env("FERRY_METRICS_COUNTS_MAX_AGE", "100ms")
    })
    .await
    else {
        return;
    };
    let api = &stack.api;
    let api_metrics = api.url("/metrics");
    // In standalone the workers are the api's process.
    let (worker, worker_base) = if layout == Layout::Standalone {
        (None, api.base.clone())
    } else {
        let (worker, base) = worker_with_port(&stack.deployment, "worker-http", &[]).await;
        (Some(worker), base)
    };
    let worker_metrics = format!("{worker_base}/metrics");

    // Ready, on the api and on the worker's port.
    let (status, content_type, body) = get_json(&api.url("/ready")).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    assert_eq!(
        body,
        json!({"status": "ready", "database": "ok", "broker": "ok"})
    );
    if worker.is_some() {
        let (status, _, body) = get_json(&format!("{worker_base}/ready")).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body,
            json!({"status": "ready", "database": "ok", "broker": "ok"})
        );
        let (status, _, body) = get_json(&format!("{worker_base}/health")).await;
        assert_eq!((status, body), (200, json!({"status": "ok"})));
        let (status, content_type, body) = get_json(&format!("{worker_base}/nope")).await;
        assert_eq!(status, 404, "{body}");
        assert!(
            content_type.starts_with("application/json"),
            "{content_type}"
        );
        assert_eq!(body["error"], "not_found", "{body}");
        let post = reqwest::Client::new()
            .post(&worker_metrics)
            .send()
            .await
            .unwrap();
        assert_eq!(post.status(), 404);
    }

    // A success, a failure retried twice then final, a retried success.
    let echo = api
        .submit("org.ferry.echo", "m-echo", json!({"n": 1}))
        .await;
    let failed = api.submit("org.ferry.fail", "m-fail", json!(null)).await;
    let flaky = api.submit("org.ferry.flaky", "m-flaky", json!(null)).await;
    api.wait_for(&echo, "succeeded", DONE).await;
    api.wait_for(&failed, "failed", DONE).await;
    api.wait_for(&flaky, "succeeded", DONE).await;
    let missing = api.get("/nope").await;
    missing.assert_error(404, "not_found");

    // The publishes' confirms are recorded off the request path; none in
    // standalone, whose tasks are stored as enqueued.
    let expected = if worker.is_some() { 3.0 } else { 0.0 };
    let api_now = until(&api_metrics, "the confirms recorded", |m| {
        m.value("ferry_confirms_recorded_total", &[]) >= expected
    })
    .await;
    for t in ["org.ferry.echo", "org.ferry.fail", "org.ferry.flaky"] {
        let received = api_now.value("ferry_tasks_received_total", &[("type", t)]);
        assert_eq!(received, 1.0, "{t}:\n{}", api_now.text);
    }
    let confirms = api_now.value("ferry_confirms_recorded_total", &[]);
    assert_eq!(confirms, expected, "{}", api_now.text);
    // Those tasks went in confirmed messages, each naming one or more
    // (the relay's retries may add some); none in standalone.
    let messages = api_now.value("ferry_messages_published_total", &[]);
    let named = api_now.value("ferry_message_tasks_published_total", &[]);
    assert!(named >= expected, "{}", api_now.text);
    assert!(
        (expected.min(1.0)..=named).contains(&messages),
        "{messages} messages for {named} tasks:\n{}",
        api_now.text
    );
    // Three requests and the confirms, each in some insert batch; the
    // confirms are held a moment, so those of several publishes may share
    // one write.
    let confirm_writes = api_now.value("ferry_batch_size_sum", &[("batcher", "insert")]) - 3.0;
    assert!(
        (confirms.min(1.0)..=confirms).contains(&confirm_writes),
        "{confirm_writes} writes of {confirms} confirms:\n{}",
        api_now.text
    );
    assert!(api_now.value("ferry_batch_size_count", &[("batcher", "insert")]) >= 1.0);
    // Each insert batch is timed too, once per batch.
    assert_eq!(
        api_now.value(
            "ferry_batch_duration_seconds_count",
            &[("batcher", "insert")]
        ),
        api_now.value("ferry_batch_size_count", &[("batcher", "insert")]),
    );
    assert!(api_now.value("ferry_batch_duration_seconds_sum", &[("batcher", "insert")]) > 0.0);
    // HTTP answers by route template, never by a task's id.
    assert!(
        api_now.value(
            "ferry_http_requests_total",
            &[
                ("method", "GET"),
                ("route", "/status/<id>"),
                ("status", "200")
            ]
        ) >= 3.0,
        "{}",
        api_now.text
    );
    assert_eq!(
        api_now.value(
            "ferry_http_requests_total",
            &[("method", "POST"), ("route", "/receive"), ("status", "202")]
        ),
        3.0
    );
    assert_eq!(
        api_now.value(
            "ferry_http_requests_total",
            &[("route", "(unmatched)"), ("status", "404")]
        ),
        1.0,
        "{}",
        api_now.text
    );
    assert_eq!(
        api_now.value(
            "ferry_http_request_duration_seconds_count",
            &[("method", "POST"), ("route", "/receive")]
        ),
        3.0
    );
    for id in [&echo, &failed, &flaky] {
        assert!(!api_now.text.contains(id.as_str()), "a task id in a label");
    }

    // The workers' side: started, finished by how, durations, retries.
    let finished = |m: &Metrics, t: &str, how: &str| {
        m.value(
            "ferry_tasks_finished_total",
            &[("type", t), ("status", how)],
        )
    };
    // A slot is free again once its message is acked, just after the
    // outcome is counted: wait for both.
    let worker_now = until(&worker_metrics, "every attempt counted", |m| {
        finished(m, "org.ferry.echo", "succeeded") == 1.0
            && finished(m, "org.ferry.fail", "failed") == 1.0
            && finished(m, "org.ferry.flaky", "succeeded") == 1.0
            && m.value("ferry_worker_free_slots", &[]) == 4.0
    })
    .await;
    let m = &worker_now;
    let started = |t: &str| m.value("ferry_tasks_started_total", &[("type", t)]);
    assert_eq!(
        (
            started("org.ferry.echo"),
            started("org.ferry.fail"),
            started("org.ferry.flaky")
        ),
        (1.0, 3.0, 2.0),
        "{}",
        m.text
    );
    assert_eq!(finished(m, "org.ferry.fail", "retrying"), 2.0);
    assert_eq!(finished(m, "org.ferry.flaky", "retrying"), 1.0);
    assert_eq!(finished(m, "org.ferry.echo", "failed"), 0.0);
    assert_eq!(
        m.value(
            "ferry_retries_scheduled_total",
            &[("type", "org.ferry.fail")]
        ),
        2.0
    );
    assert_eq!(
        m.value(
            "ferry_attempt_duration_seconds_count",
            &[("type", "org.ferry.fail")]
        ),
        3.0
    );
    // flaky's attempts sleep 300ms each.
    assert!(
        m.value(
            "ferry_attempt_duration_seconds_sum",
            &[("type", "org.ferry.flaky")]
        ) >= 0.6
    );
    // Six claims and six outcomes, in the worker's one group commit.
    assert!(m.value("ferry_batch_size_sum", &[("batcher", "attempt")]) >= 12.0);
    assert!(
        m.value(
            "ferry_batch_duration_seconds_sum",
            &[("batcher", "attempt")]
        ) > 0.0
    );
    assert_eq!(
        m.value("ferry_worker_running_tasks", &[]),
        0.0,
        "{}",
        m.text
    );
    // The three retries were published by a relay once due (the api's
    // or the worker's: both run one).
    let relayed = if worker.is_some() {
        api_now.value("ferry_relay_published_total", &[])
            + m.value("ferry_relay_published_total", &[])
    } else {
        m.value("ferry_relay_published_total", &[])
    };
    assert!(relayed >= 3.0, "relay published {relayed}");

    // The task counts, from the database, once the cache is refreshed.
    let counted = until(&api_metrics, "the task counts", |m| {
        m.value("ferry_tasks", &[("status", "succeeded")]) == 2.0
            && m.value("ferry_tasks", &[("status", "failed")]) == 1.0
    })
    .await;
    for status in ["pending", "running", "retrying", "cancelled"] {
        assert_eq!(
            counted.value("ferry_tasks", &[("status", status)]),
            0.0,
            "{status}"
        );
    }

    let Some(mut worker) = worker else {
        assert!(
            !counted.has("ferry_dead_letter_queue_messages"),
            "no dead-letter queue in standalone"
        );
        return;
    };
    // A message that is not a task id: the worker dead-letters it, and the
    // api sees it in <queue>.dead.
    publish_unreadable(&stack.deployment).await;
    until(
        &worker_metrics,
        "the unreadable message dead-lettered",
        |m| {
            m.value(
                "ferry_messages_dead_lettered_total",
                &[("reason", "unreadable")],
            ) == 1.0
        },
    )
    .await;
    until(&api_metrics, "the dead-letter queue's depth", |m| {
        m.value("ferry_dead_letter_queue_messages", &[]) == 1.0
    })
    .await;

    // A worker killed mid-task: the api's relay takes the task back when
    // its lease runs out. That worker holds leases of 1s (the others the
    // default, so that a slow renewal under load loses none above).
    worker.signal("TERM");
    worker.wait_exit(Duration::from_secs(30));
    let (mut short, short_base) = worker_with_port(
        &stack.deployment,
        "worker-short-lease",
        &[("FERRY_LEASE", "1s")],
    )
    .await;
    let sleeper = api.submit("org.ferry.sleep", "m-sleep", json!(null)).await;
    api.wait_for(&sleeper, "running", DONE).await;
    until(&format!("{short_base}/metrics"), "the running gauge", |m| {
        m.value("ferry_worker_running_tasks", &[]) == 1.0
            && m.value("ferry_worker_free_slots", &[]) == 3.0
    })
    .await;
    short.signal("KILL");
    short.wait_exit(Duration::from_secs(10));
    until(&api_metrics, "a lease expiry", |m| {
        m.value("ferry_lease_expiries_total", &[]) >= 1.0
    })
    .await;
}

#[tokio::test]
async fn metrics_move_on_sqlite() {
    metrics_move(Layout::Sqlite).await;
}

#[tokio::test]
async fn metrics_move_on_postgres() {
    metrics_move(Layout::Postgres).await;
}

#[tokio::test]
async fn metrics_move_standalone() {
    metrics_move(Layout::Standalone).await;
}

/// `/metrics` is a data route: with tokens configured it needs one with
/// the `read` scope, as Prometheus sends it; `/ready` needs none.
#[tokio::test]
async fn metrics_need_a_read_token_and_ready_none() {
    let deployment = Deployment::sqlite().token("prometheus", "scrape-token", &["read"]);
    let api = deployment.standalone().await;
    api.get("/metrics").await.assert_error(401, "unauthorized");
    let (status, _, body) = get_json(&api.url("/ready")).await;
    assert_eq!(status, 200, "{body}");
    let response = api
        .client
        .get(api.url("/metrics"))
        .bearer_auth("scrape-token")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    assert!(text.contains("ferry_http_requests_total"), "{text}");
}

/// A broker URL on a closed port (with a password that must not show):
/// the api and a worker start, and both answer `/ready` with 503 naming
/// the broker, the database `ok`.
#[tokio::test]
async fn not_ready_names_the_broker() {
    let secret = "brokerS3cret";
    let deployment = Deployment::sqlite().broker(&format!("amqp://ferry:{secret}@127.0.0.1:1/%2f"));
    let api = deployment.api().await;
    let (worker, worker_base) = worker_with_port(&deployment, "worker-no-broker", &[]).await;
    for url in [api.url("/ready"), format!("{worker_base}/ready")] {
        let (status, content_type, body) = get_json(&url).await;
        assert_eq!(status, 503, "{url}: {body}");
        assert!(
            content_type.starts_with("application/json"),
            "{content_type}"
        );
        assert_eq!(body["error"], "not_ready", "{body}");
        let message = body["message"].as_str().unwrap();
        assert!(message.starts_with("broker unreachable"), "{message}");
        assert!(!message.contains("database"), "{message}");
        assert_eq!(body["database"], "ok", "{body}");
        assert!(
            body["broker"]
                .as_str()
                .unwrap()
                .starts_with("unreachable: "),
            "{body}"
        );
        assert!(!body.to_string().contains(secret), "{body}");
    }
    let ready = api.get("/ready").await;
    assert_eq!(ready.headers["retry-after"], "5");
    // The port stops with the worker.
    let mut worker = worker;
    worker.stop(Duration::from_secs(30));
    assert!(
        reqwest::get(format!("{worker_base}/health")).await.is_err(),
        "the port outlived the worker"
    );
}

/// A TCP forwarder from a port of its own to `target`; aborting the
/// handle closes the port and every connection through it.
async fn forwarder(target: &'static str) -> (u16, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        while let Ok((mut inbound, _)) = listener.accept().await {
            connections.spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    (port, handle)
}

/// PostgreSQL reached through a forwarder: ready; then the forwarder
/// closes (PostgreSQL itself runs on), and the api and a worker answer
/// `/ready` with 503 naming the database, the broker `ok`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_names_the_database() {
    require!(rabbitmq, postgres);
    let (port, forwarding) = forwarder(ferry_testkit::postgres_addr().leak()).await;
    let mut deployment = Deployment::postgres();
    deployment.database_url = deployment.database_url.replace(
        &ferry_testkit::postgres_addr(),
        &format!("127.0.0.1:{port}"),
    );
    let api = deployment.api().await;
    let (worker, worker_base) = worker_with_port(&deployment, "worker-no-db", &[]).await;
    let urls = [api.url("/ready"), format!("{worker_base}/ready")];
    for url in &urls {
        let (status, _, body) = get_json(url).await;
        assert_eq!(status, 200, "{url}: {body}");
    }
    forwarding.abort();
    for url in &urls {
        let deadline = Instant::now() + SETTLE;
        let body = loop {
            let (status, _, body) = get_json(url).await;
            if status == 503 {
                break body;
            }
            assert!(Instant::now() < deadline, "{url} stayed ready: {body}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(body["error"], "not_ready", "{body}");
        let message = body["message"].as_str().unwrap();
        assert!(message.starts_with("database unreachable"), "{message}");
        assert_eq!(body["broker"], "ok", "{body}");
        assert!(
            body["database"]
                .as_str()
                .unwrap()
                .starts_with("unreachable: "),
            "{body}"
        );
    }
    drop(worker);
}
