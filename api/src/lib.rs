//! Ferry's HTTP API: `POST /receive` stores an event as a task and queues
//! it; `GET /status/<id>` reports where the task is;
//! `POST /tasks/<id>/cancel` and `/retry` steer it. Built by [`rocket`] so
//! tests and `main` assemble the same application.

pub mod admission;
pub mod auth;
pub mod confirms;
pub mod dashboard;
pub mod error;
pub mod final_views;
pub mod hub;
pub mod listener;
pub mod metrics;
pub mod openapi;
pub mod publisher;
pub mod request_id;
pub mod routes;

use std::sync::Arc;
use std::time::Duration;

use admission::Admission;
pub use admission::Admitted;
use anyhow::Context as _;
use chrono::Utc;
use confirms::HeldConfirms;
use ferry_core::batch::Batcher;
use ferry_core::broker::{BrokerError, Queue};
use ferry_core::db::{DbError, DbResult, Publish};
use ferry_core::hints::Hints;
use ferry_core::metrics::TaskMetrics;
use ferry_core::probe::{CountGauges, Probe};
use ferry_core::task::{NewTask, Stored, SubmitWrite, TaskView};
use ferry_core::{relay, runtime, Config, Db, TaskId};
use listener::GuardedListener;
use rocket::config::LogLevel;
use rocket::{catchers, Build, Rocket};
use tokio_util::sync::CancellationToken;

/// Longest a publish waits for the broker's confirm before leaving the task
/// to the relay.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the API owns the publish of a task it just stored; past that the
/// relay takes it over (the API died between commit and publish).
pub(crate) const PUBLISH_LOCK: Duration = Duration::from_secs(10);

/// Requests whose rows share one insert transaction, at most.
const INSERT_BATCH: usize = 256;

/// `/status` requests answered by one query, at most.
const READ_BATCH: usize = 64;

/// What every request handler shares.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The configuration the process started with.
    pub config: Arc<Config>,
    /// The task database.
    pub db: Db,
    /// Where tasks are queued.
    pub queue: Queue,
    /// Group commit of the tasks of concurrent `/receive` requests, and of
    /// the broker confirms of tasks stored before (`enqueued_at`), in one
    /// transaction (inserts alone: one statement).
    writes: Batcher<SubmitWrite, DbResult<Vec<Stored>>>,
    /// Broker confirms, handed to `writes` a moment after they arrive.
    confirms: HeldConfirms,
    /// Concurrent `/status` reads, answered by one query.
    views: Batcher<TaskId, DbResult<Option<TaskView>>>,
    /// Succeeded tasks' `/status` answers, kept in memory.
    pub final_views: Arc<final_views::FinalViews>,
    /// The one reader of every waiter's task (`?wait=`, `/events`).
    pub hub: hub::Hub,
    /// Hints of the changes this process makes (cancel, retry).
    pub hints: Hints,
    /// `/ready`: the database and the broker answer.
    pub probe: Probe,
    /// The task counts `/metrics` shows, cached.
    pub counts: CountGauges,
    /// Tasks received, by route type.
    pub task_metrics: TaskMetrics,
    /// Publishes off the request path, at most `publish_window` tasks in
    /// flight to the broker: shutdown waits for them.
    publisher: publisher::Publisher,
    /// `/receive` requests waiting for the database: at most the limit
    /// in force, which follows their commits' latency up to `receive_limit`.
    admission: Arc<Admission>,
}

