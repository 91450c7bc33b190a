//! The listing row (`ferry-bench list`): N tasks seeded straight into the
//! database (statuses, types and sources spread as a busy queue has them),
//! then the first page of `GET /tasks` for each filter and
//! `GET /tasks/counts`, from one client, p50/p99; and the count query
//! itself, uncached, which each api process runs at most once a second.
//! Before measuring, each filter's plan is checked: an index read in order,
//! no sort of the table.

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context as _};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use ferry_core::Db;
use serde_json::{json, Value};

use super::{closed_loop_gets, fmt, ms, summary, Args};

/// Tasks seeded per backend: 1 000 000, or 10 000 with `--quick`.
pub fn default_tasks(quick: bool) -> usize {
    if quick {
        10_000
    } else {
        1_000_000
    }
}

/// The status of seeded row `i`: 85% succeeded, 5% failed, 3% pending, 2%
/// running, 2% retrying, 3% cancelled, spread over time (not in runs).
const STATUS: &str = "CASE WHEN (i * 7919) % 100 < 85 THEN 'succeeded' \
    WHEN (i * 7919) % 100 < 90 THEN 'failed' WHEN (i * 7919) % 100 < 93 THEN 'pending' \
    WHEN (i * 7919) % 100 < 95 THEN 'running' WHEN (i * 7919) % 100 < 97 THEN 'retrying' \
    ELSE 'cancelled' END";

/// One row per task, i from 1 to n: 20 types, 100 sources, 1 000 tasks a
/// second, every one already published (the relay owes nothing) and running
/// ones leased far ahead (the lease sweep takes nothing back).
fn seed_sql(backend: &str, n: usize) -> String {
    let columns = "id, event_type, source, event_id, event, event_digest, status, attempts, \
                   max_attempts, created_at, updated_at, started_at, finished_at, enqueued_at, \
                   lease_expires_at";
    let values = |id: &str, event: &str, far: &str| {
        format!(
            "SELECT {id}, ty, src, 'e' || i, {event}, 'seed', st, \
               CASE WHEN st = 'pending' THEN 0 WHEN st = 'failed' THEN 3 ELSE 1 END, 3, ts, ts, \
               CASE WHEN st = 'pending' THEN NULL ELSE ts END, \
               CASE WHEN st IN ('succeeded', 'failed', 'cancelled') THEN ts END, ts, \
               CASE WHEN st = 'running' THEN {far} END"
        )
    };
    if backend == "postgres" {
        format!(
            "INSERT INTO tasks ({columns}) {} FROM (SELECT i, 'org.bench.t' || (i % 20) AS ty, \
               '/bench/s' || (i % 100) AS src, {STATUS} AS st, \
               timestamptz '2026-01-01 00:00:00+00' + i * interval '1 millisecond' AS ts \
             FROM generate_series(1::bigint, {n}::bigint) AS i) AS g",
            values(
                "gen_random_uuid()",
                "jsonb_build_object('specversion', '1.0', 'type', ty, 'source', src, 'id', 'e' || i, \
                 'data', jsonb_build_object('i', i))",
                "timestamptz '2100-01-01 00:00:00+00'",
            )
        )
    } else {
        // Times as diesel writes them (`%F %T%.f%:z`), six digits of
        // fraction, so text order is time order.
        format!(
            "WITH RECURSIVE seq(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM seq WHERE i < {n}) \
             INSERT INTO tasks ({columns}) {} FROM (SELECT i, 'org.bench.t' || (i % 20) AS ty, \
               '/bench/s' || (i % 100) AS src, {STATUS} AS st, \
               strftime('%Y-%m-%d %H:%M:%S', 1767225600 + i / 1000, 'unixepoch') \
                 || printf('.%06d+00:00', (i % 1000) * 1000 + 1) AS ts \
             FROM seq) AS g WHERE true",
            values(
                "lower(hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-' || \
                 hex(randomblob(2)) || '-' || hex(randomblob(2)) || '-' || hex(randomblob(6)))",
                "json_object('specversion', '1.0', 'type', ty, 'source', src, 'id', 'e' || i, \
                 'data', json_object('i', i))",
                "'2100-01-01 00:00:00+00:00'",
            )
        )
    }
}

