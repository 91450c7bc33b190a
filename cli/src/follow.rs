//! Following a task to its final status: the task's event stream
//! (`GET /status/<id>/events`), which the API ends after a final status
//! that is the task's latest, then one `GET /status/<id>` for the whole
//! view. No polling: the API pushes each change. A stream cut short is
//! opened again with `Last-Event-ID`, so no change is read twice.

use std::io::IsTerminal as _;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use reqwest::Method;
use serde_json::Value;
use tokio::time::Instant;

use crate::client::{Client, Failure};

/// How long the api may stay unreachable (or failing) while `ferry`
/// follows a task before it gives up (exit 6).
const GIVE_UP: Duration = Duration::from_secs(30);

/// How following a task ended.
#[derive(Debug)]
pub enum Followed {
    /// The task is final: its status view.
    Final(Value),
    /// The deadline passed first: the view as last read, if it could be.
    TimedOut(Option<Value>),
}

/// A spinner on stderr, drawn only when stderr is a terminal.
#[derive(Debug)]
pub struct Spinner(ProgressBar);

impl Spinner {
    /// A spinner, hidden unless stderr is a terminal.
    pub fn new() -> Self {
        if !std::io::stderr().is_terminal() {
            let hidden = ProgressDrawTarget::hidden();
            return Self(ProgressBar::with_draw_target(None, hidden));
        }
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{spinner} {msg} ({elapsed})").expect("a valid template"),
        );
        bar.enable_steady_tick(Duration::from_millis(100));
        Self(bar)
    }

    fn show(&self, id: &str, status: &str) {
        self.0.set_message(format!("task {id} {status}"));
    }

    /// Removes the spinner.
    pub fn clear(&self) {
        self.0.finish_and_clear();
    }
}

fn is_final(status: &str) -> bool {
    matches!(status, "succeeded" | "failed" | "cancelled")
}

/// Follows task `id` until it is final or `deadline` passes.
pub async fn follow(
    client: &Client,
    id: &str,
    deadline: Option<Instant>,
    spinner: &Spinner,
) -> Result<Followed, Failure> {
    let mut last_view = None;
    let following = follow_stream(client, id, spinner, &mut last_view);
    let outcome = match deadline {
        Some(deadline) => match tokio::time::timeout_at(deadline, following).await {
            Ok(outcome) => outcome,
            Err(_) => {
                // One quick read for what the task is now; its failure
                // does not hide that the wait timed out.
                let url = client.url(&["status", id]);
                let now = client
                    .send_within(client.request(Method::GET, url), Duration::from_secs(10))
                    .await
                    .ok()
                    .map(|a| a.body);
                return Ok(Followed::TimedOut(now.or(last_view)));
            }
        },
        None => following.await,
    };
    outcome.map(Followed::Final)
}

async fn follow_stream(
    client: &Client,
    id: &str,
    spinner: &Spinner,
    last_view: &mut Option<Value>,
) -> Result<Value, Failure> {
    let status_url = client.url(&["status", id]);
    let view = client
        .send(client.request(Method::GET, status_url.clone()))
        .await?
        .body;
    let status = view["status"].as_str().unwrap_or_default().to_string();
    spinner.show(id, &status);
    if is_final(&status) {
        return Ok(view);
    }
    *last_view = Some(view);
    let events_url = client.url(&["status", id, "events"]);
    let mut last_seq = None;
    // Since when, and how many times in a row, the api could not be read.
    let mut failing: Option<(Instant, u32)> = None;
    loop {
        let read = match client.open_stream(events_url.clone(), last_seq).await {
            Ok(response) => read_stream(response, id, spinner, &mut last_seq).await,
            Err(failure) => Err(failure),
        };
        // The stream ends by itself only after a final status: read the
        // whole view. Anything else was a broken connection.
        let read = match read {
            Ok(()) => client
                .send(client.request(Method::GET, status_url.clone()))
                .await
                .map(|answer| answer.body),
            Err(failure) => Err(failure),
        };
        match read {
            Ok(view) => {
                failing = None;
                if is_final(view["status"].as_str().unwrap_or_default()) {
                    return Ok(view);
                }
                *last_view = Some(view);
            }
            // The api restarting, or a connection cut on the way: again,
            // for a while.
            Err(failure @ (Failure::Unreachable(_) | Failure::Server { .. })) => {
                let (since, times) = failing.get_or_insert((Instant::now(), 0));
                *times += 1;
                if since.elapsed() >= GIVE_UP {
                    return Err(Failure::Unreachable(format!(
                        "lost the API while following task {id}: {}",
                        failure.message()
                    )));
                }
            }
            Err(refused) => return Err(refused),
        }
        let times = failing.map_or(0, |(_, times)| times);
        let wait = Duration::from_millis(250 << times.min(3));
        tokio::time::sleep(wait).await;
    }
}

/// Reads Server-Sent Events until the stream ends, showing each status;
/// `Err` when the connection broke.
async fn read_stream(
    mut response: reqwest::Response,
    id: &str,
    spinner: &Spinner,
    last_seq: &mut Option<i64>,
) -> Result<(), Failure> {
    let mut buffer = Vec::new();
    let mut data = String::new();
    loop {
        let chunk = match response.chunk().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => return Ok(()),
            Err(e) => return Err(Failure::Unreachable(format!("the stream broke: {e}"))),
        };
        buffer.extend_from_slice(&chunk);
        while let Some(end) = buffer.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buffer.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                // The end of an event: its data is {"id","seq","status","at"}.
                if let Ok(event) = serde_json::from_str::<Value>(&data) {
                    if let Some(seq) = event["seq"].as_i64() {
                        *last_seq = Some(seq);
                    }
                    if let Some(status) = event["status"].as_str() {
                        spinner.show(id, status);
                    }
                }
                data.clear();
            } else if let Some(value) = line.strip_prefix("data:") {
                data.push_str(value.strip_prefix(' ').unwrap_or(value));
            }
        }
    }
}
