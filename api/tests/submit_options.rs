//! What a producer can ask of `/receive` beyond the event, over HTTP with
//! real processes on SQLite, PostgreSQL and standalone: an
//! `Idempotency-Key`, a delayed task (`notbefore`, `delayseconds`), and how long finished
//! tasks are kept (`retention`).

use std::time::{Duration, Instant};

use chrono::{DateTime, SubsecRound, Utc};
use ferry_testkit::{unique, Deployment, Layout, Stack};
use serde_json::{json, Value};

const DONE: Duration = Duration::from_secs(60);

/// Runs `$check(layout, setup)` once per layout, as its own test.
macro_rules! per_layout {
    ($check:path: $($layout:ident => $name:ident),+ $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                $check(Layout::$layout).await;
            }
        )+
    };
}

fn event(id: &str, data: Value) -> Value {
    json!({
        "specversion": "1.0", "type": "org.ferry.echo", "source": "/submit-options",
        "id": id, "data": data,
    })
}

const JSON: (&str, &str) = ("content-type", "application/cloudevents+json");

/// Stops the stack's processes and starts them again on the same
/// deployment (the database and the queue are kept).
async fn restart(stack: Stack, layout: Layout) -> Stack {
    let Stack {
        api,
        workers,
        deployment,
    } = stack;
    drop(api);
    drop(workers);
    let (api, workers) = if layout == Layout::Standalone {
        (deployment.standalone().await, Vec::new())
    } else {
        (
            deployment.api().await,
            vec![deployment.worker("worker-again")],
        )
    };
    Stack {
        api,
        workers,
        deployment,
    }
}

/// The same key with the same event is the same task; with another event a
/// 422 naming it; concurrent requests with one new key make one task; bad
/// keys are 400; keys are kept across a restart.
async fn idempotency_keys(layout: Layout) {
    let Some(stack) = Stack::start(layout).await else {
        return;
    };
    let key = unique("order");
    let api = &stack.api;
    let first_event = event(&unique("k"), json!({"n": 1}));
    let headers = [JSON, ("idempotency-key", key.as_str())];
    let first = api.post(first_event.to_string(), &headers).await;
    assert_eq!(first.status, 202, "{:?}", first.body);
    let task = first.task_id();
    let again = api.post(first_event.to_string(), &headers).await;
    assert_eq!(again.status, 200, "{:?}", again.body);
    assert_eq!(again.task_id(), task);
    // A producer that makes a new event id per try, with other content.
    let other = event(&unique("k"), json!({"n": 2}));
    let reused = api.post(other.to_string(), &headers).await;
    let message = reused.assert_error(422, "idempotency_key_reused");
    assert_eq!(reused.body["task"], task.as_str());
    assert!(message.contains(&task), "{message}");
    assert!(message.contains(&key), "{message}");
    api.wait_for(&task, "succeeded", DONE).await;

    // Bad keys, each named.
    let long = "k".repeat(256);
    for bad in ["", "two words", long.as_str(), "tab\there"] {
        let r = api
            .post(
                event(&unique("bad"), json!(1)).to_string(),
                &[JSON, ("idempotency-key", bad)],
            )
            .await;
        let message = r.assert_error(400, "invalid_header");
        assert!(message.contains("Idempotency-Key"), "{message}");
    }
    let batch = format!("[{}]", event(&unique("b"), json!(1)));
    let r = api
        .post(
            batch,
            &[
                ("content-type", "application/cloudevents-batch+json"),
                ("idempotency-key", "batch-key"),
            ],
        )
        .await;
    r.assert_error(400, "invalid_header");

    // Eight requests at once with one new key, each its own event id: one
    // task, and every other request names it.
    let shared = unique("concurrent");
    let source = unique("/concurrent");
    let posts = (0..8).map(|i| {
        let body = json!({
            "specversion": "1.0", "type": "org.ferry.echo", "source": source,
            "id": format!("c-{i}"), "data": i,
        });
        let shared = shared.clone();
        async move {
            api.post(body.to_string(), &[JSON, ("idempotency-key", &shared)])
                .await
        }
    });
    let replies = futures_util::future::join_all(posts).await;
    let created: Vec<_> = replies.iter().filter(|r| r.status == 202).collect();
    assert_eq!(created.len(), 1, "{replies:?}");
    let winner = created[0].task_id();
    for r in replies.iter().filter(|r| r.status != 202) {
        r.assert_error(422, "idempotency_key_reused");
        assert_eq!(r.body["task"], winner.as_str());
    }
    let filter = format!("WHERE source = '{source}'");
    assert_eq!(stack.deployment.task_rows(&filter), 1);

    // Kept across a restart of every process.
    let stack = restart(stack, layout).await;
    let again = stack.api.post(first_event.to_string(), &headers).await;
    assert_eq!(again.status, 200, "{:?}", again.body);
    assert_eq!(again.task_id(), task);
    assert_eq!(again.body["status"], "succeeded");
    let reused = stack.api.post(other.to_string(), &headers).await;
    reused.assert_error(422, "idempotency_key_reused");
}

