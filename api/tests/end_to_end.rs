//! The whole path, with real processes: POST an event to `ferry-api`, a
//! `ferry-worker` (or the standalone process) runs its handler, and
//! `/status` reports the outcome.

use std::collections::HashMap;
use std::time::Duration;

use ferry_testkit::{layout_tests, test_file, Deployment, Layout, Stack};
use serde_json::{json, Value};

const DONE: Duration = Duration::from_secs(60);

/// Every test_files event reaches `succeeded` with its handler's result.
async fn every_event_succeeds(stack: &Stack) {
    let api = &stack.api;
    // The pacifica event (CloudEvents 0.1) runs handlers/ingest.py.
    let r = api.post_file("C234-1234-1234/event.json").await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    let id = r.body["id"].as_str().unwrap().to_string();
    assert_eq!(r.body["status"], "pending");
    assert_eq!(r.body["status_url"], format!("/status/{id}"));
    assert_eq!(r.headers["location"], format!("/status/{id}"));
    let task = api.wait_for(&id, "succeeded", DONE).await;
    assert_eq!(task["type"], "org.pacifica.metadata.ingest");
    assert_eq!(task["source"], "/pacifica/metadata/ingest");
    assert_eq!(task["event_id"], "C234-1234-1234");
    assert_eq!(task["attempts"], 1);
    assert_eq!(task["result"]["task_id"], id.as_str());
    assert_eq!(task["result"]["file_count"], 3);
    assert_eq!(task["result"]["total_bytes"], 1416);
    assert_eq!(task["result"]["proxymod"]["task"], "advance");
    assert!(task["error"].is_null());
    for key in ["created_at", "started_at", "finished_at"] {
        let t = task[key].as_str().unwrap();
        assert!(
            chrono::DateTime::parse_from_rfc3339(t).is_ok() && t.ends_with('Z'),
            "{key}: {t}"
        );
    }
    assert_eq!(task["attempt_history"].as_array().unwrap().len(), 1);

    // The same (source, id) again is the same task, not a new one.
    let again = api.post_file("C234-1234-1234/event.json").await;
    assert_eq!(again.status, 200, "{:?}", again.body);
    assert_eq!(again.body["id"], id.as_str());
    assert_eq!(again.body["status"], "succeeded");

    // CloudEvents 1.0, structured, as application/cloudevents+json.
    let r = api
        .post(
            test_file("cloudevents-1.0/event.json"),
            &[(
                "content-type",
                "application/cloudevents+json; charset=utf-8",
            )],
        )
        .await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    let task = api
        .wait_for(r.body["id"].as_str().unwrap(), "succeeded", DONE)
        .await;
    assert_eq!(task["result"]["file_count"], 2);

    // echo: the result is the event's data.
    let r = api.post_file("echo/event.json").await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    let task = api
        .wait_for(r.body["id"].as_str().unwrap(), "succeeded", DONE)
        .await;
    assert_eq!(task["result"], json!({"hello": "world"}));

    // A batch: one task per event.
    let r = api
        .post(
            test_file("batch/events.json"),
            &[("content-type", "application/cloudevents-batch+json")],
        )
        .await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    let tasks = r.body["tasks"].as_array().unwrap().clone();
    assert_eq!(tasks.len(), 3);
    for (i, t) in tasks.iter().enumerate() {
        let task = api
            .wait_for(t["id"].as_str().unwrap(), "succeeded", DONE)
            .await;
        assert_eq!(task["event_id"], format!("batch-{}", i + 1));
    }

    // Binary mode: ce-* headers carry the attributes, the body is the data.
    let r = api
        .post(
            r#"{"binary": true}"#,
            &[
                ("content-type", "application/json"),
                ("ce-specversion", "1.0"),
                ("ce-type", "org.ferry.echo"),
                ("ce-source", "/ferry/tests/binary"),
                ("ce-id", "binary-1"),
            ],
        )
        .await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    let task = api
        .wait_for(r.body["id"].as_str().unwrap(), "succeeded", DONE)
        .await;
    assert_eq!(task["result"], json!({"binary": true}));
    assert_eq!(task["source"], "/ferry/tests/binary");
}

