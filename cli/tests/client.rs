//! The built `ferry` binary against a real `ferry-api`: `--standalone` on
//! SQLite for every subcommand and exit code, and the production layout
//! (an api and a worker process, RabbitMQ, PostgreSQL) for following,
//! listing and cancelling tasks that workers run.

mod common;

use common::{event_file, ferry, ferry_with, is_uuid};
use ferry_testkit::{Layout, Stack};
use serde_json::{json, Value};

/// A CloudEvents 1.0 event of `event_type` with id `id`.
fn event(event_type: &str, id: &str) -> Value {
    json!({"specversion": "1.0", "type": event_type, "source": "/ferry/cli-tests", "id": id, "data": {"n": id}})
}

async fn standalone() -> Stack {
    Stack::start(Layout::Standalone)
        .await
        .expect("standalone needs no service")
}

#[tokio::test]
async fn submit_and_follow_to_each_exit_code() {
    let stack = standalone().await;
    let url = &stack.api.base;
    let dir = tempfile::tempdir().unwrap();

    // No --wait: the id alone on stdout.
    let run = ferry(url, &["submit", "test_files/echo/event.json"])
        .await
        .expect(0);
    let echo = run.stdout.trim().to_string();
    assert!(is_uuid(&echo), "{run:?}");
    // status --watch follows it to `succeeded`: exit 0, its details.
    let run = ferry(url, &["status", &echo, "--watch"]).await.expect(0);
    assert!(run.stdout.contains("succeeded"), "{run:?}");
    assert!(
        run.stdout.contains("result        {\"hello\":\"world\"}"),
        "{run:?}"
    );
    // --json: the API's status document, alone.
    let view = ferry(url, &["status", &echo, "--json"])
        .await
        .expect(0)
        .json();
    assert_eq!(
        (view["id"].as_str(), view["status"].as_str()),
        (Some(echo.as_str()), Some("succeeded"))
    );

    // --wait from stdin: the id first, then the task's details; exit 0.
    let stdin = event("org.ferry.echo", "stdin-1").to_string();
    let run = ferry_with(url, &["submit", "-", "--wait"], &[], stdin.as_bytes())
        .await
        .expect(0);
    let id = run.first_line().to_string();
    assert!(is_uuid(&id), "{run:?}");
    assert!(run.stdout.contains("status        succeeded"), "{run:?}");
    // Not a terminal: no spinner, no escape codes.
    assert!(!run.stderr.contains('\u{1b}'), "{run:?}");

    // A failing handler: exit 1, and with --json the final view alone.
    let fail = event_file(dir.path(), "fail.json", &event("org.ferry.fail", "fail-1"));
    let run = ferry(url, &["submit", &fail, "--wait", "--json"])
        .await
        .expect(1);
    let view = run.json();
    assert_eq!(view["status"], "failed", "{view}");
    assert_eq!(view["attempts"], 3, "{view}");
    let failed = view["id"].as_str().unwrap().to_string();
    // status of a failed task, not watched: exit 1 too.
    let run = ferry(url, &["status", &failed]).await.expect(1);
    assert!(run.stdout.contains("ATTEMPT"), "{run:?}");

    // A batch: the ids, one a line; --wait --json: {"tasks": [views]}.
    let run = ferry(
        url,
        &["submit", "test_files/batch/events.json", "--wait", "--json"],
    )
    .await
    .expect(0);
    let tasks = run.json()["tasks"].as_array().cloned().unwrap();
    assert_eq!(tasks.len(), 3, "{run:?}");
    assert!(tasks.iter().all(|t| t["status"] == "succeeded"), "{run:?}");

    // Refusals of the API: exit 5 with its message.
    let run = ferry(url, &["submit", "test_files/malformed/not-json.txt"])
        .await
        .expect(5);
    assert!(run.stderr.contains("malformed_json"), "{run:?}");
    let run = ferry(url, &["status", "not-a-uuid"]).await.expect(5);
    assert!(run.stderr.contains("invalid_id"), "{run:?}");
    let run = ferry(
        url,
        &["status", "6d682e5f-6fd3-417e-b75b-96da80523fff", "--json"],
    )
    .await
    .expect(5);
    assert_eq!(run.json()["error"], "task_not_found", "{run:?}");
    assert!(run.stderr.contains("no task has id"), "{run:?}");
}