per_layout!(idempotency_keys:
    Sqlite => idempotency_keys_sqlite,
    Postgres => idempotency_keys_postgres,
    Standalone => idempotency_keys_standalone);

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn time(view: &Value, key: &str) -> DateTime<Utc> {
    view[key]
        .as_str()
        .unwrap_or_else(|| panic!("no {key}: {view:#}"))
        .parse()
        .unwrap()
}

/// A task delayed 2 s stays pending with its due time shown, starts no
/// earlier, then succeeds; structured and binary mode alike.
async fn delayed_task_waits(stack: &Stack, binary: bool) {
    let api = &stack.api;
    let due = (Utc::now() + chrono::Duration::seconds(3)).trunc_subsecs(0);
    let id = unique("delayed");
    let r = if binary {
        api.post(
            r#"{"hello": "later"}"#,
            &[
                ("content-type", "application/json"),
                ("ce-specversion", "1.0"),
                ("ce-type", "org.ferry.echo"),
                ("ce-source", "/submit-options"),
                ("ce-id", &id),
                ("ce-notbefore", &rfc3339(due)),
            ],
        )
        .await
    } else {
        let mut body = event(&id, json!({"hello": "later"}));
        body["notbefore"] = rfc3339(due).into();
        api.post(body.to_string(), &[JSON]).await
    };
    assert_eq!(r.status, 202, "{:?}", r.body);
    let task = r.task_id();
    let view = api.status(&task).await.body;
    assert_eq!(view["status"], "pending", "{view:#}");
    assert_eq!(time(&view, "due_at"), due, "{view:#}");
    // Still waiting a second later: no worker took it early.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let view = api.status(&task).await.body;
    assert_eq!(view["status"], "pending", "{view:#}");
    let done = api.wait_for(&task, "succeeded", DONE).await;
    assert!(time(&done, "started_at") >= due, "{done:#}");
    assert_eq!(done["result"], json!({"hello": "later"}));
    assert!(done["due_at"].is_null(), "{done:#}");
}

