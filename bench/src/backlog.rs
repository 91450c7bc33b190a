//! The backlog row (`ferry-bench backlog`): N tasks pending (0 as the
//! baseline, 100 000 and 1 000 000; 0 and 2 000 with `--quick`),
//! submitted through the api with no worker running, in batches of 500
//! (`application/cloudevents-batch+json`, 4 clients), so the rows and
//! the messages are exactly those of `/receive`: the harness waits until
//! every one is published (`enqueued_at` set, the message confirmed).
//! Then the worker replicas start, and the row measures how fast they
//! drain it (tasks/s, from their start until every task has succeeded),
//! how long each pass of the api's relay took meanwhile (from the api's
//! `ferry_relay_round_seconds` histogram, scraped before and after the
//! drain), and `/status` and `/receive` latency from one client each
//! (a request every 50 ms) during the drain, and the CPU the api and the
//! workers spent per task over it. With 0 pending the
//! "drain" is a few seconds of the same probes with the workers idle.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use ferry_core::{Db, TaskStatus};
use serde_json::{json, Value};

use super::{cost, fmt, ms, submit, summary, Args};

/// The backlog row's knobs.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct BacklogPlan {
    /// Pending tasks, one run each (default 0,100000,1000000, or 0,2000
    /// with --quick).
    #[arg(long, value_delimiter = ',')]
    pub pending: Option<Vec<usize>>,
}

impl BacklogPlan {
    /// The backlogs to run.
    pub fn pending(&self, quick: bool) -> Vec<usize> {
        self.pending.clone().unwrap_or(if quick {
            vec![0, 2000]
        } else {
            vec![0, 100_000, 1_000_000]
        })
    }
}

/// Events per seeding request.
const SEED_BATCH: usize = 500;

/// Tasks waiting for their message whose confirm is not recorded yet (a
/// claimed task's confirm is never recorded: it needs none).
const UNPUBLISHED: &str = "WHERE enqueued_at IS NULL AND status IN ('pending', 'retrying')";

/// Seeding clients.
const SEED_CLIENTS: usize = 4;
/// Time between a probe's requests.
const PROBE_PAUSE: Duration = Duration::from_millis(50);

/// The `ferry_relay_round_seconds` histogram of one scrape: cumulative
/// (upper bound, count) per bucket, the sum and the count; and the
/// relay's publish counters.
#[derive(Debug, Default, Clone)]
struct Relay {
    buckets: Vec<(f64, f64)>,
    sum: f64,
    count: f64,
    published: f64,
    lost_republished: f64,
}

fn relay_metrics(text: &str) -> Relay {
    let mut relay = Relay::default();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        if let Some(labels) = name.strip_prefix("ferry_relay_round_seconds_bucket{") {
            let le = labels
                .split_once("le=\"")
                .and_then(|(_, rest)| rest.split_once('"'))
                .map(|(le, _)| le);
            let bound = match le {
                Some("+Inf") => f64::INFINITY,
                Some(le) => le.parse().unwrap_or(f64::NAN),
                None => continue,
            };
            relay.buckets.push((bound, value));
        } else {
            match name {
                "ferry_relay_round_seconds_sum" => relay.sum = value,
                "ferry_relay_round_seconds_count" => relay.count = value,
                "ferry_relay_published_total" => relay.published = value,
                "ferry_relay_lost_republished_total" => relay.lost_republished = value,
                _ => {}
            }
        }
    }
    relay.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    relay
}

/// The passes between two scrapes: how many, their mean, and the bucket
/// bound at or under which p50 and p99 of them fell (ms).
fn relay_between(before: &Relay, after: &Relay) -> Value {
    let passes = after.count - before.count;
    let bound_of = |q: f64| -> Value {
        if passes <= 0.0 {
            return Value::Null;
        }
        for (bound, cumulative) in &after.buckets {
            let earlier = before
                .buckets
                .iter()
                .find(|(b, _)| b == bound)
                .map_or(0.0, |(_, c)| *c);
            if cumulative - earlier >= q * passes {
                return json!(bound * 1000.0);
            }
        }
        Value::Null
    };
    json!({
        "passes": passes as u64,
        "mean_ms": if passes > 0.0 { json!((after.sum - before.sum) / passes * 1000.0) } else { Value::Null },
        "p50_at_most_ms": bound_of(0.5),
        "p99_at_most_ms": bound_of(0.99),
        "published": after.published - before.published,
        "lost_republished": after.lost_republished - before.lost_republished,
    })
}

async fn scrape(client: &reqwest::Client, base: &str) -> anyhow::Result<Relay> {
    Ok(relay_metrics(&super::metrics_text(client, base).await?))
}