#[tokio::test]
async fn cancel_retry_and_timeouts() {
    let stack = standalone().await;
    let url = &stack.api.base;
    let dir = tempfile::tempdir().unwrap();
    let mut later = event("org.ferry.echo", "later-1");
    later["delayseconds"] = json!(3600);
    let later = event_file(dir.path(), "later.json", &later);

    // A delayed task stays pending: --timeout ends the wait with exit 4.
    let run = ferry(url, &["submit", &later, "--wait", "--timeout", "1s"])
        .await
        .expect(4);
    let id = run.first_line().to_string();
    assert!(is_uuid(&id), "{run:?}");
    assert!(run.stderr.contains("timed out"), "{run:?}");
    assert!(run.stdout.contains("status        pending"), "{run:?}");
    let run = ferry(
        url,
        &["status", &id, "--watch", "--timeout", "300ms", "--json"],
    )
    .await
    .expect(4);
    assert_eq!(run.json()["status"], "pending", "{run:?}");
    // Not final, not watched: exit 0.
    ferry(url, &["status", &id]).await.expect(0);

    // Cancel: exit 0; the task is then cancelled, and status exits 3.
    let run = ferry(url, &["cancel", &id]).await.expect(0);
    assert_eq!(run.stdout, format!("{id} cancelled\n"));
    let run = ferry(url, &["status", &id]).await.expect(3);
    assert!(run.stdout.contains("cancelled"), "{run:?}");
    ferry(url, &["status", &id, "--watch"]).await.expect(3);
    // Cancelling again is idempotent; --json is the API's answer.
    let run = ferry(url, &["cancel", &id, "--json"]).await.expect(0);
    assert_eq!(run.json()["status"], "cancelled");

    // Retry of a failed task: pending again, then failed again (exit 1).
    let fail = event_file(dir.path(), "fail.json", &event("org.ferry.fail", "fail-2"));
    let failed = ferry(url, &["submit", &fail, "--wait"])
        .await
        .expect(1)
        .first_line()
        .to_string();
    let run = ferry(url, &["retry", &failed]).await.expect(0);
    assert!(run.stdout.contains("pending again"), "{run:?}");
    let view = ferry(url, &["status", &failed, "--watch", "--json"])
        .await
        .expect(1)
        .json();
    assert_eq!(view["attempts"], 6, "{view}");
    // Retry of the cancelled task: it runs now (its delay is over), and
    // --wait follows it to `succeeded`.
    let run = ferry(url, &["retry", &id, "--wait"]).await.expect(0);
    assert!(run.stdout.contains("status        succeeded"), "{run:?}");

    // What the API refuses: cancel of a finished task, retry of a pending
    // one.
    let done = ferry(url, &["submit", "test_files/echo/event.json", "--wait"])
        .await
        .expect(0);
    let done = done.first_line();
    let run = ferry(url, &["cancel", done]).await.expect(5);
    assert!(run.stderr.contains("task_finished"), "{run:?}");
    let mut waiting = event("org.ferry.echo", "later-2");
    waiting["delayseconds"] = json!(3600);
    let waiting = event_file(dir.path(), "waiting.json", &waiting);
    let waiting = ferry(url, &["submit", &waiting]).await.expect(0).stdout;
    let run = ferry(url, &["retry", waiting.trim(), "--json"])
        .await
        .expect(5);
    assert_eq!(run.json()["error"], "task_not_retryable", "{run:?}");
}

