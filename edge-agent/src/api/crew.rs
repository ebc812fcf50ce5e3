//! Crew login on the touchscreen: PIN, break-glass, logout, who am I.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::{ApiError, AppState};
use crate::crew::{Crew, CrewError, CrewSession};

fn now_s() -> i64 {
    super::now().unix_millis() / 1000
}

impl From<CrewError> for ApiError {
    fn from(e: CrewError) -> Self {
        match e {
            CrewError::Wrong | CrewError::NoSession => ApiError::Unauthenticated(e.to_string()),
            CrewError::LockedOut(wait) => ApiError::TooMany(e.to_string(), wait),
            CrewError::NoKey => ApiError::Unavailable("no_pin_key", e.to_string()),
            CrewError::Invalid(m) => ApiError::Unprocessable("invalid", m),
            CrewError::Store(s) => ApiError::Store(s),
        }
    }
}

/// The crew session a request carries, or 401.
pub(crate) fn session(parts: &Parts, state: &Arc<AppState>) -> Result<CrewSession, ApiError> {
    let token = bearer(parts)?;
    Ok(state.crew.authenticate(token, now_s())?)
}

fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    let value = parts.headers.get(axum::http::header::AUTHORIZATION).ok_or_else(|| {
        ApiError::Unauthenticated("log in on the touchscreen first (POST /api/v1/crew/login with your PIN)".into())
    })?;
    value.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")).ok_or_else(|| {
        ApiError::Unauthenticated("the Authorization header must be `Bearer <crew session token>`".into())
    })
}

/// Runs crew work that blocks (the PIN check, store writes) off the async threads.
async fn blocking<T: Send + 'static>(
    state: &Arc<AppState>,
    f: impl FnOnce(&Crew) -> Result<T, CrewError> + Send + 'static,
) -> Result<T, ApiError> {
    let crew = state.crew.clone();
    Ok(tokio::task::spawn_blocking(move || f(&crew)).await.map_err(|e| ApiError::Internal(e.to_string()))??)
}

fn answer(status: StatusCode, token: String, s: &CrewSession) -> Response {
    (
        status,
        Json(serde_json::json!({
            "token": token,
            "user": s.user.as_str(),
            "roles": s.roles,
            "expires_at": s.expires_at,
            "break_glass": s.break_glass.is_some(),
        })),
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LoginRequest {
    username: String,
    pin: String,
}

pub(crate) async fn login(
    State(state): State<Arc<AppState>>,
    body: Result<Json<LoginRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = body?;
    let (token, session) = blocking(&state, move |crew| crew.login(&req.username, &req.pin, now_s())).await?;
    Ok(answer(StatusCode::OK, token, &session))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BreakGlassRequest {
    name: String,
    reason: String,
}

pub(crate) async fn break_glass(
    State(state): State<Arc<AppState>>,
    body: Result<Json<BreakGlassRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = body?;
    let (token, session) = blocking(&state, move |crew| crew.break_glass(&req.name, &req.reason, now_s())).await?;
    tracing::warn!(user = %session.user, "break-glass login: flagged for review");
    Ok(answer(StatusCode::CREATED, token, &session))
}

pub(crate) async fn logout(State(state): State<Arc<AppState>>, parts: Parts) -> Result<Response, ApiError> {
    session(&parts, &state)?;
    let token = bearer(&parts)?.to_owned();
    blocking(&state, move |crew| crew.logout(&token, now_s())).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub(crate) async fn me(State(state): State<Arc<AppState>>, parts: Parts) -> Result<Response, ApiError> {
    let s = session(&parts, &state)?;
    Ok(Json(serde_json::json!({
        "user": s.user.as_str(),
        "roles": s.roles,
        "expires_at": s.expires_at,
        "break_glass": s.break_glass.is_some(),
    }))
    .into_response())
}

/// Who can log in on this van: names for the touchscreen's login tiles. It needs no
/// session (it is the way in); it gives names only.
pub(crate) async fn members(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let names = blocking(&state, |c| c.members()).await?;
    let list: Vec<serde_json::Value> = names.into_iter().map(|n| serde_json::json!({ "username": n })).collect();
    Ok(Json(list).into_response())
}
