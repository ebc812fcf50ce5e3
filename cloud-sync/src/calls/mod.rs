//! Live calls: each case has a call, which the van publishes to over WHIP (RFC 9725) and
//! people with access to the case watch over WHEP, through the hub's own small media
//! server (`sfu.rs`, str0m). The hub does the signalling and the authorisation: only a
//! caller of the case's organisation with the case permission joins, every join and leave
//! is audited, and a session can be ended only by whoever opened it. A van calls with a
//! ticket it gets over its sync session (its certificate is the credential): a bearer
//! token for that case's call alone, taken for two minutes (`Identity::issue_call_ticket`).
//!
//! - `POST /api/v1/calls/{case}/whip`: an SDP offer (`application/sdp`) that sends; 201 with
//!   the answer and the session's `Location`.
//! - `POST /api/v1/calls/{case}/whep`: an offer that receives; the same.
//! - `DELETE /api/v1/calls/{case}/sessions/{id}`: ends the session.
//! - `GET /api/v1/calls/{case}`: who is in the call.
//!
//! The media server is per hub process: a deployment with several processes routes a
//! case's calls to one of them (sticky by case id at the load balancer).
//!
//! Trickle ICE and ICE restarts (`PATCH`) are not offered (405): clients send their
//! candidates in the offer, as WHIP allows.

pub mod sfu;

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use case_model::CaseId;
use sync_proto::DocId;

use crate::front_door::{Caller, now_s, require};
use crate::identity::Principal;
use crate::identity::roles::Permission;
use crate::{ApiError, HubState};

pub use sfu::{Participant, Role, Sfu};

/// The `[calls]` config table.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallConfig {
    /// The UDP address the media server binds, like `0.0.0.0:3479`.
    pub bind: std::net::SocketAddr,
    /// The IP address peers send media to (this host's address as they reach it).
    pub advertise: std::net::IpAddr,
}

/// The routes of this module.
pub(crate) fn routes() -> crate::Routes {
    crate::Routes::default()
        .route("/api/v1/calls/{case}", get(participants))
        .route("/api/v1/calls/{case}/whip", post(whip))
        .route("/api/v1/calls/{case}/whep", post(whep))
        .route("/api/v1/calls/{case}/sessions/{id}", delete(leave))
}

fn sfu(state: &HubState) -> Result<Arc<Sfu>, ApiError> {
    state.sfu.clone().ok_or_else(|| {
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "this hub has no media server configured ([calls] in its config)".into(),
        )
    })
}

/// The case must be the caller's organisation's; the access is audited either way.
/// `action` is what the audit log records; `None` checks without recording (reading who is
/// in a call, which names people, not the patient, and which the page asks every few seconds).
async fn authorise(
    state: &HubState,
    p: &Principal,
    case: &str,
    action: Option<&'static str>,
) -> Result<CaseId, ApiError> {
    // A van's call ticket stands in for the case permission, for its one case.
    if p.call_case().is_none() {
        require(p, Permission::CaseRead)?;
    }
    let cases = state
        .cases
        .clone()
        .ok_or_else(|| ApiError(StatusCode::SERVICE_UNAVAILABLE, "this hub is not serving cases".into()))?;
    let storage = state.identity.as_ref().map(|i| i.storage());
    let shown: String = case.chars().take(40).collect();
    let not_found = move || ApiError(StatusCode::NOT_FOUND, format!("there is no case {shown}"));
    let id = CaseId::parse(case).map_err(|_| not_found())?;
    let (org, user, ticket) = (p.org.to_string(), p.user.to_string(), p.call_case());
    tokio::task::spawn_blocking(move || {
        let owner = cases.org_of(DocId(*id.as_bytes())).map_err(ApiError::from)?;
        let ok = owner.as_deref() == Some(org.as_str()) && ticket.is_none_or(|c| c == id);
        if let (Some(storage), Some(action)) = (storage, action) {
            let rec = audit::Record {
                at: now_s() * 1000,
                actor: user,
                action: action.into(),
                case_id: Some(id.to_string()),
                outcome: if ok { audit::Outcome::Allowed } else { audit::Outcome::Refused },
                detail: String::new(),
            };
            storage.audit(&rec).map_err(|e| {
                tracing::error!(error = %e, "could not audit a call");
                ApiError(StatusCode::SERVICE_UNAVAILABLE, "the hub could not record the access; try again".into())
            })?;
        }
        if ok { Ok(id) } else { Err(not_found()) }
    })
    .await
    .map_err(|_| ApiError(StatusCode::INTERNAL_SERVER_ERROR, "the request failed inside the hub".into()))?
}

/// An offer is a few kilobytes; anything larger is not one.
const MAX_OFFER: usize = 64 * 1024;

