//! The reads row alone (`ferry-bench reads`): the `/status` reads and the
//! HTTP floor of the full run, without the rest, so that a change to the
//! read path can be measured in a minute. Per backend: a fresh deployment
//! (api, workers), N echo tasks seeded through `POST /receive` and run to
//! `succeeded`, and N more delayed by 30 days (so `pending`), then rounds
//! of the closed loops of the full run (the HTTP floor, then `/status` of
//! the succeeded tasks, which the api answers from memory after the first
//! read, `final_views`) and of `/status` of the delayed ones (read from the
//! database every time), each of `--reads` GETs from `--concurrency`
//! clients.
//!
//! With `--baseline DIR` a second `ferry-api`, built from another commit
//! (`DIR/ferry-api`), serves the same database beside the first, and each
//! round runs both loops on both apis, alternately: the two builds are
//! compared within one run, minutes of a busy machine's noise apart at
//! most, as BENCHMARKS.md asks.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ferry_core::Db;
use serde_json::{json, Value};

use super::{
    bench_deployment, closed_loop_gets, database, event, fmt, submit, wait_succeeded, Args,
};

/// The reads row.
#[derive(Debug, Clone, clap::Args)]
pub struct ReadsPlan {
    /// Tasks seeded per backend (default 2000, or 200 with --quick).
    #[arg(long)]
    pub tasks: Option<usize>,
    /// GETs in each closed loop (default 20000, or 2000 with --quick).
    #[arg(long)]
    pub reads: Option<usize>,
    /// Rounds of (floor, status) per api (default 3, or 1 with --quick).
    #[arg(long)]
    pub rounds: Option<usize>,
    /// A directory holding another build's `ferry-api`, run beside this
    /// one on the same database and measured alternately with it.
    #[arg(long)]
    pub baseline: Option<PathBuf>,
}

/// CPU time (user + system) the process `pid` has spent so far, in
/// microseconds (`/proc/<pid>/stat`, clock ticks of 10 ms).
fn cpu_us(pid: i32) -> f64 {
    let ticks = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|text| {
            // The command name may hold spaces: fields follow the last ')'.
            let fields: Vec<&str> = text.rsplit_once(')')?.1.split_whitespace().collect();
            // utime and stime, fields 14 and 15 of proc(5).
            let ticks = |i: usize| fields.get(i)?.parse::<u64>().ok();
            Some(ticks(11)? + ticks(12)?)
        });
    ticks.map_or(f64::NAN, |t| t as f64 * 10_000.0)
}

