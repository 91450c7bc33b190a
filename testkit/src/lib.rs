//! Ferry's test kit: what the tests and the bench need to run Ferry for
//! real, written once.
//!
//! - [`services`]: the loopback RabbitMQ and PostgreSQL, and the CI rule (a
//!   service that does not answer fails the test under CI, skips it
//!   elsewhere: [`require!`]);
//! - [`PgSchema`]: a PostgreSQL schema of the test's own, dropped at the end;
//! - [`Proc`] and [`bin`]: Ferry's binaries as processes (signals, logs,
//!   memory);
//! - [`Deployment`]: a database, a queue, a config and files, and the
//!   processes started on them; its queue and the queue's `.dead` twin are
//!   deleted when it is dropped; [`Stack`] is one started in a [`Layout`];
//! - [`Api`] and [`Reply`]: an HTTP client for a running `ferry-api`;
//!   [`SseStream`]: its event streams.

mod deployment;
pub mod faults;
mod http;
mod pg;
mod process;
pub mod services;
mod sse;

pub use deployment::{
    delete_queues, delete_task_queue, Database, Deployment, Layout, Stack, WriteHold,
};
pub use http::{Api, Reply};
pub use pg::PgSchema;
pub use process::{bin, bin_dir, run_bin, tcp_ports, Proc};
pub use services::{broker_url, postgres_addr, postgres_url, rabbitmq_addr, require};
pub use sse::{Sse, SseStream};

use std::path::{Path, PathBuf};

/// The repository root (handlers/, test_files/ and testkit/fixtures/ live
/// there; Ferry's processes run in it).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit/ is in the repository root")
        .to_path_buf()
}

/// Reads a file under test_files/.
pub fn test_file(path: &str) -> Vec<u8> {
    let path = repo_root().join("test_files").join(path);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// How `server.conf` holds a token: `sha256:` and the lower-case hex
/// SHA-256 of its text.
pub fn token_hash(token: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(token.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// A name no other test (or run) uses: `prefix` and a random suffix.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// `require!(rabbitmq, postgres)`: returns from the test (skips it) when a
/// service does not answer, or fails it under CI (see [`services::require`]).
#[macro_export]
macro_rules! require {
    ($($service:ident),+) => {
        $( if !$crate::services::require_named(stringify!($service)) { return; } )+
    };
}

/// One test per layout, each running `check(&Stack)` on a [`Stack`] of its
/// own (skipped, or failed under CI, when a service it needs is missing):
///
/// ```ignore
/// layout_tests!(numbers_keep_every_digit:
///     Sqlite => exact_numbers_round_trip_sqlite,
///     Postgres => exact_numbers_round_trip_postgres,
///     Standalone => exact_numbers_round_trip_standalone);
/// ```
#[macro_export]
macro_rules! layout_tests {
    ($check:path: $($layout:ident => $name:ident),+ $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                if let Some(stack) = $crate::Stack::start($crate::Layout::$layout).await {
                    $check(&stack).await;
                }
            }
        )+
    };
}

/// The value of the sample `name` in a `/metrics` text, if it has one that
/// parses; a labelled sample is named with its labels as the text writes
/// them (`ferry_batch_size_count{batcher="insert"}`).
pub fn metric_value(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        line.strip_prefix(name)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}
