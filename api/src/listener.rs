//! Slow clients cannot hold the API, and what is refused below Rocket is
//! refused in JSON too.
//!
//! Why this exists: Rocket 0.5 builds hyper's HTTP/1 server with
//! `header_read_timeout(None)` and no limit on reading a body, so a client
//! that sends half a request and stops holds its connection (a socket and a
//! task) for ever, and a thousand of them hold a thousand. What hyper itself
//! refuses (a request line or path that is too long, a malformed
//! `Content-Length`, too many or too large headers, bytes that do not parse)
//! gets hyper's bare, body-less response, not Ferry's JSON error. And Rocket
//! drops a header whose value is not UTF-8 without a word, so a CloudEvents
//! `ce-*` attribute could vanish from a binary-mode event.
//!
//! So Rocket serves on a [`GuardedListener`] (through `Rocket::launch_on`,
//! which `vendor/rocket` adds), and each of its connections is a
//! [`GuardedConnection`] between the socket and hyper. The connection follows
//! HTTP/1.1 framing itself, with one buffer of its own:
//!
//! - **Heads.** A request head is read into the buffer and handed to hyper
//!   only once it is complete and has passed the checks hyper and Rocket
//!   would make, and a few more ([`MAX_HEAD_BYTES`], [`MAX_HEADERS`],
//!   [`MAX_TARGET_BYTES`], the request target, `Content-Length`,
//!   `Transfer-Encoding`, UTF-8 header values). A head that fails them is
//!   answered by the connection itself, with Ferry's `{"error", "message"}`
//!   JSON and 400, 414 or 431, and the connection is closed.
//! - **Bodies.** A body is handed over as it arrives, counted down by its
//!   `Content-Length` or followed through its chunked framing, so the
//!   connection knows where the next request starts; bytes past the body
//!   wait in the buffer (pipelining keeps working).
//! - **Responses.** What hyper writes is followed the same way (status,
//!   `Content-Length` or chunked, `HEAD`, 1xx, 204, 304), and the next
//!   request is handed over only once the previous response is complete.
//! - **Time limits** (`request_timeout`). A head must be complete within the
//!   limit of the accept, or of the last response byte written; a body
//!   within the limit of the end of its head. Nothing runs while a handler
//!   works on a request it has not started answering (a long poll is fine),
//!   and every response write re-arms the limit (a client that does not read
//!   its response is let go too). When a limit passes, a client with no
//!   answer started gets `408 request_timeout`; then the connection is closed:
//!   the socket is shut down, hyper reads end of file and later writes fail.
//!
//! The deadline is a [`tokio::time::Sleep`] polled from `poll_read`, with the
//! task's own waker, and reset lazily: a write only moves a field.
//!
//! Upgrades (101, a successful `CONNECT`) turn the connection into a plain
//! pipe. HTTP/2 with prior knowledge is refused (its preface is not an
//! HTTP/1.1 request); Ferry's clients speak HTTP/1.1.

use std::fmt;
use std::future::Future;
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll, Waker};
use std::time::Duration;

use metrics::{Counter, Gauge};
use rocket::http::hyper::{Method, Uri};
use rocket::http::private::{Connection, Listener, TcpListener};
use rocket::http::Status;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::PollSemaphore;

use crate::error::ErrorCode;

/// Largest request head (request line and header fields): 431 past it.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most header fields in one request (hyper's own limit): 431 past it.
pub const MAX_HEADERS: usize = 100;
/// Longest request target (path and query): 414 past it.
pub const MAX_TARGET_BYTES: usize = 8 * 1024;

/// A connection's buffer starts this large...
const INITIAL_BUFFER: usize = 8 * 1024;
/// ...and grows, for a large head or a large body, up to this.
const MAX_BUFFER: usize = MAX_HEAD_BYTES;
/// After its own error response, how long the connection keeps reading and
/// discarding what the client still sends (at most [`LINGER_BYTES`]) before
/// it closes: closing a socket with unread input resets it, and the reset
/// can destroy the response before the client has read it.
const LINGER: Duration = Duration::from_secs(2);
/// See [`LINGER`].
const LINGER_BYTES: usize = 1024 * 1024;
/// Chunk-extension bytes allowed in one chunked body (as hyper).
const MAX_CHUNK_EXTENSIONS: u64 = 16 * 1024;
/// Trailer bytes allowed after a chunked body (as hyper).
const MAX_TRAILER_BYTES: usize = 16 * 1024;

/// A TCP listener whose connections are [`GuardedConnection`]s: what Ferry's
/// Rocket serves on.
///
/// At most `max_connections` are open at once: each holds a place until
/// it is dropped. While none is free, a new connection is still accepted,
/// but it is answered `503 overloaded` with `Retry-After: 1` without its
/// request being read, and closed ([`REFUSING`] such answers at once at
/// most; past that the listener accepts nothing until a place or a
/// refusal is free, and connections wait in the kernel's accept queue).
/// Memory then stays bounded by the limit, whatever the number of
/// producers or their rate; each open connection costs tens of KiB once a
/// request is in flight. `request_timeout` frees the places of idle and
/// stalled connections.
#[derive(Debug)]
pub struct GuardedListener {
    listener: TcpListener,
    timeout: Duration,
    max_connections: usize,
    places: PollSemaphore,
    refusals: PollSemaphore,
    /// A place or a refusal taken while the socket had no connection to
    /// accept yet.
    held: Option<Held>,
    open: Gauge,
    refused: Counter,
}

/// Connections past `max_connections` being answered `503 overloaded` at
/// once, at most. Each lasts as long as the client takes to read a few
/// hundred bytes and close ([`LINGER`] at most).
pub const REFUSING: usize = 64;

/// What the next accepted connection gets.
#[derive(Debug)]
enum Held {
    Place(OwnedSemaphorePermit),
    Refusal(OwnedSemaphorePermit),
}

impl GuardedListener {
    /// Binds a TCP listener; `timeout` is `request_timeout`,
    /// `max_connections` the most connections open at once.
    pub async fn bind(
        addr: impl ToSocketAddrs,
        timeout: Duration,
        max_connections: usize,
    ) -> io::Result<Self> {
        Ok(Self::new(
            TcpListener::bind(addr).await?,
            timeout,
            max_connections,
        ))
    }

    /// Guards the connections of a bound listener.
    pub fn new(listener: TcpListener, timeout: Duration, max_connections: usize) -> Self {
        Self {
            listener,
            timeout,
            max_connections,
            places: PollSemaphore::new(Arc::new(Semaphore::new(max_connections))),
            refusals: PollSemaphore::new(Arc::new(Semaphore::new(REFUSING))),
            held: None,
            open: ferry_core::metrics::http_connections(),
            refused: ferry_core::metrics::http_connections_refused(),
        }
    }

    /// A place if one is free; else what was held, or a refusal.
    fn poll_held(&mut self, cx: &mut Context<'_>) -> Poll<Held> {
        // The semaphores are never closed.
        let held = match self.held.take() {
            Some(Held::Place(place)) => return Poll::Ready(Held::Place(place)),
            held => held,
        };
        if let Poll::Ready(place) = self.places.poll_acquire(cx) {
            return Poll::Ready(Held::Place(place.expect("the places are never closed")));
        }
        if let Some(refusal) = held {
            return Poll::Ready(refusal);
        }
        self.refusals
            .poll_acquire(cx)
            .map(|r| Held::Refusal(r.expect("the refusals are never closed")))
    }

