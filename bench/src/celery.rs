//! The Celery row (`ferry-bench celery`, and in the full run): the stack
//! Ferry replaces, the pacifica receiver (CherryPy + Celery + RabbitMQ +
//! PeeWee, `bench/celery/receiver.py`) with a no-op handler, under Ferry's
//! load, measured with the same client as Ferry's rows.
//!
//! Per backend, on a fresh database (a SQLite file, or a schema of its own
//! in the PostgreSQL database `ferry_bench_celery`) and a queue of its own:
//! the receiver (`python receiver.py`, CherryPy's defaults) and one Celery
//! worker (`celery worker`: prefork, one process per CPU, the defaults;
//! `acks_late`). Then:
//! - burst: N events POSTed to `/receive` by 32 clients: ingest (requests/s,
//!   p50/p99) and end to end (first POST until N rows of the receiver's
//!   table read `200 OK`, the status its task writes last);
//! - open loop at 100/s and 1 000/s: submit latency from each POST's
//!   intended send time, and submit to done, when the bench sees the task's
//!   row `200 OK` (the receiver records no finish time: the table is polled
//!   every 10 ms for the oldest tasks still pending, so the figure includes
//!   up to 10 ms of polling);
//! - peak RSS (VmHWM) of the receiver and of every process of the worker's
//!   tree, summed (forked children count the pages they share again).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use diesel::connection::SimpleConnection;
use diesel::sql_types::{BigInt, Text};
use diesel::{Connection, PgConnection, QueryableByName, RunQueryDsl, SqliteConnection};
use ferry_testkit::{PgSchema, Proc};
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use serde_json::{json, Value};
use tokio::sync::Semaphore;

use crate::{fmt, ms, summary};

/// How long an open-loop POST may take before it counts as failed.
const SUBMIT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long nothing may finish before the missing tasks count as lost.
const STALL: Duration = Duration::from_secs(20);

/// The status the receiver's task writes when the handler returned.
const DONE: &str = "200 OK";

/// The Celery row's own knobs.
#[derive(Debug, Clone, clap::Args)]
pub struct CeleryPlan {
    /// Events in the burst (default 2000, or 100 with --quick).
    #[arg(long = "celery-tasks")]
    pub tasks: Option<usize>,
    /// Open-loop rates, events per second (default 100,1000; 100 with --quick).
    #[arg(long = "celery-rates", value_delimiter = ',')]
    pub rates: Option<Vec<u32>>,
}

/// The virtualenv `bench/celery/setup` makes.
fn venv() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| ferry_testkit::repo_root().join("target"));
    let target = if target.is_absolute() {
        target
    } else {
        ferry_testkit::repo_root().join(target)
    };
    target.join("celery-venv")
}

fn celery_dir() -> PathBuf {
    ferry_testkit::repo_root().join("bench").join("celery")
}

