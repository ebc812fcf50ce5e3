//! The Medvan hub. Today it starts, reports its health and serves its OpenAPI document;
//! the sync endpoint and the cloud services arrive as their issues land, each as a module
//! with its own routes mounted by [`app`] (see ARCHITECTURE.md for where each goes).

pub mod config;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;

/// The hub's OpenAPI document.
pub const OPENAPI: &str = include_str!("openapi.json");

/// What the hub's handlers share.
#[derive(Debug, Clone)]
pub struct HubState {
    data_dir: PathBuf,
}

impl HubState {
    /// Prepares the data directory and the state over it.
    pub fn open(config: &config::Config) -> anyhow::Result<HubState> {
        let dir = &config.hub.data_dir;
        std::fs::create_dir_all(dir)
            .with_context(|| format!("Failed to create the hub's data directory {}", dir.display()))?;
        Ok(HubState { data_dir: dir.clone() })
    }
}

/// The hub's router.
pub fn app(state: HubState) -> Router {
    Router::new().route("/health", get(health)).route("/openapi.json", get(openapi)).with_state(Arc::new(state))
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
