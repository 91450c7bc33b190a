//! Prometheus metrics: one registry per process (standalone runs the api
//! and its workers in one process, so they share it), recorded through the
//! `metrics` facade and rendered in the text exposition format by
//! `GET /metrics` of the api and of a worker's `http_port`.
//!
//! [`install`] sets the recorder up once, before anything records; a
//! handle taken before it records nothing, so every binary calls it first.
//! What the hot paths record goes through handles made once ([`TaskMetrics`]
//! keeps one set per route, [`crate::batch::Batcher`] one per batcher), so
//! counting a task is an atomic add, not a registry lookup with labels built.
//! The names are the constants below; the README's "Metrics" table says what
//! each one means.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::task::{Outcome, TaskStatus};

/// `Content-Type` of a scrape: Prometheus' text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Counter: tasks the api stored, by route `type`.
pub const TASKS_RECEIVED: &str = "ferry_tasks_received_total";
/// Counter: attempts a worker started, by route `type`.
pub const TASKS_STARTED: &str = "ferry_tasks_started_total";
/// Counter: attempts a worker ended, by route `type` and `status`.
pub const TASKS_FINISHED: &str = "ferry_tasks_finished_total";
/// Histogram: how long attempts ran, by route `type`.
pub const ATTEMPT_DURATION: &str = "ferry_attempt_duration_seconds";
/// Counter: retries scheduled (a retryable failure with attempts left), by
/// route `type`.
pub const RETRIES: &str = "ferry_retries_scheduled_total";
/// Gauge: tasks in the database by `status`.
pub const TASKS: &str = "ferry_tasks";
/// Gauge: attempts a worker runs now, by `worker`.
pub const WORKER_RUNNING: &str = "ferry_worker_running_tasks";
/// Gauge: a worker's free slots (`concurrency` minus what it holds), by
/// `worker`.
pub const WORKER_FREE_SLOTS: &str = "ferry_worker_free_slots";
/// Counter: tasks the relay published (unconfirmed publishes taken over,
/// delayed tasks and retries once due).
pub const RELAY_PUBLISHED: &str = "ferry_relay_published_total";
/// Counter: messages this process published and the broker confirmed
/// (the api's publishes and its relay's; each names up to
/// `message_tasks` tasks).
pub const MESSAGES_PUBLISHED: &str = "ferry_messages_published_total";
/// Counter: tasks named by the messages of [`MESSAGES_PUBLISHED`].
pub const MESSAGE_TASKS_PUBLISHED: &str = "ferry_message_tasks_published_total";
/// Counter: tasks an api published right after storing them whose broker
/// confirm it recorded.
pub const CONFIRMS_RECORDED: &str = "ferry_confirms_recorded_total";
/// Gauge: tasks an api has published whose confirm has not come back
/// (at most `publish_window`).
pub const PUBLISH_IN_FLIGHT: &str = "ferry_publish_in_flight";
/// Gauge: tasks an api stored and has not started to publish, waiting for
/// room in `publish_window`.
pub const PUBLISH_WAITING: &str = "ferry_publish_waiting";
/// Counter: tasks an api stored and left to the relay, because they waited
/// for room in `publish_window` until their publish lock was nearly out.
pub const PUBLISH_LEFT_TO_RELAY: &str = "ferry_publish_left_to_relay_total";
/// Counter: tasks the relay published again because the broker had
/// confirmed their message and then lost it.
pub const RELAY_LOST_REPUBLISHED: &str = "ferry_relay_lost_republished_total";
/// Histogram: how long one relay pass took (retention, lease sweep, the
/// look for lost messages, owed publishes).
pub const RELAY_ROUND: &str = "ferry_relay_round_seconds";
/// Counter: running tasks the relay took back because their lease expired.
pub const LEASE_EXPIRIES: &str = "ferry_lease_expiries_total";
/// Counter: messages a worker dead-lettered itself, by `reason`.
pub const DEAD_LETTERED: &str = "ferry_messages_dead_lettered_total";
/// Gauge: messages in `<queue>.dead` (RabbitMQ only).
pub const DEAD_LETTER_QUEUE: &str = "ferry_dead_letter_queue_messages";
/// Counter: HTTP requests the api answered, by `method`, `route` and
/// `status`.
pub const HTTP_REQUESTS: &str = "ferry_http_requests_total";
/// Histogram: time to the head of an api answer, by `method` and `route`.
pub const HTTP_DURATION: &str = "ferry_http_request_duration_seconds";
/// Histogram: requests in one group commit, by `batcher`.
pub const BATCH_SIZE: &str = "ferry_batch_size";
/// Histogram: seconds each group commit took, by batcher, from its first
/// request on the batch thread to its answers (the wait for the connection
/// and, on SQLite, for the writers' turn included).
pub const BATCH_DURATION: &str = "ferry_batch_duration_seconds";
/// Gauge: `/receive` requests admitted and waiting for the database (at
/// most [`RECEIVE_LIMIT`]); past it they are refused as `503 overloaded`.
pub const RECEIVE_WAITING: &str = "ferry_receive_waiting";
/// Gauge: the limit in force on [`RECEIVE_WAITING`]: `receive_limit`, or
/// less while commits take longer than `receive_latency_target`.
pub const RECEIVE_LIMIT: &str = "ferry_receive_limit";
/// Gauge: client connections the api holds open (at most
/// `max_connections`).
pub const HTTP_CONNECTIONS: &str = "ferry_http_connections";
/// Counter: connections the api answered `503 overloaded` without reading
/// their request, because `max_connections` were open.
pub const HTTP_CONNECTIONS_REFUSED: &str = "ferry_http_connections_refused_total";

