//! The video consult routes: start and end the case's live call, see how it goes, and
//! relay the touchscreen's WHEP offer so it plays the other parties (`crate::calls`).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use case_model::{CaseId, EditContext};

use super::{Actor, ApiError, AppState};
use crate::calls::CallError;
use crate::sync::TicketError;

type ApiResult<T> = Result<T, ApiError>;

impl From<CallError> for ApiError {
    fn from(e: CallError) -> Self {
        let m = e.to_string();
        match e {
            CallError::NotConfigured => ApiError::Unavailable("calls_not_configured", m),
            CallError::Busy(_) => ApiError::Conflict("call_running", m),
            CallError::NotRunning | CallError::NotWatching => ApiError::Conflict("no_call", m),
            CallError::Ticket(TicketError::NotConfigured | TicketError::Offline) => ApiError::Unavailable("offline", m),
            CallError::Ticket(TicketError::Refused(_)) => ApiError::Conflict("refused_by_hub", m),
            CallError::Media(_) => ApiError::Unavailable("media", m),
        }
    }
}

/// The case, read (and so audited) as the acting user: a call is about a case this van holds.
async fn the_case(s: &Arc<AppState>, ctx: &EditContext, raw: &str) -> ApiResult<CaseId> {
    let id = CaseId::parse(raw).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let (store, ctx) = (s.store.clone(), ctx.clone());
    tokio::task::spawn_blocking(move || store.read_case(&ctx, id).map(|_| id))
        .await
        .map_err(|e| ApiError::Internal(format!("a case read failed: {e}")))?
        .map_err(ApiError::from)
}

async fn record(s: &Arc<AppState>, ctx: &EditContext, action: &'static str, case: CaseId, outcome: audit::Outcome) {
    let (store, ctx) = (s.store.clone(), ctx.clone());
    let done =
        tokio::task::spawn_blocking(move || store.record_case_event(&ctx, case, action, outcome, String::new())).await;
    if !matches!(done, Ok(Ok(()))) {
        tracing::error!(action, "could not record a video consult in the audit log");
    }
}

/// `GET /api/v1/call`: the call now, or the last one.
pub(crate) async fn status(State(s): State<Arc<AppState>>, Actor(_ctx): Actor) -> impl IntoResponse {
    Json(s.calls.status())
}

/// `POST /api/v1/cases/{id}/call`: starts the case's video consult.
pub(crate) async fn start(
    State(s): State<Arc<AppState>>,
    Actor(ctx): Actor,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let case = the_case(&s, &ctx, &id).await?;
    match s.calls.start(&ctx, case).await {
        Ok(view) => {
            record(&s, &ctx, "call.start", case, audit::Outcome::Allowed).await;
            Ok((StatusCode::CREATED, Json(view)).into_response())
        }
        Err(e) => {
            record(&s, &ctx, "call.start", case, audit::Outcome::Refused).await;
            Err(e.into())
        }
    }
}

/// `DELETE /api/v1/cases/{id}/call`: ends it; the recording is in the case when this answers.
pub(crate) async fn stop(
    State(s): State<Arc<AppState>>,
    Actor(ctx): Actor,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let case = the_case(&s, &ctx, &id).await?;
    let view = s.calls.stop(case).await?;
    record(&s, &ctx, "call.end", case, audit::Outcome::Allowed).await;
    Ok(Json(view).into_response())
}

/// `POST /api/v1/cases/{id}/call/watch`: the touchscreen's WHEP offer (`application/sdp`),
/// relayed to the hub; 201 with the answer and a `Location` to end it with.
pub(crate) async fn watch(
    State(s): State<Arc<AppState>>,
    Actor(ctx): Actor,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    let case = the_case(&s, &ctx, &id).await?;
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !ct.starts_with("application/sdp") {
        return Err(ApiError::BadRequest("send the SDP offer with Content-Type: application/sdp".into()));
    }
    if body.len() > 64 * 1024 {
        return Err(ApiError::BadRequest("an SDP offer is at most 64 KiB".into()));
    }
    let offer =
        String::from_utf8(body.to_vec()).map_err(|_| ApiError::BadRequest("the SDP offer is not UTF-8 text".into()))?;
    let (answer, session) = s.calls.watch(case, offer).await?;
    record(&s, &ctx, "call.watch", case, audit::Outcome::Allowed).await;
    let mut resp = (StatusCode::CREATED, answer).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/sdp"));
    if let Ok(v) = HeaderValue::from_str(&format!("/api/v1/cases/{case}/call/watch/{session}")) {
        h.insert(header::LOCATION, v);
    }
    Ok(resp)
}

/// `DELETE /api/v1/cases/{id}/call/watch/{session}`: the touchscreen stops playing.
pub(crate) async fn unwatch(
    State(s): State<Arc<AppState>>,
    Actor(ctx): Actor,
    Path((id, session)): Path<(String, String)>,
) -> ApiResult<Response> {
    let case = the_case(&s, &ctx, &id).await?;
    let session = session.parse().map_err(|_| ApiError::BadRequest("the session is a number".into()))?;
    s.calls.unwatch(case, session).await?;
    Ok(StatusCode::OK.into_response())
}
