//! The front door: one middleware in front of every hub route (the API gateway of
//! `services.md`). In order, for each request:
//!
//! 1. a request id (the caller's `X-Request-Id` if sane, else a new one), echoed back;
//! 2. a per-address rate limit (tighter on the login routes), 429 with Retry-After;
//! 3. authentication: a bearer access token, or the browser session cookie (then a
//!    state-changing request also needs its `X-CSRF-Token`); only the public routes
//!    ([`PUBLIC`]) pass without;
//! 4. a per-user rate limit;
//! 5. the handler, which checks the permission it needs ([`require`]) and reaches only the
//!    caller's organisation;
//! 6. an access log line (request id, route, status, time, user, organisation, address)
//!    and the Prometheus metrics.

pub mod limits;
pub mod metrics;

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{ConnectInfo, FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use self::limits::Limiter;
use self::metrics::Metrics;
use crate::identity::roles::Permission;
use crate::identity::{Identity, Principal};
use crate::{ApiError, HubState};

/// The browser session cookie. `__Host-` makes browsers insist on Secure, Path=/ and no
/// Domain, so no other site or subdomain can set or read it.
pub const SESSION_COOKIE: &str = "__Host-medvan_session";

/// Routes anyone may call: health, metrics, the API description, the token keys, and the
/// routes that log in (they check credentials of their own).
pub const PUBLIC: &[&str] = &[
    "/health",
    "/metrics",
    "/openapi.json",
    "/.well-known/jwks.json",
    "/api/v1/auth/login",
    "/api/v1/auth/refresh",
    "/api/v1/auth/mfa/enrol",
    "/api/v1/auth/mfa/confirm",
    "/api/v1/auth/password/reset",
    "/api/v1/auth/password/forgot",
    "/api/v1/auth/sso",
    "/api/v1/auth/sso/{org}/start",
    "/api/v1/auth/sso/{org}/callback",
    // The doctor app's files (its data comes from the routes above, behind the door).
    "/",
    "/reset-password",
    "/app/{file}",
];

/// The routes a van's call ticket may call (`calls/`).
const CALL_ROUTES: &str = "/api/v1/calls/{case}";

/// Rate limits, from the `[front_door]` config table.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Requests a second from one address, on average.
    pub per_address_per_s: f64,
    /// ... and at once.
    pub per_address_burst: u32,
    /// Requests a second by one user, on average.
    pub per_user_per_s: f64,
    /// ... and at once.
    pub per_user_burst: u32,
    /// Login attempts a minute from one address (the login, refresh, enrolment and reset
    /// routes).
    pub logins_per_address_per_min: f64,
    /// Take the client's address from `X-Forwarded-For` (only behind a proxy that sets it).
    pub trust_forwarded_for: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            per_address_per_s: 50.0,
            per_address_burst: 200,
            per_user_per_s: 20.0,
            per_user_burst: 100,
            logins_per_address_per_min: 20.0,
            trust_forwarded_for: false,
        }
    }
}

/// The front door's state.
#[derive(Debug)]
pub struct FrontDoor {
    limits: Limits,
    per_address: Mutex<Limiter>,
    per_user: Mutex<Limiter>,
    logins: Mutex<Limiter>,
    /// The metrics served at `/metrics`.
    pub metrics: Metrics,
    started: Instant,
}

impl FrontDoor {
    /// A front door with `limits`.
    pub fn new(limits: Limits) -> FrontDoor {
        FrontDoor {
            per_address: Mutex::new(Limiter::new(limits.per_address_per_s, limits.per_address_burst)),
            per_user: Mutex::new(Limiter::new(limits.per_user_per_s, limits.per_user_burst)),
            logins: Mutex::new(Limiter::new(
                limits.logins_per_address_per_min / 60.0,
                limits.logins_per_address_per_min.ceil() as u32,
            )),
            limits,
            metrics: Metrics::default(),
            started: Instant::now(),
        }
    }

    fn check(&self, limiter: &Mutex<Limiter>, key: &str) -> Result<(), u64> {
        let now = self.started.elapsed().as_secs_f64();
        limiter.lock().unwrap_or_else(|p| p.into_inner()).check(key, now)
    }
}

