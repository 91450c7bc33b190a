//! What a task costs, by process: the CPU time each process of the
//! deployment spent over a phase, the database statements and transactions
//! Ferry sent, the broker's socket reads and writes, and on PostgreSQL the
//! server's own counters as a cross-check.
//!
//! - CPU: user + system time (`utime` + `stime`, fields 14 and 15 of
//!   `/proc/<pid>/stat`, in clock ticks) of `ferry-api`, each
//!   `ferry-worker`, RabbitMQ's `beam.smp`, the PostgreSQL backends serving
//!   the bench's database (summed; those serving the harness's own
//!   connections are counted apart), PostgreSQL's background processes
//!   (shared with anything else on the server) and the load generator
//!   (`/proc/self`). A process that is gone reads as `n/a`.
//! - Database: the counts `ferry_core::db::counts` writes when
//!   `FERRY_DB_COUNTS` is set, which the deployments here set.
//! - Broker: `rabbitmqctl list_connections` `recv_cnt`, `send_cnt`,
//!   `recv_oct`, `send_oct` of the connections whose client port belongs to
//!   a Ferry process: RabbitMQ's reads from and writes to those sockets
//!   (each may carry several AMQP frames) and their bytes.
//!
//! Every reading is best effort: a missing file, process or command makes
//! that figure `null` in the JSON (`n/a` in the table), never an error.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::{Connection, PgConnection, QueryableByName, RunQueryDsl};
use ferry_core::db::counts;
use serde_json::{json, Map, Value};

/// The AMQP port, to tell a process's broker connections from its others.
const AMQP_PORT: u16 = 5672;

/// How long PostgreSQL may keep an idle backend's statistics before it
/// reports them (`PGSTAT_IDLE_INTERVAL`, 10 s), plus a margin.
const PG_STATS_FLUSH: Duration = Duration::from_secs(11);

/// Clock ticks per second of `/proc/<pid>/stat` (`getconf CLK_TCK`).
fn ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8_lossy(&out.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// The user + system CPU seconds process `pid` (or `self`) has spent.
pub fn cpu_seconds(pid: &str) -> Option<f64> {
    Some(stat(pid)?.ticks as f64 / ticks_per_second())
}

/// One process's `/proc/<pid>/stat`: its parent, CPU ticks and start time.
#[derive(Debug, Clone, Copy)]
struct Stat {
    ppid: i32,
    ticks: u64,
    start: u64,
}

fn stat(pid: &str) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields follow the last ')'.
    let fields: Vec<&str> = text.rsplit_once(')')?.1.split_whitespace().collect();
    Some(Stat {
        ppid: fields.get(1)?.parse().ok()?,
        ticks: fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?,
        start: fields.get(19)?.parse().ok()?,
    })
}

fn comm(pid: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| c.trim().to_string())
        .unwrap_or_default()
}

fn cmdline(pid: &str) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .unwrap_or_default()
}

fn all_pids() -> Vec<String> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| name.bytes().all(|b| b.is_ascii_digit()))
        .collect()
}

/// RabbitMQ's server: the `beam.smp` that booted `rabbit` (a `rabbitmqctl`
/// runs a `beam.smp` of its own), else the oldest `beam.smp`.
fn rabbitmq_pid() -> Option<String> {
    let beams: Vec<(String, Stat)> = all_pids()
        .into_iter()
        .filter(|pid| comm(pid) == "beam.smp")
        .filter_map(|pid| stat(&pid).map(|s| (pid, s)))
        .collect();
    beams
        .iter()
        .find(|(pid, _)| cmdline(pid).contains("-s rabbit boot"))
        .or_else(|| beams.iter().min_by_key(|(_, s)| s.start))
        .map(|(pid, _)| pid.clone())
}

/// The client ports `pid` uses towards `remote` (a server's port).
fn client_ports(pid: &str, remote: u16) -> HashSet<u16> {
    ferry_testkit::tcp_ports(pid)
        .into_iter()
        .filter(|(_, r)| *r == remote)
        .map(|(l, _)| l)
        .collect()
}

/// What one PostgreSQL database's CPU is read from.
#[derive(Debug, Clone)]
struct PgTarget {
    /// The database the bench's schema is in.
    database: String,
    /// The server's port, to find the harness's own connections.
    port: u16,
}

