//! Ferry's worker: consumes task ids from the queue (a message names one
//! or several tasks), claims each task in the database, runs the handler
//! its event type is routed to, records the outcome, and only then, once
//! every task the message names is recorded, acknowledges the message.
//!
//! - A claim is a compare-and-set (`pending`/`retrying` → `running`), so of
//!   any number of workers and duplicate deliveries exactly one runs an
//!   attempt; the others acknowledge the message without running anything.
//! - A running attempt holds a lease that the worker renews; if the worker
//!   dies, the relay takes the task back when the lease runs out. A worker
//!   that lost its lease cannot record an outcome over the newer attempt.
//! - A failed attempt is retried with exponential backoff and jitter, up to
//!   the route's `max_attempts`.

pub mod handlers;
pub mod http;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use ferry_core::batch::Batcher;
use ferry_core::broker::{Delivery, Queue};
use ferry_core::control::CancelRequest;
use ferry_core::db::{DbError, DbResult, Lease};
use ferry_core::hints::Hints;
use ferry_core::metrics::{Finish, TaskMetrics, TypeMetrics, WorkerMetrics, UNROUTED};
use ferry_core::retry::RetryPolicy;
use ferry_core::task::{AttemptRef, AttemptWrite, AttemptWritten, Claimed, Outcome};
use ferry_core::{storable, Config, Db, TaskId, TaskStatus};
use futures_util::FutureExt;
use rand::Rng;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::handlers::{HandlerError, Handlers, TaskContext};

/// Claims (and outcomes) that share one transaction, at most.
const BATCH: usize = 256;

/// A worker process's shared state.
#[derive(Debug)]
struct Worker {
    /// Group commit of claims and outcomes, together in one transaction.
    writes: Batcher<AttemptWrite, DbResult<AttemptWritten>>,
    /// Attempts running now, handed back if the drain timeout passes; each
    /// with the token a cancel of its task cancels, and its type's metrics.
    attempts: std::sync::Mutex<std::collections::HashMap<TaskId, RunningAttempt>>,
    config: Config,
    db: Db,
    name: String,
    handlers: Handlers,
    /// Hints of the changes this worker makes, to the api processes.
    hints: Hints,
    /// Started and finished attempts, by route type.
    metrics: TaskMetrics,
    /// Running tasks, free slots and dead-lettered messages of this worker.
    gauges: WorkerMetrics,
}

/// An attempt this worker runs.
#[derive(Debug)]
struct RunningAttempt {
    attempt: i32,
    cancel: CancellationToken,
    metrics: Arc<TypeMetrics>,
}

/// Moves one of the worker's gauges by `by` while it lives (so a task
/// aborted on shutdown still gives its slot back).
#[derive(Debug)]
struct Held {
    gauge: metrics::Gauge,
    by: f64,
}

impl Held {
    fn new(gauge: &metrics::Gauge, by: f64) -> Self {
        gauge.increment(by);
        Self {
            gauge: gauge.clone(),
            by,
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.gauge.decrement(self.by);
    }
}

/// A name for this worker that is unique across hosts and restarts.
pub fn worker_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    let suffix: u32 = rand::rng().random();
    format!("{host}-{}-{suffix:08x}", std::process::id())
}

