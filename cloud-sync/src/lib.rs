//! The Medvan hub: the vans' sync endpoint, and the case API doctors' tools use.
//!
//! - [`storage`]: one interface, two backends (SQLite with files; PostgreSQL).
//! - [`cases`]: the rules over cases (who may sync, read and edit what), the same on both.
//! - [`fleet`]: the assembly of storage, the fleet CA, enrolment and the QUIC endpoint.
//! - This module: the HTTP front door ([`app`]): health, the OpenAPI document, and the case
//!   API, whose callers are listed in the config by bearer token.

pub mod cases;
pub mod config;
pub mod dicom;
mod dicomweb;
pub mod fleet;
pub mod storage;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use case_model::{CaseId, Edit, EditContext, OrgId, Timestamp, UserId};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;

use crate::cases::{CaseError, CaseHub};

/// The hub's OpenAPI document.
pub const OPENAPI: &str = include_str!("openapi.json");

/// A caller of the case API, as the config names it.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    pub(crate) user: UserId,
    pub(crate) org: OrgId,
    token_sha256: [u8; 32],
}

/// What the hub's handlers share.
#[derive(Debug, Clone)]
pub struct HubState {
    data_dir: PathBuf,
    public_url: Option<String>,
    cases: Option<Arc<CaseHub>>,
    callers: Vec<Caller>,
}

impl HubState {
    /// Prepares the data directory and the state over it; without `cases` the case API
    /// answers 503.
    pub fn open(config: &config::Config) -> anyhow::Result<HubState> {
        let dir = &config.hub.data_dir;
        std::fs::create_dir_all(dir)
            .with_context(|| format!("Failed to create the hub's data directory {}", dir.display()))?;
        let mut callers = Vec::new();
        for u in &config.api_users {
            let token_sha256 = hex::decode(&u.token_sha256)
                .ok()
                .and_then(|b| b.try_into().ok())
                .context("token_sha256 must be 64 hex digits")?;
            callers.push(Caller {
                user: UserId::parse(&u.user).with_context(|| format!("[[api_users]] user {:?}", u.user))?,
                org: OrgId::parse(&u.org).with_context(|| format!("[[api_users]] org {:?}", u.org))?,
                token_sha256,
            });
        }
        let public_url = config.hub.public_url.as_ref().map(|u| u.trim_end_matches('/').to_owned());
        if let Some(u) = &public_url
            && !(u.starts_with("https://") || u.starts_with("http://"))
        {
            anyhow::bail!("hub.public_url {u:?} must start with https:// (or http:// on a closed network)");
        }
        Ok(HubState { data_dir: dir.clone(), public_url, cases: None, callers })
    }

    /// Serves the case API over `cases`.
    pub fn with_cases(mut self, cases: Arc<CaseHub>) -> HubState {
        self.cases = Some(cases);
        self
    }
}

/// The hub's router.
pub fn app(state: HubState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/openapi.json", get(openapi))
        .route("/api/v1/cases", get(list_cases))
        .route("/api/v1/cases/{id}", get(read_case))
        .route("/api/v1/cases/{id}/edits", post(edit_case))
        .route("/api/v1/cases/{id}/attachments/{sha256}", get(read_attachment))
        .merge(dicomweb::routes())
        .with_state(Arc::new(state))
}

/// Serves until `shutdown` completes.
pub async fn serve(
    state: HubState,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    axum::serve(listener, app(state)).with_graceful_shutdown(shutdown).await.context("Failed to serve the hub")
}

async fn health(State(state): State<Arc<HubState>>) -> impl IntoResponse {
    // Healthy means able to store: the data directory must be writable.
    let probe = state.data_dir.join(".health");
    let writable = std::fs::write(&probe, b"ok").and_then(|()| std::fs::remove_file(&probe)).is_ok();
    let status = if writable { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = serde_json::json!({
        "status": if writable { "ok" } else { "degraded" },
        "service": "medvan-hub",
        "version": env!("CARGO_PKG_VERSION"),
        "checks": { "data_dir_writable": writable },
    });
    (status, axum::Json(body))
}

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], OPENAPI)
}

/// An API error: a status and a message saying what was wrong and what to do.
#[derive(Debug)]
pub(crate) struct ApiError(pub(crate) StatusCode, pub(crate) String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.0, axum::Json(serde_json::json!({ "error": self.1 }))).into_response();
        if self.0 == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"medvan-hub\""));
        }
        resp
    }
}