/// CPU ticks of every measured process at one moment; `None` where a
/// process could not be read.
#[derive(Debug, Clone, Default)]
struct CpuSnapshot {
    at: Option<Instant>,
    named: Vec<(String, Option<u64>)>,
    /// PostgreSQL processes by pid: (class, ticks), class being
    /// `postgres`, `postgres (bench)` or `postgres background`.
    pg: HashMap<String, (&'static str, u64)>,
}

/// The processes one phase's CPU is read from.
#[derive(Debug, Clone)]
pub struct Processes {
    /// Name and pid: the api, the workers, RabbitMQ, the bench itself.
    named: Vec<(String, Option<String>)>,
    pg: Option<PgTarget>,
}

/// The columns of the CPU table, in order.
pub const COLUMNS: [&str; 5] = [
    "rabbitmq",
    "postgres",
    "postgres background",
    "bench",
    "postgres (bench)",
];

impl Processes {
    /// The api and workers (`(name, pid)`), RabbitMQ and the bench; with
    /// `pg_url`, the PostgreSQL processes of that URL's database.
    pub fn new(ferry: &[(String, i32)], pg_url: Option<&str>) -> Self {
        let mut named: Vec<(String, Option<String>)> = ferry
            .iter()
            .map(|(name, pid)| (name.clone(), Some(pid.to_string())))
            .collect();
        named.push(("rabbitmq".into(), rabbitmq_pid()));
        named.push(("bench".into(), Some(std::process::id().to_string())));
        let pg = pg_url
            .and_then(|url| reqwest::Url::parse(url).ok())
            .map(|url| PgTarget {
                database: url.path().trim_start_matches('/').to_string(),
                port: url.port().unwrap_or(5432),
            });
        Self { named, pg }
    }

    /// The pids of Ferry's own processes (not RabbitMQ, not the bench).
    fn ferry_pids(&self) -> Vec<&str> {
        self.named
            .iter()
            .filter(|(name, _)| name != "rabbitmq" && name != "bench")
            .filter_map(|(_, pid)| pid.as_deref())
            .collect()
    }