/// Consumes and runs tasks until `shutdown` is cancelled, then stops taking
/// messages and lets running tasks finish (within `drain_timeout`).
pub async fn run(
    config: Config,
    db: Db,
    queue: Queue,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    ferry_core::metrics::install();
    let name = worker_name();
    let (write_db, claimer, lease) = (db.clone(), name.clone(), config.lease);
    let writes = Batcher::spawn_writes(
        "attempt",
        BATCH,
        db.clone(),
        move |writes: Vec<AttemptWrite>| {
            let until = Utc::now() + lease;
            DbError::isolate("attempt", &writes, |writes| {
                write_db.write_attempts(writes, &claimer, until)
            })
        },
    );
    let gauges = WorkerMetrics::new(&name);
    gauges.free_slots.set(config.concurrency as f64);
    gauges.running.set(0.0);
    let worker = Arc::new(Worker {
        writes,
        attempts: Default::default(),
        metrics: TaskMetrics::default(),
        gauges,
        name,
        handlers: Handlers::new(config.exec_concurrency),
        hints: Hints::spawn(&queue),
        config,
        db,
    });
    let concurrency = worker.config.concurrency;
    let permits = Arc::new(Semaphore::new(concurrency));
    let mut running = JoinSet::new();
    tracing::info!(
        worker = %worker.name,
        concurrency,
        exec_concurrency = worker.config.exec_concurrency,
        queue = %worker.config.queue,
        broker_url = %ferry_core::logging::redact_url(&worker.config.broker_url),
        "worker started"
    );
    let control = tokio::spawn(listen_for_cancels(
        worker.clone(),
        queue.clone(),
        shutdown.clone(),
    ));
    let mut backoff = RetryPolicy::RECONNECT.backoff();
    // The consumer stays open while running tasks drain, so they can still ack.
    let mut draining = None;
    let mut fatal = None;
    'connect: while !shutdown.is_cancelled() {
        let prefetch = u16::try_from(concurrency).unwrap_or(u16::MAX);
        let mut consumer = match queue.consume(prefetch, &worker.name).await {
            Ok(consumer) => {
                backoff.reset();
                consumer
            }
            Err(e) if e.is_fatal() => {
                // A configuration error: drain what runs, then stop with it.
                fatal = Some(e);
                break 'connect;
            }
            Err(e) => {
                let wait = backoff.next_wait();
                tracing::warn!(error = %e, retry_in = ?wait, "cannot consume; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => break 'connect,
                    () = tokio::time::sleep(wait) => continue 'connect,
                }
            }
        };
        // A channel closed while every slot is taken shows in the stream
        // only once a slot frees, which a long task may take minutes to
        // do: it is watched meanwhile, so the worker consumes again (and
        // the broker hands what the closed channel held to the others)
        // while its tasks still run.
        let health = consumer.health();
        loop {
            // Take a message only when a slot is free, so a busy worker
            // leaves the rest of the queue to the other replicas.
            // Biased: a slot free at once is taken without arming the
            // watch's timer.
            let permit = tokio::select! {
                biased;
                () = shutdown.cancelled() => SlotWait::Stop,
                permit = permits.clone().acquire_owned() => SlotWait::Free(permit.expect("semaphore is never closed")),
                () = health.lost() => SlotWait::Lost,
            };
            let permit = match permit {
                SlotWait::Free(permit) => permit,
                SlotWait::Stop => {
                    draining = Some(consumer);
                    break 'connect;
                }
                SlotWait::Lost => {
                    tracing::warn!(
                        "the consumer's channel closed while every slot was taken; reconnecting"
                    );
                    break;
                }
            };
            let delivery = tokio::select! {
                () = shutdown.cancelled() => None,
                delivery = consumer.next() => Some(delivery),
            };
            let Some(delivery) = delivery else {
                draining = Some(consumer);
                break 'connect;
            };
            match delivery {
                Some(Ok(delivery)) => {
                    // A slot for each task the message names, each handed
                    // to the delivery's handling as soon as it is free, so
                    // its first tasks run meanwhile; no other message is
                    // taken before each has one.
                    let ids = delivery.task_ids();
                    let tasks = ids.as_ref().map_or(1, Vec::len);
                    let (slots, taken) = mpsc::unbounded_channel();
                    running.spawn(worker.clone().handle(delivery, ids, taken));
                    let _ = slots.send(permit);
                    for _ in 1..tasks {
                        let permit = tokio::select! {
                            biased;
                            // The tasks left without a slot stay with the
                            // message, which is given back.
                            () = shutdown.cancelled() => break,
                            permit = permits.clone().acquire_owned() => permit.expect("semaphore is never closed"),
                        };
                        let _ = slots.send(permit);
                    }
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "consumer failed; reconnecting");
                    break;
                }
                None => {
                    tracing::warn!("consumer was cancelled; reconnecting");
                    break;
                }
            }
            while let Some(done) = running.try_join_next() {
                log_join(done);
            }
        }
        // Messages held by the dropped consumer go back to the queue.
    }
    if let Some(consumer) = &mut draining {
        // No new deliveries while the running tasks finish.
        consumer.cancel().await;
    }
    // Settle what already ended, so the count below is what still runs.
    while let Some(done) = running.try_join_next() {
        log_join(done);
    }
    tracing::info!(
        tasks = running.len(),
        "worker stopping; waiting for running tasks to finish"
    );
    let drain = async {
        while let Some(done) = running.join_next().await {
            log_join(done);
        }
    };
    if tokio::time::timeout(worker.config.drain_timeout, drain)
        .await
        .is_err()
    {
        running.abort_all();
        let abandoned: Vec<AttemptRef> = worker
            .attempts
            .lock()
            .expect("not poisoned")
            .drain()
            .map(|(id, running)| {
                running.metrics.finished(Finish::HandedBack).increment(1);
                id.attempt(running.attempt)
            })
            .collect();
        tracing::warn!(
            tasks = abandoned.len(),
            "drain timeout passed; handing running tasks back"
        );
        for attempt in abandoned {
            let outcome =
                Outcome::HandedBack("the worker shut down before the attempt finished".into());
            let span = tracing::info_span!("task", task = %attempt.task, attempt = attempt.attempt);
            if !worker.record(attempt, &outcome).instrument(span).await {
                tracing::error!(task = %attempt.task, "could not hand the task back; its lease will");
            }
        }
    }
    drop(draining);
    control.abort();
    match fatal {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

/// A slot of the worker's, held while one task is handled.
type Slot = tokio::sync::OwnedSemaphorePermit;

/// What a delivery is settled with once its tasks are done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Settle {
    /// Every task it names is recorded, or not this message's to run.
    Ack,
    /// A task it names was not claimed or its outcome not recorded: the
    /// broker delivers the message again (its recorded tasks are then not
    /// claimable, and acknowledged without running).
    Requeue,
}