impl AppState {
    /// The state for a process: its batching loops start here.
    pub fn new(config: Arc<Config>, db: Db, queue: Queue) -> Self {
        let write_db = db.clone();
        let local = queue.is_local();
        let confirms = ::metrics::counter!(ferry_core::metrics::CONFIRMS_RECORDED);
        let writes = Batcher::spawn_writes(
            "insert",
            INSERT_BATCH,
            db.clone(),
            move |writes: Vec<SubmitWrite>| {
                let publish = if local {
                    Publish::Enqueued
                } else {
                    Publish::LockedUntil(Utc::now() + PUBLISH_LOCK)
                };
                let written = DbError::isolate("insert", &writes, |writes| {
                    write_db.write_submits(writes, publish)
                });
                for (write, written) in writes.iter().zip(&written) {
                    let SubmitWrite::Confirmed(ids) = write else {
                        continue;
                    };
                    match written {
                        Ok(_) => confirms.increment(ids.len() as u64),
                        // The relay will publish again; the claim's
                        // compare-and-set makes the duplicate message harmless.
                        Err(e) => tracing::warn!(error = %e, "published, but could not record it"),
                    }
                }
                written
            },
        );
        let confirms = HeldConfirms::spawn(writes.clone());
        let admission = Admission::new(config.receive_limit, config.receive_latency_target);
        let publisher = {
            let (queue, db, confirms) = (queue.clone(), db.clone(), confirms.clone());
            // The in-process queue takes a task at once, and its tasks are
            // stored as enqueued: no relay would take them over.
            let (window, stale_after) = if local {
                (usize::MAX, Duration::MAX)
            } else {
                (config.publish_window, PUBLISH_LOCK - PUBLISH_TIMEOUT)
            };
            publisher::Publisher::spawn(
                window,
                stale_after,
                publisher::Gauges::registered(),
                move |ids, record| {
                    publish(queue.clone(), db.clone(), confirms.clone(), ids, record)
                },
            )
        };
        let view_db = db.clone();
        let views = Batcher::spawn("status", READ_BATCH, move |ids: Vec<TaskId>| {
            DbError::isolate("status", &ids, |ids| view_db.task_views(ids))
        });
        Self {
            final_views: Arc::new(final_views::FinalViews::new(config.retention)),
            hub: hub::Hub::spawn(db.clone(), queue.clone()),
            hints: Hints::spawn(&queue),
            probe: Probe::new(&config, db.clone(), queue.clone()),
            counts: CountGauges::new(db.clone(), queue.clone(), config.metrics_counts_max_age),
            task_metrics: TaskMetrics::default(),
            config,
            db,
            queue,
            writes,
            confirms,
            views,
            publisher,
            admission,
        }
    }

    /// Where a task is (`None`: no such task): on SQLite read right here
    /// when a pooled connection is free ([`ferry_core::Db::task_views_without_waiting`]:
    /// a few microseconds, less than handing the read to another thread and
    /// being woken), otherwise together with the `/status` requests of
    /// other clients arriving meanwhile.
    pub async fn task_view(&self, id: TaskId) -> DbResult<Option<TaskView>> {
        if let Some(read) = self.db.task_views_without_waiting(&[id]) {
            return read.map(|mut views| views.pop().flatten());
        }
        self.views
            .call(id)
            .await
            .unwrap_or_else(|| Err(DbError::Unavailable("the status read failed".into())))
    }

    /// A place among the `/receive` requests that may wait for the
    /// database, held until dropped; `None` when the limit in force is
    /// taken. Refusing at once keeps the wait of those admitted short and
    /// the memory of an overloaded api flat (see [`admission`]).
    pub fn admit(&self) -> Option<Admitted> {
        self.admission.admit()
    }

    /// How many `/receive` requests may wait for the database now.
    pub fn receive_limit(&self) -> usize {
        self.admission.limit()
    }

    /// Stores one request's tasks, committed together with those of other
    /// requests arriving meanwhile.
    pub async fn store(&self, tasks: Vec<NewTask>) -> DbResult<Vec<Stored>> {
        self.writes
            .call(SubmitWrite::Insert(tasks))
            .await
            .unwrap_or_else(|| Err(DbError::Unavailable("the insert batch failed".into())))
    }

    /// Publishes tasks whose publish lock this process holds, off the
    /// request path: the caller answers once the rows are committed, because
    /// a committed row is owed to the broker until a confirm is recorded (its
    /// publish lock runs out and the relay publishes it if this process
    /// cannot). The publishes of concurrent requests share the publisher
    /// channel, their confirms in flight together.
    pub fn publish_soon(&self, ids: Vec<TaskId>) {
        self.spawn_publish(ids, true);
    }