    fn cpu(&self) -> CpuSnapshot {
        let named = self
            .named
            .iter()
            .map(|(name, pid)| (name.clone(), pid.as_deref().and_then(stat).map(|s| s.ticks)))
            .collect();
        CpuSnapshot {
            at: Some(Instant::now()),
            named,
            pg: self.pg.as_ref().map(pg_processes).unwrap_or_default(),
        }
    }
}

/// The postmaster's children by pid, each classed as serving the
/// database's Ferry processes, the bench's own connections, or background
/// work. Backends of other databases are left out.
fn pg_processes(target: &PgTarget) -> HashMap<String, (&'static str, u64)> {
    let bench_ports = client_ports(&std::process::id().to_string(), target.port);
    let pids = all_pids();
    let postgres: HashMap<&str, Stat> = pids
        .iter()
        .filter(|pid| comm(pid) == "postgres")
        .filter_map(|pid| stat(pid).map(|s| (pid.as_str(), s)))
        .collect();
    let Some(postmaster) = postgres
        .iter()
        .find(|(_, s)| !postgres.contains_key(s.ppid.to_string().as_str()))
        .map(|(pid, _)| pid.to_string())
    else {
        return HashMap::new();
    };
    let mut out = HashMap::new();
    for (pid, s) in &postgres {
        if s.ppid.to_string() != postmaster {
            continue;
        }
        // "postgres: 15/main: <user> <database> <host>(<port>) <state>"
        let title = cmdline(pid);
        let words: Vec<&str> = title
            .split_once(": ")
            .and_then(|(_, rest)| rest.split_once(": "))
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let client = words
            .get(2)
            .filter(|w| w.contains('(') || w.contains("[local]"));
        let class = match client {
            None => "postgres background",
            Some(_) if words.get(1) != Some(&target.database.as_str()) => continue,
            Some(host) => {
                let port = host
                    .split_once('(')
                    .and_then(|(_, p)| p.trim_end_matches(')').parse::<u16>().ok());
                if port.is_some_and(|p| bench_ports.contains(&p)) {
                    "postgres (bench)"
                } else {
                    "postgres"
                }
            }
        };
        out.insert(pid.to_string(), (class, s.ticks));
    }
    out
}

/// CPU microseconds each process spent between `before` and `after`,
/// divided by `per`.
fn cpu_delta(before: &CpuSnapshot, after: &CpuSnapshot, per: f64) -> Map<String, Value> {
    let us = |ticks: u64| ticks as f64 * 1e6 / ticks_per_second() / per;
    let mut out = Map::new();
    for ((name, b), (_, a)) in before.named.iter().zip(&after.named) {
        let value = match (b, a) {
            (Some(b), Some(a)) => json!(us(a.saturating_sub(*b))),
            _ => Value::Null,
        };
        out.insert(name.clone(), value);
    }
    if !after.pg.is_empty() {
        // A backend that started during the phase counts from zero; one
        // that ended during it is lost (pooled connections live long).
        let mut sums: HashMap<&str, u64> = HashMap::new();
        for (pid, (class, ticks)) in &after.pg {
            let start = before.pg.get(pid).map_or(0, |(_, t)| *t);
            *sums.entry(class).or_default() += ticks.saturating_sub(start);
        }
        for class in ["postgres", "postgres (bench)", "postgres background"] {
            out.insert(
                class.into(),
                json!(us(sums.get(class).copied().unwrap_or(0))),
            );
        }
    }
    out
}

/// The database counts files of Ferry's processes, and the bench's own.
fn db_counts(dir: &Path, pids: &[&str]) -> HashMap<String, HashMap<String, u64>> {
    let mut out: HashMap<String, HashMap<String, u64>> = pids
        .iter()
        .filter_map(|pid| {
            let text = std::fs::read_to_string(dir.join(format!("{pid}.counts"))).ok()?;
            Some((pid.to_string(), counts::parse(&text)))
        })
        .collect();
    out.insert("bench".into(), counts::parse(&counts::snapshot()));
    out
}

/// RabbitMQ's socket counters of the connections whose client port is in
/// `ports`, summed; `None` when `rabbitmqctl` cannot be run.
fn broker_counters(ports: &HashSet<u16>) -> Option<[u64; 4]> {
    let out = std::process::Command::new("rabbitmqctl")
        .args([
            "list_connections",
            "-q",
            "--no-table-headers",
            // A slow broker must not hold the run.
            "--timeout",
            "10",
            "peer_port",
            "recv_cnt",
            "send_cnt",
            "recv_oct",
            "send_oct",
        ])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let mut sums = [0u64; 4];
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let f: Vec<u64> = line
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        if f.len() == 5 && u16::try_from(f[0]).is_ok_and(|p| ports.contains(&p)) {
            for (sum, v) in sums.iter_mut().zip(&f[1..]) {
                *sum += v;
            }
        }
    }
    Some(sums)
}

/// The figures PostgreSQL keeps itself: the database's transactions and
/// the rows written to each table of `schema`.
fn pg_stats(url: &str, schema: &str) -> Option<Value> {
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Text)]
        name: String,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        value: i64,
    }
    let mut conn = PgConnection::establish(url).ok()?;
    conn.batch_execute("SELECT pg_stat_clear_snapshot()").ok()?;
    let rows: Vec<Row> = diesel::sql_query(
        "SELECT 'xact_commit' AS name, xact_commit AS value FROM pg_stat_database WHERE datname = current_database() \
         UNION ALL SELECT 'xact_rollback', xact_rollback FROM pg_stat_database WHERE datname = current_database() \
         UNION ALL SELECT relname || '.inserted', n_tup_ins FROM pg_stat_user_tables WHERE schemaname = $1 \
         UNION ALL SELECT relname || '.updated', n_tup_upd FROM pg_stat_user_tables WHERE schemaname = $1 \
         UNION ALL SELECT relname || '.deleted', n_tup_del FROM pg_stat_user_tables WHERE schemaname = $1 \
         UNION ALL SELECT 'autovacuum_runs', coalesce(sum(autovacuum_count + autoanalyze_count), 0)::bigint \
                   FROM pg_stat_user_tables WHERE schemaname = $1",
    )
    .bind::<diesel::sql_types::Text, _>(schema)
    .load(&mut conn)
    .ok()?;
    Some(Value::Object(
        rows.into_iter().map(|r| (r.name, json!(r.value))).collect(),
    ))
}