/// How the consumer loop's wait for a free slot ended.
enum SlotWait {
    Free(tokio::sync::OwnedSemaphorePermit),
    /// Shutdown.
    Stop,
    /// The consumer's channel closed.
    Lost,
}

/// Set (to anything but empty or `0`) in tests only: the worker does not
/// subscribe to control messages, so a cancel reaches it only through its
/// lease renewal (the fallback path).
pub const IGNORE_CONTROL_ENV: &str = "FERRY_TEST_IGNORE_CONTROL";

/// How often a running attempt renews its lease, and so how long a cancel
/// whose control message was lost takes to stop it: a third of the lease,
/// at most this.
pub const CANCEL_CHECK: Duration = Duration::from_secs(1);

/// Hears cancels (control messages) until `shutdown`, resubscribing when the
/// subscription breaks, and cancels the attempt of each cancelled task this
/// worker runs.
async fn listen_for_cancels(worker: Arc<Worker>, queue: Queue, shutdown: CancellationToken) {
    if std::env::var(IGNORE_CONTROL_ENV).is_ok_and(|v| !v.is_empty() && v != "0") {
        tracing::warn!(
            "{IGNORE_CONTROL_ENV} is set: cancels reach this worker only at lease renewals"
        );
        return;
    }
    let mut backoff = RetryPolicy::RECONNECT.backoff();
    while !shutdown.is_cancelled() {
        let mut cancels = match queue
            .subscribe_cancels(&format!("{}-control", worker.name))
            .await
        {
            Ok(cancels) => {
                backoff.reset();
                cancels
            }
            Err(e) => {
                let wait = backoff.next_wait();
                tracing::warn!(error = %e, retry_in = ?wait, "cannot subscribe to cancels; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(wait) => continue,
                }
            }
        };
        loop {
            let next = tokio::select! {
                () = shutdown.cancelled() => return,
                next = cancels.next() => next,
            };
            match next {
                Ok(request) => worker.cancel(request),
                Err(e) => {
                    tracing::warn!(error = %e, "cancel subscription broke; resubscribing");
                    break;
                }
            }
        }
    }
}

fn log_join(done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done {
        tracing::error!(error = %e, "a task's processing ended abnormally");
    }
}

