//! No input makes a 5xx (issue 10, item 13): random methods, paths, query
//! strings, headers and bodies, thrown at the whole app through Rocket's
//! local client, on SQLite and on a PostgreSQL schema of the test's own,
//! never get a 5xx or a panic, and every error keeps the
//! `{"error": <string>, "message": <string>}` shape with a JSON content
//! type.
//!
//! The requests are built from the real routes, parameter names, headers
//! and events (`property/strategies.rs`), mixed with hostile pieces, and the
//! app is seeded with tasks in every status, so most requests reach the
//! code behind the routing: cancels and retries of running, failed and
//! cancelled tasks, list filters and cursors, events that are nearly valid.
//!
//! `PROPTEST_CASES` sets the number of requests per backend (256 by
//! default). Nothing is persisted: a failure prints the shrunk request, and
//! what it found becomes a case in the test of the code it broke.

mod common;
#[path = "property/strategies.rs"]
mod strategies;

use std::time::Duration;

use chrono::Utc;
use ferry_api::rocket;
use ferry_core::task::Outcome;
use ferry_core::{Config, Db, TaskId};
use ferry_testkit::{require, test_file, PgSchema};
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};
use rocket::http::{ContentType, Header, Method};
use rocket::local::asynchronous::Client;
use serde_json::{json, Value};

use strategies::{Fuzz, Seeds};

/// Largest body the app under test accepts: small, so the generators reach
/// it, large enough for a 70 000-byte string to reach the event checks.
const MAX_BODY: usize = 128 * 1024;

/// Longest one request may take; longer is a failure (a request that hangs).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// The app under test and what keeps its database alive.
struct App {
    client: Client,
    db: Db,
    _dir: Option<tempfile::TempDir>,
    _schema: Option<PgSchema>,
}

async fn app(
    database_url: String,
    dir: Option<tempfile::TempDir>,
    schema: Option<PgSchema>,
) -> App {
    let config = Config {
        max_body_bytes: MAX_BODY as u64,
        routes: common::echo_routes(&["org.ferry.echo", "org.pacifica.metadata.ingest"]),
        ..Config::default()
    };
    let (state, db) = common::local_state(database_url, config);
    let client = Client::tracked(rocket(state)).await.unwrap();
    App {
        client,
        db,
        _dir: dir,
        _schema: schema,
    }
}

async fn sqlite_app() -> App {
    let (url, dir) = common::sqlite_file();
    app(url, Some(dir), None).await
}

async fn postgres_app() -> App {
    let schema = PgSchema::new();
    app(schema.url(), None, Some(schema)).await
}

/// URL-safe base64 without padding, as `/tasks` cursors are written.
fn base64url(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(ABC[(n >> (18 - 6 * i)) as usize & 63] as char);
        }
    }
    out
}

async fn post_event(app: &App, content_type: &str, body: &[u8]) -> Value {
    let response = app
        .client
        .post("/receive")
        .header(Header::new("content-type", content_type.to_string()))
        .body(body)
        .dispatch()
        .await;
    let status = response.status().code;
    let body: Value = serde_json::from_str(&response.into_string().await.unwrap()).unwrap();
    assert!(status == 202 || status == 200, "seeding: {status} {body}");
    body
}

