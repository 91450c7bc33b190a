//! Slow clients cannot hold the API, and what hyper would refuse on its own
//! gets Ferry's JSON error: raw sockets against a real
//! `ferry-api --standalone` whose `request_timeout` is two seconds. Nothing
//! here asserts a timing; waits are bounded only so a failure cannot hang.

use std::time::Duration;

use ferry_testkit::{Api, Deployment};
use raw_http::{parse_response, read_response, Raw};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod raw_http;

/// The API's `request_timeout` in these tests.
const LIMIT: &str = "2s";
/// Bounds every wait, far above the limit.
const PATIENCE: Duration = Duration::from_secs(60);

async fn start() -> (Deployment, Api) {
    let deployment = Deployment::sqlite().env("FERRY_REQUEST_TIMEOUT", LIMIT);
    let api = deployment.standalone().await;
    (deployment, api)
}

fn addr(api: &Api) -> String {
    api.base.trim_start_matches("http://").to_string()
}

/// Reads the next response from `stream`; `buf` keeps what follows it.
async fn next_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Raw {
    read_response(stream, buf, PATIENCE)
        .await
        .expect("a response in time")
}

/// Everything the server sends until it closes the connection.
async fn until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let read = async {
        let mut chunk = [0; 16 * 1024];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(PATIENCE, read)
        .await
        .expect("the server closes the connection");
    out
}

/// Sends `request` on a new connection; returns what the server sent before
/// it closed the connection.
async fn exchange(api: &Api, request: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr(api)).await.unwrap();
    // The server may answer before the request is all written, and stop
    // reading: a failed write is fine, the answer is what counts.
    let _ = stream.write_all(request).await;
    until_closed(&mut stream).await
}

fn one_response(bytes: &[u8]) -> Raw {
    let (raw, len) = parse_response(bytes).unwrap_or_else(|| {
        panic!(
            "not a whole response: {:?}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(500)])
        )
    });
    assert_eq!(len, bytes.len(), "nothing follows the response");
    raw
}

/// The API answers `/health` and `/status/<unknown uuid>` (a fresh
/// connection each, so none is an idle one the server just closed).
async fn assert_serving(api: &Api) {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(PATIENCE)
        .build()
        .unwrap();
    let health = client
        .get(format!("{}/health", api.base))
        .send()
        .await
        .expect("/health answers");
    assert_eq!(health.status(), 200);
    let status = client
        .get(format!("{}/status/{}", api.base, uuid::Uuid::new_v4()))
        .send()
        .await
        .expect("/status answers");
    assert_eq!(status.status(), 404);
    let body: Value = status.json().await.unwrap();
    assert_eq!(body["error"], "task_not_found");
}

