//! Case handlers: thin wrappers that run store calls off the async runtime.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use case_model::{CaseId, Edit, FieldValue};
use case_store::{CaseFilter, StoreError};
use serde::Deserialize;
use serde_json::json;

use super::{Actor, ApiError, AppState};

type ApiResult<T> = Result<T, ApiError>;

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, StoreError> + Send + 'static) -> ApiResult<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(ApiError::from),
        Err(e) => Err(ApiError::Internal(format!("a store task failed: {e}"))),
    }
}

fn case_id(raw: &str) -> ApiResult<CaseId> {
    CaseId::parse(raw).map_err(|e| ApiError::BadRequest(e.to_string()))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateBody {}

pub(crate) async fn create(State(s): State<Arc<AppState>>, Actor(ctx): Actor, body: Bytes) -> ApiResult<Response> {
    // The body is optional and, for now, an empty object: the case belongs to this van's
    // organisation, and everything else is an edit.
    if !body.is_empty() {
        serde_json::from_slice::<CreateBody>(&body)
            .map_err(|e| ApiError::BadRequest(format!("the request body is not acceptable: {e}")))?;
    }
    let view = blocking(move || s.store.create_case(&ctx, &s.org)).await?;
    Ok((
        StatusCode::CREATED,
        [(
            header::LOCATION,
            HeaderValue::from_str(&format!("/api/v1/cases/{}", view.id)).unwrap_or(HeaderValue::from_static("/")),
        )],
        Json(view),
    )
        .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    status: Option<String>,
    van: Option<String>,
    patient: Option<String>,
    created_after: Option<case_model::Timestamp>,
    created_before: Option<case_model::Timestamp>,
    limit: Option<u32>,
}

pub(crate) async fn list(
    State(s): State<Arc<AppState>>,
    Actor(ctx): Actor,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let Query(q) = q?;
    if let Some(st) = &q.status
        && case_model::codes::CaseStatus::parse(st).is_none()
    {
        return Err(ApiError::BadRequest(format!(
            "status {st:?} is not one of: {}",
            case_model::codes::CaseStatus::expected()
        )));
    }
    let filter = CaseFilter {
        status: q.status,
        van: q.van,
        patient: q.patient,
        created_after: q.created_after.map(|t| t.unix_millis()),
        created_before: q.created_before.map(|t| t.unix_millis()),
        limit: q.limit,
    };
    let cases = blocking(move || s.store.list_cases(&ctx, &filter)).await?;
    Ok(Json(cases).into_response())
}

pub(crate) async fn read(
    State(s): State<Arc<AppState>>,
    Actor(ctx): Actor,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let id = case_id(&id)?;
    let view = blocking(move || s.store.read_case(&ctx, id)).await?;
    Ok(Json(view).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EditBody {
    edits: Vec<Edit>,
}

pub(crate) async fn edit(
    State(s): State<Arc<AppState>>,
    Actor(ctx): Actor,
    Path(id): Path<String>,
    body: Result<Json<EditBody>, JsonRejection>,
) -> ApiResult<Response> {
    let id = case_id(&id)?;
    let Json(body) = body?;
    if body.edits.len() > 200 {
        return Err(ApiError::BadRequest("send at most 200 edits in one request".into()));
    }
    if body.edits.iter().any(|e| matches!(e, Edit::RecordExposure(_))) {
        return Err(ApiError::Unprocessable(
            "invalid",
            "exposures are recorded by the X-ray service (/api/v1/xray), not through the case API".into(),
        ));
    }
    if body.edits.iter().any(|e| matches!(e, Edit::AddTrackPoints { .. })) {
        return Err(ApiError::Unprocessable(
            "invalid",
            "the route is recorded by the van's GPS service, not through the case API".into(),
        ));
    }
    let view = blocking(move || s.store.edit_case_view(&ctx, id, &body.edits)).await?;
    Ok(Json(view).into_response())
}

pub(crate) async fn conflicts(
    State(s): State<Arc<AppState>>,
    Actor(ctx): Actor,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let id = case_id(&id)?;
    let c = blocking(move || s.store.conflicts(&ctx, id)).await?;
    Ok(Json(c).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ResolveBody {
    path: String,
    value: FieldValue,
}

pub(crate) async fn resolve(
    State(s): State<Arc<AppState>>,
    Actor(ctx): Actor,
    Path(id): Path<String>,
    body: Result<Json<ResolveBody>, JsonRejection>,
) -> ApiResult<Response> {
    let id = case_id(&id)?;
    let Json(b) = body?;
    let view =
        blocking(move || s.store.edit_case_view(&ctx, id, &[Edit::ResolveConflict { path: b.path, value: b.value }]))
            .await?;
    Ok(Json(view).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AddendumBody {
    text: String,
}

pub(crate) async fn addendum(
    State(s): State<Arc<AppState>>,
    Actor(ctx): Actor,
    Path(id): Path<String>,
    body: Result<Json<AddendumBody>, JsonRejection>,
) -> ApiResult<Response> {
    let id = case_id(&id)?;
    let Json(b) = body?;
    let view = blocking(move || s.store.edit_case_view(&ctx, id, &[Edit::AddAddendum { text: b.text }])).await?;
    Ok(Json(view).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AttachQuery {
    kind: case_model::codes::AttachmentKind,
    label: Option<String>,
}

pub(crate) async fn attach(
    State(s): State<Arc<AppState>>,
    Actor(ctx): Actor,
    Path(id): Path<String>,
    q: Result<Query<AttachQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let id = case_id(&id)?;
    let Query(q) = q?;
    let body = body.map_err(|r| match r.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::TooLarge(s.max_attachment_bytes),
        _ => ApiError::BadRequest(format!("the attachment could not be read: {}", r.body_text())),
    })?;
    let media_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.contains('/'))
        .ok_or_else(|| {
            ApiError::BadRequest(
                "send the attachment's media type in Content-Type (for example application/dicom)".into(),
            )
        })?
        .to_owned();
    if body.is_empty() {
        return Err(ApiError::BadRequest("the attachment is empty".into()));
    }
    let view = blocking(move || s.store.attach(&ctx, id, &mut body.as_ref(), &media_type, q.kind, q.label)).await?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

pub(crate) async fn attachment(
    State(s): State<Arc<AppState>>,
    Actor(ctx): Actor,
    Path((id, sha)): Path<(String, String)>,
) -> ApiResult<Response> {
    let id = case_id(&id)?;
    let (data, media) = blocking(move || s.store.read_blob(&ctx, id, &sha)).await?;
    let ct = HeaderValue::from_str(&media).unwrap_or(HeaderValue::from_static("application/octet-stream"));
    // Served as a download, never rendered in the app's origin.
    let headers = [
        (header::CONTENT_TYPE, ct),
        (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        (header::CONTENT_DISPOSITION, HeaderValue::from_static("attachment")),
    ];
    Ok((headers, data).into_response())
}

pub(crate) async fn history(
    State(s): State<Arc<AppState>>,
    Actor(ctx): Actor,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let id = case_id(&id)?;
    let h = blocking(move || s.store.history(&ctx, id)).await?;
    Ok(Json(h).into_response())
}

pub(crate) async fn audit(
    State(s): State<Arc<AppState>>,
    Actor(ctx): Actor,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let id = case_id(&id)?;
    let entries = blocking(move || s.store.audit_trail(&ctx, id)).await?;
    Ok(Json(entries).into_response())
}

pub(crate) async fn verify_audit(State(s): State<Arc<AppState>>, Actor(_ctx): Actor) -> ApiResult<Response> {
    let result = tokio::task::spawn_blocking(move || s.store.verify_audit())
        .await
        .map_err(|e| ApiError::Internal(format!("the audit check failed: {e}")))?;
    Ok(match result {
        Ok(head) => Json(json!({ "intact": true, "entries": head.size, "head": head.head })).into_response(),
        Err(case_store::ChainError::Unreadable(reason)) => {
            return Err(ApiError::Internal(format!("the audit log could not be read: {reason}")));
        }
        Err(e) => (
            StatusCode::CONFLICT,
            Json(json!({ "intact": false, "error": "audit_chain_broken", "message": e.to_string() })),
        )
            .into_response(),
    })
}
