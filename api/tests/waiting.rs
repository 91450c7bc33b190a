//! Waiting without polling, over HTTP with real processes: `GET
//! /status/<id>?wait=` returns as soon as a worker process finished the
//! task, and `GET /status/<id>/events` streams every change of status, in
//! order, and replays what a reconnecting client missed (`Last-Event-ID`).
//! The hints that wake the api's hub are tested alone (the fallback reads
//! pushed an hour apart), and the fallback alone (the api ignores hints).

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use ferry_testkit::{Api, Layout, Sse, SseStream, Stack};
use serde_json::{json, Value};

const DONE: Duration = Duration::from_secs(60);

/// Opens the event stream of `task` (after `last`, if given).
async fn stream(api: &Api, task: &str, last: Option<&str>) -> SseStream {
    SseStream::open(&api.client, &api.base, task, last).await
}

fn names(events: &[Sse]) -> Vec<&str> {
    events.iter().map(|e| e.name.as_str()).collect()
}

fn ids(events: &[Sse]) -> Vec<i64> {
    events.iter().map(|e| e.id).collect()
}

/// Each event's data is the change it names, of `task`.
fn assert_data(events: &[Sse], task: &str) {
    for event in events {
        assert_eq!(event.data["id"], task, "{event:?}");
        assert_eq!(event.data["status"], event.name.as_str(), "{event:?}");
        assert_eq!(event.data["seq"], event.id, "{event:?}");
        let at = event.data["at"].as_str().expect("at");
        at.parse::<DateTime<Utc>>().expect("an RFC 3339 time");
    }
}

/// GET /status/<id>?wait=<wait>: the reply, and how long it took.
async fn wait(api: &Api, task: &str, wait: &str) -> (ferry_testkit::Reply, Duration) {
    let started = Instant::now();
    let reply = api.get(&format!("/status/{task}?wait={wait}")).await;
    (reply, started.elapsed())
}

/// How long after the task finished (its `finished_at`) the waiter had it.
fn woken_after(view: &Value) -> Duration {
    let finished: DateTime<Utc> = view["finished_at"]
        .as_str()
        .expect("finished")
        .parse()
        .unwrap();
    (Utc::now() - finished).to_std().unwrap_or_default()
}

/// `?wait=`: prompt once the worker (a process of its own but in
/// standalone) finishes; the early state when the wait ends first; 400s.
/// The hub's fallback reads are an hour apart here, so only a hint can wake
/// the waiter in time.
async fn long_polls(stack: &Stack) {
    let api = &stack.api;
    let task = api
        .submit("org.ferry.sleep-1s", "wait-1", Value::Null)
        .await;
    let (r, took) = wait(api, &task, "30s").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["status"], "succeeded", "{:#}", r.body);
    assert_eq!(r.body["result"], json!({"slept_ms": 1000}));
    let late = woken_after(&r.body);
    eprintln!("long poll answered in {took:?}, {late:?} after the task finished");
    assert!(took >= Duration::from_millis(900), "{took:?}");
    assert!(
        late < Duration::from_millis(750),
        "woken {late:?} after the end"
    );

    // A wait that ends first answers the state of the moment.
    let slow = api.submit("org.ferry.sleep", "wait-2", Value::Null).await;
    let (r, took) = wait(api, &slow, "700ms").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let status = r.body["status"].as_str().unwrap();
    assert!(["pending", "running"].contains(&status), "{:#}", r.body);
    assert!(took >= Duration::from_millis(690), "{took:?}");
    assert!(took < Duration::from_millis(2500), "{took:?}");
    // Plain seconds; and a final task answers at once.
    let (r, _) = wait(api, &slow, "10").await;
    assert_eq!(r.body["status"], "succeeded", "{:#}", r.body);
    let (r, took) = wait(api, &slow, "60s").await;
    assert_eq!(r.body["status"], "succeeded", "{:#}", r.body);
    assert!(took < Duration::from_millis(500), "{took:?}");
    // wait=0 is a plain read.
    let (r, _) = wait(api, &slow, "0").await;
    assert_eq!(r.body, api.status(&slow).await.body);

    for bad in ["61s", "2m", "1h", "soon", "-1", "1.5", ""] {
        let (r, _) = wait(api, &task, bad).await;
        let message = r.assert_error(400, "invalid_parameter");
        assert!(message.starts_with("wait:"), "{bad}: {message}");
    }
    let unknown = "4b9b8e0e-6a3c-4d25-9d4e-2f0f6a7d1c11";
    wait(api, unknown, "1s")
        .await
        .0
        .assert_error(404, "task_not_found");
    wait(api, "not-a-uuid", "1s")
        .await
        .0
        .assert_error(400, "invalid_id");
}