impl Worker {
    /// Settles one delivery, whose body named `ids`: runs each task (claim,
    /// run, record) in a slot of its own as `slots` hands them over, then
    /// acks the message, or requeues it if a task was not claimed or
    /// recorded, or got no slot before shutdown.
    async fn handle(
        self: Arc<Self>,
        delivery: Delivery,
        ids: Option<Vec<TaskId>>,
        mut slots: mpsc::UnboundedReceiver<Slot>,
    ) {
        let Some(ids) = ids else {
            let slot = (slots.recv().await, Held::new(&self.gauges.free_slots, -1.0));
            tracing::warn!(payload = %String::from_utf8_lossy(&delivery.payload), "unreadable message; dead-lettering it");
            self.gauges.unreadable.increment(1);
            settle(delivery.dead_letter().await);
            drop(slot);
            return;
        };
        let mut verdict = Settle::Ack;
        if let [id] = ids[..] {
            verdict = match slots.recv().await {
                Some(slot) => Arc::clone(&self).run_in_slot(id, slot).await,
                None => Settle::Requeue,
            };
        } else {
            let mut tasks = JoinSet::new();
            for id in ids {
                let Some(slot) = slots.recv().await else {
                    verdict = Settle::Requeue;
                    break;
                };
                tasks.spawn(Arc::clone(&self).run_in_slot(id, slot));
            }
            while let Some(done) = tasks.join_next().await {
                verdict = verdict.max(done.unwrap_or_else(|e| {
                    tracing::error!(error = %e, "a task's processing ended abnormally");
                    Settle::Requeue
                }));
            }
        }
        settle(match verdict {
            Settle::Ack => delivery.ack().await,
            Settle::Requeue => delivery.requeue().await,
        });
    }

    /// [`Worker::handle_task`] of task `id`, in its span, holding `slot`.
    async fn run_in_slot(self: Arc<Self>, id: TaskId, slot: Slot) -> Settle {
        let free = Held::new(&self.gauges.free_slots, -1.0);
        // Every line about this task, here and in what it calls, carries
        // its id (and, once claimed, the attempt).
        let span = tracing::info_span!("task", task = %id, attempt = tracing::field::Empty);
        let verdict = self.handle_task(id, span.clone()).instrument(span).await;
        drop((free, slot));
        verdict
    }

    /// Claims, runs and records task `id`, in `span`; what its message is
    /// owed.
    async fn handle_task(&self, id: TaskId, span: tracing::Span) -> Settle {
        let claimed = self.claim(id).await;
        let claimed = match claimed {
            Ok(Some(claimed)) => claimed,
            Ok(None) => {
                // Running elsewhere, finished, cancelled or not yet due: the
                // database, not this message, decides. Nothing runs.
                tracing::debug!("not claimable; acknowledging the duplicate delivery");
                return Settle::Ack;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot claim; returning the message");
                tokio::time::sleep(Duration::from_millis(500)).await;
                return Settle::Requeue;
            }
        };
        span.record("attempt", claimed.attempt);
        let attempt = id.attempt(claimed.attempt);
        let event_type = claimed.event_type.clone();
        self.hints.send(id, Some(&event_type), TaskStatus::Running);
        let metrics = self.metrics.of(self
            .config
            .routes
            .get(&event_type)
            .map_or(UNROUTED, |route| route.event_type.as_str()));
        metrics.started.increment(1);
        let cancelled = CancellationToken::new();
        self.attempts.lock().expect("not poisoned").insert(
            id,
            RunningAttempt {
                attempt: attempt.attempt,
                cancel: cancelled.clone(),
                metrics: metrics.clone(),
            },
        );
        let started = std::time::Instant::now();
        let running = Held::new(&self.gauges.running, 1.0);
        let outcome = self.run_attempt(id, claimed, cancelled).await;
        drop(running);
        metrics.duration.record(started.elapsed().as_secs_f64());
        // Handed back meanwhile (drain timeout): counted there.
        let ours = self
            .attempts
            .lock()
            .expect("not poisoned")
            .remove(&id)
            .is_some();
        let Some(outcome) = outcome else {
            metrics.finished(Finish::Lost).increment(1);
            return Settle::Ack;
        };
        if !self.record(attempt, &outcome).await {
            // Never ack what was not recorded: the lease brings it back.
            metrics.finished(Finish::Lost).increment(1);
            return Settle::Requeue;
        }
        if ours {
            let finish = Finish::of(&outcome);
            metrics.finished(finish).increment(1);
            if finish == Finish::Retrying {
                metrics.retries.increment(1);
            }
        }
        self.hints.send(id, Some(&event_type), outcome.status());
        Settle::Ack
    }

