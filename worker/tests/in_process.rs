//! `ferry_worker::run` built as a library, on a temporary SQLite file and the
//! in-process queue: how a worker drains on shutdown, hands back what it
//! cannot finish, and lets go of an attempt whose lease it lost. No process,
//! port or service is needed; the same paths are tested over the real
//! broker, with real processes, in the api's tests.

use std::time::Duration;

use chrono::Utc;
use ferry_core::broker::Queue;
use ferry_core::relay::relay_once;
use ferry_core::retry::RetryPolicy;
use ferry_core::routes::{HandlerSpec, Route, Routes};
use ferry_core::task::NewTask;
use ferry_core::task::TaskView;
use ferry_core::{Config, Db, TaskId, TaskStatus};
use serde_json::json;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A database, a queue and the configuration of the workers under test:
/// `org.ferry.sleep` sleeps for `sleep`, `org.ferry.echo` answers at once.
struct Bench {
    db: Db,
    queue: Queue,
    config: Config,
    _dir: tempfile::TempDir,
}

impl Bench {
    fn new(sleep: Duration) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let database_url = format!("sqlite://{}", dir.path().join("ferry.db").display());
        let db = Db::connect(&database_url, 4).unwrap();
        db.migrate().unwrap();
        let route = |event_type: &str, handler| Route {
            event_type: event_type.into(),
            handler,
            timeout: Duration::from_secs(60),
            retry: RetryPolicy::ROUTE_DEFAULT,
        };
        let routes = Routes::new(vec![
            route("org.ferry.sleep", HandlerSpec::Sleep { duration: sleep }),
            route("org.ferry.echo", HandlerSpec::Echo),
        ])
        .unwrap();
        let config = Config {
            database_url,
            concurrency: 4,
            lease: Duration::from_secs(3),
            drain_timeout: Duration::from_secs(10),
            routes,
            ..Config::default()
        };
        Self {
            db,
            queue: Queue::local(),
            config,
            _dir: dir,
        }
    }

    /// Stores `n` tasks of `event_type` and publishes them, as `/receive`
    /// and the relay do.
    async fn submit(&self, event_type: &str, n: usize) -> Vec<TaskId> {
        let tasks: Vec<NewTask> = (0..n)
            .map(|i| NewTask {
                id: TaskId::new(),
                event_type: event_type.into(),
                source: "/in-process".into(),
                event_id: format!("{event_type}-{i}-{}", TaskId::new()),
                event: json!({"specversion": "1.0", "data": i}),
                digest: format!("digest {i}"),
                max_attempts: 3,
                idempotency_key: None,
                run_after: None,
            })
            .collect();
        let ids = tasks.iter().map(|t| t.id).collect();
        // A publish lock already expired: the relay may publish at once.
        self.db.insert_tasks(&tasks, Utc::now()).unwrap();
        assert_eq!(relay_once(&self.db, &self.queue).await.unwrap(), n);
        ids
    }

    fn worker(&self, config: &Config) -> (CancellationToken, JoinHandle<anyhow::Result<()>>) {
        let shutdown = CancellationToken::new();
        let run = tokio::spawn(ferry_worker::run(
            config.clone(),
            self.db.clone(),
            self.queue.clone(),
            shutdown.clone(),
        ));
        (shutdown, run)
    }

    /// Ends the lease of the task's running attempt now, and lets the
    /// database take the task back as the relay would. Returns how many
    /// tasks were taken back.
    fn expire_lease_now(&self, id: TaskId) -> usize {
        use diesel::prelude::*;
        use ferry_core::db::schema_sqlite::tasks::dsl as t;
        let path = self.config.database_url.trim_start_matches("sqlite://");
        let mut conn = SqliteConnection::establish(path).unwrap();
        diesel::update(t::tasks.filter(t::id.eq(id)))
            .set(t::lease_expires_at.eq(Some(Utc::now() - chrono::Duration::seconds(1))))
            .execute(&mut conn)
            .unwrap();
        self.db.expire_leases().unwrap()
    }

    fn view(&self, id: TaskId) -> TaskView {
        self.db.task_view(id).unwrap().expect("the task exists")
    }

    /// Waits until every task in `ids` has `status`.
    async fn wait_for(&self, ids: &[TaskId], status: TaskStatus) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let views: Vec<TaskView> = ids.iter().map(|&id| self.view(id)).collect();
            if views.iter().all(|v| v.status == status) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "not all {status}: {views:#?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Cancels a worker's shutdown token and expects `run` to return `Ok`
