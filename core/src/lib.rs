//! Ferry's core, shared by the API and the workers.
//!
//! - [`config`]: `server.conf` and its environment overrides, merged and checked.
//! - [`routes`]: the routing table, event type → handler.
//! - [`tokens`]: the API's tokens (`[[tokens]]`), kept as SHA-256 hashes.
//! - [`cli`]: the command-line flags both binaries take.
//! - [`event`]: CloudEvents as `/receive` takes them.
//! - [`storable`]: what both databases can hold, checked before a transaction.
//! - [`task`]: task ids, states and the status report.
//! - [`db`]: the task table on SQLite or PostgreSQL; every transition is a
//!   compare-and-set.
//! - [`batch`]: group commit of concurrent database writes.
//! - [`broker`]: the RabbitMQ queue, or the in-process one for `--standalone`.
//! - [`control`]: cancels for running tasks, from the api to every worker
//!   (a RabbitMQ fanout exchange, or an in-process broadcast).
//! - [`hints`]: state changes, from whoever made them to every api process
//!   (a RabbitMQ topic exchange, or an in-process broadcast).
//! - [`retry`]: one retry policy for route retries and reconnect loops.
//! - [`relay`]: publishes what the broker never confirmed and takes back
//!   tasks whose worker died.
//! - [`runtime`]: what every process does at start and stop: connect to the
//!   database, turn signals into a shutdown token.

pub mod batch;
pub mod broker;
pub mod cli;
pub mod config;
pub mod control;
pub mod db;
pub mod event;
pub mod hints;
pub mod relay;
pub mod retry;
pub mod routes;
pub mod runtime;
pub mod storable;
pub mod task;
pub mod tokens;

pub use config::Config;
pub use db::Db;
pub use task::{TaskId, TaskStatus};

/// Sets up logging to stderr, filtered by `RUST_LOG` (default `info`), in
/// colour only when stderr is a terminal.
///
/// Rocket logs a request it cannot route or a client that hangs up mid-body
/// as an ERROR, and its launch as a WARN. Neither is the server's error, and
/// Ferry logs its own start and stop (and a launch failure is returned, not
/// only logged), so Rocket is quiet unless `RUST_LOG` names it.
pub fn init_logging() {
    use std::io::IsTerminal;
    let wanted = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
    let mut directives = wanted.clone();
    if !wanted.contains("rocket") {
        directives.push_str(",rocket=off");
    }
    if !wanted.contains("lapin") {
        directives.push_str(",lapin=warn");
    }
    let filter = tracing_subscriber::EnvFilter::try_new(&directives)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}
