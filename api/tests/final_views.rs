//! `GET /status` of a succeeded task answered from the api's memory
//! (`final_views`), over HTTP on every layout: the same bytes as the read
//! from the database, counted by `ferry_status_answered_from_memory_total`;
//! a task still in flight or failed is read from the database every time
//! (`control.rs` checks that a failed or cancelled task read before a retry
//! shows the retry); with a retention within the margin nothing is kept.

use std::time::Duration;

use ferry_api::final_views::SERVED;
use ferry_testkit::{layout_tests, Layout, Stack};
use serde_json::{json, Value};

const DONE: Duration = Duration::from_secs(60);

/// The api's count of answers from memory.
async fn served(stack: &Stack) -> f64 {
    let text = stack
        .api
        .client
        .get(stack.api.url("/metrics"))
        .send()
        .await
        .expect("/metrics answers")
        .text()
        .await
        .expect("a text");
    ferry_testkit::metric_value(&text, SERVED).unwrap_or(0.0)
}

/// The raw body and content type of `GET path`.
async fn raw(stack: &Stack, path: &str) -> (u16, String, String) {
    let response = stack
        .api
        .client
        .get(stack.api.url(path))
        .send()
        .await
        .expect("an answer");
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (status, content_type, response.text().await.expect("a body"))
}

async fn succeeded_answers_come_from_memory(stack: &Stack) {
    let api = &stack.api;
    let id = api
        .submit("org.ferry.echo", "kept-1", json!({"kept": true}))
        .await;
    // Read while in flight and when final, from the database.
    let before = served(stack).await;
    let view = api.wait_for(&id, "succeeded", DONE).await;
    assert_eq!(view["result"], json!({"kept": true}), "{view:#}");
    let (status, content_type, first) = raw(stack, &format!("/status/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(content_type, "application/json");
    // Every later ask: the same bytes, from memory, with or without a wait.
    for path in [
        format!("/status/{id}"),
        format!("/status/{id}?wait=5s"),
        format!("/status/{id}"),
    ] {
        let (status, content_type, again) = raw(stack, &path).await;
        assert_eq!((status, content_type.as_str()), (200, "application/json"));
        assert_eq!(again, first, "{path}");
    }
    // The read that saw it succeed kept it: the four after came from memory.
    assert_eq!(served(stack).await - before, 4.0);
    let parsed: Value = serde_json::from_str(&first).expect("JSON");
    assert_eq!(parsed["status"], "succeeded");
    assert_eq!(parsed["id"], id.as_str());

    // A bad wait is still refused; an unknown id is still 404.
    api.get(&format!("/status/{id}?wait=forever"))
        .await
        .assert_error(400, "invalid_parameter");
    api.get("/status/4b9b8e0e-6a3c-4d25-9d4e-2f0f6a7d1c11")
        .await
        .assert_error(404, "task_not_found");

    // A failed task is read from the database every time.
    let failing = api
        .submit("org.ferry.fail", "not-kept-1", Value::Null)
        .await;
    api.wait_for(&failing, "failed", DONE).await;
    let before = served(stack).await;
    for _ in 0..3 {
        assert_eq!(api.status(&failing).await.body["status"], "failed");
    }
    assert_eq!(served(stack).await, before);
}

layout_tests!(succeeded_answers_come_from_memory:
    Sqlite => succeeded_answers_come_from_memory_sqlite,
    Postgres => succeeded_answers_come_from_memory_postgres,
    Standalone => succeeded_answers_come_from_memory_standalone);

/// With a retention of an hour, the margin (an hour) leaves no time to keep
/// an answer: each ask reads the database.
async fn nothing_is_kept_within_the_retention_margin(layout: Layout) {
    let Some(stack) = Stack::start_with(layout, 1, |d| d.env("FERRY_RETENTION", "1h")).await else {
        return;
    };
    let api = &stack.api;
    let id = api.submit("org.ferry.echo", "short-1", Value::Null).await;
    api.wait_for(&id, "succeeded", DONE).await;
    for _ in 0..3 {
        assert_eq!(api.status(&id).await.body["status"], "succeeded");
    }
    assert_eq!(served(&stack).await, 0.0);
}

#[tokio::test]
async fn nothing_is_kept_within_the_retention_margin_sqlite() {
    nothing_is_kept_within_the_retention_margin(Layout::Sqlite).await;
}

#[tokio::test]
async fn nothing_is_kept_within_the_retention_margin_postgres() {
    nothing_is_kept_within_the_retention_margin(Layout::Postgres).await;
}

#[tokio::test]
async fn nothing_is_kept_within_the_retention_margin_standalone() {
    nothing_is_kept_within_the_retention_margin(Layout::Standalone).await;
}
