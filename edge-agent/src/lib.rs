//! The van's daemon: configuration, the store, and the local API for the touchscreen.
//!
//! The binary (`main.rs`) parses the command line and installs logging; everything it runs
//! is here so that tests drive the same code.

pub mod api;
pub mod config;

use std::future::Future;

use anyhow::Context;
use case_store::{Store, StoreConfig};
use tokio::net::TcpListener;

/// Opens the store a config names.
pub fn open_store(config: &config::Config) -> anyhow::Result<Store> {
    let a = &config.agent;
    let store_config = StoreConfig::new(&a.data_dir, &a.key_file, a.van_id.clone());
    Store::open(store_config).with_context(|| format!("Failed to open the case store in {}", a.data_dir.display()))
}

/// Serves the API on `listener` until `shutdown` completes, then closes the store cleanly.
pub async fn serve(
    config: config::Config,
    store: Store,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let state = api::AppState::new(
        store.clone(),
        config.agent.org_id.clone(),
        (config.agent.max_attachment_mib * 1024 * 1024) as usize,
    );
    let app = api::app(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .context("Failed to serve the local API")?;
    // Finish queued writes before exiting; everything acknowledged is already durable.
    tokio::task::spawn_blocking(move || store.close())
        .await
        .context("Failed to close the store")?;
    Ok(())
}