/// Stores the sample events of test_files/ and moves their tasks into
/// every status; returns what the generators draw from.
async fn seed(app: &App) -> Seeds {
    let mut events: Vec<Value> = [
        "echo/event.json",
        "cloudevents-1.0/event.json",
        "C234-1234-1234/event.json",
    ]
    .iter()
    .map(|f| serde_json::from_slice(&test_file(f)).unwrap())
    .collect();
    let batch: Vec<Value> = serde_json::from_slice(&test_file("batch/events.json")).unwrap();
    let mut ids = Vec::new();
    for event in &events {
        let body = post_event(app, "application/json", event.to_string().as_bytes()).await;
        ids.push(body["id"].as_str().unwrap().to_string());
    }
    let body = post_event(
        app,
        "application/cloudevents-batch+json",
        &test_file("batch/events.json"),
    )
    .await;
    for task in body["tasks"].as_array().unwrap() {
        ids.push(task["id"].as_str().unwrap().to_string());
    }
    events.extend(batch);
    // Each further task is a fresh echo event, moved into one status.
    let fresh = |n: usize| {
        let event = json!({"specversion": "1.0", "type": "org.ferry.echo", "source": "/seed",
                           "id": format!("seed-{n}"), "data": n});
        async move { post_event(app, "application/json", event.to_string().as_bytes()).await }
    };
    let lease = || Utc::now() + Duration::from_secs(3600);
    let mut moved = Vec::new();
    for n in 0..6 {
        let id: TaskId = fresh(n).await["id"].as_str().unwrap().parse().unwrap();
        moved.push(id);
        let attempt = || {
            let claimed = app.db.claim(id, "seed-worker", lease()).unwrap().unwrap();
            id.attempt(claimed.attempt)
        };
        match n {
            // Running, and running with a stop requested.
            0 => {
                attempt();
            }
            1 => {
                attempt();
                app.db.cancel(id).unwrap();
            }
            2 => assert!(app
                .db
                .finish(attempt(), &Outcome::Succeeded(json!({"ok": 1})))
                .unwrap()),
            3 => assert!(app
                .db
                .finish(attempt(), &Outcome::Failed("seeded".into()))
                .unwrap()),
            4 => assert!(app
                .db
                .finish(
                    attempt(),
                    &Outcome::Retry {
                        error: "seeded".into(),
                        run_after: Utc::now() + Duration::from_secs(3600),
                    }
                )
                .unwrap()),
            _ => {
                app.db.cancel(id).unwrap();
            }
        }
    }
    ids.extend(moved.iter().map(TaskId::to_string));
    // A task delayed by `notbefore`.
    let delayed = json!({"specversion": "1.0", "type": "org.ferry.echo", "source": "/seed",
                         "id": "seed-delayed", "notbefore": "2099-01-01T00:00:00Z"});
    let body = post_event(app, "application/json", delayed.to_string().as_bytes()).await;
    ids.push(body["id"].as_str().unwrap().to_string());
    // Cursors: one the app made, and well-formed ones at the ends of time.
    let response = app.client.get("/tasks?limit=1").dispatch().await;
    let page: Value = serde_json::from_str(&response.into_string().await.unwrap()).unwrap();
    let next = page["next"].as_str().expect("a full page has a next link");
    let mut cursors = vec![next.rsplit_once("cursor=").unwrap().1.to_string()];
    for time in [
        "0000-01-01T00:00:00+23:59",
        "9999-12-31T23:59:59-23:59",
        "1970-01-01T00:00:00Z",
    ] {
        let id = "4b9b8e0e-6a3c-4d25-9d4e-2f0f6a7d1c11";
        cursors.push(base64url(format!("{time}|{id}").as_bytes()));
    }
    Seeds {
        task_ids: ids,
        cursors,
        events,
    }
}

/// What two backends must agree on about one answer: the status, the error
/// code, the task's status, and the tasks listed (by event id and status,
/// sorted: ids and times differ between two databases, ties in time may
/// order them differently; of a full page, only how many).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Answer {
    status: u16,
    code: String,
    task_status: Option<String>,
    tasks: Vec<(String, String)>,
}

