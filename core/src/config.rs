//! `server.conf`: one TOML file, overridden by `FERRY_*` environment variables
//! and then by command-line flags ([`crate::cli`]). [`figment`] merges the
//! layers; the result is checked once, after merging, so a later layer can
//! replace a bad value of an earlier one. Every error names the key that is
//! wrong (or the environment variable, for one that does not parse).

use std::path::Path;
use std::time::Duration;

use figment::error::{Actual, Kind};
use figment::providers::{Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::logging::{redact_url, LogFormat};
use crate::routes::{HandlerSpec, RawRoute, Routes};
use crate::tokens::{RawToken, Tokens};

/// Default HTTP port, the one pacifica's receivers listen on.
pub const DEFAULT_PORT: u16 = 8069;
/// Default database: an SQLite file beside the process.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://ferry.db";
/// Default broker: a local RabbitMQ with the guest account.
pub const DEFAULT_BROKER_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// Default queue name.
pub const DEFAULT_QUEUE: &str = "ferry.tasks";
/// Default limit on a `/receive` body.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 1024 * 1024;
/// `/receive` requests of one api waiting for the database at once, at
/// most, by default: the ceiling of the limit in force, which
/// [`DEFAULT_RECEIVE_LATENCY_TARGET`] lowers while commits queue. Memory
/// does not grow with overload either way.
pub const DEFAULT_RECEIVE_LIMIT: usize = 128;
/// The mean time a `/receive` request may hold its place (admission to
/// commit) before the api admits fewer, by default. At 1 000/s a request
/// holds it a few milliseconds; at 5 000/s on SQLite, 128 of them held it
/// 130–210 ms at p99, queued on the writer lock.
pub const DEFAULT_RECEIVE_LATENCY_TARGET: Duration = Duration::from_millis(20);
/// Tasks one api publishes at once without their broker confirm, at most,
/// by default: at 16 000 messages/s about 60 ms of RabbitMQ's work, room
/// for its confirms to stream, and a few MiB of frames and pending
/// confirms however fast the inserts outrun the broker.
pub const DEFAULT_PUBLISH_WINDOW: usize = 1024;
/// The largest `publish_window` accepted.
pub const MAX_PUBLISH_WINDOW: usize = 1 << 20;
/// The largest `receive_limit` accepted.
pub const MAX_RECEIVE_LIMIT: usize = 1 << 20;
/// Client connections one api holds open at once, at most, by default:
/// room for a thousand waiters (long polls, event streams) or producers,
/// while the memory their buffers and requests take stays bounded (tens
/// of KiB each with a request in flight: about 50 MiB at the limit).
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// The largest `max_connections` accepted.
pub const MAX_MAX_CONNECTIONS: usize = 1 << 20;
/// Default retention of final tasks: 7 days.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 60 * 60);
/// Default age after which a confirmed, unclaimed task's message may be
/// taken for lost: 5 minutes, far beyond the seconds a message waits in a
/// queue that workers keep up with.
pub const DEFAULT_REPUBLISH_AFTER: Duration = Duration::from_secs(5 * 60);
/// Default delivery limit of a quorum queue: deliveries of one message
/// beyond the first before it is dead-lettered.
pub const DEFAULT_DELIVERY_LIMIT: u32 = 5;
/// Default task slots of one worker process (`concurrency`): enough that
/// short async handlers keep the claim and outcome group commits full,
/// whatever the core count. CPU-heavy `exec` commands are bounded apart,
/// by `exec_concurrency`.
pub const DEFAULT_CONCURRENCY: usize = 64;
/// Default longest age of the task counts `/metrics` shows.
pub const DEFAULT_METRICS_COUNTS_MAX_AGE: Duration = Duration::from_secs(10);
/// The file read when `--config` is not given, if it exists.
pub const DEFAULT_CONFIG_FILE: &str = "server.conf";

/// A configuration error: the key (or environment variable) and what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ConfigError {
    /// The key, as written in `server.conf`, or the environment variable.
    pub key: String,
    /// What is wrong with its value.
    pub message: String,
}

