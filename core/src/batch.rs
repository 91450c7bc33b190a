//! Group commit: the database writes of concurrent callers share one
//! transaction. While one batch commits, the next one gathers, so under load
//! a commit (and its fsync) is paid once per batch instead of once per task,
//! and at low load a lone request is written at once, without waiting.
//!
//! Each batcher runs its batches on a thread of its own, which sleeps on the
//! queue of requests and answers each caller directly: a request crosses
//! threads twice (to the batch thread and back), where a loop on the async
//! runtime handing each batch to tokio's blocking pool made it cross four
//! times, each crossing a wait for a core when the cores are busy.

use std::panic::AssertUnwindSafe;

use tokio::sync::{mpsc, oneshot};

type Job<Req, Resp> = (Req, Option<oneshot::Sender<Resp>>);

/// Sends requests to a thread that runs them in batches of up to `max`
/// through a blocking function. Each batch's size and duration are recorded
/// in the `ferry_batch_size` and `ferry_batch_duration_seconds` histograms
/// under its name.
#[derive(Debug)]
pub struct Batcher<Req, Resp> {
    jobs: mpsc::UnboundedSender<Job<Req, Resp>>,
}

impl<Req, Resp> Clone for Batcher<Req, Resp> {
    fn clone(&self) -> Self {
        Self {
            jobs: self.jobs.clone(),
        }
    }
}

impl<Req: Send + 'static, Resp: Send + 'static> Batcher<Req, Resp> {
    /// Starts the batch thread; `run` gets a batch and returns one response
    /// per request, in order. It runs inside the calling tokio runtime's
    /// context (so it may spawn onto it). The thread ends when every handle
    /// is dropped.
    pub fn spawn<F>(name: &'static str, max: usize, run: F) -> Self
    where
        F: Fn(Vec<Req>) -> Vec<Resp> + Send + 'static,
    {
        Self::spawn_gated(name, max, || (), run)
    }

    /// [`Batcher::spawn`] for a group commit of writes to `db`: each batch
    /// is gathered once it holds the database's writers' turn (SQLite; see
    /// [`crate::db::Db::writer_turn`]), so that what arrives while it waits
    /// for the turn joins it. The api's inserts and a worker's attempts.
    pub fn spawn_writes<F>(name: &'static str, max: usize, db: crate::db::Db, run: F) -> Self
    where
        F: Fn(Vec<Req>) -> Vec<Resp> + Send + 'static,
    {
        Self::spawn_gated(name, max, move || db.writer_turn(), run)
    }

    /// [`Batcher::spawn`], calling `gate` once a batch's first request is
    /// in and before gathering the rest; what it returns is held until the
    /// batch has run.
    fn spawn_gated<F, G, T>(name: &'static str, max: usize, gate: G, run: F) -> Self
    where
        F: Fn(Vec<Req>) -> Vec<Resp> + Send + 'static,
        G: Fn() -> T + Send + 'static,
    {
        let (jobs, mut queue) = mpsc::unbounded_channel::<Job<Req, Resp>>();
        let (sizes, durations) = crate::metrics::batch_histograms(name);
        let runtime = tokio::runtime::Handle::current();
        std::thread::Builder::new()
            .name(format!("ferry-{name}"))
            .spawn(move || {
                let mut batch = Vec::with_capacity(max);
                while let Some(first) = queue.blocking_recv() {
                    // The batch's time runs from its first request: the
                    // gate's wait (a connection, the writers' turn) is in it.
                    let started = std::time::Instant::now();
                    let held = gate();
                    batch.push(first);
                    while batch.len() < max {
                        match queue.try_recv() {
                            Ok(job) => batch.push(job),
                            Err(_) => break,
                        }
                    }
                    sizes.record(batch.len() as f64);
                    let (requests, replies): (Vec<_>, Vec<_>) = batch.drain(..).unzip();
                    let ran = {
                        let _context = runtime.enter();
                        std::panic::catch_unwind(AssertUnwindSafe(|| run(requests)))
                    };
                    drop(held);
                    durations.record(started.elapsed().as_secs_f64());
                    match ran {
                        Ok(responses) => {
                            debug_assert_eq!(responses.len(), replies.len());
                            for (reply, response) in replies.into_iter().zip(responses) {
                                if let Some(reply) = reply {
                                    let _ = reply.send(response);
                                }
                            }
                        }
                        // The callers see their reply dropped and treat it as a failure.
                        Err(_) => tracing::error!(batch = name, "a batch panicked"),
                    }
                }
            })
            .expect("a batch thread starts");
        Self { jobs }
    }

    /// Runs `request` in the next batch and waits for its response; `None`
    /// if the batch failed abnormally or the loop is gone.
    pub async fn call(&self, request: Req) -> Option<Resp> {
        let (reply, response) = oneshot::channel();
        self.jobs.send((request, Some(reply))).ok()?;
        response.await.ok()
    }

    /// Runs `request` in the next batch without waiting for it.
    pub fn send(&self, request: Req) {
        let _ = self.jobs.send((request, None));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test]
    async fn concurrent_calls_share_batches_and_keep_their_answers() {
        let sizes = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = sizes.clone();
        let batcher = Batcher::spawn("test", 8, move |xs: Vec<u32>| {
            seen.lock().unwrap().push(xs.len());
            std::thread::sleep(std::time::Duration::from_millis(5));
            xs.into_iter().map(|x| x * 2).collect()
        });
        let calls: Vec<_> = (0..40)
            .map(|i| {
                let b = batcher.clone();
                tokio::spawn(async move { (i, b.call(i).await) })
            })
            .collect();
        for call in calls {
            let (i, answer) = call.await.unwrap();
            assert_eq!(answer, Some(i * 2));
        }
        let sizes = sizes.lock().unwrap();
        assert_eq!(sizes.iter().sum::<usize>(), 40);
        assert!(sizes.iter().all(|&n| n <= 8));
        assert!(
            sizes.len() < 40,
            "some calls should have shared a batch: {sizes:?}"
        );
    }
}