/// Sends one request and checks the answer; an error says what was wrong.
/// A task an answer names as stored must then be readable.
async fn check(app: &App, request: &Fuzz) -> Result<Answer, String> {
    let mut local = app.client.req(request.method, request.uri.clone());
    for (name, value) in &request.headers {
        local = local.header(Header::new(name.clone(), value.clone()));
    }
    local = local.body(&request.body);
    let answer = async {
        let response = local.dispatch().await;
        let status = response.status().code;
        let content_type = response.content_type();
        // A stream (Server-Sent Events) is not read: it may not end.
        if status < 400
            && content_type
                .as_ref()
                .is_some_and(|ct| ct.media_type().sub() == "event-stream")
        {
            return (status, content_type, None);
        }
        let text = response.into_string().await.unwrap_or_default();
        (status, content_type, Some(text))
    };
    let (status, content_type, text) = tokio::time::timeout(REQUEST_TIMEOUT, answer)
        .await
        .map_err(|_| format!("no answer within {REQUEST_TIMEOUT:?}"))?;
    let text = text.unwrap_or_default();
    if status >= 500 {
        return Err(format!("status {status}: {text}"));
    }
    if status >= 400 && content_type != Some(ContentType::JSON) {
        return Err(format!(
            "status {status} with content type {content_type:?}: {text}"
        ));
    }
    let mut answer = Answer {
        status,
        code: String::new(),
        task_status: None,
        tasks: Vec::new(),
    };
    // The dashboard's page and files (`GET /`, `/dashboard/<file>`) are the
    // only answers that are not JSON, and never errors.
    let json = content_type == Some(ContentType::JSON);
    if request.method == Method::Head || text.is_empty() && status < 400 || status < 400 && !json {
        return Ok(answer);
    }
    let body: Value = serde_json::from_str(&text)
        .map_err(|e| format!("status {status}: the body is not JSON ({e}): {text:?}"))?;
    if status >= 400 {
        if !body["error"].is_string() || !body["message"].is_string() {
            return Err(format!(
                "status {status}: no string `error` and `message`: {text}"
            ));
        }
        answer.code = body["error"].as_str().unwrap().to_string();
    }
    let text_of = |v: &Value| v.as_str().unwrap_or_default().to_string();
    answer.task_status = body["status"].as_str().map(String::from);
    if let Some(tasks) = body["tasks"].as_array() {
        answer.tasks = tasks
            .iter()
            .map(|t| {
                // An event id may be a seeded task's id, which differs
                // between two databases.
                let event_id = text_of(&t["event_id"]);
                let event_id = match event_id.parse::<TaskId>() {
                    Ok(_) => "<a task id>".to_string(),
                    Err(_) => event_id,
                };
                (event_id, text_of(&t["status"]))
            })
            .collect();
        answer.tasks.sort();
        if body["next"].is_string() {
            // A full page: tasks created in one transaction share their
            // time and are ordered by id, which differs between the two
            // databases, so which of them ends the page may differ too.
            let listed = answer.tasks.len();
            answer.tasks = vec![(format!("{listed} tasks"), String::new())];
        }
    }
    // What /receive stored can be read back, by its status and its record.
    if request.uri.starts_with("/receive") && (200..300).contains(&status) {
        let stored: Vec<&Value> = match body["tasks"].as_array() {
            Some(tasks) => tasks.iter().collect(),
            None => vec![&body],
        };
        for task in stored {
            let id = text_of(&task["id"]);
            for path in [format!("/status/{id}"), format!("/tasks/{id}")] {
                let response = app.client.get(path.clone()).dispatch().await;
                let read = response.status().code;
                let text = response.into_string().await.unwrap_or_default();
                if read != 200 {
                    return Err(format!(
                        "stored with {status}, then {path} is {read}: {text}"
                    ));
                }
            }
        }
    }
    Ok(answer)
}

fn proptest_config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(256),
        max_shrink_iters: 200,
        // Nothing is written to the source tree: a failure is printed, and
        // becomes a case in the test of the code it broke.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// The requests reached the code behind the routing: each of these codes
/// was answered at least once.
fn assert_reached(answers: &std::collections::BTreeMap<(u16, String), usize>) {
    eprintln!("answers (status, error): {answers:?}");
    for expected in [
        "invalid_event",
        "invalid_parameter",
        "invalid_id",
        "task_not_found",
        "task_not_retryable",
        "not_found",
    ] {
        assert!(
            answers.keys().any(|(_, code)| code == expected),
            "never answered {expected}: {answers:?}"
        );
    }
    for expected in [200, 202] {
        assert!(
            answers.keys().any(|(status, _)| *status == expected),
            "never answered {expected}: {answers:?}"
        );
    }
}

