//! Bearer tokens over HTTP, with the real binaries on SQLite, PostgreSQL
//! and standalone: each scope reaches exactly its routes; a request without
//! a token, with a malformed header or with an unknown token is a 401 with
//! `WWW-Authenticate: Bearer`; a known token without the scope is a 403
//! naming it; `/health` stays open; without tokens the API is open. Then
//! every route the app mounts, called without a token, and
//! `ferry-api hash-token`.

mod common;

use std::io::{Read as _, Write as _};
use std::process::{Command, Stdio};
use std::time::Duration;

use ferry_api::{auth, rocket};
use ferry_core::Config;
use ferry_testkit::{token_hash, Api, Layout, Reply, Stack};
use rocket::http::{Header, Method, Status};
use rocket::local::asynchronous::Client;
use serde_json::json;

const DONE: Duration = Duration::from_secs(60);

const PRODUCER: &str = "producer-token-0123456789";
const READER: &str = "reader-token-0123456789";
const OPS: &str = "ops-token-0123456789";
const BOTH: &str = "submit-read-token-0123456789";

/// Sends `method path` with `Authorization: Bearer <token>` (none for
/// `None`) and, for a POST, `body` as an event.
async fn call(api: &Api, method: &str, path: &str, token: Option<&str>, body: &str) -> Reply {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = api.client.request(method.clone(), api.url(path));
    if method == reqwest::Method::POST {
        request = request
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    api.send(request).await
}

fn event(event_type: &str, id: &str) -> String {
    json!({"specversion": "1.0", "type": event_type, "source": "/ferry/auth", "id": id, "data": {"n": 1}})
        .to_string()
}

/// A 401 `unauthorized` with `WWW-Authenticate: <challenge>`.
fn assert_401(reply: &Reply, challenge: &str) {
    reply.assert_error(401, "unauthorized");
    assert_eq!(
        reply
            .headers
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap()),
        Some(challenge),
        "{:?}",
        reply.body
    );
}

/// A 403 `forbidden` naming `scope`, in its body and its challenge.
fn assert_403(reply: &Reply, scope: &str) {
    let message = reply.assert_error(403, "forbidden");
    assert_eq!(reply.body["scope"], scope, "{:?}", reply.body);
    assert!(message.contains(scope), "{message}");
    let challenge = format!("Bearer error=\"insufficient_scope\", scope=\"{scope}\"");
    assert_eq!(
        reply
            .headers
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap()),
        Some(challenge.as_str())
    );
}

async fn start_with_tokens(layout: Layout) -> Option<Stack> {
    Stack::start_with(layout, 1, |d| {
        d.token("producer", PRODUCER, &["submit"])
            .token("reader", READER, &["read"])
            .token("ops", OPS, &["admin"])
            .token("both", BOTH, &["submit", "read"])
    })
    .await
}