// The production layout on each database, and standalone, which must not
// touch RabbitMQ (its broker URL does not answer).
layout_tests!(every_event_succeeds:
    Sqlite => sqlite_api_and_worker_processes,
    Postgres => postgres_api_and_worker_processes,
    Standalone => standalone_needs_nothing_else);

/// A stopping api writes the broker confirms it still holds (each is held
/// a second before it is written, `api/src/confirms.rs`), so no relay
/// publishes its tasks again once their publish lock runs out.
async fn a_stopping_api_records_the_confirms_it_holds(layout: Layout) {
    // No worker: the tasks wait in the queue, their confirms held.
    let Some(mut stack) = Stack::start_with(layout, 0, |d| d).await else {
        return;
    };
    for i in 0..3 {
        stack
            .api
            .submit("org.ferry.echo", &format!("held-{i}"), json!(i))
            .await;
    }
    stack.api.proc.stop(Duration::from_secs(30));
    let confirmed = "WHERE enqueued_at IS NOT NULL AND publish_lock_until IS NULL";
    assert_eq!(stack.deployment.task_rows(confirmed), 3);
}

/// With room for one task in flight to the broker (`publish_window` 1), a
/// burst of concurrent requests, and a batch larger than the window, wait
/// in line for it: every task is published by the api itself, its confirm
/// recorded, and run; nothing is left to the relay.
async fn a_burst_waits_for_the_publish_window(layout: Layout) {
    let Some(stack) = Stack::start_with(layout, 1, |d| d.env("FERRY_PUBLISH_WINDOW", "1")).await
    else {
        return;
    };
    let api = &stack.api;
    let singles = futures_util::future::join_all((0..60).map(|i| async move {
        api.submit("org.ferry.echo", &format!("window-{i}"), json!(i))
            .await
    }));
    let batch: Vec<Value> = (0..5)
        .map(|i| {
            json!({"specversion": "1.0", "type": "org.ferry.echo", "source": "/ferry/tests",
                   "id": format!("window-batch-{i}"), "data": i})
        })
        .collect();
    let batch = api.post(
        Value::from(batch).to_string(),
        &[("content-type", "application/cloudevents-batch+json")],
    );
    let (mut ids, batch) = tokio::join!(singles, batch);
    assert_eq!(batch.status, 202, "{:?}", batch.body);
    for task in batch.body["tasks"].as_array().unwrap() {
        ids.push(task["id"].as_str().unwrap().to_string());
    }
    for id in &ids {
        api.wait_for(id, "succeeded", DONE).await;
    }
    let deadline = std::time::Instant::now() + DONE;
    let metrics = loop {
        let confirms = api.metric("ferry_confirms_recorded_total").await;
        if confirms >= ids.len() as f64 || std::time::Instant::now() > deadline {
            break (
                confirms,
                api.metric("ferry_publish_in_flight").await,
                api.metric("ferry_publish_waiting").await,
                api.metric("ferry_publish_left_to_relay_total").await,
                api.metric("ferry_relay_published_total").await,
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(metrics, (ids.len() as f64, 0.0, 0.0, 0.0, 0.0));
}

#[tokio::test]
async fn sqlite_burst_waits_for_the_publish_window() {
    a_burst_waits_for_the_publish_window(Layout::Sqlite).await;
}

#[tokio::test]
async fn postgres_burst_waits_for_the_publish_window() {
    a_burst_waits_for_the_publish_window(Layout::Postgres).await;
}

#[tokio::test]
async fn sqlite_api_records_held_confirms_when_it_stops() {
    a_stopping_api_records_the_confirms_it_holds(Layout::Sqlite).await;
}

#[tokio::test]
async fn postgres_api_records_held_confirms_when_it_stops() {
    a_stopping_api_records_the_confirms_it_holds(Layout::Postgres).await;
}

#[tokio::test]
async fn postgres_uses_native_types() {
    let Some(stack) = Stack::start(Layout::Postgres).await else {
        return;
    };
    let api = &stack.api;
    let id = api
        .submit("org.ferry.echo", "native-1", json!({"k": 1}))
        .await;
    api.wait_for(&id, "succeeded", DONE).await;
    let schema = stack.deployment.pg.as_ref().unwrap();
    // Fails (and the test with it) unless the columns have these types.
    schema.execute(&format!(
        "DO $$ BEGIN
           IF (SELECT string_agg(column_name || ':' || data_type, ',' ORDER BY column_name)
               FROM information_schema.columns
               WHERE table_schema = '{s}' AND table_name = 'tasks'
                 AND column_name IN ('id', 'event', 'result', 'created_at'))
              <> 'created_at:timestamp with time zone,event:jsonb,id:uuid,result:jsonb'
           THEN RAISE EXCEPTION 'wrong column types'; END IF;
         END $$;",
        s = schema.name
    ));
}

/// Two worker replicas share one queue; every task runs exactly once.
#[tokio::test]
async fn two_worker_replicas_run_each_task_once() {
    let Some(stack) = Stack::start_with(Layout::Postgres, 2, |d| d).await else {
        return;
    };
    let api = &stack.api;
    const N: usize = 200;
    let mut ids = Vec::with_capacity(N);
    for i in 0..N {
        ids.push(
            api.submit("org.ferry.count", &format!("count-{i}"), json!({"i": i}))
                .await,
        );
    }
    let mut workers = HashMap::<String, usize>::new();
    for task in api.wait_all(&ids, "succeeded", DONE).await {
        assert_eq!(task["attempts"], 1, "{task:#}");
        let worker = task["attempt_history"][0]["worker"]
            .as_str()
            .unwrap()
            .to_string();
        *workers.entry(worker).or_default() += 1;
    }
    stack.deployment.assert_each_ran_once(&ids);
    assert_eq!(
        workers.len(),
        2,
        "both replicas should have taken tasks: {workers:?}"
    );
}

/// A fail route ends `failed` after its max_attempts, each attempt recorded.
#[tokio::test]
async fn failing_tasks_are_retried_then_failed() {
    let deployment = Deployment::sqlite();
    let api = deployment.standalone().await;
    let id = api.submit("org.ferry.fail", "fail-1", Value::Null).await;
    let task = api.wait_for(&id, "failed", DONE).await;
    assert_eq!(task["attempts"], 3);
    assert_eq!(task["max_attempts"], 3);
    let history = task["attempt_history"].as_array().unwrap();
    assert_eq!(history.len(), 3);
    for (i, attempt) in history.iter().enumerate() {
        assert_eq!(attempt["attempt"], i + 1);
        assert!(
            attempt["error"].as_str().unwrap().contains("fail handler"),
            "{attempt}"
        );
        assert!(attempt["finished_at"].is_string());
    }
    assert!(task["error"].as_str().unwrap().contains("attempt 3"));
}

/// A standalone process killed with tasks queued and running: the next one
/// on the same SQLite file runs them all.
#[tokio::test]
async fn standalone_restart_loses_nothing() {
    let deployment = Deployment::sqlite()
        .env("FERRY_CONCURRENCY", "1")
        .env("FERRY_LEASE", "1s");
    let mut first = deployment.standalone().await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            first
                .submit("org.ferry.sleep", &format!("restart-{i}"), Value::Null)
                .await,
        );
    }
    first.wait_for(&ids[0], "running", DONE).await;
    first.proc.signal("KILL");
    first
        .proc
        .wait_exit(Duration::from_secs(10))
        .expect("killed");
    let second = deployment.standalone().await;
    for id in &ids {
        second.wait_for(id, "succeeded", DONE).await;
    }
    let first_task = second.status(&ids[0]).await.body;
    assert_eq!(first_task["attempts"], 2, "{first_task:#}");
}

/// Standalone: a stored task counts as enqueued from its commit (the
/// in-process queue cannot lose a publish while the process lives, and a
/// restart owes every unfinished task again), so no confirm is recorded
/// by a second write of its row, and the relay never publishes a task the
/// api did.
#[tokio::test]
async fn standalone_stores_tasks_enqueued_and_publishes_each_once() {
    // One slot and six 2 s sleeps ahead: the tasks behind them wait in the
    // queue past the api's publish lock (10 s), while the relay runs.
    let deployment = Deployment::sqlite()
        .env("FERRY_CONCURRENCY", "1")
        .env("FERRY_RELAY_INTERVAL", "200ms");
    let api = deployment.standalone().await;
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(
            api.submit("org.ferry.sleep", &format!("ahead-{i}"), json!(i))
                .await,
        );
    }
    for i in 0..4 {
        ids.push(
            api.submit("org.ferry.echo", &format!("behind-{i}"), json!(i))
                .await,
        );
    }
    for id in &ids {
        api.wait_for(id, "succeeded", DONE).await;
    }
    let (inserts, confirms, rounds, published) = (
        api.metric("ferry_batch_size_count{batcher=\"insert\"}")
            .await,
        api.metric("ferry_confirms_recorded_total").await,
        api.metric("ferry_relay_round_seconds_count").await,
        api.metric("ferry_relay_published_total").await,
    );
    assert!(inserts >= 1.0, "the insert batches are counted");
    assert_eq!(confirms, 0.0, "a confirm was written after the insert");
    assert!(rounds >= 20.0, "the relay ran while tasks waited: {rounds}");
    assert_eq!(published, 0.0, "the relay published a task again");
}

