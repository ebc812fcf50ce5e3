//! The Medvan hub: the vans' sync endpoint, and the case API doctors' tools use.
//!
//! - [`storage`]: one interface, two backends (SQLite with files; PostgreSQL).
//! - [`cases`]: the rules over cases (who may sync, read and edit what), the same on both.
//! - [`identity`]: accounts, roles, logins and tokens.
//! - [`front_door`]: the middleware in front of every route: request ids, rate limits,
//!   authentication, access logs, metrics.
//! - [`fleet`]: the assembly of storage, the fleet CA, enrolment, identity and the QUIC
//!   endpoint.
//! - This module: the HTTP routes ([`app`]): health, the OpenAPI document, the case API.

pub mod calls;
pub mod cases;
pub mod config;
pub mod consults;
pub mod dicom;
mod dicomweb;
pub mod fleet;
pub mod front_door;
pub mod geo;
pub mod identity;
pub mod mail;
pub mod outbound;
pub mod storage;
pub mod van_audit;
mod web;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use case_model::{CaseId, Edit, EditContext, Timestamp};
use tokio::net::TcpListener;

use crate::cases::{CaseError, CaseHub};
use crate::front_door::{Caller, FrontDoor, require};
use crate::identity::Identity;
use crate::identity::roles::Permission;

/// The hub's OpenAPI document.
pub const OPENAPI: &str = include_str!("openapi.json");

/// What the hub's handlers share.
#[derive(Debug, Clone)]
pub struct HubState {
    data_dir: PathBuf,
    public_url: Option<String>,
    cases: Option<Arc<CaseHub>>,
    identity: Option<Arc<Identity>>,
    sso: Arc<identity::sso::Sso>,
    mailer: Option<Arc<mail::Mailer>>,
    consults: consults::ConsultConfig,
    geo: Option<Arc<geo::Geo>>,
    sfu: Option<Arc<calls::Sfu>>,
    web_dir: Option<PathBuf>,
    /// Set when the hub begins to shut down: streams that would never end by themselves
    /// (the event stream) end then, so the graceful shutdown does not wait for them.
    closing: tokio::sync::watch::Sender<bool>,
    door: Arc<FrontDoor>,
}

impl HubState {
    /// Prepares the data directory and the state over it; without a hub (see
    /// [`HubState::with_hub`]) the case API and the logins answer 503.
    pub fn open(config: &config::Config) -> anyhow::Result<HubState> {
        let dir = &config.hub.data_dir;
        std::fs::create_dir_all(dir)
            .with_context(|| format!("Failed to create the hub's data directory {}", dir.display()))?;
        let public_url = config.hub.public_url.as_ref().map(|u| u.trim_end_matches('/').to_owned());
        if let Some(u) = &public_url
            && !(u.starts_with("https://") || u.starts_with("http://"))
        {
            anyhow::bail!("hub.public_url {u:?} must start with https:// (or http:// on a closed network)");
        }
        Ok(HubState {
            data_dir: dir.clone(),
            public_url,
            cases: None,
            identity: None,
            sso: Default::default(),
            mailer: config.mail.as_ref().map(mail::Mailer::new).transpose()?.map(Arc::new),
            consults: config.consults.clone(),
            geo: None,
            sfu: match &config.calls {
                Some(c) => Some(Arc::new(
                    calls::Sfu::start(c.bind, c.advertise)
                        .with_context(|| format!("Failed to start the media server on {} (UDP)", c.bind))?,
                )),
                None => None,
            },
            web_dir: config.hub.web_dir.clone(),
            closing: tokio::sync::watch::channel(false).0,
            door: Arc::new(FrontDoor::new(config.front_door.clone())),
        })
    }

    /// Serves the case API and the logins of `hub`.
    pub fn with_hub(mut self, hub: &fleet::Hub) -> HubState {
        self.cases = Some(hub.cases.clone());
        self.identity = Some(hub.identity.clone());
        self.sso = hub.sso.clone();
        self.geo = Some(hub.geo.clone());
        self
    }
}

/// The hub's router: every route behind the front door.
pub fn app(state: HubState) -> Router {
    let state = Arc::new(state);
    routes()
        .router
        .merge(web::routes())
        .layer(axum::middleware::from_fn_with_state(state.clone(), front_door::middleware))
        .with_state(state)
}

/// The hub's routes without the front door: for the front door's benchmark only.
#[doc(hidden)]
pub fn bare_routes() -> Router<Arc<HubState>> {
    routes().router
}

/// Every path template the hub serves, as registered: a test checks each is documented.
#[doc(hidden)]
pub fn served_paths() -> Vec<&'static str> {
    routes().paths
}

fn routes() -> Routes {
    Routes::default()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .route("/api/v1/cases", get(list_cases))
        .route("/api/v1/cases/{id}", get(read_case))
        .route("/api/v1/cases/{id}/edits", post(edit_case))
        .route("/api/v1/cases/{id}/attachments/{sha256}", get(read_attachment))
        .route("/api/v1/cases/{id}/access-log", get(access_log))
        .merge(identity::http::routes())
        .merge(consults::routes())
        .merge(geo::routes())
        .merge(calls::routes())
        .merge(dicomweb::routes())
}

