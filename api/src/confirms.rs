//! Broker confirms, recorded a moment after they arrive.
//!
//! A task's confirm is recorded (`enqueued_at`, [`Db::mark_enqueued`]) so
//! that the relay does not publish it again once its publish lock runs
//! out. The mark matters only while the task waits in the queue: the relay
//! leaves a claimed task alone, so the mark skips it and writes nothing.
//! At any rate the workers keep up with, a worker claims a task within
//! milliseconds of its confirm, so a confirm written at once was nearly
//! always a second write of the row (on PostgreSQL a new version of it and
//! an entry in each of its indexes), of a task about to be claimed.
//!
//! Held for [`HOLD`], most confirms find their task claimed, and their
//! statement reads rows by primary key and writes none; a task still
//! waiting (a backlog) is marked as before. The guarantee is unchanged:
//! the api's publish lock (10 s, longer than [`HOLD`]) keeps the relay off
//! the task meanwhile, and a process that dies holding confirms leaves its
//! tasks to the relay once their lock runs out: a duplicate message, which
//! the claim's compare-and-set makes harmless, as a death between the
//! confirm and its write always could. On shutdown the held confirms are
//! written at once ([`HeldConfirms::flush`]).
//!
//! [`Db::mark_enqueued`]: ferry_core::Db::mark_enqueued

use std::collections::VecDeque;
use std::time::Duration;

use ferry_core::batch::Batcher;
use ferry_core::db::DbResult;
use ferry_core::task::{Stored, SubmitWrite};
use ferry_core::TaskId;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// How long a confirm is held before it is written.
pub const HOLD: Duration = Duration::from_secs(1);

/// Confirms due within this of the first due are written with it, so that
/// the confirms of one busy second take a few writes, not one per publish.
const GATHER: Duration = Duration::from_millis(50);

enum Held {
    Confirmed(Vec<TaskId>),
    /// Write everything held now, and answer once it is written.
    Flush(oneshot::Sender<()>),
}

/// The confirms waiting to be written, held by one loop per process.
#[derive(Debug, Clone)]
pub struct HeldConfirms {
    held: mpsc::UnboundedSender<Held>,
}

impl HeldConfirms {
    /// Starts the loop that hands held confirms to `writes` (the api's
    /// insert batcher) as [`SubmitWrite::Confirmed`].
    pub fn spawn(writes: Batcher<SubmitWrite, DbResult<Vec<Stored>>>) -> Self {
        let (held, queue) = mpsc::unbounded_channel();
        tokio::spawn(hold(queue, writes));
        Self { held }
    }

    /// Records, [`HOLD`] from now, that the broker confirmed `ids`.
    pub fn confirmed(&self, ids: Vec<TaskId>) {
        let _ = self.held.send(Held::Confirmed(ids));
    }

    /// Writes every confirm held, and returns once they are written.
    pub async fn flush(&self) {
        let (done, written) = oneshot::channel();
        if self.held.send(Held::Flush(done)).is_ok() {
            let _ = written.await;
        }
    }
}

async fn hold(
    mut queue: mpsc::UnboundedReceiver<Held>,
    writes: Batcher<SubmitWrite, DbResult<Vec<Stored>>>,
) {
    let mut held: VecDeque<(Instant, Vec<TaskId>)> = VecDeque::new();
    loop {
        let due = held.front().map(|(at, _)| *at);
        let next_due = async {
            match due {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            message = queue.recv() => match message {
                Some(Held::Confirmed(ids)) => held.push_back((Instant::now() + HOLD, ids)),
                Some(Held::Flush(done)) => {
                    let ids: Vec<TaskId> = held.drain(..).flat_map(|(_, ids)| ids).collect();
                    if !ids.is_empty() {
                        writes.call(SubmitWrite::Confirmed(ids)).await;
                    }
                    let _ = done.send(());
                }
                None => return,
            },
            () = next_due => {
                let until = Instant::now() + GATHER;
                let mut ids = Vec::new();
                while held.front().is_some_and(|(at, _)| *at <= until) {
                    ids.extend(held.pop_front().into_iter().flat_map(|(_, ids)| ids));
                }
                writes.send(SubmitWrite::Confirmed(ids));
            }
        }
    }
}