/// The time now, seconds since the epoch.
pub(crate) fn now_s() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

fn request_id(req: &Request) -> String {
    let given = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("");
    let sane = !given.is_empty()
        && given.len() <= 64
        && given.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
    if sane {
        given.to_owned()
    } else {
        let mut b = [0u8; 12];
        rand::fill(&mut b);
        hex::encode(b)
    }
}

fn client_addr(req: &Request, trust_forwarded: bool) -> String {
    if trust_forwarded
        && let Some(ip) = req
            .headers()
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            // The proxy appends the address it saw; what comes before is the client's to write.
            .and_then(|v| v.split(',').next_back())
            .and_then(|v| v.trim().parse::<IpAddr>().ok())
    {
        return ip.to_string();
    }
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_else(|| "local".to_owned())
}

fn too_many(retry_after: u64, what: &str) -> Response {
    let mut r = ApiError(
        StatusCode::TOO_MANY_REQUESTS,
        format!("too many requests {what}; wait {retry_after} s and try again"),
    )
    .into_response();
    r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
    r
}

/// The value of the cookie `name` the request carries.
pub(crate) fn cookie_value<'a>(headers: &'a axum::http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// A refusal: why (for the metrics) and the answer.
type Refusal = Box<(&'static str, Response)>;

/// Who the request is from, or the response that refuses it.
fn authenticate(identity: &Identity, req: &Request, now: i64) -> Result<Principal, Refusal> {
    let unauthorised = |m: &str| ApiError(StatusCode::UNAUTHORIZED, m.to_owned()).into_response();
    if let Some(value) = req.headers().get(header::AUTHORIZATION) {
        let token = value.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")).ok_or_else(|| {
            Box::new(("unauthenticated", unauthorised("the Authorization header must be `Bearer <access token>`")))
        })?;
        return identity.authenticate_bearer(token.trim(), now).map_err(|e| {
            tracing::info!(reason = %e, "bearer token refused");
            Box::new((
                "unauthenticated",
                unauthorised("the access token is not valid (expired?); refresh it or log in again"),
            ))
        });
    }
    let Some(cookie) = cookie_value(req.headers(), SESSION_COOKIE) else {
        return Err(Box::new((
            "unauthenticated",
            unauthorised("log in first: send `Authorization: Bearer <access token>` (POST /api/v1/auth/login)"),
        )));
    };
    let p = identity.authenticate_cookie(cookie, now).map_err(|e| match e {
        // A storage failure is not a logout.
        crate::identity::AuthError::Storage(why) => {
            tracing::error!(error = %why, "could not check a session");
            Box::new((
                "unavailable",
                ApiError(StatusCode::SERVICE_UNAVAILABLE, "the hub could not check your session; try again".into())
                    .into_response(),
            ))
        }
        e => {
            tracing::info!(reason = %e, "session cookie refused");
            Box::new(("unauthenticated", unauthorised("your session has ended; log in again")))
        }
    })?;
    let safe = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if !safe {
        let token = req.headers().get("x-csrf-token").and_then(|v| v.to_str().ok()).unwrap_or("");
        if !Identity::csrf_ok(&p, token) {
            return Err(Box::new((
                "csrf",
                ApiError(
                    StatusCode::FORBIDDEN,
                    "a request made with the session cookie must carry the session's X-CSRF-Token header".into(),
                )
                .into_response(),
            )));
        }
    }
    Ok(p)
}

