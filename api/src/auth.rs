//! Bearer tokens. When `server.conf` lists `[[tokens]]`, every route but
//! those in [`OPEN_ROUTES`] takes an [`Auth`] guard naming the scope it
//! needs (`Auth<Submit>`, `Auth<Read>`, `Auth<Admin>`), and a request
//! without `Authorization: Bearer <token>` of a token that has it is
//! refused before the handler runs (so before a body is read):
//!
//! - no token, a malformed header or an unknown token: `401 unauthorized`
//!   with `WWW-Authenticate: Bearer` (and `error="invalid_request"` or
//!   `error="invalid_token"` when a token was sent, as RFC 6750 has it);
//! - a known token without the scope: `403 forbidden`, naming the scope.
//!
//! The presented token is hashed with SHA-256 and the hash compared with
//! every configured hash in constant time, without stopping at a match, so
//! the time taken says nothing about how close a guess was. With no token
//! configured every guard lets every request through.
//!
//! A guard's refusal becomes Rocket's error status, which goes to a
//! catcher; the refusal itself is left in the request's local cache for
//! [`unauthorized`] and [`forbidden`] to answer with.

use std::marker::PhantomData;
use std::sync::OnceLock;

use rocket::http::{Method, Status};
use rocket::request::{self, FromRequest, Request};
use serde_json::json;
use subtle::{ConditionallySelectable, ConstantTimeEq};

use ferry_core::tokens::{hash_token, is_b64token, Scope, Token, Tokens};

use crate::error::{default_catcher, ApiError, ErrorCode, JsonResponse};
use crate::AppState;

/// The routes every client may call, token or not: the health checks
/// (`/health`, `/ready`), for load balancers and orchestrators that carry no
/// credentials, and the dashboard's page and files, which hold no data (its
/// script reads tasks with the token the operator enters). Every other mounted route must take
/// an [`Auth`] guard (a test calls each one without a token and expects a
/// 401).
pub const OPEN_ROUTES: &[(Method, &str)] = &[
    (Method::Get, "/health"),
    (Method::Get, "/ready"),
    (Method::Get, "/"),
    (Method::Get, "/dashboard/<file>"),
];

/// Whether the route `method path` (as mounted, such as `/status/<id>`) is
/// one of the [`OPEN_ROUTES`].
pub fn is_open(method: Method, path: &str) -> bool {
    OPEN_ROUTES.iter().any(|(m, p)| *m == method && *p == path)
}

/// A scope a route requires, as a type: the parameter of [`Auth`].
pub trait RequiredScope: Send + Sync + 'static {
    /// The scope.
    const SCOPE: Scope;
}

/// `POST /receive`.
#[derive(Debug)]
pub struct Submit;
/// The routes that read tasks.
#[derive(Debug)]
pub struct Read;
/// The routes that steer tasks (cancel, retry).
#[derive(Debug)]
pub struct Admin;

impl RequiredScope for Submit {
    const SCOPE: Scope = Scope::Submit;
}
impl RequiredScope for Read {
    const SCOPE: Scope = Scope::Read;
}
impl RequiredScope for Admin {
    const SCOPE: Scope = Scope::Admin;
}

