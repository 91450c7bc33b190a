//! `GET /tasks`, `GET /tasks/counts` and `GET /tasks/<id>` over HTTP, with
//! real processes, on SQLite, PostgreSQL and standalone.

use std::collections::HashSet;
use std::time::Duration;

use ferry_testkit::{layout_tests, Api, Stack};
use serde_json::{json, Value};

const DONE: Duration = Duration::from_secs(60);
const ECHO: &str = "org.ferry.echo";
const FAIL: &str = "org.ferry.fail";

/// Posts a structured event from `source`; returns its task id.
async fn submit(api: &Api, event_type: &str, source: &str, id: &str) -> String {
    api.submit_event(json!({
        "specversion": "1.0", "type": event_type, "source": source, "id": id, "data": {"n": id}
    }))
    .await
}

/// One page: its task ids and its `next` link.
async fn page(api: &Api, path: &str) -> (Vec<String>, Option<String>) {
    let r = api.get(path).await;
    assert_eq!(r.status, 200, "{path}: {:?}", r.body);
    let ids = r.body["tasks"]
        .as_array()
        .unwrap_or_else(|| panic!("{path}: {:?}", r.body))
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_string())
        .collect();
    (ids, r.body["next"].as_str().map(str::to_string))
}

/// Every task of a listing, following `next` to the end.
async fn walk(api: &Api, path: &str) -> Vec<String> {
    let (mut all, mut next) = page(api, path).await;
    while let Some(path) = next {
        let (ids, more) = page(api, &path).await;
        all.extend(ids);
        next = more;
    }
    all
}

fn set(ids: &[String]) -> HashSet<String> {
    ids.iter().cloned().collect()
}

