//! One error type for every handler, turned into a JSON answer that says what was wrong.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use case_model::EditError;
use case_store::StoreError;
use serde_json::json;

/// What a handler can fail with.
#[derive(Debug)]
pub(crate) enum ApiError {
    /// The request itself is malformed (bad JSON, bad id, missing header).
    BadRequest(String),
    /// No acting user.
    Unauthenticated(String),
    /// A body over the size limit (bytes).
    TooLarge(usize),
    /// Too many attempts: wait this many seconds.
    TooMany(String, i64),
    /// A bug or an unexpected failure: logged, answered with a generic message.
    Internal(String),
    /// The store refused or failed.
    Store(StoreError),
    /// The action conflicts with the state of things (code, message).
    Conflict(&'static str, String),
    /// Well-formed but not acceptable (code, message).
    Unprocessable(&'static str, String),
    /// Not available on this van (code, message).
    Unavailable(&'static str, String),
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

const INTERNAL: &str = "the agent could not complete the request, and it may not have been saved; reload the case before retrying. Details are in the agent's log.";

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::TooMany(message, wait) = self {
            let body = serde_json::json!({ "error": "too_many_attempts", "message": message });
            let mut r = (StatusCode::TOO_MANY_REQUESTS, axum::Json(body)).into_response();
            r.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from(wait.max(1) as u64));
            return r;
        }
        let (status, code, message) = match self {
            ApiError::TooMany(..) => unreachable!("answered above"),
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, "bad_request", m),
            ApiError::Unauthenticated(m) => (StatusCode::UNAUTHORIZED, "unauthenticated", m),
            ApiError::Conflict(code, m) => (StatusCode::CONFLICT, code, m),
            ApiError::Unprocessable(code, m) => (StatusCode::UNPROCESSABLE_ENTITY, code, m),
            ApiError::Unavailable(code, m) => (StatusCode::SERVICE_UNAVAILABLE, code, m),
            ApiError::TooLarge(limit) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!(
                    "the attachment is larger than this van accepts ({} MiB; agent.max_attachment_mib)",
                    limit / (1024 * 1024)
                ),
            ),
            ApiError::Internal(detail) => {
                tracing::error!(error = %detail, "request failed");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal", INTERNAL.to_owned())
            }
            ApiError::Store(e) => {
                let (status, code) = match &e {
                    StoreError::Invalid(b) => match b.error {
                        EditError::CaseClosed { .. } | EditError::UnresolvedConflicts(_) => {
                            (StatusCode::CONFLICT, "case_closed")
                        }
                        EditError::NotInConflict { .. } => (StatusCode::CONFLICT, "not_in_conflict"),
                        EditError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
                        _ => (StatusCode::UNPROCESSABLE_ENTITY, "invalid"),
                    },
                    StoreError::NotFound(_) | StoreError::BlobNotFound { .. } => (StatusCode::NOT_FOUND, "not_found"),
                    StoreError::DiskFull => (StatusCode::INSUFFICIENT_STORAGE, "disk_full"),
                    StoreError::BlobTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
                    StoreError::Closed => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
                    // Damage the crew or support can act on: say what it is.
                    StoreError::Load { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "case_damaged"),
                    StoreError::BlobCorrupt { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "attachment_damaged"),
                    StoreError::Uncertain(_) => (StatusCode::INTERNAL_SERVER_ERROR, "outcome_unknown"),
                    _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
                };
                if code == "internal" {
                    // Details go to the log, not to the client.
                    tracing::error!(error = %e, "request failed");
                    (status, code, INTERNAL.to_owned())
                } else {
                    if status == StatusCode::INTERNAL_SERVER_ERROR {
                        tracing::error!(error = %e, "request failed");
                    }
                    (status, code, e.to_string())
                }
            }
        };
        (status, Json(json!({ "error": code, "message": message }))).into_response()
    }
}
