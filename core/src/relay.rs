//! The relay: the database is the outbox. It publishes tasks whose message
//! the broker never confirmed (publish failed, process died after commit,
//! broker down) and retries that are due, and it takes back running tasks
//! whose worker stopped renewing its lease. Every API and worker process runs
//! one; their claims on rows exclude each other. It also deletes final
//! tasks older than `retention`, a bounded number per round.
//!
//! And it finds messages the broker confirmed and then lost (a purged or
//! deleted queue, a lost disk): a task still unclaimed `republish_after`
//! after its confirm is published again, within a bound the queue's depth
//! sets so that a queue that is merely long is not flooded
//! ([`crate::db::LostBound`]).

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::broker::Queue;
use crate::db::{Db, LostBound};
use crate::metrics::RelayMetrics;
use crate::task::TaskId;

/// Tasks published per relay batch (one claim, one publish, one mark).
const BATCH: i64 = 500;
/// Batches of owed tasks a round publishes at most: a backlog (a million
/// owed after a broker outage) is worked off over rounds, which follow one
/// another without the interval while there is more, so a round is short
/// and the shutdown token is looked at between rounds and between batches.
const BATCHES_PER_ROUND: usize = 20;
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

/// What a relay is told, from the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Time between rounds (`relay_interval`).
    pub interval: Duration,
    /// How long final tasks are kept (`retention`; `None`: for ever).
    pub retention: Option<Duration>,
    /// How long after its confirm an unclaimed task's message may be taken
    /// for lost (`republish_after`).
    pub republish_after: Duration,
}

impl Settings {
    /// The relay's keys of `config`.
    pub fn of(config: &crate::Config) -> Self {
        Self {
            interval: config.relay_interval,
            retention: config.retention,
            republish_after: config.republish_after,
        }
    }
}

/// One round, with the default `republish_after`: returns how many tasks
/// were published (at most [`BATCHES_PER_ROUND`] batches of owed tasks,
/// and those republished as lost).
pub async fn relay_once(db: &Db, queue: &Queue) -> anyhow::Result<usize> {
    let round = relay_round(
        db,
        queue,
        crate::config::DEFAULT_REPUBLISH_AFTER,
        &RelayMetrics::new(),
        &CancellationToken::new(),
    )
    .await?;
    Ok(round.published)
}

/// What a round did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Round {
    /// Tasks published.
    published: usize,
    /// Whether it stopped at its bound (or at shutdown) with owed tasks
    /// perhaps left: the next round starts without waiting.
    more: bool,
}

/// Publishes tasks locked for publishing (by [`Db::claim_unpublished`] or
/// [`Db::claim_lost`]) and records the confirm, or gives them back to
/// the next round if the broker did not confirm.
async fn publish_claimed(db: &Db, queue: &Queue, ids: Vec<TaskId>) -> anyhow::Result<()> {
    match queue.publish(&ids).await {
        Ok(()) => {
            db.run_blocking(move |db| db.mark_enqueued(&ids)).await?;
            Ok(())
        }
        Err(e) => {
            db.run_blocking(move |db| db.release_publish(&ids)).await?;
            Err(e.into())
        }
    }
}

/// Publishes again the tasks whose confirmed message the broker lost, as
/// [`LostBound`] allows; how many. Nothing is asked of the broker unless
/// some unclaimed task was confirmed more than `republish_after` ago (one
/// index probe), the common case when workers keep up.
async fn republish_lost(
    db: &Db,
    queue: &Queue,
    republish_after: Duration,
    metrics: &RelayMetrics,
) -> anyhow::Result<usize> {
    let Some(stale_before) = chrono::Duration::from_std(republish_after)
        .ok()
        .and_then(|age| chrono::Utc::now().checked_sub_signed(age))
    else {
        return Ok(0);
    };
    if !db
        .run_blocking(move |db| db.any_stale(stale_before))
        .await?
    {
        return Ok(0);
    }
    // Taken before the depth is asked for: a task marked enqueued by then
    // had its message confirmed before the broker counted.
    let measured_at = chrono::Utc::now();
    let depth = queue.depth().await?;
    let bound = LostBound {
        depth: queue.tasks_in(depth),
        batch: BATCH as u64,
    };
    let ids = db
        .run_blocking(move |db| db.claim_lost(bound, measured_at, stale_before, PUBLISH_LOCK))
        .await?;
    if ids.is_empty() {
        return Ok(0);
    }
    let n = ids.len();
    tracing::warn!(
        tasks = n,
        queue_depth = depth,
        republish_after = %humantime::format_duration(republish_after),
        "publishing again tasks whose confirmed message the broker no longer holds"
    );
    publish_claimed(db, queue, ids).await?;
    metrics.lost_republished.increment(n as u64);
    Ok(n)
}