fn sdp_body(headers: &HeaderMap, body: &[u8]) -> Result<String, ApiError> {
    if body.len() > MAX_OFFER {
        return Err(ApiError(StatusCode::PAYLOAD_TOO_LARGE, format!("an SDP offer is at most {MAX_OFFER} bytes")));
    }
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !ct.starts_with("application/sdp") {
        return Err(ApiError(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send the SDP offer with Content-Type: application/sdp".into(),
        ));
    }
    String::from_utf8(body.to_vec())
        .map_err(|_| ApiError(StatusCode::BAD_REQUEST, "the SDP offer is not UTF-8 text".into()))
}

async fn join(
    state: Arc<HubState>,
    p: Principal,
    case: String,
    headers: HeaderMap,
    body: axum::body::Bytes,
    role: Role,
) -> Result<Response, ApiError> {
    let action = if role == Role::Publisher { "call.publish" } else { "call.watch" };
    if role == Role::Publisher && p.call_case().is_none() {
        require(&p, Permission::CaseWrite)?;
    }
    let id = authorise(&state, &p, &case, Some(action)).await?;
    let sfu = sfu(&state)?;
    let offer = sdp_body(&headers, &body)?;
    let room = id.to_string();
    let who = p.user.to_string();
    let (session, answer) = tokio::task::spawn_blocking(move || sfu.join(&room, &who, role, &offer))
        .await
        .map_err(|_| ApiError(StatusCode::INTERNAL_SERVER_ERROR, "the request failed inside the hub".into()))?
        .map_err(|e| match e {
            sfu::JoinError::Stopped | sfu::JoinError::Full(_) => {
                ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
            }
            _ => ApiError(StatusCode::BAD_REQUEST, e.to_string()),
        })?;
    watch_login(state.clone(), p, id.to_string(), session);
    let location = format!("/api/v1/calls/{id}/sessions/{session}");
    let mut resp = (StatusCode::CREATED, answer).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/sdp"));
    if let Ok(v) = HeaderValue::from_str(&location) {
        h.insert(header::LOCATION, v);
    }
    h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static("Location"));
    Ok(resp)
}

/// A caller's login is looked at again this often while they are in a call.
const LOGIN_RECHECK: std::time::Duration = std::time::Duration::from_secs(10);

/// Takes the caller out of the call when their login ends (they logged out elsewhere, or an
/// administrator disabled them): access is decided for as long as media flows, not only at
/// the join. A storage failure leaves them in (it is not a logout).
fn watch_login(state: Arc<HubState>, p: Principal, room: String, session: sfu::PeerId) {
    let (Some(identity), Some(sfu)) = (state.identity.clone(), state.sfu.clone()) else { return };
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(LOGIN_RECHECK).await;
            if !sfu.has_session(session) {
                return;
            }
            let (id, who) = (identity.clone(), p.clone());
            let stands = tokio::task::spawn_blocking(move || id.still_stands(&who, now_s())).await;
            if !matches!(stands, Ok(Ok(false))) {
                continue;
            }
            if sfu.leave(&room, p.user.as_str(), session) {
                tracing::info!(room = %room, who = %p.user, session, "a caller's login ended; took them out of the call");
                let rec = audit::Record {
                    at: now_s() * 1000,
                    actor: p.user.to_string(),
                    action: "call.leave".into(),
                    case_id: Some(room.clone()),
                    outcome: audit::Outcome::Allowed,
                    detail: "the login ended".into(),
                };
                let storage = identity.storage();
                if let Err(e) = tokio::task::spawn_blocking(move || storage.audit(&rec)).await {
                    tracing::error!(error = %e, "could not audit a call's end");
                }
            }
            return;
        }
    });
}

/// WHIP: the caller publishes (the van's camera and microphone, or a doctor's).
async fn whip(
    State(state): State<Arc<HubState>>,
    Caller(p): Caller,
    Path(case): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    join(state, p, case, headers, body, Role::Publisher).await
}

/// WHEP: the caller watches the call.
async fn whep(
    State(state): State<Arc<HubState>>,
    Caller(p): Caller,
    Path(case): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    join(state, p, case, headers, body, Role::Subscriber).await
}

async fn leave(
    State(state): State<Arc<HubState>>,
    Caller(p): Caller,
    Path((case, session)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let id = authorise(&state, &p, &case, Some("call.leave")).await?;
    let sfu = sfu(&state)?;
    let gone = session.parse().ok().is_some_and(|s| sfu.leave(&id.to_string(), p.user.as_str(), s));
    if !gone {
        return Err(ApiError(StatusCode::NOT_FOUND, "no such session of yours in this call".into()));
    }
    Ok(StatusCode::OK.into_response())
}

/// Who is in the case's call.
async fn participants(
    State(state): State<Arc<HubState>>,
    Caller(p): Caller,
    Path(case): Path<String>,
) -> Result<Response, ApiError> {
    let id = authorise(&state, &p, &case, None).await?;
    let sfu = sfu(&state)?;
    Ok(axum::Json(sfu.participants(&id.to_string())).into_response())
}