/// within 5 s.
async fn stop(shutdown: CancellationToken, run: JoinHandle<anyhow::Result<()>>, expected: &str) {
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .expect(expected)
        .expect("the worker task did not panic")
        .expect("the worker returned Ok");
}

/// Shutdown while tasks run: no new task starts, the running ones finish
/// and are recorded, each in one attempt.
#[tokio::test]
async fn a_worker_drains_its_running_tasks_on_shutdown() {
    let bench = Bench::new(Duration::from_millis(700));
    let mut config = bench.config.clone();
    config.concurrency = 2;
    let (shutdown, run) = bench.worker(&config);
    let running = bench.submit("org.ferry.sleep", 2).await;
    bench.wait_for(&running, TaskStatus::Running).await;
    let waiting = bench.submit("org.ferry.echo", 3).await;
    stop(shutdown, run, "the worker stops once its tasks finish").await;
    for id in running {
        let task = bench.view(id);
        assert_eq!(task.status, TaskStatus::Succeeded, "{task:#?}");
        assert_eq!(task.attempts, 1, "{task:#?}");
    }
    // The worker took nothing new after shutdown.
    for id in waiting {
        let task = bench.view(id);
        assert_eq!(task.status, TaskStatus::Pending, "{task:#?}");
        assert_eq!(task.attempts, 0, "{task:#?}");
    }
}