    /// Answers a connection past `max_connections`, off the accept loop.
    fn refuse(&self, stream: TcpStream, peer: SocketAddr, refusal: OwnedSemaphorePermit) {
        self.refused.increment(1);
        let mut connection = GuardedConnection::new(stream, Some(peer), self.timeout);
        connection.close(Some(error_response(
            ErrorCode::Overloaded,
            &format!(
                "the api holds {} connections already (max_connections); retry after a second",
                self.max_connections
            ),
        )));
        tokio::spawn(async move {
            let _refusal = refusal;
            // Reads write the answer, shut the socket down and linger; they
            // end at end of file, within LINGER.
            let mut sink = [0; 1024];
            while let Ok(n) = tokio::io::AsyncReadExt::read(&mut connection, &mut sink).await {
                if n == 0 {
                    break;
                }
            }
        });
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

impl Listener for GuardedListener {
    type Connection = GuardedConnection<TcpStream>;

    fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    fn poll_accept(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<Self::Connection>> {
        let this = self.get_mut();
        loop {
            let held = ready!(this.poll_held(cx));
            match this.listener.poll_accept(cx) {
                Poll::Ready(Ok((stream, peer))) => match held {
                    Held::Place(place) => {
                        this.open.increment(1.0);
                        let place = Place {
                            _permit: place,
                            open: this.open.clone(),
                        };
                        let connection = GuardedConnection::new(stream, Some(peer), this.timeout);
                        return Poll::Ready(Ok(connection.holding(place)));
                    }
                    Held::Refusal(refusal) => this.refuse(stream, peer, refusal),
                },
                Poll::Ready(Err(e)) => {
                    this.held = Some(held);
                    return Poll::Ready(Err(e));
                }
                Poll::Pending => {
                    this.held = Some(held);
                    return Poll::Pending;
                }
            }
        }
    }
}

/// One of `max_connections`, held by an open connection: dropped with it.
struct Place {
    _permit: OwnedSemaphorePermit,
    open: Gauge,
}

impl Drop for Place {
    fn drop(&mut self) {
        self.open.decrement(1.0);
    }
}

/// One client connection, between the socket (`S`) and hyper: see the
/// [module documentation](self).
pub struct GuardedConnection<S = TcpStream> {
    io: S,
    peer: Option<SocketAddr>,
    /// `request_timeout`.
    timeout: Duration,
    /// What was read from the socket and not handed to hyper yet:
    /// `buf[start..end]`. Always initialized, so reads need no `unsafe`.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    phase: Phase,
    /// How far the head being read has been searched for its end.
    scanned: usize,
    /// Whether the head being read has a complete request line.
    line_seen: bool,
    /// Framing of the body of the request being handed over.
    body: Framing,
    /// Where hyper's response to that request stands.
    response: Response,
    /// A response head split across writes, while it is (rare).
    response_head: Vec<u8>,
    /// A response just ended (set while following a write).
    response_ended: bool,
    /// When the current limit passes, if one runs.
    deadline: Option<Instant>,
    /// Wakes the task at (or, lazily reset, before) `deadline`.
    timer: Pin<Box<Sleep>>,
    last_write: Option<Instant>,
    /// Whether a request has been handed to hyper on this connection.
    served: bool,
    /// Whether the client has closed its side.
    peer_eof: bool,
    /// Woken when a response ends, if hyper is waiting on a read that the
    /// socket will not wake (the next request is already buffered).
    parked: Option<Waker>,
    /// The connection's own error response and how much of it is written.
    answer: Vec<u8>,
    answered: usize,
    shut_down: bool,
    /// The listener's place this connection holds, freed when it is dropped.
    place: Option<Place>,
}

/// Where the read side stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading the next request head into the buffer.
    Head,
    /// Handing a checked head to hyper: bytes of it left.
    Handing(usize),
    /// Handing the body over.
    Body,
    /// The request is with hyper; the next one waits until its response ends.
    Sent,
    /// Upgraded: bytes pass through untouched.
    Tunnel,
    /// The body's framing is broken: hyper got an error, then gets EOF.
    Broken,
    /// Writing the connection's own error response.
    Answering,
    /// Shutting the socket down; then lingering (after an answer) or closed.
    ShuttingDown { linger: bool },
    /// Discarding input for a moment before closing (see [`LINGER`]).
    Lingering(usize),
    /// Closed: reads are EOF, writes fail.
    Closed,
}

/// Where hyper's response to the request handed over stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Response {
    /// No request is waiting for an answer.
    Idle,
    /// Waiting for (the rest of) a response head; 1xx heads come back here.
    Head {
        /// The request was `HEAD`: the response has no body.
        head: bool,
        /// The request was `CONNECT`: a 2xx response makes a tunnel.
        connect: bool,
    },
    /// In the response body.
    Body(Framing),
    /// Not followed any more: ends when the connection does.
    Untracked,
}

/// How a message body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Empty,
    Length(u64),
    Chunked(Chunked),
}

impl Framing {
    /// Follows `bytes`, the next bytes of the body: how many of them belong
    /// to it, and whether it ends with them.
    fn advance(&mut self, bytes: &[u8]) -> Result<(usize, bool), &'static str> {
        match self {
            Framing::Empty => Ok((0, true)),
            Framing::Length(left) => {
                let n = (*left).min(bytes.len() as u64);
                *left -= n;
                Ok((n as usize, *left == 0))
            }
            Framing::Chunked(chunked) => chunked.advance(bytes),
        }
    }
}

/// The chunked transfer coding (RFC 9112 §7.1), followed byte by byte except
/// for chunk data, as leniently as hyper's decoder and no more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Chunked {
    state: Chunk,
    /// The size of the chunk, then what is left of its data.
    size: u64,
    extension_bytes: u64,
    trailer_bytes: usize,
    trailers: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// First hex digit of a chunk size.
    Start,
    /// More hex digits.
    Size,
    /// Blanks after the size.
    SizeBlank,
    /// `;…` up to the CR.
    Extension,
    /// The LF of the size line.
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// After the last chunk: a trailer field, or the final CRLF.
    LineStart,
    Trailer,
    TrailerLf,
    EndLf,
    Done,
}

impl Chunked {
    fn new() -> Self {
        Self {
            state: Chunk::Start,
            size: 0,
            extension_bytes: 0,
            trailer_bytes: 0,
            trailers: 0,
        }
    }

