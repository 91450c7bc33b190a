//! Messages RabbitMQ confirmed and then lost (here: a purged queue) are
//! found by the relay and published again, once each task's message is
//! older than `republish_after`, and every task runs exactly once; a queue
//! that is merely long gets no extra copies, and a queue that lost part of
//! its messages gets back that part, and no more, once what it still holds
//! cannot name the missing tasks. With real `ferry-api`
//! and `ferry-worker` processes, on SQLite and on PostgreSQL.

use std::time::{Duration, Instant};

use ferry_testkit::{Deployment, Layout, Stack};
use lapin::options::QueuePurgeOptions;

const DONE: Duration = Duration::from_secs(90);
/// Generous: a loaded machine runs relay rounds late, never early.
const DEADLINE: Duration = Duration::from_secs(60);
/// What the tests set `republish_after` to.
const REPUBLISH_AFTER: &str = "1s";

/// Waits until the database holds every task as confirmed by the broker.
async fn wait_all_confirmed(d: &Deployment, n: usize) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let confirmed = d.task_rows("WHERE enqueued_at IS NOT NULL AND status = 'pending'");
        if confirmed == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{confirmed} of {n} tasks confirmed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every task succeeded on its first attempt and its handler ran once.
async fn each_ran_once(stack: &Stack, ids: &[String]) {
    for task in stack.api.wait_all(ids, "succeeded", DONE).await {
        assert_eq!(task["attempts"], 1, "{task:#}");
    }
    stack.deployment.assert_each_ran_once(ids);
}

/// A worker whose relay takes a message for lost after [`REPUBLISH_AFTER`].
fn worker(d: &Deployment, name: &str) -> ferry_testkit::Proc {
    d.spawn(
        "ferry-worker",
        &[],
        name,
        None,
        &[("FERRY_REPUBLISH_AFTER", REPUBLISH_AFTER)],
    )
}

/// Tasks submitted with no worker running, their queue purged: two workers
/// (two relays, deciding one at a time) start and every task runs once. The
/// api keeps the default `republish_after`, so the workers' relays find
/// them.
async fn a_purged_queue_loses_no_task(layout: Layout) {
    let Some(mut stack) = Stack::start_with(layout, 0, |d| d).await else {
        return;
    };
    let d = &stack.deployment;
    let (connection, channel) = d.broker_channel().await;
    let ids = stack.submit_one_message_each(&channel, "purged", 40).await;
    wait_all_confirmed(d, ids.len()).await;
    let purged = channel
        .queue_purge(d.queue.as_str().into(), QueuePurgeOptions::default())
        .await
        .expect("purge the task queue");
    assert_eq!(purged, 40);
    stack.workers.push(worker(d, "worker-0"));
    stack.workers.push(worker(d, "worker-1"));
    each_ran_once(&stack, &ids).await;
    let logs: String = stack.workers.iter().map(|w| w.log_text()).collect();
    assert!(
        logs.contains("no longer holds"),
        "no relay said it republished lost messages:\n{logs}"
    );
    let _ = connection.close(200, "checked".into()).await;
}

#[tokio::test]
async fn a_purged_queue_loses_no_task_sqlite() {
    a_purged_queue_loses_no_task(Layout::Sqlite).await;
}

#[tokio::test]
async fn a_purged_queue_loses_no_task_postgres() {
    a_purged_queue_loses_no_task(Layout::Postgres).await;
}

/// With no worker running and `republish_after` short in the api: 30 tasks
/// are confirmed and purged, 20 more are confirmed, each in a message of
/// its own. While the 20 wait, older than `republish_after`, round after
/// round, the relay sends nothing: 20 messages could name up to
/// `MESSAGE_TASKS` tasks each, all 50. A worker then drains them, the
/// relay sends the 30 again (nothing ready names them), and each task
/// runs once.
async fn a_long_queue_gets_back_what_it_lost_and_no_more(layout: Layout) {
    let Some(mut stack) = Stack::start_with(layout, 0, |d| {
        d.env("FERRY_REPUBLISH_AFTER", REPUBLISH_AFTER)
    })
    .await
    else {
        return;
    };
    let d = &stack.deployment;
    let (connection, channel) = d.broker_channel().await;
    let mut ids = stack.submit_one_message_each(&channel, "lost", 30).await;
    wait_all_confirmed(d, 30).await;
    channel
        .queue_purge(d.queue.as_str().into(), QueuePurgeOptions::default())
        .await
        .expect("purge the task queue");
    ids.extend(stack.submit_one_message_each(&channel, "kept", 20).await);
    wait_all_confirmed(d, 50).await;
    // Every task is confirmed, so older than republish_after a second from
    // now: the queue is watched for four more seconds, twenty relay rounds.
    let watch_until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < watch_until {
        let now = d.ready_messages(&channel).await;
        assert_eq!(
            now, 20,
            "the relay flooded a queue that may hold every task"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stack.workers.push(worker(d, "worker-0"));
    each_ran_once(&stack, &ids).await;
    // The api's relay or the worker's.
    let log = stack.api.proc.log_text() + &stack.workers[0].log_text();
    assert!(
        log.contains("no longer holds"),
        "no relay republished the purged tasks:\n{log}"
    );
    let _ = connection.close(200, "checked".into()).await;
}

#[tokio::test]
async fn a_long_queue_gets_back_what_it_lost_and_no_more_sqlite() {
    a_long_queue_gets_back_what_it_lost_and_no_more(Layout::Sqlite).await;
}

#[tokio::test]
async fn a_long_queue_gets_back_what_it_lost_and_no_more_postgres() {
    a_long_queue_gets_back_what_it_lost_and_no_more(Layout::Postgres).await;
}