/// Everything one phase's cost is read from.
#[derive(Debug)]
pub struct Meter {
    processes: Processes,
    counts_dir: PathBuf,
    /// The bench's schema on PostgreSQL: its URL and name.
    pg_schema: Option<(String, String)>,
}

/// The readings taken when a phase starts.
#[derive(Debug)]
pub struct Start {
    cpu: CpuSnapshot,
    counts: HashMap<String, HashMap<String, u64>>,
    broker: Option<[u64; 4]>,
    pg: Option<Value>,
}

impl Meter {
    /// A meter of `ferry` (name, pid) processes, whose database counts go to
    /// `counts_dir`; on PostgreSQL, `pg_schema` is the schema's URL and name.
    pub fn new(
        ferry: &[(String, i32)],
        counts_dir: &Path,
        pg_schema: Option<(String, String)>,
    ) -> Self {
        Self {
            processes: Processes::new(ferry, pg_schema.as_ref().map(|(url, _)| url.as_str())),
            counts_dir: counts_dir.into(),
            pg_schema,
        }
    }

    /// The pid of each of Ferry's processes, by name (`api`, `worker-0` …).
    pub fn pids_by_name(&self) -> Value {
        self.processes
            .named
            .iter()
            .filter(|(name, _)| name != "rabbitmq" && name != "bench")
            .map(|(name, pid)| (name.clone(), json!(pid)))
            .collect::<Map<String, Value>>()
            .into()
    }

    fn ferry_ports(&self) -> HashSet<u16> {
        self.processes
            .ferry_pids()
            .iter()
            .flat_map(|pid| client_ports(pid, AMQP_PORT))
            .collect()
    }

    fn counts(&self) -> HashMap<String, HashMap<String, u64>> {
        db_counts(&self.counts_dir, &self.processes.ferry_pids())
    }

    /// Pauses (or resumes) the database counts of Ferry's processes, for
    /// the phases that measure something else: counting builds each
    /// statement's SQL again (`counts::PAUSE_FILE`). Returns once each
    /// process has seen it.
    pub async fn pause_counts(&self, paused: bool) -> anyhow::Result<()> {
        let file = self.counts_dir.join(counts::PAUSE_FILE);
        if paused {
            std::fs::write(&file, b"")?;
        } else if file.exists() {
            std::fs::remove_file(&file)?;
        }
        // Each process looks for the file once per write of its counts.
        tokio::time::sleep(counts::WRITE_EVERY * 3).await;
        Ok(())
    }

    /// Readings before a phase. The slower ones (`rabbitmqctl`, PostgreSQL's
    /// statistics) come before the CPU is read, so that their own cost is
    /// not in the phase.
    pub async fn start(&self) -> Start {
        // The processes write their counts every 100 ms: let them.
        tokio::time::sleep(counts::WRITE_EVERY * 3).await;
        let ports = self.ferry_ports();
        let broker = tokio::task::spawn_blocking(move || broker_counters(&ports))
            .await
            .ok()
            .flatten();
        let pg = self.pg_stats().await;
        Start {
            counts: self.counts(),
            broker,
            pg,
            cpu: self.processes.cpu(),
        }
    }

    /// [`Meter::start`] without the broker's counters and PostgreSQL's
    /// statistics: for a phase read with `finish(.., false)`.
    pub async fn start_cpu(&self) -> Start {
        tokio::time::sleep(counts::WRITE_EVERY * 3).await;
        Start {
            counts: self.counts(),
            broker: None,
            pg: None,
            cpu: self.processes.cpu(),
        }
    }

    async fn pg_stats(&self) -> Option<Value> {
        let (url, schema) = self.pg_schema.clone()?;
        tokio::task::spawn_blocking(move || pg_stats(&url, &schema))
            .await
            .ok()
            .flatten()
    }

    /// The CPU of an idle `period`, per second.
    pub async fn idle(&self, period: Duration) -> Value {
        let start = self.start().await;
        tokio::time::sleep(period).await;
        let cpu = self.processes.cpu();
        let seconds = elapsed(&start.cpu, &cpu);
        tokio::time::sleep(counts::WRITE_EVERY * 3).await;
        json!({
            "seconds": seconds,
            "cpu_us_per_s": cpu_delta(&start.cpu, &cpu, seconds),
            "db_per_s": db_delta(&start.counts, &self.counts(), seconds),
        })
    }

