//! Faults in the shared services, for the tests that inject them (they run
//! one at a time in nextest's `faults` profile): RabbitMQ's app stopped and
//! started, PostgreSQL's cluster restarted; each guard restores its service
//! on drop, even when the test panics.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::services::{POSTGRES, RABBITMQ};

/// Runs a command; panics with its output unless it succeeds.
pub fn run(program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

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

/// RabbitMQ's app stopped for as long as this lives; started again on drop,
/// even when the test panics.
#[derive(Debug)]
pub struct BrokerStopped;

// Stopping a shared service is an act, not a default value.
#[allow(clippy::new_without_default)]
impl BrokerStopped {
    /// Stops RabbitMQ's app and waits until its port is closed.
    pub fn new() -> Self {
        run("rabbitmqctl", &["stop_app"]);
        wait_port(RABBITMQ, false, Duration::from_secs(60));
        Self
    }
}

impl Drop for BrokerStopped {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl").arg("start_app").status();
        let _ = Command::new("rabbitmqctl").args(["await_startup"]).status();
        wait_port(RABBITMQ, true, Duration::from_secs(120));
    }
}

/// `pg_ctlcluster <version> main <action>` (start, stop, restart).
pub fn pg_cluster(action: &str) -> std::process::ExitStatus {
    let version = std::fs::read_dir("/etc/postgresql")
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .file_name();
    Command::new("pg_ctlcluster")
        .args([
            "--skip-systemctl-redirect",
            version.to_str().unwrap(),
            "main",
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
        wait_port(POSTGRES, true, Duration::from_secs(60));
    }
}
