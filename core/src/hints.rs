//! Hints of state changes: whoever changes a task's status says so, and
//! every api process hears it and wakes the clients waiting on that task
//! (`GET /status/<id>?wait=`, `GET /status/<id>/events`).
//!
//! With RabbitMQ this is a topic exchange, `<queue>.events`, carrying
//! non-persistent messages, each a JSON array of `{"id", "status"}`; the
//! routing key is `<event type>.<status>` (just `<status>` when the
//! publisher does not know the type: the api's cancel and retry). Every api
//! process binds an exclusive, auto-deleted queue of its own with `#`. In
//! standalone mode ([`Queue::local`]) it is an in-process broadcast. This is
//! the reverse direction of [`crate::control`], and built the same way.
//!
//! Delivery is best effort: a hint is never waited for, a full buffer or a
//! broker that is down drops it, and the database stays the truth (the
//! `task_events` table, which the api re-reads at a fallback interval), so
//! a lost hint only delays a waiter.

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::StreamExt;
use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Channel, Connection, ExchangeKind};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc};

use crate::broker::{self, AmqpQueue, BrokerError, Queue};
use crate::retry::RetryPolicy;
use crate::task::{TaskId, TaskStatus};

/// Hints an in-process broadcast holds for a subscriber that lags.
const LOCAL_CAPACITY: usize = 1024;
/// Hints a process buffers before publishing; past that they are dropped.
const BUFFER: usize = 16 * 1024;
/// Hints published together, at most (one message per type and status).
const BATCH: usize = 1024;
/// A process publishes hints at most once per this: those that come
/// sooner after a publish wait for the rest of it and go together. At a
/// steady 1 000 tasks a second each worker sent a message per change (two
/// per task, beside the task's own), which cost RabbitMQ and the workers
/// some 140 µs of CPU per task and put 0.4 ms on the api's submit p50
/// (BENCHMARKS.md, twelfth section). A quiet process's first hint goes at
/// once; under load a waiter is woken up to this much later.
pub const HOLD: std::time::Duration = std::time::Duration::from_millis(5);
/// A routing key is at most 255 bytes (AMQP's short string).
const MAX_KEY: usize = 255;

/// One change of a task's status, as a hint carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Change {
    /// The task.
    pub id: TaskId,
    /// The status it went to.
    pub status: TaskStatus,
}

/// The in-process hint channel of a [`Queue::local`].
pub(crate) fn local_channel() -> broadcast::Sender<Arc<[Change]>> {
    broadcast::channel(LOCAL_CAPACITY).0
}

/// The topic exchange of hints beside the task queue `queue`.
pub fn exchange_name(queue: &str) -> String {
    format!("{queue}.events")
}

/// The routing key of a change: `<event type>.<status>`, or `<status>`
/// without a type; a type too long for a key is cut (at a character
/// boundary) so that the status stays at its end.
pub fn routing_key(event_type: Option<&str>, status: TaskStatus) -> String {
    let status = status.as_str();
    let Some(event_type) = event_type.filter(|t| !t.is_empty()) else {
        return status.to_string();
    };
    let mut room = MAX_KEY - status.len() - 1;
    while room < event_type.len() && !event_type.is_char_boundary(room) {
        room -= 1;
    }
    format!("{}.{status}", &event_type[..room.min(event_type.len())])
}

/// A change waiting to be published.
#[derive(Debug)]
struct Pending {
    event_type: Option<String>,
    change: Change,
}

/// A process's publisher of hints; cheap to clone. Sending never waits and
/// never fails: a background loop publishes, and drops what it cannot.
#[derive(Debug, Clone)]
pub struct Hints {
    pending: mpsc::Sender<Pending>,
}

impl Hints {
    /// Starts the publishing loop on `queue`; it ends when every handle is
    /// dropped.
    pub fn spawn(queue: &Queue) -> Self {
        let (pending, receiver) = mpsc::channel(BUFFER);
        tokio::spawn(publish_loop(queue.clone(), receiver));
        Self { pending }
    }