#[tokio::test]
async fn tasks_and_stats() {
    let stack = standalone().await;
    let url = &stack.api.base;
    let dir = tempfile::tempdir().unwrap();
    let mut echoes = Vec::new();
    for i in 0..3 {
        let file = event_file(
            dir.path(),
            "echo.json",
            &event("org.ferry.echo", &format!("list-{i}")),
        );
        echoes.push(
            ferry(url, &["submit", &file, "--wait"])
                .await
                .expect(0)
                .first_line()
                .to_string(),
        );
    }
    let fail = event_file(
        dir.path(),
        "fail.json",
        &event("org.ferry.fail", "list-fail"),
    );
    let failed = ferry(url, &["submit", &fail, "--wait"])
        .await
        .expect(1)
        .first_line()
        .to_string();

    // The table: a header, then one row per task, newest first.
    let run = ferry(url, &["tasks"]).await.expect(0);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["ID", "TYPE", "STATUS", "ATTEMPTS", "CREATED", "UPDATED"],
        "{run:?}"
    );
    assert_eq!(lines.len(), 5, "{run:?}");
    let first: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        &first[..4],
        [failed.as_str(), "org.ferry.fail", "failed", "3"],
        "{run:?}"
    );
    // Every row's columns start where the header's do.
    let column = lines[0].find("STATUS").unwrap();
    for line in &lines[1..] {
        assert!(
            line[column..].starts_with("failed") || line[column..].starts_with("succeeded"),
            "{run:?}"
        );
    }

    // Filters, in text and in JSON.
    let run = ferry(url, &["tasks", "--type", "org.ferry.echo"])
        .await
        .expect(0);
    assert_eq!(run.stdout.lines().count(), 4, "{run:?}");
    assert!(
        echoes.iter().all(|id| run.stdout.contains(id.as_str())),
        "{run:?}"
    );
    assert!(!run.stdout.contains(&failed), "{run:?}");
    let page = ferry(url, &["tasks", "--status", "failed", "--json"])
        .await
        .expect(0)
        .json();
    let ids = page_ids(&page);
    assert_eq!(ids, [failed.as_str()], "{page}");
    let run = ferry(url, &["tasks", "--status", "cancelled"])
        .await
        .expect(0);
    assert_eq!(
        (run.stdout.as_str(), run.stderr.as_str()),
        ("", "no tasks\n")
    );

    // Pages: --limit, and the cursor of the next page.
    let run = ferry(url, &["tasks", "--type", "org.ferry.echo", "--limit", "2"])
        .await
        .expect(0);
    assert_eq!(run.stdout.lines().count(), 3, "{run:?}");
    let cursor = run
        .stderr
        .trim()
        .strip_prefix("more: add --cursor ")
        .expect("a cursor")
        .to_string();
    let page = ferry(
        url,
        &[
            "tasks",
            "--type",
            "org.ferry.echo",
            "--limit",
            "2",
            "--cursor",
            &cursor,
            "--json",
        ],
    )
    .await
    .expect(0)
    .json();
    let ids = page_ids(&page);
    assert_eq!(ids, [echoes[0].as_str()], "{page}");
    assert_eq!(page["next"], Value::Null);
    // The API's refusal of a bad filter.
    let run = ferry(url, &["tasks", "--limit", "1000"]).await.expect(5);
    assert!(run.stderr.contains("limit"), "{run:?}");
    let run = ferry(url, &["tasks", "--status", "lost"]).await.expect(5);
    assert!(run.stderr.contains("invalid_parameter"), "{run:?}");

    // Counts: a row per type and the totals.
    let counts = ferry(url, &["stats", "--json"]).await.expect(0).json();
    assert_eq!(counts["total"], 4, "{counts}");
    assert_eq!(counts["by_status"]["succeeded"], 3, "{counts}");
    assert_eq!(counts["by_type"]["org.ferry.fail"]["failed"], 1, "{counts}");
    let run = ferry(url, &["stats"]).await.expect(0);
    let rows: Vec<Vec<&str>> = run
        .stdout
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows[0],
        [
            "TYPE",
            "PENDING",
            "RUNNING",
            "RETRYING",
            "SUCCEEDED",
            "FAILED",
            "CANCELLED",
            "TOTAL"
        ]
    );
    assert_eq!(
        rows[1],
        ["org.ferry.echo", "0", "0", "0", "3", "0", "0", "3"],
        "{run:?}"
    );
    assert_eq!(
        rows[2],
        ["org.ferry.fail", "0", "0", "0", "0", "1", "0", "1"],
        "{run:?}"
    );
    assert_eq!(
        rows[3],
        ["all", "types", "0", "0", "0", "3", "1", "0", "4"],
        "{run:?}"
    );
}

