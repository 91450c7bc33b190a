//! The services the tests use (RabbitMQ and PostgreSQL on loopback), and the
//! one rule for when one is missing: under CI (`CI` set to a true value) the
//! test fails; elsewhere it is skipped, saying so.

use std::fmt::Display;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// RabbitMQ's AMQP port.
pub const RABBITMQ: &str = "127.0.0.1:5672";
/// PostgreSQL's port.
pub const POSTGRES: &str = "127.0.0.1:5432";
/// The PostgreSQL database in which tests create schemas of their own.
pub const POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
/// RabbitMQ, as Ferry's processes are given it.
pub const BROKER_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

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
        "rabbitmq" => RABBITMQ,
        "postgres" => POSTGRES,
        other => panic!("unknown service {other} (rabbitmq, postgres)"),
    };
    require(service, addr)
}
