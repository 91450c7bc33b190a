//! The waiters row (`ferry-bench waiters`): one `ferry-api` process holds N
//! waiters at once (1 000; 200 with `--quick`), half long polls
//! (`GET /status/<id>?wait=60s`) and half SSE streams
//! (`GET /status/<id>/events`), each on a task of its own that no worker
//! runs yet. Then a worker process starts and runs them all, and each
//! waiter's wake is timed from its task's end (`finished_at`, or the
//! `succeeded` event's `at`: the worker's clock, on the same machine) to
//! the moment the client read the answer. Also: the statements the api's
//! shared reader ran per second while it held the waiters idle and while
//! the tasks finished (from its `hub tick` debug lines), and the api's
//! memory (VmRSS while holding, VmHWM at the end), which must stay under
//! 128 MiB.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use chrono::{DateTime, Utc};
use ferry_testkit::SseStream;
use serde_json::{json, Value};
use tokio::sync::Semaphore;

use super::{event, fmt, submit, summary, Args};

/// Waiters held: 1 000, or 200 with `--quick`.
pub fn default_waiters(quick: bool) -> usize {
    if quick {
        200
    } else {
        1000
    }
}

/// The memory budget of the api holding the waiters.
const RSS_BUDGET_MIB: f64 = 128.0;

/// How a waiter ended: its kind and how long after its task's end it woke.
struct Woken {
    long_poll: bool,
    after_ms: f64,
}

fn millis_since(then: DateTime<Utc>, now: DateTime<Utc>) -> f64 {
    (now - then).num_microseconds().unwrap_or(i64::MAX) as f64 / 1000.0
}

/// One long poll: its task's end to the answer.
async fn long_poll(client: reqwest::Client, base: String, task: String) -> anyhow::Result<Woken> {
    let response = client
        .get(format!("{base}/status/{task}?wait=60s"))
        .send()
        .await?;
    let woke = Utc::now();
    let body: Value = response.json().await?;
    if body["status"] != "succeeded" {
        bail!("a long poll answered {body}");
    }
    let finished: DateTime<Utc> = body["finished_at"]
        .as_str()
        .context("finished_at")?
        .parse()?;
    Ok(Woken {
        long_poll: true,
        after_ms: millis_since(finished, woke),
    })
}

/// One SSE stream: counted as ready at its first event; its task's end to
/// the `succeeded` event.
async fn stream(
    client: reqwest::Client,
    base: String,
    task: String,
    ready: Arc<AtomicUsize>,
) -> anyhow::Result<Woken> {
    let mut sse = SseStream::open(&client, &base, &task, None).await;
    let mut first = true;
    while let Some(event) = sse.next().await {
        let woke = Utc::now();
        if first {
            ready.fetch_add(1, Ordering::Relaxed);
            first = false;
        }
        if event.name == "succeeded" {
            let at: DateTime<Utc> = event.data["at"].as_str().context("at")?.parse()?;
            return Ok(Woken {
                long_poll: false,
                after_ms: millis_since(at, woke),
            });
        }
    }
    bail!("the stream of {task} ended before it succeeded")
}

