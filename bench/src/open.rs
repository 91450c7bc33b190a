//! The overload row (`ferry-bench open`): the production layout (one
//! `ferry-api`, the worker replicas) with the api's default
//! `receive_limit` (128; `--receive-limit` sets another), offered
//! `/receive` POSTs in an open loop at 1 000, 5 000 and 20 000 events/s
//! (200 and 1 000 with `--quick`) for a few seconds each. Each POST is
//! spawned at its intended send time whatever the earlier ones are doing,
//! and timed from that time. Per rate: how many were offered, accepted
//! (202), refused (503 `overloaded`) or failed otherwise; the accepted
//! POSTs' latency (from the intended time, and from the moment the
//! generator had a socket for it) and their tasks' submit→succeeded
//! latency; the
//! generator's own send lag and most requests in flight; and the api's
//! VmRSS at the start of the rate and its peak while it lasted and its
//! accepted tasks drained (sampled every 50 ms). Each rate starts once
//! the previous one's tasks have all succeeded.

use std::path::Path;
use std::time::Duration;

use ferry_core::{Db, TaskStatus};
use serde_json::{json, Value};

use super::{
    fmt, offer, succeeded_latencies, summary, wait_succeeded, Answer, Args, Deployment, RssSampler,
};

/// The overload row's knobs.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct OpenPlan {
    /// Offered rates, events per second (default 1000,5000,20000, or
    /// 200,1000 with --quick).
    #[arg(long, value_delimiter = ',')]
    pub rates: Option<Vec<u32>>,
    /// Seconds each rate is offered (default 3, or 1 with --quick).
    #[arg(long)]
    pub seconds: Option<f64>,
    /// The api's `receive_limit` (unset: the api's default, 128).
    #[arg(long)]
    pub receive_limit: Option<usize>,
    /// The api's `receive_latency_target` (unset: the api's default,
    /// 20ms; `0` keeps the limit fixed at `receive_limit`).
    #[arg(long)]
    pub receive_latency_target: Option<String>,
    /// Requests the generator keeps on the wire at once at most, a bound
    /// of its own file descriptors (default 2048).
    #[arg(long)]
    pub sockets: Option<usize>,
}

impl OpenPlan {
    fn rates(&self, quick: bool) -> Vec<u32> {
        self.rates.clone().unwrap_or(if quick {
            vec![200, 1000]
        } else {
            vec![1000, 5000, 20_000]
        })
    }

    fn seconds(&self, quick: bool) -> f64 {
        self.seconds.unwrap_or(if quick { 1.0 } else { 3.0 })
    }
}

/// The overload row on one backend.
pub async fn run(
    args: &Args,
    plan: &OpenPlan,
    backend: &str,
    bin_dir: &Path,
) -> anyhow::Result<Value> {
    let limit = plan.receive_limit.map(|l| l.to_string());
    let mut env: Vec<(&str, &str)> = limit
        .iter()
        .map(|l| ("FERRY_RECEIVE_LIMIT", l.as_str()))
        .collect();
    if let Some(target) = &plan.receive_latency_target {
        env.push(("FERRY_RECEIVE_LATENCY_TARGET", target.as_str()));
    }
    let d = Deployment::start_with(args, backend, bin_dir, &env).await?;
    let db = Db::connect(&d.database_url, 2)?;
    let sockets = plan.sockets.unwrap_or(2048);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(sockets)
        .timeout(Duration::from_secs(30))
        .build()?;
    let seconds = plan.seconds(args.quick);
    let mut rows = Vec::new();
    for rate in plan.rates(args.quick) {
        eprintln!("open ({backend}): offering {rate}/s for {seconds}s");
        let before = db
            .run_blocking(|db| db.count_with_status(TaskStatus::Succeeded))
            .await?;
        let rss = RssSampler::start(d.api.proc.pid());
        let limits = LimitSampler::start(client.clone(), d.base.clone());
        let offered = offer(
            &client,
            &d.base,
            rate,
            seconds,
            &format!("overload-{rate}"),
            sockets,
        )
        .await?;
        let mut accepted_ms = Vec::new();
        let mut accepted_from_send_ms = Vec::new();
        let mut refused_ms = Vec::new();
        let mut errors = Vec::new();
        for sent in &offered.sent {
            match &sent.answer {
                Answer::Accepted(_) => {
                    accepted_ms.push(sent.latency_ms);
                    accepted_from_send_ms.push(sent.latency_ms - sent.lag_ms);
                }
                Answer::Refused => refused_ms.push(sent.latency_ms),
                Answer::Error(e) => errors.push(e.clone()),
            }
        }
        let accepted = accepted_ms.len();
        let drain = std::time::Instant::now();
        wait_succeeded(&db, before + accepted as i64, Duration::from_secs(600)).await?;
        let drained_after = drain.elapsed();
        let memory = rss.finish().await;
        let limit = limits.finish().await;
        let done_ms = succeeded_latencies(&client, &d.base, &offered).await?;
        errors.sort();
        errors.dedup();
        errors.truncate(3);
        rows.push(json!({
            "rate_per_s": rate,
            "seconds": seconds,
            "offered": offered.sent.len(),
            "accepted": accepted,
            "refused": refused_ms.len(),
            "errors": offered.sent.len() - accepted - refused_ms.len(),
            "error_examples": errors,
            "accepted_submit_latency": summary(accepted_ms),
            "accepted_submit_latency_from_send": summary(accepted_from_send_ms),
            "refused_latency": summary(refused_ms),
            "submit_to_succeeded_latency": summary(done_ms),
            "answered_in_s": offered.elapsed.as_secs_f64(),
            "drained_after_s": drained_after.as_secs_f64(),
            "send_lag": summary(offered.send_lag_ms.clone()),
            "peak_in_flight": offered.peak_in_flight,
            "api_rss": memory,
            "receive_limit_in_force": limit,
            "load_average": super::load_average(),
        }));
    }
    Ok(json!({
        "backend": backend,
        "workers": args.workers,
        "receive_limit": plan.receive_limit.unwrap_or(ferry_core::config::DEFAULT_RECEIVE_LIMIT),
        "receive_latency_target": plan.receive_latency_target.clone().unwrap_or_else(|| {
            humantime::format_duration(ferry_core::config::DEFAULT_RECEIVE_LATENCY_TARGET)
                .to_string()
        }),
        "sockets": sockets,
        "rates": rows,
    }))
}