    /// The cost of `units` tasks since `start`: read right after the
    /// phase's last task. `full` adds the broker's counters and, on
    /// PostgreSQL, the server's own figures (which waits for PostgreSQL to
    /// report its backends' statistics, about 11 s).
    pub async fn finish(&self, start: Start, units: usize, full: bool) -> Value {
        let cpu = self.processes.cpu();
        let seconds = elapsed(&start.cpu, &cpu);
        let per = units.max(1) as f64;
        tokio::time::sleep(counts::WRITE_EVERY * 3).await;
        let counts = self.counts();
        let mut out = json!({
            "units": units,
            "seconds": seconds,
            "cpu_us_per_task": cpu_delta(&start.cpu, &cpu, per),
            "db_per_task": db_delta(&start.counts, &counts, per),
        });
        if !full {
            return out;
        }
        let ports = self.ferry_ports();
        let broker = tokio::task::spawn_blocking(move || broker_counters(&ports))
            .await
            .ok()
            .flatten();
        out["broker_per_task"] = match (start.broker, broker) {
            (Some(b), Some(a)) => {
                let d = |i: usize| a[i].saturating_sub(b[i]) as f64 / per;
                json!({"recv_cnt": d(0), "send_cnt": d(1), "recv_oct": d(2), "send_oct": d(3)})
            }
            _ => Value::Null,
        };
        if let Some(before) = &start.pg {
            // Idle backends report their statistics up to 10 s late; the
            // hook's counts over the same, longer window are the comparison.
            tokio::time::sleep(PG_STATS_FLUSH).await;
            let after = self.pg_stats().await;
            let hook = db_delta(&start.counts, &self.counts(), 1.0);
            out["pg_stat"] = after.map_or(Value::Null, |after| {
                json!({
                    "window_s": start.cpu.at.map(|t| t.elapsed().as_secs_f64()),
                    "per_task": value_delta(before, &after, per),
                    "total": value_delta(before, &after, 1.0),
                    "hook_total": hook,
                })
            });
        }
        out
    }
}

fn elapsed(before: &CpuSnapshot, after: &CpuSnapshot) -> f64 {
    match (before.at, after.at) {
        (Some(b), Some(a)) => a.duration_since(b).as_secs_f64(),
        _ => f64::NAN,
    }
}

/// Each numeric field of `after` minus the same of `before`, over `per`.
fn value_delta(before: &Value, after: &Value, per: f64) -> Value {
    let Some(after) = after.as_object() else {
        return Value::Null;
    };
    Value::Object(
        after
            .iter()
            .map(|(k, a)| {
                let b = before[k].as_f64().unwrap_or(0.0);
                (k.clone(), json!((a.as_f64().unwrap_or(0.0) - b) / per))
            })
            .collect(),
    )
}

/// The database counts between two readings, over `per`: Ferry's
/// processes summed (`ferry`), each apart (by pid), and the bench's own.
/// `transactions` is commits, rollbacks and implicit (single statement)
/// transactions: what the server counts as transactions.
fn db_delta(
    before: &HashMap<String, HashMap<String, u64>>,
    after: &HashMap<String, HashMap<String, u64>>,
    per: f64,
) -> Value {
    let delta = |who: &str| -> Option<Map<String, Value>> {
        let a = after.get(who)?;
        let b = before.get(who);
        let get = |k: &str| {
            a.get(k)
                .copied()
                .unwrap_or(0)
                .saturating_sub(b.and_then(|b| b.get(k)).copied().unwrap_or(0))
        };
        let mut out: Map<String, Value> = a
            .keys()
            .map(|k| (k.clone(), json!(get(k) as f64 / per)))
            .collect();
        let transactions = get("commits") + get("rollbacks") + get("implicit");
        out.insert("transactions".into(), json!(transactions as f64 / per));
        Some(out)
    };
    let mut by_process = Map::new();
    let mut ferry: Map<String, Value> = Map::new();
    for who in after.keys().filter(|k| *k != "bench") {
        let Some(d) = delta(who) else { continue };
        for (k, v) in &d {
            let sum =
                ferry.get(k).and_then(Value::as_f64).unwrap_or(0.0) + v.as_f64().unwrap_or(0.0);
            ferry.insert(k.clone(), json!(sum));
        }
        by_process.insert(who.clone(), Value::Object(d));
    }
    json!({
        "ferry": if ferry.is_empty() { Value::Null } else { Value::Object(ferry) },
        "by_pid": by_process,
        "bench": delta("bench"),
    })
}

