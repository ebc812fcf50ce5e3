//! The X-ray routes: set up, arm, hold to expose. The service (`crate::xray`) passes each
//! action to the safety controller; nothing here decides to fire.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use case_model::CaseId;
use serde::Deserialize;
use serde_json::json;

use super::{Actor, ApiError, AppState};
use crate::xray::{SessionRequest, XrayError};

type ApiResult<T> = Result<T, ApiError>;

impl From<XrayError> for ApiError {
    fn from(e: XrayError) -> Self {
        match e {
            XrayError::NotConfigured => ApiError::Unavailable("xray_not_configured", e.to_string()),
            XrayError::Invalid(m) => ApiError::Unprocessable("invalid", m),
            XrayError::Refused(m) => ApiError::Conflict("refused", m),
            XrayError::Store(s) => ApiError::Store(s),
        }
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, XrayError> + Send + 'static) -> ApiResult<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(ApiError::from),
        Err(e) => Err(ApiError::Internal(format!("an X-ray task failed: {e}"))),
    }
}

pub(crate) async fn status(State(s): State<Arc<AppState>>, Actor(_ctx): Actor) -> impl IntoResponse {
    Json(s.xray.status())
}

/// The technique presets by body part and view.
pub(crate) async fn presets(Actor(_ctx): Actor) -> impl IntoResponse {
    Json(crate::xray::presets::PRESETS)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SessionBody {
    case_id: String,
    body_part: String,
    view: String,
    #[serde(default)]
    laterality: Option<String>,
    kv: f64,
    mas: f64,
    ms: f64,
}

pub(crate) async fn set_session(
    State(s): State<Arc<AppState>>,
    Actor(ctx): Actor,
    body: Result<Json<SessionBody>, JsonRejection>,
) -> ApiResult<Response> {
    let Json(b) = body?;
    let case_id = CaseId::parse(&b.case_id).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let req = SessionRequest {
        case_id,
        body_part: b.body_part,
        view: b.view,
        laterality: b.laterality,
        kv: b.kv,
        mas: b.mas,
        ms: b.ms,
    };
    let x = s.xray.clone();
    let status = blocking(move || x.set_session(&ctx, req)).await?;
    Ok(Json(status).into_response())
}

pub(crate) async fn arm(State(s): State<Arc<AppState>>, Actor(_ctx): Actor) -> ApiResult<Response> {
    let x = s.xray.clone();
    Ok(Json(blocking(move || x.arm()).await?).into_response())
}

pub(crate) async fn disarm(State(s): State<Arc<AppState>>, Actor(_ctx): Actor) -> ApiResult<Response> {
    let x = s.xray.clone();
    Ok(Json(blocking(move || x.disarm()).await?).into_response())
}

pub(crate) async fn press(State(s): State<Arc<AppState>>, Actor(ctx): Actor) -> ApiResult<Response> {
    let x = s.xray.clone();
    let (token, exposure_id, status) = blocking(move || x.press(&ctx)).await?;
    // The token is a string: a u64 does not survive a JavaScript number.
    let body = json!({ "token": format!("{token:016x}"), "exposure_id": exposure_id, "status": status });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

fn token(raw: &str) -> ApiResult<u64> {
    u64::from_str_radix(raw, 16)
        .ok()
        .filter(|_| raw.len() == 16)
        .ok_or_else(|| ApiError::BadRequest("the token is the 16 hex digits the press returned".into()))
}

pub(crate) async fn hold(
    State(s): State<Arc<AppState>>,
    Actor(_ctx): Actor,
    Path(raw): Path<String>,
) -> ApiResult<Response> {
    s.xray.hold(token(&raw)?)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub(crate) async fn release(
    State(s): State<Arc<AppState>>,
    Actor(_ctx): Actor,
    Path(raw): Path<String>,
) -> ApiResult<Response> {
    s.xray.release(token(&raw)?)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
