//! The api built as a library and driven by Rocket's local client: every
//! kind of bad request, one test each, so the first failure does not hide
//! the rest. Each test has its own SQLite file and in-process queue; no
//! process, port or service is needed. (What only a socket can show —
//! oversized heads, stalled clients — is tested in `listener`'s unit tests
//! and in `slow_clients.rs`.)

mod common;

use ferry_api::{rocket, AppState};
use ferry_core::Config;
use rocket::http::{ContentType, Header, Status};
use rocket::local::asynchronous::Client;
use serde_json::{json, Value};

/// Largest body the app under test accepts.
const MAX_BODY: usize = 4096;

/// The app on a fresh SQLite file, with `org.ferry.echo` routed; the file
/// lives as long as the client.
struct App {
    client: Client,
    _dir: tempfile::TempDir,
}

async fn app() -> App {
    let (database_url, dir) = common::sqlite_file();
    let config = Config {
        max_body_bytes: MAX_BODY as u64,
        routes: common::echo_routes(&["org.ferry.echo"]),
        ..Config::default()
    };
    let (state, _db) = common::local_state(database_url, config);
    let client = Client::tracked(rocket(state)).await.unwrap();
    App { client, _dir: dir }
}

/// One request of the matrix.
struct Request {
    path: String,
    /// `None` is a GET.
    body: Option<Vec<u8>>,
    headers: Vec<(&'static str, String)>,
}

fn post(content_type: Option<&str>, body: impl Into<Vec<u8>>) -> Request {
    Request {
        path: "/receive".into(),
        body: Some(body.into()),
        headers: content_type
            .map(|ct| vec![("content-type", ct.to_owned())])
            .unwrap_or_default(),
    }
}

fn post_json(body: impl Into<Vec<u8>>) -> Request {
    post(Some("application/json"), body)
}

/// A POST with an empty body and no headers (the control routes).
fn post_to(path: &str) -> Request {
    Request {
        path: path.into(),
        body: Some(Vec::new()),
        headers: Vec::new(),
    }
}

fn get(path: &str) -> Request {
    Request {
        path: path.into(),
        body: None,
        headers: Vec::new(),
    }
}

/// A binary-mode request: attributes in `ce-*` headers, `data` the body.
fn binary(headers: &[(&'static str, &str)], body: &str) -> Request {
    let mut request = post(Some("application/json"), body);
    request.headers.extend(
        [
            ("ce-specversion", "1.0"),
            ("ce-type", "org.ferry.echo"),
            ("ce-source", "/in-process"),
        ]
        .iter()
        .chain(headers)
        .map(|&(k, v)| (k, v.to_owned())),
    );
    request
}

/// `request` with an `Idempotency-Key` header.
fn keyed(mut request: Request, key: &str) -> Request {
    request.headers.push(("idempotency-key", key.to_owned()));
    request
}

/// Sends `request`; returns the status and the JSON body (the test fails
/// if the body is not JSON).
async fn send(app: &App, request: Request) -> (Status, Value) {
    let mut local = match &request.body {
        Some(_) => app.client.post(request.path.clone()),
        None => app.client.get(request.path.clone()),
    };
    for (name, value) in request.headers {
        local = local.header(Header::new(name, value));
    }
    if let Some(body) = request.body {
        local = local.body(body);
    }
    let response = local.dispatch().await;
    let status = response.status();
    assert_eq!(
        response.content_type(),
        Some(ContentType::JSON),
        "every answer is JSON (status {status})"
    );
    let body: Value = serde_json::from_str(&response.into_string().await.unwrap_or_default())
        .expect("the body is JSON");
    (status, body)
}

/// `request` is refused with `status` and error `code`, with a message; the
/// app still takes a good event afterwards, and none of the refused
/// requests became a task.
async fn refused(request: Request, status: u16, code: &str) {
    let app = app().await;
    let (got, body) = send(&app, request).await;
    assert_eq!(got.code, status, "{body}");
    assert_eq!(body["error"], code, "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    let (got, body) = send(&app, post_json(event("after", json!(1)).to_string())).await;
    assert_eq!(got, Status::Accepted, "{body}");
    let db = &app.client.rocket().state::<AppState>().unwrap().db;
    assert_eq!(
        db.count_with_status(ferry_core::TaskStatus::Pending)
            .unwrap(),
        1
    );
}

fn event(id: &str, data: Value) -> Value {
    json!({
        "specversion": "1.0",
        "type": "org.ferry.echo",
        "source": "/in-process",
        "id": id,
        "data": data,
    })
}

macro_rules! refusals {
    ($($name:ident: $request:expr => $status:literal $code:literal;)*) => {$(
        #[tokio::test]
        async fn $name() {
            refused($request, $status, $code).await;
        }
    )*};
}

refusals! {
    a_body_that_is_not_json: post_json("{not json") => 400 "malformed_json";
    an_empty_body: post_json("") => 400 "empty_body";
    no_content_type: post(None, event("e", json!(1)).to_string()) => 415 "unsupported_media_type";
    a_form_body: post(Some("application/x-www-form-urlencoded"), "a=b") => 415 "unsupported_media_type";
    a_plain_text_body_without_ce_headers: post(Some("text/plain"), "hello") => 415 "unsupported_media_type";
    a_body_over_the_limit: post_json(event("big", json!("x".repeat(MAX_BODY))).to_string()) => 413 "payload_too_large";
    an_array_of_numbers: post(Some("application/cloudevents-batch+json"), "[1, 2]") => 422 "invalid_event";
    a_json_string: post_json("\"an event\"") => 422 "invalid_event";
    an_event_without_type: post_json(r#"{"specversion":"1.0","source":"/s","id":"1"}"#) => 422 "invalid_event";
    an_unknown_specversion: post_json(r#"{"specversion":"0.3","type":"org.ferry.echo","source":"/s","id":"1"}"#) => 422 "invalid_event";
    an_unrouted_type: post_json(r#"{"specversion":"1.0","type":"org.ferry.nowhere","source":"/s","id":"1"}"#) => 422 "unrouted_event";
    a_batch_with_one_bad_event: post(Some("application/cloudevents-batch+json"), format!("[{},{{\"specversion\":\"1.0\"}}]", event("ok", json!(1)))) => 422 "invalid_event";
    a_nul_in_data: post_json(event("nul", json!({"k": ["a\u{0}b"]})).to_string()) => 422 "invalid_event";
    a_nul_in_the_id: post_json(event("a\u{0}b", json!(1)).to_string()) => 422 "invalid_event";
    an_overlong_source: post_json(json!({"specversion":"1.0","type":"org.ferry.echo","source":"s".repeat(2000),"id":"1"}).to_string()) => 422 "invalid_event";
    a_number_of_absurd_length: post_json(format!(r#"{{"specversion":"1.0","type":"org.ferry.echo","source":"/s","id":"1","data":1{}}}"#, "0".repeat(1500))) => 422 "invalid_event";
    a_ce_header_with_a_bad_percent_escape: binary(&[("ce-id", "a%zz")], "{}") => 400 "invalid_header";
    a_binary_event_without_id: binary(&[], "{}") => 422 "invalid_event";
    an_empty_idempotency_key: keyed(post_json(event("k", json!(1)).to_string()), "") => 400 "invalid_header";
    an_idempotency_key_with_a_space: keyed(post_json(event("k", json!(1)).to_string()), "a b") => 400 "invalid_header";
    an_idempotency_key_not_ascii: keyed(post_json(event("k", json!(1)).to_string()), "clé") => 400 "invalid_header";
    an_overlong_idempotency_key: keyed(post_json(event("k", json!(1)).to_string()), &"k".repeat(256)) => 400 "invalid_header";
    an_idempotency_key_on_a_batch: keyed(post(Some("application/cloudevents-batch+json"), format!("[{}]", event("k", json!(1)))), "k") => 400 "invalid_header";
    a_notbefore_that_is_not_a_time: post_json(json!({"specversion":"1.0","type":"org.ferry.echo","source":"/s","id":"1","notbefore":"tomorrow"}).to_string()) => 422 "invalid_event";
    a_notbefore_that_is_a_number: post_json(json!({"specversion":"1.0","type":"org.ferry.echo","source":"/s","id":"1","notbefore":60}).to_string()) => 422 "invalid_event";
    a_notbefore_after_year_9999: post_json(json!({"specversion":"1.0","type":"org.ferry.echo","source":"/s","id":"1","notbefore":"9999-12-31T23:59:59-23:59"}).to_string()) => 422 "invalid_event";
    a_ce_notbefore_after_year_9999: binary(&[("ce-id", "1"), ("ce-notbefore", "9999-12-31T23:59:59-01:00")], "{}") => 422 "invalid_event";
    a_negative_delayseconds: post_json(json!({"specversion":"1.0","type":"org.ferry.echo","source":"/s","id":"1","delayseconds":-1}).to_string()) => 422 "invalid_event";
    a_delayseconds_over_30_days: post_json(json!({"specversion":"1.0","type":"org.ferry.echo","source":"/s","id":"1","delayseconds":2_592_001}).to_string()) => 422 "invalid_event";
    a_delayseconds_and_a_notbefore: post_json(json!({"specversion":"1.0","type":"org.ferry.echo","source":"/s","id":"1","delayseconds":5,"notbefore":"2026-12-03T20:00:00Z"}).to_string()) => 422 "invalid_event";
    a_ce_delayseconds_that_is_not_digits: binary(&[("ce-id", "1"), ("ce-delayseconds", "5s")], "{}") => 422 "invalid_event";
    a_ce_notbefore_that_is_not_a_time: binary(&[("ce-id", "1"), ("ce-notbefore", "soon")], "{}") => 422 "invalid_event";
    a_status_id_that_is_not_a_uuid: get("/status/not-a-uuid") => 400 "invalid_id";
    a_status_of_no_task: get("/status/4b9b8e0e-6a3c-4d25-9d4e-2f0f6a7d1c11") => 404 "task_not_found";
    a_task_id_that_is_not_a_uuid: get("/tasks/not-a-uuid") => 400 "invalid_id";
    a_task_record_of_no_task: get("/tasks/4b9b8e0e-6a3c-4d25-9d4e-2f0f6a7d1c11") => 404 "task_not_found";
    a_list_limit_of_zero: get("/tasks?limit=0") => 400 "invalid_parameter";
    a_nul_in_a_list_filter: get("/tasks?type=a%00b") => 400 "invalid_parameter";
    a_list_filter_longer_than_any_stored_value: get(&format!("/tasks?source={}", "s".repeat(1100))) => 400 "invalid_parameter";
    a_list_limit_over_500: get("/tasks?limit=501") => 400 "invalid_parameter";
    a_list_limit_that_is_not_a_number: get("/tasks?limit=ten") => 400 "invalid_parameter";
    a_list_status_that_is_not_one: get("/tasks?status=failed,done") => 400 "invalid_parameter";
    an_empty_list_status: get("/tasks?status=") => 400 "invalid_parameter";
    an_empty_list_type: get("/tasks?type=") => 400 "invalid_parameter";
    a_list_source_given_twice: get("/tasks?source=a&source=b") => 400 "invalid_parameter";
    a_created_after_that_is_not_a_time: get("/tasks?created_after=yesterday") => 400 "invalid_parameter";
    a_created_before_that_is_not_a_time: get("/tasks?created_before=2026-12-03") => 400 "invalid_parameter";
    a_created_after_after_year_9999: get("/tasks?created_after=9999-12-31T23:59:59.5-00:01") => 400 "invalid_parameter";
    a_list_cursor_after_year_9999: get("/tasks?cursor=OTk5OS0xMi0zMVQyMzo1OTo1OS0yMzo1OXw0YjliOGUwZS02YTNjLTRkMjUtOWQ0ZS0yZjBmNmE3ZDFjMTE") => 400 "invalid_parameter";
    a_list_cursor_not_made_by_ferry: get("/tasks?cursor=abc") => 400 "invalid_parameter";
    an_unknown_list_parameter: get("/tasks?colour=red") => 400 "invalid_parameter";
    an_unknown_path: get("/no/such/route") => 404 "not_found";
    a_cancel_of_an_id_that_is_not_a_uuid: post_to("/tasks/not-a-uuid/cancel") => 400 "invalid_id";
    a_retry_of_an_id_that_is_not_a_uuid: post_to("/tasks/not-a-uuid/retry") => 400 "invalid_id";
    a_cancel_of_no_task: post_to("/tasks/4b9b8e0e-6a3c-4d25-9d4e-2f0f6a7d1c11/cancel") => 404 "task_not_found";
    a_retry_of_no_task: post_to("/tasks/4b9b8e0e-6a3c-4d25-9d4e-2f0f6a7d1c11/retry") => 404 "task_not_found";
}

/// Cancel and retry answer by the task's status: 409 with the status for
/// what they cannot do, the same answer for a repeated cancel.
#[tokio::test]
async fn cancel_and_retry_answer_by_status() {
    let app = app().await;
    let (status, task) = send(&app, post_json(event("steer", json!(1)).to_string())).await;
    assert_eq!(status, Status::Accepted, "{task}");
    let id = task["id"].as_str().unwrap().to_string();
    let parsed: ferry_core::TaskId = id.parse().unwrap();
    // Pending: not retryable; cancelled at once, twice the same answer.
    let (status, body) = send(&app, post_to(&format!("/tasks/{id}/retry"))).await;
    assert_eq!(status, Status::Conflict, "{body}");
    assert_eq!(body["error"], "task_not_retryable");
    assert_eq!(body["status"], "pending");
    for _ in 0..2 {
        let (status, body) = send(&app, post_to(&format!("/tasks/{id}/cancel"))).await;
        assert_eq!(status, Status::Ok, "{body}");
        assert_eq!(
            body,
            json!({"id": id, "status": "cancelled", "status_url": format!("/status/{id}")})
        );
    }
    // Cancelled: retried, with the route's budget.
    let (status, body) = send(&app, post_to(&format!("/tasks/{id}/retry"))).await;
    assert_eq!(status, Status::Accepted, "{body}");
    assert_eq!(body["status"], "pending");
    assert_eq!(body["max_attempts"], 3);
    // Running: the stop is requested (202); the worker records it.
    let db = app.client.rocket().state::<AppState>().unwrap().db.clone();
    let until = chrono::Utc::now() + chrono::Duration::seconds(30);
    let claimed = db.claim(parsed, "test-worker", until).unwrap().unwrap();
    let (_, view) = send(&app, get(&format!("/status/{id}"))).await;
    assert_eq!(view["cancel_requested_at"], Value::Null, "{view}");
    let asked = chrono::Utc::now();
    let (status, body) = send(&app, post_to(&format!("/tasks/{id}/cancel"))).await;
    assert_eq!(status, Status::Accepted, "{body}");
    assert_eq!(body["cancel_requested"], true);
    assert_eq!(body["status"], "running");
    // Until the worker stops it, /status says when the stop was asked for.
    let (_, view) = send(&app, get(&format!("/status/{id}"))).await;
    assert_eq!(view["status"], "running", "{view}");
    let at: chrono::DateTime<chrono::Utc> = view["cancel_requested_at"]
        .as_str()
        .unwrap_or_else(|| panic!("no cancel_requested_at: {view}"))
        .parse()
        .unwrap();
    assert!(at >= asked && at <= chrono::Utc::now(), "{view}");
    let attempt = parsed.attempt(claimed.attempt);
    assert_eq!(
        db.renew_lease_or_cancel(attempt, until).unwrap(),
        ferry_core::db::Lease::CancelRequested
    );
    // It finished before the stop reached it: a success stands, and a
    // finished task is not cancelled.
    assert!(db
        .finish(attempt, &ferry_core::task::Outcome::Succeeded(json!(1)))
        .unwrap());
    let (_, view) = send(&app, get(&format!("/status/{id}"))).await;
    assert_eq!(view["status"], "succeeded", "{view}");
    assert_eq!(view["cancel_requested_at"], Value::Null, "{view}");
    let (status, body) = send(&app, post_to(&format!("/tasks/{id}/cancel"))).await;
    assert_eq!(status, Status::Conflict, "{body}");
    assert_eq!(body["error"], "task_finished");
    assert_eq!(body["status"], "succeeded");
    let (status, body) = send(&app, post_to(&format!("/tasks/{id}/retry"))).await;
    assert_eq!(status, Status::Conflict, "{body}");
    assert_eq!(body["status"], "succeeded");
}

/// The same `Idempotency-Key` with the same event is the same task (200);
/// with another event it is a 422 naming the task that holds the key, and
/// nothing is stored.
#[tokio::test]
async fn an_idempotency_key_sent_again_with_another_event_is_refused() {
    let app = app().await;
    let first = keyed(post_json(event("key-1", json!(1)).to_string()), "order-17");
    let (status, first) = send(&app, first).await;
    assert_eq!(status, Status::Accepted, "{first}");
    let again = keyed(post_json(event("key-1", json!(1)).to_string()), "order-17");
    let (status, again) = send(&app, again).await;
    assert_eq!(status, Status::Ok, "{again}");
    assert_eq!(again["id"], first["id"]);
    let other = keyed(post_json(event("key-2", json!(1)).to_string()), "order-17");
    let (status, other) = send(&app, other).await;
    assert_eq!(status, Status::UnprocessableEntity, "{other}");
    assert_eq!(other["error"], "idempotency_key_reused");
    assert_eq!(other["task"], first["id"]);
    let id = first["id"].as_str().unwrap();
    assert!(other["message"].as_str().unwrap().contains(id), "{other}");
    let db = &app.client.rocket().state::<AppState>().unwrap().db;
    assert_eq!(
        db.count_with_status(ferry_core::TaskStatus::Pending)
            .unwrap(),
        1
    );
}

/// The same (`source`, `id`) with other content is a 409 naming the task
/// that holds the event; the same content again is the same task.
#[tokio::test]
async fn an_event_sent_again_with_other_content_is_a_conflict() {
    let app = app().await;
    let (status, first) = send(&app, post_json(event("twice", json!(1)).to_string())).await;
    assert_eq!(status, Status::Accepted, "{first}");
    let (status, again) = send(&app, post_json(event("twice", json!(1)).to_string())).await;
    assert_eq!(status, Status::Ok, "{again}");
    assert_eq!(again["id"], first["id"]);
    let (status, other) = send(&app, post_json(event("twice", json!(2)).to_string())).await;
    assert_eq!(status, Status::Conflict, "{other}");
    assert_eq!(other["error"], "event_conflict");
    assert_eq!(other["task"], first["id"]);
}
