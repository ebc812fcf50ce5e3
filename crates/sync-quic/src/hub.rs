//! The hub's accept loop: many vans at once, each known by its certificate, each refused
//! at once if revoked, and cut off within moments if revoked while connected.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use sync_proto::{DocId, Replica, Role, Session};
use tokio::sync::broadcast;

use crate::driver::{LocalChange, run_live};
use crate::enrol::{ENROL_ALPN, Enroller};
use crate::identity::{DeviceId, device_of, fingerprint};
use crate::registry::RegistryError;

/// QUIC application close code: the van's certificate was revoked.
pub const CLOSE_REVOKED: u32 = 0x4d01;
/// QUIC application close code: the peer's certificate names no van.
pub const CLOSE_NOT_A_VAN: u32 = 0x4d02;
/// QUIC application close code: the peer took too long (an enrolment that never finished).
pub const CLOSE_TOO_SLOW: u32 = 0x4d03;
/// QUIC application close code: the hub cannot serve right now (its storage failed).
pub const CLOSE_UNAVAILABLE: u32 = 0x4d04;
/// QUIC application close code: the van's certificate is outside its validity period.
pub const CLOSE_EXPIRED: u32 = 0x4d05;

/// Open connections by van, each with its certificate's fingerprint.
type LiveConnections = HashMap<DeviceId, Vec<(String, quinn::Connection)>>;

/// The hub's side of sync.
#[derive(Debug, Clone)]
pub struct HubServer {
    endpoint: quinn::Endpoint,
    enroller: Arc<Enroller>,
    live: Arc<Mutex<LiveConnections>>,
    changes: Option<broadcast::Sender<DocId>>,
    rosters: Option<broadcast::Sender<String>>,
}

/// How long an enrolment may take before the hub hangs up: a client that connects and
/// says nothing must not hold resources.
const ENROL_DEADLINE: Duration = Duration::from_secs(10);
/// How often the hub looks for revocations made elsewhere (the CLI, another hub process).
const REVOCATION_POLL: Duration = Duration::from_millis(250);
/// How many positions of the revocation log are read again at each poll.
const REVOCATION_LOOKBACK: u64 = 64;

impl HubServer {
    /// A hub serving on `endpoint` (built with [`crate::driver::server_config`]); revocations
    /// are kept in the enroller's registry.
    pub fn new(endpoint: quinn::Endpoint, enroller: Arc<Enroller>) -> HubServer {
        HubServer { endpoint, enroller, live: Default::default(), changes: None, rosters: None }
    }

    /// Documents changed on the hub (a doctor's note) are announced on `changes`; each van's
    /// session offers them, and its replica decides whether that van may have them.
    pub fn with_changes(mut self, changes: broadcast::Sender<DocId>) -> HubServer {
        self.changes = Some(changes);
        self
    }

    /// Organisations whose crew roster changed are announced on `rosters`; each van of the
    /// organisation that is connected gets its new roster in its open session.
    pub fn with_roster_changes(mut self, rosters: broadcast::Sender<String>) -> HubServer {
        self.rosters = Some(rosters);
        self
    }

