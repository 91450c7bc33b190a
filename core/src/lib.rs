//! Ferry's core, shared by the API and the workers.
//!
//! - [`config`]: `server.conf`, environment overrides, routes.
//! - [`event`]: CloudEvents as `/receive` takes them.
//! - [`task`]: task ids, states and the status report.
//! - [`db`]: the task table on SQLite or PostgreSQL; every transition is a
//!   compare-and-set.
//! - [`batch`]: group commit of concurrent database writes.
//! - [`broker`]: the RabbitMQ queue, or the in-process one for `--standalone`.
//! - [`relay`]: publishes what the broker never confirmed and takes back
//!   tasks whose worker died.

pub mod batch;
pub mod broker;
pub mod config;
pub mod db;
pub mod event;
pub mod relay;
pub mod task;

pub use config::Config;
pub use db::Db;
pub use task::{TaskId, TaskStatus};

/// Sets up logging to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rocket=warn,lapin=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
