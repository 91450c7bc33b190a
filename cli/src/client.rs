//! The HTTP API as `ferry` calls it: one client with the base URL and the
//! token, JSON in and out, and every way a call can go wrong sorted into
//! the exit code a script sees ([`Failure`]).

use std::time::Duration;

use reqwest::{Method, StatusCode, Url};
use serde_json::Value;

use crate::exit::Exit;

/// How long a plain request may take (not a long poll or a stream).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(90);

/// Why a command could not do what it was asked.
#[derive(Debug)]
pub enum Failure {
    /// Bad input on the command line or in a file: exit 2.
    Usage(String),
    /// The API answered 4xx: its `{error, message}` body (or its text).
    Refused {
        /// The HTTP status.
        status: StatusCode,
        /// The body, JSON when the API sent JSON.
        body: Value,
    },
    /// The API answered 5xx.
    Server {
        /// The HTTP status.
        status: StatusCode,
        /// The body, JSON when the API sent JSON.
        body: Value,
    },
    /// The API could not be reached, or its answer could not be read.
    Unreachable(String),
}

impl Failure {
    /// The exit code of this failure.
    pub fn exit(&self) -> Exit {
        match self {
            Self::Usage(_) => Exit::Usage,
            Self::Refused { .. } => Exit::Refused,
            Self::Server { .. } | Self::Unreachable(_) => Exit::Unreachable,
        }
    }

    /// The API's JSON body, if the API answered.
    pub fn body(&self) -> Option<&Value> {
        match self {
            Self::Refused { body, .. } | Self::Server { body, .. } => Some(body),
            _ => None,
        }
    }

    /// One line for a person.
    pub fn message(&self) -> String {
        fn said(status: StatusCode, body: &Value) -> String {
            match (body["error"].as_str(), body["message"].as_str()) {
                (Some(code), Some(message)) => {
                    format!("{message} (HTTP {} {code})", status.as_u16())
                }
                _ => match body.as_str() {
                    Some(text) if !text.trim().is_empty() => {
                        format!("HTTP {status}: {}", text.trim())
                    }
                    _ => format!("HTTP {status}"),
                },
            }
        }
        match self {
            Self::Usage(message) => message.clone(),
            Self::Refused { status, body } => format!("the API refused: {}", said(*status, body)),
            Self::Server { status, body } => format!("the API failed: {}", said(*status, body)),
            Self::Unreachable(message) => message.clone(),
        }
    }
}

/// A client of one Ferry API.
#[derive(Debug, Clone)]
pub struct Client {
    base: Url,
    token: Option<String>,
    http: reqwest::Client,
}

/// A successful answer: its status and JSON body.
#[derive(Debug)]
pub struct Answer {
    /// The HTTP status (2xx).
    pub status: StatusCode,
    /// The JSON body.
    pub body: Value,
}

impl Client {
    /// A client of the API at `url` (`http://host:port`, maybe with a path
    /// prefix), sending `token` as a bearer token when given.
    pub fn new(url: &str, token: Option<String>) -> Result<Self, Failure> {
        let mut base = Url::parse(url)
            .map_err(|e| Failure::Usage(format!("--url {url:?} is not a URL: {e}")))?;
        if !matches!(base.scheme(), "http") || base.cannot_be_a_base() {
            return Err(Failure::Usage(format!(
                "--url {url:?} must be an http:// URL (ferry speaks plain HTTP to the API)"
            )));
        }
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("ferry/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Failure::Unreachable(format!("cannot start an HTTP client: {e}")))?;
        Ok(Self {
            base,
            token: token.filter(|t| !t.is_empty()),
            http,
        })
    }

    /// The URL of the API path made of `segments` (each one escaped).
    pub fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .expect("an http URL has path segments")
            .pop_if_empty()
            .extend(segments);
        url
    }

    /// The URL of `path`, a relative URL the API gave (such as `next`).
    pub fn join(&self, path: &str) -> Result<Url, Failure> {
        self.base
            .join(path.trim_start_matches('/'))
            .map_err(|e| Failure::Unreachable(format!("the API sent a bad URL {path:?}: {e}")))
    }

    /// A request to `url`, with the token.
    pub fn request(&self, method: Method, url: Url) -> reqwest::RequestBuilder {
        let request = self.http.request(method, url);
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Sends `request` and reads its JSON answer, with the plain request
    /// timeout.
    pub async fn send(&self, request: reqwest::RequestBuilder) -> Result<Answer, Failure> {
        self.send_within(request, REQUEST_TIMEOUT).await
    }

    /// Sends `request` and reads its JSON answer within `timeout`.
    pub async fn send_within(
        &self,
        request: reqwest::RequestBuilder,
        timeout: Duration,
    ) -> Result<Answer, Failure> {
        let response = request
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| self.unreachable(&e))?;
        let status = response.status();
        let text = response.text().await.map_err(|e| self.unreachable(&e))?;
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status.is_success() {
            if body.is_string() {
                return Err(Failure::Unreachable(format!(
                    "the API at {} answered {status} with a body that is not JSON",
                    self.base
                )));
            }
            Ok(Answer { status, body })
        } else if status.is_client_error() {
            Err(Failure::Refused { status, body })
        } else {
            Err(Failure::Server { status, body })
        }
    }

    /// Opens a stream (`GET` with `Accept: text/event-stream`): the
    /// response once its status is 2xx.
    pub async fn open_stream(
        &self,
        url: Url,
        last_event_id: Option<i64>,
    ) -> Result<reqwest::Response, Failure> {
        let mut request = self
            .request(Method::GET, url)
            .header("accept", "text/event-stream");
        if let Some(seq) = last_event_id {
            request = request.header("last-event-id", seq.to_string());
        }
        let response = request.send().await.map_err(|e| self.unreachable(&e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let text = response.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status.is_client_error() {
            Err(Failure::Refused { status, body })
        } else {
            Err(Failure::Server { status, body })
        }
    }

    /// A transport error, said with the URL it was about.
    pub fn unreachable(&self, error: &reqwest::Error) -> Failure {
        // The innermost cause says what happened ("Connection refused");
        // the layers above it only repeat the URL.
        let mut cause = error.to_string();
        let mut source = std::error::Error::source(error);
        while let Some(inner) = source {
            cause = inner.to_string();
            source = inner.source();
        }
        let what = if error.is_timeout() {
            "no answer in time from"
        } else {
            "cannot reach"
        };
        Failure::Unreachable(format!("{what} the API at {}: {cause}", self.base))
    }
}
