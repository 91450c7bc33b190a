//! `max_connections` over real sockets, on real processes: with the api's
//! places all held by open connections, a new connection is not served (it
//! waits in the kernel's accept queue) until one of them closes; then it
//! is, and `/receive` goes on storing and running tasks through it. The
//! `ferry_http_connections` gauge counts the open connections. On SQLite,
//! PostgreSQL and standalone.

use std::time::Duration;

use ferry_testkit::{Layout, Stack};
use raw_http::{read_response, Raw};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

mod raw_http;

/// Places of the api under test.
const MAX_CONNECTIONS: usize = 2;
/// How long a connection past the limit is watched for an answer it must
/// not get. Longer only makes the test slower; an api that ignored the
/// limit answers within milliseconds.
const UNSERVED_FOR: Duration = Duration::from_secs(1);
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
    // Open connections until one is not served: the testkit's own client
    // may hold a place with a kept-alive connection, so that happens at
    // the second or the third.
    let mut held = Vec::new();
    let mut waiting = loop {
        let mut client = Client::send(&addr, &get("/health")).await;
        match client.response(UNSERVED_FOR).await {
            Some(response) => {
                assert_eq!(response.status, 200, "{response:?}");
                held.push(client);
                assert!(
                    held.len() <= MAX_CONNECTIONS,
                    "{} connections served at once; max_connections is {MAX_CONNECTIONS}",
                    held.len()
                );
            }
            None => break client,
        }
    };
    assert!(!held.is_empty(), "no connection was served");
    // One closes: the waiting connection is accepted, and its request answered.
    drop(held.pop());
    let response = waiting
        .response(DONE)
        .await
        .expect("served once a place is free");
    assert_eq!(response.status, 200, "{response:?}");
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
    let mut metrics = Client::send(&addr, &get("/metrics")).await;
    let text = metrics.response(DONE).await.expect("the metrics").body;
    let open: f64 = String::from_utf8_lossy(&text)
        .lines()
        .find_map(|l| l.strip_prefix("ferry_http_connections "))
        .expect("ferry_http_connections in /metrics")
        .trim()
        .parse()
        .expect("a number");
    assert!(
        (1.0..=MAX_CONNECTIONS as f64).contains(&open),
        "ferry_http_connections {open}"
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
async fn max_connections_holds_new_ones_sqlite() {
    if let Some(stack) = start(Layout::Sqlite).await {
        limits_open_connections(&stack).await;
    }
}

#[tokio::test]
async fn max_connections_holds_new_ones_postgres() {
    if let Some(stack) = start(Layout::Postgres).await {
        limits_open_connections(&stack).await;
    }
}

#[tokio::test]
async fn max_connections_holds_new_ones_standalone() {
    if let Some(stack) = start(Layout::Standalone).await {
        limits_open_connections(&stack).await;
    }
}