impl ConfigError {
    pub(crate) fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// Everything a Ferry process needs to know, passed explicitly (no globals).
#[derive(Debug, Clone)]
pub struct Config {
    /// `sqlite://PATH` or `postgres://…`.
    pub database_url: String,
    /// Connections in the database pool of one process.
    pub database_pool_size: u32,
    /// `amqp://…` URL of RabbitMQ.
    pub broker_url: String,
    /// Durable queue the tasks travel on.
    pub queue: String,
    /// The RabbitMQ type of that queue.
    pub queue_type: QueueType,
    /// Quorum queues only: redeliveries of one message before RabbitMQ
    /// dead-letters it into `<queue>.dead`.
    pub delivery_limit: u32,
    /// Address the API binds to.
    pub address: String,
    /// Port the API binds to.
    pub port: u16,
    /// A worker's own HTTP port (`/health`, `/ready`, `/metrics`), on
    /// `address`; `None`: no port.
    pub http_port: Option<u16>,
    /// Longest age of the task counts by status that `/metrics` shows
    /// (they are recounted at most this often).
    pub metrics_counts_max_age: Duration,
    /// Tasks one worker process runs at once (also its prefetch).
    pub concurrency: usize,
    /// Of those, `exec` commands running at once in one worker process;
    /// the other `exec` tasks are `running` and wait for a permit.
    pub exec_concurrency: usize,
    /// Largest `/receive` body accepted, in bytes.
    pub max_body_bytes: u64,
    /// `/receive` requests of one api that may wait for the database at
    /// once; past it `/receive` answers `503 overloaded` at once.
    pub receive_limit: usize,
    /// The time `/receive` requests may hold their place (admission to
    /// commit) on average before the api lowers the limit in force below
    /// `receive_limit`; zero keeps `receive_limit` fixed.
    pub receive_latency_target: Duration,
    /// Tasks one api has published and not yet had confirmed, at most;
    /// those stored past it wait in line (see `api/src/publisher.rs`).
    pub publish_window: usize,
    /// Tasks one message names, at most, when tasks are published
    /// together (1 to `broker::MESSAGE_TASKS`; see `broker::encode`).
    pub message_tasks: usize,
    /// Client connections one api holds open at once; past it new ones
    /// wait in the kernel's accept queue until one closes.
    pub max_connections: usize,
    /// How long a claimed task is held before another worker may take it over.
    pub lease: Duration,
    /// How often the relay looks for tasks the broker never received.
    pub relay_interval: Duration,
    /// How long after the broker confirmed a task's message the relay may
    /// take the message for lost, if no worker has claimed the task, and
    /// publish it again (within the bound of the queue's depth: see
    /// `crate::db::LostBound`).
    pub republish_after: Duration,
    /// How long a running task may take to finish after SIGTERM.
    pub drain_timeout: Duration,
    /// How long the API waits for a request's headers, and separately for
    /// its body, before it answers 408 and closes the connection.
    pub request_timeout: Duration,
    /// How long a final task (succeeded, failed, cancelled) is kept after
    /// it finished before the relay deletes it; `None` keeps every task.
    pub retention: Option<Duration>,
    /// How log lines are written: text or JSON lines.
    pub log_format: LogFormat,
    /// Event type → handler.
    pub routes: Routes,
    /// The API's tokens (`[[tokens]]`); none means the API is open.
    pub tokens: Tokens,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            database_url: DEFAULT_DATABASE_URL.into(),
            database_pool_size: 8,
            broker_url: DEFAULT_BROKER_URL.into(),
            queue: DEFAULT_QUEUE.into(),
            queue_type: QueueType::Classic,
            delivery_limit: DEFAULT_DELIVERY_LIMIT,
            address: "127.0.0.1".into(),
            port: DEFAULT_PORT,
            http_port: None,
            metrics_counts_max_age: DEFAULT_METRICS_COUNTS_MAX_AGE,
            concurrency: DEFAULT_CONCURRENCY,
            exec_concurrency: default_exec_concurrency(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            receive_limit: DEFAULT_RECEIVE_LIMIT,
            receive_latency_target: DEFAULT_RECEIVE_LATENCY_TARGET,
            publish_window: DEFAULT_PUBLISH_WINDOW,
            message_tasks: crate::broker::MESSAGE_TASKS,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            lease: Duration::from_secs(30),
            relay_interval: Duration::from_secs(2),
            republish_after: DEFAULT_REPUBLISH_AFTER,
            drain_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(30),
            retention: Some(DEFAULT_RETENTION),
            log_format: LogFormat::Text,
            routes: Routes::default(),
            tokens: Tokens::default(),
        }
    }
}

/// One layer of configuration as written: the file, the environment or the
/// flags. An absent key leaves the value of the layers below.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Layer {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) database_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) database_pool_size: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) broker_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) queue: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) queue_type: Option<QueueType>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) delivery_limit: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) http_port: Option<u16>,
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub(crate) metrics_counts_max_age: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) concurrency: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) exec_concurrency: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) max_body_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) receive_limit: Option<usize>,
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub(crate) receive_latency_target: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) publish_window: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) message_tasks: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) max_connections: Option<usize>,
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub(crate) lease: Option<Duration>,
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub(crate) relay_interval: Option<Duration>,
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub(crate) republish_after: Option<Duration>,
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub(crate) drain_timeout: Option<Duration>,
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub(crate) request_timeout: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) retention: Option<Retention>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) log_format: Option<LogFormat>,
    /// Only the file has routes.
    #[serde(default, skip_serializing)]
    pub(crate) routes: Vec<RawRoute>,
    /// Only the file has tokens.
    #[serde(default, skip_serializing)]
    pub(crate) tokens: Vec<RawToken>,
}