/// Request guard: the request carries a token with scope `S` (or no token
/// is configured).
#[derive(Debug)]
pub struct Auth<S> {
    /// The name of the token used, or `None` when the API is open.
    pub token: Option<String>,
    scope: PhantomData<S>,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No `Authorization` header, or one of another scheme.
    Missing(&'static str),
    /// A `Bearer` header that is not one well-formed token.
    Malformed(&'static str),
    /// A token no `[[tokens]]` entry holds.
    Unknown,
    /// A known token without the scope the route needs.
    Forbidden {
        /// The token's name.
        token: String,
        /// The scope it lacks.
        scope: Scope,
    },
}

impl Refusal {
    /// The HTTP status: 401, or 403 for a missing scope.
    pub fn status(&self) -> Status {
        match self {
            Self::Forbidden { .. } => Status::Forbidden,
            _ => Status::Unauthorized,
        }
    }

    /// The `WWW-Authenticate` challenge (RFC 6750, section 3).
    pub fn challenge(&self) -> String {
        match self {
            Self::Missing(_) => "Bearer".into(),
            Self::Malformed(_) => "Bearer error=\"invalid_request\"".into(),
            Self::Unknown => "Bearer error=\"invalid_token\"".into(),
            Self::Forbidden { scope, .. } => {
                format!("Bearer error=\"insufficient_scope\", scope=\"{scope}\"")
            }
        }
    }

    /// The JSON error answered.
    pub fn response(&self) -> JsonResponse {
        let body = match self {
            Self::Missing(why) | Self::Malformed(why) => {
                json!({ "error": ErrorCode::Unauthorized, "message": why })
            }
            Self::Unknown => json!({
                "error": ErrorCode::Unauthorized,
                "message": "the bearer token is not one this server knows",
            }),
            Self::Forbidden { token, scope } => json!({
                "error": ErrorCode::Forbidden,
                "message": format!("the token {token:?} does not have the scope {:?} this route needs", scope.as_str()),
                "scope": scope.as_str(),
            }),
        };
        JsonResponse::new(self.status(), body).with_header("WWW-Authenticate", self.challenge())
    }
}

/// The token an `Authorization` header presents: `Bearer <token>`, the
/// scheme in any case, the token an RFC 6750 `b64token`.
pub fn presented<'h>(mut values: impl Iterator<Item = &'h str>) -> Result<&'h str, Refusal> {
    let Some(value) = values.next() else {
        return Err(Refusal::Missing(
            "this route needs an Authorization: Bearer <token> header",
        ));
    };
    if values.next().is_some() {
        return Err(Refusal::Malformed(
            "the Authorization header is sent more than once",
        ));
    }
    let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(Refusal::Missing(
            "the Authorization header must be Bearer <token>; no other scheme is accepted",
        ));
    }
    let token = token.trim_start_matches(' ');
    if !is_b64token(token) {
        return Err(Refusal::Malformed(
            "the Authorization header must be Bearer <token>, one token of letters, digits and -._~+/ (then = padding)",
        ));
    }
    Ok(token)
}

/// The configured token whose hash is the presented token's. Every hash is
/// compared, in constant time, whether or not an earlier one matched.
pub fn find<'t>(tokens: &'t Tokens, presented: &str) -> Option<&'t Token> {
    let hash = hash_token(presented);
    let mut found = u64::MAX;
    let mut count = 0u64;
    for (i, token) in tokens.iter().enumerate() {
        let same = token.hash[..].ct_eq(&hash[..]);
        found.conditional_assign(&(i as u64), same);
        count += 1;
    }
    if found < count {
        tokens.iter().nth(found as usize)
    } else {
        None
    }
}

/// The decision for a request with these `Authorization` header values:
/// `Ok(None)` when no token is configured, else the token that grants
/// `scope`.
pub fn authorize<'t, 'h>(
    tokens: &'t Tokens,
    values: impl Iterator<Item = &'h str>,
    scope: Scope,
) -> Result<Option<&'t Token>, Refusal> {
    if tokens.is_empty() {
        return Ok(None);
    }
    let token = find(tokens, presented(values)?).ok_or(Refusal::Unknown)?;
    if token.allows(scope) {
        Ok(Some(token))
    } else {
        Err(Refusal::Forbidden {
            token: token.name.clone(),
            scope,
        })
    }
}

#[rocket::async_trait]
impl<'r, S: RequiredScope> FromRequest<'r> for Auth<S> {
    type Error = Refusal;

    async fn from_request(request: &'r Request<'_>) -> request::Outcome<Self, Refusal> {
        let Some(state) = request.rocket().state::<AppState>() else {
            // Not reachable with `crate::rocket`; refuse rather than open.
            return request::Outcome::Error((Status::InternalServerError, Refusal::Unknown));
        };
        let values = request.headers().get("Authorization");
        match authorize(&state.config.tokens, values, S::SCOPE) {
            Ok(token) => request::Outcome::Success(Self {
                token: token.map(|t| t.name.clone()),
                scope: PhantomData,
            }),
            Err(refusal) => {
                tracing::debug!(
                    method = %request.method(),
                    uri = %request.uri(),
                    ?refusal,
                    "request refused"
                );
                let _ = request.local_cache(OnceLock::new).set(refusal.clone());
                request::Outcome::Error((refusal.status(), refusal))
            }
        }
    }
}

/// What an [`Auth`] guard refused for this request, if it did.
fn refusal<'r>(request: &'r Request<'_>) -> Option<&'r Refusal> {
    request.local_cache(OnceLock::<Refusal>::new).get()
}