/// Submits `n` events in batches; returns their task ids.
async fn seed(client: &reqwest::Client, base: &str, n: usize) -> anyhow::Result<Vec<String>> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..SEED_CLIENTS {
        let (client, base, next) = (client.clone(), base.to_string(), next.clone());
        clients.spawn(async move {
            let mut ids = Vec::new();
            loop {
                let first = next.fetch_add(SEED_BATCH, Ordering::Relaxed);
                if first >= n {
                    return anyhow::Ok(ids);
                }
                let events: Vec<Value> = (first..(first + SEED_BATCH).min(n))
                    .map(|i| serde_json::from_str(&super::event("backlog", i)))
                    .collect::<Result<_, _>>()?;
                let response = client
                    .post(format!("{base}/receive"))
                    .header("content-type", "application/cloudevents-batch+json")
                    .json(&events)
                    .send()
                    .await?;
                if response.status().as_u16() != 202 {
                    bail!("a seeding batch got {}", response.status());
                }
                let body: Value = response.json().await?;
                for task in body["tasks"].as_array().context("no tasks")? {
                    ids.push(task["id"].as_str().context("no id")?.to_string());
                }
                if first % 100_000 == 0 && first > 0 {
                    eprintln!("  {first} submitted");
                }
            }
        });
    }
    let mut ids = Vec::with_capacity(n);
    while let Some(done) = clients.join_next().await {
        ids.extend(done??);
    }
    Ok(ids)
}

/// A closed loop of one client until `stop`: each request's latency (ms).
fn probe<F, Fut>(
    stop: Arc<AtomicBool>,
    request: F,
) -> tokio::task::JoinHandle<anyhow::Result<Vec<f64>>>
where
    F: Fn(usize) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    tokio::spawn(async move {
        let mut latencies = Vec::new();
        let mut i = 0;
        while !stop.load(Ordering::Relaxed) {
            let sent = Instant::now();
            request(i).await?;
            latencies.push(ms(sent.elapsed()));
            i += 1;
            tokio::time::sleep(PROBE_PAUSE).await;
        }
        Ok(latencies)
    })
}

