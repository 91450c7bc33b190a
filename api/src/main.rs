//! `ferry-api`: the HTTP API, or with `--standalone` all of Ferry in one process.

use std::process::ExitCode;

use clap::Parser;
use ferry_core::cli::CommonArgs;

/// Receives events as tasks and reports their status.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    /// Run everything in this process: SQLite, an in-process queue and
    /// in-process workers. Nothing else is needed.
    #[cfg(feature = "standalone")]
    #[arg(long)]
    standalone: bool,
    /// Port to listen on.
    #[arg(long)]
    port: Option<u16>,
}

#[rocket::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let mut config = match args.common.load() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("ferry-api: bad configuration: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(port) = args.port {
        config.port = port;
    }
    let scrubber = ferry_core::init_logging(&config);
    let format = config.log_format;
    if config.routes.is_empty() {
        tracing::warn!("no [[routes]] configured: every event will be refused with 422");
    }
    #[cfg(feature = "standalone")]
    let standalone = args.standalone;
    #[cfg(not(feature = "standalone"))]
    let standalone = false;
    let shutdown = ferry_core::runtime::shutdown_on_signals();
    match ferry_api::serve(config, standalone, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            ferry_core::logging::fatal("ferry-api", format, &scrubber, &format!("{e:#}"));
            ExitCode::FAILURE
        }
    }
}
