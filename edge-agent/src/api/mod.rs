//! The local HTTP API the touchscreen uses. Described by `openapi.json`, served at
//! `/openapi.json`.
//!
//! Every route but health, this document and the two ways in (PIN login and break-glass)
//! needs a crew session: `Authorization: Bearer <token>` from `POST /api/v1/crew/login`.
//! The acting user recorded on every edit and audit entry is the session's. The API listens
//! on loopback only (the config refuses anything else).

mod calls;
mod cases;
mod crew;
mod error;
mod ui;
mod xray;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use case_model::{EditContext, OrgId, Timestamp};
use case_store::Store;

pub(crate) use error::ApiError;

/// The OpenAPI document of this API.
pub const OPENAPI: &str = include_str!("openapi.json");

/// What handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    pub(crate) store: Store,
    pub(crate) sync: crate::sync::SyncHandle,
    pub(crate) org: OrgId,
    pub(crate) max_attachment_bytes: usize,
    pub(crate) xray: crate::xray::XrayHandle,
    pub(crate) gps: crate::gps::GpsHandle,
    pub(crate) calls: crate::calls::CallHandle,
    pub(crate) crew: Arc<crate::crew::Crew>,
}

impl AppState {
    /// State over an open store; new cases belong to `org`.
    pub fn new(store: Store, org: OrgId, max_attachment_bytes: usize) -> AppState {
        AppState {
            org,
            max_attachment_bytes,
            sync: crate::sync::SyncHandle::not_configured(),
            xray: crate::xray::XrayHandle::not_configured(),
            gps: crate::gps::GpsHandle::not_configured(),
            calls: crate::calls::CallHandle::not_configured(),
            crew: Arc::new(crate::crew::Crew::new(store.clone(), None, Default::default())),
            store,
        }
    }

    /// Logs crew in with this service.
    pub fn with_crew(mut self, crew: crate::crew::Crew) -> AppState {
        self.crew = Arc::new(crew);
        self
    }

    /// Drives this X-ray unit at `/api/v1/xray`.
    pub fn with_xray(mut self, xray: crate::xray::XrayHandle) -> AppState {
        self.xray = xray;
        self
    }

    /// Reports this GPS service's status at `/api/v1/gps`.
    pub fn with_gps(mut self, gps: crate::gps::GpsHandle) -> AppState {
        self.gps = gps;
        self
    }

    /// Runs video consults with this service at `/api/v1/call`.
    pub fn with_calls(mut self, calls: crate::calls::CallHandle) -> AppState {
        self.calls = calls;
        self
    }

    /// Reports this sync service's status at `/api/v1/sync`.
    pub fn with_sync(mut self, sync: crate::sync::SyncHandle) -> AppState {
        self.sync = sync;
        self
    }
}

/// The agent's router.
pub fn app(state: AppState) -> Router {
    let limit = state.max_attachment_bytes;
    routes(limit).router.merge(ui::routes()).with_state(Arc::new(state))
}

/// Every path template the agent serves: a test checks each is documented in its OpenAPI
/// document.
#[doc(hidden)]
pub fn served_paths() -> Vec<String> {
    routes(0).paths
}

/// The router before its state, with the paths it was given.
struct Routes {
    router: Router<Arc<AppState>>,
    paths: Vec<String>,
}

impl Routes {
    fn route(mut self, path: &str, methods: axum::routing::MethodRouter<Arc<AppState>>) -> Routes {
        self.router = self.router.route(path, methods);
        self.paths.push(path.to_owned());
        self
    }
}

fn routes(limit: usize) -> Routes {
    let api = Routes { router: Router::new(), paths: Vec::new() }
        .route("/cases", post(cases::create).get(cases::list))
        .route("/cases/{id}", get(cases::read))
        .route("/cases/{id}/edits", post(cases::edit))
        .route("/cases/{id}/conflicts", get(cases::conflicts))
        .route("/cases/{id}/conflicts/resolve", post(cases::resolve))
        .route("/cases/{id}/addenda", post(cases::addendum))
        .route("/cases/{id}/attachments", post(cases::attach).layer(DefaultBodyLimit::max(limit)))
        .route("/cases/{id}/attachments/{sha256}", get(cases::attachment))
        .route("/cases/{id}/history", get(cases::history))
        .route("/cases/{id}/audit", get(cases::audit))
        .route("/audit/verify", get(cases::verify_audit))
        .route("/cases/{id}/call", post(calls::start).delete(calls::stop))
        .route("/cases/{id}/call/watch", post(calls::watch))
        .route("/cases/{id}/call/watch/{session}", axum::routing::delete(calls::unwatch))
        .route("/call", get(calls::status))
        .route("/sync", get(sync_status))
        .route("/gps", get(gps_status))
        .route("/xray", get(xray::status))
        .route("/xray/presets", get(xray::presets))
        .route("/xray/session", axum::routing::put(xray::set_session))
        .route("/xray/arm", post(xray::arm))
        .route("/xray/disarm", post(xray::disarm))
        .route("/xray/confirm", post(xray::press))
        .route("/xray/confirm/{token}/hold", post(xray::hold))
        .route("/xray/confirm/{token}/release", post(xray::release))
        .route("/crew/login", post(crew::login))
        .route("/crew/break-glass", post(crew::break_glass))
        .route("/crew/logout", post(crew::logout))
        .route("/crew/me", get(crew::me))
        .route("/crew/members", get(crew::members));
    let top = Routes { router: Router::new(), paths: Vec::new() }
        .route("/health", get(health))
        .route("/openapi.json", get(openapi));
    let mut paths = top.paths;
    paths.extend(api.paths.iter().map(|p| format!("/api/v1{p}")));
    Routes { router: top.router.nest("/api/v1", api.router), paths }
}

async fn health(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    // Healthy means able to take edits: a store whose writer stopped cannot.
    let writable = state.store.is_writable();
    let status = if writable { axum::http::StatusCode::OK } else { axum::http::StatusCode::SERVICE_UNAVAILABLE };
    let body = serde_json::json!({
        "status": if writable { "ok" } else { "degraded" },
        "service": "edge-agent",
        "version": env!("CARGO_PKG_VERSION"),
        "checks": { "store_writable": writable },
    });
    (status, axum::Json(body))
}

async fn sync_status(State(state): State<Arc<AppState>>, Actor(_ctx): Actor) -> impl IntoResponse {
    axum::Json(state.sync.status())
}

/// The GPS receiver: state, the newest fix, refused lines, the case the route goes to.
async fn gps_status(State(state): State<Arc<AppState>>, Actor(_ctx): Actor) -> impl IntoResponse {
    axum::Json(state.gps.status())
}

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], OPENAPI)
}

/// The acting user and the time of the request.
#[derive(Debug)]
pub(crate) struct Actor(pub(crate) EditContext);

impl FromRequestParts<Arc<AppState>> for Actor {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Self, ApiError> {
        let session = crew::session(parts, state)?;
        Ok(Actor(EditContext { user: session.user, now: now() }))
    }
}

/// The device clock. Van clocks drift; every time recorded says it came from the device.
pub(crate) fn now() -> Timestamp {
    let ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
    Timestamp::from_unix_millis(ms)
}
