//! A message that names several tasks (one id per line, as the api and the
//! relay publish the tasks they publish together): a worker with fewer
//! slots than the message has tasks runs each of them once, in slots of
//! their own, acknowledges the duplicate and unknown ids it names without
//! running anything, and acks the message once all are recorded. With real
//! `ferry-api` and `ferry-worker` processes, on SQLite and on PostgreSQL.

use std::time::{Duration, Instant};

use ferry_testkit::{Layout, Stack};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueuePurgeOptions};
use lapin::{BasicProperties, Channel};

const DONE: Duration = Duration::from_secs(90);

/// Publishes `body` on `queue`, persistent, and waits for the confirm.
async fn publish(channel: &Channel, queue: &str, body: &str) {
    let confirm = channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            body.as_bytes(),
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    assert!(confirm.is_ack(), "{confirm:?}");
}

async fn a_message_of_several_tasks_runs_each_once(layout: Layout) {
    // No worker yet: the api publishes each task in a message of its own,
    // and those messages are purged, so only the test's message names them.
    let Some(mut stack) = Stack::start_with(layout, 0, |d| d).await else {
        return;
    };
    let d = &stack.deployment;
    let (connection, channel) = d.broker_channel().await;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let ids = stack.submit_one_message_each(&channel, "packed", 7).await;
    channel
        .queue_purge(d.queue.as_str().into(), QueuePurgeOptions::default())
        .await
        .expect("purge the task queue");
    // Six tasks, the first named twice, and a task no database holds.
    let unknown = uuid::Uuid::new_v4().to_string();
    let six = [&ids[..6], &ids[..1], std::slice::from_ref(&unknown)].concat();
    publish(&channel, &d.queue, &six.join("\n")).await;
    // The seventh alone, as every message was before they named several.
    publish(&channel, &d.queue, &ids[6]).await;
    // Two slots for the seven tasks.
    stack.workers.push(d.spawn(
        "ferry-worker",
        &[],
        "worker-0",
        None,
        &[("FERRY_CONCURRENCY", "2")],
    ));
    for task in stack.api.wait_all(&ids, "succeeded", DONE).await {
        assert_eq!(task["attempts"], 1, "{task:#}");
    }
    d.assert_each_ran_once(&ids);
    // Both messages acked: a worker's acks leave within moments of the
    // outcomes, and once it is killed nothing unacknowledged comes back.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stack.workers.clear();
    let watch_until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < watch_until {
        assert_eq!(
            d.ready_messages(&channel).await,
            0,
            "a message was not acked"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = connection.close(200, "checked".into()).await;
}

#[tokio::test]
async fn a_message_of_several_tasks_runs_each_once_sqlite() {
    a_message_of_several_tasks_runs_each_once(Layout::Sqlite).await;
}

#[tokio::test]
async fn a_message_of_several_tasks_runs_each_once_postgres() {
    a_message_of_several_tasks_runs_each_once(Layout::Postgres).await;
}
