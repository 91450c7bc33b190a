//! The waiters' hub: one shared reader per api process for every client
//! waiting on a task (`GET /status/<id>?wait=`, `GET /status/<id>/events`).
//!
//! A waiter registers the task it waits on ([`Hub::watch`]) and is woken
//! through a `tokio::sync::watch` channel holding every event of the task
//! read so far (the `task_events` rows, in order). No waiter reads the
//! database: the hub does, in one query for all the tasks it has to read
//! (chunked past [`EVENTS_CHUNK`]), and only
//!
//! - when a hint says a watched task changed (`ferry_core::hints`: a worker
//!   in any process, the api's own cancel and retry), or a task is newly
//!   watched: the tasks hinted or new;
//! - every [`FALLBACK`]: every watched task, so a hint that was lost (the
//!   broker was down, the subscription was reconnecting) only delays a
//!   waiter by at most that.
//!
//! The database stays the truth: a hint only says when to read. When the
//! subscription breaks, the hub goes on with its fallback reads and
//! resubscribes with backoff ([`RetryPolicy::RECONNECT`]).
//!
//! The hub subscribes only while it watches a task, and lets the
//! subscription go once none has been watched for [`LINGER`]: an api with
//! no waiter has no queue bound, so the broker drops the workers' hints at
//! the exchange instead of routing every change of every task to it. Once
//! subscribed, the hub reads every watched task again, so a change made
//! before the subscription was bound is not left to the fallback read.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use ferry_core::broker::Queue;
use ferry_core::db::{TaskEvent, EVENTS_CHUNK};
use ferry_core::retry::RetryPolicy;
use ferry_core::{Db, TaskId};
use tokio::sync::{watch, Notify};

/// Longest a change waits to be read when its hint is lost.
pub const FALLBACK: Duration = Duration::from_secs(1);

/// How long the hub stays subscribed to hints with no task watched, at
/// least (at most twice that).
pub const LINGER: Duration = Duration::from_secs(30);

/// Set (to anything but empty or `0`) in tests only: the api does not
/// subscribe to hints, so its waiters learn of changes from the fallback
/// reads alone.
pub const IGNORE_HINTS_ENV: &str = "FERRY_TEST_IGNORE_HINTS";

/// Set in tests only, to a duration: the fallback reads come that far
/// apart instead of every [`FALLBACK`] (a test of the hints sets an hour,
/// so that only a hint can wake its waiter in time).
pub const FALLBACK_ENV: &str = "FERRY_TEST_HUB_FALLBACK";

/// Set in tests only, to a duration: the hub lets its subscription to
/// hints go after that instead of [`LINGER`].
pub const LINGER_ENV: &str = "FERRY_TEST_HUB_LINGER";

/// Every event of a task read so far, oldest first.
pub type Events = Arc<[TaskEvent]>;

/// The shared reader; cheap to clone.
#[derive(Debug, Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    tasks: Mutex<Tasks>,
    /// A watched task was hinted, or a task is newly watched.
    wake: Notify,
    /// A task is newly watched (the subscription to hints may be wanted).
    watching: Notify,
    /// Statements the hub ran (one per chunk of tasks read).
    reads: AtomicU64,
}

#[derive(Debug, Default)]
struct Tasks {
    watched: HashMap<TaskId, Watched>,
    /// Watched tasks to read at the next wake.
    dirty: HashSet<TaskId>,
}

#[derive(Debug)]
struct Watched {
    events: watch::Sender<Events>,
    /// The last event read.
    seq: i32,
    watchers: usize,
}

impl Hub {
    /// Starts the reader on `db` and the subscription to hints on `queue`;
    /// both end once every handle on the hub is dropped.
    pub fn spawn(db: Db, queue: Queue) -> Self {
        let inner = Arc::new(Inner::default());
        tokio::spawn(read_loop(Arc::downgrade(&inner), db));
        tokio::spawn(listen(Arc::downgrade(&inner), queue));
        Self { inner }
    }

