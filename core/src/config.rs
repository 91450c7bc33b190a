//! `server.conf`: one TOML file, overridden by `FERRY_*` environment variables
//! and then by command-line flags. Every error names the key that is wrong.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::retry::RetryPolicy;

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
    fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
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
    /// Address the API binds to.
    pub address: String,
    /// Port the API binds to.
    pub port: u16,
    /// Tasks one worker process runs at once (also its prefetch).
    pub concurrency: usize,
    /// Largest `/receive` body accepted, in bytes.
    pub max_body_bytes: u64,
    /// How long a claimed task is held before another worker may take it over.
    pub lease: Duration,
    /// How often the relay looks for tasks the broker never received.
    pub relay_interval: Duration,
    /// How long a running task may take to finish after SIGTERM.
    pub drain_timeout: Duration,
    /// How long the API waits for a request's headers, and separately for
    /// its body, before it answers 408 and closes the connection.
    pub request_timeout: Duration,
    /// Event type → handler.
    pub routes: Routes,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            database_url: DEFAULT_DATABASE_URL.into(),
            database_pool_size: 8,
            broker_url: DEFAULT_BROKER_URL.into(),
            queue: DEFAULT_QUEUE.into(),
            address: "127.0.0.1".into(),
            port: DEFAULT_PORT,
            concurrency: std::thread::available_parallelism().map_or(2, |n| n.get()),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            lease: Duration::from_secs(30),
            relay_interval: Duration::from_secs(2),
            drain_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(30),
            routes: Routes::default(),
        }
    }
}

/// What a route runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandlerSpec {
    /// The result is the event's `data`.
    Echo,
    /// Waits, then succeeds.
    Sleep {
        /// How long to wait.
        duration: Duration,
    },
    /// Always fails, retryably.
    Fail,
    /// Runs a command with the event on stdin.
    Exec {
        /// Program and arguments.
        command: Vec<String>,
    },
    /// POSTs the event to a URL.
    Http {
        /// Where to POST.
        url: String,
    },
}

impl HandlerSpec {
    /// The handler's name as written in `server.conf`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Echo => "echo",
            Self::Sleep { .. } => "sleep",
            Self::Fail => "fail",
            Self::Exec { .. } => "exec",
            Self::Http { .. } => "http",
        }
    }
}

/// One `[[routes]]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// Exact event type, or `"*"` for the fallback.
    pub event_type: String,
    /// What runs.
    pub handler: HandlerSpec,
    /// Longest one attempt may run.
    pub timeout: Duration,
    /// Attempts before a task is `failed` for good (`max_attempts`) and the
    /// wait between them (`retry_backoff`, doubled for each later one, at
    /// most an hour, ±25%).
    pub retry: RetryPolicy,
}

/// The routing table.
#[derive(Debug, Clone, Default)]
pub struct Routes {
    exact: HashMap<String, Route>,
    fallback: Option<Route>,
}

impl Routes {
    /// Builds the table; a type routed twice is an error.
    pub fn new(routes: Vec<Route>) -> Result<Self, ConfigError> {
        let mut table = Self::default();
        for (i, route) in routes.into_iter().enumerate() {
            let duplicate = if route.event_type == "*" {
                table.fallback.replace(route).is_some()
            } else {
                let key = route.event_type.clone();
                table.exact.insert(key, route).is_some()
            };
            if duplicate {
                return Err(ConfigError::new(
                    format!("routes[{i}].type"),
                    "this type is already routed",
                ));
            }
        }
        Ok(table)
    }

    /// The route for an event type: the exact one, else the fallback.
    pub fn get(&self, event_type: &str) -> Option<&Route> {
        self.exact.get(event_type).or(self.fallback.as_ref())
    }

    /// Whether nothing is routed at all.
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.fallback.is_none()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    database_url: Option<String>,
    database_pool_size: Option<u32>,
    broker_url: Option<String>,
    queue: Option<String>,
    address: Option<String>,
    port: Option<u16>,
    concurrency: Option<usize>,
    max_body_bytes: Option<u64>,
    lease: Option<String>,
    relay_interval: Option<String>,
    drain_timeout: Option<String>,
    request_timeout: Option<String>,
    #[serde(default)]
    routes: Vec<RawRoute>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    #[serde(rename = "type")]
    event_type: String,
    handler: String,
    timeout: Option<String>,
    max_attempts: Option<u32>,
    retry_backoff: Option<String>,
    duration: Option<String>,
    command: Option<Vec<String>>,
    url: Option<String>,
}