async fn delayed_tasks(layout: Layout) {
    let Some(stack) = Stack::start(layout).await else {
        return;
    };
    delayed_task_waits(&stack, false).await;
    delayed_task_waits(&stack, true).await;

    // Bad values name the attribute.
    let mut bad = event(&unique("bad"), json!(1));
    bad["notbefore"] = "in an hour".into();
    let r = stack.api.post(bad.to_string(), &[JSON]).await;
    let message = r.assert_error(422, "invalid_event");
    assert!(message.contains("notbefore"), "{message}");
    let r = stack
        .api
        .post(
            "{}",
            &[
                ("content-type", "application/json"),
                ("ce-specversion", "1.0"),
                ("ce-type", "org.ferry.echo"),
                ("ce-source", "/submit-options"),
                ("ce-id", "bad-binary"),
                ("ce-notbefore", "3600"),
            ],
        )
        .await;
    let message = r.assert_error(422, "invalid_event");
    assert!(message.contains("notbefore"), "{message}");

    // An hour ahead: still pending after every process restarted.
    let due = (Utc::now() + chrono::Duration::hours(1)).trunc_subsecs(0);
    let mut later = event(&unique("hour"), json!(1));
    later["notbefore"] = rfc3339(due).into();
    let task = stack.api.post(later.to_string(), &[JSON]).await.task_id();
    let stack = restart(stack, layout).await;
    // Several relay rounds (200 ms each) after the restart.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let view = stack.api.status(&task).await.body;
    assert_eq!(view["status"], "pending", "{view:#}");
    assert_eq!(view["attempts"], 0, "{view:#}");
    assert_eq!(time(&view, "due_at"), due, "{view:#}");
    // And an undelayed task still runs beside it.
    let now = stack
        .api
        .submit("org.ferry.echo", &unique("now"), json!(1))
        .await;
    stack.api.wait_for(&now, "succeeded", DONE).await;
}

per_layout!(delayed_tasks:
    Sqlite => delayed_tasks_sqlite,
    Postgres => delayed_tasks_postgres,
    Standalone => delayed_tasks_standalone);

