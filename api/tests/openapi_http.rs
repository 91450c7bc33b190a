//! `GET /openapi.json` over HTTP, on a real deployment of each layout: it
//! is served as `application/json`, OpenAPI 3.1, is the document the code
//! builds, and what that deployment's workers and database really answer
//! matches it.

mod schema;

use std::time::Duration;

use ferry_testkit::{layout_tests, Reply, Stack};
use schema::{document, operation};
use serde_json::{json, Value};

/// `reply` (to `method path`) has a status `doc` lists for that route and
/// a body that matches its schema.
fn conforms(doc: &Value, method: &str, path: &str, reply: &Reply) {
    let (template, op) = operation(doc, method, path);
    let documented = &op["responses"][reply.status.to_string()];
    assert!(
        documented.is_object(),
        "{method} {path}: {} is not documented for {template}",
        reply.status
    );
    let schema = &documented["content"]["application/json"]["schema"];
    if let Err(e) = schema::check(doc, schema, &reply.body) {
        panic!(
            "{method} {path}: the body does not match the document: {e}\nbody: {}",
            reply.body
        );
    }
}

/// `GET /openapi.json` over HTTP from a real deployment, and what its
/// workers and database really answer checked against it: tasks that
/// succeeded and failed, with their attempts, as `/status`, `/tasks/<id>`,
/// `/tasks` and `/tasks/counts` show them.
async fn served_over_http(stack: &Stack) {
    let reply = stack.api.get("/openapi.json").await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let content_type = reply.headers.get("content-type").unwrap().to_str().unwrap();
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    let version = reply.body["openapi"].as_str().unwrap_or_default();
    assert!(version.starts_with("3.1."), "openapi = {version:?}");
    assert_eq!(
        reply.body,
        document(),
        "the served document is the one the code builds"
    );
    let doc = reply.body;
    conforms(&doc, "get", "/health", &stack.api.get("/health").await);
    let done = Duration::from_secs(60);
    let echo = stack
        .api
        .submit(
            "org.ferry.echo",
            "openapi-echo",
            json!({"n": [1, 2.5, "x"]}),
        )
        .await;
    let failed = stack
        .api
        .submit("org.ferry.fail", "openapi-fail", json!(null))
        .await;
    stack.api.wait_for(&echo, "succeeded", done).await;
    stack.api.wait_for(&failed, "failed", done).await;
    for id in [&echo, &failed] {
        for path in [format!("/status/{id}"), format!("/tasks/{id}")] {
            let reply = stack.api.get(&path).await;
            assert_eq!(reply.status, 200, "{path}: {:?}", reply.body);
            assert!(!reply.body["attempt_history"].as_array().unwrap().is_empty());
            conforms(&doc, "get", &path, &reply);
        }
    }
    for path in ["/tasks?limit=1", "/tasks/counts"] {
        let reply = stack.api.get(path).await;
        assert_eq!(reply.status, 200, "{path}: {:?}", reply.body);
        conforms(&doc, "get", path, &reply);
    }
    let path = format!("/tasks/{failed}/retry");
    conforms(&doc, "post", &path, &stack.api.post_path(&path).await);
}

layout_tests!(served_over_http:
    Sqlite => served_over_http_sqlite,
    Postgres => served_over_http_postgres,
    Standalone => served_over_http_standalone);
