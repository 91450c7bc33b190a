//! The delivery channel: a durable RabbitMQ queue (production) or an
//! in-process queue (`--standalone`). A message names tasks by id, one
//! per line, at most [`MESSAGE_TASKS`] of them (see [`encode`]); the tasks
//! themselves live in the database, so a lost message is found again there.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use tokio::sync::{mpsc, Mutex};

use crate::acks::{How, Settler};
use crate::config::QueueType;
use crate::task::TaskId;

/// Most task ids one message carries. The tasks published together (the
/// `/receive` requests of one insert batch, a relay's round) share a
/// message, so the broker's work per task (a publish, a confirm, a
/// delivery, an ack, a disk write) is shared by up to this many tasks; a
/// worker runs each of them in a slot of its own and settles the message
/// once all are recorded. A bound, not a target: a task published alone
/// goes alone, at once.
pub const MESSAGE_TASKS: usize = 16;

/// A message's body for `ids` (at most [`MESSAGE_TASKS`] of them, not
/// empty): the ids one per line. A message of one id is the id alone,
/// the format of every message before messages carried several.
pub fn encode(ids: &[TaskId]) -> Vec<u8> {
    let mut body = Vec::with_capacity(ids.len() * 37);
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            body.push(b'\n');
        }
        body.extend_from_slice(id.to_string().as_bytes());
    }
    body
}

/// The task ids a message's body names, in order, each once; `None`
/// when it is not a body [`encode`] writes (empty, not UTF-8, a line that
/// is not a task id, more than [`MESSAGE_TASKS`] ids): such a message
/// is dead-lettered whole.
pub fn decode(body: &[u8]) -> Option<Vec<TaskId>> {
    let text = std::str::from_utf8(body).ok()?;
    let mut ids: Vec<TaskId> = Vec::with_capacity(1);
    for line in text.trim().split('\n') {
        let id: TaskId = line.trim().parse().ok()?;
        if !ids.contains(&id) {
            ids.push(id);
        }
        if ids.len() > MESSAGE_TASKS {
            return None;
        }
    }
    Some(ids)
}

/// Why the broker did not take or give a message.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// RabbitMQ could not be reached or the channel broke.
    #[error("broker unavailable: {0}")]
    Unavailable(#[from] lapin::Error),
    /// The broker refused the message (negative confirm or returned).
    #[error("broker refused the message for task {0}")]
    Refused(TaskId),
    /// The broker did not answer (connect, declare or confirm) in time.
    #[error("the broker did not answer within {0:?}")]
    Timeout(std::time::Duration),
    /// The in-process queue is closed (the process is stopping).
    #[error("the in-process queue is closed")]
    Closed,
    /// The queue exists with other arguments (another type) than this
    /// configuration declares: RabbitMQ cannot change a queue's type.
    #[error(
        "queue {queue:?} (or {queue}.dead) already exists with other arguments than \
         queue_type = \"{wanted}\" declares ({reason}); a queue's type cannot be changed: \
         set queue_type to the queue's type, or use a new queue name, or let the queue \
         drain and delete both (rabbitmqctl delete_queue {queue}; rabbitmqctl delete_queue \
         {queue}.dead) so that they are declared again"
    )]
    QueueMismatch {
        /// The queue.
        queue: String,
        /// The type this configuration asks for.
        wanted: &'static str,
        /// RabbitMQ's words.
        reason: String,
    },
}

impl BrokerError {
    /// Whether retrying cannot help: the configuration must change.
    pub fn is_fatal(&self) -> bool {
        matches!(self, Self::QueueMismatch { .. })
    }
}

/// Longest wait for RabbitMQ to answer one operation: a connect with its
/// declares, a depth count, a batch of publishes and their confirms. A
/// broker that accepts a connection and then says nothing (starting up,
/// stopping, a half-open connection) must not hold a relay round, the
/// shared publishing connection or a stopping process for ever.
pub const BROKER_TIMEOUT: Duration = Duration::from_secs(10);

/// `operation`, or [`BrokerError::Timeout`] after [`BROKER_TIMEOUT`].
pub(crate) async fn bounded<T>(
    operation: impl std::future::Future<Output = Result<T, BrokerError>>,
) -> Result<T, BrokerError> {
    tokio::time::timeout(BROKER_TIMEOUT, operation)
        .await
        .unwrap_or(Err(BrokerError::Timeout(BROKER_TIMEOUT)))
}