    /// Claims task `id`. While the database cannot be reached, the claim is
    /// retried here, holding the message, for up to one lease: giving the
    /// message back every moment instead would count against a quorum
    /// queue's `delivery_limit` and dead-letter a pending task's message
    /// during a short database outage.
    async fn claim(&self, id: TaskId) -> DbResult<Option<Claimed>> {
        let deadline = tokio::time::Instant::now() + self.config.lease;
        let mut backoff = RetryPolicy {
            base: Duration::from_millis(100),
            ..RetryPolicy::RECONNECT
        }
        .backoff();
        loop {
            let claimed = self.writes.call(AttemptWrite::Claim(id)).await;
            match claimed.unwrap_or_else(batch_lost) {
                Err(e) if e.is_unavailable() && tokio::time::Instant::now() < deadline => {
                    tracing::debug!(error = %e, "cannot claim yet; retrying");
                    tokio::time::sleep(backoff.next_wait()).await;
                }
                Ok(AttemptWritten::Claimed(claimed)) => return Ok(claimed),
                Ok(AttemptWritten::Finished(_)) => return mismatched(),
                Err(e) => return Err(e),
            }
        }
    }

    /// A control message: an attempt of a task was cancelled. Stops it if
    /// this worker runs it — that attempt, not a newer one started since
    /// (the task retried after the cancel, the message late).
    fn cancel(&self, request: CancelRequest) {
        let id = request.task;
        if let Some(running) = self.attempts.lock().expect("not poisoned").get(&id) {
            let attempt = running.attempt;
            if request.stops(attempt) {
                tracing::info!(task = %id, attempt, "cancel requested; stopping the attempt");
                running.cancel.cancel();
            } else {
                tracing::info!(task = %id, attempt, cancelled = ?request.attempt, "a cancel of another attempt; ignored");
            }
        }
    }

    /// Runs the attempt while renewing its lease. `None` if the lease was
    /// lost (the task was taken back); the outcome is then not ours to record.
    /// A cancel (`cancelled`, or the flag seen at a lease renewal) drops the
    /// handler — an `exec` command's whole process group is killed — and
    /// ends the attempt as [`Outcome::Cancelled`].
    async fn run_attempt(
        &self,
        id: TaskId,
        claimed: Claimed,
        cancelled: CancellationToken,
    ) -> Option<Outcome> {
        let Some(route) = self.config.routes.get(&claimed.event_type).cloned() else {
            return Some(Outcome::Failed(format!(
                "no route for event type {:?} in this worker's configuration",
                claimed.event_type
            )));
        };
        let ctx = TaskContext {
            id,
            attempt: claimed.attempt,
            event: &claimed.event,
        };
        tracing::debug!(handler = route.handler.name(), "running");
        let handler =
            std::panic::AssertUnwindSafe(self.handlers.run(&route.handler, route.timeout, ctx))
                .catch_unwind()
                .map(|r| r.unwrap_or_else(|_| Err(HandlerError::fatal("the handler panicked"))));
        let stopped = Outcome::Cancelled("cancelled at a client's request".into());
        let result = tokio::select! {
            result = handler => result,
            () = cancelled.cancelled() => return Some(stopped),
            lease = self.keep_lease(id.attempt(claimed.attempt)) => match lease {
                LeaseEnd::Lost => return None,
                LeaseEnd::CancelRequested => {
                    tracing::info!("cancel found at lease renewal; stopping the attempt");
                    return Some(stopped);
                }
            },
        };
        Some(match result {
            Ok(value) => match storable::check_value("result", &value) {
                Ok(()) => Outcome::Succeeded(value),
                // Deterministic output would fail the same way again: no retry.
                Err(why) => Outcome::Unstorable {
                    error: format!("the handler's output cannot be stored: {why}"),
                    output: storable::escape_value(value),
                },
            },
            Err(HandlerError::Retryable(message)) if claimed.attempt < claimed.max_attempts => {
                Outcome::Retry {
                    run_after: Utc::now()
                        + route
                            .retry
                            .delay(u32::try_from(claimed.attempt).unwrap_or(1)),
                    error: storable::escape_text(&message).into_owned(),
                }
            }
            // Fatal, or retryable with no attempt left.
            Err(HandlerError::Retryable(message) | HandlerError::Fatal(message)) => {
                Outcome::Failed(storable::escape_text(&message).into_owned())
            }
        })
    }

