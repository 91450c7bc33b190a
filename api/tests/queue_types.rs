//! `queue_type = "quorum"` on the loopback RabbitMQ: the processes declare
//! the task queue as a quorum queue and run tasks through it end to end; a
//! message given back more often than `delivery_limit` is dead-lettered into
//! `<queue>.dead`; and a queue that exists with the other type stops the
//! start with an error that says what to do.

use std::time::{Duration, Instant};

use ferry_testkit::{Deployment, Layout, Stack};
use lapin::options::{BasicGetOptions, BasicNackOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde_json::json;

const DONE: Duration = Duration::from_secs(60);

async fn channel(url: &str) -> (Connection, Channel) {
    let connection = Connection::connect(url, ConnectionProperties::default())
        .await
        .expect("connect to RabbitMQ");
    let channel = connection.create_channel().await.expect("a channel");
    (connection, channel)
}

/// Declares `queue` (durable) with `args`: Ok if the queue exists with
/// exactly these arguments, the broker's refusal otherwise.
async fn declare(url: &str, queue: &str, args: FieldTable) -> Result<(), String> {
    let (connection, channel) = channel(url).await;
    let result = channel
        .queue_declare(queue.into(), QueueDeclareOptions::durable(), args)
        .await
        .map(drop)
        .map_err(|e| e.to_string());
    let _ = connection.close(200, "checked".into()).await;
    result
}

/// The arguments Ferry declares a quorum task queue with.
fn quorum_args(dead: &str, limit: i64) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("".into()),
    );
    args.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(dead.into()),
    );
    args.insert("x-delivery-limit".into(), AMQPValue::LongLongInt(limit));
    args
}

async fn quorum_end_to_end(layout: Layout) {
    let Some(stack) = Stack::start_with(layout, 1, |d| {
        d.env("FERRY_QUEUE_TYPE", "quorum")
            .env("FERRY_DELIVERY_LIMIT", "7")
    })
    .await
    else {
        return;
    };
    let d = &stack.deployment;
    let api = &stack.api;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            api.submit("org.ferry.echo", &format!("quorum-{i}"), json!({"n": i}))
                .await,
        );
    }
    for (i, task) in api
        .wait_all(&ids, "succeeded", DONE)
        .await
        .iter()
        .enumerate()
    {
        assert_eq!(task["result"], json!({"n": i}), "{task:#}");
    }
    // The queue is a quorum queue with Ferry's arguments: declaring it again
    // with exactly those succeeds, and as a classic queue is refused.
    declare(&d.broker_url, &d.queue, quorum_args(&d.dead_queue(), 7))
        .await
        .expect("the task queue is quorum, with a delivery limit of 7");
    let classic = declare(&d.broker_url, &d.queue, FieldTable::default()).await;
    assert!(
        classic.as_ref().is_err_and(|e| e.contains("PRECONDITION")),
        "the task queue accepted a classic declare: {classic:?}"
    );
    let mut dead = FieldTable::default();
    dead.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    declare(&d.broker_url, &d.dead_queue(), dead)
        .await
        .expect("the dead-letter queue is quorum too");
}

#[tokio::test]
async fn quorum_queue_runs_tasks_sqlite() {
    quorum_end_to_end(Layout::Sqlite).await;
}

#[tokio::test]
async fn quorum_queue_runs_tasks_postgres() {
    quorum_end_to_end(Layout::Postgres).await;
}