/// Filters alone and combined, newest first, pages with no duplicate and no
/// gap while tasks keep arriving, limit bounds, and a 400 naming every bad
/// parameter.
async fn listing(stack: &Stack) {
    let api = &stack.api;
    // Submitted one by one, so each has its own creation time: a/echo x4,
    // b/fail x3, b/echo x3, interleaved.
    let mut order = Vec::new();
    let (mut a_echo, mut b_fail, mut b_echo) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..4 {
        let id = submit(api, ECHO, "/list/a", &format!("a-{i}")).await;
        a_echo.push(id.clone());
        order.push(id);
        if i < 3 {
            let id = submit(api, FAIL, "/list/b", &format!("bf-{i}")).await;
            b_fail.push(id.clone());
            order.push(id);
            let id = submit(api, ECHO, "/list/b", &format!("be-{i}")).await;
            b_echo.push(id.clone());
            order.push(id);
        }
    }
    api.wait_all(&a_echo, "succeeded", DONE).await;
    api.wait_all(&b_echo, "succeeded", DONE).await;
    api.wait_all(&b_fail, "failed", DONE).await;
    let newest_first: Vec<String> = order.iter().rev().cloned().collect();

    // Newest first, and the rows are compact.
    let r = api.get("/tasks").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert!(r.body["next"].is_null(), "{:?}", r.body);
    let rows = r.body["tasks"].as_array().unwrap();
    let ids: Vec<String> = rows
        .iter()
        .map(|t| t["id"].as_str().unwrap().into())
        .collect();
    assert_eq!(ids, newest_first);
    let first = &rows[0];
    let mut keys: Vec<&str> = first
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "attempts",
            "created_at",
            "event_id",
            "finished_at",
            "id",
            "source",
            "started_at",
            "status",
            "type"
        ]
    );
    assert_eq!(first["type"], ECHO);
    assert_eq!(first["source"], "/list/a");
    assert_eq!(first["event_id"], "a-3");
    assert_eq!(first["status"], "succeeded");
    assert_eq!(first["attempts"], 1);
    // Its times are the status view's, to the nanosecond.
    let view = api.status(first["id"].as_str().unwrap()).await.body;
    for key in ["created_at", "started_at", "finished_at"] {
        assert!(first[key].is_string(), "{key}: {first}");
        assert_eq!(first[key], view[key], "{key}");
    }
    let failed = rows.iter().find(|t| t["id"] == b_fail[0].as_str()).unwrap();
    assert_eq!(failed["attempts"], 3);
    assert_eq!(failed["status"], "failed");

    // Each filter, and together; the order is kept.
    let only = |ids: &[String]| -> Vec<String> {
        newest_first
            .iter()
            .filter(|id| ids.contains(id))
            .cloned()
            .collect()
    };
    let all_b: Vec<String> = b_fail.iter().chain(&b_echo).cloned().collect();
    let all_echo: Vec<String> = a_echo.iter().chain(&b_echo).cloned().collect();
    for (path, expected) in [
        ("/tasks?status=failed", only(&b_fail)),
        ("/tasks?status=succeeded", only(&all_echo)),
        ("/tasks?status=failed,succeeded", newest_first.clone()),
        ("/tasks?status=failed&status=cancelled", only(&b_fail)),
        ("/tasks?status=pending,running,retrying", Vec::new()),
        ("/tasks?type=org.ferry.fail", only(&b_fail)),
        ("/tasks?type=org.ferry.echo", only(&all_echo)),
        ("/tasks?source=%2Flist%2Fb", only(&all_b)),
        ("/tasks?source=/list/a", only(&a_echo)),
        ("/tasks?source=/list/b&type=org.ferry.echo", only(&b_echo)),
        ("/tasks?source=/list/b&status=succeeded", only(&b_echo)),
        ("/tasks?source=/list/a&status=failed", Vec::new()),
        ("/tasks?type=org.ferry.nothing", Vec::new()),
    ] {
        assert_eq!(walk(api, path).await, expected, "{path}");
        assert_eq!(
            walk(api, &format!("{path}&limit=2")).await,
            expected,
            "{path} in pages"
        );
    }

    // Creation times: strictly after and strictly before.
    let created: Vec<String> = rows
        .iter()
        .map(|t| t["created_at"].as_str().unwrap().to_string())
        .collect();
    let (newer, older) = (&created[2], &created[7]);
    assert_eq!(
        walk(
            api,
            &format!("/tasks?created_after={older}&created_before={newer}")
        )
        .await,
        newest_first[3..7]
    );
    assert_eq!(
        walk(api, &format!("/tasks?created_after={older}")).await,
        newest_first[..7]
    );
    assert_eq!(
        walk(api, &format!("/tasks?created_before={newer}")).await,
        newest_first[3..]
    );
    // An offset that arrives unencoded (a `+` read as a space) still works.
    let plus = chrono::DateTime::parse_from_rfc3339(newer)
        .unwrap()
        .with_timezone(&chrono::FixedOffset::east_opt(3600).unwrap())
        .to_rfc3339();
    assert!(plus.contains("+01:00"), "{plus}");
    assert_eq!(
        walk(api, &format!("/tasks?created_before={plus}&limit=3")).await,
        newest_first[3..]
    );

    // Paging while tasks keep arriving: every task there when the walk
    // began, once, in order; none of the new ones.
    let before: Vec<String> = newest_first.clone();
    let (mut seen, mut next) = page(api, "/tasks?limit=3").await;
    let mut arrived = Vec::new();
    let mut n = 0;
    while let Some(path) = next {
        assert!(
            path.starts_with("/tasks?") && path.contains("limit=3"),
            "{path}"
        );
        for _ in 0..2 {
            arrived.push(submit(api, ECHO, "/list/new", &format!("new-{n}")).await);
            n += 1;
        }
        let (ids, more) = page(api, &path).await;
        assert!(ids.len() <= 3);
        seen.extend(ids);
        next = more;
    }
    assert_eq!(seen, before, "no duplicate, no gap, newest first");
    // The new ones are on top of a fresh first page.
    let (top, _) = page(api, "/tasks?limit=2").await;
    assert_eq!(
        top,
        [
            arrived[arrived.len() - 1].clone(),
            arrived[arrived.len() - 2].clone()
        ]
    );
    // And a filtered walk's next links keep the filter.
    let (_, next) = page(api, "/tasks?source=/list/new&limit=1").await;
    let next = next.expect("a next link");
    assert!(next.contains("source=%2Flist%2Fnew"), "{next}");
    assert_eq!(
        walk(api, "/tasks?source=/list/new&limit=1").await.len(),
        arrived.len()
    );

    // Limits: 1 and 500 are fine; the default is 50.
    let (one, next) = page(api, "/tasks?limit=1").await;
    assert_eq!(one.len(), 1);
    assert!(next.is_some());
    let total = before.len() + arrived.len();
    let (most, next) = page(api, "/tasks?limit=500").await;
    assert_eq!(most.len(), total);
    assert!(next.is_none());
    let batch: Vec<Value> = (0..(51 - total))
        .map(|i| json!({"specversion": "1.0", "type": ECHO, "source": "/list/batch", "id": format!("batch-{i}")}))
        .collect();
    let r = api
        .post(
            Value::Array(batch).to_string(),
            &[("content-type", "application/cloudevents-batch+json")],
        )
        .await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    let (fifty, next) = page(api, "/tasks").await;
    assert_eq!(fifty.len(), 50);
    let next = next.expect("more than 50 tasks");
    assert!(next.contains("limit=50"), "{next}");
    let (rest, next) = page(api, &next).await;
    assert_eq!(rest.len(), 1);
    assert!(next.is_none());
    assert_eq!(set(&fifty).len() + set(&rest).len(), 51);
    assert!(set(&fifty).is_disjoint(&set(&rest)));

    // Every bad parameter is a 400 that names it.
    for (query, parameter) in [
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("limit=-1", "limit"),
        ("limit=ten", "limit"),
        ("limit=", "limit"),
        ("status=done", "status"),
        ("status=failed,", "status"),
        ("status=", "status"),
        ("type=", "type"),
        ("source=", "source"),
        ("type=a&type=b", "type"),
        // PostgreSQL refuses a NUL even as a parameter: a 400, not a 500.
        ("type=a%00b", "type"),
        ("source=%00", "source"),
        ("created_after=yesterday", "created_after"),
        ("created_after=2026-12-03", "created_after"),
        ("created_before=2026-12-03T25:00:00Z", "created_before"),
        ("cursor=not-a-cursor", "cursor"),
        ("cursor=", "cursor"),
        ("colour=red", "colour"),
    ] {
        let r = api.get(&format!("/tasks?{query}")).await;
        let message = r.assert_error(400, "invalid_parameter");
        assert!(
            message.starts_with(&format!("{parameter}:")),
            "{query}: {message}"
        );
    }
}