    /// [`publish_soon`](Self::publish_soon) for tasks [`store`](Self::store)
    /// just stored: with the in-process queue they were stored as enqueued
    /// ([`Publish::Enqueued`]), so no confirm is recorded.
    pub fn publish_stored(&self, ids: Vec<TaskId>) {
        self.spawn_publish(ids, !self.queue.is_local());
    }

    fn spawn_publish(&self, ids: Vec<TaskId>, record: bool) {
        self.publisher.publish(ids, record);
    }

    /// Waits for the publishes [`publish_soon`](Self::publish_soon) and
    /// [`publish_stored`](Self::publish_stored) started
    /// (each ends within [`PUBLISH_TIMEOUT`]), and writes the confirms
    /// still held; the shutdown does, so that a stopping api hands the
    /// broker what it stored, and records it, rather than leaving it to a
    /// relay after the publish lock.
    pub async fn publishes_done(&self) {
        self.publisher.done().await;
        self.confirms.flush().await;
    }
}

/// Publishes tasks and, with `record`, records the broker's confirm. A
/// failure is only logged: the rows are committed and the relay will
/// publish them (the in-process queue fails only once it is closed, when
/// the process stops, and the next process owes its tasks again).
async fn publish(queue: Queue, db: Db, confirms: HeldConfirms, ids: Vec<TaskId>, record: bool) {
    // A broker that does not answer must not hold the publish for ever:
    // the row is committed, so the relay can finish the job.
    let published = tokio::time::timeout(PUBLISH_TIMEOUT, queue.publish(&ids))
        .await
        .unwrap_or_else(|_| Err(BrokerError::Timeout(PUBLISH_TIMEOUT)));
    match published {
        Ok(()) if record => confirms.confirmed(ids),
        Ok(()) => {}
        Err(e) => {
            tracing::warn!(error = %e, tasks = ids.len(), "publish failed; the relay will retry");
            if let Err(e) = db.run_blocking(move |db| db.release_publish(&ids)).await {
                tracing::warn!(error = %e, "could not hand the publish to the relay early");
            }
        }
    }
}

/// Builds the Rocket application.
pub fn rocket(state: AppState) -> Rocket<Build> {
    let figment = rocket::Config::figment()
        .merge(("address", state.config.address.clone()))
        .merge(("port", state.config.port))
        .merge(("ident", "Ferry"))
        .merge(("log_level", LogLevel::Critical))
        .merge(("cli_colors", false))
        // Shutdown is the caller's: `serve` notifies Rocket when its token
        // is cancelled, so Rocket installs no signal handlers of its own.
        .merge(("shutdown.ctrlc", false))
        .merge(("shutdown.signals", Vec::<String>::new()));
    use request_id::traced;
    rocket::custom(figment)
        .manage(state)
        .attach(request_id::RequestIds)
        .attach(metrics::HttpMetrics::default())
        .mount("/", traced(routes::receive::routes()))
        .mount("/", traced(routes::status::routes()))
        .mount("/", traced(routes::control::routes()))
        .manage(routes::tasks::SharedCounts::default())
        .mount("/", traced(routes::tasks::routes()))
        .mount("/", traced(openapi::routes()))
        .mount("/", traced(dashboard::routes()))
        .mount("/", traced(metrics::routes()))
        .register(
            "/",
            catchers![error::default_catcher, auth::unauthorized, auth::forbidden],
        )
}