/// A router that remembers its path templates.
#[derive(Default)]
pub(crate) struct Routes {
    router: Router<Arc<HubState>>,
    paths: Vec<&'static str>,
}

impl Routes {
    pub(crate) fn route(mut self, path: &'static str, methods: axum::routing::MethodRouter<Arc<HubState>>) -> Routes {
        self.router = self.router.route(path, methods);
        self.paths.push(path);
        self
    }

    pub(crate) fn merge(mut self, other: Routes) -> Routes {
        self.router = self.router.merge(other.router);
        self.paths.extend(other.paths);
        self
    }

    /// Applies a layer to the routes so far.
    pub(crate) fn map(mut self, f: impl FnOnce(Router<Arc<HubState>>) -> Router<Arc<HubState>>) -> Routes {
        self.router = f(self.router);
        self
    }
}

/// Serves until `shutdown` completes.
pub async fn serve(
    state: HubState,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let closing = state.closing.clone();
    let shutdown = async move {
        shutdown.await;
        closing.send_replace(true);
    };
    axum::serve(listener, app(state).into_make_service_with_connect_info::<std::net::SocketAddr>())
        .with_graceful_shutdown(shutdown)
        .await
        .context("Failed to serve the hub")
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

async fn metrics(State(state): State<Arc<HubState>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"))],
        state.door.metrics.render(),
    )
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
    api_blocking(move || f().map_err(ApiError::from)).await
}

/// Runs storage work off the async threads; the answer is its result.
pub(crate) async fn api_blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| ApiError(StatusCode::INTERNAL_SERVER_ERROR, "the request failed inside the hub".into()))?
}

async fn list_cases(State(state): State<Arc<HubState>>, Caller(c): Caller) -> Result<Response, ApiError> {
    require(&c, Permission::CaseRead)?;
    let hub = case_hub(&state)?;
    let list = blocking(move || hub.list_cases(&c.user, &c.org)).await?;
    Ok(axum::Json(list).into_response())
}

async fn read_case(
    State(state): State<Arc<HubState>>,
    Caller(c): Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    require(&c, Permission::CaseRead)?;
    let id = case_id(&id)?;
    let hub = case_hub(&state)?;
    let view = blocking(move || hub.read_case(&c.user, &c.org, id)).await?;
    Ok(axum::Json(view).into_response())
}

/// An attachment of a case (an X-ray preview for the doctor's app, a DICOM object...).
async fn read_attachment(
    State(state): State<Arc<HubState>>,
    Caller(c): Caller,
    Path((id, sha)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    require(&c, Permission::ImageRead)?;
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
struct AccessLogQuery {
    #[serde(default)]
    format: Option<String>,
}

/// Who accessed a case: for the organisation's administrators (and auditors).
async fn access_log(
    State(state): State<Arc<HubState>>,
    Caller(c): Caller,
    Path(id): Path<String>,
    axum::extract::Query(q): axum::extract::Query<AccessLogQuery>,
) -> Result<Response, ApiError> {
    require(&c, Permission::AuditRead)?;
    let fhir = match q.format.as_deref() {
        None | Some("json") => false,
        Some("fhir") => true,
        Some(other) => {
            return Err(ApiError(StatusCode::BAD_REQUEST, format!("format {other:?} is not known; use json or fhir")));
        }
    };
    let id = case_id(&id)?;
    let hub = case_hub(&state)?;
    let entries = blocking(move || hub.access_log(&c.user, &c.org, id)).await?;
    if fhir {
        // A FHIR searchset Bundle of AuditEvents, for FHIR tooling.
        let bundle = serde_json::json!({
            "resourceType": "Bundle",
            "type": "searchset",
            "total": entries.len(),
            "entry": entries
                .iter()
                .map(|e| serde_json::json!({ "resource": audit::export::fhir_audit_event(e, "medvan-hub") }))
                .collect::<Vec<_>>(),
        });
        return Ok(([(header::CONTENT_TYPE, HeaderValue::from_static("application/fhir+json"))], bundle.to_string())
            .into_response());
    }
    let list: Vec<serde_json::Value> = entries
        .iter()
        .map(|e| {
            serde_json::json!({
                "seq": e.seq,
                "at": audit::export::ecs(e, "medvan-hub")["@timestamp"],
                "user": e.actor,
                "action": e.action,
                "outcome": e.outcome.as_str(),
                "detail": e.detail,
            })
        })
        .collect();
    Ok(axum::Json(list).into_response())
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EditRequest {
    edits: Vec<Edit>,
}

async fn edit_case(
    State(state): State<Arc<HubState>>,
    Caller(c): Caller,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    require(&c, Permission::CaseWrite)?;
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
    if req.edits.iter().any(|e| matches!(e, Edit::AddTrackPoints { .. })) {
        return Err(ApiError(
            StatusCode::UNPROCESSABLE_ENTITY,
            "the route is recorded by the van's GPS receiver, not through the case API".into(),
        ));
    }
    let hub = case_hub(&state)?;
    let ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
    let ctx = EditContext { user: c.user.clone(), now: Timestamp::from_unix_millis(ms) };
    let view = blocking(move || hub.edit_case(&ctx, &c.org, id, &req.edits)).await?;
    Ok(axum::Json(view).into_response())
}
