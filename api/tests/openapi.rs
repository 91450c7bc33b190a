//! `GET /openapi.json` against the app it documents:
//!
//! - every route Rocket mounts is in the document, with its method, and the
//!   document has no operation that is not mounted (a route added without
//!   `#[utoipa::path]` fails here);
//! - real answers of every route, good and bad, through Rocket's local
//!   client: each status is one the document lists for that operation, an
//!   error's code is named in that response's description, and the body
//!   matches the response's schema (checked by [`schema::check`]);
//!
//! `openapi_http.rs` checks the document served by real deployments.

mod common;
mod schema;

use schema::{document, operation};

use std::collections::BTreeSet;

use chrono::Utc;
use ferry_api::{rocket, AppState};
use ferry_core::task::Outcome;
use ferry_core::{Config, Db, TaskId};
use rocket::http::{ContentType, Header, Method};
use rocket::local::asynchronous::Client;
use serde_json::{json, Value};

/// Largest body the app under test accepts.
const MAX_BODY: u64 = 4096;

/// The state of an app on a fresh SQLite file with `org.ferry.echo`
/// routed; the file lives as long as the directory.
fn state() -> (AppState, Db, tempfile::TempDir) {
    let (database_url, dir) = common::sqlite_file();
    let config = Config {
        max_body_bytes: MAX_BODY,
        routes: common::echo_routes(&["org.ferry.echo"]),
        ..Config::default()
    };
    let (state, db) = common::local_state(database_url, config);
    (state, db, dir)
}

/// A Rocket path (`/status/<id>`, `/files/<path..>`) as an OpenAPI path
/// template (`/status/{id}`, `/files/{path}`).
fn template(rocket_path: &str) -> String {
    rocket_path
        .split('/')
        .map(|segment| match segment.strip_prefix('<') {
            Some(name) => format!("{{{}}}", name.trim_end_matches('>').trim_end_matches("..")),
            None => segment.to_string(),
        })
        .collect::<Vec<_>>()
        .join("/")
}

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

#[tokio::test]
async fn every_mounted_route_is_documented_and_nothing_else() {
    let (state, _db, _dir) = state();
    let app = rocket(state);
    let mounted: BTreeSet<(String, String)> = app
        .routes()
        .map(|route| {
            (
                route.method.as_str().to_ascii_lowercase(),
                template(route.uri.path()),
            )
        })
        .collect();
    assert!(mounted.len() >= 9, "{mounted:?}");
    let doc = document();
    let paths = doc["paths"].as_object().expect("the document has paths");
    let documented: BTreeSet<(String, String)> = paths
        .iter()
        .flat_map(|(path, item)| {
            METHODS
                .iter()
                .filter(|m| item.get(**m).is_some())
                .map(move |m| (m.to_string(), path.clone()))
        })
        .collect();
    let undocumented: Vec<_> = mounted.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "mounted but not in /openapi.json (add #[utoipa::path] and list it in \
         api/src/openapi.rs): {undocumented:?}"
    );
    let unmounted: Vec<_> = documented.difference(&mounted).collect();
    assert!(
        unmounted.is_empty(),
        "in /openapi.json but not mounted: {unmounted:?}"
    );
}

#[test]
fn the_template_conversion_ignores_nothing_but_brackets() {
    assert_eq!(template("/status/<id>"), "/status/{id}");
    assert_eq!(template("/tasks/<id>/cancel"), "/tasks/{id}/cancel");
    assert_eq!(template("/files/<path..>"), "/files/{path}");
    assert_eq!(template("/tasks"), "/tasks");
}

#[test]
fn the_document_is_openapi_3_1_and_names_every_error_code() {
    let doc = document();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1."),
        "{}",
        doc["openapi"]
    );
    let codes: Vec<&str> = doc["components"]["schemas"]["ErrorCode"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    let all: Vec<&str> = ferry_api::error::ErrorCode::ALL
        .iter()
        .map(|c| c.as_str())
        .collect();
    assert_eq!(codes, all);
    // The limits of GET /tasks are the code's.
    let list = &doc["paths"]["/tasks"]["get"]["parameters"];
    let limit = list
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "limit")
        .unwrap();
    assert_eq!(
        limit["schema"]["maximum"].as_i64(),
        Some(ferry_core::db::listing::MAX_LIMIT)
    );
}

#[test]
fn every_example_matches_its_schema() {
    let doc = document();
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let bodies = std::iter::once(&op["requestBody"])
                .chain(op["responses"].as_object().unwrap().values());
            for body in bodies {
                for (media, content) in body["content"].as_object().into_iter().flatten() {
                    if let Some(example) = content.get("example") {
                        schema::check(&doc, &content["schema"], example).unwrap_or_else(|e| {
                            panic!("{method} {path}, {media}: the example does not match: {e}")
                        });
                        checked += 1;
                    }
                }
            }
        }
    }
    assert!(checked >= 3, "{checked} examples");
}

/// The app and a checker of its answers against its own document.
struct App {
    client: Client,
    db: Db,
    doc: Value,
    _dir: tempfile::TempDir,
}

