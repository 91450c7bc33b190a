//! `ferry-worker`: one worker replica. Run as many as the load needs.

use std::process::ExitCode;

use clap::Parser;
use ferry_core::broker::Queue;
use ferry_core::cli::CommonArgs;
use ferry_core::db::Planning;
use ferry_core::probe::Probe;
use ferry_core::{relay, runtime};
use ferry_worker::http;

/// Consumes Ferry's task queue and runs each task's handler.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    /// Serve GET /health, /ready and /metrics on this port (on `address`).
    #[arg(long)]
    http_port: Option<u16>,
}

/// mimalloc, not glibc's malloc: a request's many short-lived allocations
/// (hyper, Rocket, serde_json) cost less CPU (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let config = match args.common.load().and_then(|mut config| {
        if let Some(port) = args.http_port {
            config.http_port = Some(port);
            config.validate()?;
        }
        Ok(config)
    }) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("ferry-worker: bad configuration: {e}");
            return ExitCode::from(2);
        }
    };
    let scrubber = ferry_core::init_logging(&config);
    let format = config.log_format;
    match run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            ferry_core::logging::fatal("ferry-worker", format, &scrubber, &format!("{e:#}"));
            ExitCode::FAILURE
        }
    }
}

async fn run(config: ferry_core::Config) -> anyhow::Result<()> {
    // Before anything records: handles made earlier would record nothing.
    ferry_core::metrics::install();
    let shutdown = runtime::shutdown_on_signals();
    // Every statement a worker repeats finds its rows through an index:
    // one plan each, made once (`Planning::Generic`).
    let db = runtime::connect_db(&config, runtime::CONNECT_TIMEOUT, Planning::Generic).await?;
    let queue = Queue::from_config(&config);
    runtime::declare_queue(&queue).await?;
    // Once the database is connected: a probe before that would only wait.
    let http = http::bind(&config).await?.map(|listener| {
        let probe = Probe::new(&config, db.clone(), queue.clone());
        http::spawn(listener, probe, shutdown.clone())
    });
    let relay = relay::spawn(
        db.clone(),
        queue.clone(),
        relay::Settings::of(&config),
        shutdown.clone(),
    );
    let result = ferry_worker::run(config, db, queue, shutdown.clone()).await;
    shutdown.cancel();
    relay::join(relay).await?;
    if let Some(http) = http {
        http.await?;
    }
    result
}
