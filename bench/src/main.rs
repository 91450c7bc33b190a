//! `ferry-bench`: measures Ferry in its production layout (`ferry-api` and
//! `ferry-worker` replicas as separate processes, RabbitMQ, SQLite or
//! PostgreSQL) against the broker's own ceiling, in one run.
//!
//! Phases, per database backend, each on a fresh database and queue:
//! - burst: `--tasks` echo tasks POSTed by `--concurrency` clients; gives
//!   ingest (requests/s, latency p50/p99) and end to end (first POST until
//!   every task is `succeeded`, tasks/s);
//! - status reads: `GET /status` at the same concurrency;
//! - open loop: POSTs sent at fixed rates on a schedule, each latency taken
//!   from its intended send time (no coordinated omission);
//! - peak RSS (VmHWM) of the API and of each worker.
//!
//! Before them, the broker's ceiling: raw lapin publish-with-confirms and
//! consume-with-ack of the same message on a queue of its own. After them,
//! the slow-client soak (also alone: `ferry-bench stall`): a standalone API
//! with a short `request_timeout`, N connections that stop mid-head or
//! mid-body, `/status` latency from a few clients throughout, and when the
//! server closed the stalled connections. Last, the listing row (also
//! alone: `ferry-bench list`, in `list.rs`): 1 000 000 tasks seeded into
//! each backend (10 000 with `--quick`), the first page of `GET /tasks` for
//! each filter and `GET /tasks/counts`. Then the waiters row (also alone:
//! `ferry-bench waiters`, in `waiters.rs`): one api holding 1 000 long
//! polls and SSE streams while a worker finishes their tasks. Then three
//! more, each also alone: the overload row (`ferry-bench open`, in
//! `open.rs`), the embedded row (`ferry-bench standalone`, in
//! `standalone.rs`) and the backlog row (`ferry-bench backlog`, in
//! `backlog.rs`). Last of all (not with `--quick`), the Celery row (also
//! alone: `ferry-bench celery`, in `celery.rs`): the stack Ferry replaces,
//! the pacifica receiver, under the same load.
//!
//! The reads row alone (`ferry-bench reads`, in `reads.rs`) seeds a few
//! tasks and runs only the `/status` and HTTP floor loops, in rounds, and
//! with `--baseline DIR` compares another build's api on the same database.
//!
//! Beside the burst and the broker's ceiling, `cost.rs` reads what each
//! process spent: CPU per task, database statements and transactions per
//! task, the broker's socket reads and writes per task, and an idle row;
//! beside each open-loop rate, the CPU per task of each process. After the
//! burst and after each open-loop rate, RabbitMQ alone again, paced at
//! the rate that row ran at: its CPU per message at that rate, which is
//! what Ferry's CPU per task there compares with (RabbitMQ's CPU per
//! message grows as its rate falls).

mod backlog;
mod celery;
mod cost;
mod list;
mod open;
mod reads;
mod standalone;
mod waiters;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use ferry_core::broker::Queue;
use ferry_core::{Db, TaskStatus};
use ferry_testkit::{Api, Database, Proc};
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection as AmqpConnection, ConnectionProperties};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;

/// Benchmarks Ferry against RabbitMQ's own ceiling.
#[derive(Debug, Parser)]
#[command(about)]
struct Args {
    /// Run one row alone instead of the full run.
    #[command(subcommand)]
    mode: Option<Mode>,
    /// A short run (small N) that only checks the harness works.
    #[arg(long)]
    quick: bool,
    /// Database backends to run: sqlite, postgres.
    #[arg(long, value_delimiter = ',', default_value = "sqlite,postgres")]
    backends: Vec<String>,
    /// Worker replicas (processes).
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Task slots of each worker (`FERRY_CONCURRENCY`). Unset, the workers
    /// run with no knob set, on the defaults, as users run them.
    #[arg(long)]
    worker_concurrency: Option<usize>,
    /// Concurrent HTTP clients in the closed-loop phases.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Tasks in the burst phase (default 20000, or 500 with --quick).
    #[arg(long)]
    tasks: Option<usize>,
    /// Open-loop rates, tasks per second (default 100,1000,5000; 100,1000 with --quick).
    #[arg(long, value_delimiter = ',')]
    rates: Option<Vec<u32>>,
    /// Seconds each open-loop rate runs (default 5, or 1 with --quick).
    #[arg(long)]
    rate_seconds: Option<f64>,
    /// RabbitMQ.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    broker_url: String,
    /// PostgreSQL database in which each run gets a schema of its own,
    /// created if missing: the bench's alone, so that the server's
    /// statistics of it are the bench's (TLS off: on loopback it only costs
    /// CPU; libpq otherwise prefers it).
    #[arg(
        long,
        default_value = "postgres://postgres@127.0.0.1:5432/ferry_bench?sslmode=disable"
    )]
    postgres_url: String,
    /// Stalled connections in the full run's slow-client row (default 1000,
    /// or 100 with --quick).
    #[arg(long)]
    stall_connections: Option<usize>,
    /// The API's request_timeout in the full run's slow-client row (default
    /// 5s, or 2s with --quick).
    #[arg(long, value_parser = humantime::parse_duration)]
    stall_limit: Option<Duration>,
    /// Where to write the JSON results (default bench-results/latest.json,
    /// or bench-results/stall.json for `stall`).
    #[arg(long, global = true)]
    out: Option<PathBuf>,
}

#[derive(Debug, clap::Subcommand)]
enum Mode {
    /// Only the slow-client row: a standalone API with a short
    /// request_timeout, N connections that stall mid-head or mid-body (half
    /// each), `/status` latency from a few clients throughout, and when the
    /// stalled connections were closed.
    Stall(Stall),
    /// Only the listing row: N tasks seeded straight into each backend, then
    /// the first page of `GET /tasks` for each filter and `GET /tasks/counts`
    /// (p50/p99 from one client), and each filter's query plan checked.
    List(ListPlan),
    /// Only the waiters row: one api holds N waiters (half long polls, half
    /// SSE streams) on tasks a worker then runs; each wake is timed from
    /// its task's end, and the api's shared reader and memory are measured.
    Waiters(WaitersPlan),
    /// Only the overload row: the api with its default receive_limit
    /// offered POSTs in an open loop at rates past what it can take, on
    /// each backend: accepted, refused (503), errors, latencies, api RSS.
    Open(open::OpenPlan),
    /// Only the embedded row: one `ferry-api --standalone` (SQLite,
    /// in-process queue and worker): end-to-end throughput of a burst, an
    /// open loop at 1 000/s, memory and CPU per task.
    Standalone(standalone::StandalonePlan),
    /// Only the backlog row: N tasks pending with no worker, then the
    /// workers drain them: tasks/s, the relay's pass time, `/status` and
    /// `/receive` latency meanwhile.
    Backlog(backlog::BacklogPlan),
    /// Only the Celery row: the stack Ferry replaces (the pacifica receiver:
    /// CherryPy + Celery + RabbitMQ + PeeWee, `bench/celery/`) under the
    /// same load and client as Ferry's rows. Runs `bench/celery/setup` first.
    Celery(celery::CeleryPlan),
    /// Only the reads row: N tasks seeded through `POST /receive`, then
    /// rounds of the HTTP floor and `GET /status` closed loops on each
    /// backend; with `--baseline DIR`, another build's api beside this one,
    /// measured alternately with it (`reads.rs`).
    Reads(reads::ReadsPlan),
}

/// The waiters row.
#[derive(Debug, Clone, clap::Args)]
struct WaitersPlan {
    /// Waiters held at once (default 1000, or 200 with --quick).
    #[arg(long)]
    waiters: Option<usize>,
}

/// The listing row.
#[derive(Debug, Clone, clap::Args)]
struct ListPlan {
    /// Tasks seeded per backend (default 1000000, or 10000 with --quick).
    #[arg(long)]
    tasks: Option<usize>,
}

