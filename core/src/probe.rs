//! What an orchestrator probes and Prometheus scrapes, shared by the api
//! and a worker's `http_port`: readiness (the database and the broker
//! answer) and the task counts behind the `ferry_tasks` gauges.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::broker::{BrokerError, Queue};
use crate::db::{Db, DbError};
use crate::logging::Scrubber;
use crate::Config;

/// Longest a readiness check waits for the database or the broker: a
/// probe answers within it, whatever hangs behind it.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// The code of a not-ready answer (`ErrorCode::NotReady` in the api).
pub const NOT_READY: &str = "not_ready";

/// What a readiness check found: `Ok`, or why each part is not ready (its
/// error, passwords masked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    /// The database answered a query.
    pub database: Result<(), String>,
    /// The broker answered (always, in standalone).
    pub broker: Result<(), String>,
}

impl Readiness {
    /// Both answered.
    pub fn is_ready(&self) -> bool {
        self.database.is_ok() && self.broker.is_ok()
    }

    /// The answer's body: `{"status": "ready", "database": "ok", "broker":
    /// "ok"}`, or Ferry's error shape naming what is not ready, with each
    /// part's state (`ok` or `unreachable: …`).
    pub fn body(&self) -> Value {
        let state = |part: &Result<(), String>| match part {
            Ok(()) => "ok".to_string(),
            Err(e) => format!("unreachable: {e}"),
        };
        if self.is_ready() {
            return json!({"status": "ready", "database": "ok", "broker": "ok"});
        }
        let message = [("database", &self.database), ("broker", &self.broker)]
            .into_iter()
            .filter_map(|(name, part)| {
                part.as_ref()
                    .err()
                    .map(|e| format!("{name} unreachable: {e}"))
            })
            .collect::<Vec<_>>()
            .join("; ");
        json!({
            "error": NOT_READY,
            "message": message,
            "database": state(&self.database),
            "broker": state(&self.broker),
        })
    }
}

/// Checks readiness of one process's database and broker.
#[derive(Debug, Clone)]
pub struct Probe {
    db: Db,
    queue: Queue,
    scrubber: Scrubber,
}

impl Probe {
    /// A probe of `db` and `queue`; errors are scrubbed of the passwords
    /// of `config`'s URLs.
    pub fn new(config: &Config, db: Db, queue: Queue) -> Self {
        Self {
            scrubber: Scrubber::for_urls([
                config.database_url.as_str(),
                config.broker_url.as_str(),
            ]),
            db,
            queue,
        }
    }

    /// Asks both at once, each within [`PROBE_TIMEOUT`].
    pub async fn ready(&self) -> Readiness {
        let database = async {
            let ping = self.db.run_blocking(|db| db.ping());
            match tokio::time::timeout(PROBE_TIMEOUT, ping).await {
                Ok(Ok(())) => Ok(()),
                // The cause, without "database unavailable: " before it.
                Ok(Err(DbError::Unavailable(e))) => Err(self.scrubber.scrub(&e)),
                Ok(Err(e)) => Err(self.scrubber.scrub(&e.to_string())),
                Err(_) => Err(format!("no answer within {PROBE_TIMEOUT:?}")),
            }
        };
        let broker = async {
            match tokio::time::timeout(PROBE_TIMEOUT, self.queue.ping()).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(BrokerError::Unavailable(e))) => Err(self.scrubber.scrub(&e.to_string())),
                Ok(Err(e)) => Err(self.scrubber.scrub(&e.to_string())),
                Err(_) => Err(format!("no answer within {PROBE_TIMEOUT:?}")),
            }
        };
        let (database, broker) = tokio::join!(database, broker);
        if let Err(e) = &database {
            tracing::debug!(error = %e, "not ready: the database");
        }
        if let Err(e) = &broker {
            tracing::debug!(error = %e, "not ready: the broker");
        }
        Readiness { database, broker }
    }
}

/// The `ferry_tasks` gauges (tasks by status) and the dead-letter queue's
/// depth, recomputed at most every `max_age` and at most one computation
/// at a time, on the blocking pool: a scrape starts a refresh when the
/// last one is older and serves what the last one found (only the first
/// scrape waits, briefly, so that the gauges exist). Prometheus scraping
/// every 15 s costs one count query per api process per scrape at most.
#[derive(Debug, Clone)]
pub struct CountGauges {
    db: Db,
    queue: Queue,
    max_age: Duration,
    last: Arc<tokio::sync::Mutex<Option<Instant>>>,
}

impl CountGauges {
    /// Gauges of `db`'s tasks and `queue`'s dead letters.
    pub fn new(db: Db, queue: Queue, max_age: Duration) -> Self {
        Self {
            db,
            queue,
            max_age,
            last: Default::default(),
        }
    }

    /// Refreshes the gauges if they are older than `max_age` and no
    /// refresh runs; waits for it (up to [`PROBE_TIMEOUT`]) only if they
    /// were never computed.
    pub async fn refresh(&self) {
        let Ok(mut last) = self.last.clone().try_lock_owned() else {
            return; // A refresh runs: serve what the last one found.
        };
        if last.is_some_and(|at| at.elapsed() < self.max_age) {
            return;
        }
        let first = last.is_none();
        let (db, queue) = (self.db.clone(), self.queue.clone());
        let refresh = tokio::spawn(async move {
            match db.run_blocking(|db| db.status_counts()).await {
                Ok(counts) => crate::metrics::set_task_counts(&counts),
                Err(e) => tracing::warn!(error = %e, "cannot count tasks for /metrics"),
            }
            match tokio::time::timeout(PROBE_TIMEOUT, queue.dead_letter_depth()).await {
                Ok(Ok(Some(depth))) => crate::metrics::set_dead_letter_depth(depth),
                Ok(Ok(None)) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "cannot count dead letters"),
                Err(_) => tracing::debug!("the broker did not say how many dead letters"),
            }
            // A failure waits `max_age` too: a scrape never hammers a
            // database that is down.
            *last = Some(Instant::now());
        });
        if first {
            let _ = tokio::time::timeout(PROBE_TIMEOUT, refresh).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_and_not_ready_bodies_name_what_does_not_answer() {
        let ready = Readiness {
            database: Ok(()),
            broker: Ok(()),
        };
        assert!(ready.is_ready());
        assert_eq!(
            ready.body(),
            json!({"status": "ready", "database": "ok", "broker": "ok"})
        );
        let no_broker = Readiness {
            database: Ok(()),
            broker: Err("connection refused".into()),
        };
        assert!(!no_broker.is_ready());
        assert_eq!(
            no_broker.body(),
            json!({
                "error": "not_ready",
                "message": "broker unreachable: connection refused",
                "database": "ok",
                "broker": "unreachable: connection refused",
            })
        );
        let neither = Readiness {
            database: Err("timed out".into()),
            broker: Err("refused".into()),
        };
        assert_eq!(
            neither.body()["message"],
            "database unreachable: timed out; broker unreachable: refused"
        );
    }
}