/// Reads the api's `ferry_receive_limit` gauge every 100 ms while a rate
/// is offered and drained: the lowest, the last and each reading.
struct LimitSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    sampler: tokio::task::JoinHandle<Vec<f64>>,
}

impl LimitSampler {
    fn start(client: reqwest::Client, base: String) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let sampler = tokio::spawn(async move {
            let mut series = Vec::new();
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                series.extend(receive_limit(&client, &base).await);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            series
        });
        Self { stop, sampler }
    }

    /// `{"lowest", "last", "every_100ms"}`.
    async fn finish(self) -> Value {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let series = self.sampler.await.unwrap_or_default();
        let lowest = series.iter().copied().reduce(f64::min);
        json!({"lowest": lowest, "last": series.last(), "every_100ms": series})
    }
}

/// The api's `ferry_receive_limit` gauge.
async fn receive_limit(client: &reqwest::Client, base: &str) -> Option<f64> {
    let text = super::metrics_text(client, base).await.ok()?;
    ferry_testkit::metric_value(&text, "ferry_receive_limit")
}

/// Prints the overload rows.
pub fn print(results: &Value) {
    for b in results.as_array().into_iter().flatten() {
        println!(
            "\n== open-loop overload, {} ({} workers, receive_limit {}, receive_latency_target {}, generator bound {} sockets) ==",
            b["backend"].as_str().unwrap_or("?"),
            b["workers"],
            b["receive_limit"],
            b["receive_latency_target"].as_str().unwrap_or("?"),
            b["sockets"],
        );
        println!(
            "{:>8} {:>7} {:>8} {:>7} {:>6} | {:>17} | {:>17} | {:>19} | {:>12} {:>9} | {:>14} | {:>12}",
            "offer/s",
            "offered",
            "accepted",
            "refused",
            "errors",
            "202 p50/p99 ms",
            "from send",
            "->succeeded p50/p99",
            "lag p99 ms",
            "in flight",
            "api RSS MiB",
            "limit low",
        );
        for r in b["rates"].as_array().into_iter().flatten() {
            println!(
                "{:>8} {:>7} {:>8} {:>7} {:>6} | {:>17} | {:>17} | {:>19} | {:>12} {:>9} | {:>14} | {:>12}",
                r["rate_per_s"].to_string(),
                r["offered"].to_string(),
                r["accepted"].to_string(),
                r["refused"].to_string(),
                r["errors"].to_string(),
                format!(
                    "{} / {}",
                    fmt(&r["accepted_submit_latency"]["p50_ms"]),
                    fmt(&r["accepted_submit_latency"]["p99_ms"])
                ),
                format!(
                    "{} / {}",
                    fmt(&r["accepted_submit_latency_from_send"]["p50_ms"]),
                    fmt(&r["accepted_submit_latency_from_send"]["p99_ms"])
                ),
                format!(
                    "{} / {}",
                    fmt(&r["submit_to_succeeded_latency"]["p50_ms"]),
                    fmt(&r["submit_to_succeeded_latency"]["p99_ms"])
                ),
                fmt(&r["send_lag"]["p99_ms"]),
                r["peak_in_flight"].to_string(),
                format!(
                    "{} -> {}",
                    fmt(&r["api_rss"]["start_mib"]),
                    fmt(&r["api_rss"]["peak_mib"])
                ),
                fmt(&r["receive_limit_in_force"]["lowest"]),
            );
            for e in r["error_examples"].as_array().into_iter().flatten() {
                println!("         error: {}", e.as_str().unwrap_or("?"));
            }
        }
    }
}
