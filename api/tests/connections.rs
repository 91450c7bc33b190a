//! `max_connections` over real sockets, on real processes: with the api's
//! places all held by open connections, a new connection is answered
//! `503 overloaded` with `Retry-After: 1` at once, its request unread, and
//! closed; once one of the open connections closes, a new one is served,
//! and `/receive` goes on storing and running tasks through it. The
//! `ferry_http_connections` gauge counts the open connections,
//! `ferry_http_connections_refused_total` the refused ones. On SQLite,
//! PostgreSQL and standalone.

use std::time::Duration;

use ferry_testkit::{Layout, Stack};
use raw_http::{read_response, Raw};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod raw_http;

/// Places of the api under test.
const MAX_CONNECTIONS: usize = 2;
const DONE: Duration = Duration::from_secs(60);

/// A keep-alive connection that sent one request.
struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    async fn send(addr: &str, request: &str) -> Client {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(request.as_bytes())
            .await
            .expect("write the request");
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    /// The next response, or `None` if it is not whole within `limit`.
    async fn response(&mut self, limit: Duration) -> Option<Raw> {
        read_response(&mut self.stream, &mut self.buf, limit).await
    }
}

/// A new connection's `request`, sent again while the api refuses
/// connections: a place comes back once the api has seen a close.
async fn served(addr: &str, request: &str) -> (Client, Raw) {
    let deadline = std::time::Instant::now() + DONE;
    loop {
        let mut client = Client::send(addr, request).await;
        let response = client.response(DONE).await.expect("an answer");
        if response.status != 503 {
            assert_eq!(response.status, 200, "{response:?}");
            return (client, response);
        }
        response.assert_error(503, "overloaded");
        assert!(std::time::Instant::now() < deadline, "no place came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value of the unlabelled series `name` in the text of `/metrics`.
fn sample(metrics: &str, name: &str) -> f64 {
    ferry_testkit::metric_value(metrics, name).unwrap_or_else(|| panic!("{name} in /metrics"))
}

/// After its answer, the api closes a refused connection: nothing more
/// comes, then end of file.
async fn assert_closed(client: &mut Client) {
    assert!(
        client.buf.is_empty(),
        "more after the answer: {:?}",
        client.buf
    );
    let mut rest = [0; 64];
    let read = tokio::time::timeout(DONE, client.stream.read(&mut rest)).await;
    assert!(
        matches!(read, Ok(Ok(0))),
        "the refused connection is not closed: {read:?}"
    );
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: ferry\r\n\r\n")
}

fn receive(id: &str) -> String {
    let body = serde_json::json!({
        "specversion": "1.0", "type": "org.ferry.echo", "source": "/ferry/connections",
        "id": id, "data": {}
    })
    .to_string();
    format!(
        "POST /receive HTTP/1.1\r\nHost: ferry\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

async fn limits_open_connections(stack: &Stack) {
    let addr = stack.api.base.trim_start_matches("http://").to_string();
    // Open connections until one is refused: the testkit's own client
    // may hold a place with a kept-alive connection, so that happens at
    // the second or the third.
    let mut held = Vec::new();
    let (mut refused, response) = loop {
        let mut client = Client::send(&addr, &receive("past-the-limit")).await;
        let response = client.response(DONE).await.expect("an answer");
        if response.status == 503 {
            break (client, response);
        }
        assert_eq!(response.status, 202, "{response:?}");
        held.push(client);
        assert!(
            held.len() <= MAX_CONNECTIONS,
            "{} connections served at once; max_connections is {MAX_CONNECTIONS}",
            held.len()
        );
    };
    assert!(!held.is_empty(), "no connection was served");
    assert_closed(&mut refused).await;
    let message = response.assert_error(503, "overloaded");
    assert!(message.contains("max_connections"), "{message}");
    assert_eq!(response.header("retry-after"), Some("1"), "{response:?}");
    assert_eq!(response.header("connection"), Some("close"), "{response:?}");
    // One closes: a new connection is served.
    drop(held.pop());
    let (mut waiting, _) = served(&addr, &get("/health")).await;
    // It works as any connection: an event through it is stored and run.
    waiting
        .stream
        .write_all(receive("through-a-freed-place").as_bytes())
        .await
        .expect("write");
    let accepted = waiting.response(DONE).await.expect("an answer");
    assert_eq!(accepted.status, 202, "{accepted:?}");
    let id = accepted.json()["id"]
        .as_str()
        .expect("a task id")
        .to_string();
    // Free every place, then read the gauge and wait for the task.
    drop(waiting);
    drop(held);
    let (metrics, response) = served(&addr, &get("/metrics")).await;
    let text = String::from_utf8_lossy(&response.body).into_owned();
    let open = sample(&text, "ferry_http_connections");
    assert!(
        (1.0..=MAX_CONNECTIONS as f64).contains(&open),
        "ferry_http_connections {open}"
    );
    let refused = sample(&text, "ferry_http_connections_refused_total");
    assert!(
        refused >= 1.0,
        "ferry_http_connections_refused_total {refused}"
    );
    drop(metrics);
    stack.api.wait_for(&id, "succeeded", DONE).await;
}

async fn start(layout: Layout) -> Option<Stack> {
    Stack::start_with(layout, 1, |d| {
        d.env("FERRY_MAX_CONNECTIONS", &MAX_CONNECTIONS.to_string())
    })
    .await
}

#[tokio::test]
async fn max_connections_refuses_new_ones_sqlite() {
    if let Some(stack) = start(Layout::Sqlite).await {
        limits_open_connections(&stack).await;
    }
}

#[tokio::test]
async fn max_connections_refuses_new_ones_postgres() {
    if let Some(stack) = start(Layout::Postgres).await {
        limits_open_connections(&stack).await;
    }
}

#[tokio::test]
async fn max_connections_refuses_new_ones_standalone() {
    if let Some(stack) = start(Layout::Standalone).await {
        limits_open_connections(&stack).await;
    }
}