/// [`relay_once`], counted in `metrics`; it publishes no further batch
/// once `shutdown` is cancelled.
async fn relay_round(
    db: &Db,
    queue: &Queue,
    republish_after: Duration,
    metrics: &RelayMetrics,
    shutdown: &CancellationToken,
) -> anyhow::Result<Round> {
    let expired = db.run_blocking(|db| db.expire_leases()).await?;
    metrics.lease_expiries.increment(expired as u64);
    if expired > 0 {
        tracing::warn!(
            tasks = expired,
            "took back tasks whose worker stopped renewing its lease"
        );
    }
    // Before the owed tasks: its depth count declares a deleted queue
    // again, which the publishes below need. Its failure (the depth could
    // not be had) does not hold them up.
    let lost = match republish_lost(db, queue, republish_after, metrics).await {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "looking for lost messages failed; will retry");
            0
        }
    };
    let mut round = publish_owed(db, queue, metrics, shutdown, BATCH, BATCHES_PER_ROUND).await?;
    round.published += lost;
    Ok(round)
}

/// Publishes owed tasks, `batch` at a time, at most `batches` batches and
/// none once `shutdown` is cancelled.
async fn publish_owed(
    db: &Db,
    queue: &Queue,
    metrics: &RelayMetrics,
    shutdown: &CancellationToken,
    batch: i64,
    batches: usize,
) -> anyhow::Result<Round> {
    let mut published = 0;
    for _ in 0..batches {
        if shutdown.is_cancelled() {
            return Ok(Round {
                published,
                more: true,
            });
        }
        let ids = db
            .run_blocking(move |db| db.claim_unpublished(batch, PUBLISH_LOCK))
            .await?;
        let n = ids.len();
        if n > 0 {
            publish_claimed(db, queue, ids).await?;
            published += n;
            metrics.published.increment(n as u64);
        }
        if (n as i64) < batch {
            return Ok(Round {
                published,
                more: false,
            });
        }
    }
    Ok(Round {
        published,
        more: true,
    })
}

/// Starts this process's relay, rounds every `settings.interval` until
/// `shutdown` is cancelled; await the handle after cancelling to let a
/// round finish. The one way both binaries start it.
pub fn spawn(
    db: Db,
    queue: Queue,
    settings: Settings,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(run(db, queue, settings, shutdown))
}

/// How long a stopping process waits for its relay (see [`join`]).
pub const STOP_WAIT: Duration = Duration::from_secs(30);

/// Waits for a cancelled relay to return, at most [`STOP_WAIT`]. A round
/// ends within a batch once cancelled, and every broker operation is
/// bounded ([`crate::broker::BROKER_TIMEOUT`]); should one still hang, the
/// process stops without it: what the relay had locked for publishing is
/// taken by another relay once the publish lock runs out.
pub async fn join(relay: JoinHandle<()>) -> Result<(), tokio::task::JoinError> {
    match tokio::time::timeout(STOP_WAIT, relay).await {
        Ok(joined) => joined,
        Err(_) => {
            tracing::warn!(after = ?STOP_WAIT, "the relay did not stop; stopping without it");
            Ok(())
        }
    }
}

