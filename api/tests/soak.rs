//! The soak: Ferry's production layout on PostgreSQL (two `ferry-api`
//! processes, three `ferry-worker` processes, RabbitMQ) under a steady
//! stream of counted tasks (an `exec` handler that appends each run to a
//! file), while a fault scheduler, at random intervals and in random order,
//! SIGKILLs and restarts workers and an api, SIGTERMs workers, stops and
//! starts RabbitMQ, restarts PostgreSQL, and purges the task queue once
//! (with the workers paused, so that a backlog is lost).
//! At the end it prints one table of counts and checks:
//! - every 202 reached a final state, and so did every task row (a request
//!   cut off by a kill may have been stored without its client hearing);
//! - every task has exactly one successful attempt recorded;
//! - a handler ran more than once for a task only when an attempt of it
//!   was interrupted by a SIGKILL of its worker: each run is an attempt in
//!   the history, no attempt ran twice, and every attempt before the last
//!   ended with an error on a worker the scheduler killed;
//! - no process died that the scheduler did not kill;
//! - the processes that lived through it all (api-0 and worker-0) did not
//!   grow in memory.
//!
//! It belongs to the `faults` profile (it stops services), so CI runs it
//! after every other test, for `FERRY_SOAK_SECONDS` (default 60: CI's
//! short mode). An hour by hand, on a private RabbitMQ node and PostgreSQL
//! cluster so the machine's own keep serving everything else:
//!
//! ```text
//! eval "$(bash testkit/private-services start)"
//! FERRY_SOAK_SECONDS=3600 cargo nextest run -p ferry-api --all-features \
//!     --profile faults -E 'binary(soak)' --no-capture
//! ```
//!
//! `FERRY_SOAK_SEED` replays a run's order of faults; `FERRY_SOAK_FAULTS`
//! (e.g. `StopBroker,RestartPostgres`) deals only the kinds it names.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_testkit::faults::{pg_cluster, BrokerStopped, PostgresRestored};
use ferry_testkit::{Api, Deployment, Layout, Proc};
use lapin::options::QueuePurgeOptions;
use serde_json::{json, Value};

/// Seconds of load and faults in CI's short mode.
const SHORT_SECONDS: u64 = 60;
/// Longest wait for every task to be final once the faults stop: a task
/// whose worker was killed waits out its lease (30 s) first.
const DRAIN: Duration = Duration::from_secs(300);
/// Events per `/receive` batch, and the pause between batches.
const BATCH: usize = 10;
const PAUSE: Duration = Duration::from_millis(200);
/// Memory of a long-lived process may grow this much from the end of the
/// first quarter of the run to its end. lapin's leak of refused connection
/// attempts (`ferry_core::broker::connect`) grew them 10–13 MiB in 20–60
/// minutes; without it, an hour of faults grew them 0.2 and 1.0 MiB.
const GROWTH_MIB: f64 = 8.0;

/// xorshift64*: the order of faults, replayable from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn millis(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_millis(from + self.next() % (to - from))
    }

    /// `items` in a random order (Fisher–Yates).
    fn shuffled<T: Copy>(&mut self, items: &[T]) -> Vec<T> {
        let mut items = items.to_vec();
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i + 1));
        }
        items
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Fault {
    KillWorker,
    TermWorker,
    KillApi,
    StopBroker,
    RestartPostgres,
    PurgeQueue,
}

/// The faults dealt again and again, each deck in a random order, so a
/// short run has every kind; the purge comes once on top of them.
const FAULTS: [Fault; 5] = [
    Fault::KillWorker,
    Fault::TermWorker,
    Fault::KillApi,
    Fault::StopBroker,
    Fault::RestartPostgres,
];

