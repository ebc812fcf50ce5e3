//! The hub's accept loop: many vans at once, each known by its certificate, each refused
//! at once if revoked, and cut off within moments if revoked while connected.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use sync_proto::{Replica, Role, Session};

use crate::driver::run_live;
use crate::enrol::{ENROL_ALPN, Enroller};
use crate::identity::{DeviceId, device_of};

/// QUIC application close code: the van's certificate was revoked.
pub const CLOSE_REVOKED: u32 = 0x4d01;
/// QUIC application close code: the peer's certificate names no van.
pub const CLOSE_NOT_A_VAN: u32 = 0x4d02;

/// The hub's side of sync.
#[derive(Debug, Clone)]
pub struct HubServer {
    endpoint: quinn::Endpoint,
    enroller: Arc<Enroller>,
    revoked: Arc<Mutex<HashSet<DeviceId>>>,
    live: Arc<Mutex<HashMap<DeviceId, Vec<quinn::Connection>>>>,
}

impl HubServer {
    /// A hub serving on `endpoint` (built with [`crate::driver::server_config`]).
    pub fn new(endpoint: quinn::Endpoint, enroller: Arc<Enroller>) -> HubServer {
        HubServer { endpoint, enroller, revoked: Default::default(), live: Default::default() }
    }

    /// The address the hub listens on.
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.endpoint.local_addr().unwrap_or_else(|_| std::net::SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Revokes a van: its open connections are closed now and new ones are refused.
    pub fn revoke(&self, device: &DeviceId) {
        lock(&self.revoked).insert(device.clone());
        for conn in lock(&self.live).remove(device).unwrap_or_default() {
            conn.close(CLOSE_REVOKED.into(), b"this van's certificate was revoked");
        }
        tracing::warn!(org = %device.org, van = %device.van, "van revoked");
    }

    /// Whether a van is revoked.
    pub fn is_revoked(&self, device: &DeviceId) -> bool {
        lock(&self.revoked).contains(device)
    }

    /// Accepts vans until the endpoint closes; each connection gets a replica from
    /// `replica_for` (which decides what the van may sync) and its own task.
    pub async fn serve<R, F>(&self, replica_for: F)
    where
        R: Replica + Send + 'static,
        F: Fn(&DeviceId) -> R + Send + Sync + 'static,
    {
        let replica_for = Arc::new(replica_for);
        while let Some(incoming) = self.endpoint.accept().await {
            let hub = self.clone();
            let replica_for = replica_for.clone();
            tokio::spawn(async move {
                let conn = match incoming.await {
                    Ok(c) => c,
                    Err(e) => {
                        // Unenrolled, expired or foreign certificates end here.
                        tracing::warn!(error = %e, "refused a connection");
                        return;
                    }
                };
                if alpn(&conn).as_deref() == Some(ENROL_ALPN) {
                    if let Ok((mut send, mut recv)) = conn.accept_bi().await
                        && let Err(e) = crate::enrol::serve(&hub.enroller, &mut send, &mut recv).await
                    {
                        tracing::warn!(error = %e, "enrolment failed");
                    }
                    let _ = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
                    return;
                }
                let device = match peer_device(&conn) {
                    Ok(d) => d,
                    Err(reason) => {
                        tracing::warn!(%reason, "refused a connection");
                        conn.close(CLOSE_NOT_A_VAN.into(), reason.as_bytes());
                        return;
                    }
                };
                if hub.is_revoked(&device) {
                    tracing::warn!(org = %device.org, van = %device.van, "refused a revoked van");
                    conn.close(CLOSE_REVOKED.into(), b"this van's certificate was revoked");
                    return;
                }
                lock(&hub.live).entry(device.clone()).or_default().push(conn.clone());
                // A revocation between the check and the registration above is caught here.
                if hub.is_revoked(&device) {
                    conn.close(CLOSE_REVOKED.into(), b"this van's certificate was revoked");
                }
                let mut replica = replica_for(&device);
                // Hub-side changes (a doctor's note) will be fed here once the hub's
                // storage notifies; until then the session serves what the van asks.
                let (_changes, mut changed) = tokio::sync::mpsc::unbounded_channel();
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    let mut session = Session::new(Role::Hub);
                    if let Err(e) =
                        run_live(&mut session, &mut replica, &mut send, &mut recv, &mut changed, |_| {}).await
                    {
                        tracing::warn!(org = %device.org, van = %device.van, error = %e, "sync session ended with an error");
                    }
                }
                if let Some(list) = lock(&hub.live).get_mut(&device) {
                    list.retain(|c| c.stable_id() != conn.stable_id());
                }
            });
        }
    }
}

fn alpn(conn: &quinn::Connection) -> Option<Vec<u8>> {
    conn.handshake_data()?.downcast::<quinn::crypto::rustls::HandshakeData>().ok()?.protocol
}

fn peer_device(conn: &quinn::Connection) -> Result<DeviceId, String> {
    let identity = conn.peer_identity().ok_or("the peer presented no certificate")?;
    let certs = identity.downcast::<Vec<CertificateDer<'static>>>().map_err(|_| "unexpected peer identity")?;
    let leaf = certs.first().ok_or("the peer presented no certificate")?;
    device_of(leaf).map_err(|e| e.to_string())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