impl Layer {
    /// The `FERRY_*` variables read through `var`. A value that does not
    /// parse is an error naming the variable.
    fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        fn parse<T: std::str::FromStr>(name: &str, value: &str) -> Result<T, ConfigError>
        where
            T::Err: std::fmt::Display,
        {
            value
                .parse()
                .map_err(|e| ConfigError::new(name, format!("{value:?}: {e}")))
        }
        let duration = |name: &str| var(name).map(|v| parse_duration(name, &v)).transpose();
        Ok(Self {
            database_url: var("FERRY_DATABASE_URL"),
            broker_url: var("FERRY_BROKER_URL"),
            queue: var("FERRY_QUEUE"),
            queue_type: var("FERRY_QUEUE_TYPE")
                .map(|v| parse("FERRY_QUEUE_TYPE", &v))
                .transpose()?,
            delivery_limit: var("FERRY_DELIVERY_LIMIT")
                .map(|v| parse("FERRY_DELIVERY_LIMIT", &v))
                .transpose()?,
            address: var("FERRY_ADDRESS"),
            port: var("FERRY_PORT")
                .map(|v| parse("FERRY_PORT", &v))
                .transpose()?,
            http_port: var("FERRY_HTTP_PORT")
                .map(|v| parse("FERRY_HTTP_PORT", &v))
                .transpose()?,
            metrics_counts_max_age: duration("FERRY_METRICS_COUNTS_MAX_AGE")?,
            concurrency: var("FERRY_CONCURRENCY")
                .map(|v| parse("FERRY_CONCURRENCY", &v))
                .transpose()?,
            exec_concurrency: var("FERRY_EXEC_CONCURRENCY")
                .map(|v| parse("FERRY_EXEC_CONCURRENCY", &v))
                .transpose()?,
            database_pool_size: var("FERRY_DATABASE_POOL_SIZE")
                .map(|v| parse("FERRY_DATABASE_POOL_SIZE", &v))
                .transpose()?,
            max_body_bytes: var("FERRY_MAX_BODY_BYTES")
                .map(|v| parse("FERRY_MAX_BODY_BYTES", &v))
                .transpose()?,
            receive_limit: var("FERRY_RECEIVE_LIMIT")
                .map(|v| parse("FERRY_RECEIVE_LIMIT", &v))
                .transpose()?,
            receive_latency_target: duration("FERRY_RECEIVE_LATENCY_TARGET")?,
            publish_window: var("FERRY_PUBLISH_WINDOW")
                .map(|v| parse("FERRY_PUBLISH_WINDOW", &v))
                .transpose()?,
            message_tasks: var("FERRY_MESSAGE_TASKS")
                .map(|v| parse("FERRY_MESSAGE_TASKS", &v))
                .transpose()?,
            max_connections: var("FERRY_MAX_CONNECTIONS")
                .map(|v| parse("FERRY_MAX_CONNECTIONS", &v))
                .transpose()?,
            lease: duration("FERRY_LEASE")?,
            relay_interval: duration("FERRY_RELAY_INTERVAL")?,
            republish_after: duration("FERRY_REPUBLISH_AFTER")?,
            drain_timeout: duration("FERRY_DRAIN_TIMEOUT")?,
            request_timeout: duration("FERRY_REQUEST_TIMEOUT")?,
            retention: var("FERRY_RETENTION")
                .map(|v| {
                    let value = Retention::Text(v);
                    value.parse("FERRY_RETENTION").map(|_| value)
                })
                .transpose()?,
            log_format: var("FERRY_LOG_FORMAT")
                .map(|v| parse("FERRY_LOG_FORMAT", &v))
                .transpose()?,
            routes: Vec::new(),
            tokens: Vec::new(),
        })
    }

    /// Over the defaults, then checked.
    fn into_config(self) -> Result<Config, ConfigError> {
        let mut config = Config::default();
        macro_rules! set {
            ($($field:ident),*) => {$(if let Some(v) = self.$field { config.$field = v; })*};
        }
        set!(
            database_url,
            database_pool_size,
            broker_url,
            queue,
            queue_type,
            delivery_limit,
            address,
            port,
            concurrency,
            exec_concurrency,
            max_body_bytes,
            receive_limit,
            receive_latency_target,
            publish_window,
            message_tasks,
            max_connections,
            lease,
            relay_interval,
            republish_after,
            drain_timeout,
            request_timeout,
            metrics_counts_max_age,
            log_format
        );
        if let Some(port) = self.http_port {
            config.http_port = Some(port);
        }
        if let Some(retention) = self.retention {
            config.retention = retention.parse("retention")?;
        }
        config.routes = Routes::from_raw(self.routes)?;
        config.validate()?;
        Ok(config)
    }
}

/// The RabbitMQ queue type of the task queue (`queue_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    /// A classic queue: one node, the least overhead.
    #[default]
    Classic,
    /// A quorum queue: replicated across a cluster (Raft), with a delivery
    /// limit that dead-letters a message redelivered too often.
    Quorum,
}

impl QueueType {
    /// The name as written in `server.conf` and `x-queue-type`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Classic => "classic",
            Self::Quorum => "quorum",
        }
    }
}

impl std::str::FromStr for QueueType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "classic" => Ok(Self::Classic),
            "quorum" => Ok(Self::Quorum),
            _ => Err("expected \"classic\" or \"quorum\"".into()),
        }
    }
}

/// `retention` as written: a duration (`"7d"`, `"12h"`), `"off"`, or a
/// number of seconds (`0` is off).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub(crate) enum Retention {
    Seconds(u64),
    Text(String),
}

impl Retention {
    /// The retention it asks for; `None` keeps every task. Errors name `key`.
    fn parse(&self, key: &str) -> Result<Option<Duration>, ConfigError> {
        let duration = match self {
            Self::Seconds(secs) => Duration::from_secs(*secs),
            Self::Text(text) if text.trim().eq_ignore_ascii_case("off") => return Ok(None),
            Self::Text(text) if text.trim() == "0" => Duration::ZERO,
            Self::Text(text) => parse_duration(key, text).map_err(|e| {
                ConfigError::new(
                    key,
                    format!("{} (or \"off\" to keep every task)", e.message),
                )
            })?,
        };
        Ok((!duration.is_zero()).then_some(duration))
    }
}

/// The default `exec_concurrency`: the number of CPUs this process may
/// use (2 if that cannot be read), since an `exec` command is taken to be
/// CPU-bound.
pub fn default_exec_concurrency() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// Parses `"250ms"`, `"2s"`, `"10m"`, `"1h 30m"`.
pub fn parse_duration(key: &str, value: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(value)
        .map_err(|e| ConfigError::new(key, format!("{value:?} is not a duration ({e})")))
}