    fn advance(&mut self, bytes: &[u8]) -> Result<(usize, bool), &'static str> {
        let mut i = 0;
        while i < bytes.len() && self.state != Chunk::Done {
            if self.state == Chunk::Data {
                let n = self.size.min((bytes.len() - i) as u64);
                self.size -= n;
                i += n as usize;
                if self.size == 0 {
                    self.state = Chunk::DataCr;
                }
                continue;
            }
            let b = bytes[i];
            i += 1;
            self.state = match (self.state, b) {
                (Chunk::Start, _) => {
                    self.size = hex(b).ok_or("invalid chunk size")?;
                    Chunk::Size
                }
                (Chunk::Size, b'\t' | b' ') | (Chunk::SizeBlank, b'\t' | b' ') => Chunk::SizeBlank,
                (Chunk::Size | Chunk::SizeBlank, b';') => Chunk::Extension,
                (Chunk::Size | Chunk::SizeBlank, b'\r') | (Chunk::Extension, b'\r') => {
                    Chunk::SizeLf
                }
                (Chunk::Size, _) => {
                    let digit = hex(b).ok_or("invalid chunk size")?;
                    self.size = self
                        .size
                        .checked_mul(16)
                        .and_then(|s| s.checked_add(digit))
                        .ok_or("chunk size overflows")?;
                    Chunk::Size
                }
                (Chunk::Extension, b'\n') => return Err("newline in a chunk extension"),
                (Chunk::Extension, _) => {
                    self.extension_bytes += 1;
                    if self.extension_bytes >= MAX_CHUNK_EXTENSIONS {
                        return Err("chunk extensions over the limit");
                    }
                    Chunk::Extension
                }
                (Chunk::SizeLf, b'\n') if self.size == 0 => Chunk::LineStart,
                (Chunk::SizeLf, b'\n') => Chunk::Data,
                (Chunk::DataCr, b'\r') => Chunk::DataLf,
                (Chunk::DataLf, b'\n') => Chunk::Start,
                (Chunk::LineStart, b'\r') => Chunk::EndLf,
                (Chunk::LineStart | Chunk::Trailer, _) => {
                    self.trailer_bytes += 1;
                    if self.trailer_bytes >= MAX_TRAILER_BYTES {
                        return Err("chunk trailers over the limit");
                    }
                    if b == b'\r' {
                        Chunk::TrailerLf
                    } else {
                        Chunk::Trailer
                    }
                }
                (Chunk::TrailerLf, b'\n') => {
                    if self.trailers >= MAX_HEADERS {
                        return Err("too many chunk trailers");
                    }
                    self.trailers += 1;
                    Chunk::LineStart
                }
                (Chunk::EndLf, b'\n') => Chunk::Done,
                _ => return Err("invalid chunked framing"),
            };
        }
        Ok((i, self.state == Chunk::Done))
    }
}

fn hex(b: u8) -> Option<u64> {
    (b as char).to_digit(16).map(u64::from)
}

/// A plain decimal, as hyper reads `Content-Length` (no sign, no blanks, no
/// list), at most hyper's largest length.
fn decimal(bytes: &[u8]) -> Option<u64> {
    if bytes.is_empty() {
        return None;
    }
    let mut n: u64 = 0;
    for &b in bytes {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    (n <= u64::MAX - 2).then_some(n)
}

/// Whether the last coding of a `Transfer-Encoding` value is `chunked`.
fn ends_chunked(value: &[u8]) -> bool {
    let last = value.rsplit(|&b| b == b',').next().unwrap_or_default();
    last.trim_ascii().eq_ignore_ascii_case(b"chunked")
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A request head that passed the checks.
#[derive(Debug, PartialEq, Eq)]
struct Head {
    len: usize,
    body: Framing,
    /// The method is `HEAD`.
    head: bool,
    /// The method is `CONNECT`.
    connect: bool,
}

/// A request refused before hyper sees it.
#[derive(Debug, PartialEq, Eq)]
struct Refusal {
    code: ErrorCode,
    message: String,
}

impl Refusal {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// Parses and checks a request head: `None` if it is not complete yet.
fn parse_head(bytes: &[u8]) -> Result<Option<Head>, Refusal> {
    let mut headers = [MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_HEADERS];
    let mut request = httparse::Request::new(&mut []);
    let len = match request.parse_with_uninit_headers(bytes, &mut headers) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Refusal::new(
                ErrorCode::HeadersTooLarge,
                format!("a request may have at most {MAX_HEADERS} header fields"),
            ))
        }
        Err(e) => {
            return Err(Refusal::new(
                ErrorCode::MalformedRequest,
                format!("the request could not be parsed: {e}"),
            ))
        }
    };
    if len > MAX_HEAD_BYTES {
        return Err(head_too_large());
    }
    let (Some(method), Some(target), Some(version)) =
        (request.method, request.path, request.version)
    else {
        return Err(Refusal::new(
            ErrorCode::MalformedRequest,
            "incomplete request line",
        ));
    };
    if target.len() > MAX_TARGET_BYTES {
        return Err(Refusal::new(
            ErrorCode::UriTooLong,
            format!(
                "the request target is {} bytes long; at most {MAX_TARGET_BYTES} are accepted",
                target.len()
            ),
        ));
    }
    if Method::from_bytes(method.as_bytes()).is_err() {
        return Err(Refusal::new(ErrorCode::MalformedRequest, "invalid method"));
    }
    if let Err(e) = Uri::try_from(target) {
        return Err(Refusal::new(
            ErrorCode::MalformedRequest,
            format!("the request target is not a valid URI ({e})"),
        ));
    }
    let mut content_length = None;
    let mut transfer_encoding = false;
    let mut chunked = false;
    for header in request.headers.iter() {
        if std::str::from_utf8(header.value).is_err() {
            let name: String = header.name.chars().take(64).collect();
            return Err(Refusal::new(
                ErrorCode::InvalidHeader,
                format!("the value of the {name} header is not valid UTF-8"),
            ));
        }
        if header.name.eq_ignore_ascii_case("content-length") {
            let n = decimal(header.value).ok_or_else(|| {
                Refusal::new(
                    ErrorCode::MalformedContentLength,
                    "Content-Length must be a decimal number of bytes",
                )
            })?;
            if content_length.is_some_and(|m| m != n) {
                return Err(Refusal::new(
                    ErrorCode::MalformedContentLength,
                    "the request has several different Content-Length values",
                ));
            }
            content_length = Some(n);
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            transfer_encoding = true;
            chunked = ends_chunked(header.value);
        }
    }
    let body = match (transfer_encoding, content_length) {
        (false, None | Some(0)) => Framing::Empty,
        (false, Some(n)) => Framing::Length(n),
        (true, _) if version == 0 => {
            return Err(Refusal::new(
                ErrorCode::MalformedRequest,
                "an HTTP/1.0 request cannot have a Transfer-Encoding",
            ))
        }
        (true, Some(_)) => {
            return Err(Refusal::new(
                ErrorCode::MalformedRequest,
                "a request cannot have both Transfer-Encoding and Content-Length",
            ))
        }
        (true, None) if !chunked => {
            return Err(Refusal::new(
                ErrorCode::MalformedRequest,
                "the last Transfer-Encoding of a request must be chunked",
            ))
        }
        (true, None) => Framing::Chunked(Chunked::new()),
    };
    Ok(Some(Head {
        len,
        body,
        head: method == "HEAD",
        connect: method == "CONNECT",
    }))
}

fn head_too_large() -> Refusal {
    Refusal::new(
        ErrorCode::HeadersTooLarge,
        format!(
            "the request's header section is larger than {} KiB",
            MAX_HEAD_BYTES / 1024
        ),
    )
}

