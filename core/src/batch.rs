//! Group commit: the database writes of concurrent callers share one
//! transaction. While one batch commits, the next one gathers, so under load
//! a commit (and its fsync) is paid once per batch instead of once per task,
//! and at low load a lone request is written at once, without waiting.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

type Job<Req, Resp> = (Req, Option<oneshot::Sender<Resp>>);

/// Sends requests to a background loop that runs them in batches of up to
/// `max` through a blocking function (on tokio's blocking pool). Each batch's
/// size and duration are recorded in the `ferry_batch_size` and
/// `ferry_batch_duration_seconds` histograms under its name.
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
    /// Starts the loop; `run` gets a batch and returns one response per
    /// request, in order. The loop ends when every handle is dropped.
    pub fn spawn<F>(name: &'static str, max: usize, run: F) -> Self
    where
        F: Fn(Vec<Req>) -> Vec<Resp> + Send + Sync + 'static,
    {
        let (jobs, mut queue) = mpsc::unbounded_channel::<Job<Req, Resp>>();
        let run = Arc::new(run);
        let (sizes, durations) = crate::metrics::batch_histograms(name);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(max);
            while queue.recv_many(&mut batch, max).await > 0 {
                sizes.record(batch.len() as f64);
                let (requests, replies): (Vec<_>, Vec<_>) = batch.drain(..).unzip();
                let run = run.clone();
                let started = std::time::Instant::now();
                let ran = tokio::task::spawn_blocking(move || run(requests)).await;
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
                    Err(e) => tracing::error!(batch = name, error = %e, "a batch failed"),
                }
            }
        });
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