/// The median of `values` (NaN if none).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// One backend: seeds, then the rounds; returns each api's figures.
pub async fn run(
    args: &Args,
    plan: &ReadsPlan,
    backend: &str,
    bin_dir: &Path,
) -> anyhow::Result<Value> {
    let tasks = plan.tasks.unwrap_or(if args.quick { 200 } else { 2000 });
    let reads = plan.reads.unwrap_or(if args.quick { 2000 } else { 20_000 });
    let rounds = plan.rounds.unwrap_or(if args.quick { 1 } else { 3 });
    // No database counts: nothing here reports them, and counting builds
    // each statement's SQL again, which the floor never pays (the full run
    // pauses them for its reads, `counts::PAUSE_FILE`).
    let mut deployment = bench_deployment(args, database(args, backend)?, "bench_reads", bin_dir);
    let mut apis = vec![("this build", deployment.api().await)];
    if let Some(baseline) = &plan.baseline {
        deployment.bins = baseline.clone();
        apis.push(("baseline", deployment.api().await));
        deployment.bins = bin_dir.to_path_buf();
    }
    let _workers: Vec<_> = (0..args.workers)
        .map(|i| deployment.worker(&format!("worker-{i}")))
        .collect();
    let db = Db::connect(&deployment.database_url, 2)?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .build()?;
    eprintln!("[{backend}] seeding {tasks} tasks");
    let base = apis[0].1.base.clone();
    let ids = seed(&client, &base, args.concurrency, tasks, |i| {
        event("reads", i)
    })
    .await?;
    wait_succeeded(&db, tasks as i64, Duration::from_secs(300)).await?;
    // Tasks in flight: delayed by 30 days, so they stay `pending` and each
    // read of one goes to the database (only succeeded tasks' answers are
    // kept in memory, `final_views`).
    eprintln!("[{backend}] seeding {tasks} delayed tasks");
    let delayed = seed(&client, &base, args.concurrency, tasks, |i| {
        let mut e: Value = serde_json::from_str(&event("reads-delayed", i)).expect("JSON");
        e["delayseconds"] = json!(30 * 24 * 3600);
        e.to_string()
    })
    .await?;
    let (ids, delayed) = (Arc::new(ids), Arc::new(delayed));
    // Per api: floor req/s, /status req/s (succeeded tasks), the api's CPU
    // µs per request of each, and /status req/s and CPU of delayed tasks.
    type Figures = (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>);
    let mut figures: Vec<Figures> = vec![Default::default(); apis.len()];
    for round in 1..=rounds {
        for (i, (name, api)) in apis.iter().enumerate() {
            let gets =
                |path, expected| timed_gets(&client, api, path, expected, reads, args.concurrency);
            let (floor, floor_cpu) = gets(
                Box::new(|i| format!("/no-such-route/{i}")),
                reqwest::StatusCode::NOT_FOUND,
            )
            .await?;
            let ids = ids.clone();
            let (status, status_cpu) = gets(
                Box::new(move |i| format!("/status/{}", ids[i % ids.len()])),
                reqwest::StatusCode::OK,
            )
            .await?;
            let delayed = delayed.clone();
            let (pending, pending_cpu) = gets(
                Box::new(move |i| format!("/status/{}", delayed[i % delayed.len()])),
                reqwest::StatusCode::OK,
            )
            .await?;
            let p = pending["reads_per_s"].as_f64().unwrap_or(f64::NAN);
            let (f, s) = (
                floor["reads_per_s"].as_f64().unwrap_or(f64::NAN),
                status["reads_per_s"].as_f64().unwrap_or(f64::NAN),
            );
            eprintln!(
                "[{backend}] round {round} {name:>10}: floor {} req/s (p50 {} ms, api {floor_cpu:.1} µs CPU each), /status {} req/s (p50 {} ms, p99 {} ms, api {status_cpu:.1} µs CPU each) = {:.0}%",
                fmt(&floor["reads_per_s"]),
                fmt(&floor["latency"]["p50_ms"]),
                fmt(&status["reads_per_s"]),
                fmt(&status["latency"]["p50_ms"]),
                fmt(&status["latency"]["p99_ms"]),
                100.0 * s / f
            );
            eprintln!(
                "[{backend}] round {round} {name:>10}: /status of delayed (pending) tasks {} req/s (p50 {} ms, p99 {} ms, api {pending_cpu:.1} µs CPU each) = {:.0}%",
                fmt(&pending["reads_per_s"]),
                fmt(&pending["latency"]["p50_ms"]),
                fmt(&pending["latency"]["p99_ms"]),
                100.0 * p / f
            );
            figures[i].0.push(f);
            figures[i].1.push(s);
            figures[i].2.push(floor_cpu);
            figures[i].3.push(status_cpu);
            figures[i].4.push(p);
            figures[i].5.push(pending_cpu);
        }
    }
    let rows: Vec<Value> = apis
        .iter()
        .zip(figures)
        .map(
            |((name, _), (floor, status, floor_cpu, status_cpu, pending, pending_cpu))| {
                let ratios: Vec<f64> = status.iter().zip(&floor).map(|(s, f)| s / f).collect();
                let pending_ratios: Vec<f64> =
                    pending.iter().zip(&floor).map(|(p, f)| p / f).collect();
                json!({
                    "api": name,
                    "median_floor_per_s": median(floor.clone()),
                    "median_status_per_s": median(status.clone()),
                    "floor_per_s": floor,
                    "status_per_s": status,
                    "median_ratio": median(ratios),
                    "api_cpu_us_per_floor_request": median(floor_cpu),
                    "api_cpu_us_per_status_request": median(status_cpu),
                    "median_pending_status_per_s": median(pending.clone()),
                    "pending_status_per_s": pending,
                    "median_pending_ratio": median(pending_ratios),
                    "api_cpu_us_per_pending_status_request": median(pending_cpu),
                })
            },
        )
        .collect();
    Ok(json!({
        "backend": backend,
        "tasks": tasks,
        "reads": reads,
        "concurrency": args.concurrency,
        "apis": rows,
    }))
}