impl Config {
    /// Reads `path`, or without one `./server.conf` if it exists (a missing
    /// default file means defaults), then applies the `FERRY_*` environment.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let file = Self::read_file(path)?;
        Self::from_layers(&file, |name| std::env::var(name).ok(), Layer::default())
    }

    /// Parses the TOML text of a `server.conf`, alone.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        Self::from_layers(text, |_| None, Layer::default())
    }

    /// The text of the configuration file: `path`, which must exist, or the
    /// default file, which may not.
    pub(crate) fn read_file(path: Option<&Path>) -> Result<String, ConfigError> {
        let required = path.is_some();
        let path = path.unwrap_or(Path::new(DEFAULT_CONFIG_FILE));
        match std::fs::read_to_string(path) {
            Ok(text) => Ok(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => Ok(String::new()),
            Err(e) => Err(ConfigError::new(
                "--config",
                format!("cannot read {}: {e}", path.display()),
            )),
        }
    }

    /// Merges the file's text, the environment read through `env` and the
    /// flags, in that order, and checks the result.
    pub(crate) fn from_layers(
        file: &str,
        env: impl Fn(&str) -> Option<String>,
        flags: Layer,
    ) -> Result<Self, ConfigError> {
        // figment reports a TOML syntax error without its place: parse first,
        // to name the key from the span.
        if let Err(e) = file.parse::<toml::Table>() {
            return Err(toml_syntax_error(file, &e));
        }
        // FERRY_TOKENS, when set, replaces the file's [[tokens]].
        let env_tokens = env("FERRY_TOKENS")
            .map(|value| crate::tokens::raw_from_env("FERRY_TOKENS", &value))
            .transpose()?;
        let env = Layer::from_env(&env)?;
        let mut layer: Layer = Figment::new()
            .merge(Toml::string(file))
            .merge(Serialized::defaults(env))
            .merge(Serialized::defaults(flags))
            .extract()
            .map_err(figment_error)?;
        let tokens = match env_tokens {
            Some(raw) => Tokens::from_raw(raw, "FERRY_TOKENS")?,
            None => Tokens::from_raw(std::mem::take(&mut layer.tokens), "tokens")?,
        };
        let mut config = layer.into_config()?;
        config.tokens = tokens;
        Ok(config)
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(self.database_url.starts_with("sqlite://")
            || self.database_url.starts_with("postgres://")
            || self.database_url.starts_with("postgresql://"))
        {
            return Err(ConfigError::new(
                "database_url",
                format!(
                    "{:?} must start with sqlite:// or postgres://",
                    redact_url(&self.database_url)
                ),
            ));
        }
        if !(self.broker_url.starts_with("amqp://") || self.broker_url.starts_with("amqps://")) {
            return Err(ConfigError::new(
                "broker_url",
                format!("{:?} must start with amqp://", redact_url(&self.broker_url)),
            ));
        }
        if self.queue.is_empty() {
            return Err(ConfigError::new("queue", "must not be empty"));
        }
        if self.delivery_limit == 0 {
            return Err(ConfigError::new("delivery_limit", "must be at least 1"));
        }
        if self.concurrency == 0 || self.concurrency > u16::MAX as usize {
            return Err(ConfigError::new(
                "concurrency",
                "must be between 1 and 65535",
            ));
        }
        if self.exec_concurrency == 0 || self.exec_concurrency > u16::MAX as usize {
            return Err(ConfigError::new(
                "exec_concurrency",
                "must be between 1 and 65535",
            ));
        }
        if self.database_pool_size == 0 {
            return Err(ConfigError::new("database_pool_size", "must be at least 1"));
        }
        if self.max_body_bytes == 0 {
            return Err(ConfigError::new("max_body_bytes", "must be at least 1"));
        }
        if self.receive_limit == 0 || self.receive_limit > MAX_RECEIVE_LIMIT {
            return Err(ConfigError::new(
                "receive_limit",
                format!("must be between 1 and {MAX_RECEIVE_LIMIT}"),
            ));
        }
        if self.receive_latency_target > Duration::from_secs(60) {
            return Err(ConfigError::new(
                "receive_latency_target",
                "must be at most 60s (0 keeps receive_limit fixed)",
            ));
        }
        if self.publish_window == 0 || self.publish_window > MAX_PUBLISH_WINDOW {
            return Err(ConfigError::new(
                "publish_window",
                format!("must be between 1 and {MAX_PUBLISH_WINDOW}"),
            ));
        }
        if self.message_tasks == 0 || self.message_tasks > crate::broker::MESSAGE_TASKS {
            return Err(ConfigError::new(
                "message_tasks",
                format!("must be between 1 and {}", crate::broker::MESSAGE_TASKS),
            ));
        }
        if self.max_connections == 0 || self.max_connections > MAX_MAX_CONNECTIONS {
            return Err(ConfigError::new(
                "max_connections",
                format!("must be between 1 and {MAX_MAX_CONNECTIONS}"),
            ));
        }
        if self.relay_interval < Duration::from_millis(10) {
            return Err(ConfigError::new("relay_interval", "must be at least 10ms"));
        }
        if self.republish_after < Duration::from_secs(1) {
            return Err(ConfigError::new("republish_after", "must be at least 1s"));
        }
        if self.http_port == Some(0) {
            return Err(ConfigError::new("http_port", "must be between 1 and 65535"));
        }
        if self.lease < Duration::from_secs(1) {
            return Err(ConfigError::new("lease", "must be at least 1s"));
        }
        if self.request_timeout < Duration::from_millis(100) {
            return Err(ConfigError::new(
                "request_timeout",
                "must be at least 100ms",
            ));
        }
        Ok(())
    }
}