/// The front door middleware (see the module docs).
pub async fn middleware(State(state): State<Arc<HubState>>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let door = &state.door;
    let id = request_id(&req);
    let route = req.extensions().get::<MatchedPath>().map(|m| m.as_str().to_owned());
    let route_label = route.clone().unwrap_or_else(|| "unmatched".to_owned());
    let method = req.method().clone();
    // Only the methods HTTP defines get their own label: the metrics stay bounded.
    let method_label = match method.as_str() {
        m @ ("GET" | "HEAD" | "POST" | "PUT" | "PATCH" | "DELETE" | "OPTIONS") => m,
        _ => "OTHER",
    };
    let addr = client_addr(&req, door.limits.trust_forwarded_for);
    let public = route.as_deref().is_none_or(|r| PUBLIC.contains(&r));
    let login_route = route.as_deref().is_some_and(|r| r.starts_with("/api/v1/auth/") && PUBLIC.contains(&r));
    let mut who: Option<(String, String)> = None;

    let response = 'answer: {
        if let Err(wait) = door.check(&door.per_address, &addr) {
            door.metrics.refused("rate_limited");
            break 'answer too_many(wait, "from this address");
        }
        if login_route && let Err(wait) = door.check(&door.logins, &addr) {
            door.metrics.refused("rate_limited");
            break 'answer too_many(wait, "to log in from this address");
        }
        if !public {
            let Some(identity) = state.identity.clone() else {
                break 'answer ApiError(StatusCode::SERVICE_UNAVAILABLE, "logins are not running on this hub".into())
                    .into_response();
            };
            match authenticate(&identity, &req, crate::front_door::now_s()) {
                Ok(p) => {
                    who = Some((p.user.to_string(), p.org.to_string()));
                    let user_key = format!("{}/{}", p.org, p.user);
                    if let Err(wait) = door.check(&door.per_user, &user_key) {
                        door.metrics.refused("rate_limited");
                        break 'answer too_many(wait, "by this user");
                    }
                    // A van's call ticket opens the calls routes and nothing else, whatever
                    // a handler would check.
                    if p.call_case().is_some() && !route.as_deref().is_some_and(|r| r.starts_with(CALL_ROUTES)) {
                        door.metrics.refused("forbidden");
                        break 'answer ApiError(
                            StatusCode::FORBIDDEN,
                            "a van's call ticket opens its case's call and nothing else".into(),
                        )
                        .into_response();
                    }
                    req.extensions_mut().insert(p);
                }
                Err(refusal) => {
                    let (why, resp) = *refusal;
                    door.metrics.refused(why);
                    break 'answer resp;
                }
            }
        }
        as_json_error(next.run(req).await).await
    };

    let mut response = response;
    if let Ok(v) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", v);
    }
    let status = response.status().as_u16();
    let elapsed = started.elapsed().as_secs_f64();
    door.metrics.observe(method_label, &route_label, status, elapsed);
    let (user, org) = who.unwrap_or_default();
    tracing::info!(
        target: "medvan_hub::access",
        request_id = %id,
        method = %method,
        route = %route_label,
        status,
        duration_ms = (elapsed * 1000.0 * 1000.0).round() / 1000.0,
        user = %user,
        org = %org,
        client = %addr,
        "request"
    );
    response
}

/// Rejections by the framework's extractors (a query, path or body that does not parse)
/// come as plain text; every error the hub answers is the documented JSON `{"error": ...}`.
async fn as_json_error(response: Response) -> Response {
    let plain = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("text/plain"));
    if !(response.status().is_client_error() && plain) {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = match axum::body::to_bytes(body, 64 * 1024).await {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(_) => "the request was not understood".to_owned(),
    };
    let mut out = ApiError(parts.status, text).into_response();
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            out.headers_mut().insert(name.clone(), value.clone());
        }
    }
    out
}

/// The authenticated caller, for handlers behind the front door.
#[derive(Debug, Clone)]
pub(crate) struct Caller(pub(crate) Principal);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .map(Caller)
            .ok_or_else(|| ApiError(StatusCode::UNAUTHORIZED, "log in first".into()))
    }
}

/// Refuses a caller whose roles do not allow `p` (403, naming what is missing).
pub(crate) fn require(caller: &Principal, p: Permission) -> Result<(), ApiError> {
    if caller.can(p) {
        return Ok(());
    }
    let roles: Vec<&str> = caller.roles.iter().map(|r| r.name()).collect();
    Err(ApiError(
        StatusCode::FORBIDDEN,
        format!(
            "your roles ({}) do not allow this (it needs the {} permission); ask your organisation's administrator",
            if roles.is_empty() { "none".to_owned() } else { roles.join(", ") },
            serde_json::to_value(p).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
        ),
    ))
}
