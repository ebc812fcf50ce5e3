//! One error type for every handler, turned into a JSON answer that says what was wrong.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use case_store::StoreError;
use serde_json::json;

/// What a handler can fail with.
#[derive(Debug)]
pub(crate) enum ApiError {
    /// The request itself is malformed (bad JSON, bad id, missing header).
    BadRequest(String),
    /// No acting user.
    Unauthenticated(String),
    /// The store refused or failed.
    Store(StoreError),
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::Store(e)
    }
}

impl From<axum::extract::rejection::JsonRejection> for ApiError {
    fn from(r: axum::extract::rejection::JsonRejection) -> Self {
        ApiError::BadRequest(format!("the request body is not acceptable: {}", r.body_text()))
    }
}

impl From<axum::extract::rejection::QueryRejection> for ApiError {
    fn from(r: axum::extract::rejection::QueryRejection) -> Self {
        ApiError::BadRequest(format!("the query string is not acceptable: {}", r.body_text()))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, message) = match self {
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, "bad_request", m),
            ApiError::Unauthenticated(m) => (StatusCode::UNAUTHORIZED, "unauthenticated", m),
            ApiError::Store(e) => {
                let (status, code) = match &e {
                    StoreError::Invalid(b) => match b.error {
                        case_model::EditError::CaseClosed { .. } => (StatusCode::CONFLICT, "case_closed"),
                        case_model::EditError::NotInConflict { .. } => (StatusCode::CONFLICT, "not_in_conflict"),
                        _ => (StatusCode::UNPROCESSABLE_ENTITY, "invalid"),
                    },
                    StoreError::NotFound(_) | StoreError::BlobNotFound { .. } => (StatusCode::NOT_FOUND, "not_found"),
                    StoreError::DiskFull => (StatusCode::INSUFFICIENT_STORAGE, "disk_full"),
                    StoreError::BlobTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
                    StoreError::Closed => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
                    _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
                };
                if status == StatusCode::INTERNAL_SERVER_ERROR {
                    // Details go to the log, not to the client.
                    tracing::error!(error = %e, "request failed");
                    (
                        status,
                        code,
                        "the agent could not complete the request; nothing was changed. See the agent's log."
                            .to_owned(),
                    )
                } else {
                    (status, code, e.to_string())
                }
            }
        };
        (status, Json(json!({ "error": code, "message": message }))).into_response()
    }
}