/// The creation time of seeded row `i`, as a query parameter.
fn seeded_at(backend: &str, i: usize) -> String {
    let base = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z").unwrap();
    let at = if backend == "postgres" {
        base + chrono::Duration::milliseconds(i as i64)
    } else {
        base + chrono::Duration::seconds((i / 1000) as i64)
            + chrono::Duration::microseconds(((i % 1000) * 1000 + 1) as i64)
    };
    at.to_utc()
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// What each measured request asks for: a name, its query string, and the
/// same conditions as SQL (for the plan check).
fn filters(backend: &str, n: usize) -> Vec<(&'static str, String, String)> {
    let (from, to) = (
        seeded_at(backend, n * 45 / 100),
        seeded_at(backend, n * 55 / 100),
    );
    // The times as the api binds them on each backend.
    let (sql_from, sql_to) = if backend == "postgres" {
        (format!("'{from}'"), format!("'{to}'"))
    } else {
        let text = |t: &str| {
            let t = chrono::DateTime::parse_from_rfc3339(t).unwrap();
            format!("'{}'", t.format("%F %T%.f%:z"))
        };
        (text(&from), text(&to))
    };
    let any = |list: &str| {
        if backend == "postgres" {
            format!("status = ANY(ARRAY[{list}])")
        } else {
            format!("status IN ({list})")
        }
    };
    vec![
        ("no filter", String::new(), String::new()),
        (
            "status=failed (5%)",
            "status=failed".into(),
            format!("WHERE {}", any("'failed'")),
        ),
        (
            "status=pending (3%)",
            "status=pending".into(),
            format!("WHERE {}", any("'pending'")),
        ),
        (
            "status=failed,cancelled",
            "status=failed,cancelled".into(),
            format!("WHERE {}", any("'failed', 'cancelled'")),
        ),
        (
            "type (5%)",
            "type=org.bench.t7".into(),
            "WHERE event_type = 'org.bench.t7'".into(),
        ),
        (
            "source (1%)",
            "source=/bench/s42".into(),
            "WHERE source = '/bench/s42'".into(),
        ),
        (
            "created range (10%)",
            format!("created_after={from}&created_before={to}"),
            format!("WHERE created_at > {sql_from} AND created_at < {sql_to}"),
        ),
        (
            "status+type (0.25%)",
            "status=failed&type=org.bench.t7".into(),
            format!("WHERE {} AND event_type = 'org.bench.t7'", any("'failed'")),
        ),
    ]
}

#[derive(QueryableByName)]
struct PgPlanLine {
    #[diesel(sql_type = diesel::sql_types::Text)]
    #[diesel(column_name = "QUERY PLAN")]
    line: String,
}

#[derive(QueryableByName)]
struct SqlitePlanLine {
    #[diesel(sql_type = diesel::sql_types::Text)]
    detail: String,
}

/// The plan of a first page with `filter`, one line per step.
fn plan(deployment: &ferry_testkit::Deployment, filter: &str) -> anyhow::Result<Vec<String>> {
    let query = format!(
        "SELECT id, status, event_type, source, event_id, attempts, created_at, started_at, \
         finished_at FROM tasks {filter} ORDER BY created_at DESC, id DESC LIMIT 50"
    );
    Ok(match &deployment.pg {
        Some(schema) => diesel::sql_query(format!("EXPLAIN {query}"))
            .load::<PgPlanLine>(&mut schema.connect())?
            .into_iter()
            .map(|l| l.line.trim().to_string())
            .collect(),
        None => diesel::sql_query(format!("EXPLAIN QUERY PLAN {query}"))
            .load::<SqlitePlanLine>(&mut sqlite(deployment)?)?
            .into_iter()
            .map(|l| l.detail)
            .collect(),
    })
}

fn sqlite(deployment: &ferry_testkit::Deployment) -> anyhow::Result<SqliteConnection> {
    let path = deployment.sqlite_path().context("an SQLite deployment")?;
    Ok(SqliteConnection::establish(path)?)
}

/// Whether a plan reads an index in order rather than sorting.
fn reads_an_index_in_order(plan: &[String]) -> bool {
    let text = plan.join("\n");
    text.contains("Index") && !text.contains("Sort")
        || text.contains("USING INDEX") && !text.contains("TEMP B-TREE")
        || text.contains("USING COVERING INDEX") && !text.contains("TEMP B-TREE")
}

/// The listing row on one backend.
pub async fn run(args: &Args, backend: &str, n: usize, bin_dir: &Path) -> anyhow::Result<Value> {
    let database = super::database(args, backend)?;
    let deployment = ferry_testkit::Deployment::new(database, "list")
        .config(super::ECHO_ONLY)
        .broker(&args.broker_url)
        .bins(bin_dir)
        .env("RUST_LOG", "warn")
        // The seeded tasks finished up to weeks ago: the default retention
        // would have the relay delete them while they are counted.
        .env("FERRY_RETENTION", "off");
    let db = Db::connect(&deployment.database_url, 2)?;
    db.migrate()?;
    eprintln!("list ({backend}): seeding {n} tasks");
    let seeding = Instant::now();
    let sql = seed_sql(backend, n);
    match &deployment.pg {
        Some(schema) => {
            let mut conn = schema.connect();
            conn.batch_execute(&sql)?;
            conn.batch_execute("VACUUM ANALYZE tasks")?;
        }
        None => {
            let mut conn = sqlite(&deployment)?;
            conn.batch_execute(&format!("BEGIN; {sql}; COMMIT; ANALYZE;"))?;
        }
    }
    let seed_s = seeding.elapsed().as_secs_f64();
    eprintln!("list ({backend}): seeded in {seed_s:.1}s");

    let filters = filters(backend, n);
    let mut plans = Vec::new();
    for (name, _, sql) in &filters {
        let plan = plan(&deployment, sql)?;
        let ok = reads_an_index_in_order(&plan);
        if !ok {
            eprintln!(
                "list ({backend}): the plan for {name} sorts or reads no index:\n  {}",
                plan.join("\n  ")
            );
        }
        plans.push(json!({"filter": name, "index_in_order": ok, "plan": plan}));
    }

    let api = deployment.api().await;
    let client = reqwest::Client::new();
    let requests = if args.quick { 50 } else { 300 };
    let mut rows = Vec::new();
    let paths: Vec<(&str, String)> = filters
        .iter()
        .map(|(name, query, _)| {
            (
                *name,
                if query.is_empty() {
                    "/tasks".to_string()
                } else {
                    format!("/tasks?{query}")
                },
            )
        })
        .chain([("counts (shared, <= 1 s old)", "/tasks/counts".to_string())])
        .collect();
    for (name, path) in paths {
        let warm = path.clone();
        closed_loop_gets(
            &client,
            &api.base,
            move |_| warm.clone(),
            reqwest::StatusCode::OK,
            10,
            1,
        )
        .await?;
        let each = path.clone();
        let measured = closed_loop_gets(
            &client,
            &api.base,
            move |_| each.clone(),
            reqwest::StatusCode::OK,
            requests,
            1,
        )
        .await?;
        rows.push(json!({"filter": name, "path": path, "latency": measured["latency"]}));
    }
    // What one recomputation of the counts costs the database.
    let mut uncached = Vec::new();
    for _ in 0..if args.quick { 3 } else { 10 } {
        let start = Instant::now();
        let counts = db.run_blocking(|db| db.task_counts()).await?;
        uncached.push(ms(start.elapsed()));
        if counts.total != n as i64 {
            bail!("counts say {} tasks, {n} were seeded", counts.total);
        }
    }
    let result = json!({
        "backend": backend,
        "tasks": n,
        "seed_s": seed_s,
        "requests_each": requests,
        "first_page_limit": 50,
        "rows": rows,
        "counts_query_uncached": summary(uncached),
        "plans": plans,
        "api_peak_rss_mib": api.proc.peak_rss_mib(),
    });
    drop(api);
    Ok(result)
}

/// Prints the listing rows.
pub fn print(results: &Value) {
    for b in results.as_array().into_iter().flatten() {
        println!(
            "\n== GET /tasks first page (limit 50), {} with {} tasks, 1 client ==",
            b["backend"].as_str().unwrap_or("?"),
            b["tasks"]
        );
        for row in b["rows"].as_array().into_iter().flatten() {
            println!(
                "{:<28} p50 {:>6} ms  p99 {:>6} ms  max {:>6} ms",
                row["filter"].as_str().unwrap_or("?"),
                fmt(&row["latency"]["p50_ms"]),
                fmt(&row["latency"]["p99_ms"]),
                fmt(&row["latency"]["max_ms"]),
            );
        }
        println!(
            "{:<28} p50 {:>6} ms  max {:>6} ms  (run at most once a second per api process)",
            "counts query, uncached",
            fmt(&b["counts_query_uncached"]["p50_ms"]),
            fmt(&b["counts_query_uncached"]["max_ms"]),
        );
        let sorted: Vec<&str> = b["plans"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["index_in_order"] != true)
            .filter_map(|p| p["filter"].as_str())
            .collect();
        if sorted.is_empty() {
            println!("plans: every filter's first page reads an index in order (no sort)");
        } else {
            println!("plans that sort or read no index: {}", sorted.join(", "));
        }
    }
}
