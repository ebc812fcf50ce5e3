//! The van's daemon: configuration, the store, and the local API for the touchscreen.
//!
//! The binary (`main.rs`) parses the command line and installs logging; everything it runs
//! is here so that tests drive the same code.

pub mod api;
pub mod calls;
pub mod config;
pub mod crew;
pub mod gps;
pub mod identity;
pub mod recordings;
pub mod sync;
pub mod xray;

use std::future::Future;

use anyhow::Context;
use case_store::{Store, StoreConfig};
use tokio::net::TcpListener;

/// The store settings a config names.
pub fn store_config(config: &config::Config) -> StoreConfig {
    let a = &config.agent;
    let mut c = StoreConfig::new(&a.data_dir, &a.key_file, a.van_id.clone());
    c.max_blob_bytes = a.max_attachment_mib * 1024 * 1024;
    c
}

/// Opens the existing store a config names. A missing store is an error, never a fresh
/// start: see [`init_store`].
pub fn open_store(config: &config::Config) -> anyhow::Result<Store> {
    Store::open(store_config(config))
        .with_context(|| format!("Failed to open the case store in {}", config.agent.data_dir.display()))
}

/// Creates the store a config names (provisioning a new van). Refuses if one exists.
pub fn init_store(config: &config::Config) -> anyhow::Result<()> {
    let mut c = store_config(config);
    if c.data_dir.join("store.id").exists() || c.data_dir.join("cases.db").exists() {
        anyhow::bail!("a case store already exists in {}; nothing was changed", c.data_dir.display());
    }
    c.create_if_missing = true;
    let store = Store::open(c)
        .with_context(|| format!("Failed to create a case store in {}", config.agent.data_dir.display()))?;
    store.close();
    Ok(())
}

/// Enrols this van with the hub using a one-time token, and keeps the identity it gets in
/// the configured identity directory (the key readable by the agent only).
pub async fn enrol(config: &config::Config, token: &str) -> anyhow::Result<()> {
    let hub = config.hub.as_ref().context("the config has no [hub] table: nothing to enrol with")?;
    let addr = tokio::net::lookup_host(&hub.address)
        .await
        .with_context(|| format!("Failed to resolve the hub address {}", hub.address))?
        .next()
        .with_context(|| format!("the hub address {} resolves to nothing", hub.address))?;
    let enrolled = sync_quic::enrol::enrol(addr, &hub.server_name(), token).await.context("Failed to enrol")?;
    identity::store(&hub.identity_dir, &identity::Identity { ca: enrolled.ca, cert: enrolled.cert, key: enrolled.key })
}

/// Starts background sync if the config names a hub and the van is enrolled.
pub async fn start_sync(config: &config::Config, store: &Store) -> anyhow::Result<sync::SyncHandle> {
    start_sync_reporting(config, store, None).await
}

/// [`start_sync`], reporting the van's position from `positions` while connected.
pub async fn start_sync_reporting(
    config: &config::Config,
    store: &Store,
    positions: Option<tokio::sync::watch::Receiver<Option<sync_proto::PositionReport>>>,
) -> anyhow::Result<sync::SyncHandle> {
    let Some(hub) = &config.hub else { return Ok(sync::SyncHandle::not_configured()) };
    let dir = &hub.identity_dir;
    // A damaged identity stops sync, never the agent: the crew keeps recording cases.
    let identity = match identity::load(dir) {
        Ok(Some(identity)) => identity,
        Ok(None) => {
            tracing::warn!(dir = %dir.display(), "this van is not enrolled: sync is off until `edge-agent enrol --token ...`");
            return Ok(sync::SyncHandle::not_configured());
        }
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "this van's identity is unusable; sync is off");
            return Ok(sync::SyncHandle::identity_unusable(format!(
                "this van's identity in {} is unusable ({e:#}); enrol again with `edge-agent enrol --token ...`",
                dir.display()
            )));
        }
    };
    let settings = sync::SyncSettings {
        address: hub.address.clone(),
        server_name: hub.server_name(),
        identity,
        identity_dir: Some(dir.clone()),
        renew_below: None,
        liveness: Default::default(),
        roster_key: crew_key(config)?,
    };
    match sync::spawn_reporting(store.clone(), settings, positions) {
        Ok(handle) => Ok(handle),
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "sync could not start");
            Ok(sync::SyncHandle::identity_unusable(format!(
                "sync could not start ({e:#}); if the van's certificate or key is damaged, enrol again with `edge-agent enrol --token ...`"
            )))
        }
    }
}

