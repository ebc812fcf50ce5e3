//! The doctor app's files (`[hub] web_dir`, built from `cloud-sync/web/`): `/` and
//! `/reset-password` (the page the reset mail links to) are the app, `/app/{file}` its
//! script and style. Served with a policy that keeps the page to this hub: nothing is loaded
//! from, sent to or framed by any other site.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::{ApiError, HubState};

/// Its own scripts, styles, data and workers only; images from itself or made in the page;
/// style attributes allowed (no inline script is).
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' blob: data:; \
                   connect-src 'self'; worker-src 'self' blob:; object-src 'none'; base-uri 'none'; \
                   frame-ancestors 'none'; form-action 'self'";

/// The routes (outside the API document: they serve files, not data).
pub(crate) fn routes() -> axum::Router<Arc<HubState>> {
    axum::Router::new().route("/", get(index)).route("/reset-password", get(index)).route("/app/{file}", get(asset))
}

async fn index(State(state): State<Arc<HubState>>) -> Result<Response, ApiError> {
    serve(&state, "index.html").await
}

async fn asset(State(state): State<Arc<HubState>>, Path(file): Path<String>) -> Result<Response, ApiError> {
    serve(&state, &file).await
}

async fn serve(state: &HubState, file: &str) -> Result<Response, ApiError> {
    let Some(dir) = &state.web_dir else {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            "the doctor app is not installed on this hub: build cloud-sync/web (npm run build) and set [hub] web_dir"
                .into(),
        ));
    };
    // Plain file names only: nothing outside the app's folder can be named.
    let content_type = match file.rsplit_once('.').map(|(_, ext)| ext) {
        _ if file.starts_with('.') || !file.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) => None,
        Some("html") => Some("text/html; charset=utf-8"),
        Some("js") => Some("text/javascript; charset=utf-8"),
        Some("css") => Some("text/css; charset=utf-8"),
        Some("map") => Some("application/json"),
        _ => None,
    };
    let not_found = || ApiError(StatusCode::NOT_FOUND, format!("there is no file {file:?} in the doctor app"));
    let content_type = content_type.ok_or_else(not_found)?;
    let path = dir.join(file);
    let bytes = tokio::task::spawn_blocking(move || std::fs::read(path))
        .await
        .map_err(|_| not_found())?
        .map_err(|_| not_found())?;
    let mut r = bytes.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(r)
}