/// Parses `"250ms"`, `"2s"`, `"10m"`, `"1h 30m"`.
pub fn parse_duration(key: &str, value: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(value)
        .map_err(|e| ConfigError::new(key, format!("{value:?} is not a duration ({e})")))
}

impl RawRoute {
    fn into_route(self, i: usize) -> Result<Route, ConfigError> {
        let key = |field: &str| format!("routes[{i}].{field}");
        let missing = |field: &str| {
            ConfigError::new(
                key(field),
                format!("required for handler {:?}", self.handler),
            )
        };
        if self.event_type.is_empty() {
            return Err(ConfigError::new(key("type"), "must not be empty"));
        }
        let handler = match self.handler.as_str() {
            "echo" => HandlerSpec::Echo,
            "fail" => HandlerSpec::Fail,
            "sleep" => HandlerSpec::Sleep {
                duration: parse_duration(
                    &key("duration"),
                    self.duration
                        .as_deref()
                        .ok_or_else(|| missing("duration"))?,
                )?,
            },
            "exec" => {
                let command = self.command.clone().ok_or_else(|| missing("command"))?;
                if command.is_empty() || command[0].is_empty() {
                    return Err(ConfigError::new(key("command"), "must name a program"));
                }
                HandlerSpec::Exec { command }
            }
            "http" => {
                let url = self.url.clone().ok_or_else(|| missing("url"))?;
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(ConfigError::new(key("url"), "must be an http(s) URL"));
                }
                HandlerSpec::Http { url }
            }
            other => {
                return Err(ConfigError::new(
                    key("handler"),
                    format!("unknown handler {other:?} (echo, sleep, fail, exec, http)"),
                ))
            }
        };
        let timeout = match &self.timeout {
            Some(t) => parse_duration(&key("timeout"), t)?,
            None => Duration::from_secs(600),
        };
        let max_attempts = self
            .max_attempts
            .unwrap_or(RetryPolicy::ROUTE_DEFAULT.attempts);
        if max_attempts == 0 {
            return Err(ConfigError::new(key("max_attempts"), "must be at least 1"));
        }
        let retry_backoff = match &self.retry_backoff {
            Some(t) => parse_duration(&key("retry_backoff"), t)?,
            None => RetryPolicy::ROUTE_DEFAULT.base,
        };
        Ok(Route {
            event_type: self.event_type,
            handler,
            timeout,
            retry: RetryPolicy {
                attempts: max_attempts,
                base: retry_backoff,
                ..RetryPolicy::ROUTE_DEFAULT
            },
        })
    }
}

