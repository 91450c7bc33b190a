//! Bad input gets a JSON error with the right status, never an HTML page,
//! a panic or a task.

use std::time::Duration;

use ferry_testkit::{require, test_file, Api, Deployment, Reply};

/// Ferry's JSON error, and the API still serving after it.
async fn assert_error(api: &Api, r: Reply, status: u16, code: &str) {
    r.assert_error(status, code);
    assert_eq!(api.get("/health").await.status, 200);
}

#[tokio::test]
async fn every_bad_request_gets_a_json_error() {
    let deployment = Deployment::sqlite().env("FERRY_MAX_BODY_BYTES", "4096");
    let api = deployment.standalone().await;
    let json = [("content-type", "application/json")];

    let r = api.post(test_file("malformed/not-json.txt"), &json).await;
    assert_error(&api, r, 400, "malformed_json").await;
    let r = api.post(test_file("malformed/empty.json"), &json).await;
    assert_error(&api, r, 400, "empty_body").await;

    let event = test_file("echo/event.json");
    let r = api.post(event.clone(), &[]).await;
    assert_error(&api, r, 415, "unsupported_media_type").await;
    let r = api
        .post(event.clone(), &[("content-type", "text/plain")])
        .await;
    assert_error(&api, r, 415, "unsupported_media_type").await;
    let r = api
        .post(
            event,
            &[("content-type", "application/x-www-form-urlencoded")],
        )
        .await;
    assert_error(&api, r, 415, "unsupported_media_type").await;

    let big = format!(
        r#"{{"specversion":"1.0","type":"org.ferry.echo","source":"/s","id":"big","data":"{}"}}"#,
        "x".repeat(5000)
    );
    let r = api.post(big, &json).await;
    assert_error(&api, r, 413, "payload_too_large").await;

    for file in [
        "malformed/array-of-numbers.json",
        "malformed/string.json",
        "malformed/no-type.json",
    ] {
        let r = api.post_file(file).await;
        assert_error(&api, r, 422, "invalid_event").await;
    }
    let r = api.post_file("malformed/unrouted.json").await;
    assert_error(&api, r, 422, "unrouted_event").await;
    // A batch with one bad event is refused whole.
    let r = api
        .post(r#"[{"specversion":"1.0","type":"org.ferry.echo","source":"/s","id":"ok"},{"specversion":"1.0"}]"#, &[("content-type", "application/cloudevents-batch+json")])
        .await;
    assert_error(&api, r, 422, "invalid_event").await;

    let r = api.status("not-a-uuid").await;
    assert_error(&api, r, 400, "invalid_id").await;
    let r = api.status(&uuid::Uuid::new_v4().to_string()).await;
    assert_error(&api, r, 404, "task_not_found").await;
    let r = api.get("/no/such/route").await;
    assert_error(&api, r, 404, "not_found").await;

    // None of the refused requests became a task: the database holds none,
    // and a good request after them is stored and run.
    assert_eq!(deployment.task_rows(""), 0);
    let id = api
        .submit("org.ferry.echo", "after-errors", serde_json::Value::Null)
        .await;
    let task = api
        .wait_for(&id, "succeeded", Duration::from_secs(30))
        .await;
    assert_eq!(task["attempts"], 1);
    assert_eq!(deployment.task_rows(""), 1);
}

/// With the database gone, `/receive` and `/status` answer 503 with
/// Retry-After, and the API keeps serving.
#[tokio::test]
async fn unreachable_database_is_503() {
    require!(postgres);
    let mut admin =
        <diesel::PgConnection as diesel::Connection>::establish(&ferry_testkit::postgres_url())
            .unwrap();
    let name = format!("ferry_gone_{}", uuid::Uuid::new_v4().simple());
    diesel::connection::SimpleConnection::batch_execute(
        &mut admin,
        &format!("CREATE DATABASE {name}"),
    )
    .unwrap();
    let deployment = Deployment::sqlite().env(
        "FERRY_DATABASE_URL",
        &format!(
            "postgres://postgres@{}/{name}",
            ferry_testkit::postgres_addr()
        ),
    );
    let api = deployment.standalone().await;
    diesel::connection::SimpleConnection::batch_execute(
        &mut admin,
        &format!("DROP DATABASE {name} WITH (FORCE)"),
    )
    .unwrap();
    let r = api.post_file("echo/event.json").await;
    assert_eq!(r.status, 503, "{:?}", r.body);
    assert_eq!(r.body["error"], "database_unavailable");
    assert_eq!(r.headers["retry-after"], "5");
    let r = api.status(&uuid::Uuid::new_v4().to_string()).await;
    r.assert_error(503, "database_unavailable");
    assert_eq!(r.headers["retry-after"], "5");
    // /health says the database does not answer, and the API keeps serving.
    api.get("/health")
        .await
        .assert_error(503, "database_unavailable");
}

/// `binary --config <config>` with `env` exits 2, naming `key` on stderr.
fn fails_at_start_naming(binary: &str, config: &str, env: &[(&str, &str)], key: &str) {
    let (code, stderr) = ferry_testkit::run_bin(binary, &["--config", config], env);
    assert_eq!(
        code,
        Some(2),
        "{binary} --config {config} {env:?}: {stderr}"
    );
    assert!(stderr.contains(key), "{binary} --config {config}: {stderr}");
}

#[test]
fn a_bad_config_fails_at_start_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("server.conf");
    let config = config.to_str().unwrap();
    for (text, key) in [
        ("port = \"eighty\"", "port"),
        (
            "[[routes]]\ntype = \"t\"\nhandler = \"exec\"\n",
            "routes[0].command",
        ),
        ("colour = \"blue\"", "colour"),
    ] {
        std::fs::write(config, text).unwrap();
        for binary in ["ferry-api", "ferry-worker"] {
            fails_at_start_naming(binary, config, &[], key);
        }
    }
    // A missing file and a bad environment value fail the start alike.
    let missing = "/nonexistent/server.conf";
    fails_at_start_naming("ferry-worker", missing, &[], "--config");
    fails_at_start_naming(
        "ferry-api",
        "/dev/null",
        &[("FERRY_PORT", "-1")],
        "FERRY_PORT",
    );
}