    /// The address the hub listens on.
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.endpoint.local_addr().unwrap_or_else(|_| std::net::SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Revokes every certificate of a van: its open connections are closed now and new ones
    /// are refused.
    pub fn revoke(&self, device: &DeviceId) -> Result<usize, RegistryError> {
        let n = self.enroller.registry().revoke_device(device)?;
        for (_, conn) in lock(&self.live).remove(device).unwrap_or_default() {
            conn.close(CLOSE_REVOKED.into(), b"this van's certificate was revoked");
        }
        tracing::warn!(org = %device.org, van = %device.van, certificates = n, "van revoked");
        Ok(n)
    }

    /// Stops accepting and closes every connection (the hub is shutting down).
    pub fn close(&self) {
        self.endpoint.close(0u32.into(), b"the hub is shutting down");
    }

    /// Number of open van connections.
    pub fn connections(&self) -> usize {
        lock(&self.live).values().map(Vec::len).sum()
    }

    /// Closes open connections whose certificates were revoked elsewhere (by the CLI, or by
    /// another hub process on the same database), until the endpoint closes.
    async fn watch_revocations(self) {
        let mut seen = 0u64;
        loop {
            // Positions become visible in commit order, not number order (two processes
            // revoking at once): look back a little so none is skipped.
            match self.enroller.registry().revocations_after(seen.saturating_sub(REVOCATION_LOOKBACK)) {
                Ok(list) => {
                    for r in list {
                        seen = seen.max(r.seq);
                        let mut live = lock(&self.live);
                        if let Some(conns) = live.get_mut(&r.device) {
                            conns.retain(|(fp, conn)| {
                                if *fp == r.fingerprint {
                                    tracing::warn!(org = %r.device.org, van = %r.device.van, "closed a revoked van's connection");
                                    conn.close(CLOSE_REVOKED.into(), b"this van's certificate was revoked");
                                    false
                                } else {
                                    true
                                }
                            });
                        }
                    }
                }
                Err(e) => tracing::error!(error = %e, "could not read revocations"),
            }
            tokio::time::sleep(REVOCATION_POLL).await;
        }
    }

    /// Accepts vans until the endpoint closes; each connection gets a replica from
    /// `replica_for` (which decides what the van may sync) and its own task.
    pub async fn serve<R, F>(&self, replica_for: F)
    where
        R: Replica + Send + 'static,
        F: Fn(&DeviceId) -> R + Send + Sync + 'static,
    {
        let replica_for = Arc::new(replica_for);
        let watcher = tokio::spawn(self.clone().watch_revocations());
        while let Some(incoming) = self.endpoint.accept().await {
            let hub = self.clone();
            let replica_for = replica_for.clone();
            tokio::spawn(async move {
                let (conn, mut handshake) = match accept(incoming).await {
                    Ok(c) => c,
                    Err(e) => {
                        // Unenrolled, expired or foreign certificates end here.
                        tracing::warn!(error = %e, "refused a connection");
                        return;
                    }
                };
                let peer = peer_certificate(&conn);
                if alpn(&conn).as_deref() == Some(ENROL_ALPN) {
                    let enrol = async {
                        let (mut send, mut recv) = conn.accept_bi().await.map_err(|e| e.to_string())?;
                        crate::enrol::serve(&hub.enroller, peer, &mut send, &mut recv).await.map_err(|e| e.to_string())
                    };
                    match tokio::time::timeout(ENROL_DEADLINE, enrol).await {
                        Ok(Ok(())) => {
                            let _ = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
                        }
                        Ok(Err(e)) => tracing::warn!(error = %e, "enrolment failed"),
                        Err(_) => {
                            tracing::warn!("an enrolment took too long; hung up");
                            conn.close(CLOSE_TOO_SLOW.into(), b"enrolment took too long");
                        }
                    }
                    return;
                }
                let (device, fp) = match peer
                    .as_ref()
                    .ok_or_else(|| "the peer presented no certificate".to_owned())
                    .and_then(|c| device_of(c).map(|d| (d, fingerprint(c))).map_err(|e| e.to_string()))
                {
                    Ok(d) => d,
                    Err(reason) => {
                        tracing::warn!(%reason, "refused a connection");
                        refuse(&conn, handshake, CLOSE_NOT_A_VAN, &reason).await;
                        return;
                    }
                };
                if let Some(reason) = peer.as_ref().and_then(outside_validity) {
                    tracing::warn!(org = %device.org, van = %device.van, %reason, "refused a connection");
                    refuse(&conn, handshake, CLOSE_EXPIRED, &reason).await;
                    return;
                }
                if let Some((code, reason)) = hub.revoked(&device, &fp) {
                    refuse(&conn, handshake.take(), code, reason).await;
                    return;
                }
                lock(&hub.live).entry(device.clone()).or_default().push((fp.clone(), conn.clone()));
                // A revocation between the check and the registration above is caught here.
                if let Some((code, reason)) = hub.revoked(&device, &fp) {
                    refuse(&conn, handshake, code, reason).await;
                    return;
                }
                tracing::info!(org = %device.org, van = %device.van, "van connected");
                let mut replica = replica_for(&device);
                if let Some(key) = peer.as_ref().and_then(|c| crate::identity::public_key(c).ok()) {
                    replica.set_peer_key(&key);
                }
                // `tx` lives as long as the connection, so sessions end only with it.
                let (tx, mut changed) = tokio::sync::mpsc::unbounded_channel();
                let forward = hub.changes.as_ref().map(|c| {
                    let (mut rx, tx) = (c.subscribe(), tx.clone());
                    tokio::spawn(async move {
                        loop {
                            match rx.recv().await {
                                Ok(doc) => {
                                    if tx.send(doc.into()).is_err() {
                                        return;
                                    }
                                }
                                // Fell behind: the next session's inventory catches up.
                                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                                Err(broadcast::error::RecvError::Closed) => return,
                            }
                        }
                    })
                });
                let forward_rosters = hub.rosters.as_ref().map(|c| {
                    let (mut rx, tx, org) = (c.subscribe(), tx.clone(), device.org.clone());
                    tokio::spawn(async move {
                        loop {
                            let changed = match rx.recv().await {
                                Ok(o) => o == org,
                                // Fell behind: look anyway (the roster is only sent if it differs).
                                Err(broadcast::error::RecvError::Lagged(_)) => true,
                                Err(broadcast::error::RecvError::Closed) => return,
                            };
                            if changed && tx.send(LocalChange::Roster).is_err() {
                                return;
                            }
                        }
                    })
                });
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    let mut session = Session::new(Role::Hub);
                    match run_live(&mut session, &mut replica, &mut send, &mut recv, &mut changed, |_| {}).await {
                        // The van hung up: the disconnection is logged below.
                        Ok(()) | Err(crate::driver::DriverError::PeerClosed(_)) => {}
                        Err(e) => {
                            tracing::warn!(org = %device.org, van = %device.van, error = %e, "sync session ended with an error");
                        }
                    }
                }
                for f in [forward, forward_rosters].into_iter().flatten() {
                    f.abort();
                }
                drop(tx);
                tracing::info!(org = %device.org, van = %device.van, reason = %conn.close_reason().map(|r| r.to_string()).unwrap_or_default(), "van disconnected");
                if let Some(list) = lock(&hub.live).get_mut(&device) {
                    list.retain(|(_, c)| c.stable_id() != conn.stable_id());
                }
            });
        }
        watcher.abort();
    }

