//! What every Ferry process does around its work: connect to the database
//! (waiting for it if it is not up yet) and turn SIGTERM or Ctrl-C into a
//! [`CancellationToken`] that the caller owns and passes down.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::broker::Queue;
use crate::db::{Db, DbError, Planning};
use crate::retry::RetryPolicy;
use crate::Config;

/// How long a starting process waits for its database before giving up.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// Connects to the database and applies migrations, retrying while it is
/// unreachable (replicas often start before their database), for at most
/// `give_up_after`; PostgreSQL sessions plan as `planning` says.
pub async fn connect_db(
    config: &Config,
    give_up_after: Duration,
    planning: Planning,
) -> anyhow::Result<Db> {
    let deadline = tokio::time::Instant::now() + give_up_after;
    let mut backoff = RetryPolicy::RECONNECT.backoff();
    loop {
        let url = config.database_url.clone();
        let size = config.database_pool_size;
        let attempt = tokio::task::spawn_blocking(move || {
            let db = Db::connect_planned(&url, size, planning)?;
            db.migrate()?;
            Ok::<_, DbError>(db)
        })
        .await?;
        match attempt {
            Ok(db) => return Ok(db),
            Err(e) if e.is_unavailable() && tokio::time::Instant::now() < deadline => {
                let wait = backoff.next_wait();
                tracing::warn!(error = %e, retry_in = ?wait, "database not reachable yet");
                tokio::time::sleep(wait).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Declares the task queue at start: a queue of another type than the
/// configuration's `queue_type` stops the process with an error that says
/// what to do. A broker that does not answer yet is only logged: publishing
/// and consuming reconnect on their own.
pub async fn declare_queue(queue: &Queue) -> anyhow::Result<()> {
    match tokio::time::timeout(Duration::from_secs(10), queue.declare()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) if e.is_fatal() => Err(e.into()),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "broker not reachable yet; will retry when needed");
            Ok(())
        }
        Err(_) => {
            tracing::warn!("broker did not answer within 10s; will retry when needed");
            Ok(())
        }
    }
}

/// A token cancelled on SIGTERM or Ctrl-C. Call it once, from `main`, inside
/// the Tokio runtime.
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("can install a SIGTERM handler");
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupt received"),
        }
        trigger.cancel();
    });
    token
}