/// Seconds: attempts run from milliseconds to the default 10-minute timeout.
const ATTEMPT_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0,
];
/// Seconds: api answers.
const HTTP_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];
/// Seconds: relay passes, from an idle pass on SQLite to a long backlog's.
const RELAY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Seconds per batch: from a lone read in tens of microseconds to a
/// commit that waited for a busy database.
const BATCH_DURATION_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];
/// Requests per batch: powers of two up to the largest batch (256).
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// How often histogram samples are folded into their buckets when nobody
/// scrapes (they are kept as raw samples until then).
const UPKEEP: Duration = Duration::from_secs(5);

/// The process's registry, installed as the global recorder on first call.
/// Call it before anything records (before handles are made); later calls
/// return the same handle.
pub fn install() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new();
        let builder = [
            (ATTEMPT_DURATION, ATTEMPT_BUCKETS),
            (HTTP_DURATION, HTTP_BUCKETS),
            (BATCH_SIZE, BATCH_BUCKETS),
            (BATCH_DURATION, BATCH_DURATION_BUCKETS),
            (RELAY_ROUND, RELAY_BUCKETS),
        ]
        .into_iter()
        .fold(builder, |builder, (name, buckets)| {
            builder
                .set_buckets_for_metric(Matcher::Full(name.into()), buckets)
                .expect("bucket lists are not empty")
        });
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            // Another recorder (a test harness's) came first: this handle
            // renders an empty registry, and Ferry keeps working.
            tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
        }
        describe();
        let upkeep = handle.clone();
        let spawned = std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || loop {
                std::thread::sleep(UPKEEP);
                upkeep.run_upkeep();
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "no metrics upkeep thread; histograms are folded at scrapes only");
        }
        handle
    })
}

/// The registry in the text exposition format.
pub fn render() -> String {
    install().render()
}

/// The `# HELP` lines.
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(TASKS_RECEIVED, "Tasks stored by the api, by route type.");
    describe_counter!(TASKS_STARTED, "Attempts started by workers, by route type.");
    describe_counter!(
        TASKS_FINISHED,
        "Attempts ended, by route type and how: succeeded, failed, cancelled, retrying, handed_back, lost."
    );
    describe_histogram!(
        ATTEMPT_DURATION,
        Unit::Seconds,
        "How long attempts ran, by route type."
    );
    describe_counter!(RETRIES, "Retries scheduled, by route type.");
    describe_gauge!(
        TASKS,
        "Tasks in the database by status, counted at most every metrics_counts_max_age."
    );
    describe_gauge!(WORKER_RUNNING, "Attempts a worker runs now.");
    describe_gauge!(
        WORKER_FREE_SLOTS,
        "Free slots of a worker (concurrency minus running)."
    );
    describe_counter!(
        RELAY_PUBLISHED,
        "Tasks the relay published: unconfirmed publishes, delayed tasks and retries once due."
    );
    describe_counter!(
        MESSAGES_PUBLISHED,
        "Messages this process published and the broker confirmed (each names up to message_tasks tasks)."
    );
    describe_counter!(
        MESSAGE_TASKS_PUBLISHED,
        "Tasks named by the messages this process published and the broker confirmed."
    );
    describe_counter!(
        CONFIRMS_RECORDED,
        "Tasks the api published after storing them whose broker confirm it recorded."
    );
    describe_gauge!(
        PUBLISH_IN_FLIGHT,
        "Tasks the api published whose broker confirm has not come back (at most publish_window)."
    );
    describe_gauge!(
        PUBLISH_WAITING,
        "Tasks the api stored and waits to publish until publish_window has room."
    );
    describe_counter!(
        PUBLISH_LEFT_TO_RELAY,
        "Tasks the api stored and left to the relay: they waited for publish_window until their publish lock was nearly out."
    );
    describe_counter!(
        RELAY_LOST_REPUBLISHED,
        "Tasks the relay published again because the broker lost the message it had confirmed."
    );
    describe_histogram!(
        RELAY_ROUND,
        Unit::Seconds,
        "How long one relay pass took: retention, lease sweep, lost messages, owed publishes."
    );
    describe_counter!(
        LEASE_EXPIRIES,
        "Running tasks taken back because their lease expired."
    );
    describe_counter!(
        DEAD_LETTERED,
        "Messages a worker moved to <queue>.dead itself, by reason."
    );
    describe_gauge!(
        DEAD_LETTER_QUEUE,
        "Messages in <queue>.dead, whoever moved them there (RabbitMQ's delivery limit too)."
    );
    describe_counter!(
        HTTP_REQUESTS,
        "API answers, by method, route template and status."
    );
    describe_histogram!(
        HTTP_DURATION,
        Unit::Seconds,
        "Time to the head of an API answer, by method and route template."
    );
    describe_histogram!(BATCH_SIZE, "Requests in one group commit, by batcher.");
    describe_histogram!(
        BATCH_DURATION,
        Unit::Seconds,
        "Seconds one group commit took, by batcher, from its hand-off to the blocking pool to its answers."
    );
    describe_gauge!(
        RECEIVE_WAITING,
        "/receive requests admitted and waiting for the database (at most ferry_receive_limit)."
    );
    describe_gauge!(
        RECEIVE_LIMIT,
        "/receive requests that may wait for the database now: receive_limit, less while commits are slower than receive_latency_target."
    );
    describe_gauge!(
        HTTP_CONNECTIONS,
        "Client connections the API holds open (at most max_connections)."
    );
    describe_counter!(
        HTTP_CONNECTIONS_REFUSED,
        "Connections answered 503 overloaded unread, max_connections being open."
    );
}