/// The largest AMQP frame Ferry asks RabbitMQ for, unless the broker URL
/// sets `frame_max` itself. lapin keeps a send and a receive buffer of 32
/// frames for each connection, written through, so RabbitMQ's default
/// (128 KiB) costs 8 MiB of resident memory per connection, and a worker
/// holds four (deliveries, publishes, hints, control). Ferry's messages are
/// a task id (36 bytes) and its hints a few hundred bytes; a larger body
/// would only be split into more frames.
pub const FRAME_MAX: u32 = 8 * 1024;

/// Opens an AMQP connection named `name` (as RabbitMQ lists it), asking
/// for frames of at most [`FRAME_MAX`] bytes unless `url` says otherwise.
///
/// The broker's port is tried first with a plain TCP connect, and lapin is
/// called only when it answers. lapin 4.12 keeps about 10 KiB for ever from
/// every attempt whose TCP connect fails (its connection's state stays
/// referenced after the error is returned), and while RabbitMQ is down
/// every publisher, consumer and subscription of a process retries: the
/// soak's long-lived processes grew by ~200 KiB per broker outage until
/// refused attempts stopped reaching lapin. `core/tests/connect_memory.rs`
/// holds it to that.
pub(crate) async fn connect(url: &str, name: String) -> Result<Connection, lapin::Error> {
    let props = ConnectionProperties::default().with_connection_name(name.into());
    match url.parse::<lapin::uri::AMQPUri>() {
        Ok(mut uri) => {
            let authority = (uri.authority.host.as_str(), uri.authority.port);
            drop(tokio::net::TcpStream::connect(authority).await?);
            uri.query.frame_max.get_or_insert(FRAME_MAX);
            Connection::connect_uri(uri, props).await
        }
        // lapin's own error for the URL.
        Err(_) => Connection::connect(url, props).await,
    }
}

/// Where tasks are queued; cheap to clone.
#[derive(Debug, Clone)]
pub enum Queue {
    /// RabbitMQ.
    Amqp(Arc<AmqpQueue>),
    /// A queue inside this process, for `--standalone`.
    Local(LocalQueue),
}

impl Queue {
    /// A classic RabbitMQ queue; nothing connects until first use.
    pub fn amqp(url: &str, name: &str) -> Self {
        Self::amqp_typed(url, name, QueueType::Classic, 1)
    }

    /// The RabbitMQ queue a configuration names, of its `queue_type`,
    /// its messages naming up to `message_tasks` tasks.
    pub fn from_config(config: &crate::Config) -> Self {
        Self::Amqp(Arc::new(AmqpQueue::new(
            &config.broker_url,
            &config.queue,
            config.queue_type,
            config.delivery_limit,
            config.message_tasks,
        )))
    }

    /// A RabbitMQ queue of `queue_type`; `delivery_limit` is used by quorum
    /// queues only. Nothing connects until first use.
    pub fn amqp_typed(url: &str, name: &str, queue_type: QueueType, delivery_limit: u32) -> Self {
        Self::Amqp(Arc::new(AmqpQueue::new(
            url,
            name,
            queue_type,
            delivery_limit,
            MESSAGE_TASKS,
        )))
    }

    /// Declares the queue now (RabbitMQ only). A process calls it at start,
    /// so that a queue of another type fails the start with
    /// [`BrokerError::QueueMismatch`] instead of every publish.
    pub async fn declare(&self) -> Result<(), BrokerError> {
        match self {
            Self::Amqp(queue) => queue.publisher().await.map(drop),
            Self::Local(_) => Ok(()),
        }
    }

    /// Whether the broker answers: the publishing connection is open, or
    /// one opens now (and declares the queue). The in-process queue always
    /// answers. Callers bound the wait: a broker that drops packets makes a
    /// connect hang until the system gives up.
    pub async fn ping(&self) -> Result<(), BrokerError> {
        match self {
            Self::Amqp(queue) => queue.publisher().await.map(drop),
            Self::Local(_) => Ok(()),
        }
    }

    /// How many messages wait in `<queue>.dead` (a passive declare on a
    /// channel of its own, so that the publishing channel is never closed
    /// by it); `None` for the in-process queue, which has none.
    pub async fn dead_letter_depth(&self) -> Result<Option<u32>, BrokerError> {
        match self {
            Self::Amqp(queue) => queue.dead_letter_depth().await.map(Some),
            Self::Local(_) => Ok(None),
        }
    }

