//! Faults in the shared services, for the tests that inject them (they run
//! one at a time in nextest's `faults` profile): RabbitMQ's app stopped and
//! started, PostgreSQL's cluster restarted; each guard restores its service
//! on drop, even when the test panics. The services are the machine's own
//! unless `FERRY_TEST_RABBITMQ_NODE` and `FERRY_TEST_POSTGRES_CLUSTER` (with
//! the ports, see [`crate::services`]) name a private pair: then a soak can
//! stop them for an hour while other runs use the machine's.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::services::{postgres_addr, rabbitmq_addr, POSTGRES_CLUSTER_ENV, RABBITMQ_NODE_ENV};

/// Waits until `addr` accepts connections (`up`) or refuses them.
pub fn wait_port(addr: &str, up: bool, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let addr = addr.parse().unwrap();
    while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok() != up {
        assert!(
            Instant::now() < deadline,
            "{addr} did not come {}",
            if up { "up" } else { "down" }
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `rabbitmqctl` for the tests' node: `-n <node>` when
/// `FERRY_TEST_RABBITMQ_NODE` names one.
pub fn rabbitmqctl(args: &[&str]) -> Command {
    let mut command = Command::new("rabbitmqctl");
    if let Ok(node) = std::env::var(RABBITMQ_NODE_ENV) {
        command.args(["-n", &node]);
    }
    command.args(args);
    command
}

/// Runs a command; panics with its output unless it succeeds.
pub fn run(mut command: Command) {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{command:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// RabbitMQ's app stopped for as long as this lives; started again on drop,
/// even when the test panics.
#[derive(Debug)]
pub struct BrokerStopped;

// Stopping a shared service is an act, not a default value.
#[allow(clippy::new_without_default)]
impl BrokerStopped {
    /// Stops RabbitMQ's app and waits until its port is closed.
    pub fn new() -> Self {
        run(rabbitmqctl(&["stop_app"]));
        wait_port(&rabbitmq_addr(), false, Duration::from_secs(60));
        Self
    }
}

impl Drop for BrokerStopped {
    fn drop(&mut self) {
        let _ = rabbitmqctl(&["start_app"]).status();
        let _ = rabbitmqctl(&["await_startup"]).status();
        wait_port(&rabbitmq_addr(), true, Duration::from_secs(120));
    }
}

/// `pg_ctlcluster <version> <cluster> <action>` (start, stop, restart): the
/// cluster `main`, or `FERRY_TEST_POSTGRES_CLUSTER`.
pub fn pg_cluster(action: &str) -> std::process::ExitStatus {
    let version = std::fs::read_dir("/etc/postgresql")
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .file_name();
    let cluster = std::env::var(POSTGRES_CLUSTER_ENV).unwrap_or_else(|_| "main".into());
    Command::new("pg_ctlcluster")
        .args([
            "--skip-systemctl-redirect",
            version.to_str().unwrap(),
            &cluster,
            action,
        ])
        .status()
        .unwrap()
}

/// Makes sure PostgreSQL is running again when the test ends.
#[derive(Debug)]
pub struct PostgresRestored;

impl Drop for PostgresRestored {
    fn drop(&mut self) {
        let _ = pg_cluster("start");
        wait_port(&postgres_addr(), true, Duration::from_secs(60));
    }
}
