//! `ferry-worker`: one worker replica. Run as many as the load needs.

use std::process::ExitCode;

use clap::Parser;
use ferry_core::broker::Queue;
use ferry_core::cli::CommonArgs;
use ferry_core::{relay, runtime};

/// Consumes Ferry's task queue and runs each task's handler.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let config = match args.common.load() {
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
    let shutdown = runtime::shutdown_on_signals();
    let db = runtime::connect_db(&config, runtime::CONNECT_TIMEOUT).await?;
    let queue = Queue::from_config(&config);
    runtime::declare_queue(&queue).await?;
    let relay = relay::spawn(
        db.clone(),
        queue.clone(),
        config.relay_interval,
        config.retention,
        shutdown.clone(),
    );
    ferry_worker::run(config, db, queue, shutdown.clone()).await?;
    shutdown.cancel();
    relay.await?;
    Ok(())
}
