//! The local HTTP API the touchscreen uses. Described by `openapi.json`, served at
//! `/openapi.json`.
//!
//! Until crew login lands, the acting user comes from the `X-Medvan-User` header and the
//! API listens on loopback only (the config refuses anything else).

mod cases;
mod error;
mod xray;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use case_model::{EditContext, OrgId, Timestamp, UserId};
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
}

impl AppState {
    /// State over an open store; new cases belong to `org`.
    pub fn new(store: Store, org: OrgId, max_attachment_bytes: usize) -> AppState {
        AppState {
            store,
            org,
            max_attachment_bytes,
            sync: crate::sync::SyncHandle::not_configured(),
            xray: crate::xray::XrayHandle::not_configured(),
        }
    }

    /// Drives this X-ray unit at `/api/v1/xray`.
    pub fn with_xray(mut self, xray: crate::xray::XrayHandle) -> AppState {
        self.xray = xray;
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
    let state = Arc::new(state);
    let api = Router::new()
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
        .route("/sync", get(sync_status))
        .route("/xray", get(xray::status))
        .route("/xray/session", axum::routing::put(xray::set_session))
        .route("/xray/arm", post(xray::arm))
        .route("/xray/disarm", post(xray::disarm))
        .route("/xray/confirm", post(xray::press))
        .route("/xray/confirm/{token}/hold", post(xray::hold))
        .route("/xray/confirm/{token}/release", post(xray::release));
    Router::new()
        .route("/health", get(health))
        .route("/openapi.json", get(openapi))
        .nest("/api/v1", api)
        .with_state(state)
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

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], OPENAPI)
}

/// The acting user and the time of the request.
#[derive(Debug)]
pub(crate) struct Actor(pub(crate) EditContext);

/// The header carrying the acting user until crew login lands.
pub(crate) const USER_HEADER: &str = "x-medvan-user";

impl<S: Send + Sync> FromRequestParts<S> for Actor {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let raw = parts.headers.get(USER_HEADER).ok_or_else(|| {
            ApiError::Unauthenticated(format!("send the acting user's id in the {USER_HEADER} header"))
        })?;
        let text = raw.to_str().map_err(|_| ApiError::Unauthenticated(format!("{USER_HEADER} must be plain ASCII")))?;
        let user = UserId::parse(text).map_err(|e| ApiError::Unauthenticated(e.to_string()))?;
        Ok(Actor(EditContext { user, now: now() }))
    }
}

/// The device clock. Van clocks drift; every time recorded says it came from the device.
pub(crate) fn now() -> Timestamp {
    let ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
    Timestamp::from_unix_millis(ms)
}