/// 401: the refusal of the request's [`Auth`] guard, with its challenge.
#[rocket::catch(401)]
pub fn unauthorized(request: &Request<'_>) -> Result<JsonResponse, ApiError> {
    refusal(request)
        .map(Refusal::response)
        .ok_or_else(|| default_catcher(Status::Unauthorized, request))
}

/// 403: the refusal of the request's [`Auth`] guard, naming the scope.
#[rocket::catch(403)]
pub fn forbidden(request: &Request<'_>) -> Result<JsonResponse, ApiError> {
    refusal(request)
        .map(Refusal::response)
        .ok_or_else(|| default_catcher(Status::Forbidden, request))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::Config;

    fn tokens() -> Tokens {
        let entry = |name: &str, token: &str, scopes: &[Scope]| {
            ferry_core::tokens::config_entry(name, &hash_token(token), scopes)
        };
        let text = entry("producer", "p-token", &[Scope::Submit])
            + &entry("reader", "r-token", &[Scope::Read])
            + &entry("ops", "o-token", &[Scope::Admin]);
        Config::from_toml(&text).unwrap().tokens
    }

    fn decide(values: &[&str], scope: Scope) -> Result<Option<String>, Refusal> {
        authorize(&tokens(), values.iter().copied(), scope).map(|t| t.map(|t| t.name.clone()))
    }

    #[test]
    fn each_token_finds_itself_and_nothing_else() {
        let tokens = tokens();
        for (token, name) in [
            ("p-token", "producer"),
            ("r-token", "reader"),
            ("o-token", "ops"),
        ] {
            assert_eq!(find(&tokens, token).map(|t| t.name.as_str()), Some(name));
        }
        for other in ["p-token2", "p-toke", "", "P-TOKEN"] {
            assert!(find(&tokens, other).is_none(), "{other}");
        }
        assert!(find(&Tokens::default(), "p-token").is_none());
    }

    #[test]
    fn scopes_and_admin() {
        assert_eq!(
            decide(&["Bearer p-token"], Scope::Submit),
            Ok(Some("producer".into()))
        );
        assert_eq!(
            decide(&["bearer  r-token"], Scope::Read),
            Ok(Some("reader".into()))
        );
        for scope in Scope::ALL {
            assert_eq!(decide(&["Bearer o-token"], scope), Ok(Some("ops".into())));
        }
        assert_eq!(
            decide(&["Bearer p-token"], Scope::Read),
            Err(Refusal::Forbidden {
                token: "producer".into(),
                scope: Scope::Read
            })
        );
        assert!(matches!(
            decide(&["Bearer r-token"], Scope::Admin),
            Err(Refusal::Forbidden { .. })
        ));
    }

    #[test]
    fn refusals() {
        let missing = |r: Result<Option<String>, Refusal>| matches!(r, Err(Refusal::Missing(_)));
        let malformed =
            |r: Result<Option<String>, Refusal>| matches!(r, Err(Refusal::Malformed(_)));
        assert!(missing(decide(&[], Scope::Read)));
        assert!(missing(decide(&["Basic cDpw"], Scope::Read)));
        assert!(missing(decide(&["r-token"], Scope::Read)));
        assert!(malformed(decide(&["Bearer"], Scope::Read)));
        assert!(malformed(decide(&["Bearer "], Scope::Read)));
        assert!(malformed(decide(&["Bearer a b"], Scope::Read)));
        assert!(malformed(decide(
            &["Bearer r-token", "Bearer r-token"],
            Scope::Read
        )));
        assert_eq!(decide(&["Bearer nope"], Scope::Read), Err(Refusal::Unknown));
        // Open: no token configured, anything goes.
        assert_eq!(
            authorize(&Tokens::default(), [].into_iter(), Scope::Admin)
                .unwrap()
                .map(|t| t.name.clone()),
            None
        );
    }

    #[test]
    fn challenges_follow_rfc_6750() {
        assert_eq!(Refusal::Missing("x").challenge(), "Bearer");
        assert_eq!(
            Refusal::Unknown.challenge(),
            "Bearer error=\"invalid_token\""
        );
        let forbidden = Refusal::Forbidden {
            token: "t".into(),
            scope: Scope::Admin,
        };
        assert_eq!(forbidden.status(), Status::Forbidden);
        assert_eq!(
            forbidden.challenge(),
            "Bearer error=\"insufficient_scope\", scope=\"admin\""
        );
    }
}