/// Runs relay rounds every `settings.interval` until `shutdown` is
/// cancelled; a round that stopped at its bound is followed at once by the
/// next. Once cancelled, the round under way publishes no further batch.
pub async fn run(db: Db, queue: Queue, settings: Settings, shutdown: CancellationToken) {
    let metrics = RelayMetrics::new();
    loop {
        let pass = std::time::Instant::now();
        if let Some(retention) = settings.retention {
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
        let more =
            match relay_round(&db, &queue, settings.republish_after, &metrics, &shutdown).await {
                Ok(round) => {
                    if round.published > 0 {
                        tracing::info!(tasks = round.published, "relay published tasks");
                    }
                    round.more
                }
                Err(e) => {
                    tracing::warn!(error = %e, "relay round failed; will retry");
                    false
                }
            };
        if shutdown.is_cancelled() {
            return;
        }
        if more {
            // Owed tasks are left: the next round at once, but after
            // letting the runtime run what waits.
            tokio::task::yield_now().await;
            continue;
        }
        metrics.round.record(pass.elapsed().as_secs_f64());
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(settings.interval) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::NewTask;

    /// A migrated SQLite database with `n` owed tasks (their publish lock
    /// already run out), and the in-process queue.
    fn owed(n: usize) -> (tempfile::TempDir, Db, Queue) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db").display().to_string();
        let db = Db::connect(&format!("sqlite://{path}"), 2).unwrap();
        db.migrate().unwrap();
        let tasks: Vec<NewTask> = (0..n)
            .map(|i| NewTask {
                id: TaskId::new(),
                event_type: "org.ferry.echo".into(),
                source: "/ferry/relay".into(),
                event_id: format!("owed-{i}"),
                event: serde_json::json!({"specversion": "1.0", "id": i}),
                digest: format!("digest {i}"),
                max_attempts: 1,
                idempotency_key: None,
                run_after: None,
            })
            .collect();
        let past = chrono::Utc::now() - chrono::Duration::seconds(1);
        db.insert_tasks(&tasks, past).unwrap();
        (dir, db, Queue::local())
    }

    #[tokio::test]
    async fn a_round_publishes_at_most_its_bound_and_says_more_is_owed() {
        let (_dir, db, queue) = owed(25);
        let metrics = RelayMetrics::new();
        let running = CancellationToken::new();
        let round = publish_owed(&db, &queue, &metrics, &running, 10, 2)
            .await
            .unwrap();
        assert_eq!(
            round,
            Round {
                published: 20,
                more: true
            }
        );
        let round = publish_owed(&db, &queue, &metrics, &running, 10, 2)
            .await
            .unwrap();
        assert_eq!(
            round,
            Round {
                published: 5,
                more: false
            }
        );
        assert_eq!(queue.depth().await.unwrap(), 25);
    }

    #[tokio::test]
    async fn a_round_publishes_nothing_more_once_shut_down() {
        let (_dir, db, queue) = owed(25);
        let stopped = CancellationToken::new();
        stopped.cancel();
        let round = publish_owed(&db, &queue, &RelayMetrics::new(), &stopped, 10, 2)
            .await
            .unwrap();
        assert_eq!(
            round,
            Round {
                published: 0,
                more: true
            }
        );
        // And the relay's loop returns without starting a round's drain.
        let settings = Settings {
            interval: Duration::from_secs(3600),
            retention: None,
            republish_after: crate::config::DEFAULT_REPUBLISH_AFTER,
        };
        tokio::time::timeout(
            Duration::from_secs(10),
            run(db.clone(), queue.clone(), settings, stopped),
        )
        .await
        .expect("a cancelled relay returns");
        assert_eq!(queue.depth().await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_relay_works_off_a_backlog_over_rounds_without_waiting() {
        let (_dir, db, queue) = owed(BATCH as usize * BATCHES_PER_ROUND + 7);
        let settings = Settings {
            // Only rounds that follow at once can publish everything in time.
            interval: Duration::from_secs(3600),
            retention: None,
            republish_after: crate::config::DEFAULT_REPUBLISH_AFTER,
        };
        let shutdown = CancellationToken::new();
        let relay = spawn(db.clone(), queue.clone(), settings, shutdown.clone());
        let all = (BATCH as usize * BATCHES_PER_ROUND + 7) as u64;
        tokio::time::timeout(Duration::from_secs(60), async {
            while queue.depth().await.unwrap() < all {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the backlog published over rounds");
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), relay)
            .await
            .expect("the relay stops")
            .unwrap();
    }
}