/// `delayseconds`: a delay relative to arrival, as a JSON integer or (in
/// binary mode, where every attribute is text) a string of digits; the due
/// time is arrival plus the delay, and the task waits for it. Bad values,
/// out-of-range ones and both forms at once are refused.
async fn relative_delays(layout: Layout) {
    let Some(stack) = Stack::start(layout).await else {
        return;
    };
    let api = &stack.api;
    let before = Utc::now();
    let mut body = event(&unique("delay"), json!({"hello": "in 3 s"}));
    body["delayseconds"] = 3.into();
    let structured = api.post(body.to_string(), &[JSON]).await;
    let binary_id = unique("delay-binary");
    let binary = api
        .post(
            "{}",
            &[
                ("content-type", "application/json"),
                ("ce-specversion", "1.0"),
                ("ce-type", "org.ferry.echo"),
                ("ce-source", "/submit-options"),
                ("ce-id", &binary_id),
                ("ce-delayseconds", "3"),
            ],
        )
        .await;
    let after = Utc::now();
    let mut tasks = Vec::new();
    for r in [structured, binary] {
        assert_eq!(r.status, 202, "{:?}", r.body);
        let task = r.task_id();
        let view = api.status(&task).await.body;
        assert_eq!(view["status"], "pending", "{view:#}");
        let due = time(&view, "due_at");
        let delay = chrono::Duration::seconds(3);
        assert!(due >= before + delay && due <= after + delay, "{view:#}");
        tasks.push((task, due));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (task, _) in &tasks {
        let view = api.status(task).await.body;
        assert_eq!(view["status"], "pending", "{view:#}");
    }
    for (task, due) in &tasks {
        let done = api.wait_for(task, "succeeded", DONE).await;
        assert!(time(&done, "started_at") >= *due, "{done:#}");
    }
    for (value, why) in [
        (json!(-1), "delayseconds"),
        (json!("soon"), "delayseconds"),
        (json!(1.5), "delayseconds"),
        (json!(30 * 24 * 3600 + 1), "delayseconds"),
    ] {
        let mut bad = event(&unique("bad-delay"), json!(1));
        bad["delayseconds"] = value;
        let message = api
            .post(bad.to_string(), &[JSON])
            .await
            .assert_error(422, "invalid_event");
        assert!(message.contains(why), "{message}");
    }
    let mut both = event(&unique("both"), json!(1));
    both["delayseconds"] = 5.into();
    both["notbefore"] = rfc3339(Utc::now()).into();
    let message = api
        .post(both.to_string(), &[JSON])
        .await
        .assert_error(422, "invalid_event");
    assert!(message.contains("both"), "{message}");
}

per_layout!(relative_delays:
    Sqlite => relative_delays_sqlite,
    Postgres => relative_delays_postgres,
    Standalone => relative_delays_standalone);

/// Polls until `/status/<id>` answers 404; fails after `timeout`.
async fn wait_gone(stack: &Stack, id: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let r = stack.api.status(id).await;
        if r.status == 404 {
            r.assert_error(404, "task_not_found");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "task {id} still there after {timeout:?}: {:#}",
            r.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// With `retention = 1s` finished tasks are deleted with their attempts;
/// pending and running ones are kept.
async fn retention_deletes_finished_tasks(layout: Layout) {
    let Some(stack) =
        Stack::start_with(layout, 1, |d: Deployment| d.env("FERRY_RETENTION", "1s")).await
    else {
        return;
    };
    let api = &stack.api;
    let mut waiting = event(&unique("waiting"), json!(1));
    waiting["notbefore"] = rfc3339(Utc::now() + chrono::Duration::hours(1)).into();
    let waiting = api.post(waiting.to_string(), &[JSON]).await.task_id();
    let running = api
        .submit("org.ferry.sleep", &unique("running"), Value::Null)
        .await;
    let done = api
        .submit("org.ferry.echo", &unique("done"), json!(1))
        .await;
    let failed = api
        .submit("org.ferry.fail", &unique("failed"), json!(1))
        .await;
    api.wait_for(&running, "running", DONE).await;
    api.wait_for(&done, "succeeded", DONE).await;
    wait_gone(&stack, &done, Duration::from_secs(30)).await;
    // Still running (sleep takes 3 s) or just finished: either way there.
    let view = api.status(&running).await;
    assert_eq!(view.status, 200, "{:?}", view.body);
    assert_eq!(api.status(&waiting).await.body["status"], "pending");
    wait_gone(&stack, &failed, Duration::from_secs(30)).await;
    // Their attempts went with them.
    let sql = format!(
        "SELECT CAST(task_id AS TEXT) AS v FROM task_attempts WHERE CAST(task_id AS TEXT) IN ('{done}', '{failed}')"
    );
    assert!(stack.deployment.texts(&sql).is_empty());
    wait_gone(&stack, &running, Duration::from_secs(30)).await;
    assert_eq!(api.status(&waiting).await.body["status"], "pending");
    let logs: String = std::iter::once(api.proc.log_text())
        .chain(stack.workers.iter().map(|w| w.log_text()))
        .collect();
    assert!(
        logs.contains("deleted final tasks older than the retention"),
        "{logs}"
    );
}

per_layout!(retention_deletes_finished_tasks:
    Sqlite => retention_deletes_finished_tasks_sqlite,
    Postgres => retention_deletes_finished_tasks_postgres,
    Standalone => retention_deletes_finished_tasks_standalone);

/// `retention = "off"` keeps finished tasks: `FERRY_RETENTION=off` over a
/// file that says `1s`.
async fn retention_off_keeps_tasks(layout: Layout) {
    let Some(stack) = Stack::start_with(layout, 1, |d: Deployment| {
        let text = std::fs::read_to_string(&d.config).unwrap();
        let text = text.replacen("\n[[routes]]", "retention = \"1s\"\n\n[[routes]]", 1);
        d.config(&text).env("FERRY_RETENTION", "off")
    })
    .await
    else {
        return;
    };
    let done = stack
        .api
        .submit("org.ferry.echo", &unique("kept"), json!(1))
        .await;
    stack.api.wait_for(&done, "succeeded", DONE).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(stack.api.status(&done).await.body["status"], "succeeded");
}

per_layout!(retention_off_keeps_tasks:
    Sqlite => retention_off_keeps_tasks_sqlite,
    Postgres => retention_off_keeps_tasks_postgres,
    Standalone => retention_off_keeps_tasks_standalone);