/// How an attempt ended, as the `status` label of [`TASKS_FINISHED`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// Recorded `succeeded`.
    Succeeded,
    /// Recorded `failed` (for good).
    Failed,
    /// Recorded `cancelled`.
    Cancelled,
    /// Recorded `retrying`: another attempt is scheduled.
    Retrying,
    /// Handed back on shutdown (the drain timeout passed).
    HandedBack,
    /// The lease was lost: the task was taken back, nothing recorded.
    Lost,
}

impl Finish {
    const ALL: [Self; 6] = [
        Self::Succeeded,
        Self::Failed,
        Self::Cancelled,
        Self::Retrying,
        Self::HandedBack,
        Self::Lost,
    ];

    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Retrying => "retrying",
            Self::HandedBack => "handed_back",
            Self::Lost => "lost",
        }
    }

    /// How `outcome` ends its attempt.
    pub fn of(outcome: &Outcome) -> Self {
        match outcome {
            Outcome::HandedBack(_) => Self::HandedBack,
            Outcome::Retry { .. } => Self::Retrying,
            other => match other.status() {
                TaskStatus::Succeeded => Self::Succeeded,
                TaskStatus::Cancelled => Self::Cancelled,
                _ => Self::Failed,
            },
        }
    }
}

/// The handles of one route type.
#[derive(Debug)]
pub struct TypeMetrics {
    /// [`TASKS_RECEIVED`].
    pub received: Counter,
    /// [`TASKS_STARTED`].
    pub started: Counter,
    finished: [Counter; 6],
    /// [`ATTEMPT_DURATION`].
    pub duration: Histogram,
    /// [`RETRIES`].
    pub retries: Counter,
}

impl TypeMetrics {
    fn new(route_type: &str) -> Self {
        let label = || ("type", route_type.to_string());
        Self {
            received: metrics::counter!(TASKS_RECEIVED, &[label()]),
            started: metrics::counter!(TASKS_STARTED, &[label()]),
            finished: Finish::ALL.map(|f| {
                metrics::counter!(TASKS_FINISHED, &[label(), ("status", f.as_str().into())])
            }),
            duration: metrics::histogram!(ATTEMPT_DURATION, &[label()]),
            retries: metrics::counter!(RETRIES, &[label()]),
        }
    }

    /// The [`TASKS_FINISHED`] counter of `finish`.
    pub fn finished(&self, finish: Finish) -> &Counter {
        &self.finished[finish as usize]
    }
}

/// The per-type handles, made once per route type. The label is the
/// route's `type` as configured (`*` for the fallback route), not the
/// event's: label values stay bounded by `server.conf` whatever types
/// producers send.
#[derive(Debug, Clone, Default)]
pub struct TaskMetrics {
    by_type: Arc<RwLock<HashMap<String, Arc<TypeMetrics>>>>,
}

/// The label of tasks that no route matches (a worker without the route).
pub const UNROUTED: &str = "(unrouted)";