/// Each scope reaches its routes and only those; every refusal is the
/// right status, code and challenge, and happens before the handler runs.
async fn scopes_reach_exactly_their_routes(stack: &Stack) {
    let api = &stack.api;
    let log = api.proc.log_text();
    assert!(!log.contains("no [[tokens]] configured"), "{log}");
    // Open: health checks.
    let health = call(api, "GET", "/health", None, "").await;
    assert_eq!(health.status, 200, "{:?}", health.body);

    // submit: POST /receive.
    let body = event("org.ferry.echo", "e-1");
    assert_401(&call(api, "POST", "/receive", None, &body).await, "Bearer");
    assert_403(
        &call(api, "POST", "/receive", Some(READER), &body).await,
        "submit",
    );
    let accepted = call(api, "POST", "/receive", Some(PRODUCER), &body).await;
    assert_eq!(accepted.status, 202, "{:?}", accepted.body);
    let echo = accepted.task_id();
    let again = call(api, "POST", "/receive", Some(OPS), &body).await;
    assert_eq!(
        (again.status, again.task_id()),
        (200, echo.clone()),
        "admin may submit"
    );
    let more = call(
        api,
        "POST",
        "/receive",
        Some(BOTH),
        &event("org.ferry.echo", "e-2"),
    )
    .await;
    assert_eq!(more.status, 202, "{:?}", more.body);

    // read: every GET but /health.
    let reads = [
        format!("/status/{echo}"),
        "/tasks".to_string(),
        "/tasks/counts".to_string(),
        format!("/tasks/{echo}"),
    ];
    for path in &reads {
        assert_401(&call(api, "GET", path, None, "").await, "Bearer");
        assert_403(&call(api, "GET", path, Some(PRODUCER), "").await, "read");
        for token in [READER, OPS, BOTH] {
            let r = call(api, "GET", path, Some(token), "").await;
            assert_eq!(r.status, 200, "GET {path}: {:?}", r.body);
        }
    }
    // The listing really is the tasks, as the reader sees them.
    let listed = call(api, "GET", "/tasks", Some(READER), "").await;
    assert_eq!(
        listed.body["tasks"].as_array().map(Vec::len),
        Some(2),
        "{:?}",
        listed.body
    );

    // admin: cancel and retry. A refused cancel must not cancel: the sleep
    // task goes on to succeed.
    let sleep = call(
        api,
        "POST",
        "/receive",
        Some(PRODUCER),
        &event("org.ferry.sleep", "s-1"),
    )
    .await;
    assert_eq!(sleep.status, 202, "{:?}", sleep.body);
    let sleep = sleep.task_id();
    for action in ["cancel", "retry"] {
        let path = format!("/tasks/{sleep}/{action}");
        assert_401(&call(api, "POST", &path, None, "").await, "Bearer");
        for token in [PRODUCER, READER, BOTH] {
            assert_403(&call(api, "POST", &path, Some(token), "").await, "admin");
        }
    }
    let view = poll(api, &sleep, "succeeded").await;
    assert_eq!(view["attempts"], 1, "{view:#}");
    // The admin token reaches the handlers: a finished task is their 409.
    poll(api, &echo, "succeeded").await;
    let cancel = call(api, "POST", &format!("/tasks/{echo}/cancel"), Some(OPS), "").await;
    cancel.assert_error(409, "task_finished");
    let retry = call(api, "POST", &format!("/tasks/{echo}/retry"), Some(OPS), "").await;
    retry.assert_error(409, "task_not_retryable");
}

