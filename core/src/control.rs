//! Control messages: the api tells every worker process that a running
//! task was cancelled, so the one running it stops the handler at once.
//!
//! With RabbitMQ this is a fanout exchange, `<queue>.control`, carrying
//! non-persistent messages (`<task id>:<attempt>` each, see
//! [`CancelRequest`]); every worker process binds an
//! exclusive, auto-deleted queue of its own to it, so every worker hears
//! every cancel. In standalone mode ([`Queue::local`]) it is an in-process
//! broadcast. Delivery is best effort: the database records the request
//! (`cancel_requested_at`), and a worker checks it at every lease renewal,
//! so a lost message only delays the stop.

use futures_util::StreamExt;
use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Channel, Connection, ExchangeKind};
use tokio::sync::broadcast;

use crate::broker::{self, AmqpQueue, BrokerError, Queue};
use crate::task::{AttemptRef, TaskId};

/// Cancels an in-process broadcast holds for a subscriber that lags.
const LOCAL_CAPACITY: usize = 1024;

/// The in-process control channel of a [`Queue::local`].
pub(crate) fn local_channel() -> broadcast::Sender<CancelRequest> {
    broadcast::channel(LOCAL_CAPACITY).0
}

/// One control message: stop this attempt of this task.
///
/// It names the attempt so that a message that arrives late (the task was
/// cancelled, retried and started again meanwhile) cannot stop the newer
/// attempt. Written `<task id>:<attempt>`; a message of a task id alone
/// (from a Ferry before attempts were named) stops whichever attempt runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CancelRequest {
    /// The task.
    pub task: TaskId,
    /// The attempt to stop; `None`: whichever runs.
    pub attempt: Option<i32>,
}

impl CancelRequest {
    /// Reads a message body; `None` if it is not one.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        let (task, attempt) = match text.split_once(':') {
            Some((task, attempt)) => (task, Some(attempt.parse().ok()?)),
            None => (text, None),
        };
        Some(Self {
            task: task.parse().ok()?,
            attempt,
        })
    }

    /// Whether this stops `attempt` of its task.
    pub fn stops(&self, attempt: i32) -> bool {
        self.attempt.is_none_or(|a| a == attempt)
    }
}

impl From<AttemptRef> for CancelRequest {
    fn from(attempt: AttemptRef) -> Self {
        Self {
            task: attempt.task,
            attempt: Some(attempt.attempt),
        }
    }
}

impl std::fmt::Display for CancelRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.attempt {
            Some(attempt) => write!(f, "{}:{attempt}", self.task),
            None => write!(f, "{}", self.task),
        }
    }
}

/// The fanout exchange of control messages beside the task queue `queue`.
pub fn exchange_name(queue: &str) -> String {
    format!("{queue}.control")
}

impl Queue {
    /// Tells every worker process to stop `attempt` (its task was
    /// cancelled). Best effort: returns once the broker took the message
    /// (no worker may be listening, and that is not an error).
    pub async fn publish_cancel(&self, attempt: AttemptRef) -> Result<(), BrokerError> {
        let request = CancelRequest::from(attempt);
        match self {
            Self::Amqp(queue) => queue.publish_cancel(request).await,
            Self::Local(queue) => {
                // No subscriber (no worker running) is not an error.
                let _ = queue.control.send(request);
                Ok(())
            }
        }
    }

    /// Subscribes to cancels: from now on, every [`Queue::publish_cancel`]
    /// of any process reaches the subscription.
    pub async fn subscribe_cancels(&self, tag: &str) -> Result<Cancels, BrokerError> {
        match self {
            Self::Amqp(queue) => queue.subscribe_cancels(tag).await,
            Self::Local(queue) => Ok(Cancels::Local(queue.control.subscribe())),
        }
    }
}

async fn declare_exchange(channel: &Channel, queue: &str) -> Result<String, BrokerError> {
    let exchange = exchange_name(queue);
    broker::declare_exchange(channel, &exchange, ExchangeKind::Fanout).await?;
    Ok(exchange)
}

impl AmqpQueue {
    async fn publish_cancel(&self, request: CancelRequest) -> Result<(), BrokerError> {
        let channel = self.publisher().await?;
        let exchange = declare_exchange(&channel, &self.name).await?;
        let body = request.to_string();
        let properties = BasicProperties::default()
            // Not persistent: a cancel is only a hint (see the module).
            .with_delivery_mode(1)
            .with_content_type("text/plain".into());
        let confirm = channel
            .basic_publish(
                exchange.as_str().into(),
                "".into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                properties,
            )
            .await?;
        confirm.await?;
        Ok(())
    }

    async fn subscribe_cancels(&self, tag: &str) -> Result<Cancels, BrokerError> {
        let (connection, consumer) = broker::subscribe_exclusive(
            &self.url,
            format!("ferry-control-{}", std::process::id()),
            &exchange_name(&self.name),
            ExchangeKind::Fanout,
            "",
            tag,
        )
        .await?;
        Ok(Cancels::Amqp {
            _connection: Box::new(connection),
            consumer: Box::new(consumer),
        })
    }
}

/// A subscription to cancels ([`Queue::subscribe_cancels`]).
#[derive(Debug)]
pub enum Cancels {
    /// From the fanout exchange, through this process's own queue.
    Amqp {
        /// Keeps the subscription's connection (and its queue) alive.
        _connection: Box<Connection>,
        /// lapin's consumer of the process's queue.
        consumer: Box<lapin::Consumer>,
    },
    /// From the in-process broadcast.
    Local(broadcast::Receiver<CancelRequest>),
}

impl Cancels {
    /// The next cancel; `Err` when the subscription broke (resubscribe).
    /// Unreadable messages are skipped.
    pub async fn next(&mut self) -> Result<CancelRequest, BrokerError> {
        loop {
            match self {
                Self::Amqp { consumer, .. } => {
                    let delivery = match consumer.next().await {
                        Some(delivery) => delivery?,
                        None => return Err(BrokerError::Closed),
                    };
                    let request = std::str::from_utf8(&delivery.data)
                        .ok()
                        .and_then(CancelRequest::parse);
                    match request {
                        Some(request) => return Ok(request),
                        None => tracing::warn!("unreadable control message; ignored"),
                    }
                }
                Self::Local(receiver) => match receiver.recv().await {
                    Ok(request) => return Ok(request),
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        // The lease renewal finds what was missed.
                        tracing::warn!(missed, "control messages missed");
                    }
                    Err(broadcast::error::RecvError::Closed) => return Err(BrokerError::Closed),
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_attempt_and_old_ones_still_read() {
        let task = TaskId::new();
        let request = CancelRequest::from(task.attempt(2));
        assert_eq!(request.to_string(), format!("{task}:2"));
        assert_eq!(CancelRequest::parse(&request.to_string()), Some(request));
        assert!(request.stops(2) && !request.stops(1) && !request.stops(3));
        // A message of a task id alone (an older Ferry) stops any attempt.
        let old = CancelRequest::parse(&format!(" {task}\n")).unwrap();
        assert_eq!(old.attempt, None);
        assert!(old.stops(1) && old.stops(7));
        for bad in ["", "x", &format!("{task}:"), &format!("{task}:two"), ":1"] {
            assert_eq!(CancelRequest::parse(bad), None, "{bad:?}");
        }
    }
}
