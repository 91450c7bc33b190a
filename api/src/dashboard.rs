//! `GET /`: the dashboard, an operator's live view of the queue, and
//! `GET /dashboard/<file>`, its script, style sheet and icon. The files are
//! `api/src/dashboard/` compiled into the binary (no build step, nothing
//! fetched from elsewhere, so it works offline and cannot drift from the
//! API it calls).
//!
//! The shell carries no task data: the page's script reads everything from
//! the client API (`/tasks/counts`, `/tasks`, `/tasks/<id>`, cancel and
//! retry) with the token the operator enters, so these routes are in
//! [`crate::auth::OPEN_ROUTES`] and every data call is checked as any
//! client's is. The script writes task data into the page only as text
//! (`textContent`, never `innerHTML`), and every answer here carries a
//! `Content-Security-Policy` that allows nothing but this origin's files
//! (no inline script or style), so an event crafted as markup stays text.
//!
//! Answers are `Cache-Control: no-cache` with an `ETag`: a browser asks
//! again each time and gets a bodiless `304` while the binary is the same,
//! and a new binary's files at once.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::Cursor;

use rocket::http::{ContentType, Header, Status};
use rocket::request::Request;
use rocket::response::{self, Responder, Response};
use rocket::{get, routes, Route};

use crate::error::{ApiError, ErrorCode};

/// What the dashboard's answers allow the page to load and do: only files
/// of this origin, no inline script or style, no `<base>`, no form posted
/// anywhere (the token form is the script's), never framed.
pub const CONTENT_SECURITY_POLICY: &str =
    "default-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// One file of the dashboard.
#[derive(Debug, Clone, Copy)]
pub struct Asset {
    /// The name under `/dashboard/` (the page itself is `index.html`, at `/`).
    pub name: &'static str,
    /// Its `Content-Type`.
    pub content_type: &'static str,
    /// Its bytes, compiled in.
    pub body: &'static [u8],
}

/// Every file of the dashboard.
pub const ASSETS: &[Asset] = &[
    Asset {
        name: "index.html",
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("dashboard/index.html"),
    },
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("dashboard/app.js"),
    },
    Asset {
        name: "style.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("dashboard/style.css"),
    },
    Asset {
        name: "favicon.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("dashboard/favicon.svg"),
    },
];

impl Asset {
    /// The file named `name`, if the dashboard has one.
    pub fn named(name: &str) -> Option<Self> {
        ASSETS.iter().find(|a| a.name == name).copied()
    }

    /// A strong validator of the bytes: the same binary always gives a
    /// file the same tag, and a changed file another.
    pub fn etag(&self) -> String {
        let mut hasher = DefaultHasher::new();
        self.body.hash(&mut hasher);
        format!("\"{:016x}\"", hasher.finish())
    }
}

impl<'r> Responder<'r, 'static> for Asset {
    fn respond_to(self, request: &'r Request<'_>) -> response::Result<'static> {
        let etag = self.etag();
        // `If-None-Match` may list several tags, or be `*`.
        let current = request
            .headers()
            .get("If-None-Match")
            .flat_map(|value| value.split(','))
            .any(|tag| {
                let tag = tag.trim();
                tag == "*" || tag.trim_start_matches("W/") == etag
            });
        let mut response = Response::build();
        response
            .header(Header::new("ETag", etag))
            .header(Header::new("Cache-Control", "no-cache"))
            .header(Header::new(
                "Content-Security-Policy",
                CONTENT_SECURITY_POLICY,
            ))
            .header(Header::new("X-Content-Type-Options", "nosniff"))
            .header(Header::new("Referrer-Policy", "no-referrer"));
        if current {
            response.status(Status::NotModified);
        } else {
            let content_type =
                ContentType::parse_flexible(self.content_type).unwrap_or(ContentType::Binary);
            response
                .header(content_type)
                .sized_body(self.body.len(), Cursor::new(self.body));
        }
        response.ok()
    }
}

/// The routes of this module.
pub fn routes() -> Vec<Route> {
    routes![dashboard_page, dashboard_file]
}

/// The dashboard: counts by status, the newest tasks with filters, a page
/// per task with cancel and retry, all updated live by its script. The page
/// holds no data; it reads the routes above with the operator's token.
#[utoipa::path(
    tag = "dashboard",
    responses(
        (status = 200, description = "The dashboard's page. Its script reads the task routes \
            above, sending `Authorization: Bearer <token>` once one is entered.",
            content_type = "text/html", body = String),
        (status = 304, description = "Not modified: the `If-None-Match` tag is the page's \
            `ETag`."),
    )
)]
#[get("/")]
fn dashboard_page() -> Asset {
    Asset::named("index.html").expect("the dashboard has its page")
}

/// A file of the dashboard: its script, style sheet or icon.
#[utoipa::path(
    tag = "dashboard",
    params(("file" = String, Path, description = "`app.js`, `style.css`, `favicon.svg` or \
        `index.html`.")),
    responses(
        (status = 200, description = "The file.", content(
            (String = "text/javascript"),
            (String = "text/css"),
            (String = "image/svg+xml"),
            (String = "text/html"),
        )),
        (status = 304, description = "Not modified: the `If-None-Match` tag is the file's \
            `ETag`."),
        (status = 404, description = "`not_found`: the dashboard has no such file",
            body = crate::openapi::bodies::ErrorBody),
    )
)]
#[get("/dashboard/<file>")]
fn dashboard_file(file: &str) -> Result<Asset, ApiError> {
    Asset::named(file).ok_or_else(|| {
        ApiError::new(
            ErrorCode::NotFound,
            format!("the dashboard has no file {file:?}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_differ_between_files_and_are_stable() {
        let tags: Vec<String> = ASSETS.iter().map(Asset::etag).collect();
        for (i, tag) in tags.iter().enumerate() {
            assert_eq!(*tag, ASSETS[i].etag());
            assert!(!tags[..i].contains(tag), "{tag}");
        }
    }

    #[test]
    fn the_page_loads_nothing_inline_or_from_elsewhere() {
        let page = std::str::from_utf8(Asset::named("index.html").unwrap().body).unwrap();
        for refused in [
            "<script>", "style=", "<style", "http://", "https://", "onclick",
        ] {
            assert!(!page.contains(refused), "index.html has {refused}");
        }
        let script = std::str::from_utf8(Asset::named("app.js").unwrap().body).unwrap();
        for refused in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
        ] {
            assert!(!script.contains(refused), "app.js uses {refused}");
        }
    }
}