    /// Says that task `id` (of `event_type`, if known) went to `status`.
    pub fn send(&self, id: TaskId, event_type: Option<&str>, status: TaskStatus) {
        let pending = Pending {
            event_type: event_type.map(str::to_string),
            change: Change { id, status },
        };
        if self.pending.try_send(pending).is_err() {
            tracing::debug!(task = %id, "hint buffer full; hint dropped");
        }
    }
}

async fn publish_loop(queue: Queue, mut receiver: mpsc::Receiver<Pending>) {
    let mut link: Option<(Connection, Channel)> = None;
    let mut backoff = RetryPolicy::RECONNECT.backoff();
    let mut retry_at = tokio::time::Instant::now();
    let mut batch = Vec::with_capacity(BATCH);
    let mut next_publish = tokio::time::Instant::now();
    while receiver.recv_many(&mut batch, BATCH).await > 0 {
        if tokio::time::Instant::now() < next_publish {
            tokio::time::sleep_until(next_publish).await;
            while batch.len() < BATCH {
                match receiver.try_recv() {
                    Ok(pending) => batch.push(pending),
                    Err(_) => break,
                }
            }
        }
        next_publish = tokio::time::Instant::now() + HOLD;
        let mut groups: HashMap<String, Vec<Change>> = HashMap::new();
        for pending in batch.drain(..) {
            let key = routing_key(pending.event_type.as_deref(), pending.change.status);
            groups.entry(key).or_default().push(pending.change);
        }
        match &queue {
            Queue::Local(local) => {
                for changes in groups.into_values() {
                    // No subscriber (no api in this process) is not an error.
                    let _ = local.events.send(changes.into());
                }
            }
            Queue::Amqp(amqp) => {
                if tokio::time::Instant::now() < retry_at {
                    continue; // The broker is down: these hints are dropped.
                }
                if let Err(e) = publish_amqp(amqp, &mut link, groups).await {
                    link = None;
                    let wait = backoff.next_wait();
                    retry_at = tokio::time::Instant::now() + wait;
                    tracing::warn!(error = %e, retry_in = ?wait, "cannot publish hints; dropping them meanwhile");
                } else {
                    backoff.reset();
                }
            }
        }
    }
}

async fn publish_amqp(
    amqp: &AmqpQueue,
    link: &mut Option<(Connection, Channel)>,
    groups: HashMap<String, Vec<Change>>,
) -> Result<(), BrokerError> {
    let usable = link
        .as_ref()
        .is_some_and(|(c, ch)| c.status().connected() && ch.status().connected());
    if !usable {
        let name = format!("ferry-hints-{}", std::process::id());
        let opened = broker::bounded(async {
            let connection = broker::connect(&amqp.url, name).await?;
            let channel = connection.create_channel().await?;
            declare_exchange(&channel, &amqp.name).await?;
            Ok((connection, channel))
        })
        .await?;
        *link = Some(opened);
    }
    let (_, channel) = link.as_ref().expect("connected above");
    let exchange = exchange_name(&amqp.name);
    for (key, changes) in groups {
        let body = serde_json::to_vec(&changes).expect("changes serialize");
        let properties = BasicProperties::default()
            // Not persistent: a hint is only a hint (see the module).
            .with_delivery_mode(1)
            .with_content_type("application/json".into());
        // No publisher confirms on this channel: nothing waits for them.
        channel
            .basic_publish(
                exchange.as_str().into(),
                key.as_str().into(),
                BasicPublishOptions::default(),
                &body,
                properties,
            )
            .await?;
    }
    Ok(())
}

async fn declare_exchange(channel: &Channel, queue: &str) -> Result<String, BrokerError> {
    let exchange = exchange_name(queue);
    broker::declare_exchange(channel, &exchange, ExchangeKind::Topic).await?;
    Ok(exchange)
}

