//! A request id on every line logged while a route handles a request, and
//! in the `X-Request-Id` header of every answer, so that a client's report
//! and the server's log meet. A client's own `X-Request-Id` (1 to 64 of
//! `A-Z a-z 0-9 . _ -`) is kept; otherwise one is made.
//!
//! Rocket 0.5 has no span per request, so [`traced`] wraps each route's
//! handler in one (`request{request_id=… method=… path=…}`), and the
//! [`RequestIds`] fairing answers with the id and logs each answer at DEBUG
//! (a client's 4xx is the client's business, never a WARN or an ERROR).

use rocket::fairing::{Fairing, Info, Kind};
use rocket::http::Header;
use rocket::route::{Handler, Outcome};
use rocket::{Data, Request, Response, Route};
use tracing::Instrument;

/// The header that carries the id, both ways.
pub const HEADER: &str = "X-Request-Id";

/// A request's id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

impl RequestId {
    /// The id of `request`: the client's if it is sane, else a new one;
    /// the same for the whole request.
    pub fn of<'r>(request: &'r Request<'_>) -> &'r RequestId {
        request.local_cache(|| {
            let given = request.headers().get_one(HEADER).filter(|id| {
                (1..=64).contains(&id.len())
                    && id
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            });
            RequestId(
                given.map_or_else(|| uuid::Uuid::new_v4().simple().to_string(), str::to_string),
            )
        })
    }
}

/// `routes`, each handled inside a span that names its request.
pub fn traced(routes: Vec<Route>) -> Vec<Route> {
    routes
        .into_iter()
        .map(|mut route| {
            route.handler = Box::new(Traced(route.handler));
            route
        })
        .collect()
}

#[derive(Clone)]
struct Traced(Box<dyn Handler>);

#[rocket::async_trait]
impl Handler for Traced {
    async fn handle<'r>(&self, request: &'r Request<'_>, data: Data<'r>) -> Outcome<'r> {
        let span = tracing::info_span!(
            "request",
            request_id = %RequestId::of(request).0,
            method = %request.method(),
            path = %request.uri().path(),
        );
        self.0.handle(request, data).instrument(span).await
    }
}

/// Answers with the request's id, and logs each answer at DEBUG.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestIds;

#[rocket::async_trait]
impl Fairing for RequestIds {
    fn info(&self) -> Info {
        Info {
            name: "request ids",
            kind: Kind::Response,
        }
    }

    async fn on_response<'r>(&self, request: &'r Request<'_>, response: &mut Response<'r>) {
        let id = RequestId::of(request);
        tracing::debug!(
            request_id = %id.0,
            method = %request.method(),
            path = %request.uri().path(),
            status = response.status().code,
            "answered"
        );
        response.set_header(Header::new(HEADER, id.0.clone()));
    }
}
