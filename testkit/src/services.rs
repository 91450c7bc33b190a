//! The services the tests use (RabbitMQ and PostgreSQL on loopback), and the
//! one rule for when one is missing: under CI (`CI` set to a true value) the
//! test fails; elsewhere it is skipped, saying so.

use std::fmt::Display;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// The loopback RabbitMQ and PostgreSQL are on their standard ports unless
/// these say otherwise: a second pair of services (see
/// `testkit/private-services`) lets the fault tests and the soak stop and
/// restart services that no other run is using.
pub const RABBITMQ_PORT_ENV: &str = "FERRY_TEST_RABBITMQ_PORT";
/// See [`RABBITMQ_PORT_ENV`].
pub const POSTGRES_PORT_ENV: &str = "FERRY_TEST_POSTGRES_PORT";
/// The RabbitMQ node `rabbitmqctl -n` stops and starts (default: the
/// machine's own, `rabbitmqctl` with no `-n`).
pub const RABBITMQ_NODE_ENV: &str = "FERRY_TEST_RABBITMQ_NODE";
/// The PostgreSQL cluster `pg_ctlcluster` restarts (default `main`).
pub const POSTGRES_CLUSTER_ENV: &str = "FERRY_TEST_POSTGRES_CLUSTER";

fn port(var: &str, default: u16) -> u16 {
    match std::env::var(var) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{var}={v:?} is not a port")),
        Err(_) => default,
    }
}

/// RabbitMQ's AMQP address (`127.0.0.1:5672` unless [`RABBITMQ_PORT_ENV`]).
pub fn rabbitmq_addr() -> String {
    format!("127.0.0.1:{}", port(RABBITMQ_PORT_ENV, 5672))
}

/// PostgreSQL's address (`127.0.0.1:5432` unless [`POSTGRES_PORT_ENV`]).
pub fn postgres_addr() -> String {
    format!("127.0.0.1:{}", port(POSTGRES_PORT_ENV, 5432))
}

/// The PostgreSQL database in which tests create schemas of their own.
pub fn postgres_url() -> String {
    format!("postgres://postgres@{}/test", postgres_addr())
}

/// RabbitMQ, as Ferry's processes are given it.
pub fn broker_url() -> String {
    format!("amqp://guest:guest@{}/%2f", rabbitmq_addr())
}

/// Whether this is a CI run: `CI` is set to anything but empty, `0` or
/// `false`.
pub fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// The CI rule, for a service that is missing: panics under CI, otherwise
/// says the test is skipped and returns false.
pub fn missing(service: &str, why: impl Display) -> bool {
    assert!(
        !ci(),
        "{service} is not reachable ({why}), and CI is set: failing instead of skipping"
    );
    eprintln!("SKIPPED: {service} is not reachable ({why}); set CI=true to make this a failure");
    false
}

/// Whether the service at `addr` answers; if not, [`missing`] decides.
pub fn require(service: &str, addr: &str) -> bool {
    let socket: SocketAddr = addr.parse().expect("a socket address");
    match TcpStream::connect_timeout(&socket, Duration::from_secs(2)) {
        Ok(_) => true,
        Err(e) => missing(service, format_args!("{addr}: {e}")),
    }
}

/// [`require`] by name: `rabbitmq` or `postgres`.
pub fn require_named(service: &str) -> bool {
    let addr = match service {
        "rabbitmq" => rabbitmq_addr(),
        "postgres" => postgres_addr(),
        other => panic!("unknown service {other} (rabbitmq, postgres)"),
    };
    require(service, &addr)
}