impl Queue {
    /// Subscribes to hints: from now on, every change any process
    /// publishes ([`Hints::send`]) reaches the subscription.
    pub async fn subscribe_changes(&self, tag: &str) -> Result<Changes, BrokerError> {
        match self {
            Self::Amqp(queue) => subscribe_amqp(queue, tag).await,
            Self::Local(queue) => Ok(Changes::Local(queue.events.subscribe())),
        }
    }
}

async fn subscribe_amqp(amqp: &AmqpQueue, tag: &str) -> Result<Changes, BrokerError> {
    let (connection, consumer) = broker::subscribe_exclusive(
        &amqp.url,
        format!("ferry-events-{}", std::process::id()),
        &exchange_name(&amqp.name),
        ExchangeKind::Topic,
        "#",
        tag,
    )
    .await?;
    Ok(Changes::Amqp {
        _connection: Box::new(connection),
        consumer: Box::new(consumer),
    })
}

/// A subscription to hints ([`Queue::subscribe_changes`]).
#[derive(Debug)]
pub enum Changes {
    /// From the topic exchange, through this process's own queue.
    Amqp {
        /// Keeps the subscription's connection (and its queue) alive.
        _connection: Box<Connection>,
        /// lapin's consumer of the process's queue.
        consumer: Box<lapin::Consumer>,
    },
    /// From the in-process broadcast.
    Local(broadcast::Receiver<Arc<[Change]>>),
}

/// A change as a message carries it.
#[derive(Deserialize)]
struct Wire {
    id: String,
    status: String,
}

impl Changes {
    /// The next changes heard; `Err` when the subscription broke
    /// (resubscribe). Unreadable messages are skipped; hints missed by a
    /// lagging in-process subscriber are skipped too (the fallback read
    /// finds them).
    pub async fn next(&mut self) -> Result<Vec<Change>, BrokerError> {
        loop {
            match self {
                Self::Amqp { consumer, .. } => {
                    let delivery = match consumer.next().await {
                        Some(delivery) => delivery?,
                        None => return Err(BrokerError::Closed),
                    };
                    let wire: Option<Vec<Wire>> = serde_json::from_slice(&delivery.data).ok();
                    let changes: Option<Vec<Change>> = wire.and_then(|wire| {
                        wire.into_iter()
                            .map(|w| {
                                Some(Change {
                                    id: w.id.parse().ok()?,
                                    status: w.status.parse().ok()?,
                                })
                            })
                            .collect()
                    });
                    match changes {
                        Some(changes) => return Ok(changes),
                        None => tracing::warn!("unreadable hint message; ignored"),
                    }
                }
                Self::Local(receiver) => match receiver.recv().await {
                    Ok(changes) => return Ok(changes.to_vec()),
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::debug!(missed, "hints missed");
                    }
                    Err(broadcast::error::RecvError::Closed) => return Err(BrokerError::Closed),
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A quiet process's hint goes at once; those that come within
    /// [`HOLD`] of a publish wait for the rest of it and go together.
    #[tokio::test(start_paused = true)]
    async fn hints_soon_after_a_publish_go_together() {
        let queue = Queue::local();
        let mut changes = queue.subscribe_changes("test").await.unwrap();
        let hints = Hints::spawn(&queue);
        let ids: Vec<TaskId> = (0..4).map(|_| TaskId::new()).collect();
        // Time is paused: it moves only when every task waits.
        let started = tokio::time::Instant::now();

        hints.send(ids[0], Some("t"), TaskStatus::Succeeded);
        assert_eq!(ids_of(changes.next().await.unwrap()), [ids[0]]);
        assert_eq!(started.elapsed(), Duration::ZERO, "the first hint waited");

        for id in &ids[1..] {
            tokio::time::sleep(Duration::from_millis(1)).await;
            hints.send(*id, Some("t"), TaskStatus::Succeeded);
        }
        assert_eq!(ids_of(changes.next().await.unwrap()), ids[1..]);
        assert_eq!(started.elapsed(), HOLD, "sent at the end of the hold");
    }

    fn ids_of(changes: Vec<Change>) -> Vec<TaskId> {
        changes.into_iter().map(|c| c.id).collect()
    }
}