    /// Registers a waiter on task `id`. Its events (all of them, from the
    /// first) arrive through the returned [`Watch`]; the task is watched
    /// until the last of its watches is dropped.
    pub fn watch(&self, id: TaskId) -> Watch {
        let mut tasks = self.inner.tasks.lock().expect("not poisoned");
        let receiver = match tasks.watched.get_mut(&id) {
            Some(watched) => {
                watched.watchers += 1;
                watched.events.subscribe()
            }
            None => {
                let (events, receiver) = watch::channel(Events::from([]));
                tasks.watched.insert(
                    id,
                    Watched {
                        events,
                        seq: 0,
                        watchers: 1,
                    },
                );
                tasks.dirty.insert(id);
                self.inner.wake.notify_one();
                self.inner.watching.notify_one();
                receiver
            }
        };
        Watch {
            hub: self.inner.clone(),
            id,
            events: receiver,
        }
    }

    /// Says that these tasks changed: those watched are read at once.
    pub fn hint(&self, ids: impl IntoIterator<Item = TaskId>) {
        self.inner.hint(ids);
    }

    /// How many tasks are watched now.
    pub fn watched(&self) -> usize {
        self.inner.tasks.lock().expect("not poisoned").watched.len()
    }

    /// How many statements the hub has run since the process started.
    pub fn reads(&self) -> u64 {
        self.inner.reads.load(Ordering::Relaxed)
    }
}

impl Inner {
    fn watches_any(&self) -> bool {
        !self.tasks.lock().expect("not poisoned").watched.is_empty()
    }

    /// Reads every watched task at the next wake.
    fn read_all_soon(&self) {
        let mut tasks = self.tasks.lock().expect("not poisoned");
        let Tasks { watched, dirty } = &mut *tasks;
        dirty.extend(watched.keys().copied());
        if !dirty.is_empty() {
            self.wake.notify_one();
        }
    }

    fn hint(&self, ids: impl IntoIterator<Item = TaskId>) {
        let mut tasks = self.tasks.lock().expect("not poisoned");
        let mut any = false;
        for id in ids {
            if tasks.watched.contains_key(&id) {
                any |= tasks.dirty.insert(id);
            }
        }
        if any {
            self.wake.notify_one();
        }
    }

    /// The tasks to read, with the last event read of each: every watched
    /// one, or those hinted or new.
    fn to_read(&self, all: bool) -> Vec<(TaskId, i32)> {
        let mut tasks = self.tasks.lock().expect("not poisoned");
        let dirty = std::mem::take(&mut tasks.dirty);
        if all {
            tasks
                .watched
                .iter()
                .map(|(id, watched)| (*id, watched.seq))
                .collect()
        } else {
            dirty
                .into_iter()
                .filter_map(|id| tasks.watched.get(&id).map(|w| (id, w.seq)))
                .collect()
        }
    }

    /// Hands newly read events (ordered by task, then seq) to the waiters.
    fn deliver(&self, events: Vec<TaskEvent>) {
        let mut tasks = self.tasks.lock().expect("not poisoned");
        for chunk in events.chunk_by(|a, b| a.task == b.task) {
            let Some(watched) = tasks.watched.get_mut(&chunk[0].task) else {
                continue; // No one waits any more.
            };
            let new: Vec<TaskEvent> = chunk
                .iter()
                .filter(|e| e.seq > watched.seq)
                .copied()
                .collect();
            let Some(last) = new.last() else { continue };
            watched.seq = last.seq;
            watched.events.send_modify(|events| {
                *events = events.iter().chain(&new).copied().collect();
            });
        }
    }
}

/// A waiter's registration on a task; dropping it unregisters.
#[derive(Debug)]
pub struct Watch {
    hub: Arc<Inner>,
    id: TaskId,
    events: watch::Receiver<Events>,
}

impl Watch {
    /// Every event of the task read so far, oldest first (empty until the
    /// hub's first read of it), and marks them seen.
    pub fn events(&mut self) -> Events {
        self.events.borrow_and_update().clone()
    }