/// The stream of a task that retries once and then succeeds: every state,
/// in order, ids 1 to 5, live (not all at the end); then the stream ends.
/// A second stream after it ended replays the same; `Last-Event-ID`
/// replays only what follows it, and a bad one is a 400.
async fn streams_every_change(stack: &Stack) {
    let api = &stack.api;
    let task = api.submit("org.ferry.flaky", "sse-1", Value::Null).await;
    let mut sse = stream(api, &task, None).await;
    let events = sse.rest().await;
    let all = ["pending", "running", "retrying", "running", "succeeded"];
    assert_eq!(names(&events), all, "{events:#?}");
    assert_eq!(ids(&events), [1, 2, 3, 4, 5]);
    assert_data(&events, &task);
    // Two attempts of 300ms and a 300ms backoff between the first event
    // read and the last: they came as they happened.
    let spread = events[4].read_at - events[0].read_at;
    assert!(spread >= Duration::from_millis(600), "{spread:?}");
    assert_eq!(api.status(&task).await.body["status"], "succeeded");

    let again = stream(api, &task, None).await.rest().await;
    assert_eq!(names(&again), all);
    let after = stream(api, &task, Some("2")).await.rest().await;
    assert_eq!(names(&after), &all[2..]);
    assert_eq!(ids(&after), [3, 4, 5]);
    // Past the last event of a finished task: nothing, and the end.
    let none = stream(api, &task, Some("5")).await.rest().await;
    assert!(none.is_empty(), "{none:?}");

    let refused = |r: reqwest::Response| async move {
        let status = r.status().as_u16();
        let body: Value = r.json().await.expect("a JSON error");
        (
            status,
            body["error"].as_str().unwrap_or_default().to_string(),
        )
    };
    let r = SseStream::request(&api.client, &api.base, &task, Some("two")).await;
    assert_eq!(refused(r).await, (400, "invalid_header".into()));
    let unknown = "4b9b8e0e-6a3c-4d25-9d4e-2f0f6a7d1c11";
    let r = SseStream::request(&api.client, &api.base, unknown, None).await;
    assert_eq!(refused(r).await, (404, "task_not_found".into()));
    let r = SseStream::request(&api.client, &api.base, "not-a-uuid", None).await;
    assert_eq!(refused(r).await, (400, "invalid_id".into()));
}