#[tokio::test]
async fn stalled_connections_are_closed_while_others_are_served() {
    let (_deployment, api) = start().await;
    let half_head = b"GET /health HTTP/1.1\r\nHost: ferry\r\nUser-Ag";
    let half_body = b"POST /receive HTTP/1.1\r\nHost: ferry\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n0123456789";
    let mut stalled = Vec::new();
    for i in 0..400 {
        let mut stream = TcpStream::connect(addr(&api)).await.unwrap();
        let sent: &[u8] = if i % 2 == 0 { half_head } else { half_body };
        stream.write_all(sent).await.unwrap();
        stalled.push(stream);
    }
    // While they stall (and past the limit), the API answers others.
    for _ in 0..15 {
        assert_serving(&api).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Every stalled connection is closed by the server: with a 408 JSON
    // error, or at least an end of file.
    let closed: Vec<_> = stalled
        .into_iter()
        .map(|mut stream| tokio::spawn(async move { until_closed(&mut stream).await }))
        .collect();
    let mut answered = 0;
    for task in closed {
        let got = task.await.unwrap();
        if !got.is_empty() {
            one_response(&got).assert_error(408, "request_timeout");
            answered += 1;
        }
    }
    eprintln!("400 stalled connections closed, {answered} of them with a 408");
    assert_serving(&api).await;
}

#[tokio::test]
async fn requests_refused_below_rocket_get_json_errors() {
    let (_deployment, api) = start().await;
    let many_headers: String = (0..150).map(|i| format!("x-h{i}: {i}\r\n")).collect();
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "a 20 KiB path",
            format!("GET /{} HTTP/1.1\r\nHost: ferry\r\n\r\n", "a".repeat(20 * 1024)).into_bytes(),
            414,
            "uri_too_long",
        ),
        (
            "Content-Length: abc",
            b"POST /receive HTTP/1.1\r\nHost: ferry\r\nContent-Type: application/json\r\nContent-Length: abc\r\n\r\n{}".to_vec(),
            400,
            "malformed_content_length",
        ),
        (
            "150 headers",
            format!("GET /health HTTP/1.1\r\nHost: ferry\r\n{many_headers}\r\n").into_bytes(),
            431,
            "headers_too_large",
        ),
        (
            "a 100 KiB header",
            format!(
                "GET /health HTTP/1.1\r\nHost: ferry\r\nX-Big: {}\r\n\r\n",
                "a".repeat(100 * 1024)
            )
            .into_bytes(),
            431,
            "headers_too_large",
        ),
        (
            "a garbage request line",
            b"this is not http\r\n\r\n".to_vec(),
            400,
            "malformed_request",
        ),
        (
            "a ce-type header with byte 0xFF",
            [
                &b"POST /receive HTTP/1.1\r\nHost: ferry\r\nce-specversion: 1.0\r\nce-type: org.ferry."[..],
                &[0xff],
                b"echo\r\nce-source: /ferry/tests\r\nce-id: bad-header\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
            ]
            .concat(),
            400,
            "invalid_header",
        ),
    ];
    for (what, request, status, code) in cases {
        let got = exchange(&api, &request).await;
        assert!(!got.is_empty(), "{what}: no answer");
        let response = one_response(&got);
        let message = response.assert_error(status, code);
        assert_eq!(
            response.header("connection"),
            Some("close"),
            "{what}: {response:?}"
        );
        if code == "invalid_header" {
            assert!(message.contains("ce-type"), "{what}: {message}");
        }
        eprintln!("{what}: {status} {code}: {message}");
    }
    assert_serving(&api).await;
}

#[tokio::test]
async fn keep_alive_and_pipelining() {
    let (_deployment, api) = start().await;
    let mut stream = TcpStream::connect(addr(&api)).await.unwrap();
    let mut buf = Vec::new();
    // Two requests, one after the other, on one connection.
    for _ in 0..2 {
        stream
            .write_all(b"GET /health HTTP/1.1\r\nHost: ferry\r\n\r\n")
            .await
            .unwrap();
        let r = next_response(&mut stream, &mut buf).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.json()["status"], "ok");
    }
    // A pipelined pair in one write: a POST with a body, then a GET.
    let event = serde_json::json!({
        "specversion": "1.0", "type": "org.ferry.echo", "source": "/ferry/tests",
        "id": "pipelined", "data": {"n": 1}
    })
    .to_string();
    let unknown = uuid::Uuid::new_v4();
    let pair = format!(
        "POST /receive HTTP/1.1\r\nHost: ferry\r\nContent-Type: application/cloudevents+json\r\nContent-Length: {}\r\n\r\n{event}\
         GET /status/{unknown} HTTP/1.1\r\nHost: ferry\r\n\r\n",
        event.len()
    );
    stream.write_all(pair.as_bytes()).await.unwrap();
    let created = next_response(&mut stream, &mut buf).await;
    assert_eq!(created.status, 202, "{created:?}");
    let id = created.json()["id"].as_str().unwrap().to_string();
    let missing = next_response(&mut stream, &mut buf).await;
    missing.assert_error(404, "task_not_found");
    // The connection still serves, and the task exists.
    let request = format!("GET /status/{id} HTTP/1.1\r\nHost: ferry\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let status = next_response(&mut stream, &mut buf).await;
    assert_eq!(status.status, 200, "{status:?}");
    assert_eq!(status.json()["id"], id.as_str());
    assert!(buf.is_empty());
    // Idle past the limit, the connection is closed, without a 408 (the
    // client sent nothing it has not had an answer to).
    assert_eq!(until_closed(&mut stream).await, b"");
}
