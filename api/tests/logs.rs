//! What the real binaries write to stderr (a file here, not a terminal):
//! no colour escapes, no password of a database or broker URL (even where a
//! library's error quotes it), JSON lines when asked, startup at INFO, a
//! client's bad requests never at WARN or ERROR, the task id on the lines
//! about a task and the request id on the lines about a request.

use std::time::Duration;

use ferry_testkit::{Deployment, Layout, Proc, Stack};
use serde_json::{json, Value};

const DONE: Duration = Duration::from_secs(60);

/// The log's lines that carry no secret and no escape code, or a failure
/// naming the line that does.
fn assert_clean(name: &str, log: &str, secrets: &[&str]) {
    for line in log.lines() {
        assert!(
            !line.contains('\x1b'),
            "{name}: a colour escape in {line:?}"
        );
        for secret in secrets {
            assert!(!line.contains(secret), "{name}: {secret:?} in {line:?}");
        }
    }
}

/// Stops `proc` with `signal` (TERM: so that it logs its stop) and returns
/// its log.
fn stop_with(proc: &mut Proc, signal: &str) -> String {
    proc.signal(signal);
    proc.wait_exit(Duration::from_secs(40));
    proc.log_text()
}

fn stop(proc: &mut Proc) -> String {
    stop_with(proc, "TERM")
}

/// Passwords in both URLs, with every failure that could quote them: the
/// broker refuses the password (the api's publishes and the worker's
/// consumer fail and are logged), a database on a closed port, and one whose
/// URL libpq rejects by quoting its password.
#[tokio::test]
async fn passwords_never_reach_the_logs() {
    if !Layout::Postgres.available() {
        return;
    }
    const PG: &str = "PgSecret42";
    const MQ: &str = "WrongSecret77";
    const CLOSED: &str = "ClosedSecret99";
    const QUOTED: &str = "Secret55";
    let mut d = Deployment::postgres()
        .broker(&format!("amqp://guest:{MQ}@127.0.0.1:5672/%2f"))
        .env("RUST_LOG", "debug,lapin=debug,r2d2=debug");
    // Trust authentication takes the password and ignores it.
    d.database_url = d
        .database_url
        .replacen("postgres@", &format!("postgres:{PG}@"), 1);
    let mut api = d.api().await;
    let mut worker = d.worker("worker");
    let id = api
        .submit("org.ferry.echo", "secret-1", json!({"x": 1}))
        .await;
    assert_eq!(api.status(&id).await.body["status"], "pending");
    let mut closed = d.spawn(
        "ferry-worker",
        &[],
        "closed",
        None,
        &[(
            "FERRY_DATABASE_URL",
            &format!("postgres://ferry:{CLOSED}@127.0.0.1:1/ferry"),
        )],
    );
    let mut quoted = d.spawn(
        "ferry-worker",
        &[],
        "quoted",
        None,
        &[(
            "FERRY_DATABASE_URL",
            &format!("postgres://ferry:Bad%zz{QUOTED}@127.0.0.1:5432/test"),
        )],
    );
    // Let the relay retry and the consumers fail a few times.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let secrets = [PG, MQ, CLOSED, QUOTED];
    let api_log = stop(&mut api.proc);
    assert_clean("api", &api_log, &secrets);
    assert!(
        api_log.contains("amqp://guest:***@127.0.0.1:5672")
            && api_log.contains("postgres:***@127.0.0.1:5432"),
        "the api logs its URLs masked:\n{api_log}"
    );
    assert!(
        api_log.contains("ACCESS_REFUSED") || api_log.contains("publish failed"),
        "the broker's refusal is logged:\n{api_log}"
    );
    let worker_log = stop(&mut worker);
    assert_clean("worker", &worker_log, &secrets);
    assert!(worker_log.contains("cannot consume"), "{worker_log}");
    // Still waiting for their database, which a signal does not interrupt.
    let closed_log = stop_with(&mut closed, "KILL");
    assert_clean("closed", &closed_log, &secrets);
    // libpq's refusal, from r2d2 or from Ferry's retry line.
    assert!(closed_log.contains("port 1 failed"), "{closed_log}");
    let quoted_log = stop_with(&mut quoted, "KILL");
    assert_clean("quoted", &quoted_log, &secrets);
    // libpq's own message quotes the password: it was logged, masked.
    assert!(
        quoted_log.contains("invalid percent-encoded token"),
        "{quoted_log}"
    );
}

