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
//! - [`logging`]: text or JSON log lines on stderr, without secrets.
//! - [`metrics`]: the process's Prometheus registry and the handles Ferry
//!   records through.
//! - [`probe`]: readiness (database and broker) and the task-count gauges,
//!   for the api and a worker's HTTP port.
//! - [`retry`]: one retry policy for route retries and reconnect loops.
//! - [`relay`]: publishes what the broker never confirmed and takes back
//!   tasks whose worker died.
//! - [`runtime`]: what every process does at start and stop: connect to the
//!   database, turn signals into a shutdown token.

mod acks;
pub mod batch;
pub mod broker;
pub mod cli;
pub mod config;
pub mod control;
pub mod db;
pub mod event;
pub mod hints;
pub mod logging;
pub mod metrics;
pub mod probe;
pub mod relay;
pub mod retry;
pub mod rfc3339;
pub mod routes;
pub mod runtime;
pub mod storable;
pub mod task;
pub mod tokens;

pub use config::Config;
pub use db::Db;
pub use task::{TaskId, TaskStatus};

/// Sets up logging to stderr as `config.log_format` asks (see
/// [`logging::init`]), masking the passwords of its database and broker
/// URLs; returns the scrubber, for what a process prints itself.
pub fn init_logging(config: &Config) -> logging::Scrubber {
    let scrubber =
        logging::Scrubber::for_urls([config.database_url.as_str(), config.broker_url.as_str()]);
    logging::init(config.log_format, scrubber.clone());
    scrubber
}