    /// Waits until events newer than the last [`Watch::events`] arrive.
    pub async fn changed(&mut self) {
        if self.events.changed().await.is_err() {
            // The hub is gone (the process is stopping): nothing more comes.
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut tasks = self.hub.tasks.lock().expect("not poisoned");
        if let Some(watched) = tasks.watched.get_mut(&self.id) {
            watched.watchers -= 1;
            if watched.watchers == 0 {
                tasks.watched.remove(&self.id);
                tasks.dirty.remove(&self.id);
            }
        }
    }
}

/// The one reader: on each wake the hinted and new tasks, at each
/// [`FALLBACK`] tick every watched task; one statement per chunk of tasks.
async fn read_loop(hub: Weak<Inner>, db: Db) {
    let fallback = std::env::var(FALLBACK_ENV)
        .ok()
        .and_then(|text| humantime::parse_duration(&text).ok());
    if let Some(fallback) = fallback {
        tracing::warn!(
            ?fallback,
            "{FALLBACK_ENV} is set: fallback reads that far apart"
        );
    }
    let mut tick = tokio::time::interval(fallback.unwrap_or(FALLBACK));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let Some(inner) = hub.upgrade() else { return };
        let all = tokio::select! {
            () = inner.wake.notified() => false,
            _ = tick.tick() => true,
        };
        let wanted = inner.to_read(all);
        if all {
            // For the benchmark (`ferry-bench waiters` reads this line).
            tracing::debug!(
                watched = wanted.len(),
                reads = inner.reads.load(Ordering::Relaxed),
                "hub tick"
            );
        }
        if wanted.is_empty() {
            continue;
        }
        let statements = wanted.len().div_ceil(EVENTS_CHUNK) as u64;
        inner.reads.fetch_add(statements, Ordering::Relaxed);
        let ids: Vec<TaskId> = wanted.iter().map(|(id, _)| *id).collect();
        match db
            .run_blocking(move |db| db.task_events_after(&wanted))
            .await
        {
            Ok(events) => inner.deliver(events),
            Err(e) => {
                tracing::warn!(error = %e, tasks = ids.len(), "cannot read task events; will retry");
                // Read again at the next tick (which reads all anyway).
                inner.tasks.lock().expect("not poisoned").dirty.extend(ids);
            }
        }
    }
}

/// Hears hints until the hub is dropped, while some task is watched
/// (see [`LINGER`]), resubscribing when the subscription breaks, and wakes
/// the reader for the watched tasks among them.
async fn listen(hub: Weak<Inner>, queue: Queue) {
    if std::env::var(IGNORE_HINTS_ENV).is_ok_and(|v| !v.is_empty() && v != "0") {
        tracing::warn!(
            "{IGNORE_HINTS_ENV} is set: waiters learn of changes only from the fallback reads"
        );
        return;
    }
    let linger = std::env::var(LINGER_ENV)
        .ok()
        .and_then(|text| humantime::parse_duration(&text).ok());
    if let Some(linger) = linger {
        tracing::warn!(?linger, "{LINGER_ENV} is set");
    }
    let linger = linger.unwrap_or(LINGER);
    let tag = format!("ferry-api-events-{}", std::process::id());
    let mut backoff = RetryPolicy::RECONNECT.backoff();
    while wanted(&hub).await {
        let mut changes = match queue.subscribe_changes(&tag).await {
            Ok(changes) => {
                backoff.reset();
                changes
            }
            Err(e) => {
                let wait = backoff.next_wait();
                tracing::warn!(error = %e, retry_in = ?wait, "cannot subscribe to hints; retrying (waiters fall back to reads every second)");
                tokio::time::sleep(wait).await;
                continue;
            }
        };
        tracing::info!("subscribed to hints");
        match hub.upgrade() {
            // What changed before the subscription was bound had no hint.
            Some(inner) => inner.read_all_soon(),
            None => return,
        }
        let mut idle = tokio::time::interval_at(tokio::time::Instant::now() + linger, linger);
        let mut was_idle = false;
        loop {
            tokio::select! {
                next = changes.next() => match next {
                    Ok(changes) => {
                        let Some(inner) = hub.upgrade() else { return };
                        inner.hint(changes.into_iter().map(|c| c.id));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "hint subscription broke; resubscribing");
                        break;
                    }
                },
                _ = idle.tick() => {
                    let Some(inner) = hub.upgrade() else { return };
                    let is_idle = !inner.watches_any();
                    if is_idle && was_idle {
                        tracing::info!(?linger, "no task watched; unsubscribing from hints");
                        break;
                    }
                    was_idle = is_idle;
                }
            }
        }
    }
}

/// Waits until some task is watched: `true`, or `false` once the hub is
/// dropped.
async fn wanted(hub: &Weak<Inner>) -> bool {
    loop {
        let Some(inner) = hub.upgrade() else {
            return false;
        };
        let watching = inner.watching.notified();
        tokio::pin!(watching);
        watching.as_mut().enable();
        if inner.watches_any() {
            return true;
        }
        // Wake now and then to see whether the hub is gone.
        let _ = tokio::time::timeout(FALLBACK, watching).await;
    }
}