/// Polls `/status/<id>` with the reader's token until `status`.
async fn poll(api: &Api, id: &str, status: &str) -> serde_json::Value {
    let deadline = std::time::Instant::now() + DONE;
    loop {
        let r = call(api, "GET", &format!("/status/{id}"), Some(READER), "").await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        if r.body["status"] == status {
            return r.body;
        }
        assert!(std::time::Instant::now() < deadline, "{:?}", r.body);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every way of not presenting a known token is a 401 with the challenge
/// RFC 6750 gives it; none reaches a handler.
async fn bad_credentials_are_401(stack: &Stack) {
    let api = &stack.api;
    let body = event("org.ferry.echo", "bad-1");
    let raw = |value: &'static str| {
        api.client
            .post(api.url("/receive"))
            .header("content-type", "application/json")
            .header("authorization", value)
            .body(body.clone())
    };
    assert_401(
        &call(api, "POST", "/receive", Some("not-a-known-token"), &body).await,
        "Bearer error=\"invalid_token\"",
    );
    // A known token's hash is no token.
    let hash = token_hash(PRODUCER);
    let r = call(
        api,
        "POST",
        "/receive",
        Some(hash.trim_start_matches("sha256:")),
        &body,
    )
    .await;
    assert_401(&r, "Bearer error=\"invalid_token\"");
    // Another scheme, or a bare token: no bearer credentials at all.
    assert_401(&api.send(raw("Basic cHJvZHVjZXI6eA==")).await, "Bearer");
    assert_401(&api.send(raw(PRODUCER)).await, "Bearer");
    // Bearer, but not one well-formed token.
    for value in [
        "Bearer",
        "Bearer ",
        "Bearer producer-token-0123456789 extra",
        "Bearer a,b",
    ] {
        assert_401(
            &api.send(raw(value)).await,
            "Bearer error=\"invalid_request\"",
        );
    }
    // Two headers, even both good.
    let twice = api
        .client
        .post(api.url("/receive"))
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {PRODUCER}"))
        .header("authorization", format!("Bearer {PRODUCER}"))
        .body(body.clone());
    assert_401(&api.send(twice).await, "Bearer error=\"invalid_request\"");
    // The scheme is case-insensitive.
    let r = api
        .send(
            api.client
                .post(api.url("/receive"))
                .header("content-type", "application/json")
                .header("authorization", format!("bEaReR {PRODUCER}"))
                .body(body.clone()),
        )
        .await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    // Nothing refused was stored: only the last request made a task.
    assert_eq!(stack.deployment.task_rows(""), 1);

    // The token is checked before the body is read: a head announcing
    // 10 MB and only the first 1 KB of it is answered 401 at once (reading
    // the body first would wait for the rest until request_timeout, 30 s,
    // then say 408). Rocket peeks at the first 14 bytes of every body (for
    // its `_method` form field) before routing, hence the 1 KB.
    let port = api.base.rsplit(':').next().unwrap();
    let mut socket = std::net::TcpStream::connect(format!("127.0.0.1:{port}")).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    socket
        .write_all(
            b"POST /receive HTTP/1.1\r\nHost: ferry\r\nContent-Type: application/json\r\n\
              Content-Length: 10000000\r\n\r\n",
        )
        .unwrap();
    socket.write_all(&[b' '; 1024]).unwrap();
    let mut head = [0u8; 64];
    let n = socket.read(&mut head).expect("an answer before the body");
    let head = String::from_utf8_lossy(&head[..n]);
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");

    // And a real 10 MB body without a token is a 401 too (not a 413).
    let big = api
        .client
        .post(api.url("/receive"))
        .header("content-type", "application/json")
        .body(vec![b' '; 10_000_000])
        .send()
        .await;
    if let Ok(big) = big {
        // The server may close before taking the whole body; when the
        // client still reads the answer, it is the 401.
        assert_eq!(big.status().as_u16(), 401);
    }
    // A refusal is the client's mistake: no WARN or ERROR line about it
    // (Rocket's own report of a failed guard is quiet).
    let log = api.proc.log_text();
    for line in log.lines() {
        assert!(
            !line.contains("WARN") && !line.contains("ERROR"),
            "a refused request was logged as a problem: {line}"
        );
    }
}

async fn with_tokens(layout: Layout, check: impl AsyncFnOnce(&Stack)) {
    if let Some(stack) = start_with_tokens(layout).await {
        check(&stack).await;
    }
}

#[tokio::test]
async fn scopes_sqlite() {
    with_tokens(Layout::Sqlite, scopes_reach_exactly_their_routes).await;
}
#[tokio::test]
async fn scopes_postgres() {
    with_tokens(Layout::Postgres, scopes_reach_exactly_their_routes).await;
}
#[tokio::test]
async fn scopes_standalone() {
    with_tokens(Layout::Standalone, scopes_reach_exactly_their_routes).await;
}
#[tokio::test]
async fn bad_credentials_sqlite() {
    with_tokens(Layout::Sqlite, bad_credentials_are_401).await;
}
#[tokio::test]
async fn bad_credentials_postgres() {
    with_tokens(Layout::Postgres, bad_credentials_are_401).await;
}
#[tokio::test]
async fn bad_credentials_standalone() {
    with_tokens(Layout::Standalone, bad_credentials_are_401).await;
}

/// No `[[tokens]]`: every route is open, an `Authorization` header is
/// ignored, and the start says so.
async fn open_without_tokens(stack: &Stack) {
    let api = &stack.api;
    let id = call(
        api,
        "POST",
        "/receive",
        None,
        &event("org.ferry.echo", "open-1"),
    )
    .await
    .task_id();
    let r = call(
        api,
        "POST",
        "/receive",
        Some("anything"),
        &event("org.ferry.echo", "open-2"),
    )
    .await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    for path in [
        format!("/status/{id}"),
        "/tasks".into(),
        "/tasks/counts".into(),
        format!("/tasks/{id}"),
    ] {
        let r = call(api, "GET", &path, None, "").await;
        assert_eq!(r.status, 200, "GET {path}: {:?}", r.body);
    }
    api.wait_for(&id, "succeeded", DONE).await;
    call(api, "POST", &format!("/tasks/{id}/cancel"), None, "")
        .await
        .assert_error(409, "task_finished");
    let log = api.proc.log_text();
    assert!(log.contains("no [[tokens]] configured"), "{log}");
}

ferry_testkit::layout_tests!(open_without_tokens:
    Sqlite => open_sqlite,
    Postgres => open_postgres,
    Standalone => open_standalone);

/// The app with one token per scope, built in-process.
async fn configured_app(dir: &tempfile::TempDir) -> Client {
    let database_url = format!("sqlite://{}", dir.path().join("ferry.db").display());
    let tokens: String = [
        ("ops", OPS, "admin"),
        ("producer", PRODUCER, "submit"),
        ("reader", READER, "read"),
    ]
    .iter()
    .map(|(name, token, scope)| {
        format!(
            "[[tokens]]\nname = \"{name}\"\nhash = {:?}\nscopes = [\"{scope}\"]\n",
            token_hash(token)
        )
    })
    .collect();
    let config = Config::from_toml(&tokens).unwrap();
    let (state, _db) = common::local_state(database_url, config);
    Client::tracked(rocket(state)).await.unwrap()
}

/// Every route the app mounts answers a request without a token with a
/// 401 (and its challenge), unless it is one of `auth::OPEN_ROUTES`, which
/// answer without one. A route added without an `Auth` guard fails here.
#[tokio::test]
async fn every_mounted_route_needs_a_token_but_the_open_ones() {
    let dir = tempfile::tempdir().unwrap();
    let client = configured_app(&dir).await;
    let routes: Vec<(Method, String)> = client
        .rocket()
        .routes()
        .map(|r| (r.method, r.uri.path().to_string()))
        .collect();
    assert!(routes.len() >= 8, "{routes:?}");
    for (method, path) in auth::OPEN_ROUTES {
        assert!(
            routes.iter().any(|(m, p)| m == method && p == path),
            "{method} {path} is listed open but not mounted"
        );
    }
    // A concrete request for each route: every dynamic segment a task id.
    let id = uuid::Uuid::new_v4().to_string();
    for (method, template) in &routes {
        let path: String = template
            .split('/')
            .map(|segment| {
                if segment.starts_with('<') {
                    id.as_str()
                } else {
                    segment
                }
            })
            .collect::<Vec<_>>()
            .join("/");
        let send = |token: Option<&str>| {
            let mut request = client
                .req(*method, path.clone())
                .header(Header::new("content-type", "application/json"))
                .body(event("org.ferry.echo", &path));
            if let Some(token) = token {
                request = request.header(Header::new("authorization", format!("Bearer {token}")));
            }
            request.dispatch()
        };
        let response = send(None).await;
        if auth::is_open(*method, template) {
            assert_ne!(
                response.status(),
                Status::Unauthorized,
                "{method} {template} is open"
            );
        } else {
            assert_eq!(
                response.status(),
                Status::Unauthorized,
                "{method} {template} without a token"
            );
            assert_eq!(
                response.headers().get_one("www-authenticate"),
                Some("Bearer")
            );
            let body: serde_json::Value =
                serde_json::from_str(&response.into_string().await.unwrap()).unwrap();
            assert_eq!(body["error"], "unauthorized", "{method} {template}: {body}");
        }
        // The admin token passes every guard.
        let status = send(Some(OPS)).await.status();
        assert!(
            status != Status::Unauthorized && status != Status::Forbidden,
            "{method} {template} with the admin token: {status}"
        );
        if auth::is_open(*method, template) {
            continue;
        }
        // The scope /openapi.json documents is the one the guard wants: a
        // token of that scope passes, a token of the other narrow scope is
        // refused with 403.
        let documented = documented_scope(method.as_str(), template);
        for (scope, token) in [("submit", PRODUCER), ("read", READER)] {
            let status = send(Some(token)).await.status();
            if scope == documented {
                assert!(
                    status != Status::Unauthorized && status != Status::Forbidden,
                    "{method} {template} is documented as {documented}: {status}"
                );
            } else {
                assert_eq!(
                    status,
                    Status::Forbidden,
                    "{method} {template} is documented as {documented}, sent with {scope}"
                );
            }
        }
    }
}

/// The scope `/openapi.json` names for the mounted route `method template`.
fn documented_scope(method: &str, template: &str) -> String {
    let doc: serde_json::Value = serde_json::from_str(ferry_api::openapi::json()).unwrap();
    let path = template.replace('<', "{").replace('>', "}");
    let op = &doc["paths"][&path][method.to_ascii_lowercase()];
    op["security"][0]["bearer"][0]
        .as_str()
        .unwrap_or_else(|| panic!("{method} {path} documents no scope: {op}"))
        .to_string()
}

/// Runs `ferry-api hash-token args` with `stdin`; returns (exit code,
/// stdout, stderr).
fn hash_token(args: &[&str], stdin: &str) -> (Option<i32>, String, String) {
    let mut child = Command::new(ferry_testkit::bin("ferry-api"))
        .arg("hash-token")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// `ferry-api hash-token` prints an entry holding the SHA-256 of the token
/// (read from stdin, or made with --generate), and the entry, pasted into
/// server.conf, lets that token in with its scopes.
#[tokio::test]
async fn hash_token_prints_an_entry_that_works() {
    let token = "my-own-token-0123456789abcdef";
    let (code, entry, _) = hash_token(
        &["--name", "ci", "--scope", "read,submit"],
        &format!("{token}\n"),
    );
    assert_eq!(code, Some(0));
    assert_eq!(
        entry,
        format!(
            "[[tokens]]\nname = \"ci\"\nhash = \"{}\"\nscopes = [\"read\", \"submit\"]\n",
            token_hash(token)
        )
    );

    let (code, generated, stderr) = hash_token(&["--generate", "--scope", "admin"], "");
    assert_eq!(code, Some(0));
    let new = stderr.trim();
    assert_eq!(new.len(), 64, "{stderr}");
    assert!(new.bytes().all(|b| b.is_ascii_hexdigit()), "{stderr}");
    assert!(generated.contains(&token_hash(new)), "{generated}");
    assert!(generated.contains("name = \"client\""), "{generated}");
    let (_, _, again) = hash_token(&["--generate", "--scope", "admin"], "");
    assert_ne!(again.trim(), new, "each token is new");

    // Refused: a token that cannot travel in a header, no scope, a bad one.
    assert_eq!(hash_token(&["--scope", "read"], "two words\n").0, Some(2));
    assert_eq!(hash_token(&["--scope", "read"], "\n").0, Some(2));
    assert_eq!(hash_token(&[], "tok\n").0, Some(2));
    assert_eq!(hash_token(&["--scope", "write"], "tok\n").0, Some(2));
    assert_eq!(
        hash_token(&["--name", "a b", "--scope", "read"], "tok\n").0,
        Some(2)
    );

    // Pasted into server.conf: the stdin token reads and submits, cannot
    // cancel; the generated one may.
    let Some(stack) = Stack::start_with(Layout::Standalone, 0, |d| {
        let text = std::fs::read_to_string(&d.config).unwrap();
        d.config(&format!("{text}\n{entry}\n{generated}"))
    })
    .await
    else {
        return;
    };
    let api = &stack.api;
    let id = call(
        api,
        "POST",
        "/receive",
        Some(token),
        &event("org.ferry.echo", "h-1"),
    )
    .await
    .task_id();
    let r = call(api, "GET", &format!("/tasks/{id}"), Some(token), "").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_403(
        &call(api, "POST", &format!("/tasks/{id}/cancel"), Some(token), "").await,
        "admin",
    );
    // Allowed: cancelled (200), cancel requested of a running task (202),
    // or already finished (409), as the echo task's timing has it.
    let r = call(api, "POST", &format!("/tasks/{id}/cancel"), Some(new), "").await;
    assert!(matches!(r.status, 200 | 202 | 409), "{:?}", r.body);
    assert_401(&call(api, "GET", "/tasks", None, "").await, "Bearer");
}

/// A bad `[[tokens]]` entry stops ferry-api at start with exit code 2 and
/// the key named, as any bad configuration does.
#[test]
fn a_bad_token_entry_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("server.conf");
    for (entry, key) in [
        (
            "name = \"a\"\nhash = \"sha256:1234\"\nscopes = [\"read\"]",
            "tokens[0].hash",
        ),
        (
            &*format!(
                "name = \"a\"\nhash = {:?}\nscopes = [\"write\"]",
                token_hash("t")
            ),
            "tokens[0].scopes[0]",
        ),
    ] {
        std::fs::write(&config, format!("[[tokens]]\n{entry}\n")).unwrap();
        let (code, stderr) = ferry_testkit::run_bin(
            "ferry-api",
            &["--standalone", "--config", config.to_str().unwrap()],
            &[(
                "FERRY_DATABASE_URL",
                &format!("sqlite://{}", dir.path().join("f.db").display()),
            )],
        );
        assert_eq!(code, Some(2), "{stderr}");
        assert!(
            stderr.contains(&format!("bad configuration: {key}: ")),
            "{stderr}"
        );
    }
    // The same from the environment, named by its variable.
    std::fs::write(&config, "").unwrap();
    let database = format!("sqlite://{}", dir.path().join("f.db").display());
    let (code, stderr) = ferry_testkit::run_bin(
        "ferry-api",
        &["--standalone", "--config", config.to_str().unwrap()],
        &[
            ("FERRY_DATABASE_URL", &database),
            (
                "FERRY_TOKENS",
                "[{name = \"a\", hash = \"sha256:00\", scopes = [\"read\"]}]",
            ),
        ],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("bad configuration: FERRY_TOKENS[0].hash: "),
        "{stderr}"
    );
}