impl Config {
    /// Reads `path` if it exists (a missing default file means defaults), then
    /// applies `FERRY_*` overrides from the process environment.
    pub fn load(path: &Path, required: bool) -> Result<Self, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => String::new(),
            Err(e) => {
                return Err(ConfigError::new(
                    "--config",
                    format!("cannot read {}: {e}", path.display()),
                ))
            }
        };
        let mut config = Self::from_toml(&text)?;
        config.apply_env(|name| std::env::var(name).ok())?;
        Ok(config)
    }

    /// Parses the TOML text of a `server.conf`.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let message = e.message().to_string();
            // serde names an unknown or missing key in its message; for a
            // value of the wrong type, the error's span points at the value.
            let key = key_from_toml_error(&message)
                .or_else(|| {
                    let line = text[..e.span()?.start].rsplit('\n').next()?;
                    Some(line.split_once('=')?.0.trim().to_string())
                })
                .unwrap_or_else(|| "server.conf".into());
            ConfigError::new(key, message)
        })?;
        let mut config = Self::default();
        macro_rules! set {
            ($($field:ident),*) => {$(if let Some(v) = raw.$field { config.$field = v; })*};
        }
        set!(
            database_url,
            database_pool_size,
            broker_url,
            queue,
            address,
            port,
            concurrency,
            max_body_bytes
        );
        if let Some(v) = &raw.lease {
            config.lease = parse_duration("lease", v)?;
        }
        if let Some(v) = &raw.relay_interval {
            config.relay_interval = parse_duration("relay_interval", v)?;
        }
        if let Some(v) = &raw.drain_timeout {
            config.drain_timeout = parse_duration("drain_timeout", v)?;
        }
        if let Some(v) = &raw.request_timeout {
            config.request_timeout = parse_duration("request_timeout", v)?;
        }
        let routes = raw
            .routes
            .into_iter()
            .enumerate()
            .map(|(i, r)| r.into_route(i))
            .collect::<Result<Vec<_>, _>>()?;
        config.routes = Routes::new(routes)?;
        config.validate()?;
        Ok(config)
    }

    /// Applies `FERRY_*` overrides read through `var`.
    pub fn apply_env(&mut self, var: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        fn parse<T: std::str::FromStr>(name: &str, value: &str) -> Result<T, ConfigError>
        where
            T::Err: std::fmt::Display,
        {
            value
                .parse()
                .map_err(|e| ConfigError::new(name, format!("{value:?}: {e}")))
        }
        if let Some(v) = var("FERRY_DATABASE_URL") {
            self.database_url = v;
        }
        if let Some(v) = var("FERRY_BROKER_URL") {
            self.broker_url = v;
        }
        if let Some(v) = var("FERRY_QUEUE") {
            self.queue = v;
        }
        if let Some(v) = var("FERRY_ADDRESS") {
            self.address = v;
        }
        if let Some(v) = var("FERRY_PORT") {
            self.port = parse("FERRY_PORT", &v)?;
        }
        if let Some(v) = var("FERRY_CONCURRENCY") {
            self.concurrency = parse("FERRY_CONCURRENCY", &v)?;
        }
        if let Some(v) = var("FERRY_DATABASE_POOL_SIZE") {
            self.database_pool_size = parse("FERRY_DATABASE_POOL_SIZE", &v)?;
        }
        if let Some(v) = var("FERRY_MAX_BODY_BYTES") {
            self.max_body_bytes = parse("FERRY_MAX_BODY_BYTES", &v)?;
        }
        if let Some(v) = var("FERRY_LEASE") {
            self.lease = parse_duration("FERRY_LEASE", &v)?;
        }
        if let Some(v) = var("FERRY_RELAY_INTERVAL") {
            self.relay_interval = parse_duration("FERRY_RELAY_INTERVAL", &v)?;
        }
        if let Some(v) = var("FERRY_DRAIN_TIMEOUT") {
            self.drain_timeout = parse_duration("FERRY_DRAIN_TIMEOUT", &v)?;
        }
        if let Some(v) = var("FERRY_REQUEST_TIMEOUT") {
            self.request_timeout = parse_duration("FERRY_REQUEST_TIMEOUT", &v)?;
        }
        self.validate()
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
                    self.database_url
                ),
            ));
        }
        if !(self.broker_url.starts_with("amqp://") || self.broker_url.starts_with("amqps://")) {
            return Err(ConfigError::new(
                "broker_url",
                format!("{:?} must start with amqp://", self.broker_url),
            ));
        }
        if self.queue.is_empty() {
            return Err(ConfigError::new("queue", "must not be empty"));
        }
        if self.concurrency == 0 || self.concurrency > u16::MAX as usize {
            return Err(ConfigError::new(
                "concurrency",
                "must be between 1 and 65535",
            ));
        }
        if self.database_pool_size == 0 {
            return Err(ConfigError::new("database_pool_size", "must be at least 1"));
        }
        if self.max_body_bytes == 0 {
            return Err(ConfigError::new("max_body_bytes", "must be at least 1"));
        }
        if self.relay_interval < Duration::from_millis(10) {
            return Err(ConfigError::new("relay_interval", "must be at least 10ms"));
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

fn key_from_toml_error(message: &str) -> Option<String> {
    // "unknown field `prot`, expected one of …" / "missing field `handler`"
    if !(message.starts_with("unknown field") || message.starts_with("missing field")) {
        return None;
    }
    let start = message.find('`')? + 1;
    let end = start + message[start..].find('`')?;
    Some(message[start..end].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn routes_and_fallback() {
        let config = Config::from_toml(
            r#"
            [[routes]]
            type = "a"
            handler = "sleep"
            duration = "2s"
            max_attempts = 5
            [[routes]]
            type = "*"
            handler = "echo"
            "#,
        )
        .unwrap();
        let a = config.routes.get("a").unwrap();
        assert_eq!(
            a.handler,
            HandlerSpec::Sleep {
                duration: Duration::from_secs(2)
            }
        );
        assert_eq!(a.retry.attempts, 5);
        assert_eq!(config.routes.get("b").unwrap().handler, HandlerSpec::Echo);
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            ("prot = 1", "prot"),
            ("port = \"x\"", "port"),
            ("port = [", "port"),
            ("lease = \"soon\"", "lease"),
            ("request_timeout = \"never\"", "request_timeout"),
            ("request_timeout = \"10ms\"", "request_timeout"),
            ("[[routes]]\ntype = \"a\"\nhandler = \"exec\"", "routes[0].command"),
            ("[[routes]]\ntype = \"a\"\nhandler = \"nope\"", "routes[0].handler"),
            (
                "[[routes]]\ntype = \"a\"\nhandler = \"sleep\"\nduration = \"x\"",
                "routes[0].duration",
            ),
            (
                "[[routes]]\ntype = \"a\"\nhandler = \"echo\"\n[[routes]]\ntype = \"a\"\nhandler = \"fail\"",
                "routes[1].type",
            ),
            ("database_url = \"mysql://x\"", "database_url"),
            ("concurrency = 0", "concurrency"),
        ];
        for (text, key) in cases {
            let err = Config::from_toml(text).unwrap_err();
            assert_eq!(err.key, key, "{text}: {err}");
        }
    }

    #[test]
    fn environment_overrides_the_file() {
        let mut config = Config::from_toml("port = 1000").unwrap();
        let env: HashMap<&str, &str> = [
            ("FERRY_PORT", "2000"),
            ("FERRY_QUEUE", "q"),
            ("FERRY_CONCURRENCY", "7"),
        ]
        .into();
        config
            .apply_env(|k| env.get(k).map(|v| v.to_string()))
            .unwrap();
        assert_eq!(
            (config.port, config.queue.as_str(), config.concurrency),
            (2000, "q", 7)
        );
        let err = config
            .apply_env(|k| (k == "FERRY_PORT").then(|| "eighty".to_string()))
            .unwrap_err();
        assert_eq!(err.key, "FERRY_PORT");
    }
}

/// Command-line flags shared by `ferry-api` and `ferry-worker`; each one
/// overrides `server.conf` and the environment.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// Path of the configuration file.
    #[arg(long, default_value = "server.conf")]
    pub config: std::path::PathBuf,
    /// Database URL (`sqlite://PATH` or `postgres://…`).
    #[arg(long)]
    pub database_url: Option<String>,
    /// RabbitMQ URL.
    #[arg(long)]
    pub broker_url: Option<String>,
    /// Queue name.
    #[arg(long)]
    pub queue: Option<String>,
    /// Tasks run at once by this process's workers.
    #[arg(long)]
    pub concurrency: Option<usize>,
}

impl CommonArgs {
    /// Loads the file (required only when `--config` was given explicitly),
    /// the environment, then these flags.
    pub fn load(&self) -> Result<Config, ConfigError> {
        let explicit = self.config != Path::new("server.conf");
        let mut config = Config::load(&self.config, explicit)?;
        if let Some(v) = &self.database_url {
            config.database_url = v.clone();
        }
        if let Some(v) = &self.broker_url {
            config.broker_url = v.clone();
        }
        if let Some(v) = &self.queue {
            config.queue = v.clone();
        }
        if let Some(v) = self.concurrency {
            config.concurrency = v;
        }
        config.validate()?;
        Ok(config)
    }
}
