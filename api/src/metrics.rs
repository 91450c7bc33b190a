//! `GET /metrics`: the process's Prometheus metrics (`ferry_core::metrics`),
//! in the text exposition format, behind `Auth<Read>` like every data route
//! (Prometheus sends a bearer token: `authorization.credentials` in its
//! scrape config). The [`HttpMetrics`] fairing counts every answer by
//! method, route template and status, and times it.

use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use ::metrics::{Counter, Histogram};
use ferry_core::metrics::{HTTP_DURATION, HTTP_REQUESTS};
use rocket::fairing::{Fairing, Info, Kind};
use rocket::http::{ContentType, Method};
use rocket::{get, routes, Data, Request, Response, Route, State};

use crate::auth::{Auth, Read};
use crate::AppState;

/// The routes of this module.
pub fn routes() -> Vec<Route> {
    routes![metrics]
}

/// The process's metrics, in Prometheus' text format: tasks received,
/// started and finished, attempt durations, tasks by status (a count at
/// most `metrics_counts_max_age` old), workers' running tasks and free
/// slots, retries, relay publishes, lease expiries, dead letters, HTTP
/// answers and group-commit sizes.
#[utoipa::path(
    tag = "service",
    responses(
        (status = 200, description = "The metrics, Prometheus' text exposition format 0.0.4.",
            content_type = "text/plain; version=0.0.4; charset=utf-8", body = String),
    )
)]
#[get("/metrics")]
async fn metrics(_auth: Auth<Read>, state: &State<AppState>) -> (ContentType, String) {
    state.counts.refresh().await;
    let content_type =
        ContentType::new("text", "plain").with_params([("version", "0.0.4"), ("charset", "utf-8")]);
    (content_type, ferry_core::metrics::render())
}

/// The `route` label of a request no route matched (its path is not used:
/// every label value would be a client's choice).
pub const UNMATCHED: &str = "(unmatched)";

/// When Rocket saw the request.
struct Started(Instant);

/// The handles of one route: its latency histogram and a counter per
/// status seen.
#[derive(Debug)]
struct RouteHandles {
    method: Method,
    route: String,
    duration: Histogram,
    statuses: Mutex<Vec<(u16, Counter)>>,
}

impl RouteHandles {
    fn new(method: Method, route: &str) -> Self {
        Self {
            method,
            route: route.to_string(),
            duration: ::metrics::histogram!(
                HTTP_DURATION,
                "method" => method.as_str(),
                "route" => route.to_string()
            ),
            statuses: Mutex::new(Vec::new()),
        }
    }

    fn count(&self, status: u16) {
        let mut statuses = self.statuses.lock().expect("not poisoned");
        if let Some((_, counter)) = statuses.iter().find(|(s, _)| *s == status) {
            counter.increment(1);
            return;
        }
        let counter = ::metrics::counter!(
            HTTP_REQUESTS,
            "method" => self.method.as_str(),
            "route" => self.route.clone(),
            "status" => status.to_string()
        );
        counter.increment(1);
        statuses.push((status, counter));
    }
}

/// Counts and times every answer, labelled with the route's path template
/// as mounted (`/status/<id>`, never the id itself), so the label values
/// are the routes', however many tasks there are. Handles are made once
/// per route and status, then reused.
#[derive(Debug, Default)]
pub struct HttpMetrics {
    routes: RwLock<Vec<Arc<RouteHandles>>>,
}

impl HttpMetrics {
    fn handles(&self, method: Method, route: &str) -> Arc<RouteHandles> {
        let is = |h: &&Arc<RouteHandles>| h.method == method && h.route == route;
        // A dozen routes: a scan costs what a hash would, with no owned key.
        if let Some(found) = self.routes.read().expect("not poisoned").iter().find(is) {
            return found.clone();
        }
        let mut routes = self.routes.write().expect("not poisoned");
        if let Some(found) = routes.iter().find(is) {
            return found.clone();
        }
        let handles = Arc::new(RouteHandles::new(method, route));
        routes.push(handles.clone());
        handles
    }
}

#[rocket::async_trait]
impl Fairing for HttpMetrics {
    fn info(&self) -> Info {
        Info {
            name: "HTTP metrics",
            kind: Kind::Request | Kind::Response,
        }
    }

    async fn on_request(&self, request: &mut Request<'_>, _: &mut Data<'_>) {
        request.local_cache(|| Started(Instant::now()));
    }

    async fn on_response<'r>(&self, request: &'r Request<'_>, response: &mut Response<'r>) {
        let started = request.local_cache(|| Started(Instant::now())).0;
        let route = request.route().map_or(UNMATCHED, |route| route.uri.path());
        let handles = self.handles(request.method(), route);
        handles.duration.record(started.elapsed().as_secs_f64());
        handles.count(response.status().code);
    }
}