/// The kinds of fault dealt: all of [`FAULTS`], or those that
/// `FERRY_SOAK_FAULTS` names (comma-separated, e.g. `StopBroker`), to tell
/// which kind a change in memory comes with. The purge comes once either way.
fn dealt() -> Vec<Fault> {
    let names = std::env::var("FERRY_SOAK_FAULTS").unwrap_or_default();
    if names.trim().is_empty() {
        return FAULTS.to_vec();
    }
    names
        .split(',')
        .map(|name| {
            let name = name.trim();
            FAULTS
                .iter()
                .copied()
                .find(|fault| format!("{fault:?}") == name)
                .unwrap_or_else(|| panic!("FERRY_SOAK_FAULTS: no fault {name:?} in {FAULTS:?}"))
        })
        .collect()
}

/// What the producer saw.
#[derive(Debug, Default)]
struct Sent {
    accepted: Mutex<Vec<String>>,
    refused: AtomicU64,
    cut_off: AtomicU64,
    other: Mutex<Vec<String>>,
}

/// The producer: a batch of counting events every [`PAUSE`], to the apis in
/// turn, until `stop`.
async fn produce(urls: Arc<Mutex<Vec<String>>>, sent: Arc<Sent>, stop: Arc<AtomicBool>) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("a client");
    let mut n = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let url = {
            let urls = urls.lock().unwrap();
            urls[n % urls.len()].clone()
        };
        let events: Vec<Value> = (0..BATCH)
            .map(|i| {
                json!({"specversion": "1.0", "type": "org.ferry.count", "source": "/ferry/soak",
                       "id": format!("soak-{n}-{i}"), "data": {"n": n}})
            })
            .collect();
        n += 1;
        let response = client
            .post(format!("{url}/receive"))
            .header("content-type", "application/cloudevents-batch+json")
            .body(Value::Array(events).to_string())
            .send()
            .await;
        match response {
            Ok(r) if r.status().as_u16() == 202 => {
                let body: Value = r.json().await.expect("a JSON 202");
                let ids = body["tasks"].as_array().expect("tasks").iter();
                let ids = ids.map(|t| t["id"].as_str().expect("an id").to_string());
                sent.accepted.lock().unwrap().extend(ids);
            }
            // Overloaded, or the database restarting: told to come back.
            Ok(r) if r.status().as_u16() == 503 => {
                sent.refused.fetch_add(1, Ordering::Relaxed);
            }
            Ok(r) => {
                let status = r.status();
                let body = r.text().await.unwrap_or_default();
                sent.other.lock().unwrap().push(format!("{status}: {body}"));
            }
            // The api was killed or is starting again.
            Err(_) => {
                sent.cut_off.fetch_add(1, Ordering::Relaxed);
            }
        }
        tokio::time::sleep(PAUSE).await;
    }
}

/// The processes, and what the scheduler did to them.
struct Fleet {
    apis: Vec<Api>,
    workers: Vec<Proc>,
    urls: Arc<Mutex<Vec<String>>>,
    /// Pids the scheduler SIGKILLed.
    killed: HashSet<u32>,
    restarts: usize,
}

impl Fleet {
    async fn restart_worker(&mut self, d: &Deployment, rng: &mut Rng, signal: &str) {
        // worker-0 lives through it all.
        let i = 1 + rng.below(self.workers.len() - 1);
        let pid = self.workers[i].pid() as u32;
        self.workers[i].signal(signal);
        // SIGTERM: its drain (30 s), handing back what still runs (up to a
        // lease, 30 s, with the database down) and its relay's last round.
        let status = self.workers[i]
            .wait_exit(Duration::from_secs(120))
            .unwrap_or_else(|| panic!("worker {pid} did not exit after SIG{signal}"));
        if signal == "TERM" {
            assert!(status.success(), "worker {pid} after SIGTERM: {status}");
        } else {
            self.killed.insert(pid);
        }
        tokio::time::sleep(rng.millis(0, 2000)).await;
        self.restarts += 1;
        self.workers[i] = d.worker(&format!("worker-{i}.{}", self.restarts));
    }

    async fn restart_api(&mut self, d: &Deployment, rng: &mut Rng) {
        // api-0 lives through it all.
        let pid = self.apis[1].proc.pid() as u32;
        self.apis[1].proc.signal("KILL");
        self.apis[1].proc.wait_exit(Duration::from_secs(60));
        self.killed.insert(pid);
        tokio::time::sleep(rng.millis(0, 2000)).await;
        let api = d.api().await;
        self.urls.lock().unwrap()[1] = api.base.clone();
        self.apis[1] = api;
        self.restarts += 1;
    }