    /// How many messages are ready in the task queue: not delivered to a
    /// consumer, or given back (a consumer's unacknowledged deliveries are
    /// not counted). RabbitMQ answers it to a queue declare, made on a
    /// channel of its own with the arguments every process declares the
    /// queue with, so that a deleted queue is declared again (and counts
    /// 0) rather than failing every count until a worker reconnects. The
    /// in-process queue counts what was sent and not yet received.
    pub async fn depth(&self) -> Result<u64, BrokerError> {
        match self {
            Self::Amqp(queue) => queue.depth().await.map(u64::from),
            Self::Local(queue) => Ok(queue.ready.load(Ordering::Acquire) as u64),
        }
    }

    /// Whether this is the in-process queue: its publish cannot fail while
    /// the process lives, and it does not outlive the process.
    pub fn is_local(&self) -> bool {
        matches!(self, Self::Local(_))
    }

    /// A new in-process queue.
    pub fn local() -> Self {
        let (sender, receiver) = mpsc::unbounded_channel();
        Self::Local(LocalQueue {
            sender,
            receiver: Arc::new(Mutex::new(receiver)),
            ready: Arc::new(AtomicUsize::new(0)),
            control: crate::control::local_channel(),
            events: crate::hints::local_channel(),
        })
    }

    /// Publishes the tasks, up to `message_tasks` to a message (the
    /// in-process queue: [`MESSAGE_TASKS`]), and returns
    /// once the broker has confirmed every message (persisted, for
    /// RabbitMQ). Confirms are awaited together, not one publish at a time.
    pub async fn publish(&self, ids: &[TaskId]) -> Result<(), BrokerError> {
        match self {
            Self::Amqp(queue) => queue.publish(ids).await,
            Self::Local(queue) => {
                for ids in ids.chunks(MESSAGE_TASKS) {
                    queue.send(encode(ids), ids.len())?;
                }
                Ok(())
            }
        }
    }

    /// The most tasks `depth` ready messages of this queue can name: the
    /// relay's bound on what the queue holds. The in-process queue counts
    /// tasks, so its depth is exact; a RabbitMQ message names up to
    /// [`MESSAGE_TASKS`], whatever this process's `message_tasks` (other
    /// processes may publish fuller messages).
    pub fn tasks_in(&self, depth: u64) -> u64 {
        match self {
            Self::Amqp(_) => depth.saturating_mul(MESSAGE_TASKS as u64),
            Self::Local(_) => depth,
        }
    }

    /// Starts consuming, with at most `prefetch` unacknowledged deliveries.
    pub async fn consume(&self, prefetch: u16, tag: &str) -> Result<Consumer, BrokerError> {
        match self {
            Self::Amqp(queue) => bounded(queue.consume(prefetch, tag)).await,
            Self::Local(queue) => Ok(Consumer::Local(queue.clone())),
        }
    }
}

/// A durable RabbitMQ queue with a dead-letter queue beside it.
#[derive(Debug)]
pub struct AmqpQueue {
    pub(crate) url: String,
    pub(crate) name: String,
    queue_type: QueueType,
    delivery_limit: u32,
    /// Tasks one message names, at most (`message_tasks`).
    message_tasks: usize,
    publisher: Mutex<Option<(Connection, Channel)>>,
}

impl AmqpQueue {
    fn new(
        url: &str,
        name: &str,
        queue_type: QueueType,
        delivery_limit: u32,
        message_tasks: usize,
    ) -> Self {
        Self {
            url: url.into(),
            name: name.into(),
            queue_type,
            delivery_limit,
            message_tasks: message_tasks.clamp(1, MESSAGE_TASKS),
            publisher: Mutex::new(None),
        }
    }

    /// The dead-letter queue's name: where unreadable messages go.
    pub fn dead_letter_name(name: &str) -> String {
        format!("{name}.dead")
    }

    async fn open(&self, purpose: &str) -> Result<(Connection, Channel), BrokerError> {
        bounded(self.open_unbounded(purpose)).await
    }