/// A message given back (nack with requeue) over and over is dead-lettered
/// once it was redelivered `delivery_limit` times: the queue as ferry-api
/// declared it, settled by this test through lapin so the count is exact.
#[tokio::test]
async fn a_message_redelivered_past_the_limit_is_dead_lettered() {
    ferry_testkit::require!(rabbitmq);
    const LIMIT: usize = 2;
    let d = Deployment::sqlite()
        .env("FERRY_QUEUE_TYPE", "quorum")
        .env("FERRY_DELIVERY_LIMIT", &LIMIT.to_string());
    // The api declares the queue at start; no worker consumes it.
    let api = d.api().await;
    let (connection, channel) = channel(&d.broker_url).await;
    let body = b"not-a-task-the-test-settles-it";
    channel
        .basic_publish(
            "".into(),
            d.queue.as_str().into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    let mut deliveries = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    let dead = loop {
        assert!(
            Instant::now() < deadline,
            "after {deliveries} deliveries the message is neither in the queue nor dead-lettered"
        );
        if let Some(message) = channel
            .basic_get(d.queue.as_str().into(), BasicGetOptions::default())
            .await
            .expect("basic.get")
        {
            assert_eq!(message.delivery.data, body);
            deliveries += 1;
            message
                .delivery
                .acker
                .nack(BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                })
                .await
                .expect("nack");
            continue;
        }
        if let Some(message) = channel
            .basic_get(d.dead_queue().as_str().into(), BasicGetOptions::default())
            .await
            .expect("basic.get on the dead-letter queue")
        {
            break message;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(dead.delivery.data, body);
    // The first delivery and LIMIT redeliveries; no more.
    assert_eq!(deliveries, LIMIT + 1, "deliveries before dead-lettering");
    let _ = connection.close(200, "test over".into()).await;
    drop(api);
}

/// A task queue that exists as a classic queue is not declared as quorum:
/// both binaries stop at start, saying how to fix it.
#[tokio::test]
async fn a_classic_queue_refuses_quorum_with_a_clear_error() {
    ferry_testkit::require!(rabbitmq);
    let d = Deployment::sqlite();
    {
        // Today's classic queue, as a classic deployment declares it.
        let api = d.api().await;
        drop(api);
    }
    for binary in ["ferry-api", "ferry-worker"] {
        let mut proc = d.spawn(binary, &[], binary, None, &[("FERRY_QUEUE_TYPE", "quorum")]);
        let status = proc
            .wait_exit(Duration::from_secs(30))
            .unwrap_or_else(|| panic!("{binary} kept running:\n{}", proc.log_text()));
        assert!(!status.success(), "{binary}: {status:?}");
        let log = proc.log_text();
        for words in [
            d.queue.as_str(),
            "queue_type = \"quorum\"",
            "rabbitmqctl delete_queue",
            "new queue name",
        ] {
            assert!(
                log.contains(words),
                "{binary} does not say {words:?}:\n{log}"
            );
        }
    }
}

/// A database that cannot be reached for a while does not use up a quorum
/// queue's delivery limit: the worker holds the message and retries the
/// claim instead of giving it back every moment, so the task runs once the
/// database is back and nothing is dead-lettered. (SQLite held under an
/// exclusive lock is unreachable to writers: each claim fails after its
/// 10 s busy timeout. Given back each time, the message would have been
/// dead-lettered at its second failure, with a limit of 1.)
#[tokio::test]
async fn a_database_outage_does_not_use_up_the_delivery_limit() {
    use diesel::connection::SimpleConnection;
    use diesel::Connection as _;
    ferry_testkit::require!(rabbitmq);
    let d = Deployment::sqlite()
        .env("FERRY_QUEUE_TYPE", "quorum")
        .env("FERRY_DELIVERY_LIMIT", "1");
    let api = d.api().await;
    let id = api.submit("org.ferry.echo", "outage-1", json!(1)).await;
    let path = d.sqlite_path().expect("SQLite").to_string();
    let (locked, is_locked) = std::sync::mpsc::channel();
    let lock = std::thread::spawn(move || {
        let mut conn = diesel::SqliteConnection::establish(&path).expect("open the database");
        conn.batch_execute("PRAGMA busy_timeout = 10000; BEGIN EXCLUSIVE")
            .expect("lock the database");
        locked.send(()).expect("tell the test");
        std::thread::sleep(Duration::from_secs(25));
        conn.batch_execute("COMMIT").expect("unlock");
    });
    is_locked.recv().expect("the lock is taken");
    let worker = d.worker("worker");
    api.wait_for(&id, "succeeded", Duration::from_secs(90))
        .await;
    lock.join().expect("the lock thread");
    let (connection, channel) = channel(&d.broker_url).await;
    let dead = channel
        .basic_get(d.dead_queue().as_str().into(), BasicGetOptions::default())
        .await
        .expect("basic.get on the dead-letter queue");
    assert!(dead.is_none(), "a message was dead-lettered: {dead:?}");
    let _ = connection.close(200, "test over".into()).await;
    drop(worker);
}