/// Which of a task queue's broker objects (the queue, its dead-letter
/// queue, the hints' and the control messages' exchanges) exist: a
/// passive declare of each, on a channel of its own (a missing one closes
/// the channel).
async fn broker_objects(queue: &str) -> Vec<(String, bool)> {
    use lapin::options::{ExchangeDeclareOptions, QueueDeclareOptions};
    use lapin::types::FieldTable;
    let connection = lapin::Connection::connect(
        &ferry_testkit::broker_url(),
        lapin::ConnectionProperties::default(),
    )
    .await
    .unwrap();
    let mut found = Vec::new();
    for name in [queue.to_string(), format!("{queue}.dead")] {
        let channel = connection.create_channel().await.unwrap();
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let exists = channel
            .queue_declare(name.as_str().into(), passive, FieldTable::default())
            .await
            .is_ok();
        found.push((name, exists));
    }
    for (name, kind) in [
        (format!("{queue}.events"), lapin::ExchangeKind::Topic),
        (format!("{queue}.control"), lapin::ExchangeKind::Fanout),
    ] {
        let channel = connection.create_channel().await.unwrap();
        let passive = ExchangeDeclareOptions {
            passive: true,
            ..ExchangeDeclareOptions::default()
        };
        let exists = channel
            .exchange_declare(name.as_str().into(), kind, passive, FieldTable::default())
            .await
            .is_ok();
        found.push((name, exists));
    }
    let _ = connection.close(200, "checked".into()).await;
    found
}

/// A test's deployment takes away what Ferry declared on the broker for
/// it (queues and exchanges), so runs of the suite and the benchmarks
/// leave nothing behind on a shared RabbitMQ.
#[tokio::test]
async fn a_deployment_leaves_nothing_on_the_broker() {
    let Some(stack) = Stack::start(Layout::Sqlite).await else {
        return;
    };
    let id = stack
        .api
        .submit("org.ferry.echo", "leaves-nothing", json!({"n": 1}))
        .await;
    stack.api.wait_for(&id, "succeeded", DONE).await;
    let queue = stack.deployment.queue.clone();
    let declared = broker_objects(&queue).await;
    assert!(declared.iter().all(|(_, exists)| *exists), "{declared:?}");
    drop(stack);
    let left = broker_objects(&queue).await;
    assert!(left.iter().all(|(_, exists)| !exists), "{left:?}");
}