    async fn open_unbounded(&self, purpose: &str) -> Result<(Connection, Channel), BrokerError> {
        let name = format!("ferry-{purpose}-{}", std::process::id());
        let connection = connect(&self.url, name).await?;
        let channel = connection.create_channel().await?;
        let dead = Self::dead_letter_name(&self.name);
        let (dead_args, args) = self.arguments();
        let mismatch = |e: lapin::Error| match e.kind() {
            lapin::ErrorKind::ProtocolError(amqp)
                if amqp.kind()
                    == &lapin::protocol::AMQPErrorKind::Soft(
                        lapin::protocol::AMQPSoftError::PRECONDITIONFAILED,
                    ) =>
            {
                BrokerError::QueueMismatch {
                    queue: self.name.clone(),
                    wanted: self.queue_type.as_str(),
                    reason: amqp.get_message().to_string(),
                }
            }
            _ => BrokerError::Unavailable(e),
        };
        // Durable, and neither exclusive nor auto-deleted: the only kind a
        // quorum queue can be.
        channel
            .queue_declare(
                dead.as_str().into(),
                QueueDeclareOptions::durable(),
                dead_args,
            )
            .await
            .map_err(mismatch)?;
        channel
            .queue_declare(
                self.name.as_str().into(),
                QueueDeclareOptions::durable(),
                args,
            )
            .await
            .map_err(mismatch)?;
        Ok((connection, channel))
    }

