//! Raw HTTP/1.1 over a socket, for the tests that must see exactly what
//! the api writes, or that it writes nothing yet: one response at a time,
//! parsed with `httparse`, its body framed by `Content-Length`.

#![allow(dead_code)]

use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// One response read off a raw connection.
#[derive(Debug)]
pub struct Raw {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Raw {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {}: body is not JSON ({e}): {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// Checks Ferry's error shape: JSON `{"error": code, "message": …}`.
    pub fn assert_error(&self, status: u16, code: &str) -> String {
        assert_eq!(self.status, status, "{self:?}");
        assert!(
            self.header("content-type")
                .is_some_and(|v| v.starts_with("application/json")),
            "{self:?}"
        );
        let body = self.json();
        assert_eq!(body["error"], code, "{body}");
        let message = body["message"].as_str().unwrap_or_default().to_string();
        assert!(!message.is_empty(), "{body}");
        message
    }
}

/// Parses one response at the start of `bytes`: the response and its length,
/// or `None` while it is incomplete.
pub fn parse_response(bytes: &[u8]) -> Option<(Raw, usize)> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(bytes).expect("a valid response head") {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return None,
    };
    let headers: Vec<(String, String)> = response
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_string(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .map_or(0, |(_, v)| v.parse().expect("a numeric content-length"));
    let end = head_len + length;
    (bytes.len() >= end).then(|| {
        (
            Raw {
                status: response.code.expect("a status"),
                headers,
                body: bytes[head_len..end].to_vec(),
            },
            end,
        )
    })
}

/// Reads the next response from `stream`, waiting at most `limit`; `buf`
/// keeps what follows it. `None` if no whole response came in time.
pub async fn read_response(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    limit: Duration,
) -> Option<Raw> {
    let read = async {
        loop {
            if let Some((raw, len)) = parse_response(buf) {
                buf.drain(..len);
                return raw;
            }
            let mut chunk = [0; 16 * 1024];
            let n = stream.read(&mut chunk).await.expect("read a response");
            assert!(
                n > 0,
                "connection closed mid-response: {:?}",
                String::from_utf8_lossy(buf)
            );
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(limit, read).await.ok()
}