impl App {
    async fn new() -> Self {
        let (state, db, dir) = state();
        let client = Client::tracked(rocket(state)).await.unwrap();
        Self {
            client,
            db,
            doc: document(),
            _dir: dir,
        }
    }

    /// Sends the request, checks the answer against the document, and
    /// returns its status and body.
    async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&'static str, &str)],
        body: Option<&[u8]>,
    ) -> (u16, Value) {
        let mut request = self.client.req(method, path.to_string());
        for (name, value) in headers {
            request.add_header(Header::new(*name, value.to_string()));
        }
        if let Some(body) = body {
            request.set_body(body);
        }
        let response = request.dispatch().await;
        let status = response.status().code;
        let content_type = response.content_type();
        let text = response.into_string().await.unwrap_or_default();
        let method = method.as_str().to_ascii_lowercase();
        let (template, op) = operation(&self.doc, &method, path);
        let at = format!("{} {path} -> {status}", method.to_uppercase());
        let documented = &op["responses"][status.to_string()];
        assert!(
            documented.is_object(),
            "{at}: status {status} is not documented for {method} {template}: {text}"
        );
        assert_eq!(
            content_type,
            Some(ContentType::JSON),
            "{at}: every answer is JSON"
        );
        let body: Value = serde_json::from_str(&text).unwrap();
        if let Some(code) = body.get("error").and_then(Value::as_str) {
            if status >= 400 {
                let description = documented["description"].as_str().unwrap();
                assert!(
                    description.contains(&format!("`{code}`")),
                    "{at}: the code {code} is not in the documented {status}: {description}"
                );
            }
        }
        let content = &documented["content"]["application/json"]["schema"];
        assert!(content.is_object(), "{at}: no JSON schema documented");
        if let Err(e) = schema::check(&self.doc, content, &body) {
            panic!("{at}: the body does not match the document: {e}\nbody: {body}");
        }
        (status, body)
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.send(Method::Get, path, &[], None).await
    }

    async fn post(&self, path: &str, headers: &[(&'static str, &str)], body: &str) -> (u16, Value) {
        self.send(Method::Post, path, headers, Some(body.as_bytes()))
            .await
    }

    async fn post_json(&self, body: Value) -> (u16, Value) {
        self.post("/receive", &[JSON], &body.to_string()).await
    }
}

const JSON: (&str, &str) = ("Content-Type", "application/json");

fn event(id: &str, data: Value) -> Value {
    json!({"specversion": "1.0", "type": "org.ferry.echo", "source": "/openapi", "id": id, "data": data})
}

fn task_id(body: &Value) -> TaskId {
    body["id"].as_str().unwrap().parse().unwrap()
}

#[tokio::test]
async fn real_answers_match_the_document() {
    let app = App::new().await;
    let expect = |(status, body): (u16, Value), want: u16| {
        assert_eq!(status, want, "{body}");
        body
    };

    // Probes and the document itself.
    expect(app.get("/health").await, 200);
    expect(app.get("/ready").await, 200);
    expect(app.get("/openapi.json").await, 200);

    // /receive, every mode and every refusal.
    let first = expect(app.post_json(event("e-1", json!({"n": 1}))).await, 202);
    expect(app.post_json(event("e-1", json!({"n": 1}))).await, 200);
    let conflict = expect(app.post_json(event("e-1", json!({"n": 2}))).await, 409);
    assert_eq!(conflict["error"], "event_conflict");
    let v01 = json!({"cloudEventsVersion": "0.1", "eventType": "org.ferry.echo", "source": "/openapi",
        "eventID": "v01-1", "eventTime": "2026-12-03T20:00:00Z", "contentType": "application/json",
        "extensions": {"notbefore": "2099-01-01T00:00:00Z"}, "data": [1, 2]});
    let ce_json = ("Content-Type", "application/cloudevents+json");
    let delayed = expect(
        app.post("/receive", &[ce_json], &v01.to_string()).await,
        202,
    );
    let batch_type = ("Content-Type", "application/cloudevents-batch+json");
    let batch = json!([event("b-1", json!(1)), event("b-2", json!(2))]);
    let tasks = expect(
        app.post("/receive", &[batch_type], &batch.to_string())
            .await,
        202,
    );
    assert_eq!(tasks["tasks"].as_array().unwrap().len(), 2);
    expect(
        app.post("/receive", &[batch_type], &batch.to_string())
            .await,
        200,
    );
    let mixed = json!([event("b-1", json!("other")), event("b-3", json!(3))]);
    let mixed = expect(
        app.post("/receive", &[batch_type], &mixed.to_string())
            .await,
        409,
    );
    assert_eq!(mixed["tasks"][0]["error"], "event_conflict");
    let binary = [
        ("ce-specversion", "1.0"),
        ("ce-type", "org.ferry.echo"),
        ("ce-source", "/openapi"),
        ("ce-id", "bin-1"),
        ("ce-notbefore", "2099-01-01T00:00:00Z"),
        ("Content-Type", "application/octet-stream"),
    ];
    expect(app.post("/receive", &binary, "\u{1}bytes").await, 202);
    let broken = [
        ("ce-specversion", "1.0"),
        ("ce-type", "%zz"),
        ("ce-source", "/s"),
        ("ce-id", "x"),
    ];
    expect(app.post("/receive", &broken, "").await, 400);
    let keyed = |key| [JSON, ("Idempotency-Key", key)];
    expect(
        app.post(
            "/receive",
            &keyed("k-1"),
            &event("k-a", json!(1)).to_string(),
        )
        .await,
        202,
    );
    expect(
        app.post(
            "/receive",
            &keyed("k-1"),
            &event("k-a", json!(1)).to_string(),
        )
        .await,
        200,
    );
    let reused = expect(
        app.post(
            "/receive",
            &keyed("k-1"),
            &event("k-b", json!(1)).to_string(),
        )
        .await,
        422,
    );
    assert_eq!(reused["error"], "idempotency_key_reused");
    expect(
        app.post(
            "/receive",
            &keyed("a key"),
            &event("k-c", json!(1)).to_string(),
        )
        .await,
        400,
    );
    let keyed_batch = [batch_type, ("Idempotency-Key", "k-2")];
    expect(
        app.post("/receive", &keyed_batch, &batch.to_string()).await,
        400,
    );
    expect(app.post("/receive", &[JSON], "  ").await, 400);
    expect(app.post("/receive", &[JSON], "{").await, 400);
    expect(app.post("/receive", &[JSON], "[1]").await, 422);
    let unrouted = json!({"specversion": "1.0", "type": "org.nobody", "source": "/s", "id": "u"});
    expect(app.post_json(unrouted).await, 422);
    expect(app.post_json(json!({"specversion": "1.0", "type": "org.ferry.echo", "source": "/s", "id": "n", "notbefore": "soon"})).await, 422);
    expect(app.post("/receive", &[], "{}").await, 415);
    expect(
        app.post("/receive", &[("Content-Type", "text/plain")], "{}")
            .await,
        415,
    );
    let large = "x".repeat(MAX_BODY as usize + 1);
    expect(app.post("/receive", &[JSON], &large).await, 413);

    // Status and records.
    let id = task_id(&first);
    expect(app.get(&format!("/status/{id}")).await, 200);
    let waiting = expect(
        app.get(&format!("/status/{}", task_id(&delayed))).await,
        200,
    );
    assert!(waiting["due_at"].is_string(), "{waiting}");
    expect(app.get("/status/not-a-uuid").await, 400);
    expect(app.get(&format!("/status/{id}?wait=0")).await, 200);
    expect(app.get(&format!("/status/{id}?wait=forever")).await, 400);
    expect(app.get(&format!("/status/{}", TaskId::new())).await, 404);
    expect(app.get(&format!("/tasks/{id}")).await, 200);
    expect(app.get("/tasks/not-a-uuid").await, 400);
    expect(app.get(&format!("/tasks/{}", TaskId::new())).await, 404);

    // Listing and counts.
    let page = expect(
        app.get("/tasks?limit=1&status=pending,cancelled").await,
        200,
    );
    let next = page["next"].as_str().expect("a full page has a next link");
    expect(app.get(next).await, 200);
    expect(
        app.get("/tasks?type=org.ferry.echo&source=/openapi&created_after=2026-01-01T00:00:00Z")
            .await,
        200,
    );
    expect(app.get("/tasks?limit=0").await, 400);
    expect(app.get("/tasks?colour=red").await, 400);
    expect(app.get("/tasks/counts").await, 200);

    // Cancel and retry, in every state that answers differently.
    let cancel = |id: TaskId| format!("/tasks/{id}/cancel");
    let retry = |id: TaskId| format!("/tasks/{id}/retry");
    expect(app.post(&retry(id), &[], "").await, 409);
    expect(app.post(&cancel(id), &[], "").await, 200);
    expect(app.post(&cancel(id), &[], "").await, 200);
    expect(app.post(&retry(id), &[], "").await, 202);
    let lease = Utc::now() + chrono::Duration::seconds(60);
    app.db
        .claim(id, "openapi-test", lease)
        .unwrap()
        .expect("claimed");
    expect(app.post(&cancel(id), &[], "").await, 202);
    let other = task_id(&expect(app.post_json(event("e-2", json!(2))).await, 202));
    app.db
        .claim(other, "openapi-test", lease)
        .unwrap()
        .expect("claimed");
    app.db
        .finish(other.attempt(1), &Outcome::Succeeded(json!(2)))
        .unwrap();
    expect(app.post(&cancel(other), &[], "").await, 409);
    let done = expect(app.get(&format!("/tasks/{other}")).await, 200);
    assert_eq!(
        done["attempt_history"].as_array().unwrap().len(),
        1,
        "{done}"
    );
    expect(app.get(&format!("/status/{id}")).await, 200);
    expect(app.post(&cancel(TaskId::new()), &[], "").await, 404);
    expect(app.post(&retry(TaskId::new()), &[], "").await, 404);
    expect(app.post("/tasks/nope/cancel", &[], "").await, 400);
    expect(app.post("/tasks/nope/retry", &[], "").await, 400);
}
