//! The embedded row (`ferry-bench standalone`): one `ferry-api
//! --standalone` process (SQLite, the in-process queue and worker, no
//! RabbitMQ), as a single-host user runs it. A closed-loop burst of N echo
//! tasks (20 000; 500 with `--quick`) from `--concurrency` clients, timed
//! from the first POST until all have succeeded; then an open loop at
//! 1 000/s (each POST timed from its intended send time, as the main
//! run's open loop); and the process's memory and CPU: VmRSS at start,
//! its peak over each phase (sampled every 50 ms) and VmHWM at the end,
//! and its CPU time per task over the burst beside the generator's.

use std::path::Path;
use std::time::Duration;

use ferry_core::Db;
use ferry_testkit::Database;
use serde_json::{json, Value};

use super::{
    burst, cost, fmt, offer, succeeded_latencies, summary, wait_succeeded, Answer, Args, RssSampler,
};

/// The embedded row's knobs.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct StandalonePlan {
    /// Tasks in the closed-loop burst (default 20000, or 500 with --quick).
    #[arg(long)]
    pub tasks: Option<usize>,
    /// The open loop's rate, tasks per second (default 1000).
    #[arg(long)]
    pub rate: Option<u32>,
    /// Seconds the open loop runs (default 5, or 1 with --quick).
    #[arg(long)]
    pub seconds: Option<f64>,
}

/// The goal of the issue: tasks per second end to end, in one process.
const GOAL_PER_S: f64 = 5000.0;

/// The embedded row.
pub async fn run(args: &Args, plan: &StandalonePlan, bin_dir: &Path) -> anyhow::Result<Value> {
    // Standalone: the broker it is given goes unused.
    let deployment = super::bench_deployment(args, Database::Sqlite, "standalone", bin_dir);
    let api = deployment.standalone().await;
    let pid = api.proc.pid();
    let db = Db::connect(&deployment.database_url, 2)?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .build()?;
    let tasks = plan.tasks.unwrap_or(if args.quick { 500 } else { 20_000 });
    let rate = plan.rate.unwrap_or(1000);
    let seconds = plan.seconds.unwrap_or(if args.quick { 1.0 } else { 5.0 });

    eprintln!("standalone: burst of {tasks} tasks");
    let rss = RssSampler::start(pid);
    let cpu = (
        cost::cpu_seconds(&pid.to_string()),
        cost::cpu_seconds("self"),
    );
    let (burst, _) = burst(&api.base, &db, &client, tasks, args.concurrency).await?;
    let cpu_us = |before: Option<f64>, after: Option<f64>| {
        before.zip(after).map(|(b, a)| (a - b) * 1e6 / tasks as f64)
    };
    let api_cpu = cpu_us(cpu.0, cost::cpu_seconds(&pid.to_string()));
    let bench_cpu = cpu_us(cpu.1, cost::cpu_seconds("self"));
    let burst_rss = rss.finish().await;

    eprintln!("standalone: open loop at {rate}/s for {seconds}s");
    let rss = RssSampler::start(pid);
    let offered = offer(&client, &api.base, rate, seconds, "standalone-open", 512).await?;
    let submit_ms: Vec<f64> = offered
        .sent
        .iter()
        .filter(|s| matches!(s.answer, Answer::Accepted(_)))
        .map(|s| s.latency_ms)
        .collect();
    let accepted = submit_ms.len();
    wait_succeeded(&db, (tasks + accepted) as i64, Duration::from_secs(600)).await?;
    let open_rss = rss.finish().await;
    let done_ms = succeeded_latencies(&client, &api.base, &offered).await?;
    let result = json!({
        "tasks": tasks,
        "concurrency": args.concurrency,
        "burst": burst,
        "goal_per_s": GOAL_PER_S,
        "api_cpu_us_per_task": api_cpu,
        "bench_cpu_us_per_task": bench_cpu,
        "burst_rss": burst_rss,
        "open_loop": {
            "rate_per_s": rate,
            "seconds": seconds,
            "offered": offered.sent.len(),
            "accepted": accepted,
            "not_accepted": offered.sent.len() - accepted,
            "submit_latency": summary(submit_ms),
            "submit_to_succeeded_latency": summary(done_ms),
            "send_lag": summary(offered.send_lag_ms.clone()),
            "rss": open_rss,
        },
        "peak_rss_mib": api.proc.peak_rss_mib(),
        "load_average": super::load_average(),
    });
    drop(api);
    Ok(result)
}

/// Prints the embedded row.
pub fn print(s: &Value) {
    let burst = &s["burst"];
    println!(
        "\n== standalone (one ferry-api --standalone: SQLite, in-process queue and worker) =="
    );
    println!(
        "end to end      {:>8} tasks/s ({} tasks, {} clients; goal {}) | ingest {} req/s, p50 {} ms p99 {} ms",
        fmt(&burst["end_to_end_per_s"]),
        burst["tasks"],
        burst["concurrency"],
        fmt(&s["goal_per_s"]),
        fmt(&burst["ingest_per_s"]),
        fmt(&burst["ingest_latency"]["p50_ms"]),
        fmt(&burst["ingest_latency"]["p99_ms"]),
    );
    println!(
        "CPU per task    api {} us, load generator {} us (over the burst; load average {})",
        fmt(&s["api_cpu_us_per_task"]),
        fmt(&s["bench_cpu_us_per_task"]),
        s["load_average"].as_str().unwrap_or("?"),
    );
    let o = &s["open_loop"];
    println!(
        "open loop {:>5}/s  submit p50 {} p99 {} ms | submit->succeeded p50 {} p99 {} ms | {} of {} accepted",
        o["rate_per_s"],
        fmt(&o["submit_latency"]["p50_ms"]),
        fmt(&o["submit_latency"]["p99_ms"]),
        fmt(&o["submit_to_succeeded_latency"]["p50_ms"]),
        fmt(&o["submit_to_succeeded_latency"]["p99_ms"]),
        o["accepted"],
        o["offered"],
    );
    println!(
        "RSS             start {} MiB, peak {} MiB in the burst, {} MiB in the open loop; VmHWM {} MiB",
        fmt(&s["burst_rss"]["start_mib"]),
        fmt(&s["burst_rss"]["peak_mib"]),
        fmt(&o["rss"]["peak_mib"]),
        fmt(&s["peak_rss_mib"]),
    );
}