    /// Why a connection must be refused for revocation: its certificate is revoked, or its
    /// status cannot be read (a hub that cannot tell lets no one in).
    fn revoked(&self, device: &DeviceId, fp: &str) -> Option<(u32, &'static str)> {
        match self.enroller.registry().is_revoked(fp) {
            Ok(false) => None,
            Ok(true) => {
                tracing::warn!(org = %device.org, van = %device.van, "refused a revoked van");
                Some((CLOSE_REVOKED, "this van's certificate was revoked"))
            }
            Err(e) => {
                tracing::error!(error = %e, "could not check revocation; refused the connection");
                Some((CLOSE_UNAVAILABLE, "the hub cannot check certificates right now; try again"))
            }
        }
    }
}

/// Closes a refused connection with its code and reason. A resumed connection may still be
/// in its handshake, where QUIC replaces an application's code with a generic one; waiting
/// for the handshake to end lets the van learn why (revoked, expired), and act on it.
async fn refuse(conn: &quinn::Connection, handshake: Option<quinn::ZeroRttAccepted>, code: u32, reason: &str) {
    if let Some(handshake) = handshake {
        let _ = tokio::time::timeout(Duration::from_secs(2), handshake).await;
    }
    conn.close(code.into(), reason.as_bytes());
}

/// Accepts a connection. A van resuming its TLS session is known from its first flight (the
/// session remembers the certificate its full handshake proved), so its 0-RTT hello is
/// answered at once; anyone else is heard only once the handshake, certificate included,
/// is complete.
///
/// Returns the connection and, for a resumed one, the handshake still under way.
async fn accept(
    incoming: quinn::Incoming,
) -> Result<(quinn::Connection, Option<quinn::ZeroRttAccepted>), quinn::ConnectionError> {
    match incoming.accept()?.into_0rtt() {
        Ok((conn, complete)) if conn.peer_identity().is_some() => Ok((conn, Some(complete))),
        Ok((conn, complete)) => {
            // Resolves when the handshake completes or fails; its value says only whether
            // 0-RTT data was taken.
            complete.await;
            match conn.close_reason() {
                Some(e) => Err(e),
                None => Ok((conn, None)),
            }
        }
        Err(connecting) => Ok((connecting.await?, None)),
    }
}

/// Why a certificate is not valid now, if it is not. The TLS verifier checks this on a full
/// handshake; a resumed session skips the verifier, so the hub checks every connection.
fn outside_validity(cert: &CertificateDer<'static>) -> Option<String> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    match crate::identity::validity(cert) {
        Ok((not_before, _)) if now < not_before => Some("the certificate is not valid yet".into()),
        Ok((_, not_after)) if now >= not_after => Some("the certificate expired; enrol again".into()),
        Ok(_) => None,
        Err(e) => Some(format!("the certificate does not decode: {e}")),
    }
}

fn alpn(conn: &quinn::Connection) -> Option<Vec<u8>> {
    conn.handshake_data()?.downcast::<quinn::crypto::rustls::HandshakeData>().ok()?.protocol
}

fn peer_certificate(conn: &quinn::Connection) -> Option<CertificateDer<'static>> {
    let identity = conn.peer_identity()?;
    let certs = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    certs.first().cloned()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
