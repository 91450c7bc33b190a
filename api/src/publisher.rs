//! The api's publishes, off the request path, with a bounded window.
//!
//! `/receive` answers once its rows are committed; their publish follows.
//! The inserts of a burst can run faster than RabbitMQ confirms (on SQLite
//! about 20 000 tasks/s against a ceiling of 12 000–16 000 messages/s), and
//! each publish in flight holds its frames and its pending confirm. So at
//! most `publish_window` tasks are in flight to the broker; the rest wait
//! in line as bare task ids, in the order they were stored.
//!
//! The publishes waiting in line when one starts join it, as far as the
//! window has room for them at once (the requests of one insert batch are
//! answered together): their tasks share its messages
//! ([`ferry_core::broker::MESSAGE_TASKS`] to one), and the broker's work.
//!
//! A task that waited in line until its publish lock is nearly out is left
//! to the relay, which takes it over once the lock runs out: publishing it
//! too would only send a second message (harmless, as the claim's
//! compare-and-set makes every duplicate, but work for nothing).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ferry_core::TaskId;
use metrics::{Counter, Gauge};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

enum Job {
    Publish {
        ids: Vec<TaskId>,
        record: bool,
        since: Instant,
    },
    /// Answer once every publish asked for before has started.
    Flush(oneshot::Sender<()>),
}

/// The line of publishes of one process, and the loop that starts them.
#[derive(Debug, Clone)]
pub struct Publisher {
    jobs: mpsc::UnboundedSender<Job>,
    tracker: TaskTracker,
    waiting: Gauge,
}

/// What the loop reports on.
#[derive(Debug, Clone)]
pub struct Gauges {
    /// Tasks published whose confirm has not come back.
    pub in_flight: Gauge,
    /// Tasks waiting in line for room in the window.
    pub waiting: Gauge,
    /// Tasks left to the relay because they waited too long.
    pub left_to_relay: Counter,
}

impl Gauges {
    /// The process's metrics (see [`ferry_core::metrics`]).
    pub fn registered() -> Self {
        Self {
            in_flight: metrics::gauge!(ferry_core::metrics::PUBLISH_IN_FLIGHT),
            waiting: metrics::gauge!(ferry_core::metrics::PUBLISH_WAITING),
            left_to_relay: metrics::counter!(ferry_core::metrics::PUBLISH_LEFT_TO_RELAY),
        }
    }
}

impl Publisher {
    /// Starts the loop: at most `window` tasks in `publish` at once (a
    /// larger request alone), a task that waited `stale_after` or longer
    /// for room is skipped. `publish(ids, record)` publishes and records.
    pub fn spawn<P, F>(window: usize, stale_after: Duration, gauges: Gauges, publish: P) -> Self
    where
        P: Fn(Vec<TaskId>, bool) -> F + Send + Sync + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        let window = window.clamp(1, Semaphore::MAX_PERMITS);
        let (jobs, line) = mpsc::unbounded_channel();
        let tracker = TaskTracker::new();
        let waiting = gauges.waiting.clone();
        tokio::spawn(run(
            line,
            window,
            stale_after,
            gauges,
            tracker.clone(),
            Arc::new(publish),
        ));
        Self {
            jobs,
            tracker,
            waiting,
        }
    }

    /// Puts `ids` in line, to be published and, with `record`, their
    /// confirm recorded.
    pub fn publish(&self, ids: Vec<TaskId>, record: bool) {
        if ids.is_empty() {
            return;
        }
        self.waiting.increment(ids.len() as f64);
        let job = Job::Publish {
            ids,
            record,
            since: Instant::now(),
        };
        // The loop runs as long as the runtime does.
        let _ = self.jobs.send(job);
    }

    /// Waits until every publish asked for so far has ended (each within
    /// the publish's own timeout, or skipped as stale).
    pub async fn done(&self) {
        let (done, started) = oneshot::channel();
        if self.jobs.send(Job::Flush(done)).is_ok() {
            let _ = started.await;
        }
        self.tracker.close();
        self.tracker.wait().await;
    }
}