/// Runs the property on `app`; panics with the shrunk request that failed.
fn run(runtime: &tokio::runtime::Runtime, app: &App) {
    let seeds = runtime.block_on(seed(app));
    let mut runner = TestRunner::new(proptest_config());
    let answers = std::sync::Mutex::new(std::collections::BTreeMap::new());
    let result = runner.run(&strategies::request(&seeds, MAX_BODY), |request| {
        let answer = runtime
            .block_on(check(app, &request))
            .map_err(TestCaseError::fail)?;
        *answers
            .lock()
            .unwrap()
            .entry((answer.status, answer.code))
            .or_insert(0) += 1;
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    assert_reached(&answers.into_inner().unwrap());
    // The app still serves.
    let health = runtime.block_on(async { app.client.get("/health").dispatch().await.status() });
    assert_eq!(health.code, 200);
}

/// `request` as sent to the app seeded with `to` instead of `from`: the
/// same seeded tasks and cursor, by their place in the seeds.
fn translate(request: &Fuzz, from: &Seeds, to: &Seeds) -> Fuzz {
    let mut pairs: Vec<(String, String)> = Vec::new();
    for (a, b) in from.task_ids.iter().zip(&to.task_ids) {
        pairs.push((a.clone(), b.clone()));
        pairs.push((a.to_uppercase(), b.to_uppercase()));
        pairs.push((a.replace('-', ""), b.replace('-', "")));
    }
    pairs.push((from.cursors[0].clone(), to.cursors[0].clone()));
    let swap = |text: &str| {
        pairs
            .iter()
            .fold(text.to_string(), |text, (a, b)| text.replace(a.as_str(), b))
    };
    Fuzz {
        method: request.method,
        uri: swap(&request.uri),
        headers: request
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), swap(v)))
            .collect(),
        body: request.body.clone(),
    }
}

#[test]
fn no_request_gets_a_5xx_sqlite() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let app = runtime.block_on(sqlite_app());
    run(&runtime, &app);
}

#[test]
fn no_request_gets_a_5xx_postgres() {
    require!(postgres);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let app = runtime.block_on(postgres_app());
    run(&runtime, &app);
}

/// SQLite and PostgreSQL, seeded alike and sent the same requests in the
/// same order, answer each one alike: the same status and error code, the
/// same task status, the same tasks listed. (What both can store is checked
/// before either database sees it, so they cannot tell two inputs apart.)
#[test]
fn sqlite_and_postgres_answer_alike() {
    require!(postgres);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let sqlite = runtime.block_on(sqlite_app());
    let postgres = runtime.block_on(postgres_app());
    let (sqlite_seeds, postgres_seeds) =
        runtime.block_on(async { (seed(&sqlite).await, seed(&postgres).await) });
    // No shrinking: each request changes both databases, so a smaller
    // request run later would meet another state; the first request the
    // two answer differently is the one to read.
    let mut runner = TestRunner::new(ProptestConfig {
        max_shrink_iters: 0,
        ..proptest_config()
    });
    let result = runner.run(&strategies::request(&sqlite_seeds, MAX_BODY), |request| {
        let there = translate(&request, &sqlite_seeds, &postgres_seeds);
        let (a, b) = runtime.block_on(async {
            (
                check(&sqlite, &request).await,
                check(&postgres, &there).await,
            )
        });
        let (a, b) = (
            a.map_err(TestCaseError::fail)?,
            b.map_err(TestCaseError::fail)?,
        );
        if a != b {
            let only = |x: &Answer, y: &Answer| -> Vec<(String, String)> {
                x.tasks
                    .iter()
                    .filter(|t| !y.tasks.contains(t))
                    .cloned()
                    .collect()
            };
            return Err(TestCaseError::fail(format!(
                "SQLite answered {} {:?} {:?}, PostgreSQL {} {:?} {:?}; tasks only SQLite \
                 listed: {:?}, only PostgreSQL: {:?}",
                a.status,
                a.code,
                a.task_status,
                b.status,
                b.code,
                b.task_status,
                only(&a, &b),
                only(&b, &a),
            )));
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