/// The PIN key, if this van has one (configured, or systemd's credential).
pub fn crew_key(config: &config::Config) -> anyhow::Result<Option<[u8; 32]>> {
    match config.crew.key_file() {
        Some(path) if path.exists() || config.crew.pin_key_file.is_some() => Ok(Some(crew::load_key(&path)?)),
        _ => {
            tracing::warn!("no PIN key: crew PIN login is off on this van (break-glass still works)");
            Ok(None)
        }
    }
}

/// Starts the X-ray service if the config names a unit.
pub fn start_xray(config: &config::Config, store: &Store) -> anyhow::Result<xray::XrayHandle> {
    let Some(x) = &config.xray else { return Ok(xray::XrayHandle::not_configured()) };
    let detector: Box<dyn xray::detector::Detector> = match x.detector {
        config::DetectorKind::Simulated => {
            Box::new(xray::detector::Simulated::new(x.simulated_size[0], x.simulated_size[1], rand::random()))
        }
        config::DetectorKind::Usb => Box::new(xray::detector::Usb::new()),
    };
    xray::XrayHandle::start(store.clone(), &x.serial_port, detector).context("Failed to start the X-ray service")
}

/// Starts reading the GPS receiver if the config names one.
pub fn start_gps(config: &config::Config, store: &Store) -> anyhow::Result<gps::GpsHandle> {
    let Some(g) = &config.gps else { return Ok(gps::GpsHandle::not_configured()) };
    gps::GpsHandle::start(store.clone(), config.agent.van_id.to_string(), g).context("Failed to start the GPS service")
}

/// Serves the API on `listener` until `shutdown` completes, then closes the store cleanly.
pub async fn serve(
    config: config::Config,
    store: Store,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let limit = usize::try_from(config.agent.max_attachment_mib * 1024 * 1024).unwrap_or(usize::MAX);
    let gps = start_gps(&config, &store)?;
    let sync = start_sync_reporting(&config, &store, Some(gps.positions())).await?;
    let xray = start_xray(&config, &store)?;
    let calls = match &config.calls {
        Some(c) => calls::CallHandle::new(c.clone(), store.clone(), sync.clone())?,
        None => calls::CallHandle::not_configured(),
    };
    let crew = crew::Crew::new(store.clone(), crew_key(&config)?, config.crew.clone());
    let state = api::AppState::new(store.clone(), config.agent.org_id.clone(), limit)
        .with_sync(sync)
        .with_xray(xray.clone())
        .with_gps(gps.clone())
        .with_calls(calls.clone())
        .with_crew(crew);
    let app = api::app(state);
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await.context("Failed to serve the local API")?;
    // A running consult ends, its recording sealed into the case, before the store closes.
    tokio::task::spawn_blocking(move || calls.shutdown()).await.context("Failed to end the video consult")?;
    // Disarm the unit before the store closes.
    let x = xray.clone();
    tokio::task::spawn_blocking(move || x.stop()).await.context("Failed to stop the X-ray service")?;
    // Store the route gathered so far.
    tokio::task::spawn_blocking(move || gps.stop()).await.context("Failed to stop the GPS service")?;
    // Finish queued writes before exiting; everything acknowledged is already durable.
    tokio::task::spawn_blocking(move || store.close()).await.context("Failed to close the store")?;
    Ok(())
}