    /// The declare arguments of the dead-letter queue and of the task
    /// queue. Rejected messages (and, on a quorum queue, a message delivered
    /// more than `delivery_limit` times after its first delivery) go to
    /// `<queue>.dead` through the default exchange, at most once (RabbitMQ's
    /// default dead-letter strategy, the one classic queues have).
    fn arguments(&self) -> (FieldTable, FieldTable) {
        let dead = Self::dead_letter_name(&self.name);
        let mut dead_args = FieldTable::default();
        let mut args = FieldTable::default();
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString("".into()),
        );
        args.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(dead.as_str().into()),
        );
        if self.queue_type == QueueType::Quorum {
            for table in [&mut dead_args, &mut args] {
                table.insert(
                    "x-queue-type".into(),
                    AMQPValue::LongString("quorum".into()),
                );
            }
            args.insert(
                "x-delivery-limit".into(),
                AMQPValue::LongLongInt(i64::from(self.delivery_limit)),
            );
        }
        (dead_args, args)
    }

    /// The shared publishing channel, reconnecting if it broke.
    pub(crate) async fn publisher(&self) -> Result<Channel, BrokerError> {
        let mut slot = self.publisher.lock().await;
        if let Some((connection, channel)) = slot.as_ref() {
            if connection.status().connected() && channel.status().connected() {
                return Ok(channel.clone());
            }
        }
        *slot = None;
        let (connection, channel) = self.open("publisher").await?;
        bounded(async {
            Ok(channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?)
        })
        .await?;
        *slot = Some((connection, channel.clone()));
        Ok(channel)
    }

    /// A channel of its own on the publishing connection: a declare that
    /// fails closes it, never the publishing channel.
    async fn side_channel(&self) -> Result<Channel, BrokerError> {
        self.publisher().await?;
        let slot = self.publisher.lock().await;
        match slot.as_ref() {
            Some((connection, _)) => Ok(connection.create_channel().await?),
            None => Err(BrokerError::Closed),
        }
    }

    async fn dead_letter_depth(&self) -> Result<u32, BrokerError> {
        bounded(self.dead_letter_depth_unbounded()).await
    }

    async fn dead_letter_depth_unbounded(&self) -> Result<u32, BrokerError> {
        let channel = self.side_channel().await?;
        let dead = Self::dead_letter_name(&self.name);
        let declared = channel
            .queue_declare(
                dead.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await;
        let _ = channel.close(200, "counted".into()).await;
        Ok(declared?.message_count())
    }

    /// See [`Queue::depth`]: the declare `open` makes, whose answer
    /// carries the ready count.
    async fn depth(&self) -> Result<u32, BrokerError> {
        bounded(self.depth_unbounded()).await
    }

    async fn depth_unbounded(&self) -> Result<u32, BrokerError> {
        let channel = self.side_channel().await?;
        let (_, args) = self.arguments();
        let declared = channel
            .queue_declare(
                self.name.as_str().into(),
                QueueDeclareOptions::durable(),
                args,
            )
            .await;
        let _ = channel.close(200, "counted".into()).await;
        Ok(declared?.message_count())
    }

    async fn publish(&self, ids: &[TaskId]) -> Result<(), BrokerError> {
        let channel = self.publisher().await?;
        let result = bounded(self.publish_on(&channel, ids)).await;
        if let Err(BrokerError::Unavailable(_) | BrokerError::Timeout(_)) = &result {
            // Drop a broken (or silent) connection so the next publish
            // opens a new one.
            let mut slot = self.publisher.lock().await;
            if slot.as_ref().is_some_and(|(_, c)| c.id() == channel.id()) {
                if let Some((connection, _)) = slot.take() {
                    let _ = connection.close(200, "reconnecting".into()).await;
                }
            }
        }
        result
    }

    async fn publish_on(&self, channel: &Channel, ids: &[TaskId]) -> Result<(), BrokerError> {
        let mut confirms = Vec::with_capacity(ids.len().div_ceil(self.message_tasks));
        for ids in ids.chunks(self.message_tasks) {
            let body = encode(ids);
            // The first task's id names the message.
            let properties = BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("text/plain".into())
                .with_message_id(ids[0].to_string().into());
            let confirm = channel
                .basic_publish(
                    "".into(),
                    self.name.as_str().into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    &body,
                    properties,
                )
                .await?;
            confirms.push((ids[0], confirm));
        }
        let messages = confirms.len() as u64;
        for (id, confirm) in confirms {
            let confirmation = confirm.await?;
            if !confirmation.is_ack() || confirmation.take_message().is_some() {
                return Err(BrokerError::Refused(id));
            }
        }
        metrics::counter!(crate::metrics::MESSAGES_PUBLISHED).increment(messages);
        metrics::counter!(crate::metrics::MESSAGE_TASKS_PUBLISHED).increment(ids.len() as u64);
        Ok(())
    }

    async fn consume(&self, prefetch: u16, tag: &str) -> Result<Consumer, BrokerError> {
        let (connection, channel) = self.open("worker").await?;
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await?;
        let consumer = channel
            .basic_consume(
                self.name.as_str().into(),
                tag.into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        // A settlement that cannot be sent gives the channel up: closed,
        // its status tells the worker to consume again (its unsettled
        // deliveries go to the other consumers).
        let closing = channel.clone();
        let settler = Settler::spawn(move || {
            tokio::spawn(async move {
                let reason = "a settlement was not sent in time";
                let _ = bounded(async { Ok(closing.close(200, reason.into()).await?) }).await;
            });
        });
        Ok(Consumer::Amqp {
            _connection: Box::new(connection),
            channel: Box::new(channel),
            consumer: Box::new(consumer),
            settler,
        })
    }
}

/// A message of the in-process queue: its body, and the number of tasks
/// it names.
type LocalMessage = (Vec<u8>, usize);

/// An in-process queue: the standalone mode's broker.
#[derive(Debug, Clone)]
pub struct LocalQueue {
    sender: mpsc::UnboundedSender<LocalMessage>,
    receiver: Arc<Mutex<mpsc::UnboundedReceiver<LocalMessage>>>,
    /// Tasks sent and not yet received: counted up before a send and
    /// down after a receive, so never less than the channel holds.
    ready: Arc<AtomicUsize>,
    /// Control messages (cancels) to this process's workers.
    pub(crate) control: tokio::sync::broadcast::Sender<crate::control::CancelRequest>,
    /// Hints of state changes to this process's api.
    pub(crate) events: tokio::sync::broadcast::Sender<Arc<[crate::hints::Change]>>,
}

impl LocalQueue {
    /// Sends a message naming `tasks` tasks.
    fn send(&self, payload: Vec<u8>, tasks: usize) -> Result<(), BrokerError> {
        self.ready.fetch_add(tasks, Ordering::AcqRel);
        self.sender.send((payload, tasks)).map_err(|_| {
            self.ready.fetch_sub(tasks, Ordering::AcqRel);
            BrokerError::Closed
        })
    }
}

/// A stream of deliveries.
#[derive(Debug)]
pub enum Consumer {
    /// From RabbitMQ; the connection lives as long as the consumer.
    Amqp {
        /// Keeps the consumer's connection open.
        _connection: Box<Connection>,
        /// The consumer's channel.
        channel: Box<Channel>,
        /// lapin's consumer.
        consumer: Box<lapin::Consumer>,
        /// Sends the channel's settlements, acks in runs (see `acks.rs`).
        settler: Settler,
    },
    /// From the in-process queue.
    Local(LocalQueue),
}

/// How often a worker looks at its consumer's channel while it waits for
/// something else ([`ConsumerHealth::lost`]).
pub const CONSUMER_CHECK: Duration = Duration::from_secs(1);

/// Whether a consumer's channel is still open, seen without the consumer
/// (which its stream borrows): cheap to clone.
#[derive(Clone)]
pub struct ConsumerHealth(Option<lapin::ChannelStatus>);

impl std::fmt::Debug for ConsumerHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ConsumerHealth")
            .field(&self.is_open())
            .finish()
    }
}