/// Counts agree with what ran; the full record of a succeeded and of a
/// failed task; unknown and malformed ids.
async fn counts_and_records(stack: &Stack) {
    let api = &stack.api;
    let r = api.get("/tasks/counts").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["total"], 0);
    assert_eq!(r.body["by_status"]["pending"], 0);
    assert_eq!(r.body["by_type"], json!({}));

    let mut echo = Vec::new();
    for i in 0..3 {
        echo.push(submit(api, ECHO, "/counts", &format!("e-{i}")).await);
    }
    let fail = vec![
        submit(api, FAIL, "/counts", "f-0").await,
        submit(api, FAIL, "/counts", "f-1").await,
    ];
    api.wait_all(&echo, "succeeded", DONE).await;
    api.wait_all(&fail, "failed", DONE).await;
    // Shared counts are at most a second old.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = api.get("/tasks/counts").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let counts = &r.body;
    assert_eq!(counts["total"], 5, "{counts}");
    assert_eq!(
        counts["by_status"],
        json!({"pending": 0, "running": 0, "retrying": 0, "succeeded": 3, "failed": 2, "cancelled": 0})
    );
    assert_eq!(
        counts["by_type"],
        json!({ECHO: {"succeeded": 3}, FAIL: {"failed": 2}})
    );
    assert!(counts["age_ms"].as_u64().unwrap() <= 1000, "{counts}");

    // A succeeded task: its event as received, result, its one attempt.
    let r = api.get(&format!("/tasks/{}", echo[1])).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let task = &r.body;
    assert_eq!(task["id"], echo[1].as_str());
    assert_eq!(task["status"], "succeeded");
    assert_eq!(
        task["event"],
        json!({"specversion": "1.0", "type": ECHO, "source": "/counts", "id": "e-1", "data": {"n": "e-1"}})
    );
    assert_eq!(task["result"], json!({"n": "e-1"}));
    assert!(task["error"].is_null());
    assert_eq!(task["attempts"], 1);
    assert_eq!(task["max_attempts"], 3);
    let history = task["attempt_history"].as_array().unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0]["attempt"], 1);
    assert!(history[0]["worker"].as_str().is_some_and(|w| !w.is_empty()));
    assert!(history[0]["error"].is_null());
    for key in ["created_at", "started_at", "finished_at"] {
        assert!(task[key].as_str().is_some(), "{key}: {task}");
    }
    // The same view as /status, plus the event.
    let mut status = api.status(&echo[1]).await.body;
    status["event"] = task["event"].clone();
    assert_eq!(&status, task);

    // A failed task: every attempt, each with its error.
    let r = api.get(&format!("/tasks/{}", fail[0])).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let task = &r.body;
    assert_eq!(task["status"], "failed");
    assert_eq!(task["attempts"], 3);
    assert_eq!(task["max_attempts"], 3);
    assert!(task["result"].is_null());
    assert!(task["error"].as_str().is_some(), "{task}");
    assert_eq!(task["event"]["id"], "f-0");
    let history = task["attempt_history"].as_array().unwrap();
    assert_eq!(
        history
            .iter()
            .map(|a| a["attempt"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        [1, 2, 3]
    );
    for attempt in history {
        assert!(attempt["error"].as_str().is_some(), "{attempt}");
        assert!(attempt["finished_at"].as_str().is_some(), "{attempt}");
    }

    api.get("/tasks/4b9b8e0e-6a3c-4d25-9d4e-2f0f6a7d1c11")
        .await
        .assert_error(404, "task_not_found");
    api.get("/tasks/not-a-uuid")
        .await
        .assert_error(400, "invalid_id");
}

layout_tests!(listing:
    Sqlite => listing_sqlite,
    Postgres => listing_postgres,
    Standalone => listing_standalone);

layout_tests!(counts_and_records:
    Sqlite => counts_and_records_sqlite,
    Postgres => counts_and_records_postgres,
    Standalone => counts_and_records_standalone);
