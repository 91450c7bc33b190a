//! The relay: the database is the outbox. It publishes tasks whose message
//! the broker never confirmed (publish failed, process died after commit,
//! broker down) and retries that are due, and it takes back running tasks
//! whose worker stopped renewing its lease. Every API and worker process runs
//! one; their claims on rows exclude each other. It also deletes final
//! tasks older than `retention`, a bounded number per round.

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::broker::Queue;
use crate::db::Db;
use crate::metrics::RelayMetrics;

/// Tasks published per relay round.
const BATCH: i64 = 500;
/// How long a relay owns a publish before another relay may take it over.
const PUBLISH_LOCK: Duration = Duration::from_secs(30);
/// Tasks deleted per retention statement.
const DELETE_BATCH: i64 = 1000;
/// Retention statements per round at most: a backlog is worked off over
/// rounds, so one round never holds the database for long.
const DELETE_BATCHES_PER_ROUND: usize = 5;

/// Deletes final tasks that finished more than `retention` ago, at most
/// [`DELETE_BATCHES_PER_ROUND`] batches of [`DELETE_BATCH`]; returns how
/// many were deleted.
pub async fn expire_finished(db: &Db, retention: Duration) -> anyhow::Result<usize> {
    let Ok(retention) = chrono::Duration::from_std(retention) else {
        return Ok(0); // Longer than any task has existed.
    };
    let Some(cutoff) = chrono::Utc::now().checked_sub_signed(retention) else {
        return Ok(0);
    };
    let mut deleted = 0;
    for _ in 0..DELETE_BATCHES_PER_ROUND {
        let n = db
            .run_blocking(move |db| db.delete_finished_before(cutoff, DELETE_BATCH))
            .await?;
        deleted += n;
        if (n as i64) < DELETE_BATCH {
            break;
        }
    }
    Ok(deleted)
}

/// One round: returns how many tasks were published.
pub async fn relay_once(db: &Db, queue: &Queue) -> anyhow::Result<usize> {
    relay_round(db, queue, &RelayMetrics::new()).await
}

/// [`relay_once`], counted in `metrics`.
async fn relay_round(db: &Db, queue: &Queue, metrics: &RelayMetrics) -> anyhow::Result<usize> {
    let expired = db.run_blocking(|db| db.expire_leases()).await?;
    metrics.lease_expiries.increment(expired as u64);
    if expired > 0 {
        tracing::warn!(
            tasks = expired,
            "took back tasks whose worker stopped renewing its lease"
        );
    }
    let mut published = 0;
    loop {
        let ids = db
            .run_blocking(|db| db.claim_unpublished(BATCH, PUBLISH_LOCK))
            .await?;
        if ids.is_empty() {
            return Ok(published);
        }
        match queue.publish(&ids).await {
            Ok(()) => {
                published += ids.len();
                metrics.published.increment(ids.len() as u64);
                let n = ids.len();
                db.run_blocking(move |db| db.mark_enqueued(&ids)).await?;
                if (n as i64) < BATCH {
                    return Ok(published);
                }
            }
            Err(e) => {
                db.run_blocking(move |db| db.release_publish(&ids)).await?;
                return Err(e.into());
            }
        }
    }
}

/// Starts this process's relay, rounds every `interval` until `shutdown` is
/// cancelled; await the handle after cancelling to let a round finish. The
/// one way both binaries start it. `retention`: how long final tasks are
/// kept (`None`: for ever).
pub fn spawn(
    db: Db,
    queue: Queue,
    interval: Duration,
    retention: Option<Duration>,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(run(db, queue, interval, retention, shutdown))
}

/// Runs relay rounds every `interval` until `shutdown` is cancelled.
pub async fn run(
    db: Db,
    queue: Queue,
    interval: Duration,
    retention: Option<Duration>,
    shutdown: CancellationToken,
) {
    let metrics = RelayMetrics::new();
    loop {
        if let Some(retention) = retention {
            match expire_finished(&db, retention).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    tasks = n,
                    retention = %humantime::format_duration(retention),
                    "deleted final tasks older than the retention"
                ),
                Err(e) => tracing::warn!(error = %e, "retention round failed; will retry"),
            }
        }
        match relay_round(&db, &queue, &metrics).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(tasks = n, "relay published tasks"),
            Err(e) => tracing::warn!(error = %e, "relay round failed; will retry"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}