/// RabbitMQ's and the bench's CPU over `run`, per message of `messages`.
pub async fn broker_ceiling<T>(
    messages: usize,
    run: impl std::future::Future<Output = T>,
) -> (T, Value) {
    let processes = Processes::new(&[], None);
    let before = processes.cpu();
    let out = run.await;
    let after = processes.cpu();
    let per = messages.max(1) as f64;
    (out, Value::Object(cpu_delta(&before, &after, per)))
}

/// `1 234.5` or `n/a`.
fn us(v: &Value) -> String {
    v.as_f64().map_or_else(
        || "n/a".into(),
        |f| {
            if f >= 100.0 {
                format!("{f:.0}")
            } else {
                format!("{f:.1}")
            }
        },
    )
}

/// The CPU row of one phase: every process's figure and their total.
fn cpu_row(label: &str, cpu: &Value, names: &[String]) -> String {
    let mut total = 0.0;
    let mut cells = Vec::new();
    for name in names {
        let v = &cpu[name];
        total += v.as_f64().unwrap_or(0.0);
        cells.push(format!("{:>10}", us(v)));
    }
    format!("{label:<26}{} {:>10}", cells.join(""), us(&json!(total)))
}

/// Prints the CPU per task of one open-loop rate, each process's and their
/// total, and RabbitMQ's per message when it ran alone at that rate.
pub fn print_rate(cost: &Value) {
    let Some(cpu) = cost["cpu_us_per_task"].as_object() else {
        return;
    };
    let mut total = 0.0;
    let cells: Vec<String> = cpu
        .iter()
        .map(|(name, v)| {
            total += v.as_f64().unwrap_or(0.0);
            format!("{} {}", short(name), us(v))
        })
        .collect();
    println!(
        "  CPU per task, µs: {}; total {} | RabbitMQ alone at this rate: {} per message",
        cells.join(", "),
        us(&json!(total)),
        us(&cost["broker_alone"]["cpu_us_per_message"]["rabbitmq"]),
    );
}