impl TaskMetrics {
    /// The handles of `route_type` (a route's `type`, or [`UNROUTED`]).
    pub fn of(&self, route_type: &str) -> Arc<TypeMetrics> {
        if let Some(found) = self.by_type.read().expect("not poisoned").get(route_type) {
            return found.clone();
        }
        self.by_type
            .write()
            .expect("not poisoned")
            .entry(route_type.to_string())
            .or_insert_with(|| Arc::new(TypeMetrics::new(route_type)))
            .clone()
    }
}

/// The counters of the relay (both binaries run one).
#[derive(Debug, Clone)]
pub struct RelayMetrics {
    /// [`RELAY_PUBLISHED`].
    pub published: Counter,
    /// [`LEASE_EXPIRIES`].
    pub lease_expiries: Counter,
    /// [`RELAY_LOST_REPUBLISHED`].
    pub lost_republished: Counter,
    /// [`RELAY_ROUND`].
    pub round: Histogram,
}

impl RelayMetrics {
    /// The handles (after [`install`]).
    pub fn new() -> Self {
        Self {
            published: metrics::counter!(RELAY_PUBLISHED),
            lease_expiries: metrics::counter!(LEASE_EXPIRIES),
            lost_republished: metrics::counter!(RELAY_LOST_REPUBLISHED),
            round: metrics::histogram!(RELAY_ROUND),
        }
    }
}

impl Default for RelayMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The gauges and the dead-letter counter of one worker.
#[derive(Debug, Clone)]
pub struct WorkerMetrics {
    /// [`WORKER_RUNNING`].
    pub running: Gauge,
    /// [`WORKER_FREE_SLOTS`].
    pub free_slots: Gauge,
    /// [`DEAD_LETTERED`] of unreadable messages.
    pub unreadable: Counter,
}

impl WorkerMetrics {
    /// The handles of the worker `name`.
    pub fn new(name: &str) -> Self {
        let worker = || [("worker", name.to_string())];
        Self {
            running: metrics::gauge!(WORKER_RUNNING, &worker()),
            free_slots: metrics::gauge!(WORKER_FREE_SLOTS, &worker()),
            unreadable: metrics::counter!(DEAD_LETTERED, "reason" => "unreadable"),
        }
    }
}

/// Sets the [`TASKS`] gauges from counts by status; a status missing from
/// `counts` is 0.
pub fn set_task_counts(counts: &[(TaskStatus, i64)]) {
    for status in TaskStatus::ALL {
        let n = counts
            .iter()
            .filter(|(s, _)| *s == status)
            .map(|(_, n)| *n)
            .sum::<i64>();
        metrics::gauge!(TASKS, "status" => status.as_str()).set(n as f64);
    }
}

/// Sets [`DEAD_LETTER_QUEUE`].
pub fn set_dead_letter_depth(messages: u32) {
    metrics::gauge!(DEAD_LETTER_QUEUE).set(f64::from(messages));
}

/// The [`RECEIVE_WAITING`] gauge.
pub fn receive_waiting() -> Gauge {
    metrics::gauge!(RECEIVE_WAITING)
}

/// The [`RECEIVE_LIMIT`] gauge.
pub fn receive_limit() -> Gauge {
    metrics::gauge!(RECEIVE_LIMIT)
}

/// The [`HTTP_CONNECTIONS`] gauge.
pub fn http_connections() -> Gauge {
    metrics::gauge!(HTTP_CONNECTIONS)
}

/// The [`HTTP_CONNECTIONS_REFUSED`] counter.
pub fn http_connections_refused() -> Counter {
    metrics::counter!(HTTP_CONNECTIONS_REFUSED)
}

/// The [`BATCH_SIZE`] and [`BATCH_DURATION`] histograms of the batcher
/// `name`.
pub fn batch_histograms(name: &'static str) -> (Histogram, Histogram) {
    (
        metrics::histogram!(BATCH_SIZE, "batcher" => name),
        metrics::histogram!(BATCH_DURATION, "batcher" => name),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_finish_as_their_label_says() {
        use chrono::Utc;
        let cases = [
            (Outcome::Succeeded(serde_json::json!(1)), "succeeded"),
            (Outcome::Failed("x".into()), "failed"),
            (
                Outcome::Unstorable {
                    error: "x".into(),
                    output: serde_json::json!(null),
                },
                "failed",
            ),
            (Outcome::Cancelled("x".into()), "cancelled"),
            (
                Outcome::Retry {
                    run_after: Utc::now(),
                    error: "x".into(),
                },
                "retrying",
            ),
            (Outcome::HandedBack("x".into()), "handed_back"),
        ];
        for (outcome, label) in cases {
            assert_eq!(Finish::of(&outcome).as_str(), label, "{outcome:?}");
        }
        // The handles' array is indexed by the variant.
        for (i, finish) in Finish::ALL.iter().enumerate() {
            assert_eq!(*finish as usize, i);
        }
    }
}
