//! Control messages: the api tells every worker process that a running
//! task was cancelled, so the one running it stops the handler at once.
//!
//! With RabbitMQ this is a fanout exchange, `<queue>.control`, carrying
//! non-persistent messages (a task id each); every worker process binds an
//! exclusive, auto-deleted queue of its own to it, so every worker hears
//! every cancel. In standalone mode ([`Queue::local`]) it is an in-process
//! broadcast. Delivery is best effort: the database records the request
//! (`cancel_requested_at`), and a worker checks it at every lease renewal,
//! so a lost message only delays the stop.

use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use tokio::sync::broadcast;

use crate::broker::{AmqpQueue, BrokerError, Queue};
use crate::task::TaskId;

/// Cancels an in-process broadcast holds for a subscriber that lags.
const LOCAL_CAPACITY: usize = 1024;

/// The in-process control channel of a [`Queue::local`].
pub(crate) fn local_channel() -> broadcast::Sender<TaskId> {
    broadcast::channel(LOCAL_CAPACITY).0
}

/// The fanout exchange of control messages beside the task queue `queue`.
pub fn exchange_name(queue: &str) -> String {
    format!("{queue}.control")
}

impl Queue {
    /// Tells every worker process that task `id` was cancelled. Best effort:
    /// returns once the broker took the message (no worker may be
    /// listening, and that is not an error).
    pub async fn publish_cancel(&self, id: TaskId) -> Result<(), BrokerError> {
        match self {
            Self::Amqp(queue) => queue.publish_cancel(id).await,
            Self::Local(queue) => {
                // No subscriber (no worker running) is not an error.
                let _ = queue.control.send(id);
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
    channel
        .exchange_declare(
            exchange.as_str().into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(exchange)
}

impl AmqpQueue {
    async fn publish_cancel(&self, id: TaskId) -> Result<(), BrokerError> {
        let channel = self.publisher().await?;
        let exchange = declare_exchange(&channel, &self.name).await?;
        let body = id.to_string();
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
        let props = ConnectionProperties::default()
            .with_connection_name(format!("ferry-control-{}", std::process::id()).into());
        let connection = Connection::connect(&self.url, props).await?;
        let channel = connection.create_channel().await?;
        let exchange = declare_exchange(&channel, &self.name).await?;
        let queue = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_bind(
                queue.name().clone(),
                exchange.as_str().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let consumer = channel
            .basic_consume(
                queue.name().clone(),
                tag.into(),
                BasicConsumeOptions {
                    no_ack: true,
                    exclusive: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
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
    Local(broadcast::Receiver<TaskId>),
}

impl Cancels {
    /// The next cancelled task; `Err` when the subscription broke (resubscribe).
    /// Unreadable messages are skipped.
    pub async fn next(&mut self) -> Result<TaskId, BrokerError> {
        loop {
            match self {
                Self::Amqp { consumer, .. } => {
                    let delivery = match consumer.next().await {
                        Some(delivery) => delivery?,
                        None => return Err(BrokerError::Closed),
                    };
                    let id = std::str::from_utf8(&delivery.data)
                        .ok()
                        .and_then(|text| text.trim().parse().ok());
                    match id {
                        Some(id) => return Ok(id),
                        None => tracing::warn!("unreadable control message; ignored"),
                    }
                }
                Self::Local(receiver) => match receiver.recv().await {
                    Ok(id) => return Ok(id),
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