#[tokio::test]
async fn tokens_usage_and_unreachable_apis() {
    let deployment = Layout::Standalone
        .deployment()
        .token("reader", "reader-secret-0123456789", &["read"])
        .token("admin", "admin-secret-0123456789", &["admin"]);
    let api = deployment.standalone().await;
    let url = &api.base;

    // No token: the API's 401, exit 5.
    let run = ferry(url, &["stats"]).await.expect(5);
    assert!(
        run.stderr.contains(
            "this route needs an Authorization: Bearer <token> header (HTTP 401 unauthorized)"
        ),
        "{run:?}"
    );
    assert_eq!(run.stdout, "");
    let run = ferry(url, &["stats", "--json"]).await.expect(5);
    assert_eq!(run.json()["error"], "unauthorized");
    let run = ferry(url, &["stats", "--token", "wrong-token"])
        .await
        .expect(5);
    assert!(run.stderr.contains("unauthorized"), "{run:?}");
    // A token with the scope: --token or FERRY_TOKEN.
    ferry(url, &["stats", "--token", "reader-secret-0123456789"])
        .await
        .expect(0);
    ferry_with(
        url,
        &["tasks"],
        &[("FERRY_TOKEN", "reader-secret-0123456789")],
        b"",
    )
    .await
    .expect(0);
    // Without the scope: 403, exit 5.
    let run = ferry(
        url,
        &[
            "submit",
            "test_files/echo/event.json",
            "--token",
            "reader-secret-0123456789",
        ],
    )
    .await
    .expect(5);
    assert!(run.stderr.contains("HTTP 403 forbidden"), "{run:?}");
    // The admin token submits and follows (read) the task.
    let run = ferry_with(
        url,
        &["submit", "test_files/echo/event.json", "--wait"],
        &[("FERRY_TOKEN", "admin-secret-0123456789")],
        b"",
    )
    .await
    .expect(0);
    assert!(run.stdout.contains("succeeded"), "{run:?}");
    // The token never shows in help.
    let run = ferry_with(
        url,
        &["--help"],
        &[("FERRY_TOKEN", "admin-secret-0123456789")],
        b"",
    )
    .await
    .expect(0);
    assert!(!run.stdout.contains("admin-secret"), "{}", run.stdout);
    assert!(run.stdout.contains("Exit codes:"), "{}", run.stdout);

    // Usage errors: exit 2.
    ferry(url, &["submit"]).await.expect(2);
    ferry(url, &["status"]).await.expect(2);
    ferry(url, &["tasks", "--limit", "many"]).await.expect(2);
    ferry(url, &["status", "x", "--timeout", "1s"])
        .await
        .expect(2);
    let run = ferry(url, &["submit", "/nonexistent/event.json"])
        .await
        .expect(2);
    assert!(
        run.stderr.contains("cannot read /nonexistent/event.json"),
        "{run:?}"
    );
    ferry(url, &["stats", "--url", "ftp://example.org"])
        .await
        .expect(2);

    // Nothing listens: exit 6.
    let run = ferry("http://127.0.0.1:1", &["stats"]).await.expect(6);
    assert!(
        run.stderr
            .contains("cannot reach the API at http://127.0.0.1:1/"),
        "{run:?}"
    );
    ferry(
        "http://127.0.0.1:1",
        &["submit", "test_files/echo/event.json", "--wait"],
    )
    .await
    .expect(6);
    drop(api);
    drop(deployment);
}