/// The slow-client soak.
#[derive(Debug, Clone, clap::Args)]
struct Stall {
    /// Stalled connections: half stop mid-head, half mid-body.
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// The API's request_timeout.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    limit: Duration,
    /// Clients reading `/status` in a closed loop throughout.
    #[arg(long, default_value_t = 4)]
    probes: usize,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Latency summary in milliseconds.
fn summary(mut samples: Vec<f64>) -> Value {
    samples.sort_by(|a, b| a.total_cmp(b));
    json!({
        "n": samples.len(),
        "p50_ms": percentile(&samples, 50.0),
        "p90_ms": percentile(&samples, 90.0),
        "p99_ms": percentile(&samples, 99.0),
        "max_ms": samples.last().copied().unwrap_or(f64::NAN),
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The message Ferry puts on the queue: a hyphenated UUID.
fn task_message() -> Vec<u8> {
    uuid::Uuid::new_v4().to_string().into_bytes()
}

/// RabbitMQ alone: persistent messages published with confirms (pipelined,
/// or one confirm at a time) and consumed with acks, on a queue of its own
/// that Ferry declares as it declares its own (durable, dead-lettered).
/// With `pace`, pipelined messages are sent on a schedule of that many a
/// second (those due each time the generator wakes, about every
/// millisecond) instead of as fast as the confirms allow.
async fn broker_ceiling(
    url: &str,
    n: usize,
    pipelined: bool,
    pace: Option<f64>,
) -> anyhow::Result<f64> {
    let queue = format!("ferry.bench.ceiling.{}", uuid::Uuid::new_v4().simple());
    // Publishing nothing declares the queue and its dead-letter twin.
    Queue::amqp(url, &queue).publish(&[]).await?;
    let rate = ceiling_on(url, &queue, n, pipelined, pace).await;
    ferry_testkit::delete_task_queue(url, &queue);
    rate
}

/// RabbitMQ alone at `rate` messages a second for about `seconds` (at
/// least 500 messages): its CPU per message at the rate a row of Ferry's
/// ran, beside Ferry's per task. RabbitMQ's CPU per message grows as its
/// rate falls (fewer messages share each socket read, write and disk
/// sync), so the unpaced ceiling's figure is not what a slower row's
/// messages cost it.
async fn broker_alone_at(url: &str, rate: f64, seconds: f64) -> Value {
    if !rate.is_finite() || rate < 1.0 {
        return Value::Null;
    }
    let n = ((rate * seconds) as usize).max(500);
    let (sent, cpu) = cost::broker_ceiling(n, broker_ceiling(url, n, true, Some(rate))).await;
    match sent {
        Ok(per_s) => {
            json!({"rate_per_s": rate, "achieved_per_s": per_s, "messages": n, "cpu_us_per_message": cpu})
        }
        Err(e) => {
            eprintln!("RabbitMQ alone at {rate:.0}/s failed: {e:#}");
            Value::Null
        }
    }
}

async fn ceiling_on(
    url: &str,
    queue: &str,
    n: usize,
    pipelined: bool,
    pace: Option<f64>,
) -> anyhow::Result<f64> {
    let publisher = AmqpConnection::connect(url, ConnectionProperties::default()).await?;
    let consumer_conn = AmqpConnection::connect(url, ConnectionProperties::default()).await?;
    let pub_channel = publisher.create_channel().await?;
    pub_channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let sub_channel = consumer_conn.create_channel().await?;
    sub_channel
        .basic_qos(200, BasicQosOptions::default())
        .await?;
    let mut consumer = sub_channel
        .basic_consume(
            queue.into(),
            "ceiling".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let consume = tokio::spawn(async move {
        let mut seen = 0;
        while seen < n {
            let Some(delivery) = consumer.next().await else {
                bail!("consumer ended early");
            };
            delivery?.ack(BasicAckOptions::default()).await?;
            seen += 1;
        }
        Ok(())
    });
    let start = Instant::now();
    let mut pending = std::collections::VecDeque::new();
    for i in 0..n {
        if let Some(rate) = pace {
            let due = start + Duration::from_secs_f64(i as f64 / rate);
            if due > Instant::now() {
                tokio::time::sleep_until(due.into()).await;
            }
        }
        let confirm = pub_channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                &task_message(),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await?;
        if pipelined {
            pending.push_back(confirm);
            // A bounded window of outstanding confirms, as Ferry keeps.
            if pending.len() >= 1000 {
                pending.pop_front().expect("not empty").await?;
            }
        } else {
            confirm.await?;
        }
    }
    for confirm in pending {
        confirm.await?;
    }
    consume.await??;
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// The one route the bench runs.
const ECHO_ONLY: &str = "[[routes]]\ntype = \"org.ferry.echo\"\nhandler = \"echo\"\n";

/// One backend's fresh deployment (database, queue, config) and its
/// processes; dropped processes first, then the queues, schema and files.
struct Deployment {
    api: Api,
    workers: Vec<Proc>,
    database_url: String,
    base: String,
    /// What each process spends (`cost.rs`).
    meter: cost::Meter,
    _deployment: ferry_testkit::Deployment,
}

/// The database of the backend named `backend` (`sqlite`, `postgres`).
fn database(args: &Args, backend: &str) -> anyhow::Result<Database> {
    Ok(match backend {
        "sqlite" => Database::Sqlite,
        "postgres" => Database::Postgres(args.postgres_url.clone()),
        other => bail!("unknown backend {other:?} (sqlite, postgres)"),
    })
}

/// A deployment of the bench's binaries on `database` as every row runs
/// it: the echo route only, the bench's RabbitMQ, `RUST_LOG=warn`, and
/// the workers' slots when `--worker-concurrency` is given.
fn bench_deployment(
    args: &Args,
    database: Database,
    name: &str,
    bin_dir: &Path,
) -> ferry_testkit::Deployment {
    let deployment = ferry_testkit::Deployment::new(database, name)
        .config(ECHO_ONLY)
        .broker(&args.broker_url)
        .bins(bin_dir)
        .env("RUST_LOG", "warn");
    match args.worker_concurrency {
        Some(slots) => deployment.env("FERRY_CONCURRENCY", &slots.to_string()),
        None => deployment,
    }
}

/// `deployment` with each of its processes writing its database counts
/// into the deployment's directory.
fn counting(deployment: ferry_testkit::Deployment) -> anyhow::Result<ferry_testkit::Deployment> {
    let counts_dir = deployment.dir.path().to_path_buf();
    Ok(deployment.env(
        ferry_core::db::counts::ENV,
        counts_dir.to_str().context("a UTF-8 path")?,
    ))
}

impl Deployment {
    async fn start(args: &Args, backend: &str, bin_dir: &Path) -> anyhow::Result<Self> {
        Self::start_with(args, backend, bin_dir, &[]).await
    }

    /// [`Deployment::start`] with more environment for every process.
    async fn start_with(
        args: &Args,
        backend: &str,
        bin_dir: &Path,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let mut deployment = counting(bench_deployment(
            args,
            database(args, backend)?,
            "bench",
            bin_dir,
        ))?;
        for (key, value) in env {
            deployment = deployment.env(key, value);
        }
        let api = deployment.api().await;
        let workers: Vec<Proc> = (0..args.workers)
            .map(|i| deployment.worker(&format!("worker-{i}")))
            .collect();
        let mut pids = vec![("api".to_string(), api.proc.pid())];
        pids.extend(workers.iter().map(|w| (w.name.clone(), w.pid())));
        let pg = deployment
            .pg
            .as_ref()
            .map(|schema| (deployment.database_url.clone(), schema.name.clone()));
        Ok(Self {
            meter: cost::Meter::new(&pids, deployment.dir.path(), pg),
            database_url: deployment.database_url.clone(),
            base: api.base.clone(),
            api,
            workers,
            _deployment: deployment,
        })
    }

    fn rss(&self) -> Value {
        let workers: Vec<Value> = self
            .workers
            .iter()
            .map(|w| json!({"name": w.name, "peak_rss_mib": w.peak_rss_mib()}))
            .collect();
        json!({"api_peak_rss_mib": self.api.proc.peak_rss_mib(), "workers": workers})
    }
}

/// The machine's load averages (`/proc/loadavg`): on a shared machine,
/// what else was running beside a row.
fn load_average() -> Value {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map_or(Value::Null, |l| json!(l.trim()))
}

/// Resident memory of process `pid` now (VmRSS), in MiB.
fn rss_mib(pid: i32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Samples a process's VmRSS every 50 ms until stopped: its value at the
/// start and the highest seen (VmHWM would carry the peak of earlier
/// phases).
struct RssSampler {
    start_mib: Option<f64>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    sampler: tokio::task::JoinHandle<(Option<f64>, Vec<f64>)>,
}

impl RssSampler {
    /// Samples every 50 ms; keeps the peak, and the peak of each second.
    fn start(pid: i32) -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let start_mib = rss_mib(pid);
        let stopped = stop.clone();
        let sampler = tokio::spawn(async move {
            let mut peak = start_mib;
            let mut seconds = Vec::new();
            let mut second: Option<f64> = None;
            let mut slice = std::time::Instant::now();
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(now) = rss_mib(pid) {
                    peak = Some(peak.map_or(now, |p| p.max(now)));
                    second = Some(second.map_or(now, |p| p.max(now)));
                }
                if slice.elapsed() >= Duration::from_secs(1) {
                    seconds.extend(second.take());
                    slice = std::time::Instant::now();
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            seconds.extend(second);
            (peak, seconds)
        });
        Self {
            start_mib,
            stop,
            sampler,
        }
    }

    /// `{"start_mib", "peak_mib", "per_second_peak_mib"}`.
    async fn finish(self) -> Value {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (peak, seconds) = self.sampler.await.unwrap_or_default();
        json!({"start_mib": self.start_mib, "peak_mib": peak, "per_second_peak_mib": seconds})
    }
}

fn event(prefix: &str, i: usize) -> String {
    json!({
        "specversion": "1.0",
        "type": "org.ferry.echo",
        "source": "/ferry/bench",
        "id": format!("{prefix}-{i}"),
        "data": {"i": i}
    })
    .to_string()
}

/// POSTs one event; returns the task id. Any answer but a `202` is an
/// error.
async fn submit(client: &reqwest::Client, base: &str, body: String) -> anyhow::Result<String> {
    Ok(submit_until_accepted(client, base, body, 0).await?.0)
}

/// [`submit`] as a client of the burst: a `503` (the api's admission
/// control shedding load, `receive_limit`) is waited out and sent again,
/// as a producer would, after its `Retry-After` (at most a second), up to
/// `resends` times. The id, and how many times the request was refused.
async fn submit_until_accepted(
    client: &reqwest::Client,
    base: &str,
    body: String,
    resends: u64,
) -> anyhow::Result<(String, u64)> {
    let mut refused = 0;
    loop {
        let response = client
            .post(format!("{base}/receive"))
            .header("content-type", "application/cloudevents+json")
            .body(body.clone())
            .send()
            .await?;
        match response.status().as_u16() {
            202 => {
                let answer: Value = response.json().await?;
                let id = answer["id"].as_str().context("no id")?.to_string();
                return Ok((id, refused));
            }
            503 if refused < resends => {
                refused += 1;
                let wait = response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok()?.parse::<f64>().ok())
                    .map_or(Duration::from_millis(10), |s| {
                        Duration::from_secs_f64(s.clamp(0.0, 1.0))
                    });
                tokio::time::sleep(wait).await;
            }
            _ => bail!("/receive answered {}", response.status()),
        }
    }
}

/// How many times a burst client sends a refused request again.
const BURST_RESENDS: u64 = 1000;

/// Waits until `expected` tasks have succeeded; returns when that was seen.
async fn wait_succeeded(db: &Db, expected: i64, timeout: Duration) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + timeout;
    loop {
        let done = db
            .run_blocking(|db| db.count_with_status(TaskStatus::Succeeded))
            .await?;
        if done >= expected {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            bail!("only {done} of {expected} tasks succeeded within {timeout:?}");
        }
        // A count is a scan of the task table: polling it hard would load the
        // database under test. Latencies come from finished_at, not from here.
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Closed loop: `n` POSTs from `concurrency` clients, then until all succeed.
async fn burst(
    base: &str,
    db: &Db,
    client: &reqwest::Client,
    n: usize,
    concurrency: usize,
) -> anyhow::Result<(Value, Vec<String>)> {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let clients: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, base, next) = (client.clone(), base.to_string(), next.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut ids = Vec::new();
                let mut refused = 0;
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= n {
                        return Ok::<_, anyhow::Error>((latencies, ids, refused));
                    }
                    let sent = Instant::now();
                    let (id, times) =
                        submit_until_accepted(&client, &base, event("burst", i), BURST_RESENDS)
                            .await?;
                    ids.push(id);
                    refused += times;
                    latencies.push(ms(sent.elapsed()));
                }
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(n);
    let mut ids = Vec::with_capacity(n);
    let mut refused = 0;
    for c in clients {
        let (l, i, r) = c.await??;
        latencies.extend(l);
        ids.extend(i);
        refused += r;
    }
    let ingested = start.elapsed();
    let done = wait_succeeded(db, n as i64, Duration::from_secs(600)).await? - start;
    Ok((
        json!({
            "tasks": n,
            "concurrency": concurrency,
            "ingest_per_s": n as f64 / ingested.as_secs_f64(),
            "ingest_latency": summary(latencies),
            "refused_and_sent_again": refused,
            "end_to_end_per_s": n as f64 / done.as_secs_f64(),
            "end_to_end_s": done.as_secs_f64(),
        }),
        ids,
    ))
}

/// Closed loop `GET`s of `path(i)` for i in 0..n from `concurrency`
/// clients, each expecting `expected`.
async fn closed_loop_gets(
    client: &reqwest::Client,
    base: &str,
    path: impl Fn(usize) -> String + Send + Sync + 'static,
    expected: reqwest::StatusCode,
    n: usize,
    concurrency: usize,
) -> anyhow::Result<Value> {
    let path = Arc::new(path);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let readers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, base, next, path) =
                (client.clone(), base.to_string(), next.clone(), path.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= n {
                        return Ok::<_, anyhow::Error>(latencies);
                    }
                    let sent = Instant::now();
                    let r = client.get(format!("{base}{}", path(i))).send().await?;
                    if r.status() != expected {
                        bail!("GET {} answered {}", path(i), r.status());
                    }
                    r.bytes().await?;
                    latencies.push(ms(sent.elapsed()));
                }
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(n);
    for r in readers {
        latencies.extend(r.await??);
    }
    Ok(json!({
        "reads": n,
        "concurrency": concurrency,
        "reads_per_s": n as f64 / start.elapsed().as_secs_f64(),
        "latency": summary(latencies),
    }))
}

/// Closed loop `GET /status` reads of existing tasks.
async fn status_reads(
    d: &Deployment,
    client: &reqwest::Client,
    ids: &[String],
    n: usize,
    concurrency: usize,
) -> anyhow::Result<Value> {
    let ids = ids.to_vec();
    let path = move |i: usize| format!("/status/{}", ids[i % ids.len()]);
    closed_loop_gets(
        client,
        &d.base,
        path,
        reqwest::StatusCode::OK,
        n,
        concurrency,
    )
    .await
}

/// The HTTP floor: closed loop `GET`s that Rocket answers with no database
/// work at all (an unknown path, answered by the JSON 404 catcher). What
/// `/status` can reach with the same client on the same cores.
async fn http_floor(
    d: &Deployment,
    client: &reqwest::Client,
    n: usize,
    concurrency: usize,
) -> anyhow::Result<Value> {
    let path = |i: usize| format!("/no-such-route/{i}");
    closed_loop_gets(
        client,
        &d.base,
        path,
        reqwest::StatusCode::NOT_FOUND,
        n,
        concurrency,
    )
    .await
}

/// How the api answered one open-loop POST.
#[derive(Debug)]
enum Answer {
    /// 202: the task's id.
    Accepted(String),
    /// 503 `overloaded`: `receive_limit` requests were already waiting.
    Refused,
    /// Anything else: another status, a connection error, a timeout.
    Error(String),
}

/// One open-loop POST: its index in the schedule, the answer, and the time
/// from its intended send time to the answer's head (ms).
#[derive(Debug)]
struct Sent {
    i: usize,
    answer: Answer,
    latency_ms: f64,
    /// From the intended send time to the moment the request had a
    /// socket: the generator's own delay, inside `latency_ms`.
    lag_ms: f64,
}

/// What an open-loop generator sent, and on what schedule.
struct Offered {
    sent: Vec<Sent>,
    /// The intended send time of request 0, on the wall clock.
    start_utc: chrono::DateTime<chrono::Utc>,
    interval: Duration,
    /// The most requests sent and not yet answered at once.
    peak_in_flight: usize,
    /// From each intended send time to the moment the request was handed
    /// to a connection (waiting for the generator's loop or a socket).
    send_lag_ms: Vec<f64>,
    /// How long the schedule took to send, from request 0's intended time.
    elapsed: Duration,
}

impl Offered {
    /// The intended send time of request `i`, on the wall clock.
    fn intended_utc(&self, i: usize) -> chrono::DateTime<chrono::Utc> {
        self.start_utc + self.interval * i as u32
    }

    /// The accepted tasks: (schedule index, task id).
    fn accepted(&self) -> Vec<(usize, String)> {
        self.sent
            .iter()
            .filter_map(|s| match &s.answer {
                Answer::Accepted(id) => Some((s.i, id.clone())),
                _ => None,
            })
            .collect()
    }
}

/// One POST of an open-loop schedule, sorted by its answer.
async fn offer_one(client: &reqwest::Client, base: &str, body: String) -> Answer {
    let sent = client
        .post(format!("{base}/receive"))
        .header("content-type", "application/cloudevents+json")
        .body(body)
        .send()
        .await;
    let response = match sent {
        Ok(response) => response,
        Err(e) => return Answer::Error(e.to_string()),
    };
    match response.status().as_u16() {
        202 => match response.json::<Value>().await {
            Ok(body) => match body["id"].as_str() {
                Some(id) => Answer::Accepted(id.to_string()),
                None => Answer::Error(format!("a 202 without an id: {body}")),
            },
            Err(e) => Answer::Error(e.to_string()),
        },
        503 => {
            let body: Value = response.json().await.unwrap_or_default();
            if body["error"] == "overloaded" {
                Answer::Refused
            } else {
                Answer::Error(format!("503 {body}"))
            }
        }
        other => Answer::Error(format!("/receive answered {other}")),
    }
}

/// The open-loop generator: `rate`/s POSTs for `seconds`, each spawned at
/// its intended send time whatever the earlier ones are doing (the loop
/// never waits for an answer). A thread of its own keeps the time: it
/// sleeps until each request is due (the kernel's timers wake it within
/// tens of microseconds, where the runtime's timer wheel, in whole
/// milliseconds, woke the loop up to a millisecond late and added that to
/// every latency), and hands it to the runtime, which sends it. At most
/// `sockets` are on the wire at once, a bound of the generator's own
/// (file descriptors); a request waiting for one is still timed from its
/// intended time, and the wait shows in the send lag. Events are
/// `<prefix>-<i>`.
async fn offer(
    client: &reqwest::Client,
    base: &str,
    rate: u32,
    seconds: f64,
    prefix: &str,
    sockets: usize,
) -> anyhow::Result<Offered> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let n = (f64::from(rate) * seconds).round() as usize;
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate));
    let start = std::time::Instant::now() + Duration::from_millis(50);
    let start_utc = chrono::Utc::now() + Duration::from_millis(50);
    let sockets = Arc::new(Semaphore::new(sockets));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let mut sends = tokio::task::JoinSet::new();
    let (due, mut due_now) = tokio::sync::mpsc::unbounded_channel::<usize>();
    let pacer = std::thread::spawn(move || {
        for i in 0..n {
            let at = start + interval * i as u32;
            if let Some(wait) = at.checked_duration_since(std::time::Instant::now()) {
                std::thread::sleep(wait);
            }
            if due.send(i).is_err() {
                return;
            }
        }
    });
    while let Some(i) = due_now.recv().await {
        let intended = start + interval * i as u32;
        let (client, base, sockets) = (client.clone(), base.to_string(), sockets.clone());
        let (in_flight, peak) = (in_flight.clone(), peak.clone());
        let body = event(prefix, i);
        sends.spawn(async move {
            let _socket = sockets.acquire_owned().await?;
            let lag = ms(intended.elapsed());
            let now = in_flight.fetch_add(1, Ordering::Relaxed) + 1;
            peak.fetch_max(now, Ordering::Relaxed);
            let answer = offer_one(&client, &base, body).await;
            in_flight.fetch_sub(1, Ordering::Relaxed);
            let latency_ms = ms(intended.elapsed());
            anyhow::Ok(Sent {
                i,
                answer,
                latency_ms,
                lag_ms: lag,
            })
        });
    }
    pacer.join().expect("the pacer does not panic");
    let mut sent = Vec::with_capacity(n);
    let mut send_lag_ms = Vec::with_capacity(n);
    while let Some(done) = sends.join_next().await {
        let s = done??;
        send_lag_ms.push(s.lag_ms);
        sent.push(s);
    }
    sent.sort_by_key(|s| s.i);
    Ok(Offered {
        sent,
        start_utc,
        interval,
        peak_in_flight: peak.load(Ordering::Relaxed),
        send_lag_ms,
        elapsed: start.elapsed(),
    })
}

/// From each accepted task's intended send time to its recorded
/// `finished_at` (same machine, same clock), once every one has succeeded;
/// read through `/status` by 32 clients.
async fn succeeded_latencies(
    client: &reqwest::Client,
    base: &str,
    offered: &Offered,
) -> anyhow::Result<Vec<f64>> {
    Ok(task_latencies(client, base, offered).await?.succeeded)
}

/// Each accepted task's latencies, in milliseconds: from its intended send
/// time to its `finished_at`, and split at its `started_at` (stamped by
/// its worker's claim batch; `finished_at` by its outcome batch, before
/// that batch commits).
struct TaskLatencies {
    succeeded: Vec<f64>,
    to_started: Vec<f64>,
    started_to_finished: Vec<f64>,
}

/// [`TaskLatencies`] of every accepted task, once each has succeeded;
/// read through `/status` by 32 clients.
async fn task_latencies(
    client: &reqwest::Client,
    base: &str,
    offered: &Offered,
) -> anyhow::Result<TaskLatencies> {
    let accepted = offered.accepted();
    let tasks = Arc::new(accepted);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut readers = tokio::task::JoinSet::new();
    for _ in 0..32 {
        let (client, base, tasks, next) = (
            client.clone(),
            base.to_string(),
            tasks.clone(),
            next.clone(),
        );
        readers.spawn(async move {
            let mut finished = Vec::new();
            loop {
                let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some((i, id)) = tasks.get(k) else {
                    return anyhow::Ok(finished);
                };
                // The count the caller waited for may include tasks of
                // requests that failed after their commit: a task not done
                // yet is asked for again.
                let deadline = Instant::now() + Duration::from_secs(60);
                let at: [chrono::DateTime<chrono::Utc>; 2] = loop {
                    let task: Value = client
                        .get(format!("{base}/status/{id}"))
                        .send()
                        .await?
                        .json()
                        .await?;
                    if let (Some(started), Some(finished)) =
                        (task["started_at"].as_str(), task["finished_at"].as_str())
                    {
                        break [started.parse()?, finished.parse()?];
                    }
                    if Instant::now() > deadline {
                        bail!("task {id} has not finished: {task}");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                };
                finished.push((*i, at));
            }
        });
    }
    let ms = |d: chrono::TimeDelta| d.as_seconds_f64() * 1000.0;
    let mut latencies = TaskLatencies {
        succeeded: Vec::with_capacity(tasks.len()),
        to_started: Vec::with_capacity(tasks.len()),
        started_to_finished: Vec::with_capacity(tasks.len()),
    };
    while let Some(done) = readers.join_next().await {
        for (i, [started, finished]) in done?? {
            let intended = offered.intended_utc(i);
            latencies.succeeded.push(ms(finished - intended));
            latencies.to_started.push(ms(started - intended));
            latencies.started_to_finished.push(ms(finished - started));
        }
    }
    Ok(latencies)
}

/// Open loop: POSTs at `rate`/s for `seconds`, each on its own schedule.
/// Submit latency is from the intended send time to the 202; end-to-end
/// latency is from the intended send time to the task's recorded
/// `finished_at` (same machine, same clock). Every POST must be accepted.
async fn open_loop(
    d: &Deployment,
    db: &Db,
    client: &reqwest::Client,
    rate: u32,
    seconds: f64,
    already_succeeded: i64,
) -> anyhow::Result<Value> {
    // Bounds the sockets the generator opens; a send that waits here is
    // still measured from its intended time.
    let inside_before = SubmitInside::read(client, &d.base).await;
    let offered = offer(client, &d.base, rate, seconds, &format!("open-{rate}"), 512).await?;
    let inside = SubmitInside::read(client, &d.base)
        .await
        .zip(inside_before)
        .map(|(after, before)| after.since(&before));
    // A refusal (503 overloaded, past the default receive_limit) is the
    // api doing its job on a busy machine: counted, not an error. Any
    // other answer is.
    if let Some(s) = offered
        .sent
        .iter()
        .find(|s| matches!(s.answer, Answer::Error(_)))
    {
        bail!("open loop at {rate}/s: request {} got {:?}", s.i, s.answer);
    }
    let accepted: Vec<&Sent> = offered
        .sent
        .iter()
        .filter(|s| matches!(s.answer, Answer::Accepted(_)))
        .collect();
    let n = accepted.len();
    wait_succeeded(db, already_succeeded + n as i64, Duration::from_secs(600)).await?;
    let submit_ms = accepted.iter().map(|s| s.latency_ms).collect();
    let done = task_latencies(client, &d.base, &offered).await?;
    Ok(json!({
        "rate_per_s": rate,
        "tasks": n,
        "refused": offered.sent.len() - n,
        "submit_latency": summary(submit_ms),
        "submit_to_succeeded_latency": summary(done.succeeded),
        "submit_to_started_latency": summary(done.to_started),
        "started_to_finished_latency": summary(done.started_to_finished),
        "inside_the_api": inside,
    }))
}

/// The api's `/metrics` text.
async fn metrics_text(client: &reqwest::Client, base: &str) -> anyhow::Result<String> {
    Ok(client
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .text()
        .await?)
}

/// Where a submit's time goes inside the api, from its `/metrics`: the
/// `/receive` handler's time and the insert batcher's (sums and counts,
/// so that two readings give the means between them).
#[derive(Debug, Clone, Copy)]
struct SubmitInside {
    receive_s: f64,
    receives: f64,
    batch_s: f64,
    batches: f64,
    batched: f64,
    /// Messages the api published, and the tasks they named.
    messages: f64,
    message_tasks: f64,
}

impl SubmitInside {
    async fn read(client: &reqwest::Client, base: &str) -> Option<Self> {
        let text = metrics_text(client, base).await.ok()?;
        // The sum over every sample of `name` whose labels hold `label`.
        let sum = |name: &str, label: &str| -> f64 {
            text.lines()
                .filter_map(|line| {
                    let (labels, value) = line
                        .strip_prefix(name)?
                        .strip_prefix('{')?
                        .split_once("} ")?;
                    labels
                        .contains(label)
                        .then(|| value.trim().parse::<f64>().ok())?
                })
                .sum()
        };
        // The value of `name`, a sample with no labels (none yet: 0).
        let plain = |name: &str| ferry_testkit::metric_value(&text, name).unwrap_or(0.0);
        let receive = "route=\"/receive\"";
        let insert = "batcher=\"insert\"";
        Some(Self {
            receive_s: sum("ferry_http_request_duration_seconds_sum", receive),
            receives: sum("ferry_http_request_duration_seconds_count", receive),
            batch_s: sum("ferry_batch_duration_seconds_sum", insert),
            batches: sum("ferry_batch_duration_seconds_count", insert),
            batched: sum("ferry_batch_size_sum", insert),
            messages: plain("ferry_messages_published_total"),
            message_tasks: plain("ferry_message_tasks_published_total"),
        })
    }

    /// The means between `before` and this reading, as JSON.
    fn since(&self, before: &Self) -> Value {
        let receives = self.receives - before.receives;
        let batches = self.batches - before.batches;
        json!({
            "receive_mean_ms": 1e3 * (self.receive_s - before.receive_s) / receives,
            "insert_batches": batches,
            "insert_batch_mean_ms": 1e3 * (self.batch_s - before.batch_s) / batches,
            "writes_per_insert_batch": (self.batched - before.batched) / batches,
            "tasks_per_message": self.tasks_per_message(before),
        })
    }

    /// Tasks per message the api published between `before` and this
    /// reading (`null` when it published none: standalone).
    fn tasks_per_message(&self, before: &Self) -> Value {
        let messages = self.messages - before.messages;
        if messages > 0.0 {
            json!((self.message_tasks - before.message_tasks) / messages)
        } else {
            Value::Null
        }
    }
}

async fn run_backend(args: &Args, backend: &str, bin_dir: &Path) -> anyhow::Result<Value> {
    let d = Deployment::start(args, backend, bin_dir).await?;
    let db = Db::connect(&d.database_url, 2)?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .build()?;
    let tasks = args.tasks.unwrap_or(if args.quick { 500 } else { 20_000 });
    eprintln!("[{backend}] idle CPU");
    let idle = d.meter.idle(Duration::from_secs(2)).await;
    eprintln!("[{backend}] burst of {tasks} tasks");
    let before = d.meter.start().await;
    let inside_before = SubmitInside::read(&client, &d.base).await;
    let (mut burst, ids) = burst(&d.base, &db, &client, tasks, args.concurrency).await?;
    if let (Some(after), Some(before)) = (SubmitInside::read(&client, &d.base).await, inside_before)
    {
        burst["tasks_per_message"] = after.tasks_per_message(&before);
    }
    let mut burst_cost = d.meter.finish(before, tasks, true).await;
    let alone_seconds = if args.quick { 1.0 } else { 3.0 };
    let burst_rate = burst["end_to_end_per_s"].as_f64().unwrap_or(0.0);
    eprintln!("[{backend}] RabbitMQ alone at the burst's rate, {burst_rate:.0}/s");
    burst_cost["broker_alone"] = broker_alone_at(&args.broker_url, burst_rate, alone_seconds).await;
    // Counting builds each statement's SQL again, which the floor never
    // pays: off while the two are compared (`counts::PAUSE_FILE`).
    d.meter.pause_counts(true).await?;
    eprintln!("[{backend}] status reads");
    let reads = status_reads(&d, &client, &ids, tasks * 2, args.concurrency).await?;
    eprintln!("[{backend}] HTTP floor (no database work)");
    let floor = http_floor(&d, &client, tasks * 2, args.concurrency).await?;
    d.meter.pause_counts(false).await?;
    let rates = args.rates.clone().unwrap_or(if args.quick {
        vec![100, 1000]
    } else {
        vec![100, 1000, 5000]
    });
    let seconds = args
        .rate_seconds
        .unwrap_or(if args.quick { 1.0 } else { 5.0 });
    let mut open = Vec::new();
    let mut succeeded = tasks as i64;
    for rate in rates {
        eprintln!("[{backend}] open loop at {rate}/s for {seconds}s");
        let before = d.meter.start_cpu().await;
        let mut result = open_loop(&d, &db, &client, rate, seconds, succeeded).await?;
        let accepted = result["tasks"].as_i64().unwrap_or(0);
        succeeded += accepted;
        result["cost"] = d
            .meter
            .finish(before, usize::try_from(accepted).unwrap_or(0), false)
            .await;
        eprintln!("[{backend}] RabbitMQ alone at {rate}/s");
        result["cost"]["broker_alone"] =
            broker_alone_at(&args.broker_url, f64::from(rate), seconds).await;
        // Peaks so far: the memory a load needs is read before a higher one.
        result["memory_peak_so_far"] = d.rss();
        open.push(result);
    }
    Ok(json!({
        "backend": backend,
        "workers": args.workers,
        "worker_concurrency": args.worker_concurrency.unwrap_or(ferry_core::config::DEFAULT_CONCURRENCY),
        "burst": burst,
        "status": reads,
        "http_floor": floor,
        "open_loop": open,
        "memory": d.rss(),
        "cost": {"idle": idle, "burst": burst_cost, "by_name": d.meter.pids_by_name()},
    }))
}

/// A connection that sends part of a request and then nothing.
struct Stalled {
    stream: tokio::net::TcpStream,
    /// Just before it connected: no limit of the server's can start earlier.
    opened: Instant,
}

/// What happened to one stalled connection: when the server closed it
/// (after the connection was opened), whether with a 408 first.
async fn wait_closed(mut stalled: Stalled, patience: Duration) -> Option<(Duration, bool)> {
    let mut got = Vec::new();
    let read = async {
        let mut chunk = [0; 4096];
        loop {
            match stalled.stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(patience, read).await.ok()?;
    Some((stalled.opened.elapsed(), got.starts_with(b"HTTP/1.1 408 ")))
}

/// The slow-client soak on a standalone API (SQLite, in-process workers):
/// `plan.probes` clients read `/status` of a real task in a closed loop, for
/// a second alone, then while `plan.connections` connections stall (half
/// mid-head, half mid-body) until the server has closed them all.
async fn stall(plan: &Stall, bin_dir: &Path) -> anyhow::Result<Value> {
    let deployment = ferry_testkit::Deployment::new(Database::Sqlite, "bench")
        .config(ECHO_ONLY)
        .bins(bin_dir)
        .env(
            "FERRY_REQUEST_TIMEOUT",
            &humantime::format_duration(plan.limit).to_string(),
        )
        .env("RUST_LOG", "warn");
    let api = deployment.standalone().await;
    let base = api.base.clone();
    let client = reqwest::Client::new();
    let id = submit(&client, &base, event("stall", 0)).await?;

    // Probes, from before the stall until after it.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let probes: Vec<_> = (0..plan.probes.max(1))
        .map(|_| {
            let (client, url, stop) = (client.clone(), format!("{base}/status/{id}"), stop.clone());
            tokio::spawn(async move {
                let mut samples = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let sent = Instant::now();
                    let r = client.get(&url).send().await?;
                    if r.status() != reqwest::StatusCode::OK {
                        bail!("GET /status answered {}", r.status());
                    }
                    r.bytes().await?;
                    samples.push((sent, ms(sent.elapsed())));
                }
                Ok::<_, anyhow::Error>(samples)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;

    let stall_start = Instant::now();
    let addr = base.trim_start_matches("http://").to_string();
    let half_head: &[u8] = b"GET /health HTTP/1.1\r\nHost: ferry\r\nUser-Ag";
    let half_body: &[u8] = b"POST /receive HTTP/1.1\r\nHost: ferry\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n0123456789";
    let mut stalled = Vec::with_capacity(plan.connections);
    for i in 0..plan.connections {
        let opened = Instant::now();
        let mut stream = tokio::net::TcpStream::connect(&addr)
            .await
            .with_context(|| {
                format!("opening stalled connection {i} (is `ulimit -n` large enough?)")
            })?;
        stream
            .write_all(if i % 2 == 0 { half_head } else { half_body })
            .await?;
        stalled.push(Stalled { stream, opened });
    }
    let opened_in = stall_start.elapsed();
    let patience = plan.limit + Duration::from_secs(60);
    let waits: Vec<_> = stalled
        .into_iter()
        .map(|s| tokio::spawn(wait_closed(s, patience)))
        .collect();
    let mut closed_after = Vec::new();
    let mut answered = 0;
    let mut early = 0;
    for wait in waits {
        if let Some((after, with_408)) = wait.await? {
            closed_after.push(ms(after));
            answered += usize::from(with_408);
            early += usize::from(after < plan.limit);
        }
    }
    let stall_end = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut before = Vec::new();
    let mut during = Vec::new();
    for probe in probes {
        for (sent, latency) in probe.await?? {
            if sent < stall_start {
                before.push(latency);
            } else if sent <= stall_end {
                during.push(latency);
            }
        }
    }
    let closed = closed_after.len();
    let first_close = closed_after.iter().copied().reduce(f64::min);
    let mut closed_after = summary(closed_after);
    closed_after["min_ms"] = json!(first_close);
    let result = json!({
        "connections": plan.connections,
        "mid_head": plan.connections.div_ceil(2),
        "mid_body": plan.connections / 2,
        "limit_s": plan.limit.as_secs_f64(),
        "opened_in_s": opened_in.as_secs_f64(),
        "closed": closed,
        "closed_with_408": answered,
        "closed_before_limit": early,
        "not_closed": plan.connections - closed,
        "closed_after_open": closed_after,
        "probes": plan.probes.max(1),
        "status_before": summary(before),
        "status_during": summary(during),
        "api_peak_rss_mib": api.proc.peak_rss_mib(),
    });
    drop(api);
    Ok(result)
}

fn print_stall(stall: &Value) {
    let secs = |v: &Value| {
        v.as_f64()
            .map_or_else(|| "-".into(), |ms| format!("{:.2}", ms / 1000.0))
    };
    println!(
        "\n== slow clients (standalone, request_timeout {}s) ==",
        fmt(&stall["limit_s"])
    );
    let when = if stall["closed"].as_u64().unwrap_or(0) == 0 {
        String::new()
    } else {
        format!(
            ", {} to {} s after they connected (p50 {} s)",
            secs(&stall["closed_after_open"]["min_ms"]),
            secs(&stall["closed_after_open"]["max_ms"]),
            secs(&stall["closed_after_open"]["p50_ms"]),
        )
    };
    println!(
        "stalled         {} connections ({} mid-head, {} mid-body): {} closed by the server ({} with a 408, {} before the limit, {} never){when}",
        stall["connections"],
        stall["mid_head"],
        stall["mid_body"],
        stall["closed"],
        stall["closed_with_408"],
        stall["closed_before_limit"],
        stall["not_closed"],
    );
    println!(
        "/status         during the stall p50 {} p99 {} max {} ms ({} reads, {} clients) | before it p50 {} p99 {} max {} ms",
        fmt(&stall["status_during"]["p50_ms"]),
        fmt(&stall["status_during"]["p99_ms"]),
        fmt(&stall["status_during"]["max_ms"]),
        stall["status_during"]["n"],
        stall["probes"],
        fmt(&stall["status_before"]["p50_ms"]),
        fmt(&stall["status_before"]["p99_ms"]),
        fmt(&stall["status_before"]["max_ms"]),
    );
}

fn fmt(v: &Value) -> String {
    v.as_f64().map_or_else(
        || "-".into(),
        |f| {
            if f >= 100.0 {
                format!("{f:.0}")
            } else {
                format!("{f:.2}")
            }
        },
    )
}

fn workers_rss(memory: &Value) -> String {
    let workers: Vec<String> = memory["workers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|w| fmt(&w["peak_rss_mib"]))
        .collect();
    workers.join(" / ")
}

fn print_table(results: &Value) {
    let ceiling = &results["broker_ceiling"];
    println!(
        "\nRabbitMQ alone (same message, persistent, confirms, acks): {} msg/s pipelined, {} msg/s one confirm at a time",
        fmt(&ceiling["pipelined_per_s"]),
        fmt(&ceiling["sequential_per_s"])
    );
    for b in results["backends"].as_array().into_iter().flatten() {
        let burst = &b["burst"];
        println!(
            "\n== {} ({} workers x {}) ==",
            b["backend"].as_str().unwrap_or("?"),
            b["workers"],
            b["worker_concurrency"]
        );
        println!(
            "ingest          {:>8} req/s   p50 {} ms  p99 {} ms  (concurrency {}){}",
            fmt(&burst["ingest_per_s"]),
            fmt(&burst["ingest_latency"]["p50_ms"]),
            fmt(&burst["ingest_latency"]["p99_ms"]),
            burst["concurrency"],
            match burst["refused_and_sent_again"].as_u64() {
                Some(refused) if refused > 0 =>
                    format!(", {refused} refused with 503 and sent again"),
                _ => String::new(),
            }
        );
        println!(
            "end to end      {:>8} tasks/s ({} tasks)   = {:.1}% of the broker's pipelined ceiling; {} tasks per message",
            fmt(&burst["end_to_end_per_s"]),
            burst["tasks"],
            100.0 * burst["end_to_end_per_s"].as_f64().unwrap_or(0.0)
                / ceiling["pipelined_per_s"].as_f64().unwrap_or(f64::NAN),
            fmt(&burst["tasks_per_message"]),
        );
        println!(
            "status reads    {:>8} req/s   p50 {} ms  p99 {} ms",
            fmt(&b["status"]["reads_per_s"]),
            fmt(&b["status"]["latency"]["p50_ms"]),
            fmt(&b["status"]["latency"]["p99_ms"])
        );
        println!(
            "HTTP floor      {:>8} req/s   p50 {} ms  p99 {} ms  (a 404 with no database work; /status = {:.0}% of it)",
            fmt(&b["http_floor"]["reads_per_s"]),
            fmt(&b["http_floor"]["latency"]["p50_ms"]),
            fmt(&b["http_floor"]["latency"]["p99_ms"]),
            100.0 * b["status"]["reads_per_s"].as_f64().unwrap_or(0.0)
                / b["http_floor"]["reads_per_s"].as_f64().unwrap_or(f64::NAN)
        );
        for o in b["open_loop"].as_array().into_iter().flatten() {
            println!(
                "open loop {:>5}/s  accepted {} refused {} | submit p50 {} p90 {} p99 {} ms | submit->succeeded p50 {} p90 {} p99 {} ms | peak RSS so far: api {} MiB, workers {} MiB",
                o["rate_per_s"],
                o["tasks"],
                o["refused"],
                fmt(&o["submit_latency"]["p50_ms"]),
                fmt(&o["submit_latency"]["p90_ms"]),
                fmt(&o["submit_latency"]["p99_ms"]),
                fmt(&o["submit_to_succeeded_latency"]["p50_ms"]),
                fmt(&o["submit_to_succeeded_latency"]["p90_ms"]),
                fmt(&o["submit_to_succeeded_latency"]["p99_ms"]),
                fmt(&o["memory_peak_so_far"]["api_peak_rss_mib"]),
                workers_rss(&o["memory_peak_so_far"]),
            );
            let inside = &o["inside_the_api"];
            if inside.is_object() {
                println!(
                    "  inside the api: /receive mean {} ms; {} insert batches, mean {} ms, {} writes each; {} tasks per message",
                    fmt(&inside["receive_mean_ms"]),
                    fmt(&inside["insert_batches"]),
                    fmt(&inside["insert_batch_mean_ms"]),
                    fmt(&inside["writes_per_insert_batch"]),
                    fmt(&inside["tasks_per_message"]),
                );
            }
            println!(
                "  split at the claim: submit->started_at p50 {} p99 {} ms, started_at->finished_at p50 {} p99 {} ms",
                fmt(&o["submit_to_started_latency"]["p50_ms"]),
                fmt(&o["submit_to_started_latency"]["p99_ms"]),
                fmt(&o["started_to_finished_latency"]["p50_ms"]),
                fmt(&o["started_to_finished_latency"]["p99_ms"]),
            );
            cost::print_rate(&o["cost"]);
        }
        println!(
            "peak RSS        api {} MiB, workers {} MiB (whole run)",
            fmt(&b["memory"]["api_peak_rss_mib"]),
            workers_rss(&b["memory"])
        );
        cost::print(&b["cost"], &ceiling["cpu_us_per_message"]);
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(Mode::Celery(plan)) = &args.mode {
        celery::setup()?;
        let mut rows = Vec::new();
        for backend in &args.backends {
            rows.push(celery::run(&args, plan, backend).await?);
        }
        let results = json!({
            "when": chrono::Utc::now().to_rfc3339(),
            "quick": args.quick,
            "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
            "celery": rows,
        });
        celery::print(&results["celery"]);
        return write_results(
            &results,
            args.out
                .as_deref()
                .unwrap_or(Path::new("bench-results/celery.json")),
        );
    }
    let bin_dir = ferry_testkit::bin_dir();
    for binary in ["ferry-api", "ferry-worker"] {
        if !bin_dir.join(binary).exists() {
            bail!(
                "{} is missing: build with `cargo build --release --bins` (bench/run does)",
                bin_dir.join(binary).display()
            );
        }
    }
    if args.backends.iter().any(|b| b == "postgres") {
        create_database(&args.postgres_url)?;
    }
    if let Some(Mode::Stall(plan)) = &args.mode {
        eprintln!(
            "slow clients: {} stalled connections, request_timeout {}",
            plan.connections,
            humantime::format_duration(plan.limit)
        );
        let results = json!({
            "when": chrono::Utc::now().to_rfc3339(),
            "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
            "stall": stall(plan, &bin_dir).await?,
        });
        print_stall(&results["stall"]);
        return write_results(
            &results,
            args.out
                .as_deref()
                .unwrap_or(Path::new("bench-results/stall.json")),
        );
    }
    if let Some(Mode::List(plan)) = &args.mode {
        let n = plan.tasks.unwrap_or(list::default_tasks(args.quick));
        let mut rows = Vec::new();
        for backend in &args.backends {
            rows.push(list::run(&args, backend, n, &bin_dir).await?);
        }
        let results = json!({
            "when": chrono::Utc::now().to_rfc3339(),
            "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
            "list": rows,
        });
        list::print(&results["list"]);
        return write_results(
            &results,
            args.out
                .as_deref()
                .unwrap_or(Path::new("bench-results/list.json")),
        );
    }
    if let Some(Mode::Reads(plan)) = &args.mode {
        let mut rows = Vec::new();
        for backend in &args.backends {
            rows.push(reads::run(&args, plan, backend, &bin_dir).await?);
        }
        let results = json!({
            "when": chrono::Utc::now().to_rfc3339(),
            "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
            "reads": rows,
        });
        reads::print(&results["reads"]);
        return write_results(
            &results,
            args.out
                .as_deref()
                .unwrap_or(Path::new("bench-results/reads.json")),
        );
    }
    if let Some(Mode::Waiters(plan)) = &args.mode {
        let n = plan.waiters.unwrap_or(waiters::default_waiters(args.quick));
        let mut rows = Vec::new();
        for backend in &args.backends {
            rows.push(waiters::run(&args, backend, n, &bin_dir).await?);
        }
        let results = json!({
            "when": chrono::Utc::now().to_rfc3339(),
            "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
            "waiters": rows,
        });
        waiters::print(&results["waiters"]);
        return write_results(
            &results,
            args.out
                .as_deref()
                .unwrap_or(Path::new("bench-results/waiters.json")),
        );
    }
    if let Some(Mode::Open(plan)) = &args.mode {
        let mut rows = Vec::new();
        for backend in &args.backends {
            rows.push(open::run(&args, plan, backend, &bin_dir).await?);
        }
        let results = json!({
            "when": chrono::Utc::now().to_rfc3339(),
            "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
            "open": rows,
        });
        open::print(&results["open"]);
        return write_results(
            &results,
            args.out
                .as_deref()
                .unwrap_or(Path::new("bench-results/open.json")),
        );
    }
    if let Some(Mode::Standalone(plan)) = &args.mode {
        let results = json!({
            "when": chrono::Utc::now().to_rfc3339(),
            "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
            "standalone": standalone::run(&args, plan, &bin_dir).await?,
        });
        standalone::print(&results["standalone"]);
        return write_results(
            &results,
            args.out
                .as_deref()
                .unwrap_or(Path::new("bench-results/standalone.json")),
        );
    }
    if let Some(Mode::Backlog(plan)) = &args.mode {
        let results = json!({
            "when": chrono::Utc::now().to_rfc3339(),
            "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
            "backlog": backlog_rows(&args, plan, &bin_dir).await?,
        });
        backlog::print(&results["backlog"]);
        return write_results(
            &results,
            args.out
                .as_deref()
                .unwrap_or(Path::new("bench-results/backlog.json")),
        );
    }
    let ceiling_n = args
        .tasks
        .unwrap_or(if args.quick { 2_000 } else { 50_000 });
    eprintln!(
        "broker ceiling: {ceiling_n} messages pipelined, {} one at a time",
        ceiling_n / 10
    );
    // The harness counts its own statements too, for the PostgreSQL cross-check.
    ferry_core::db::counts::count();
    let (pipelined, ceiling_cpu) = cost::broker_ceiling(
        ceiling_n,
        broker_ceiling(&args.broker_url, ceiling_n, true, None),
    )
    .await;
    let pipelined = pipelined?;
    let sequential = broker_ceiling(&args.broker_url, ceiling_n / 10, false, None).await?;
    let mut backends = Vec::new();
    for backend in &args.backends {
        backends.push(run_backend(&args, backend, &bin_dir).await?);
    }
    let mut results = json!({
        "when": chrono::Utc::now().to_rfc3339(),
        "quick": args.quick,
        "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "broker_ceiling": {"pipelined_per_s": pipelined, "sequential_per_s": sequential, "messages": ceiling_n, "cpu_us_per_message": ceiling_cpu},
        "backends": backends,
    });
    let ratios: HashMap<String, f64> = results["backends"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|b| {
            (
                b["backend"].as_str().unwrap_or("?").to_string(),
                b["burst"]["end_to_end_per_s"].as_f64().unwrap_or(0.0) / pipelined,
            )
        })
        .collect();
    results["end_to_end_over_ceiling"] = json!(ratios);
    // The full run takes the better part of an hour: what is done so far
    // is on disk after each row, so a later row's failure loses only it.
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("bench-results/latest.json"));
    let checkpoint = |results: &Value| write_json(results, &out);
    checkpoint(&results)?;
    let plan = Stall {
        connections: args
            .stall_connections
            .unwrap_or(if args.quick { 100 } else { 1000 }),
        limit: args
            .stall_limit
            .unwrap_or(Duration::from_secs(if args.quick { 2 } else { 5 })),
        probes: 4,
    };
    eprintln!(
        "slow clients: {} stalled connections, request_timeout {}",
        plan.connections,
        humantime::format_duration(plan.limit)
    );
    results["stall"] = stall(&plan, &bin_dir).await?;
    checkpoint(&results)?;
    let mut listing = Vec::new();
    for backend in &args.backends {
        let n = list::default_tasks(args.quick);
        listing.push(list::run(&args, backend, n, &bin_dir).await?);
    }
    results["list"] = json!(listing);
    checkpoint(&results)?;
    let mut waiting = Vec::new();
    for backend in &args.backends {
        let n = waiters::default_waiters(args.quick);
        waiting.push(waiters::run(&args, backend, n, &bin_dir).await?);
    }
    results["waiters"] = json!(waiting);
    checkpoint(&results)?;
    let mut overload = Vec::new();
    for backend in &args.backends {
        overload.push(open::run(&args, &open::OpenPlan::default(), backend, &bin_dir).await?);
    }
    results["open"] = json!(overload);
    checkpoint(&results)?;
    eprintln!("standalone");
    results["standalone"] =
        standalone::run(&args, &standalone::StandalonePlan::default(), &bin_dir).await?;
    checkpoint(&results)?;
    results["backlog"] = backlog_rows(&args, &backlog::BacklogPlan::default(), &bin_dir).await?;
    checkpoint(&results)?;
    results["celery"] = celery_row(&args).await?;
    print_table(&results);
    print_stall(&results["stall"]);
    list::print(&results["list"]);
    waiters::print(&results["waiters"]);
    open::print(&results["open"]);
    standalone::print(&results["standalone"]);
    backlog::print(&results["backlog"]);
    celery::print(&results["celery"]);
    write_results(&results, &out)
}

/// The backlog row: each backlog on each backend.
async fn backlog_rows(
    args: &Args,
    plan: &backlog::BacklogPlan,
    bin_dir: &Path,
) -> anyhow::Result<Value> {
    let mut rows = Vec::new();
    for n in plan.pending(args.quick) {
        for backend in &args.backends {
            rows.push(backlog::run(args, backend, n, bin_dir).await?);
        }
    }
    Ok(json!(rows))
}

/// The full run's Celery row: skipped with `--quick` (CI stays fast and
/// needs no Python) or where its venv cannot be made, with the reason.
async fn celery_row(args: &Args) -> anyhow::Result<Value> {
    if args.quick {
        let reason =
            "not in --quick (its venv takes a while to make): run `ferry-bench celery --quick`";
        eprintln!("[celery] skipped: {reason}");
        return Ok(json!({"skipped": reason}));
    }
    if let Err(e) = celery::setup() {
        eprintln!("[celery] skipped: {e:#}");
        return Ok(json!({"skipped": format!("{e:#}")}));
    }
    let plan = celery::CeleryPlan {
        tasks: None,
        rates: None,
    };
    let mut rows = Vec::new();
    for backend in &args.backends {
        rows.push(celery::run(args, &plan, backend).await?);
    }
    Ok(json!(rows))
}

/// Creates the database of a PostgreSQL URL if it is missing, from the
/// server's `postgres` database.
fn create_database(url: &str) -> anyhow::Result<()> {
    use diesel::connection::SimpleConnection;
    use diesel::Connection;
    let mut admin = reqwest::Url::parse(url).context("the PostgreSQL URL")?;
    let name = admin.path().trim_start_matches('/').to_string();
    if diesel::PgConnection::establish(url).is_ok() || name.is_empty() {
        return Ok(());
    }
    admin.set_path("/postgres");
    let mut conn = diesel::PgConnection::establish(admin.as_str())
        .with_context(|| format!("connecting to {admin} to create {name}"))?;
    if let Err(e) = conn.batch_execute(&format!("CREATE DATABASE \"{name}\"")) {
        // Another run may have created it meanwhile.
        if diesel::PgConnection::establish(url).is_err() {
            bail!("CREATE DATABASE {name}: {e}");
        }
    }
    Ok(())
}

fn write_results(results: &Value, out: &Path) -> anyhow::Result<()> {
    write_json(results, out)?;
    println!("\nresults written to {}", out.display());
    Ok(())
}

fn write_json(results: &Value, out: &Path) -> anyhow::Result<()> {
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(out, serde_json::to_string_pretty(results)?)?;
    Ok(())
}