impl Config {
    /// The configuration as `server.conf` TOML, every key written out (the
    /// defaults too), with the passwords of `database_url`, `broker_url`
    /// and `http` route URLs masked as `***`. Tokens are only ever held as
    /// hashes, which are shown. The text parses back to this configuration,
    /// but for the masked passwords.
    pub fn to_masked_toml(&self) -> String {
        let duration = |d: Duration| humantime::format_duration(d).to_string();
        let effective = Effective {
            database_url: redact_url(&self.database_url),
            database_pool_size: self.database_pool_size,
            broker_url: redact_url(&self.broker_url),
            queue: &self.queue,
            queue_type: self.queue_type,
            delivery_limit: self.delivery_limit,
            address: &self.address,
            port: self.port,
            http_port: self.http_port,
            concurrency: self.concurrency as u64,
            exec_concurrency: self.exec_concurrency as u64,
            max_body_bytes: self.max_body_bytes,
            receive_limit: self.receive_limit as u64,
            receive_latency_target: duration(self.receive_latency_target),
            publish_window: self.publish_window as u64,
            message_tasks: self.message_tasks as u64,
            max_connections: self.max_connections as u64,
            lease: duration(self.lease),
            relay_interval: duration(self.relay_interval),
            republish_after: duration(self.republish_after),
            drain_timeout: duration(self.drain_timeout),
            request_timeout: duration(self.request_timeout),
            retention: self.retention.map_or_else(|| "off".into(), duration),
            log_format: self.log_format,
            metrics_counts_max_age: duration(self.metrics_counts_max_age),
            routes: self
                .routes
                .iter()
                .map(|route| {
                    let (mut command, mut url, mut sleep) = (None, None, None);
                    match &route.handler {
                        HandlerSpec::Exec { command: c } => command = Some(c.clone()),
                        HandlerSpec::Http { url: u } => url = Some(redact_url(u)),
                        HandlerSpec::Sleep { duration: d } => sleep = Some(duration(*d)),
                        HandlerSpec::Echo | HandlerSpec::Fail => {}
                    }
                    EffectiveRoute {
                        event_type: &route.event_type,
                        handler: route.handler.name(),
                        command,
                        url,
                        duration: sleep,
                        timeout: duration(route.timeout),
                        max_attempts: route.retry.attempts,
                        retry_backoff: duration(route.retry.base),
                    }
                })
                .collect(),
            tokens: self
                .tokens
                .iter()
                .map(|token| EffectiveToken {
                    name: &token.name,
                    hash: crate::tokens::format_hash(&token.hash),
                    scopes: token.scopes.iter().map(|s| s.as_str()).collect(),
                })
                .collect(),
        };
        toml::to_string(&effective).expect("the configuration serializes as TOML")
    }
}

/// [`Config::to_masked_toml`]'s document, in `server.conf`'s words.
#[derive(Serialize)]
struct Effective<'a> {
    database_url: String,
    database_pool_size: u32,
    broker_url: String,
    queue: &'a str,
    queue_type: QueueType,
    delivery_limit: u32,
    address: &'a str,
    port: u16,
    /// Off (left out) unless set, as in `server.conf`.
    #[serde(skip_serializing_if = "Option::is_none")]
    http_port: Option<u16>,
    concurrency: u64,
    exec_concurrency: u64,
    max_body_bytes: u64,
    receive_limit: u64,
    receive_latency_target: String,
    publish_window: u64,
    message_tasks: u64,
    max_connections: u64,
    lease: String,
    relay_interval: String,
    republish_after: String,
    drain_timeout: String,
    request_timeout: String,
    retention: String,
    log_format: LogFormat,
    metrics_counts_max_age: String,
    routes: Vec<EffectiveRoute<'a>>,
    tokens: Vec<EffectiveToken<'a>>,
}

#[derive(Serialize)]
struct EffectiveRoute<'a> {
    #[serde(rename = "type")]
    event_type: &'a str,
    handler: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    command: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    duration: Option<String>,
    timeout: String,
    max_attempts: u32,
    retry_backoff: String,
}

#[derive(Serialize)]
struct EffectiveToken<'a> {
    name: &'a str,
    hash: String,
    scopes: Vec<&'static str>,
}

/// A TOML syntax error, named by the key on the line where it is.
fn toml_syntax_error(text: &str, e: &toml::de::Error) -> ConfigError {
    let key = e
        .span()
        .and_then(|span| {
            let line = text[..span.start].rsplit('\n').next()?;
            Some(line.split_once('=')?.0.trim().to_string())
        })
        .unwrap_or_else(|| DEFAULT_CONFIG_FILE.into());
    ConfigError::new(key, e.message())
}