impl From<CaseError> for ApiError {
    fn from(e: CaseError) -> Self {
        match &e {
            CaseError::NotFound(_) | CaseError::NotYetHere(_) => ApiError(StatusCode::NOT_FOUND, e.to_string()),
            CaseError::Refused(_) | CaseError::BadName(_) => ApiError(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
            CaseError::Storage(_) | CaseError::Damaged(..) => {
                tracing::error!(error = %e, "case API failed");
                ApiError(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the hub could not reach its storage; nothing was changed, try again".into(),
                )
            }
        }
    }
}

/// Who is calling, by bearer token.
pub(crate) fn caller<'a>(state: &'a HubState, headers: &HeaderMap) -> Result<&'a Caller, ApiError> {
    let unauthorised = |m: &str| ApiError(StatusCode::UNAUTHORIZED, m.to_owned());
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| unauthorised("send the API token as `Authorization: Bearer <token>`"))?;
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| unauthorised("the Authorization header must be `Bearer <token>`"))?;
    let digest: [u8; 32] = Sha256::digest(token.trim().as_bytes()).into();
    // Comparing digests: a timing difference reveals nothing about a token.
    state
        .callers
        .iter()
        .find(|c| c.token_sha256 == digest)
        .ok_or_else(|| unauthorised("this API token is not known to the hub"))
}

pub(crate) fn case_hub(state: &HubState) -> Result<Arc<CaseHub>, ApiError> {
    state
        .cases
        .clone()
        .ok_or_else(|| ApiError(StatusCode::SERVICE_UNAVAILABLE, "the case API is not running on this hub".into()))
}

fn case_id(s: &str) -> Result<CaseId, ApiError> {
    CaseId::parse(s).map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("{e}; case ids look like 0190a7c4-...")))
}

pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, CaseError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| ApiError(StatusCode::INTERNAL_SERVER_ERROR, "the request failed inside the hub".into()))?
        .map_err(ApiError::from)
}

async fn list_cases(State(state): State<Arc<HubState>>, headers: HeaderMap) -> Result<Response, ApiError> {
    let c = caller(&state, &headers)?.clone();
    let hub = case_hub(&state)?;
    let list = blocking(move || hub.list_cases(&c.user, &c.org)).await?;
    Ok(axum::Json(list).into_response())
}

async fn read_case(
    State(state): State<Arc<HubState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let c = caller(&state, &headers)?.clone();
    let id = case_id(&id)?;
    let hub = case_hub(&state)?;
    let view = blocking(move || hub.read_case(&c.user, &c.org, id)).await?;
    Ok(axum::Json(view).into_response())
}

/// An attachment of a case (an X-ray preview for the doctor's app, a DICOM object...).
async fn read_attachment(
    State(state): State<Arc<HubState>>,
    headers: HeaderMap,
    Path((id, sha)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let c = caller(&state, &headers)?.clone();
    let id = case_id(&id)?;
    let hub = case_hub(&state)?;
    let (data, media) = blocking(move || hub.read_attachment(&c.user, &c.org, id, &sha)).await?;
    let ct = HeaderValue::from_str(&media).unwrap_or(HeaderValue::from_static("application/octet-stream"));
    // Never rendered as a page of the hub's origin.
    let headers = [
        (header::CONTENT_TYPE, ct),
        (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        (header::CONTENT_SECURITY_POLICY, HeaderValue::from_static("default-src 'none'; sandbox")),
        // Patient images: kept by no cache, shared or private.
        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
    ];
    Ok((headers, data).into_response())
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EditRequest {
    edits: Vec<Edit>,
}

async fn edit_case(
    State(state): State<Arc<HubState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let c = caller(&state, &headers)?.clone();
    let id = case_id(&id)?;
    let req: EditRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("the body must be {{\"edits\": [...]}} with edits as documented: {e}"),
        )
    })?;
    if req.edits.is_empty() || req.edits.len() > 200 {
        return Err(ApiError(StatusCode::BAD_REQUEST, "send between 1 and 200 edits in one request".into()));
    }
    if req.edits.iter().any(|e| matches!(e, Edit::RecordExposure(_))) {
        return Err(ApiError(
            StatusCode::UNPROCESSABLE_ENTITY,
            "exposures are recorded by the van's X-ray service, not through the case API".into(),
        ));
    }
    let hub = case_hub(&state)?;
    let ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
    let ctx = EditContext { user: c.user.clone(), now: Timestamp::from_unix_millis(ms) };
    let view = blocking(move || hub.edit_case(&ctx, &c.org, id, &req.edits)).await?;
    Ok(axum::Json(view).into_response())
}
