//! A client of `GET /status/<id>/events`: Server-Sent Events read as they
//! arrive, for the tests and the bench.

use std::time::{Duration, Instant};

use serde_json::Value;

/// One event as the stream sent it.
#[derive(Debug, Clone)]
pub struct Sse {
    /// The event's name (`event:`): the status.
    pub name: String,
    /// Its id (`id:`): the task's sequence number.
    pub id: i64,
    /// Its data, JSON.
    pub data: Value,
    /// When the client read it.
    pub read_at: Instant,
}

/// An open event stream.
#[derive(Debug)]
pub struct SseStream {
    response: reqwest::Response,
    buffer: String,
    quiet: Duration,
}

impl SseStream {
    /// Sends `GET <base>/status/<task>/events`, with `Last-Event-ID` if
    /// given; the response as it came (a refusal is not a stream).
    pub async fn request(
        client: &reqwest::Client,
        base: &str,
        task: &str,
        last_event_id: Option<&str>,
    ) -> reqwest::Response {
        let mut request = client.get(format!("{base}/status/{task}/events"));
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id);
        }
        request.send().await.expect("GET /status/<id>/events")
    }

    /// Opens the stream: a `200 text/event-stream`, or a panic. `next`
    /// fails when nothing (not even a heartbeat) comes for a minute.
    pub async fn open(
        client: &reqwest::Client,
        base: &str,
        task: &str,
        last_event_id: Option<&str>,
    ) -> Self {
        let response = Self::request(client, base, task, last_event_id).await;
        assert_eq!(response.status(), 200);
        let content_type = response.headers()["content-type"].to_str().unwrap();
        assert!(
            content_type.starts_with("text/event-stream"),
            "{content_type}"
        );
        Self {
            response,
            buffer: String::new(),
            quiet: Duration::from_secs(60),
        }
    }

    /// The next event; `None` once the server ended the stream.
    pub async fn next(&mut self) -> Option<Sse> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let (mut name, mut id, mut data) = (None, None, String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        name = Some(v.trim().to_string());
                    } else if let Some(v) = line.strip_prefix("id:") {
                        id = Some(v.trim().parse::<i64>().expect("a numeric id"));
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim());
                    }
                }
                // Heartbeats (comment lines) carry nothing.
                if let (Some(name), Some(id)) = (name, id) {
                    let data = serde_json::from_str(&data).expect("JSON data");
                    return Some(Sse {
                        name,
                        id,
                        data,
                        read_at: Instant::now(),
                    });
                }
                continue;
            }
            let chunk = tokio::time::timeout(self.quiet, self.response.chunk())
                .await
                .expect("the stream went quiet")
                .expect("the stream broke");
            match chunk {
                Some(bytes) => self
                    .buffer
                    .push_str(std::str::from_utf8(&bytes).expect("UTF-8")),
                None => {
                    // Only heartbeats may follow the last event.
                    let mut rest = self.buffer.lines().filter(|l| !l.is_empty());
                    assert!(rest.all(|l| l.starts_with(':')), "{:?}", self.buffer);
                    return None;
                }
            }
        }
    }

    /// Every event until the server ends the stream.
    pub async fn rest(&mut self) -> Vec<Sse> {
        let mut events = Vec::new();
        while let Some(event) = self.next().await {
            events.push(event);
        }
        events
    }
}