impl ConsumerHealth {
    /// The channel is open (always, for the in-process queue).
    pub fn is_open(&self) -> bool {
        self.0.as_ref().is_none_or(lapin::ChannelStatus::connected)
    }

    /// Ends once the channel is no longer open, looked at every
    /// [`CONSUMER_CHECK`]; never for the in-process queue. For a worker
    /// whose slots are all taken: it reads the consumer's stream, where a
    /// closed channel shows, only when a slot is free.
    pub async fn lost(&self) {
        if self.0.is_none() {
            return std::future::pending().await;
        }
        while self.is_open() {
            tokio::time::sleep(CONSUMER_CHECK).await;
        }
    }
}

impl Consumer {
    /// Whether its channel is still open, for as long as it is looked at.
    pub fn health(&self) -> ConsumerHealth {
        match self {
            Self::Amqp { channel, .. } => ConsumerHealth(Some(channel.status().clone())),
            Self::Local(_) => ConsumerHealth(None),
        }
    }

    /// Asks the broker to stop delivering; unsettled deliveries stay ours.
    pub async fn cancel(&mut self) {
        if let Self::Amqp {
            channel, consumer, ..
        } = self
        {
            let cancel = channel.basic_cancel(consumer.tag(), BasicCancelOptions::default());
            if let Err(e) = cancel.await {
                tracing::warn!(error = %e, "could not cancel the consumer");
            }
        }
    }

    /// The next delivery; `None` when the consumer was cancelled or closed.
    pub async fn next(&mut self) -> Option<Result<Delivery, BrokerError>> {
        match self {
            Self::Amqp {
                consumer, settler, ..
            } => {
                let delivery = consumer.next().await?;
                Some(delivery.map_err(BrokerError::from).map(|d| {
                    // Before the delivery is handed out, so that no ack
                    // with `multiple` can cover it unsettled.
                    settler.delivered(d.delivery_tag);
                    Delivery {
                        payload: d.data,
                        redelivered: d.redelivered,
                        acker: Acker::Amqp {
                            tag: d.delivery_tag,
                            acker: d.acker,
                            settler: settler.clone(),
                        },
                    }
                }))
            }
            Self::Local(queue) => {
                let (payload, tasks) = queue.receiver.lock().await.recv().await?;
                queue.ready.fetch_sub(tasks, Ordering::AcqRel);
                Some(Ok(Delivery {
                    payload,
                    redelivered: false,
                    acker: Acker::Local(queue.clone(), tasks),
                }))
            }
        }
    }
}

#[derive(Debug)]
enum Acker {
    Amqp {
        tag: u64,
        acker: lapin::Acker,
        settler: Settler,
    },
    /// The queue, and the tasks the message names (counted again when it
    /// is given back).
    Local(LocalQueue, usize),
}

impl Acker {
    /// Settles a RabbitMQ delivery through its channel's settler. The
    /// in-process queue has nothing to settle: its message left the queue
    /// when it was received (a requeue sends it again).
    async fn settle(&self, how: How) -> Result<(), BrokerError> {
        if let Self::Amqp {
            tag,
            acker,
            settler,
        } = self
        {
            settler.settle(*tag, acker.clone(), how).await?;
        }
        Ok(())
    }
}

/// One message, to be settled exactly once with ack, requeue or dead-letter.
#[derive(Debug)]
pub struct Delivery {
    /// The message body: task ids (see [`decode`]).
    pub payload: Vec<u8>,
    /// Whether the broker delivered it before.
    pub redelivered: bool,
    acker: Acker,
}

impl Delivery {
    /// The task ids the message names (see [`decode`]).
    pub fn task_ids(&self) -> Option<Vec<TaskId>> {
        decode(&self.payload)
    }

    /// Done with: the broker forgets the message.
    pub async fn ack(self) -> Result<(), BrokerError> {
        self.acker.settle(How::Ack).await
    }