/// A client that drops the stream mid-way and reconnects with the last id
/// it read gets exactly the changes it missed, intermediate ones included.
async fn reconnect_replays_what_was_missed(stack: &Stack) {
    let api = &stack.api;
    let task = api
        .submit("org.ferry.flaky-slow", "sse-2", Value::Null)
        .await;
    let mut sse = stream(api, &task, None).await;
    let first = sse.next().await.expect("pending");
    let second = sse.next().await.expect("running");
    assert_eq!(
        (first.name.as_str(), second.name.as_str()),
        ("pending", "running")
    );
    drop(sse);
    // Away while the first attempt fails and the second starts.
    let deadline = Instant::now() + DONE;
    loop {
        let view = api.status(&task).await.body;
        if view["attempts"] == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "{view:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut sse = stream(api, &task, Some(&second.id.to_string())).await;
    let missed = sse.rest().await;
    assert_eq!(
        names(&missed),
        ["retrying", "running", "succeeded"],
        "{missed:#?}"
    );
    assert_eq!(ids(&missed), [3, 4, 5]);
    assert_data(&missed, &task);
}

/// With hints ignored by the api (`FERRY_TEST_IGNORE_HINTS`), waiters are
/// still woken by the hub's fallback reads, a second apart.
async fn fallback_without_hints(stack: &Stack) {
    let api = &stack.api;
    let task = api
        .submit("org.ferry.sleep-1s", "fallback-1", Value::Null)
        .await;
    let mut sse = stream(api, &task, None).await;
    let (r, _) = wait(api, &task, "30s").await;
    assert_eq!(r.body["status"], "succeeded", "{:#}", r.body);
    let late = woken_after(&r.body);
    eprintln!("long poll woken {late:?} after the end, by a fallback read");
    assert!(
        late < Duration::from_millis(2500),
        "woken {late:?} after the end"
    );
    let events = sse.rest().await;
    assert_eq!(
        names(&events),
        ["pending", "running", "succeeded"],
        "{events:#?}"
    );
    assert!(
        api.proc
            .log_text()
            .contains("FERRY_TEST_IGNORE_HINTS is set"),
        "the api heard hints"
    );
}

/// The api subscribes to hints only while it has a waiter: none for a
/// task no one waits on, one for a long poll (woken by a hint: the
/// fallback reads are an hour apart), none again once no task has been
/// watched for the linger (1s here), and a new one for the next waiter.
async fn hints_only_while_watched(stack: &Stack) {
    let api = &stack.api;
    let subscriptions = || api.proc.log_text().matches("subscribed to hints").count();
    let quick = api.submit("org.ferry.echo", "lazy-0", Value::Null).await;
    api.wait_for(&quick, "succeeded", DONE).await;
    assert_eq!(subscriptions(), 0, "subscribed with no waiter");

    for round in 1..=2 {
        let task = api
            .submit("org.ferry.sleep-1s", &format!("lazy-{round}"), Value::Null)
            .await;
        let (r, _) = wait(api, &task, "30s").await;
        assert_eq!(r.body["status"], "succeeded", "{:#}", r.body);
        assert_eq!(subscriptions(), round, "round {round}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while api
            .proc
            .log_text()
            .matches("unsubscribing from hints")
            .count()
            < round
        {
            assert!(Instant::now() < deadline, "still subscribed, round {round}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

macro_rules! waiting_tests {
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
                });
                if let Some(stack) = stack.await {
                    $check(&stack).await;
                }
            }
        )+
    };
}

waiting_tests!(long_polls, &[("FERRY_TEST_HUB_FALLBACK", "1h")];
    Sqlite => long_poll_sqlite,
    Postgres => long_poll_postgres,
    Standalone => long_poll_standalone);

waiting_tests!(streams_every_change, &[];
    Sqlite => sse_sqlite,
    Postgres => sse_postgres,
    Standalone => sse_standalone);

waiting_tests!(reconnect_replays_what_was_missed, &[];
    Sqlite => sse_reconnect_sqlite,
    Postgres => sse_reconnect_postgres,
    Standalone => sse_reconnect_standalone);

waiting_tests!(hints_only_while_watched, &[("FERRY_TEST_HUB_FALLBACK", "1h"), ("FERRY_TEST_HUB_LINGER", "1s")];
    Sqlite => lazy_hints_sqlite,
    Postgres => lazy_hints_postgres,
    Standalone => lazy_hints_standalone);

waiting_tests!(fallback_without_hints, &[("FERRY_TEST_IGNORE_HINTS", "1")];
    Sqlite => fallback_sqlite,
    Postgres => fallback_postgres,
    Standalone => fallback_standalone);