async fn run<P, F>(
    mut line: mpsc::UnboundedReceiver<Job>,
    window: usize,
    stale_after: Duration,
    gauges: Gauges,
    tracker: TaskTracker,
    publish: Arc<P>,
) where
    P: Fn(Vec<TaskId>, bool) -> F + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let room = Arc::new(Semaphore::new(window));
    // A job taken from the line while joining publishes that could not join.
    let mut next = None;
    loop {
        let job = match next.take() {
            Some(job) => job,
            None => match line.recv().await {
                Some(job) => job,
                None => break,
            },
        };
        let (mut ids, record, since) = match job {
            Job::Flush(done) => {
                let _ = done.send(());
                continue;
            }
            Job::Publish { ids, record, since } => (ids, record, since),
        };
        let mut permit = Arc::clone(&room)
            .acquire_many_owned(ids.len().min(window) as u32)
            .await
            .expect("the window is never closed");
        gauges.waiting.decrement(ids.len() as f64);
        if since.elapsed() >= stale_after {
            tracing::debug!(
                tasks = ids.len(),
                "waited too long to publish; left to the relay"
            );
            gauges.left_to_relay.increment(ids.len() as u64);
            continue;
        }
        // The publishes waiting behind it (the requests of one insert
        // batch are answered together) join it while the window has room
        // for them at once: their tasks share its messages. The other
        // requests of its batch, woken with it, run first and line up.
        tokio::task::yield_now().await;
        while let Ok(job) = line.try_recv() {
            let Job::Publish {
                ids: more,
                record: also,
                since,
            } = &job
            else {
                next = Some(job);
                break;
            };
            let joined = (*also == record && since.elapsed() < stale_after)
                .then(|| Arc::clone(&room).try_acquire_many_owned(more.len().min(window) as u32))
                .and_then(Result::ok);
            let Some(more_room) = joined else {
                next = Some(job);
                break;
            };
            permit.merge(more_room);
            gauges.waiting.decrement(more.len() as f64);
            ids.extend_from_slice(more);
        }
        let publish = Arc::clone(&publish);
        let in_flight = gauges.in_flight.clone();
        in_flight.increment(ids.len() as f64);
        tracker.spawn(async move {
            let n = ids.len();
            publish(ids, record).await;
            in_flight.decrement(n as f64);
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    use super::*;

    fn gauges() -> Gauges {
        Gauges {
            in_flight: Gauge::noop(),
            waiting: Gauge::noop(),
            left_to_relay: Counter::noop(),
        }
    }

    fn ids(n: usize) -> Vec<TaskId> {
        (0..n).map(|_| TaskId::new()).collect()
    }

    /// Records each publish's ids and the most tasks in `publish` at once;
    /// each publish takes `took`.
    #[derive(Default)]
    struct Seen {
        published: Mutex<Vec<Vec<TaskId>>>,
        now: AtomicUsize,
        most: AtomicUsize,
    }

    fn publisher(window: usize, stale_after: Duration, took: Duration) -> (Publisher, Arc<Seen>) {
        let seen = Arc::new(Seen::default());
        let s = Arc::clone(&seen);
        let publisher = Publisher::spawn(window, stale_after, gauges(), move |ids, _record| {
            let s = Arc::clone(&s);
            async move {
                let now = s.now.fetch_add(ids.len(), Ordering::SeqCst) + ids.len();
                s.most.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(took).await;
                s.now.fetch_sub(ids.len(), Ordering::SeqCst);
                s.published.lock().unwrap().push(ids);
            }
        });
        (publisher, seen)
    }

    #[tokio::test(start_paused = true)]
    async fn at_most_the_window_is_in_flight_and_every_task_is_published() {
        let (publisher, seen) = publisher(3, Duration::from_secs(60), Duration::from_millis(10));
        let mut sent = Vec::new();
        for i in 0..40 {
            let ids = ids(1 + i % 2);
            sent.push(ids.clone());
            publisher.publish(ids, true);
        }
        publisher.done().await;
        assert_eq!(seen.most.load(Ordering::SeqCst), 3);
        let mut published: Vec<TaskId> = seen.published.lock().unwrap().concat();
        published.sort_by_key(|id| id.0);
        let mut sent = sent.concat();
        sent.sort_by_key(|id| id.0);
        assert_eq!(published, sent);
    }

    #[tokio::test(start_paused = true)]
    async fn publishes_waiting_together_share_one_publish() {
        let (publisher, seen) = publisher(100, Duration::from_secs(60), Duration::from_millis(10));
        let sent: Vec<_> = (0..5).map(|_| ids(1)).collect();
        for ids in &sent {
            publisher.publish(ids.clone(), true);
        }
        // Not recorded: published on its own.
        let unrecorded = ids(1);
        publisher.publish(unrecorded.clone(), false);
        publisher.done().await;
        let published = seen.published.lock().unwrap().clone();
        assert_eq!(published, [sent.concat(), unrecorded]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_larger_than_the_window_is_published_alone() {
        let (publisher, seen) = publisher(2, Duration::from_secs(60), Duration::from_millis(10));
        publisher.publish(ids(1), true);
        publisher.publish(ids(5), true);
        publisher.publish(ids(1), true);
        publisher.done().await;
        assert_eq!(seen.most.load(Ordering::SeqCst), 5);
        let sizes: Vec<usize> = seen
            .published
            .lock()
            .unwrap()
            .iter()
            .map(Vec::len)
            .collect();
        assert_eq!(sizes, [1, 5, 1]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_that_waited_past_its_lock_is_left_to_the_relay() {
        // Each publish takes 4 s, the window holds one task, and a task
        // that waited 5 s is stale: the first starts at once, the second
        // after 4 s, the third would start after 8 s and is skipped.
        let (publisher, seen) = publisher(1, Duration::from_secs(5), Duration::from_secs(4));
        let sent: Vec<_> = (0..3).map(|_| ids(1)).collect();
        for ids in &sent {
            publisher.publish(ids.clone(), true);
        }
        tokio::time::sleep(Duration::from_secs(20)).await;
        // One sent later waits no longer than its turn.
        let late = ids(1);
        publisher.publish(late.clone(), true);
        publisher.done().await;
        let published = seen.published.lock().unwrap().clone();
        assert_eq!(published, [sent[0].clone(), sent[1].clone(), late]);
    }

    #[tokio::test(start_paused = true)]
    async fn done_waits_for_the_publishes_under_way() {
        let (publisher, seen) = publisher(8, Duration::from_secs(60), Duration::from_secs(3));
        publisher.publish(ids(2), false);
        publisher.done().await;
        assert_eq!(seen.published.lock().unwrap().len(), 1);
        assert_eq!(seen.now.load(Ordering::SeqCst), 0);
    }
}