    /// Not done: the broker delivers it again.
    pub async fn requeue(self) -> Result<(), BrokerError> {
        match &self.acker {
            Acker::Local(queue, tasks) => queue.send(self.payload, *tasks),
            amqp => amqp.settle(How::Requeue).await,
        }
    }

    /// Unreadable: moved to the dead-letter queue instead of looping.
    pub async fn dead_letter(self) -> Result<(), BrokerError> {
        self.acker.settle(How::DeadLetter).await
    }
}

/// Declares the exchange `exchange` of `kind` (not durable: what it carries
/// is best effort, and every process declares it again on connect).
pub(crate) async fn declare_exchange(
    channel: &Channel,
    exchange: &str,
    kind: lapin::ExchangeKind,
) -> Result<(), BrokerError> {
    channel
        .exchange_declare(
            exchange.into(),
            kind,
            lapin::options::ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(())
}

/// A process's own subscription to the exchange `exchange` of `kind`: a
/// connection named `connection_name`, an exclusive, auto-deleted queue
/// bound with `binding`, consumed without acks. The connection must live as
/// long as the consumer.
pub(crate) async fn subscribe_exclusive(
    url: &str,
    connection_name: String,
    exchange: &str,
    kind: lapin::ExchangeKind,
    binding: &str,
    tag: &str,
) -> Result<(Connection, lapin::Consumer), BrokerError> {
    bounded(async {
        let connection = connect(url, connection_name).await?;
        let channel = connection.create_channel().await?;
        declare_exchange(&channel, exchange, kind).await?;
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
                exchange.into(),
                binding.into(),
                lapin::options::QueueBindOptions::default(),
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
        Ok((connection, consumer))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The in-process queue's depth: tasks sent and not yet received, a
    /// message given back counted again.
    #[tokio::test]
    async fn the_local_queue_counts_what_waits_in_it() {
        let queue = Queue::local();
        assert_eq!(queue.depth().await.unwrap(), 0);
        let ids = [TaskId::new(), TaskId::new(), TaskId::new()];
        queue.publish(&ids).await.unwrap();
        queue.publish(&ids[..1]).await.unwrap();
        assert_eq!(queue.depth().await.unwrap(), 4);
        let mut consumer = queue.consume(1, "test").await.unwrap();
        let delivery = consumer.next().await.unwrap().unwrap();
        assert_eq!(delivery.task_ids(), Some(ids.to_vec()));
        assert_eq!(queue.depth().await.unwrap(), 1);
        delivery.requeue().await.unwrap();
        assert_eq!(queue.depth().await.unwrap(), 4);
        let alone = consumer.next().await.unwrap().unwrap();
        assert_eq!(alone.task_ids(), Some(vec![ids[0]]));
        alone.ack().await.unwrap();
        assert_eq!(queue.depth().await.unwrap(), 3);
    }

    /// A message of one id is the id alone (what every process wrote
    /// before messages carried several); more go one per line, at most
    /// `MESSAGE_TASKS`, and anything else is unreadable.
    #[test]
    fn bodies_name_their_tasks_one_per_line() {
        let ids: Vec<TaskId> = (0..MESSAGE_TASKS + 1).map(|_| TaskId::new()).collect();
        assert_eq!(encode(&ids[..1]), ids[0].to_string().into_bytes());
        assert_eq!(decode(ids[0].to_string().as_bytes()), Some(vec![ids[0]]));
        let full = &ids[..MESSAGE_TASKS];
        assert_eq!(decode(&encode(full)), Some(full.to_vec()));
        let two = format!("{}\n{}", ids[0], ids[1]);
        assert_eq!(encode(&ids[..2]), two.as_bytes());
        // Read leniently: surrounding blanks, a repeated id.
        let loose = format!(" {}\r\n{}\n{}\n", ids[0], ids[1], ids[0]);
        assert_eq!(decode(loose.as_bytes()), Some(ids[..2].to_vec()));
        assert_eq!(decode(&encode(&ids)), None, "more than MESSAGE_TASKS");
        for bad in [
            &b""[..],
            b"not a task id",
            b"\xff\xfe",
            format!("{}\n\n{}", ids[0], ids[1]).as_bytes(),
            format!("{}\nnope", ids[0]).as_bytes(),
            format!("{}\0", ids[0]).as_bytes(),
        ] {
            assert_eq!(decode(bad), None, "{bad:?}");
        }
    }
}