/// Runs the API until `shutdown` is cancelled (by the caller: `main` cancels
/// it on SIGTERM or Ctrl-C), then lets Rocket finish its requests, and only
/// then stops the relay (and the in-process workers). With `standalone`,
/// tasks go through an in-process queue to in-process workers, so nothing but
/// this process (and its SQLite file) is needed; that needs the `standalone`
/// feature (on by default).
pub async fn serve(
    config: Config,
    standalone: bool,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // Before anything records: handles made earlier would record nothing.
    ferry_core::metrics::install();
    // The listing's filters are planned with their values; with the
    // workers in this process, their claims and outcomes are planned as a
    // worker's are (`Planning::Generic`), or PostgreSQL may keep a plan
    // made on a new table that scans it.
    let planning = if standalone {
        ferry_core::db::Planning::Generic
    } else {
        ferry_core::db::Planning::Default
    };
    let db = runtime::connect_db(&config, runtime::CONNECT_TIMEOUT, planning).await?;
    let queue = if standalone {
        standalone_queue(&db).await?
    } else {
        let queue = Queue::from_config(&config);
        runtime::declare_queue(&queue).await?;
        queue
    };
    // Bound before anything is spawned, so that a port in use fails the start
    // cleanly. Every connection is guarded: see `listener`.
    let listener = GuardedListener::bind(
        (config.address.as_str(), config.port),
        config.request_timeout,
        config.max_connections,
    )
    .await
    .with_context(|| format!("cannot listen on {}:{}", config.address, config.port))?;
    // The relay and the workers stop only once Rocket has answered what it
    // was answering, so that their order on shutdown stays: API, then the rest.
    let background = CancellationToken::new();
    let relay = relay::spawn(
        db.clone(),
        queue.clone(),
        relay::Settings::of(&config),
        background.clone(),
    );
    let workers = standalone.then(|| spawn_workers(&config, &db, &queue, &background));
    if config.tokens.is_empty() {
        tracing::warn!("no [[tokens]] configured: the API is open to anyone who can reach it");
    }
    tracing::info!(
        address = %config.address,
        port = config.port,
        database = db.backend(),
        database_url = %ferry_core::logging::redact_url(&config.database_url),
        broker_url = %ferry_core::logging::redact_url(&config.broker_url),
        queue = %config.queue,
        standalone,
        request_timeout = ?config.request_timeout,
        max_connections = config.max_connections,
        tokens = config.tokens.iter().count(),
        "ferry-api starting"
    );
    let state = AppState::new(Arc::new(config), db, queue);
    let publishes = state.clone();
    let result = async {
        let rocket = rocket(state).ignite().await?;
        let stop = rocket.shutdown();
        tokio::spawn(async move {
            shutdown.cancelled().await;
            stop.notify();
        });
        rocket.launch_on(listener).await
    }
    .await;
    publishes.publishes_done().await;
    background.cancel();
    if let Some(workers) = workers {
        workers.await??;
    }
    relay::join(relay).await?;
    result?;
    Ok(())
}

/// The in-process queue of `--standalone`. It starts empty: whatever the last
/// process had queued and not finished is published again.
#[cfg(feature = "standalone")]
async fn standalone_queue(db: &Db) -> anyhow::Result<Queue> {
    let owed = db.run_blocking(|db| db.forget_enqueued()).await?;
    if owed > 0 {
        tracing::info!(
            tasks = owed,
            "requeueing unfinished tasks from the last run"
        );
    }
    Ok(Queue::local())
}

#[cfg(not(feature = "standalone"))]
async fn standalone_queue(_: &Db) -> anyhow::Result<Queue> {
    anyhow::bail!("--standalone needs ferry-api built with the `standalone` feature")
}

/// The in-process workers of `--standalone`: the only use of the worker crate.
#[cfg(feature = "standalone")]
fn spawn_workers(
    config: &Config,
    db: &Db,
    queue: &Queue,
    shutdown: &CancellationToken,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    tokio::spawn(ferry_worker::run(
        config.clone(),
        db.clone(),
        queue.clone(),
        shutdown.clone(),
    ))
}

#[cfg(not(feature = "standalone"))]
fn spawn_workers(
    _: &Config,
    _: &Db,
    _: &Queue,
    _: &CancellationToken,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    unreachable!("standalone_queue refuses --standalone without the feature")
}
