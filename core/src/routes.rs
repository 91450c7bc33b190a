//! The routing table: which handler runs for an event type, how long an
//! attempt may take, and how often it is retried. The API stores a route's
//! `max_attempts` on each task; the worker runs the route's handler.

use std::collections::HashMap;
use std::time::Duration;

use serde::Deserialize;

use crate::config::ConfigError;
use crate::retry::RetryPolicy;

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

    /// Every route: the exact ones by type, then the fallback.
    pub fn iter(&self) -> impl Iterator<Item = &Route> {
        let mut exact: Vec<&Route> = self.exact.values().collect();
        exact.sort_by(|a, b| a.event_type.cmp(&b.event_type));
        exact.into_iter().chain(self.fallback.as_ref())
    }

    /// Whether nothing is routed at all.
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.fallback.is_none()
    }

    /// Checks the `[[routes]]` entries as written and builds the table.
    pub(crate) fn from_raw(routes: Vec<RawRoute>) -> Result<Self, ConfigError> {
        let routes = routes
            .into_iter()
            .enumerate()
            .map(|(i, r)| r.into_route(i))
            .collect::<Result<Vec<_>, _>>()?;
        Self::new(routes)
    }
}

/// A `[[routes]]` entry as written: which keys it needs depends on its handler.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRoute {
    #[serde(rename = "type")]
    event_type: String,
    handler: String,
    #[serde(default, with = "humantime_serde")]
    timeout: Option<Duration>,
    max_attempts: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    retry_backoff: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    duration: Option<Duration>,
    command: Option<Vec<String>>,
    url: Option<String>,
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
                duration: self.duration.ok_or_else(|| missing("duration"))?,
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
        let max_attempts = self
            .max_attempts
            .unwrap_or(RetryPolicy::ROUTE_DEFAULT.attempts);
        if max_attempts == 0 {
            return Err(ConfigError::new(key("max_attempts"), "must be at least 1"));
        }
        Ok(Route {
            event_type: self.event_type,
            handler,
            timeout: self.timeout.unwrap_or(Duration::from_secs(600)),
            retry: RetryPolicy {
                attempts: max_attempts,
                base: self
                    .retry_backoff
                    .unwrap_or(RetryPolicy::ROUTE_DEFAULT.base),
                ..RetryPolicy::ROUTE_DEFAULT
            },
        })
    }
}