    /// Processes that exited without being stopped by the scheduler.
    fn died(&mut self) -> Vec<String> {
        let mut died = Vec::new();
        let procs = self.apis.iter_mut().map(|a| &mut a.proc);
        for proc in procs.chain(self.workers.iter_mut()) {
            if let Some(status) = proc.wait_exit(Duration::ZERO) {
                died.push(format!("{} ({status})", proc.name));
            }
        }
        died
    }
}

async fn purge(d: &Deployment) -> u32 {
    let props = lapin::ConnectionProperties::default();
    let connection = lapin::Connection::connect(&d.broker_url, props)
        .await
        .expect("connect to RabbitMQ");
    let channel = connection.create_channel().await.expect("a channel");
    let purged = channel
        .queue_purge(d.queue.as_str().into(), QueuePurgeOptions::default())
        .await
        .expect("purge the task queue");
    let _ = connection.close(200, "purged".into()).await;
    purged
}

/// The pid in a worker's name (`<host>-<pid>-<suffix>`).
fn worker_pid(name: &str) -> Option<u32> {
    let mut parts = name.rsplitn(3, '-');
    parts.next()?;
    parts.next()?.parse().ok()
}

fn count(d: &Deployment, sql: &str) -> usize {
    d.texts(&format!("SELECT CAST(COUNT(*) AS TEXT) AS v FROM {sql}"))[0]
        .parse()
        .expect("a count")
}