/// Ferry's JSON error (the shape of [`crate::error::ApiError`]), as a whole
/// `Connection: close` response.
fn error_response(code: ErrorCode, message: &str) -> Vec<u8> {
    let status = code.status().unwrap_or(Status::BadRequest);
    let body = serde_json::json!({ "error": code, "message": message }).to_string();
    let date = chrono::Utc::now().format("%a, %d %b %Y %H:%M:%S GMT");
    let retry_after = if code == ErrorCode::Overloaded {
        "retry-after: 1\r\n"
    } else {
        ""
    };
    format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n{retry_after}server: Ferry\r\nx-content-type-options: nosniff\r\n\
         date: {date}\r\n\r\n{body}",
        status.code,
        status.reason_lossy(),
        body.len()
    )
    .into_bytes()
}

/// What a response head says about the response's end.
#[derive(Debug, PartialEq, Eq)]
struct ResponseHead {
    status: u16,
    content_length: Option<u64>,
    transfer_encoding: bool,
    chunked: bool,
}

/// Reads a response head as hyper writes it (`HTTP/1.x NNN …`, CRLF lines).
fn parse_response_head(head: &[u8]) -> Option<ResponseHead> {
    let line_end = find(head, b"\r\n")?;
    let line = &head[..line_end];
    if line.len() < 12 || !line.starts_with(b"HTTP/1.") || line[8] != b' ' {
        return None;
    }
    let status = std::str::from_utf8(&line[9..12]).ok()?.parse().ok()?;
    let mut parsed = ResponseHead {
        status,
        content_length: None,
        transfer_encoding: false,
        chunked: false,
    };
    for line in head[line_end + 2..].split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if name.eq_ignore_ascii_case(b"content-length") {
            parsed.content_length = decimal(value);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            parsed.transfer_encoding = true;
            parsed.chunked = ends_chunked(value);
        }
    }
    Some(parsed)
}

/// What the buffer holds of the next request.
enum Next {
    Partial,
    Complete(Head),
    Refused(Refusal),
}

fn closed() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "the connection was closed (request timeout or refused request)",
    )
}

impl<S> GuardedConnection<S> {
    /// Guards a freshly accepted connection: the head deadline starts now.
    pub fn new(io: S, peer: Option<SocketAddr>, timeout: Duration) -> Self {
        let deadline = Instant::now() + timeout;
        Self {
            io,
            peer,
            timeout,
            buf: vec![0; INITIAL_BUFFER],
            start: 0,
            end: 0,
            phase: Phase::Head,
            scanned: 0,
            line_seen: false,
            body: Framing::Empty,
            response: Response::Idle,
            response_head: Vec::new(),
            response_ended: false,
            deadline: Some(deadline),
            timer: Box::pin(tokio::time::sleep_until(deadline)),
            last_write: None,
            served: false,
            peer_eof: false,
            parked: None,
            answer: Vec::new(),
            answered: 0,
            shut_down: false,
            place: None,
        }
    }

    fn holding(mut self, place: Place) -> Self {
        self.place = Some(place);
        self
    }

    fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// Moves `n` buffered bytes to hyper.
    fn hand(&mut self, dst: &mut ReadBuf<'_>, n: usize) {
        dst.put_slice(&self.buf[self.start..self.start + n]);
        self.start += n;
    }

    /// Looks for a complete request head in the buffer.
    fn next_head(&mut self) -> Next {
        if !self.line_seen {
            // Empty lines before a request line are ignored (RFC 9112 §2.2):
            // drop them here, so that the first line feed ends the request
            // line, only a blank line after it ends the head, and the head
            // is parsed at most twice.
            loop {
                let data = &self.buf[self.start..self.end];
                if data.starts_with(b"\r\n") {
                    self.start += 2;
                } else if data.first() == Some(&b'\n') {
                    self.start += 1;
                } else {
                    break;
                }
                self.scanned = 0;
            }
        }
        let data = &self.buf[self.start..self.end];
        let mut parse = false;
        let mut i = self.scanned;
        while i < data.len() {
            if data[i] == b'\n' {
                if !self.line_seen {
                    // The request line is complete: refuse garbage now.
                    self.line_seen = true;
                    parse = true;
                } else if data[i - 1] == b'\n'
                    || (i >= 2 && data[i - 1] == b'\r' && data[i - 2] == b'\n')
                {
                    parse = true;
                    i += 1;
                    break;
                }
            }
            i += 1;
        }
        self.scanned = i;
        if parse {
            match parse_head(data) {
                Ok(Some(head)) => return Next::Complete(head),
                Ok(None) => {}
                Err(refusal) => return Next::Refused(refusal),
            }
        }
        if data.len() >= MAX_HEAD_BYTES {
            return Next::Refused(if self.line_seen {
                head_too_large()
            } else {
                Refusal::new(
                    ErrorCode::UriTooLong,
                    format!(
                        "the request line is longer than {} KiB",
                        MAX_HEAD_BYTES / 1024
                    ),
                )
            });
        }
        Next::Partial
    }

    /// Starts handing a checked head (and then its body) to hyper.
    fn hand_over(&mut self, head: Head) {
        self.served = true;
        self.scanned = 0;
        self.line_seen = false;
        self.response = Response::Head {
            head: head.head,
            connect: head.connect,
        };
        self.response_head.clear();
        // The body deadline runs from the end of the head.
        self.deadline = match head.body {
            Framing::Empty => None,
            _ => Some(Instant::now() + self.timeout),
        };
        self.body = head.body;
        self.phase = Phase::Handing(head.len);
    }

    /// Whether nothing of a final response has been written for the request
    /// handed over (interim 1xx responses aside).
    fn response_untouched(&self) -> bool {
        matches!(self.response, Response::Head { .. }) && self.response_head.is_empty()
    }

    /// The whole request is with hyper.
    fn request_done(&mut self) {
        let from_last_write = self.last_write.unwrap_or_else(Instant::now) + self.timeout;
        if self.response == Response::Idle {
            // Answered already (before the body was read): the next head.
            self.phase = Phase::Head;
            self.deadline = Some(from_last_write);
        } else {
            self.phase = Phase::Sent;
            // No limit while the handler works and has not answered.
            self.deadline = (!self.response_untouched()).then_some(from_last_write);
        }
    }

    /// A limit passed.
    fn time_out(&mut self) {
        let answer = match self.phase {
            Phase::Head => !self.served,
            Phase::Handing(_) | Phase::Body => self.response_untouched(),
            Phase::Sent => false,
            Phase::Answering | Phase::ShuttingDown { .. } | Phase::Lingering(_) => {
                // The close itself took too long.
                self.finish();
                return;
            }
            Phase::Tunnel | Phase::Broken | Phase::Closed => {
                self.deadline = None;
                return;
            }
        };
        tracing::debug!(peer = ?self.peer, phase = ?self.phase, answer, "request timeout: closing the connection");
        let response = answer.then(|| {
            error_response(
                ErrorCode::RequestTimeout,
                &format!("the request was not received within {:?}", self.timeout),
            )
        });
        self.close(response);
    }

    /// Closes the connection, after writing `answer` if there is one.
    fn close(&mut self, answer: Option<Vec<u8>>) {
        self.response = Response::Untracked;
        self.deadline = Some(Instant::now() + LINGER.min(self.timeout));
        self.phase = match answer {
            Some(answer) => {
                self.answer = answer;
                self.answered = 0;
                Phase::Answering
            }
            None => Phase::ShuttingDown { linger: false },
        };
    }