/// The hub's `hub tick` lines: (when, tasks watched, statements so far).
fn hub_ticks(log: &str) -> Vec<(DateTime<Utc>, u64, u64)> {
    let field = |line: &str, name: &str| -> Option<u64> {
        let start = line.find(&format!("{name}="))? + name.len() + 1;
        let digits: String = line[start..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().ok()
    };
    log.lines()
        .filter(|line| line.contains("hub tick"))
        .filter_map(|line| {
            let at = line.split_whitespace().next()?.parse().ok()?;
            Some((at, field(line, "watched")?, field(line, "reads")?))
        })
        .collect()
}

/// Statements per second over the ticks around (`outward`: the last at
/// or before `from` to the first at or after `to`) or inside (the first at
/// or after `from` to the last at or before `to`) a span.
fn reads_per_s(
    ticks: &[(DateTime<Utc>, u64, u64)],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    outward: bool,
) -> Value {
    let (first, last) = if outward {
        (
            ticks.iter().rev().find(|t| t.0 <= from),
            ticks.iter().find(|t| t.0 >= to),
        )
    } else {
        (
            ticks.iter().find(|t| t.0 >= from),
            ticks.iter().rev().find(|t| t.0 <= to),
        )
    };
    match (first, last) {
        (Some(a), Some(b)) if b.0 > a.0 => {
            let seconds = (b.0 - a.0).num_milliseconds() as f64 / 1000.0;
            json!((b.2 - a.2) as f64 / seconds)
        }
        _ => Value::Null,
    }
}

/// The waiters row on one backend.
pub async fn run(args: &Args, backend: &str, n: usize, bin_dir: &Path) -> anyhow::Result<Value> {
    let database = super::database(args, backend)?;
    let mut deployment = ferry_testkit::Deployment::new(database, "waiters")
        .config(super::ECHO_ONLY)
        .broker(&args.broker_url)
        .bins(bin_dir)
        .env("RUST_LOG", "warn,ferry_api::hub=debug");
    if let Some(slots) = args.worker_concurrency {
        deployment = deployment.env("FERRY_CONCURRENCY", &slots.to_string());
    }
    let api = deployment.api().await;
    let base = api.base.clone();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(n + 64)
        .build()?;

    eprintln!("waiters ({backend}): {n} tasks, no worker yet");
    let permits = Arc::new(Semaphore::new(32));
    let mut submits = tokio::task::JoinSet::new();
    for i in 0..n {
        let (client, base, permits) = (client.clone(), base.clone(), permits.clone());
        submits.spawn(async move {
            let _permit = permits.acquire_owned().await?;
            submit(&client, &base, event("wait", i)).await
        });
    }
    let mut tasks = Vec::with_capacity(n);
    while let Some(id) = submits.join_next().await {
        tasks.push(id??);
    }

    let long_polls = n / 2;
    eprintln!(
        "waiters ({backend}): {long_polls} long polls and {} SSE streams",
        n - long_polls
    );
    let ready = Arc::new(AtomicUsize::new(0));
    let mut waiters = tokio::task::JoinSet::new();
    for (i, task) in tasks.into_iter().enumerate() {
        let (client, base) = (client.clone(), base.clone());
        if i < long_polls {
            waiters.spawn(long_poll(client, base, task));
        } else {
            waiters.spawn(stream(client, base, task, ready.clone()));
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while ready.load(Ordering::Relaxed) < n - long_polls {
        if tokio::time::Instant::now() > deadline {
            bail!("only {} streams opened", ready.load(Ordering::Relaxed));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Every stream has its first event; the long polls were sent before.
    // Held idle for a few fallback rounds.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_from = Utc::now();
    tokio::time::sleep(Duration::from_secs(if args.quick { 3 } else { 5 })).await;
    let idle_to = Utc::now();
    let holding_rss = api.proc.rss_mib();

    eprintln!("waiters ({backend}): a worker runs the tasks");
    let started = Utc::now();
    let worker = deployment.worker("worker-0");
    let mut woken = Vec::with_capacity(n);
    let all = tokio::time::timeout(Duration::from_secs(90), async {
        while let Some(done) = waiters.join_next().await {
            woken.push(done??);
        }
        anyhow::Ok(())
    });
    all.await
        .context("the waiters were not all woken in 90s")??;
    let ended = Utc::now();
    // One more tick after the last wake, to count the reads up to it.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let ticks = hub_ticks(&api.proc.log_text());
    let peak_rss = api.proc.peak_rss_mib();
    drop(worker);

    let of = |long_poll: bool| -> Vec<f64> {
        woken
            .iter()
            .filter(|w| w.long_poll == long_poll)
            .map(|w| w.after_ms)
            .collect()
    };
    let every: Vec<f64> = woken.iter().map(|w| w.after_ms).collect();
    let watched_peak = ticks.iter().map(|t| t.1).max();
    let result = json!({
        "backend": backend,
        "waiters": n,
        "long_polls": long_polls,
        "streams": n - long_polls,
        "wake_after_end": summary(every),
        "wake_after_end_long_poll": summary(of(true)),
        "wake_after_end_sse": summary(of(false)),
        "all_done_s": (ended - started).num_milliseconds() as f64 / 1000.0,
        "hub_watched_peak": watched_peak,
        "hub_reads_per_s_idle": reads_per_s(&ticks, idle_from, idle_to, false),
        "hub_reads_per_s_finishing": reads_per_s(&ticks, started, ended, true),
        "hub_reads_total": ticks.last().map(|t| t.2),
        "api_rss_mib_holding": holding_rss,
        "api_peak_rss_mib": peak_rss,
        "rss_budget_mib": RSS_BUDGET_MIB,
        "within_budget": peak_rss.is_some_and(|p| p < RSS_BUDGET_MIB),
    });
    drop(api);
    Ok(result)
}

/// Prints the waiters rows.
pub fn print(results: &Value) {
    for b in results.as_array().into_iter().flatten() {
        println!(
            "\n== {} waiters on one api ({} long polls + {} SSE streams), {} ==",
            b["waiters"],
            b["long_polls"],
            b["streams"],
            b["backend"].as_str().unwrap_or("?"),
        );
        for (name, key) in [
            ("wake after the task's end", "wake_after_end"),
            ("  long polls", "wake_after_end_long_poll"),
            ("  SSE streams", "wake_after_end_sse"),
        ] {
            println!(
                "{name:<28} p50 {:>6} ms  p99 {:>6} ms  max {:>6} ms",
                fmt(&b[key]["p50_ms"]),
                fmt(&b[key]["p99_ms"]),
                fmt(&b[key]["max_ms"]),
            );
        }
        println!(
            "shared reader: {} statements/s idle, {} while finishing; {} tasks watched at peak",
            fmt(&b["hub_reads_per_s_idle"]),
            fmt(&b["hub_reads_per_s_finishing"]),
            b["hub_watched_peak"],
        );
        println!(
            "api RSS: {} MiB holding, {} MiB peak (budget {} MiB: {})",
            fmt(&b["api_rss_mib_holding"]),
            fmt(&b["api_peak_rss_mib"]),
            b["rss_budget_mib"],
            if b["within_budget"] == true {
                "within"
            } else {
                "OVER"
            },
        );
    }
}