/// A bad configuration names the key without printing the URL's password.
#[test]
fn a_bad_url_is_named_without_its_password() {
    let (code, stderr) = ferry_testkit::run_bin(
        "ferry-worker",
        &[],
        &[("FERRY_DATABASE_URL", "mysql://u:MySecret31@h/db")],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("database_url"), "{stderr}");
    assert!(stderr.contains("mysql://u:***@h/db"), "{stderr}");
    assert!(!stderr.contains("MySecret31"), "{stderr}");
}

/// Every line a JSON object with a level; `--log-format json` (the worker)
/// and `FERRY_LOG_FORMAT=json` (the api) both work.
fn json_lines(name: &str, log: &str) -> Vec<Value> {
    log.lines()
        .filter(|line| !line.is_empty())
        .map(|line| {
            let value: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{name}: not JSON ({e}): {line:?}"));
            assert!(value["level"].is_string(), "{name}: no level: {line}");
            value
        })
        .collect()
}

fn in_span(line: &Value, key: &str, value: &str) -> bool {
    line["spans"]
        .as_array()
        .is_some_and(|spans| spans.iter().any(|span| span[key] == value))
}

#[tokio::test]
async fn json_lines_with_levels_task_ids_and_request_ids() {
    let Some(mut stack) = Stack::start_with(Layout::Sqlite, 0, |d| {
        d.env("RUST_LOG", "debug").env("FERRY_LOG_FORMAT", "json")
    })
    .await
    else {
        return;
    };
    let d = &stack.deployment;
    let mut worker = d.spawn(
        "ferry-worker",
        &["--log-format", "json"],
        "worker",
        None,
        &[("FERRY_LOG_FORMAT", "text")],
    );
    let api = &stack.api;
    let id = api
        .submit("org.ferry.echo", "json-1", json!({"y": 2}))
        .await;
    api.wait_for(&id, "succeeded", DONE).await;
    // A client's mistakes: unparsable, unknown route, unrouted, not a UUID,
    // no such task.
    let bad = api
        .post(
            "{",
            &[
                ("content-type", "application/json"),
                ("x-request-id", "client-req-1"),
            ],
        )
        .await;
    bad.assert_error(400, "malformed_json");
    assert_eq!(bad.headers["x-request-id"], "client-req-1");
    api.get("/nowhere").await.assert_error(404, "not_found");
    let unrouted = json!({"specversion": "1.0", "type": "no.route", "source": "/s", "id": "u"});
    api.post(
        unrouted.to_string(),
        &[("content-type", "application/json")],
    )
    .await
    .assert_error(422, "unrouted_event");
    api.get("/status/not-a-uuid")
        .await
        .assert_error(400, "invalid_id");
    let unknown = api.status("00000000-0000-4000-8000-000000000000").await;
    unknown.assert_error(404, "task_not_found");
    assert!(unknown.headers.contains_key("x-request-id"));

    let worker_log = stop(&mut worker);
    let api_log = stop(&mut stack.api.proc);
    let api_lines = json_lines("api", &api_log);
    let worker_lines = json_lines("worker", &worker_log);
    for line in api_lines.iter().chain(&worker_lines) {
        // The one warning this deployment deserves: it has no tokens.
        let open_api = line["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("no [[tokens]] configured"));
        assert!(
            open_api || !matches!(line["level"].as_str(), Some("WARN" | "ERROR")),
            "a WARN or ERROR in a run where only clients erred: {line}"
        );
    }
    let starting = api_lines
        .iter()
        .find(|l| l["message"] == "ferry-api starting")
        .unwrap_or_else(|| panic!("no start line:\n{api_log}"));
    assert_eq!(starting["level"], "INFO");
    let started = worker_lines
        .iter()
        .find(|l| l["message"] == "worker started")
        .unwrap_or_else(|| panic!("no start line:\n{worker_log}"));
    assert_eq!(started["level"], "INFO");
    // The worker's lines about the task carry its id, and its attempt.
    let running = worker_lines
        .iter()
        .find(|l| l["message"] == "running")
        .unwrap_or_else(|| panic!("no running line:\n{worker_log}"));
    assert!(in_span(running, "task", &id), "{running}");
    assert!(
        running["spans"][0]["attempt"] == 1,
        "the attempt is in the span: {running}"
    );
    // Each answer is logged at DEBUG with its request id, the client's own
    // when it sent one.
    let answered: Vec<&Value> = api_lines
        .iter()
        .filter(|l| l["message"] == "answered")
        .collect();
    assert!(
        answered
            .iter()
            .any(|l| l["request_id"] == "client-req-1" && l["status"] == 400),
        "{api_log}"
    );
    for line in &answered {
        assert_eq!(line["level"], "DEBUG", "{line}");
        assert!(line["request_id"].as_str().is_some_and(|id| !id.is_empty()));
    }
}