    /// Closed for good: memory goes back now.
    fn finish(&mut self) {
        self.phase = Phase::Closed;
        self.deadline = None;
        self.buf = Vec::new();
        self.start = 0;
        self.end = 0;
        self.answer = Vec::new();
        self.response_head = Vec::new();
    }

    /// Registers the task with the timer; `Ready` if the deadline has passed.
    fn poll_timer(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(deadline) = self.deadline else {
            return Poll::Pending;
        };
        loop {
            // The timer is reset lazily: it may still be set for an earlier
            // deadline, in which case it fires early and is moved on here.
            if self.timer.deadline() > deadline {
                self.timer.as_mut().reset(deadline);
            }
            match self.timer.as_mut().poll(cx) {
                Poll::Ready(()) if self.timer.deadline() >= deadline => return Poll::Ready(()),
                Poll::Ready(()) => self.timer.as_mut().reset(deadline),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Before returning `Pending`: makes sure the deadline wakes the task;
    /// if it has passed, acts on it and returns true (poll again).
    fn timed_out(&mut self, cx: &mut Context<'_>) -> bool {
        if self.poll_timer(cx).is_ready() {
            self.time_out();
            true
        } else {
            false
        }
    }

    fn expired(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// Follows bytes hyper wrote (`n` of them, from `slices` in order).
    fn wrote<'a>(
        &mut self,
        cx: &mut Context<'_>,
        mut n: usize,
        slices: impl IntoIterator<Item = &'a [u8]>,
    ) {
        if n == 0 {
            return;
        }
        let now = Instant::now();
        self.last_write = Some(now);
        if !matches!(self.phase, Phase::Handing(_) | Phase::Body | Phase::Tunnel) {
            // The limit runs from the last byte written.
            self.deadline = Some(now + self.timeout);
        }
        for slice in slices {
            if n == 0 {
                break;
            }
            let part = &slice[..n.min(slice.len())];
            n -= part.len();
            self.follow_response(part);
        }
        if std::mem::take(&mut self.response_ended) {
            if self.phase == Phase::Sent {
                self.phase = Phase::Head;
            }
            if let Some(waker) = self.parked.take() {
                waker.wake();
            }
            // The head deadline must wake the task even if hyper is not
            // reading right now.
            let _ = self.poll_timer(cx);
        }
    }

    fn follow_response(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match &mut self.response {
                Response::Idle => {
                    // Hyper answered no request that was handed over: stop
                    // following (and handing over) anything on this connection.
                    self.response = Response::Untracked;
                    return;
                }
                Response::Untracked => return,
                Response::Body(framing) => match framing.advance(bytes) {
                    Ok((n, done)) => {
                        bytes = &bytes[n..];
                        if done {
                            self.response_ended();
                        }
                    }
                    Err(_) => self.response = Response::Untracked,
                },
                &mut Response::Head { head, connect } => {
                    let (parsed, taken) = if self.response_head.is_empty() {
                        match find(bytes, b"\r\n\r\n") {
                            Some(i) => (parse_response_head(&bytes[..i + 4]), i + 4),
                            None => {
                                self.response_head.extend_from_slice(bytes);
                                return;
                            }
                        }
                    } else {
                        let before = self.response_head.len();
                        let from = before.saturating_sub(3);
                        self.response_head.extend_from_slice(bytes);
                        match find(&self.response_head[from..], b"\r\n\r\n") {
                            Some(i) => {
                                let end = from + i + 4;
                                let parsed = parse_response_head(&self.response_head[..end]);
                                self.response_head.clear();
                                (parsed, end - before)
                            }
                            None => {
                                if self.response_head.len() > MAX_HEAD_BYTES {
                                    self.response = Response::Untracked;
                                }
                                return;
                            }
                        }
                    };
                    bytes = &bytes[taken..];
                    self.response_started(parsed, head, connect);
                }
            }
        }
    }

    fn response_started(&mut self, parsed: Option<ResponseHead>, head: bool, connect: bool) {
        let Some(r) = parsed else {
            self.response = Response::Untracked;
            return;
        };
        match r.status {
            101 => self.tunnel(),
            // Interim: the final head follows.
            100..=199 => {}
            200..=299 if connect => self.tunnel(),
            204 | 304 => self.response_ended(),
            _ if head => self.response_ended(),
            _ if r.transfer_encoding && r.chunked => {
                self.response = Response::Body(Framing::Chunked(Chunked::new()));
            }
            // Delimited by the close of the connection.
            _ if r.transfer_encoding => self.response = Response::Untracked,
            _ => match r.content_length {
                Some(0) => self.response_ended(),
                Some(n) => self.response = Response::Body(Framing::Length(n)),
                None => self.response = Response::Untracked,
            },
        }
    }

    fn response_ended(&mut self) {
        self.response = Response::Idle;
        self.response_ended = true;
    }

    /// Upgraded: from now on bytes pass through untouched, with no limit.
    fn tunnel(&mut self) {
        self.response = Response::Untracked;
        self.phase = Phase::Tunnel;
        self.deadline = None;
    }

    fn write_closed(&self) -> bool {
        matches!(
            self.phase,
            Phase::Answering | Phase::ShuttingDown { .. } | Phase::Lingering(_) | Phase::Closed
        )
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> GuardedConnection<S> {
    /// Reads more from the socket into the buffer.
    fn fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        if self.end == self.buf.len() {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else if self.buf.len() < MAX_BUFFER {
                self.buf.resize((self.buf.len() * 2).min(MAX_BUFFER), 0);
            } else {
                // Callers never fill a full buffer; refuse rather than spin.
                return Poll::Ready(Err(io::Error::other("connection buffer full")));
            }
        }
        let room = self.buf.len() - self.end;
        let mut read = ReadBuf::new(&mut self.buf[self.end..]);
        ready!(Pin::new(&mut self.io).poll_read(cx, &mut read))?;
        let n = read.filled().len();
        self.end += n;
        if n == room && self.buf.len() < MAX_BUFFER {
            // The read filled all the room there was: more is coming.
            self.buf.resize((self.buf.len() * 2).min(MAX_BUFFER), 0);
        }
        Poll::Ready(Ok(n))
    }

    fn read_guarded(
        &mut self,
        cx: &mut Context<'_>,
        dst: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.expired() {
            self.time_out();
        }
        loop {
            match self.phase {
                Phase::Head if self.response != Response::Idle => {
                    // Hyper wrote something no request asked for: hold.
                    self.phase = Phase::Sent;
                }
                Phase::Head => match self.next_head() {
                    Next::Complete(head) => self.hand_over(head),
                    Next::Refused(refusal) => {
                        tracing::debug!(peer = ?self.peer, code = refusal.code.as_str(), message = %refusal.message, "request refused");
                        let answer = error_response(refusal.code, &refusal.message);
                        self.close(Some(answer));
                    }
                    // The client left mid-head (or between requests).
                    Next::Partial if self.peer_eof => return Poll::Ready(Ok(())),
                    Next::Partial => match self.fill(cx) {
                        Poll::Ready(Ok(0)) => self.peer_eof = true,
                        Poll::Ready(Ok(_)) => {}
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending if self.timed_out(cx) => {}
                        Poll::Pending => return Poll::Pending,
                    },
                },
                Phase::Handing(left) => {
                    let n = left.min(dst.remaining());
                    self.hand(dst, n);
                    if n < left {
                        self.phase = Phase::Handing(left - n);
                    } else if self.body == Framing::Empty {
                        self.request_done();
                    } else {
                        self.phase = Phase::Body;
                    }
                    return Poll::Ready(Ok(()));
                }
                Phase::Body if self.buffered() > 0 => {
                    let n = self.buffered().min(dst.remaining());
                    match self.body.advance(&self.buf[self.start..self.start + n]) {
                        Ok((n, done)) => {
                            self.hand(dst, n);
                            if done {
                                self.request_done();
                            }
                            return Poll::Ready(Ok(()));
                        }
                        Err(e) => {
                            tracing::debug!(peer = ?self.peer, error = e, "broken chunked body");
                            self.phase = Phase::Broken;
                            self.deadline = None;
                            return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
                        }
                    }
                }
                // An incomplete body: hyper reports it.
                Phase::Body if self.peer_eof => return Poll::Ready(Ok(())),
                Phase::Body => match self.fill(cx) {
                    Poll::Ready(Ok(0)) => self.peer_eof = true,
                    Poll::Ready(Ok(_)) => {}
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending if self.timed_out(cx) => {}
                    Poll::Pending => return Poll::Pending,
                },
                Phase::Sent => {
                    if self.buffered() == 0 {
                        // Hyper reads while it works on a request only to
                        // notice a client that leaves; EOF tells it so, as a
                        // bare socket would.
                        if self.peer_eof {
                            return Poll::Ready(Ok(()));
                        }
                        match self.fill(cx) {
                            Poll::Ready(Ok(0)) => {
                                self.peer_eof = true;
                                continue;
                            }
                            Poll::Ready(Ok(_)) => {}
                            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                            Poll::Pending if self.timed_out(cx) => continue,
                            Poll::Pending => return Poll::Pending,
                        }
                    }
                    // The next request waits for the end of this response,
                    // which wakes the task.
                    match &self.parked {
                        Some(waker) if waker.will_wake(cx.waker()) => {}
                        _ => self.parked = Some(cx.waker().clone()),
                    }
                    if !self.timed_out(cx) {
                        return Poll::Pending;
                    }
                }
                Phase::Tunnel => {
                    if self.buffered() > 0 {
                        let n = self.buffered().min(dst.remaining());
                        self.hand(dst, n);
                        return Poll::Ready(Ok(()));
                    }
                    return Pin::new(&mut self.io).poll_read(cx, dst);
                }
                Phase::Broken | Phase::Closed => return Poll::Ready(Ok(())),
                Phase::Answering => {
                    while self.answered < self.answer.len() {
                        match Pin::new(&mut self.io).poll_write(cx, &self.answer[self.answered..]) {
                            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                                self.finish();
                                break;
                            }
                            Poll::Ready(Ok(n)) => self.answered += n,
                            Poll::Pending if self.timed_out(cx) => break,
                            Poll::Pending => return Poll::Pending,
                        }
                    }
                    if self.phase == Phase::Answering {
                        self.phase = Phase::ShuttingDown { linger: true };
                    }
                }
                Phase::ShuttingDown { linger } => match Pin::new(&mut self.io).poll_shutdown(cx) {
                    Poll::Ready(result) => {
                        self.shut_down = true;
                        if linger && result.is_ok() {
                            self.phase = Phase::Lingering(0);
                        } else {
                            self.finish();
                        }
                    }
                    Poll::Pending if self.timed_out(cx) => {}
                    Poll::Pending => return Poll::Pending,
                },
                Phase::Lingering(discarded) => {
                    self.start = 0;
                    self.end = 0;
                    match self.fill(cx) {
                        Poll::Ready(Ok(n)) if n > 0 && discarded + n < LINGER_BYTES => {
                            self.phase = Phase::Lingering(discarded + n);
                        }
                        Poll::Ready(_) => self.finish(),
                        Poll::Pending if self.timed_out(cx) => {}
                        Poll::Pending => return Poll::Pending,
                    }
                }
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for GuardedConnection<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        dst: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.get_mut().read_guarded(cx, dst)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> GuardedConnection<S> {
    /// A write that cannot proceed: past the deadline, the client is let go.
    fn write_pending<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        if self.deadline.is_none() && self.phase != Phase::Tunnel {
            // The handler is done, but not a byte of its response goes out
            // (a client that sends requests and reads nothing): the limit
            // runs from this first blocked write.
            self.deadline = Some(Instant::now() + self.timeout);
        }
        if self.poll_timer(cx).is_ready() {
            tracing::debug!(peer = ?self.peer, "the client does not read its response: closing the connection");
            self.finish();
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client did not read its response in time",
            )));
        }
        Poll::Pending
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for GuardedConnection<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.write_closed() {
            return Poll::Ready(Err(closed()));
        }
        match Pin::new(&mut this.io).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                this.wrote(cx, n, [buf]);
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => this.write_pending(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.write_closed() {
            return Poll::Ready(Err(closed()));
        }
        match Pin::new(&mut this.io).poll_write_vectored(cx, bufs) {
            Poll::Ready(Ok(n)) => {
                this.wrote(cx, n, bufs.iter().map(|b| &**b));
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => this.write_pending(cx),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.write_closed() {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.shut_down || this.phase == Phase::Closed {
            return Poll::Ready(Ok(()));
        }
        let result = ready!(Pin::new(&mut this.io).poll_shutdown(cx));
        this.shut_down = true;
        Poll::Ready(result)
    }
}

impl Connection for GuardedConnection<TcpStream> {
    fn peer_address(&self) -> Option<SocketAddr> {
        self.peer.or_else(|| self.io.peer_addr().ok())
    }

    fn enable_nodelay(&self) -> io::Result<()> {
        self.io.set_nodelay(true)
    }
}

impl<S> fmt::Debug for GuardedConnection<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuardedConnection")
            .field("peer", &self.peer)
            .field("phase", &self.phase)
            .field("buffered", &self.buffered())
            .field("body", &self.body)
            .field("response", &self.response)
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt, DuplexStream};

    const LIMIT: Duration = Duration::from_secs(30);

    type Guarded = GuardedConnection<DuplexStream>;

    /// A client end and the guarded server end of an in-memory connection.
    fn pair() -> (DuplexStream, Guarded) {
        let (client, server) = duplex(1 << 20);
        (client, GuardedConnection::new(server, None, LIMIT))
    }

    /// What hyper would get now: everything the guard hands over until it
    /// would wait (10 ms of quiet), in small reads; and whether it said EOF.
    async fn handed(g: &mut Guarded) -> (Vec<u8>, bool) {
        let mut out = Vec::new();
        let mut buf = [0; 1000];
        loop {
            match tokio::time::timeout(Duration::from_millis(10), g.read(&mut buf)).await {
                Ok(Ok(0)) => return (out, true),
                Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
                Ok(Err(e)) => panic!("read error after {:?}: {e}", String::from_utf8_lossy(&out)),
                Err(_) => return (out, false),
            }
        }
    }

    /// Reads from the guard until EOF (hyper waiting on a stalled client).
    async fn until_eof(g: &mut Guarded) -> Vec<u8> {
        let mut out = Vec::new();
        g.read_to_end(&mut out).await.unwrap();
        out
    }

    /// Everything the client receives until the server closes.
    async fn received(client: &mut DuplexStream) -> String {
        let mut out = Vec::new();
        client.read_to_end(&mut out).await.unwrap();
        String::from_utf8(out).unwrap()
    }

    /// Parses the connection's own error response: status, `error`, message.
    fn json_error(response: &str) -> (u16, String, String) {
        let (head, body) = response.split_once("\r\n\r\n").expect("a whole response");
        let status = head[9..12].parse().unwrap();
        let head = head.to_ascii_lowercase();
        assert!(
            head.contains("\r\ncontent-type: application/json\r\n"),
            "{head}"
        );
        assert!(head.contains("\r\nconnection: close\r\n"), "{head}");
        assert!(
            head.contains(&format!("\r\ncontent-length: {}\r\n", body.len())),
            "{head}"
        );
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        let message = body["message"].as_str().unwrap().to_string();
        assert!(!message.is_empty());
        (status, body["error"].as_str().unwrap().to_string(), message)
    }

    const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

    #[test]
    fn chunked_framing_in_every_split() {
        let body: &[u8] = b"5;name=value\r\nhello\r\n1A \r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-Sum: 1\r\nX-More: 2\r\n\r\n";
        let next = b"GET / HTTP/1.1\r\n\r\n";
        let whole = [body, next].concat();
        // All at once: the body ends exactly where it should.
        let mut c = Chunked::new();
        assert_eq!(c.advance(&whole), Ok((body.len(), true)));
        // Byte by byte, and in every two pieces.
        let mut c = Chunked::new();
        for (i, b) in body.iter().enumerate() {
            let (n, done) = c.advance(std::slice::from_ref(b)).unwrap();
            assert_eq!((n, done), (1, i == body.len() - 1));
        }
        for split in 0..body.len() {
            let mut c = Chunked::new();
            let (a, done) = c.advance(&whole[..split]).unwrap();
            assert_eq!((a, done), (split, false));
            assert_eq!(c.advance(&whole[split..]), Ok((body.len() - split, true)));
        }
        // No trailers.
        let mut c = Chunked::new();
        assert_eq!(c.advance(b"0\r\n\r\nrest"), Ok((5, true)));
    }

    #[test]
    fn broken_chunked_framing_is_an_error() {
        for bad in [
            &b"x\r\n"[..],
            b"5\r\nhelloX",
            b"5\nhello",
            b"5;ext\nhello",
            b"5 5\r\n",
            b"fffffffffffffffff\r\n",
            b"0\r\nX: 1\rX",
        ] {
            let mut c = Chunked::new();
            assert!(
                c.advance(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn heads_are_checked() {
        let ok = |head: &str| parse_head(head.as_bytes()).unwrap().unwrap();
        let post = "POST /receive HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n";
        assert_eq!(
            ok(&format!("{post}hello")),
            Head {
                len: post.len(),
                body: Framing::Length(5),
                head: false,
                connect: false
            }
        );
        assert_eq!(
            ok("HEAD / HTTP/1.1\r\ncontent-length: 0\r\n\r\n").body,
            Framing::Empty
        );
        assert!(ok("HEAD / HTTP/1.1\r\n\r\n").head);
        assert_eq!(
            ok("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n").body,
            Framing::Chunked(Chunked::new())
        );
        assert_eq!(parse_head(b"GET / HTTP/1.1\r\nHost: x\r\n"), Ok(None));
        let refused = |head: &[u8]| {
            let r = parse_head(head).unwrap_err();
            (r.code.status().unwrap().code, r.code.as_str())
        };
        let too_many: String = (0..MAX_HEADERS + 1)
            .map(|i| format!("x-{i}: {i}\r\n"))
            .collect();
        let cases: Vec<(Vec<u8>, (u16, &str))> = vec![
            (
                format!("GET / HTTP/1.1\r\n{too_many}\r\n").into_bytes(),
                (431, "headers_too_large"),
            ),
            (
                format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(MAX_TARGET_BYTES)).into_bytes(),
                (414, "uri_too_long"),
            ),
            (b"HELLO\r\n\r\n".to_vec(), (400, "malformed_request")),
            (
                b"GET / HTTP/2.0\r\n\r\n".to_vec(),
                (400, "malformed_request"),
            ),
            (
                b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
                (400, "malformed_request"),
            ),
            (
                b"GET http:// HTTP/1.1\r\n\r\n".to_vec(),
                (400, "malformed_request"),
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: abc\r\n\r\n".to_vec(),
                (400, "malformed_content_length"),
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n".to_vec(),
                (400, "malformed_content_length"),
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n".to_vec(),
                (400, "malformed_content_length"),
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n".to_vec(),
                (400, "malformed_content_length"),
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n".to_vec(),
                (400, "malformed_content_length"),
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n".to_vec(),
                (400, "malformed_request"),
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"
                    .to_vec(),
                (400, "malformed_request"),
            ),
            (
                b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(),
                (400, "malformed_request"),
            ),
            (
                b"POST / HTTP/1.1\r\nce-type: a\xffb\r\n\r\n".to_vec(),
                (400, "invalid_header"),
            ),
        ];
        for (head, expected) in cases {
            assert_eq!(
                refused(&head),
                expected,
                "{:?}",
                String::from_utf8_lossy(&head)
            );
        }
        let r = parse_head(b"POST / HTTP/1.1\r\nce-type: \xff\r\n\r\n").unwrap_err();
        assert!(r.message.contains("ce-type"), "{}", r.message);
    }

    #[test]
    fn response_heads_are_read() {
        let r = parse_response_head(b"HTTP/1.1 202 Accepted\r\nContent-Length: 12\r\nx: y\r\n\r\n");
        assert_eq!(
            r,
            Some(ResponseHead {
                status: 202,
                content_length: Some(12),
                transfer_encoding: false,
                chunked: false
            })
        );
        let r =
            parse_response_head(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n").unwrap();
        assert!(r.transfer_encoding && r.chunked);
        assert_eq!(parse_response_head(b"garbage\r\n\r\n"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_is_handed_over_and_the_next_request_waits_for_the_response() {
        let (mut client, mut g) = pair();
        let first = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello";
        let second = b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n";
        client
            .write_all(&[&first[..], second].concat())
            .await
            .unwrap();
        assert_eq!(handed(&mut g).await, (first.to_vec(), false));
        // Held until the response is complete, even across the limit.
        tokio::time::sleep(LIMIT * 3).await;
        assert_eq!(handed(&mut g).await, (vec![], false));
        g.write_all(&OK[..OK.len() - 1]).await.unwrap();
        assert_eq!(handed(&mut g).await, (vec![], false));
        g.write_all(&OK[OK.len() - 1..]).await.unwrap();
        assert_eq!(handed(&mut g).await, (second.to_vec(), false));
        g.write_all(OK).await.unwrap();
        drop(client);
        assert_eq!(handed(&mut g).await, (vec![], true));
    }

    #[tokio::test(start_paused = true)]
    async fn a_chunked_body_sent_byte_by_byte() {
        let (mut client, mut g) = pair();
        let first: &[u8] = b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n10;x=y\r\n0123456789abcdef\r\n0\r\nT: 1\r\n\r\n";
        let second = b"\r\nGET /b HTTP/1.1\r\n\r\n";
        let mut got = Vec::new();
        for b in [first, second].concat() {
            client.write_all(&[b]).await.unwrap();
            got.extend(handed(&mut g).await.0);
        }
        assert_eq!(got, first);
        // A chunked response, written in pieces, then the next request (the
        // empty line before it is dropped).
        for piece in [
            &b"HTTP/1.1 200 OK\r\ntransfer-"[..],
            b"encoding: chunked\r\n\r\n2\r",
            b"\nok\r\n0\r\n",
            b"\r\n",
        ] {
            assert_eq!(handed(&mut g).await, (vec![], false));
            g.write_all(piece).await.unwrap();
        }
        assert_eq!(handed(&mut g).await, (second[2..].to_vec(), false));
    }

    #[tokio::test(start_paused = true)]
    async fn pipelined_requests_go_one_at_a_time() {
        let (mut client, mut g) = pair();
        let requests = [
            &b"GET /1 HTTP/1.1\r\n\r\n"[..],
            b"HEAD /2 HTTP/1.1\r\n\r\n",
            b"POST /3 HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc",
            b"GET /4 HTTP/1.1\r\n\r\n",
            b"GET /5 HTTP/1.1\r\n\r\n",
        ];
        client.write_all(&requests.concat()).await.unwrap();
        let responses = [
            &b"HTTP/1.1 404 Not Found\r\ncontent-length: 3\r\n\r\nnop"[..],
            // HEAD: a length, no body.
            b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n",
            // An interim response, then the final one.
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\n\r\n",
        ];
        for (request, response) in requests.iter().zip(responses) {
            assert_eq!(handed(&mut g).await, (request.to_vec(), false));
            assert_eq!(handed(&mut g).await, (vec![], false));
            g.write_all(response).await.unwrap();
        }
        assert_eq!(handed(&mut g).await, (requests[4].to_vec(), false));
        let mut sent = vec![0; responses.concat().len()];
        client.read_exact(&mut sent).await.unwrap();
        assert_eq!(sent, responses.concat());
    }

    #[tokio::test(start_paused = true)]
    async fn refused_heads_get_a_json_error_and_a_close() {
        let big_header = format!(
            "GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n",
            "a".repeat(100 * 1024)
        );
        let long_line = format!("GET /{}", "a".repeat(70 * 1024));
        let cases: Vec<(Vec<u8>, u16, &str)> = vec![
            (big_header.into_bytes(), 431, "headers_too_large"),
            (long_line.into_bytes(), 414, "uri_too_long"),
            (
                format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(20 * 1024)).into_bytes(),
                414,
                "uri_too_long",
            ),
            (
                b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n".to_vec(),
                400,
                "malformed_request",
            ),
            (
                b"POST /receive HTTP/1.1\r\nContent-Length: abc\r\n\r\n".to_vec(),
                400,
                "malformed_content_length",
            ),
            (
                b"POST /receive HTTP/1.1\r\nce-type: \xff\r\n\r\n".to_vec(),
                400,
                "invalid_header",
            ),
        ];
        for (request, status, code) in cases {
            let (mut client, mut g) = pair();
            client.write_all(&request).await.unwrap();
            // Hyper gets nothing but the end of the connection...
            assert_eq!(until_eof(&mut g).await, b"", "{code}");
            drop(g);
            // ...and the client a JSON error.
            let response = received(&mut client).await;
            let (s, c, _) = json_error(&response);
            assert_eq!((s, c.as_str()), (status, code), "{response}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_request_after_a_good_one() {
        let (mut client, mut g) = pair();
        client
            .write_all(b"GET / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\nContent-Length: x\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(
            handed(&mut g).await,
            (b"GET / HTTP/1.1\r\n\r\n".to_vec(), false)
        );
        g.write_all(OK).await.unwrap();
        assert_eq!(until_eof(&mut g).await, b"");
        assert!(g.write_all(OK).await.is_err(), "writes fail once closed");
        drop(g);
        let response = received(&mut client).await;
        let second = response
            .strip_prefix(std::str::from_utf8(OK).unwrap())
            .unwrap();
        assert_eq!(json_error(second).1, "malformed_content_length");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_head_gets_408() {
        let (mut client, mut g) = pair();
        client
            .write_all(b"GET /health HTTP/1.1\r\nHo")
            .await
            .unwrap();
        let start = Instant::now();
        assert_eq!(until_eof(&mut g).await, b"");
        assert!(start.elapsed() >= LIMIT);
        drop(g);
        let (status, code, _) = json_error(&received(&mut client).await);
        assert_eq!((status, code.as_str()), (408, "request_timeout"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_that_trickles_in_is_cut_at_the_limit() {
        let (mut client, mut g) = pair();
        let reader = tokio::spawn(async move { until_eof(&mut g).await });
        let start = Instant::now();
        for _ in 0..100 {
            if client.write_all(b"X").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        assert_eq!(reader.await.unwrap(), b"");
        assert!(start.elapsed() < LIMIT * 2);
        assert_eq!(json_error(&received(&mut client).await).0, 408);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_gets_408() {
        let (mut client, mut g) = pair();
        let sent = b"POST /receive HTTP/1.1\r\nContent-Length: 1000\r\n\r\n0123456789";
        client.write_all(sent).await.unwrap();
        let start = Instant::now();
        assert_eq!(until_eof(&mut g).await, sent);
        assert!(start.elapsed() >= LIMIT);
        drop(g);
        assert_eq!(json_error(&received(&mut client).await).0, 408);
    }

    #[tokio::test(start_paused = true)]
    async fn no_limit_while_the_handler_works_then_idle_connections_close() {
        let (mut client, mut g) = pair();
        client
            .write_all(b"GET /long-poll HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(handed(&mut g).await.0, b"GET /long-poll HTTP/1.1\r\n\r\n");
        // The handler takes ten limits: the connection stays.
        tokio::time::sleep(LIMIT * 10).await;
        assert_eq!(handed(&mut g).await, (vec![], false));
        g.write_all(OK).await.unwrap();
        // Idle after the response: closed after the limit, with no 408.
        let start = Instant::now();
        assert_eq!(until_eof(&mut g).await, b"");
        assert!(start.elapsed() >= LIMIT);
        drop(g);
        assert_eq!(received(&mut client).await.as_bytes(), OK);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_reads_nothing_is_let_go() {
        // Room for exactly one response: the client never reads it.
        let (mut client, server) = duplex(OK.len());
        let mut g = GuardedConnection::new(server, None, LIMIT);
        client
            .write_all(b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(handed(&mut g).await.0, b"GET /1 HTTP/1.1\r\n\r\n");
        g.write_all(OK).await.unwrap();
        assert_eq!(handed(&mut g).await.0, b"GET /2 HTTP/1.1\r\n\r\n");
        // Not a byte of the second response fits: the write fails after the
        // limit instead of waiting for ever.
        let start = Instant::now();
        let write = tokio::time::timeout(LIMIT * 10, g.write_all(OK)).await;
        assert!(matches!(write, Ok(Err(_))), "{write:?}");
        assert!(start.elapsed() >= LIMIT);
        assert_eq!(until_eof(&mut g).await, b"");
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_leaves_mid_head_is_eof() {
        let (mut client, mut g) = pair();
        client.write_all(b"GET / HT").await.unwrap();
        client.shutdown().await.unwrap();
        assert_eq!(handed(&mut g).await, (vec![], true));
    }
}
