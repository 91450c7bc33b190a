//! A consumer's acks go in runs (`basic.ack` with `multiple`) on a
//! RabbitMQ queue of this test's own: a run never settles a delivery that
//! is not being acked, and requeues keep their place. And tasks published
//! together share messages, `MESSAGE_TASKS` at most to one.

use ferry_core::broker::{Delivery, Queue, MESSAGE_TASKS};
use ferry_core::TaskId;
use ferry_testkit::broker_url;
use ferry_testkit::delete_task_queue;
use ferry_testkit::services::require_named;
use futures_util::future::join_all;

/// Deletes the test's queues however the test ends.
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        delete_task_queue(&broker_url(), &self.0);
    }
}

/// A classic queue of the test's own, named `prefix-<id>` and declared,
/// its messages naming up to `message_tasks` tasks; deleted when the
/// guard drops.
async fn own_queue(prefix: &str, message_tasks: usize) -> (Queue, Cleanup) {
    let config = ferry_core::Config {
        broker_url: broker_url(),
        queue: format!("{prefix}-{}", TaskId::new()),
        message_tasks,
        ..ferry_core::Config::default()
    };
    let cleanup = Cleanup(config.queue.clone());
    let queue = Queue::from_config(&config);
    ferry_core::runtime::declare_queue(&queue).await.unwrap();
    (queue, cleanup)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_in_runs_never_settle_a_delivery_held_or_requeued() {
    if !require_named("rabbitmq") {
        return;
    }
    let (queue, _cleanup) = own_queue("ferry-test-acks", MESSAGE_TASKS).await;
    let ids: Vec<TaskId> = (0..8).map(|_| TaskId::new()).collect();
    // A message each.
    for id in &ids {
        queue.publish(&[*id]).await.unwrap();
    }

    let mut consumer = queue.consume(8, "acks-test").await.unwrap();
    let mut deliveries: Vec<Option<Delivery>> = Vec::new();
    for id in &ids {
        let delivery = consumer.next().await.unwrap().unwrap();
        assert_eq!(delivery.task_ids(), Some(vec![*id]), "delivered in order");
        deliveries.push(Some(delivery));
    }
    // The third is still running; the sixth is given back; the others
    // are acked at once, so that their acks share rounds.
    let held = deliveries[2].take().unwrap();
    let requeued = deliveries[5].take().unwrap();
    let acks = deliveries
        .into_iter()
        .flatten()
        .map(|delivery| tokio::spawn(delivery.ack()));
    let requeue = tokio::spawn(requeued.requeue());
    for ack in join_all(acks).await {
        ack.unwrap().unwrap();
    }
    requeue.await.unwrap().unwrap();

    // The given-back message comes again.
    let again = consumer.next().await.unwrap().unwrap();
    assert_eq!(again.task_ids(), Some(vec![ids[5]]));
    assert!(again.redelivered);
    // The held delivery was not covered by any run: it can still be
    // given back (a tag already settled would close the channel instead).
    held.requeue().await.unwrap();
    let held_again = consumer.next().await.unwrap().unwrap();
    assert_eq!(held_again.task_ids(), Some(vec![ids[2]]));
    assert!(held_again.redelivered);
    // Acked one after the other, and nothing else is left.
    again.ack().await.unwrap();
    held_again.ack().await.unwrap();
    queue.publish(&[ids[0]]).await.unwrap();
    let last = consumer.next().await.unwrap().unwrap();
    assert_eq!(
        last.task_ids(),
        Some(vec![ids[0]]),
        "nothing else was redelivered"
    );
    last.ack().await.unwrap();
    assert_eq!(queue.depth().await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_published_together_share_messages() {
    if !require_named("rabbitmq") {
        return;
    }
    let (queue, _cleanup) = own_queue("ferry-test-packed", MESSAGE_TASKS).await;
    let ids: Vec<TaskId> = (0..MESSAGE_TASKS + 4).map(|_| TaskId::new()).collect();
    queue.publish(&ids).await.unwrap();
    assert_eq!(queue.depth().await.unwrap(), 2, "two messages");
    let mut consumer = queue.consume(2, "packed-test").await.unwrap();
    let full = consumer.next().await.unwrap().unwrap();
    assert_eq!(full.task_ids(), Some(ids[..MESSAGE_TASKS].to_vec()));
    let rest = consumer.next().await.unwrap().unwrap();
    assert_eq!(rest.task_ids(), Some(ids[MESSAGE_TASKS..].to_vec()));
    // Given back whole, and delivered again whole.
    full.requeue().await.unwrap();
    rest.ack().await.unwrap();
    let again = consumer.next().await.unwrap().unwrap();
    assert!(again.redelivered);
    assert_eq!(again.task_ids(), Some(ids[..MESSAGE_TASKS].to_vec()));
    again.ack().await.unwrap();
    assert_eq!(queue.depth().await.unwrap(), 0);

    // With `message_tasks = 1`, one task to a message.
    let (queue, _cleanup_single) = own_queue("ferry-test-single", 1).await;
    queue.publish(&ids[..3]).await.unwrap();
    assert_eq!(queue.depth().await.unwrap(), 3, "a message each");
}
