//! A worker's own small HTTP port (`http_port`, `--http-port`; off unless
//! set), so that an orchestrator can probe each replica and Prometheus can
//! scrape it:
//!
//! - `GET /health`: the process serves (nothing else is checked);
//! - `GET /ready`: its database and broker answer, as the api's `/ready`
//!   says it (`503 not_ready` naming what does not);
//! - `GET /metrics`: the process's metrics, Prometheus' text format;
//! - anything else: `404 not_found`, JSON like every Ferry error.
//!
//! It is plain HTTP/1.1 on hyper, without auth (it serves no task data;
//! bind it to an address the scrapers and probes reach, `address`), and
//! stops with the worker.

use std::convert::Infallible;
use std::time::Duration;

use anyhow::Context as _;
use ferry_core::probe::Probe;
use ferry_core::Config;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

/// How long a connection may take to send a request's head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds `address:http_port`, if the configuration sets a port; an address
/// in use fails the start.
pub async fn bind(config: &Config) -> anyhow::Result<Option<TcpListener>> {
    let Some(port) = config.http_port else {
        return Ok(None);
    };
    let listener = TcpListener::bind((config.address.as_str(), port))
        .await
        .with_context(|| format!("cannot listen on {}:{port} (http_port)", config.address))?;
    Ok(Some(listener))
}

/// Serves `listener` until `shutdown` is cancelled; then open connections
/// are closed too.
pub fn spawn(listener: TcpListener, probe: Probe, shutdown: CancellationToken) -> JoinHandle<()> {
    tokio::spawn(async move {
        if let Ok(address) = listener.local_addr() {
            tracing::info!(%address, "worker HTTP port serving /health, /ready and /metrics");
        }
        let mut connections = JoinSet::new();
        loop {
            let accepted = tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            let (stream, _) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, say: wait instead of spinning.
                    tracing::warn!(error = %e, "worker HTTP port: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let probe = probe.clone();
            connections.spawn(async move {
                let service = service_fn(move |request| answer(request, probe.clone()));
                let connection = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service);
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "worker HTTP port: connection ended");
                }
            });
            while connections.try_join_next().is_some() {}
        }
        connections.shutdown().await;
    })
}

/// The answer to one request.
async fn answer(
    request: Request<Incoming>,
    probe: Probe,
) -> Result<Response<Full<Bytes>>, Infallible> {
    const JSON: &str = "application/json";
    let (status, content_type, body) = match (request.method(), request.uri().path()) {
        (&Method::GET, "/health") => (StatusCode::OK, JSON, json!({"status": "ok"}).to_string()),
        (&Method::GET, "/ready") => {
            let readiness = probe.ready().await;
            let status = if readiness.is_ready() {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            (status, JSON, readiness.body().to_string())
        }
        (&Method::GET, "/metrics") => (
            StatusCode::OK,
            ferry_core::metrics::CONTENT_TYPE,
            ferry_core::metrics::render(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            JSON,
            json!({
                "error": "not_found",
                "message": "no such route: a worker serves GET /health, /ready and /metrics",
            })
            .to_string(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert("retry-after", HeaderValue::from_static("5"));
    }
    Ok(response)
}