    /// Renews the lease every third of its length, at most every
    /// [`CANCEL_CHECK`]; returns only if it was lost or the task's cancel
    /// was requested.
    async fn keep_lease(&self, attempt: AttemptRef) -> LeaseEnd {
        let lease = self.config.lease;
        loop {
            tokio::time::sleep((lease / 3).min(CANCEL_CHECK)).await;
            let until = Utc::now() + lease;
            match self
                .db
                .run_blocking(move |db| db.renew_lease_or_cancel(attempt, until))
                .await
            {
                Ok(Lease::Held) => {}
                Ok(Lease::CancelRequested) => return LeaseEnd::CancelRequested,
                Ok(Lease::Lost) => {
                    tracing::warn!("lease lost; abandoning the attempt");
                    return LeaseEnd::Lost;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot renew lease; will retry")
                }
            }
        }
    }

    /// Records the outcome, retrying while the database is unavailable for
    /// up to one lease. True once it is recorded (or was not ours to record).
    async fn record(&self, attempt: AttemptRef, outcome: &Outcome) -> bool {
        let deadline = tokio::time::Instant::now() + self.config.lease;
        let mut backoff = RetryPolicy {
            base: Duration::from_millis(100),
            ..RetryPolicy::RECONNECT
        }
        .backoff();
        let mut outcome = outcome.clone();
        loop {
            let recorded = self
                .writes
                .call(AttemptWrite::Finish(attempt, outcome.clone()))
                .await;
            let recorded = recorded
                .unwrap_or_else(batch_lost)
                .and_then(|written| match written {
                    AttemptWritten::Finished(recorded) => Ok(recorded),
                    AttemptWritten::Claimed(_) => mismatched(),
                });
            match recorded {
                Ok(true) => return true,
                Ok(false) => {
                    tracing::warn!("outcome not recorded: the attempt lost its lease");
                    return true;
                }
                Err(DbError::Unavailable(e)) if tokio::time::Instant::now() < deadline => {
                    tracing::warn!(error = %e, "cannot record outcome yet; retrying");
                    tokio::time::sleep(backoff.next_wait()).await;
                }
                // The database refused this result for a reason the checks
                // before it did not foresee (a value over a size limit): the
                // attempt failed, said plainly, rather than left to its lease.
                Err(e @ DbError::Query(_)) if matches!(outcome, Outcome::Succeeded(_)) => {
                    tracing::warn!(error = %e, "the database refused the handler's output; recording the attempt as failed");
                    outcome = Outcome::Failed(format!(
                        "the handler's output could not be stored: {}",
                        storable::escape_text(&e.to_string())
                    ));
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot record outcome; giving the message back");
                    return false;
                }
            }
        }
    }
}

/// Why [`Worker::keep_lease`] stopped holding an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LeaseEnd {
    /// The task was taken back: the outcome is not ours to record.
    Lost,
    /// A client cancelled the task.
    CancelRequested,
}

fn batch_lost<T>() -> DbResult<T> {
    Err(DbError::Unavailable("the database batch failed".into()))
}

/// A claim answered as an outcome or the other way round: a bug in
/// [`ferry_core::Db::write_attempts`], failed like a lost batch.
fn mismatched<T>() -> DbResult<T> {
    debug_assert!(false, "a write was answered as another kind");
    Err(DbError::Batch(
        "a write was answered as another kind".into(),
    ))
}

fn settle(result: Result<(), ferry_core::broker::BrokerError>) {
    if let Err(e) = result {
        // The channel is gone: the broker redelivers, and the claim's
        // compare-and-set keeps the task from running twice.
        tracing::warn!(error = %e, "could not settle a message");
    }
}