/// Runs `bench/celery/setup` (idempotent); an error says why the row
/// cannot run, e.g. no Python or no registry.
pub fn setup() -> anyhow::Result<()> {
    let started = Instant::now();
    let out = Command::new("bash")
        .arg(celery_dir().join("setup"))
        .output()
        .context("running bench/celery/setup")?;
    if !out.status.success() {
        bail!(
            "bench/celery/setup failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    eprintln!(
        "[celery] {} ({:.1} s)",
        String::from_utf8_lossy(&out.stdout).trim(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The receiver's table, read for completion.
enum Table {
    Sqlite(SqliteConnection),
    Postgres(PgConnection),
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[derive(QueryableByName)]
struct Id {
    #[diesel(sql_type = Text)]
    id: String,
}

impl Table {
    fn done(&mut self) -> anyhow::Result<i64> {
        let sql =
            format!("SELECT count(*) AS n FROM receivetaskmodel WHERE task_status = '{DONE}'");
        let rows: Vec<Count> = match self {
            Table::Sqlite(c) => diesel::sql_query(sql).load(c)?,
            Table::Postgres(c) => diesel::sql_query(sql).load(c)?,
        };
        Ok(rows.first().map_or(0, |c| c.n))
    }

    /// Which of `ids` (hyphenless UUIDs, as the harness keeps them) are done.
    fn done_among(&mut self, ids: &[String]) -> anyhow::Result<Vec<String>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let list: Vec<String> = ids.iter().map(|id| format!("'{id}'")).collect();
        let sql = format!(
            "SELECT CAST(task_id AS TEXT) AS id FROM receivetaskmodel WHERE task_status = '{DONE}' AND task_id IN ({})",
            list.join(",")
        );
        let rows: Vec<Id> = match self {
            Table::Sqlite(c) => diesel::sql_query(sql).load(c)?,
            Table::Postgres(c) => diesel::sql_query(sql).load(c)?,
        };
        Ok(rows.into_iter().map(|r| r.id.replace('-', "")).collect())
    }
}

/// Runs `f` on the table off the runtime's threads.
/// SQLite's "database is locked" past the busy timeout is retried.
async fn with_table<T: Send + 'static>(
    table: &Arc<Mutex<Table>>,
    f: impl Fn(&mut Table) -> anyhow::Result<T> + Send + Sync + 'static,
) -> anyhow::Result<T> {
    let f = Arc::new(f);
    loop {
        let (table, f) = (table.clone(), f.clone());
        let read =
            tokio::task::spawn_blocking(move || f(&mut table.lock().expect("table lock"))).await?;
        match read {
            Err(e) if format!("{e}").contains("database is locked") => {
                eprintln!("[celery] the harness's read: {e}; again");
            }
            other => return other,
        }
    }
}

/// One backend's receiver and worker, on a fresh database and queue;
/// dropped, it stops them and removes the queue, schema and files.
struct Stack {
    receiver: Proc,
    worker: Proc,
    base: String,
    queue: String,
    broker_url: String,
    table: Arc<Mutex<Table>>,
    dir: PathBuf,
    _schema: Option<PgSchema>,
}

/// The database the Celery row's schemas go in: the bench's PostgreSQL
/// URL with the database `ferry_bench_celery`.
fn celery_postgres_url(postgres_url: &str) -> anyhow::Result<String> {
    let mut url = reqwest::Url::parse(postgres_url).context("the PostgreSQL URL")?;
    url.set_path("/ferry_bench_celery");
    Ok(url.to_string())
}

/// Celery's (kombu's) URL for the broker: `amqp://…/%2f` is the default
/// vhost, as kombu spells it `//`.
fn kombu_url(broker_url: &str) -> String {
    let url = broker_url.strip_suffix("/%2f").unwrap_or(broker_url);
    let url = url.strip_suffix("/%2F").unwrap_or(url);
    let url = if url.matches('/').count() == 2 {
        format!("{url}//")
    } else {
        url.to_string()
    };
    url.replacen("amqp://", "pyamqp://", 1)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Stack {
    async fn start(args: &crate::Args, backend: &str) -> anyhow::Result<Self> {
        let name = ferry_testkit::unique("ferry_bench_celery");
        let dir = std::env::temp_dir().join(&name);
        std::fs::create_dir_all(&dir)?;
        let (database_url, table, schema) = match backend {
            "sqlite" => {
                let path = dir.join("receiver.sqlite3");
                let path = path.to_str().context("a UTF-8 path")?.to_string();
                (
                    format!("sqlite:///{path}"),
                    Box::new(move || {
                        let mut c = SqliteConnection::establish(&path)?;
                        // Waits out the writers' locks (PeeWee's wait 5 s;
                        // on a loaded machine a reader can wait longer).
                        c.batch_execute("PRAGMA busy_timeout = 60000")?;
                        Ok(Table::Sqlite(c))
                    }) as Box<dyn Fn() -> anyhow::Result<Table> + Send>,
                    None,
                )
            }
            "postgres" => {
                let admin = celery_postgres_url(&args.postgres_url)?;
                crate::create_database(&admin)?;
                let schema = PgSchema::create_in(&admin, "celery_bench");
                let url = schema.url();
                let peewee = url.replacen("postgres://", "postgresql://", 1);
                (
                    peewee,
                    Box::new(move || Ok(Table::Postgres(PgConnection::establish(&url)?)))
                        as Box<dyn Fn() -> anyhow::Result<Table> + Send>,
                    Some(schema),
                )
            }
            other => bail!("unknown backend {other:?} (sqlite, postgres)"),
        };
        let port = free_port()?;
        let venv = venv();
        let env = [
            ("FERRY_CELERY_DB", backend.to_string()),
            ("FERRY_CELERY_DATABASE_URL", database_url),
            ("FERRY_CELERY_BROKER_URL", kombu_url(&args.broker_url)),
            ("FERRY_CELERY_QUEUE", name.clone()),
            ("FERRY_CELERY_PORT", port.to_string()),
            ("FERRY_CELERY_ACCESS_LOG", "0".to_string()),
            ("PYTHONDONTWRITEBYTECODE", "1".to_string()),
        ];
        let mut receiver = Command::new(venv.join("bin/python"));
        receiver
            .arg("receiver.py")
            .current_dir(celery_dir())
            .envs(env.iter().map(|(k, v)| (k, v)));
        let receiver = Proc::spawn(receiver, "celery-receiver", &dir.join("receiver.log"));
        let base = format!("http://127.0.0.1:{port}");
        wait_listening(&receiver, port, Duration::from_secs(60)).await?;
        let mut worker = Command::new(venv.join("bin/celery"));
        worker
            .args(["-A", "receiver:CELERY_APP", "worker", "-n"])
            .arg(format!("{name}@%h"))
            .current_dir(celery_dir())
            .envs(env.iter().map(|(k, v)| (k, v)));
        let worker = Proc::spawn(worker, "celery-worker", &dir.join("worker.log"));
        wait_consuming(&worker, &args.broker_url, &name, Duration::from_secs(60)).await?;
        // The receiver created the table before it listened.
        let table = Arc::new(Mutex::new(table()?));
        Ok(Self {
            receiver,
            worker,
            base,
            queue: name,
            broker_url: args.broker_url.clone(),
            table,
            dir,
            _schema: schema,
        })
    }

    /// Peak RSS of the receiver and of each process of the worker's tree.
    fn rss(&self) -> Value {
        let receiver = vm_hwm_mib(self.receiver.child.id()).unwrap_or(f64::NAN);
        let tree: Vec<f64> = process_tree(self.worker.child.id())
            .into_iter()
            .filter_map(vm_hwm_mib)
            .collect();
        let workers: f64 = tree.iter().sum();
        json!({
            "receiver_peak_rss_mib": receiver,
            "worker_processes": tree.len(),
            "worker_peak_rss_mib": tree,
            "sum_peak_rss_mib": receiver + workers,
        })
    }

    /// Until `expected` tasks are done, or none was done for `STALL`: a
    /// task whose PeeWee write failed (SQLite's "database is locked" after
    /// PeeWee's 5 s) failed for good (acked, not retried) and never reads
    /// `200 OK`. Returns when the last was seen done, and how many were.
    async fn wait_done(&self, expected: i64) -> anyhow::Result<(Instant, i64)> {
        let mut last = (-1, Instant::now());
        loop {
            let done = with_table(&self.table, Table::done).await?;
            if done >= expected {
                return Ok((Instant::now(), done));
            }
            if done != last.0 {
                last = (done, Instant::now());
            } else if last.1.elapsed() > STALL {
                eprintln!(
                    "[celery] only {done} of {expected} tasks done, none for {STALL:?} (logs in {})",
                    self.dir.display()
                );
                return Ok((last.1, done));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // A warm shutdown lets the prefork children go with their parent;
        // any left are killed by pid (the tree was read first).
        let tree = process_tree(self.worker.child.id());
        let _ = Command::new("kill")
            .args(["-TERM", &self.worker.child.id().to_string()])
            .status();
        if self.worker.wait_exit(Duration::from_secs(15)).is_none() {
            let _ = self.worker.child.kill();
        }
        for pid in tree.into_iter().skip(1) {
            if Path::new(&format!("/proc/{pid}")).exists() {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
        let _ = self.receiver.child.kill();
        let _ = self.receiver.child.wait();
        ferry_testkit::delete_queues(&self.broker_url, &[&self.queue]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn wait_listening(proc: &Proc, port: u16, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        if Instant::now() > deadline {
            bail!(
                "the receiver did not listen within {timeout:?}:\n{}",
                proc.log_text()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Until the worker consumes from its queue.
async fn wait_consuming(
    proc: &Proc,
    broker_url: &str,
    queue: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let connection =
        lapin::Connection::connect(broker_url, lapin::ConnectionProperties::default()).await?;
    loop {
        let channel = connection.create_channel().await?;
        let declared = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await;
        if let Ok(q) = declared {
            if q.consumer_count() > 0 {
                let _ = channel.close(200, "ok".into()).await;
                break;
            }
            let _ = channel.close(200, "ok".into()).await;
        }
        if Instant::now() > deadline {
            bail!(
                "the worker did not consume within {timeout:?}:\n{}",
                proc.log_text()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = connection.close(200, "ok".into()).await;
    Ok(())
}

/// `pid` and its descendants, `pid` first.
fn process_tree(pid: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // After the command's `)`: state, then the parent's pid.
        let Some(rest) = stat.rsplit_once(')').map(|(_, rest)| rest) else {
            continue;
        };
        if let Some(ppid) = rest.split_whitespace().nth(1).and_then(|p| p.parse().ok()) {
            parents.push((child, ppid));
        }
    }
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(
            parents
                .iter()
                .filter(|(_, p)| *p == parent)
                .map(|(c, _)| *c),
        );
        i += 1;
    }
    tree
}

fn vm_hwm_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// A CloudEvents 0.1 event, the shape the pacifica receiver takes.
fn event(prefix: &str, i: usize) -> String {
    json!({
        "cloudEventsVersion": "0.1",
        "eventType": "org.ferry.echo",
        "source": "/ferry/bench",
        "eventID": format!("{prefix}-{i}"),
        "contentType": "application/json",
        "data": {"i": i}
    })
    .to_string()
}

/// POSTs one event; returns the Celery task id, hyphenless.
async fn submit(client: &reqwest::Client, base: &str, body: String) -> anyhow::Result<String> {
    let response = client
        .post(format!("{base}/receive"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await?;
    if response.status() != reqwest::StatusCode::OK {
        bail!("/receive answered {}", response.status());
    }
    let id: String = serde_json::from_slice(&response.bytes().await?)?;
    Ok(id.replace('-', ""))
}

/// Closed loop: `n` POSTs from `concurrency` clients, then until all are done.
async fn burst(
    s: &Stack,
    client: &reqwest::Client,
    n: usize,
    concurrency: usize,
) -> anyhow::Result<Value> {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let clients: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, base, next) = (client.clone(), s.base.clone(), next.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= n {
                        return Ok::<_, anyhow::Error>(latencies);
                    }
                    let sent = Instant::now();
                    submit(&client, &base, event("burst", i)).await?;
                    latencies.push(ms(sent.elapsed()));
                }
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(n);
    for c in clients {
        latencies.extend(c.await??);
    }
    let ingested = start.elapsed();
    let (last, done_tasks) = s.wait_done(n as i64).await?;
    let done = last - start;
    Ok(json!({
        "tasks": n,
        "tasks_not_done": n as i64 - done_tasks,
        "concurrency": concurrency,
        "ingest_per_s": n as f64 / ingested.as_secs_f64(),
        "ingest_latency": summary(latencies),
        "end_to_end_per_s": done_tasks as f64 / done.as_secs_f64(),
        "end_to_end_s": done.as_secs_f64(),
    }))
}

/// Tasks submitted and not yet seen done: index -> (id, intended send time).
type Pending = Arc<Mutex<BTreeMap<usize, (String, Instant)>>>;

/// Open loop: POSTs at `rate`/s for `seconds`, each on its own schedule;
/// meanwhile the oldest pending tasks are looked up every 10 ms.
async fn open_loop(
    s: &Stack,
    client: &reqwest::Client,
    rate: u32,
    seconds: f64,
) -> anyhow::Result<Value> {
    let n = (f64::from(rate) * seconds).round() as usize;
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate));
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let sockets = Arc::new(Semaphore::new(512));
    let pending: Pending = Arc::default();
    let sends: Vec<_> = (0..n)
        .map(|i| {
            let (client, base, sockets) = (client.clone(), s.base.clone(), sockets.clone());
            let pending = pending.clone();
            let intended = start + interval * i as u32;
            let body = event(&format!("open-{rate}"), i);
            tokio::spawn(async move {
                tokio::time::sleep_until(intended).await;
                let _slot = sockets.acquire().await?;
                // A POST the receiver does not take within 30 s (CherryPy's
                // listen backlog is 5: past it, connects wait on SYN
                // retries) counts as failed, and the row goes on.
                let sent = tokio::time::timeout(SUBMIT_TIMEOUT, submit(&client, &base, body));
                let id = match sent.await {
                    Ok(Ok(id)) => id,
                    Ok(Err(e)) => return Ok(Err(format!("{e:#}"))),
                    Err(_) => return Ok(Err(format!("no answer within {SUBMIT_TIMEOUT:?}"))),
                };
                let latency = ms(intended.elapsed());
                pending
                    .lock()
                    .expect("pending lock")
                    .insert(i, (id, intended.into_std()));
                Ok::<_, anyhow::Error>(Ok(latency))
            })
        })
        .collect();
    let submitted = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // The tasks to wait for: all of them, less the POSTs that failed.
    let expected = Arc::new(std::sync::atomic::AtomicUsize::new(n));
    let watcher = {
        let (table, pending, submitted) = (s.table.clone(), pending.clone(), submitted.clone());
        let expected = expected.clone();
        tokio::spawn(async move {
            let mut done_ms = Vec::with_capacity(n);
            let mut progress = Instant::now();
            while done_ms.len() < expected.load(std::sync::atomic::Ordering::Relaxed) {
                let oldest: Vec<String> = pending
                    .lock()
                    .expect("pending lock")
                    .values()
                    .take(500)
                    .map(|(id, _)| id.clone())
                    .collect();
                let done = with_table(&table, move |t| t.done_among(&oldest)).await?;
                let seen = Instant::now();
                if !done.is_empty() {
                    progress = seen;
                    let mut pending = pending.lock().expect("pending lock");
                    pending.retain(|_, (id, intended)| {
                        if done.contains(id) {
                            done_ms.push(ms(seen - *intended));
                            false
                        } else {
                            true
                        }
                    });
                } else if submitted.load(std::sync::atomic::Ordering::Relaxed)
                    && progress.elapsed() > STALL
                {
                    eprintln!(
                        "[celery] only {} of {} tasks done, none for {STALL:?}",
                        done_ms.len(),
                        expected.load(std::sync::atomic::Ordering::Relaxed)
                    );
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Ok::<_, anyhow::Error>(done_ms)
        })
    };
    let mut submit_ms = Vec::with_capacity(n);
    let mut failed = Vec::new();
    for send in sends {
        match send.await?? {
            Ok(latency) => submit_ms.push(latency),
            Err(e) => failed.push(e),
        }
    }
    let submitting = start.elapsed();
    expected.store(submit_ms.len(), std::sync::atomic::Ordering::Relaxed);
    submitted.store(true, std::sync::atomic::Ordering::Relaxed);
    let done_ms = watcher.await??;
    if !failed.is_empty() {
        eprintln!(
            "[celery] {} of {n} POSTs failed at {rate}/s, e.g. {}",
            failed.len(),
            failed[0]
        );
    }
    Ok(json!({
        "rate_per_s": rate,
        "tasks": n,
        "submitted_per_s": submit_ms.len() as f64 / submitting.as_secs_f64(),
        "failed_posts": failed.len(),
        "tasks_not_done": n - failed.len() - done_ms.len(),
        "first_failure": failed.first(),
        "submit_latency": summary(submit_ms),
        "submit_to_done_latency": summary(done_ms),
    }))
}

/// The defaults of the row: (burst size, rates).
fn plan(plan: &CeleryPlan, quick: bool) -> (usize, Vec<u32>) {
    let tasks = plan.tasks.unwrap_or(if quick { 100 } else { 2_000 });
    let rates = plan
        .rates
        .clone()
        .unwrap_or(if quick { vec![100] } else { vec![100, 1000] });
    (tasks, rates)
}

/// The row on one backend.
pub async fn run(args: &crate::Args, p: &CeleryPlan, backend: &str) -> anyhow::Result<Value> {
    let (tasks, rates) = plan(p, args.quick);
    let seconds = args
        .rate_seconds
        .unwrap_or(if args.quick { 1.0 } else { 5.0 });
    eprintln!("[celery {backend}] starting the receiver and a worker");
    let s = Stack::start(args, backend).await?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .build()?;
    eprintln!("[celery {backend}] burst of {tasks} events");
    let burst = burst(&s, &client, tasks, args.concurrency).await?;
    let mut open = Vec::new();
    for rate in rates {
        eprintln!("[celery {backend}] open loop at {rate}/s for {seconds}s");
        let mut result = open_loop(&s, &client, rate, seconds).await?;
        result["memory_peak_so_far"] = s.rss();
        open.push(result);
    }
    Ok(json!({
        "backend": backend,
        "stack": "pacifica-dispatcher 0.2.5 receiver: CherryPy + Celery (prefork, acks_late) + RabbitMQ + PeeWee",
        "worker_concurrency": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "burst": burst,
        "open_loop": open,
        "memory": s.rss(),
    }))
}

/// Prints the rows.
pub fn print(rows: &Value) {
    if let Some(reason) = rows["skipped"].as_str() {
        println!("\n== Celery (the pacifica receiver) ==\nskipped: {reason}");
        return;
    }
    for b in rows.as_array().into_iter().flatten() {
        let burst = &b["burst"];
        println!(
            "\n== Celery on {} (pacifica receiver: CherryPy, 1 worker x {} prefork, acks_late) ==",
            b["backend"].as_str().unwrap_or("?"),
            b["worker_concurrency"]
        );
        println!(
            "ingest          {:>8} req/s   p50 {} ms  p99 {} ms  (concurrency {})",
            fmt(&burst["ingest_per_s"]),
            fmt(&burst["ingest_latency"]["p50_ms"]),
            fmt(&burst["ingest_latency"]["p99_ms"]),
            burst["concurrency"]
        );
        println!(
            "end to end      {:>8} tasks/s ({} tasks, {} never done)",
            fmt(&burst["end_to_end_per_s"]),
            burst["tasks"],
            burst["tasks_not_done"],
        );
        for o in b["open_loop"].as_array().into_iter().flatten() {
            println!(
                "open loop {:>5}/s  submit p50 {} p90 {} p99 {} ms | submit->done p50 {} p90 {} p99 {} ms | submitted at {}/s, {} POSTs failed, {} never done | peak RSS so far {} MiB",
                o["rate_per_s"],
                fmt(&o["submit_latency"]["p50_ms"]),
                fmt(&o["submit_latency"]["p90_ms"]),
                fmt(&o["submit_latency"]["p99_ms"]),
                fmt(&o["submit_to_done_latency"]["p50_ms"]),
                fmt(&o["submit_to_done_latency"]["p90_ms"]),
                fmt(&o["submit_to_done_latency"]["p99_ms"]),
                fmt(&o["submitted_per_s"]),
                o["failed_posts"],
                o["tasks_not_done"],
                fmt(&o["memory_peak_so_far"]["sum_peak_rss_mib"]),
            );
        }
        let m = &b["memory"];
        let workers: Vec<String> = m["worker_peak_rss_mib"]
            .as_array()
            .into_iter()
            .flatten()
            .map(fmt)
            .collect();
        println!(
            "peak RSS        {} MiB summed: receiver {} MiB, worker tree {} MiB (whole run)",
            fmt(&m["sum_peak_rss_mib"]),
            fmt(&m["receiver_peak_rss_mib"]),
            workers.join(" / ")
        );
    }
}