/// `status --watch` outlives a restart of the api it follows: the stream
/// breaks, `ferry` opens it again on the new process, and the task the
/// worker finished meanwhile ends the watch with exit 0.
#[tokio::test]
async fn watch_survives_an_api_restart() {
    let Some(Stack {
        api,
        workers,
        deployment,
    }) = Stack::start_with(Layout::Sqlite, 1, |d| {
        // The api logs each answer at DEBUG: the test sees the stream open.
        d.env("RUST_LOG", "info,ferry_worker=debug,ferry_api=debug")
    })
    .await
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let url = api.base.clone();
    let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
    let sleep = event_file(
        dir.path(),
        "sleep.json",
        &event("org.ferry.sleep", "restart"),
    );
    let id = ferry(&url, &["submit", &sleep])
        .await
        .expect(0)
        .stdout
        .trim()
        .to_string();
    api.wait_for(&id, "running", std::time::Duration::from_secs(60))
        .await;
    let watch = {
        let (url, id) = (url.clone(), id.clone());
        tokio::spawn(
            async move { ferry(&url, &["status", &id, "--watch", "--timeout", "60s"]).await },
        )
    };
    // Once the watch has its stream, take the api away under it.
    let stream = format!("/status/{id}/events");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !api.proc.log_text().contains(&stream) {
        assert!(
            std::time::Instant::now() < deadline,
            "no stream opened:\n{}",
            api.proc.log_text()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    api.proc.signal("KILL");
    drop(api);
    let proc = deployment.spawn("ferry-api", &[], "api-again", Some(port), &[]);
    let api = ferry_testkit::Api::start(proc, port).await;
    let run = watch.await.unwrap().expect(0);
    assert!(run.stdout.contains("status        succeeded"), "{run:?}");
    drop(api);
    drop(workers);
}

/// The production layout: an api and a worker process on PostgreSQL.
#[tokio::test]
async fn production_layout_on_postgres() {
    let Some(stack) = Stack::start(Layout::Postgres).await else {
        return;
    };
    let url = &stack.api.base;
    let dir = tempfile::tempdir().unwrap();
    let echo = event_file(dir.path(), "echo.json", &event("org.ferry.echo", "pg-echo"));
    let echo = ferry(url, &["submit", &echo, "--wait"])
        .await
        .expect(0)
        .first_line()
        .to_string();
    let fail = event_file(dir.path(), "fail.json", &event("org.ferry.fail", "pg-fail"));
    let view = ferry(url, &["submit", &fail, "--wait", "--json"])
        .await
        .expect(1)
        .json();
    assert_eq!(view["status"], "failed", "{view}");

    // A task that runs 1s, followed by another process than its submitter.
    let sleep = event_file(
        dir.path(),
        "sleep.json",
        &event("org.ferry.sleep-1s", "pg-sleep"),
    );
    let sleep = ferry(url, &["submit", &sleep])
        .await
        .expect(0)
        .stdout
        .trim()
        .to_string();
    let run = ferry(url, &["status", &sleep, "--watch"]).await.expect(0);
    assert!(run.stdout.contains("succeeded"), "{run:?}");
    assert!(run.stdout.contains("WORKER"), "{run:?}");

    // A running task cancelled: its worker stops it; status exits 3.
    let hang = event_file(dir.path(), "hang.json", &event("org.ferry.hang", "pg-hang"));
    let hang = ferry(url, &["submit", &hang])
        .await
        .expect(0)
        .stdout
        .trim()
        .to_string();
    stack
        .api
        .wait_for(&hang, "running", std::time::Duration::from_secs(60))
        .await;
    let run = ferry(url, &["cancel", &hang, "--wait"]).await.expect(3);
    assert!(run.stdout.contains("cancelled"), "{run:?}");
    ferry(url, &["status", &hang]).await.expect(3);

    let page = ferry(url, &["tasks", "--json"]).await.expect(0).json();
    assert_eq!(page["tasks"].as_array().unwrap().len(), 4, "{page}");
    let page = ferry(url, &["tasks", "--status", "succeeded,cancelled", "--json"])
        .await
        .expect(0)
        .json();
    let mut ids = page_ids(&page);
    ids.sort();
    let mut expected = vec![echo.as_str(), sleep.as_str(), hang.as_str()];
    expected.sort();
    assert_eq!(ids, expected, "{page}");
    let counts = ferry(url, &["stats", "--json"]).await.expect(0).json();
    assert_eq!(counts["by_status"]["cancelled"], 1, "{counts}");
    assert_eq!(counts["total"], 4, "{counts}");
    drop(stack);
}

/// The task ids of a `GET /tasks` page, in its order.
fn page_ids(page: &Value) -> Vec<&str> {
    page["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect()
}
