//! An HTTP client for a running `ferry-api`.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::Proc;

/// A running API and a client for it.
#[derive(Debug)]
pub struct Api {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    /// The client every request goes through.
    pub client: reqwest::Client,
    /// The `ferry-api` process.
    pub proc: Proc,
}

/// A response: status, headers and JSON body.
#[derive(Debug)]
pub struct Reply {
    /// The HTTP status.
    pub status: u16,
    /// The response headers.
    pub headers: reqwest::header::HeaderMap,
    /// The body, which must be JSON.
    pub body: Value,
}

impl Reply {
    /// Checks Ferry's error shape: this status, a JSON body
    /// `{"error": code, "message": …}` with a message; returns the message.
    pub fn assert_error(&self, status: u16, code: &str) -> String {
        assert_eq!(self.status, status, "{:?}", self.body);
        assert_eq!(self.body["error"], code, "{:?}", self.body);
        let message = self.body["message"].as_str().unwrap_or_default();
        assert!(!message.is_empty(), "no message: {:?}", self.body);
        let content_type = self.headers.get("content-type").map(|v| v.to_str());
        assert!(
            content_type.is_some_and(|v| v.is_ok_and(|v| v.starts_with("application/json"))),
            "{:?}",
            self.headers
        );
        message.to_string()
    }

    /// The task id of an accepted event (`id`).
    pub fn task_id(&self) -> String {
        self.body["id"]
            .as_str()
            .unwrap_or_else(|| panic!("no task id: {:?}", self.body))
            .to_string()
    }
}

/// Whether a task status is final.
pub fn is_final(status: &str) -> bool {
    matches!(status, "succeeded" | "failed" | "cancelled")
}

impl Api {
    /// An API process listening on `port`, once it answers `/health`.
    pub async fn start(proc: Proc, port: u16) -> Self {
        let api = Self {
            base: format!("http://127.0.0.1:{port}"),
            client: reqwest::Client::new(),
            proc,
        };
        api.wait_ready(port).await;
        api
    }

    /// Waits until `/health` answers from this process. Another process
    /// may hold the port (a test process elsewhere that was handed the
    /// same free port, or one that held it already): its answers do not
    /// count, and this process then fails to listen and exits, which ends
    /// the wait with its log.
    async fn wait_ready(&self, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let pid = self.proc.pid().to_string();
        loop {
            let health = self.client.get(format!("{}/health", self.base)).send();
            if health.await.is_ok_and(|r| r.status().is_success())
                && crate::tcp_ports(&pid)
                    .iter()
                    .any(|(local, _)| *local == port)
            {
                return;
            }
            assert!(
                self.proc.is_running() && Instant::now() < deadline,
                "{} did not become ready:\n{}",
                self.proc.name,
                self.proc.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The URL of `path` on this API.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The value of the sample `name` on `/metrics` (as
    /// [`crate::metric_value`] names it), 0 when it has none.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = reqwest::get(self.url("/metrics"))
            .await
            .and_then(reqwest::Response::error_for_status)
            .unwrap_or_else(|e| panic!("GET /metrics: {e}"))
            .text()
            .await
            .unwrap_or_else(|e| panic!("GET /metrics: {e}"));
        crate::metric_value(&text, name).unwrap_or(0.0)
    }

    /// Sends a request built on [`Api::client`] and reads its JSON reply.
    pub async fn send(&self, request: reqwest::RequestBuilder) -> Reply {
        reply(request.send().await.expect("the request is sent")).await
    }

    /// POSTs a body to /receive with the given headers.
    pub async fn post(&self, body: impl Into<reqwest::Body>, headers: &[(&str, &str)]) -> Reply {
        let mut request = self
            .client
            .post(format!("{}/receive", self.base))
            .body(body);
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        reply(request.send().await.expect("POST /receive")).await
    }

    /// POSTs a test file as `application/json` and returns the reply.
    pub async fn post_file(&self, path: &str) -> Reply {
        self.post(
            crate::test_file(path),
            &[("content-type", "application/json")],
        )
        .await
    }

    /// POSTs a CloudEvents 1.0 event built from its parts; expects a 202
    /// and returns the task id.
    pub async fn submit(&self, event_type: &str, id: &str, data: Value) -> String {
        self.submit_event(serde_json::json!({
            "specversion": "1.0", "type": event_type, "source": "/ferry/tests", "id": id, "data": data
        }))
        .await
    }

    /// POSTs `event` in structured mode; expects a 202 and returns the task
    /// id.
    pub async fn submit_event(&self, event: Value) -> String {
        let r = self
            .post(
                event.to_string(),
                &[("content-type", "application/cloudevents+json")],
            )
            .await;
        assert_eq!(r.status, 202, "{:?}", r.body);
        r.task_id()
    }

    /// GETs a path.
    pub async fn get(&self, path: &str) -> Reply {
        let response = self.client.get(format!("{}{path}", self.base)).send();
        reply(response.await.unwrap_or_else(|e| panic!("GET {path}: {e}"))).await
    }

    /// POSTs to a path with no body.
    pub async fn post_path(&self, path: &str) -> Reply {
        let response = self.client.post(format!("{}{path}", self.base)).send();
        reply(
            response
                .await
                .unwrap_or_else(|e| panic!("POST {path}: {e}")),
        )
        .await
    }

    /// GETs /status/<id>.
    pub async fn status(&self, id: &str) -> Reply {
        self.get(&format!("/status/{id}")).await
    }

    /// Polls /status until the task is in `status` and returns its view;
    /// fails on another final status or after `timeout`.
    pub async fn wait_for(&self, id: &str, status: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let r = self.status(id).await;
            assert_eq!(r.status, 200, "{:?}", r.body);
            let now = r.body["status"].as_str().expect("a status").to_string();
            if now == status {
                return r.body;
            }
            assert!(
                !is_final(&now),
                "task {id} ended {now}, expected {status}: {:#}",
                r.body
            );
            assert!(
                Instant::now() < deadline,
                "task {id} still {now} after {timeout:?}: {:#}",
                r.body
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// [`Api::wait_for`] each task in turn; returns their views in order.
    pub async fn wait_all(&self, ids: &[String], status: &str, timeout: Duration) -> Vec<Value> {
        let mut views = Vec::with_capacity(ids.len());
        for id in ids {
            views.push(self.wait_for(id, status, timeout).await);
        }
        views
    }
}

async fn reply(response: reqwest::Response) -> Reply {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.expect("a response body");
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("status {status}: body is not JSON ({e}): {text:?}"));
    Reply {
        status,
        headers,
        body,
    }
}