/// `reads` GETs of `path(i)` on `api` from `concurrency` clients, each
/// answered `expected`: the closed loop's figures, and the api's CPU µs
/// per GET.
async fn timed_gets(
    client: &reqwest::Client,
    api: &ferry_testkit::Api,
    path: Box<dyn Fn(usize) -> String + Send + Sync>,
    expected: reqwest::StatusCode,
    reads: usize,
    concurrency: usize,
) -> anyhow::Result<(Value, f64)> {
    let pid = api.proc.pid();
    let cpu = cpu_us(pid);
    let figures = closed_loop_gets(client, &api.base, path, expected, reads, concurrency).await?;
    Ok((figures, (cpu_us(pid) - cpu) / reads as f64))
}

/// Submits `tasks` events (`event(i)`) from `concurrency` clients; their
/// task ids.
async fn seed(
    client: &reqwest::Client,
    base: &str,
    concurrency: usize,
    tasks: usize,
    event: impl Fn(usize) -> String + Send + Sync + 'static,
) -> anyhow::Result<Vec<String>> {
    let ids = Arc::new(tokio::sync::Mutex::new(Vec::with_capacity(tasks)));
    let event = Arc::new(event);
    let n = concurrency.min(tasks).max(1);
    let seeders: Vec<_> = (0..n)
        .map(|c| {
            let (client, base, ids, event) =
                (client.clone(), base.to_string(), ids.clone(), event.clone());
            tokio::spawn(async move {
                for i in (c..tasks).step_by(n) {
                    let id = submit(&client, &base, event(i)).await?;
                    ids.lock().await.push(id);
                }
                Ok::<_, anyhow::Error>(())
            })
        })
        .collect();
    for s in seeders {
        s.await??;
    }
    let ids = std::mem::take(&mut *ids.lock().await);
    Ok(ids)
}

/// Prints each backend's medians.
pub fn print(rows: &Value) {
    for b in rows.as_array().into_iter().flatten() {
        for a in b["apis"].as_array().into_iter().flatten() {
            println!(
                "{:<8} {:>10}: floor {:>8} req/s, /status {:>8} req/s, /status ÷ floor {:.0}%; api CPU per request: floor {} µs, /status {} µs (medians of {} rounds)",
                b["backend"].as_str().unwrap_or("?"),
                a["api"].as_str().unwrap_or("?"),
                fmt(&a["median_floor_per_s"]),
                fmt(&a["median_status_per_s"]),
                100.0 * a["median_ratio"].as_f64().unwrap_or(f64::NAN),
                fmt(&a["api_cpu_us_per_floor_request"]),
                fmt(&a["api_cpu_us_per_status_request"]),
                a["floor_per_s"].as_array().map_or(0, Vec::len),
            );
            println!(
                "{:<8} {:>10}: /status of delayed (pending) tasks {:>8} req/s, ÷ floor {:.0}%; api CPU per request {} µs",
                b["backend"].as_str().unwrap_or("?"),
                a["api"].as_str().unwrap_or("?"),
                fmt(&a["median_pending_status_per_s"]),
                100.0 * a["median_pending_ratio"].as_f64().unwrap_or(f64::NAN),
                fmt(&a["api_cpu_us_per_pending_status_request"]),
            );
        }
    }
}