/// The first sample at or after each tenth of `seconds`, as `api/worker`.
fn tenths(memory: &[(f64, f64, f64)], seconds: u64) -> String {
    (1..=10)
        .filter_map(|k| {
            let at = seconds as f64 * f64::from(k) / 10.0;
            memory.iter().find(|(t, _, _)| *t >= at).or(memory.last())
        })
        .map(|(_, api, worker)| format!("{api:.0}/{worker:.0}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn rss(proc: &Proc) -> f64 {
    proc.rss_mib().unwrap_or(f64::NAN)
}

#[tokio::test]
async fn soak() {
    let seconds: u64 = std::env::var("FERRY_SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(SHORT_SECONDS);
    let seed: u64 = std::env::var("FERRY_SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
            now.map_or(1, |d| d.as_nanos() as u64) | 1
        });
    if !Layout::Postgres.available() {
        return;
    }
    // Restored at the end whatever happens, as every fault restores its own.
    let _pg = PostgresRestored;
    let d = Layout::Postgres
        .deployment()
        .env("FERRY_REPUBLISH_AFTER", "5s");
    let apis = vec![d.api().await, d.api().await];
    let workers: Vec<Proc> = (0..3).map(|i| d.worker(&format!("worker-{i}"))).collect();
    let urls = Arc::new(Mutex::new(apis.iter().map(|a| a.base.clone()).collect()));
    let mut fleet = Fleet {
        apis,
        workers,
        urls: urls.clone(),
        killed: HashSet::new(),
        restarts: 0,
    };
    let sent = Arc::new(Sent::default());
    let stop = Arc::new(AtomicBool::new(false));
    let producer = tokio::spawn(produce(urls, sent.clone(), stop.clone()));

    let kinds = dealt();
    let mut rng = Rng(seed);
    let start = Instant::now();
    let end = start + Duration::from_secs(seconds);
    let mut memory_start = None;
    // (seconds, api-0, worker-0) after each fault: how memory moved.
    let mut memory = Vec::new();
    let mut faults: HashMap<Fault, usize> = HashMap::new();
    let mut purged = None;
    let purge_at = start + (end - start) / 3 + rng.millis(0, seconds * 1000 / 3 + 1);
    let mut deck = Vec::new();
    while Instant::now() < end {
        tokio::time::sleep(rng.millis(1000, 5000)).await;
        if memory_start.is_none() && start.elapsed() * 4 >= end - start {
            // Warmed up: the long-lived processes' memory from here on.
            memory_start = Some((rss(&fleet.apis[0].proc), rss(&fleet.workers[0])));
        }
        if deck.is_empty() {
            deck = rng.shuffled(&kinds);
        }
        // The purge once, at a random point of the middle third.
        let fault = if purged.is_none() && Instant::now() >= purge_at {
            Fault::PurgeQueue
        } else {
            deck.pop().expect("a dealt fault")
        };
        eprintln!("soak: {:>5.1}s {fault:?}", start.elapsed().as_secs_f64());
        match fault {
            Fault::KillWorker => fleet.restart_worker(&d, &mut rng, "KILL").await,
            Fault::TermWorker => fleet.restart_worker(&d, &mut rng, "TERM").await,
            Fault::KillApi => fleet.restart_api(&d, &mut rng).await,
            Fault::StopBroker => {
                let stopped = BrokerStopped::new();
                tokio::time::sleep(rng.millis(1000, 5000)).await;
                drop(stopped);
            }
            Fault::RestartPostgres => {
                assert!(pg_cluster("restart").success(), "pg_ctlcluster restart");
            }
            Fault::PurgeQueue => {
                // Workers paused, so that a backlog waits in the queue to
                // be lost (a worker's prefetched messages are not purged).
                for worker in &fleet.workers {
                    worker.signal("STOP");
                }
                tokio::time::sleep(Duration::from_secs(3)).await;
                purged = Some(purge(&d).await);
                for worker in &fleet.workers {
                    worker.signal("CONT");
                }
            }
        }
        *faults.entry(fault).or_default() += 1;
        memory.push((
            start.elapsed().as_secs_f64(),
            rss(&fleet.apis[0].proc),
            rss(&fleet.workers[0]),
        ));
    }
    stop.store(true, Ordering::Relaxed);
    producer.await.expect("the producer");
    let memory_end = (rss(&fleet.apis[0].proc), rss(&fleet.workers[0]));
    let died = fleet.died();

    // Every task row (so every 202) reaches a final state.
    let deadline = Instant::now() + DRAIN;
    let open = "tasks WHERE status NOT IN ('succeeded', 'failed', 'cancelled')";
    while count(&d, open) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let accepted = sent.accepted.lock().unwrap().clone();
    let stored: HashSet<String> = d
        .texts("SELECT CAST(id AS TEXT) AS v FROM tasks")
        .into_iter()
        .collect();
    let missing = accepted.iter().filter(|id| !stored.contains(*id)).count();
    let not_final = count(&d, open);
    let not_succeeded = count(&d, "tasks WHERE status <> 'succeeded'");
    let not_one_success = count(
        &d,
        "tasks t WHERE (SELECT COUNT(*) FROM task_attempts a WHERE a.task_id = t.id \
         AND a.finished_at IS NOT NULL AND a.error IS NULL) <> 1",
    );

    // Every handler run is an attempt of the history, each attempt ran at
    // most once, and a task ran again only after a kill interrupted it.
    let mut attempts: HashMap<(String, String), (bool, Option<u32>)> = HashMap::new();
    for row in d.texts(
        "SELECT CAST(task_id AS TEXT) || ' ' || CAST(attempt AS TEXT) || ' ' || \
         CASE WHEN error IS NULL THEN 'ok' ELSE 'error' END || ' ' || worker AS v \
         FROM task_attempts",
    ) {
        let mut parts = row.splitn(4, ' ');
        let (task, attempt, ended, worker) = (
            parts.next().unwrap().to_string(),
            parts.next().unwrap().to_string(),
            parts.next().unwrap(),
            parts.next().unwrap_or_default(),
        );
        attempts.insert((task, attempt), (ended == "ok", worker_pid(worker)));
    }
    let runs = d.runs();
    let mut per_task: HashMap<&str, Vec<&str>> = HashMap::new();
    for (task, attempt) in &runs {
        per_task.entry(task).or_default().push(attempt);
    }
    let mut repeated = 0;
    let mut unexplained = Vec::new();
    for (task, mut ran) in per_task {
        ran.sort_unstable();
        let before = ran.len();
        ran.dedup();
        if ran.len() < before {
            unexplained.push(format!("{task}: an attempt ran twice"));
        }
        if ran.len() > 1 {
            repeated += 1;
        }
        for attempt in &ran {
            match attempts.get(&(task.to_string(), attempt.to_string())) {
                None => unexplained.push(format!("{task}: run of attempt {attempt} not recorded")),
                Some((false, pid)) if !pid.is_some_and(|p| fleet.killed.contains(&p)) => {
                    unexplained.push(format!(
                        "{task}: attempt {attempt} failed on a worker not killed ({pid:?})"
                    ));
                }
                Some(_) => {}
            }
        }
    }
    let grew = |start: f64, end: f64| end > start + GROWTH_MIB;
    let (api_start, worker_start) = memory_start.unwrap_or(memory_end);
    let other = sent.other.lock().unwrap().clone();

    let mut rows: Vec<(String, String)> = vec![
        (
            "seconds of faults (seed)".into(),
            format!("{seconds} ({seed})"),
        ),
        ("faults".into(), {
            let mut f: Vec<_> = faults.iter().collect();
            f.sort();
            f.iter()
                .map(|(k, n)| format!("{k:?} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        }),
        ("messages purged".into(), format!("{purged:?}")),
        ("202s (tasks)".into(), accepted.len().to_string()),
        (
            "refused (503) / cut off (no answer)".into(),
            format!(
                "{} / {}",
                sent.refused.load(Ordering::Relaxed),
                sent.cut_off.load(Ordering::Relaxed)
            ),
        ),
        ("other answers".into(), other.len().to_string()),
        ("task rows".into(), stored.len().to_string()),
        ("202s with no row".into(), missing.to_string()),
        ("tasks not final".into(), not_final.to_string()),
        ("tasks not succeeded".into(), not_succeeded.to_string()),
        (
            "tasks without exactly one success".into(),
            not_one_success.to_string(),
        ),
        ("handler runs".into(), runs.len().to_string()),
        (
            "tasks run more than once (after a kill)".into(),
            repeated.to_string(),
        ),
        (
            "runs not explained by a kill".into(),
            unexplained.len().to_string(),
        ),
        ("processes died unkilled".into(), died.len().to_string()),
        (
            "api-0 RSS start → end (MiB)".into(),
            format!("{api_start:.1} → {:.1}", memory_end.0),
        ),
        (
            "worker-0 RSS start → end (MiB)".into(),
            format!("{worker_start:.1} → {:.1}", memory_end.1),
        ),
    ];
    rows.push((
        "api-0 / worker-0 RSS at each tenth of the run (MiB)".into(),
        tenths(&memory, seconds),
    ));
    println!("\n| soak | count |\n|---|---|");
    for (what, n) in &rows {
        println!("| {what} | {n} |");
    }

    assert!(
        other.is_empty(),
        "answers other than 202 and 503: {other:?}"
    );
    assert_eq!(missing, 0, "202s whose task is not stored");
    assert_eq!(not_final, 0, "tasks not final after {DRAIN:?}");
    assert_eq!(not_succeeded, 0, "count tasks that did not succeed");
    assert_eq!(not_one_success, 0, "tasks without exactly one success");
    assert!(unexplained.is_empty(), "{unexplained:#?}");
    assert!(died.is_empty(), "died without being killed: {died:?}");
    assert!(!accepted.is_empty(), "no task was accepted");
    assert!(
        purged.is_some_and(|n| n > 0),
        "the purge lost nothing: {purged:?}"
    );
    assert!(
        !grew(api_start, memory_end.0),
        "api-0 grew from {api_start:.1} to {:.1} MiB",
        memory_end.0
    );
    assert!(
        !grew(worker_start, memory_end.1),
        "worker-0 grew from {worker_start:.1} to {:.1} MiB",
        memory_end.1
    );
    drop(fleet);
}