/// figment's error as Ferry says it: the key as written in `server.conf`
/// (`routes[0].timeout`), and serde's words for what is wrong.
fn figment_error(error: figment::Error) -> ConfigError {
    let error = error.into_iter().next().expect("an error has one cause");
    let mut key = String::new();
    let mut push = |segment: &str| {
        if segment.parse::<usize>().is_ok() {
            key.push_str(&format!("[{segment}]"));
        } else {
            if !key.is_empty() {
                key.push('.');
            }
            key.push_str(segment);
        }
    };
    error.path.iter().for_each(|segment| push(segment));
    // figment puts an unknown field in the path, and not a missing one.
    let named = |field: &str| error.path.last().is_some_and(|last| last == field);
    let message = match &error.kind {
        Kind::UnknownField(field, expected) => {
            if !named(field) {
                push(field);
            }
            let expected: Vec<String> = expected.iter().map(|e| format!("`{e}`")).collect();
            format!(
                "unknown field `{field}`, expected one of {}",
                expected.join(", ")
            )
        }
        Kind::MissingField(field) => {
            if !named(field) {
                push(field);
            }
            format!("missing field `{field}`")
        }
        // humantime-serde's refusal, in the words of `parse_duration`.
        Kind::InvalidValue(Actual::Str(value), expected) if expected == "a duration" => {
            match parse_duration("", value) {
                Err(e) => e.message,
                Ok(_) => error.kind.to_string(),
            }
        }
        Kind::InvalidType(actual, expected) => {
            format!("invalid type: {actual}, expected {expected}")
        }
        kind => kind.to_string(),
    };
    if key.is_empty() {
        key = DEFAULT_CONFIG_FILE.into();
    }
    ConfigError::new(key, message)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::routes::HandlerSpec;

    fn with_env(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env: HashMap<&str, &str> = env.iter().copied().collect();
        Config::from_layers(
            text,
            |k| env.get(k).map(|v| v.to_string()),
            Layer::default(),
        )
    }

    #[test]
    fn defaults_without_a_file() {
        let config = Config::from_toml("").unwrap();
        assert_eq!(config.port, 8069);
        assert_eq!(config.database_url, "sqlite://ferry.db");
        assert_eq!(config.queue, "ferry.tasks");
        assert_eq!(config.max_body_bytes, 1024 * 1024);
        assert_eq!(config.request_timeout, Duration::from_secs(30));
        assert!(config.routes.is_empty());
    }

    #[test]
    fn slots_do_not_follow_the_cores_and_exec_permits_do() {
        let config = Config::from_toml("").unwrap();
        assert_eq!(config.concurrency, DEFAULT_CONCURRENCY);
        assert_eq!(config.concurrency, 64);
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        assert_eq!(config.exec_concurrency, cpus);
        assert_eq!(default_exec_concurrency(), cpus);
        let config = with_env(
            "concurrency = 8\nexec_concurrency = 3",
            &[("FERRY_EXEC_CONCURRENCY", "5")],
        )
        .unwrap();
        assert_eq!((config.concurrency, config.exec_concurrency), (8, 5));
        assert_eq!(
            Config::from_toml("exec_concurrency = 0")
                .unwrap_err()
                .to_string(),
            "exec_concurrency: must be between 1 and 65535"
        );
        let err = with_env("", &[("FERRY_EXEC_CONCURRENCY", "0")]).unwrap_err();
        assert_eq!(err.key, "exec_concurrency");
        let err = with_env("", &[("FERRY_EXEC_CONCURRENCY", "cores")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "FERRY_EXEC_CONCURRENCY: \"cores\": invalid digit found in string"
        );
    }

    #[test]
    fn retention_is_a_duration_or_off() {
        let retention = |text: &str, env: &[(&str, &str)]| with_env(text, env).map(|c| c.retention);
        assert_eq!(retention("", &[]).unwrap(), Some(DEFAULT_RETENTION));
        assert_eq!(
            retention("retention = \"1h 30m\"", &[]).unwrap(),
            Some(Duration::from_secs(5400))
        );
        assert_eq!(
            retention("retention = 60", &[]).unwrap(),
            Some(Duration::from_secs(60))
        );
        assert_eq!(retention("retention = \"off\"", &[]).unwrap(), None);
        assert_eq!(retention("retention = \"0\"", &[]).unwrap(), None);
        assert_eq!(retention("retention = 0", &[]).unwrap(), None);
        assert_eq!(retention("retention = \"0s\"", &[]).unwrap(), None);
        assert_eq!(
            retention("retention = \"off\"", &[("FERRY_RETENTION", "1s")]).unwrap(),
            Some(Duration::from_secs(1))
        );
        assert_eq!(retention("", &[("FERRY_RETENTION", "off")]).unwrap(), None);
        let e = retention("retention = \"a week\"", &[]).unwrap_err();
        assert_eq!(e.key, "retention");
        assert!(e.message.contains("off"), "{}", e.message);
        let e = retention("", &[("FERRY_RETENTION", "soon")]).unwrap_err();
        assert_eq!(e.key, "FERRY_RETENTION");
        let e = retention("retention = -1", &[]).unwrap_err();
        assert_eq!(e.key, "retention");
        let e = retention("retention = true", &[]).unwrap_err();
        assert_eq!(e.key, "retention");
    }

    #[test]
    fn republish_after_is_a_duration_of_at_least_a_second() {
        let republish =
            |text: &str, env: &[(&str, &str)]| with_env(text, env).map(|c| c.republish_after);
        assert_eq!(republish("", &[]).unwrap(), DEFAULT_REPUBLISH_AFTER);
        assert_eq!(
            republish("republish_after = \"10m\"", &[]).unwrap(),
            Duration::from_secs(600)
        );
        assert_eq!(
            republish(
                "republish_after = \"10m\"",
                &[("FERRY_REPUBLISH_AFTER", "1s")]
            )
            .unwrap(),
            Duration::from_secs(1)
        );
        let e = republish("republish_after = \"500ms\"", &[]).unwrap_err();
        assert_eq!(e.key, "republish_after");
        let e = republish("", &[("FERRY_REPUBLISH_AFTER", "later")]).unwrap_err();
        assert_eq!(e.key, "FERRY_REPUBLISH_AFTER");
    }

    #[test]
    fn routes_and_fallback() {
        let config = Config::from_toml(
            r#"
            lease = "1m 30s"
            [[routes]]
            type = "a"
            handler = "sleep"
            duration = "2s"
            max_attempts = 5
            retry_backoff = "250ms"
            [[routes]]
            type = "*"
            handler = "echo"
            "#,
        )
        .unwrap();
        assert_eq!(config.lease, Duration::from_secs(90));
        let a = config.routes.get("a").unwrap();
        assert_eq!(
            a.handler,
            HandlerSpec::Sleep {
                duration: Duration::from_secs(2)
            }
        );
        assert_eq!(a.retry.attempts, 5);
        assert_eq!(a.retry.base, Duration::from_millis(250));
        assert_eq!(a.timeout, Duration::from_secs(600));
        assert_eq!(config.routes.get("b").unwrap().handler, HandlerSpec::Echo);
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            ("prot = 1", "prot"),
            ("port = \"x\"", "port"),
            ("port = [", "port"),
            ("port = 70000", "port"),
            ("lease = \"soon\"", "lease"),
            ("request_timeout = \"never\"", "request_timeout"),
            ("request_timeout = \"10ms\"", "request_timeout"),
            ("[[routes]]\ntype = \"a\"\nhandler = \"exec\"", "routes[0].command"),
            ("[[routes]]\ntype = \"a\"\nhandler = \"nope\"", "routes[0].handler"),
            ("[[routes]]\ntype = \"a\"", "routes[0].handler"),
            ("[[routes]]\ntype = \"a\"\nhandler = \"echo\"\nhandlr = 1", "routes[0].handlr"),
            (
                "[[routes]]\ntype = \"a\"\nhandler = \"sleep\"\nduration = \"x\"",
                "routes[0].duration",
            ),
            (
                "[[routes]]\ntype = \"a\"\nhandler = \"echo\"\n[[routes]]\ntype = \"b\"\nhandler = \"echo\"\ntimeout = \"abc\"",
                "routes[1].timeout",
            ),
            (
                "[[routes]]\ntype = \"a\"\nhandler = \"echo\"\n[[routes]]\ntype = \"a\"\nhandler = \"fail\"",
                "routes[1].type",
            ),
            ("database_url = \"mysql://x\"", "database_url"),
            ("concurrency = 0", "concurrency"),
            ("receive_limit = 0", "receive_limit"),
            ("receive_latency_target = \"2m\"", "receive_latency_target"),
            ("receive_latency_target = \"fast\"", "receive_latency_target"),
            ("max_connections = 0", "max_connections"),
            ("publish_window = 0", "publish_window"),
            ("publish_window = 2000000", "publish_window"),
            ("message_tasks = 0", "message_tasks"),
            ("message_tasks = 17", "message_tasks"),
            ("concurrency = 70000", "concurrency"),
            ("exec_concurrency = 0", "exec_concurrency"),
            ("exec_concurrency = 70000", "exec_concurrency"),
            ("exec_concurrency = -1", "exec_concurrency"),
            ("exec_concurrency = \"2\"", "exec_concurrency"),
        ];
        for (text, key) in cases {
            let err = Config::from_toml(text).unwrap_err();
            assert_eq!(err.key, key, "{text}: {err}");
        }
    }

    #[test]
    fn messages_say_what_is_wrong() {
        let message = |text: &str| Config::from_toml(text).unwrap_err().to_string();
        assert_eq!(
            message("[[routes]]\ntype = \"a\"\nhandler = \"echo\"\ntimeout = \"abc\""),
            "routes[0].timeout: \"abc\" is not a duration (expected number at 0)"
        );
        assert!(
            message("prot = 1")
                .starts_with("prot: unknown field `prot`, expected one of `database_url`, "),
            "{}",
            message("prot = 1")
        );
        assert_eq!(
            message("port = \"x\""),
            "port: invalid type: string \"x\", expected u16"
        );
    }

    #[test]
    fn environment_overrides_the_file() {
        let config = with_env(
            "port = 1000\nqueue = \"file\"",
            &[
                ("FERRY_PORT", "2000"),
                ("FERRY_QUEUE", "q"),
                ("FERRY_CONCURRENCY", "7"),
                ("FERRY_LEASE", "1m"),
            ],
        )
        .unwrap();
        assert_eq!(
            (
                config.port,
                config.queue.as_str(),
                config.concurrency,
                config.lease
            ),
            (2000, "q", 7, Duration::from_secs(60))
        );
        // A string variable stays a string, whatever it looks like.
        assert_eq!(
            with_env("", &[("FERRY_QUEUE", "123")]).unwrap().queue,
            "123"
        );
        let err = with_env("", &[("FERRY_PORT", "eighty")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "FERRY_PORT: \"eighty\": invalid digit found in string"
        );
        let err = with_env("", &[("FERRY_REQUEST_TIMEOUT", "soon")]).unwrap_err();
        assert_eq!(err.key, "FERRY_REQUEST_TIMEOUT");
        // Parsed, but out of range: named by its key, as a file value would be.
        let err = with_env("", &[("FERRY_REQUEST_TIMEOUT", "10ms")]).unwrap_err();
        assert_eq!(err.key, "request_timeout");
    }

    #[test]
    fn log_format_and_no_password_in_errors() {
        assert_eq!(Config::from_toml("").unwrap().log_format, LogFormat::Text);
        assert_eq!(
            with_env("log_format = \"text\"", &[("FERRY_LOG_FORMAT", "json")])
                .unwrap()
                .log_format,
            LogFormat::Json
        );
        assert_eq!(
            Config::from_toml("log_format = \"xml\"").unwrap_err().key,
            "log_format"
        );
        let e = Config::from_toml("database_url = \"mysql://u:hunter2@h/db\"").unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
        assert!(e.to_string().contains("mysql://u:***@h/db"), "{e}");
        let e = Config::from_toml("broker_url = \"http://u:hunter2@h\"").unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }

    #[test]
    fn queue_type_is_classic_or_quorum() {
        let config = Config::from_toml("").unwrap();
        assert_eq!(
            (config.queue_type, config.delivery_limit),
            (QueueType::Classic, DEFAULT_DELIVERY_LIMIT)
        );
        let config = Config::from_toml("queue_type = \"quorum\"\ndelivery_limit = 9").unwrap();
        assert_eq!(
            (config.queue_type, config.delivery_limit),
            (QueueType::Quorum, 9)
        );
        let config = with_env(
            "",
            &[
                ("FERRY_QUEUE_TYPE", "quorum"),
                ("FERRY_DELIVERY_LIMIT", "2"),
            ],
        )
        .unwrap();
        assert_eq!(
            (config.queue_type, config.delivery_limit),
            (QueueType::Quorum, 2)
        );
        assert_eq!(
            Config::from_toml("queue_type = \"stream\"")
                .unwrap_err()
                .key,
            "queue_type"
        );
        assert_eq!(
            Config::from_toml("delivery_limit = 0").unwrap_err().key,
            "delivery_limit"
        );
        let err = with_env("", &[("FERRY_QUEUE_TYPE", "Quorum")]).unwrap_err();
        assert_eq!(err.key, "FERRY_QUEUE_TYPE");
    }

    #[test]
    fn the_masked_toml_parses_back_without_its_secrets() {
        let text = r#"
            database_url = "postgres://ferry:hunter2@db.example.org/ferry"
            broker_url = "amqp://ferry:s3cr%40t@mq.example.org:5672/%2f"
            retention = "off"
            lease = "1m 30s"
            http_port = 8070
            metrics_counts_max_age = "30s"
            concurrency = 16
            exec_concurrency = 3
            [[routes]]
            type = "b"
            handler = "http"
            url = "https://hook:pa55word@hooks.example.org/run"
            [[routes]]
            type = "*"
            handler = "sleep"
            duration = "250ms"
            [[routes]]
            type = "a"
            handler = "exec"
            command = ["python3", "x.py"]
            max_attempts = 7
            retry_backoff = "2s"
            [[tokens]]
            name = "reader"
            hash = "sha256:06040bf144a7268669a1f156bbc943caab6ca5df56a315302a4ad042584a2c86"
            scopes = ["read", "admin"]
        "#;
        let config = Config::from_toml(text).unwrap();
        let masked = config.to_masked_toml();
        for secret in ["hunter2", "s3cr", "pa55word"] {
            assert!(!masked.contains(secret), "{masked}");
        }
        assert!(
            masked.contains("database_url = \"postgres://ferry:***@db.example.org/ferry\""),
            "{masked}"
        );
        let again = Config::from_toml(&masked).unwrap();
        assert_eq!(again.to_masked_toml(), masked);
        assert_eq!(again.retention, None);
        assert_eq!(again.lease, Duration::from_secs(90));
        assert_eq!(again.http_port, Some(8070));
        assert_eq!(again.metrics_counts_max_age, Duration::from_secs(30));
        assert_eq!((again.concurrency, again.exec_concurrency), (16, 3));
        assert!(masked.contains("\nexec_concurrency = 3\n"), "{masked}");
        assert_eq!(again.routes.get("a"), config.routes.get("a"));
        assert_eq!(again.routes.get("zzz"), config.routes.get("zzz"));
        assert_eq!(again.tokens.iter().count(), 1);
        let types: Vec<&str> = again.routes.iter().map(|r| r.event_type.as_str()).collect();
        assert_eq!(types, ["a", "b", "*"]);
    }

    #[test]
    fn http_port_is_off_unless_set() {
        let config = Config::from_toml("").unwrap();
        assert_eq!(config.http_port, None);
        assert_eq!(
            config.metrics_counts_max_age,
            DEFAULT_METRICS_COUNTS_MAX_AGE
        );
        assert_eq!(
            Config::from_toml("http_port = 9000").unwrap().http_port,
            Some(9000)
        );
        let config = with_env(
            "http_port = 9000",
            &[
                ("FERRY_HTTP_PORT", "9001"),
                ("FERRY_METRICS_COUNTS_MAX_AGE", "250ms"),
            ],
        )
        .unwrap();
        assert_eq!(config.http_port, Some(9001));
        assert_eq!(config.metrics_counts_max_age, Duration::from_millis(250));
        assert_eq!(
            Config::from_toml("http_port = 0").unwrap_err().key,
            "http_port"
        );
        assert_eq!(
            with_env("", &[("FERRY_HTTP_PORT", "x")]).unwrap_err().key,
            "FERRY_HTTP_PORT"
        );
    }

    #[test]
    fn the_environment_can_fix_a_bad_file_value() {
        let file = "database_url = \"mysql://x\"";
        assert_eq!(Config::from_toml(file).unwrap_err().key, "database_url");
        let config = with_env(file, &[("FERRY_DATABASE_URL", "sqlite://fixed.db")]).unwrap();
        assert_eq!(config.database_url, "sqlite://fixed.db");
    }

    #[test]
    fn flags_override_the_environment() {
        let env: HashMap<&str, &str> = [
            ("FERRY_QUEUE", "env"),
            ("FERRY_CONCURRENCY", "0"),
            ("FERRY_EXEC_CONCURRENCY", "0"),
        ]
        .into();
        let flags = Layer {
            queue: Some("flag".into()),
            concurrency: Some(3),
            exec_concurrency: Some(2),
            ..Layer::default()
        };
        let config = Config::from_layers(
            "queue = \"file\"",
            |k| env.get(k).map(|v| v.to_string()),
            flags,
        )
        .unwrap();
        assert_eq!(
            (
                config.queue.as_str(),
                config.concurrency,
                config.exec_concurrency
            ),
            ("flag", 3, 2)
        );
    }

    #[test]
    fn a_named_file_is_required_and_the_default_is_not() {
        let missing = Path::new("/nonexistent/ferry.conf");
        assert_eq!(
            Config::read_file(Some(missing)).unwrap_err().key,
            "--config"
        );
        let dir = std::env::temp_dir().join(format!("ferry-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("ferry.conf");
        std::fs::write(&file, "port = 1234").unwrap();
        assert_eq!(Config::read_file(Some(&file)).unwrap(), "port = 1234");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