/// The backlog row on one backend with `n` tasks pending.
pub async fn run(args: &Args, backend: &str, n: usize, bin_dir: &Path) -> anyhow::Result<Value> {
    let database = super::database(args, backend)?;
    let deployment = super::bench_deployment(args, database, "backlog", bin_dir);
    let api = deployment.api().await;
    let base = api.base.clone();
    let db = Db::connect(&deployment.database_url, 2)?;
    let client = reqwest::Client::new();

    eprintln!("backlog ({backend}): submitting {n} tasks, no worker running");
    let seeding = Instant::now();
    let anchor = submit(&client, &base, super::event("backlog-anchor", 0)).await?;
    let mut ids = seed(&client, &base, n).await?;
    ids.push(anchor);
    // Every message confirmed, as the api leaves a task it published; if
    // the api has not got there in 10 minutes, the workers start anyway
    // and the row says how many were still unpublished.
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut unpublished = deployment.task_rows(UNPUBLISHED);
    while unpublished > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        unpublished = deployment.task_rows(UNPUBLISHED);
    }
    let seed_s = seeding.elapsed().as_secs_f64();
    eprintln!(
        "backlog ({backend}): {n} pending in {seed_s:.1}s, {unpublished} not yet published; workers start"
    );

    let relay_before = scrape(&client, &base).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let ids = Arc::new(ids);
    let status_probe = {
        let (client, base, ids) = (client.clone(), base.clone(), ids.clone());
        probe(stop.clone(), move |i| {
            let url = format!("{base}/status/{}", ids[i.wrapping_mul(7919) % ids.len()]);
            let client = client.clone();
            async move {
                let r = client.get(url).send().await?;
                if r.status() != reqwest::StatusCode::OK {
                    bail!("GET /status answered {}", r.status());
                }
                r.bytes().await?;
                Ok(())
            }
        })
    };
    let receive_probe = {
        let (client, base) = (client.clone(), base.clone());
        probe(stop.clone(), move |i| {
            let (client, base) = (client.clone(), base.clone());
            async move {
                submit(&client, &base, super::event("backlog-probe", i)).await?;
                Ok(())
            }
        })
    };

    let started = Instant::now();
    let api_cpu = cost::cpu_seconds(&api.proc.pid().to_string());
    let workers: Vec<_> = (0..args.workers)
        .map(|i| deployment.worker(&format!("worker-{i}")))
        .collect();
    let poll = if n >= 100_000 {
        Duration::from_secs(1)
    } else {
        Duration::from_millis(100)
    };
    let drained_in = if n == 0 {
        tokio::time::sleep(Duration::from_secs(if args.quick { 2 } else { 5 })).await;
        None
    } else {
        let deadline = started + Duration::from_secs(3600);
        loop {
            let done = db
                .run_blocking(|db| db.count_with_status(TaskStatus::Succeeded))
                .await?;
            // The backlog and the anchor; the probes' tasks come on top.
            if done > n as i64 {
                break Some(started.elapsed());
            }
            if Instant::now() > deadline {
                bail!("only {done} of {n} tasks succeeded in an hour");
            }
            tokio::time::sleep(poll).await;
        }
    };
    let span = started.elapsed();
    // CPU over the drain (the probes' few requests included): robust
    // where the wall clock is not, on a shared machine.
    let spent = |before: Option<f64>, pid: i32| {
        Some(cost::cpu_seconds(&pid.to_string())? - before.unwrap_or(0.0))
    };
    let cpu = json!({
        "api_s": spent(api_cpu, api.proc.pid()),
        "workers_s": workers.iter().map(|w| spent(Some(0.0), w.pid())).sum::<Option<f64>>(),
    });
    stop.store(true, Ordering::Relaxed);
    let relay_after = scrape(&client, &base).await?;
    let status_ms = status_probe.await??;
    let receive_ms = receive_probe.await??;
    let result = json!({
        "backend": backend,
        "pending": n,
        "workers": args.workers,
        "seed_s": seed_s,
        "unpublished_at_start": unpublished,
        "drain_s": drained_in.map(|d| d.as_secs_f64()),
        "drain_per_s": drained_in.map(|d| n as f64 / d.as_secs_f64()),
        "measured_s": span.as_secs_f64(),
        "cpu": cpu,
        "cpu_us_per_task": if n > 0 {
            json!({
                "api": cpu["api_s"].as_f64().map(|s| s * 1e6 / n as f64),
                "workers": cpu["workers_s"].as_f64().map(|s| s * 1e6 / n as f64),
            })
        } else {
            Value::Null
        },
        "load_average": super::load_average(),
        "relay": relay_between(&relay_before, &relay_after),
        "status_latency": summary(status_ms),
        "receive_latency": summary(receive_ms),
        "api_peak_rss_mib": api.proc.peak_rss_mib(),
    });
    drop(workers);
    drop(api);
    // A long run's rows as they come, in case a later one fails.
    eprintln!("backlog ({backend}, {n}): {result}");
    Ok(result)
}

/// Prints the backlog rows.
pub fn print(results: &Value) {
    println!("\n== backlog: N tasks pending (no worker), then the workers drain it ==");
    println!(
        "{:<9} {:>9} {:>10} {:>9} | {:>27} | {:>17} | {:>17}",
        "backend",
        "pending",
        "drain/s",
        "seed s",
        "api relay pass ms (n)",
        "/status p50/p99",
        "/receive p50/p99",
    );
    for b in results.as_array().into_iter().flatten() {
        let relay = &b["relay"];
        println!(
            "{:<9} {:>9} {:>10} {:>9} | {:>27} | {:>17} | {:>17}",
            b["backend"].as_str().unwrap_or("?"),
            b["pending"].to_string(),
            fmt(&b["drain_per_s"]),
            fmt(&b["seed_s"]),
            format!(
                "mean {} p99 <={} ({})",
                fmt(&relay["mean_ms"]),
                fmt(&relay["p99_at_most_ms"]),
                relay["passes"]
            ),
            format!(
                "{} / {}",
                fmt(&b["status_latency"]["p50_ms"]),
                fmt(&b["status_latency"]["p99_ms"])
            ),
            format!(
                "{} / {}",
                fmt(&b["receive_latency"]["p50_ms"]),
                fmt(&b["receive_latency"]["p99_ms"])
            ),
        );
        if !b["cpu_us_per_task"].is_null() {
            println!(
                "          CPU per task over the drain: api {} us, workers {} us (load average {})",
                fmt(&b["cpu_us_per_task"]["api"]),
                fmt(&b["cpu_us_per_task"]["workers"]),
                b["load_average"].as_str().unwrap_or("?"),
            );
        }
        if b["unpublished_at_start"].as_u64().unwrap_or(0) > 0 {
            println!(
                "          {} tasks were still unpublished 10 minutes after the last submit",
                b["unpublished_at_start"]
            );
        }
        if relay["lost_republished"].as_f64().unwrap_or(0.0) > 0.0 {
            println!(
                "          the api's relay published {} tasks again as lost meanwhile",
                relay["lost_republished"]
            );
        }
    }
}