/// Prints one backend's cost rows.
pub fn print(cost: &Value, ceiling: &Value) {
    let Some(burst) = cost.get("burst") else {
        return;
    };
    let mut names: Vec<String> = burst["cpu_us_per_task"]
        .as_object()
        .map(|m| {
            m.keys()
                .filter(|k| !COLUMNS.contains(&k.as_str()))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names.extend(
        COLUMNS
            .iter()
            .filter(|c| burst["cpu_us_per_task"].get(**c).is_some())
            .map(|c| c.to_string()),
    );
    let header: String = names.iter().map(|n| format!("{:>10}", short(n))).collect();
    println!("CPU, µs (user+system){header} {:>10}", "total");
    println!(
        "{}",
        cpu_row(
            &format!("  per task, burst of {}", burst["units"]),
            &burst["cpu_us_per_task"],
            &names
        )
    );
    println!(
        "{}",
        cpu_row("  per message, broker alone", ceiling, &names)
    );
    let alone = &burst["broker_alone"];
    if !alone.is_null() {
        println!(
            "{}",
            cpu_row(
                &format!("  the same at {}/s", us(&alone["rate_per_s"])),
                &alone["cpu_us_per_message"],
                &names
            )
        );
    }
    if let Some(idle) = cost.get("idle") {
        println!(
            "{}",
            cpu_row("  per second idle (µs/s)", &idle["cpu_us_per_s"], &names)
        );
    }
    let db = &burst["db_per_task"]["ferry"];
    if db.is_null() {
        println!("database per task: n/a (no counts from Ferry's processes)");
    } else {
        println!(
            "database per task: {} statements ({} select, {} insert, {} update, {} delete, {} other), {} transactions ({} committed, {} single-statement), {} checkout pings, {} round trips, {} prepares",
            us(&db["statements"]),
            us(&db["select"]),
            us(&db["insert"]),
            us(&db["update"]),
            us(&db["delete"]),
            us(&db["other"]),
            us(&db["transactions"]),
            us(&db["commits"]),
            us(&db["implicit"]),
            us(&db["pings"]),
            us(&db["round_trips"]),
            us(&db["prepares"]),
        );
    }
    if let Some(by_name) = cost["by_name"].as_object() {
        for (name, pid) in by_name {
            let p = &burst["db_per_task"]["by_pid"][pid.as_str().unwrap_or("")];
            if !p.is_null() {
                println!(
                    "  {name:<10} {} statements, {} transactions, {} pings per task",
                    us(&p["statements"]),
                    us(&p["transactions"]),
                    us(&p["pings"])
                );
            }
        }
    }
    let b = &burst["broker_per_task"];
    if b.is_null() {
        println!("broker per task: n/a (rabbitmqctl not available)");
    } else {
        println!(
            "broker per task (RabbitMQ's socket reads / writes on Ferry's connections): {} reads ({} bytes), {} writes ({} bytes)",
            us(&b["recv_cnt"]),
            us(&b["recv_oct"]),
            us(&b["send_cnt"]),
            us(&b["send_oct"]),
        );
    }
    let pg = &burst["pg_stat"];
    if !pg.is_null() {
        let hook = &pg["hook_total"];
        let hook_tx = hook["ferry"]["transactions"].as_f64().unwrap_or(0.0)
            + hook["bench"]["transactions"].as_f64().unwrap_or(0.0);
        let per_task = &pg["per_task"];
        let rows: Vec<String> = per_task
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, v)| k.contains('.') && v.as_f64().unwrap_or(0.0) != 0.0)
            .map(|(k, v)| format!("{k} {}", us(v)))
            .collect();
        println!(
            "pg_stat cross-check over {} s: {} transactions committed + {} rolled back by the server, {} counted by the hook (Ferry and bench), {} autovacuum/autoanalyze runs on the schema; rows per task: {}",
            us(&pg["window_s"]),
            us(&pg["total"]["xact_commit"]),
            us(&pg["total"]["xact_rollback"]),
            us(&json!(hook_tx)),
            us(&pg["total"]["autovacuum_runs"]),
            rows.join(", ")
        );
    }
}

fn short(name: &str) -> &str {
    match name {
        "postgres background" => "pg bg",
        "postgres (bench)" => "pg bench",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_its_own_cpu_and_not_a_missing_process() {
        let me = stat(&std::process::id().to_string()).expect("this process's stat");
        assert_eq!(
            me.ppid,
            stat("self").expect("/proc/self").ppid,
            "same process"
        );
        assert!(stat("0").is_none());
        let gone = Processes {
            named: vec![("api".into(), Some("0".into())), ("bench".into(), None)],
            pg: None,
        };
        let before = gone.cpu();
        let delta = cpu_delta(&before, &gone.cpu(), 1.0);
        assert!(delta["api"].is_null());
        assert!(delta["bench"].is_null());
    }

    #[test]
    fn finds_its_own_tcp_connections() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a listener");
        let server = listener.local_addr().expect("its address").port();
        let client = std::net::TcpStream::connect(("127.0.0.1", server)).expect("connect");
        let local = client.local_addr().expect("its address").port();
        let ports = client_ports(&std::process::id().to_string(), server);
        assert!(ports.contains(&local), "{ports:?} lacks {local}");
    }

    #[test]
    fn database_counts_per_task_sum_ferry_processes() {
        let counts = |pairs: &[(&str, &[(&str, u64)])]| -> HashMap<String, HashMap<String, u64>> {
            pairs
                .iter()
                .map(|(who, kv)| {
                    let kv = kv.iter().map(|(k, v)| (k.to_string(), *v)).collect();
                    (who.to_string(), kv)
                })
                .collect()
        };
        let before = counts(&[("10", &[("statements", 5), ("commits", 1)])]);
        let after = counts(&[
            ("10", &[("statements", 25), ("commits", 3), ("implicit", 2)]),
            ("11", &[("statements", 10), ("commits", 0), ("implicit", 0)]),
        ]);
        let per_task = db_delta(&before, &after, 10.0);
        assert_eq!(per_task["ferry"]["statements"], json!(3.0));
        assert_eq!(per_task["ferry"]["transactions"], json!(0.4));
        assert_eq!(per_task["by_pid"]["11"]["statements"], json!(1.0));
        assert!(per_task["bench"].is_null());
    }
}