/// Tasks that cannot finish within the drain timeout are handed back,
/// without counting the attempt, and the next worker runs them.
#[tokio::test]
async fn a_worker_hands_back_what_outlasts_the_drain_timeout() {
    let bench = Bench::new(Duration::from_secs(30));
    let mut config = bench.config.clone();
    config.drain_timeout = Duration::from_millis(200);
    let (shutdown, run) = bench.worker(&config);
    let ids = bench.submit("org.ferry.sleep", 2).await;
    bench.wait_for(&ids, TaskStatus::Running).await;
    stop(shutdown, run, "the worker stops after its drain timeout").await;
    for &id in &ids {
        let task = bench.view(id);
        assert_eq!(task.status, TaskStatus::Retrying, "{task:#?}");
        assert_eq!(
            task.error.as_deref(),
            Some("the worker shut down before the attempt finished")
        );
        assert_eq!(task.attempt_history.len(), 1, "{task:#?}");
    }
    // A worker whose sleep route is quick takes them over once the relay
    // publishes them again.
    let mut next = bench.config.clone();
    next.routes = Routes::new(vec![Route {
        event_type: "org.ferry.sleep".into(),
        handler: HandlerSpec::Echo,
        timeout: Duration::from_secs(5),
        retry: RetryPolicy::ROUTE_DEFAULT,
    }])
    .unwrap();
    let (shutdown, run) = bench.worker(&next);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while ids
        .iter()
        .any(|&id| bench.view(id).status != TaskStatus::Succeeded)
    {
        assert!(tokio::time::Instant::now() < deadline, "not taken over");
        relay_once(&bench.db, &bench.queue).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop(shutdown, run, "the worker stops").await;
    for id in ids {
        let task = bench.view(id);
        assert_eq!(task.attempt_history.len(), 2, "{task:#?}");
        // The handed-back attempt does not count: the task is allowed one
        // more attempt than its route's three.
        assert_eq!((task.attempts, task.max_attempts), (2, 4), "{task:#?}");
    }
}

/// A worker whose lease was taken over stops the attempt at its next
/// renewal, records nothing for it, and frees its slot for the attempt
/// that took over, which is the one recorded.
#[tokio::test]
async fn a_worker_lets_go_of_an_attempt_whose_lease_it_lost() {
    const RUN: Duration = Duration::from_secs(4);
    let bench = Bench::new(RUN);
    let mut config = bench.config.clone();
    // One slot: the second attempt can start only once the first lets go.
    config.concurrency = 1;
    config.lease = Duration::from_millis(1500);
    let (shutdown, run) = bench.worker(&config);
    let ids = bench.submit("org.ferry.sleep", 1).await;
    bench.wait_for(&ids, TaskStatus::Running).await;
    // Another replica decides the lease is over, as the relay does when a
    // worker stops renewing: here the lease is simply cut short. (A renewal
    // may land between the two steps; then try again.)
    let cut = std::time::Instant::now();
    while bench.expire_lease_now(ids[0]) == 0 {
        assert!(
            cut.elapsed() < Duration::from_secs(5),
            "could not cut the lease"
        );
    }
    assert_eq!(bench.view(ids[0]).status, TaskStatus::Retrying);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while bench.view(ids[0]).status != TaskStatus::Succeeded {
        assert!(tokio::time::Instant::now() < deadline, "never succeeded");
        relay_once(&bench.db, &bench.queue).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Letting go at the next renewal (within 0.5 s) and a whole second run
    // take about 4.5 s; running the lost attempt to its end first, 8 s.
    let took = cut.elapsed();
    assert!(
        took < RUN + Duration::from_secs(2),
        "the lost attempt held the worker's only slot: {took:?}"
    );
    stop(shutdown, run, "the worker stops").await;
    let task = bench.view(ids[0]);
    assert_eq!(task.attempts, 2, "{task:#?}");
    let [lost, won] = &task.attempt_history[..] else {
        panic!("two attempts: {task:#?}")
    };
    assert_eq!(
        lost.error.as_deref(),
        Some("the worker running this attempt stopped renewing its lease"),
        "{task:#?}"
    );
    assert_eq!(won.error, None, "{task:#?}");
    assert!(won.finished_at.is_some(), "{task:#?}");
    assert_eq!(task.error, None, "{task:#?}");
}

/// A control message names the attempt it stops: one that arrives late —
/// after its task was cancelled, retried and started again — leaves the
/// new attempt running, and the task succeeds.
#[tokio::test]
async fn a_late_cancel_does_not_stop_a_newer_attempt() {
    use ferry_core::db::{CancelAnswer, RetryAnswer};
    let bench = Bench::new(Duration::from_millis(1500));
    let (shutdown, run) = bench.worker(&bench.config);
    let ids = bench.submit("org.ferry.sleep", 1).await;
    let id = ids[0];
    bench.wait_for(&ids, TaskStatus::Running).await;
    // Cancelled while attempt 1 runs: the message for attempt 1 stops it.
    assert_eq!(
        bench.db.cancel(id).unwrap(),
        CancelAnswer::StopRequested { attempt: 1 }
    );
    bench.queue.publish_cancel(id.attempt(1)).await.unwrap();
    bench.wait_for(&ids, TaskStatus::Cancelled).await;
    // Retried and started again at once.
    assert_eq!(
        bench.db.retry(id, |_| 3, Utc::now()).unwrap(),
        RetryAnswer::Retried { max_attempts: 4 }
    );
    assert_eq!(relay_once(&bench.db, &bench.queue).await.unwrap(), 1);
    bench.wait_for(&ids, TaskStatus::Running).await;
    assert_eq!(bench.view(id).attempts, 2);
    // The first cancel's message again, late (a redelivery, a slow
    // broker): attempt 2 is not the one it names.
    bench.queue.publish_cancel(id.attempt(1)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let task = bench.view(id);
    assert_eq!(task.status, TaskStatus::Running, "{task:#?}");
    bench.wait_for(&ids, TaskStatus::Succeeded).await;
    stop(shutdown, run, "the worker stops").await;
    let task = bench.view(id);
    let [first, second] = &task.attempt_history[..] else {
        panic!("two attempts: {task:#?}")
    };
    assert_eq!(
        first.error.as_deref(),
        Some("cancelled at a client's request")
    );
    assert_eq!(second.error, None, "{task:#?}");
}
