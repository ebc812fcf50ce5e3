//! QUIC configurations and the loop that carries a sync session over one stream.

use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sync_proto::frame::{Decoder, FrameError, encode};
use sync_proto::{Replica, Session, SyncError};

/// The ALPN protocol id of Medvan sync.
pub const ALPN: &[u8] = b"medvan-sync/1";

/// How fast a dead link is noticed. A cell modem in a tunnel drops packets silently; keep-
/// alives make the connection fail after `idle_timeout` of silence instead of hanging, so
/// the van reconnects on its own.
#[derive(Debug, Clone, Copy)]
pub struct Liveness {
    /// How often to send a keep-alive when nothing else is sent.
    pub keep_alive: Duration,
    /// Silence after which the connection is declared dead.
    pub idle_timeout: Duration,
}

impl Default for Liveness {
    fn default() -> Self {
        Liveness { keep_alive: Duration::from_secs(2), idle_timeout: Duration::from_secs(10) }
    }
}

fn transport(liveness: Liveness) -> Result<Arc<quinn::TransportConfig>, DriverError> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(liveness.keep_alive));
    t.max_idle_timeout(Some(
        liveness.idle_timeout.try_into().map_err(|_| DriverError::Tls("idle timeout too long".into()))?,
    ));
    Ok(Arc::new(t))
}

/// Why a configuration could not be built or a session could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DriverError {
    /// TLS configuration failed (a bad certificate or key).
    #[error("TLS configuration failed: {0}")]
    Tls(String),
    /// The connection or stream failed.
    #[error("the connection failed: {0}")]
    Connection(String),
    /// The peer sent bytes that are not protocol messages.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The protocol ended the session.
    #[error(transparent)]
    Sync(#[from] SyncError),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The hub's endpoint configuration. Clients presenting a certificate must present one
/// from `ca`; clients with none get in only to enrol (the hub closes a sync connection
/// without a certificate). The chain sent includes the CA, so a van holding only the CA's
/// fingerprint (from its enrolment token) can check it.
pub fn server_config(
    ca: &CertificateDer<'static>,
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    liveness: Liveness,
) -> Result<quinn::ServerConfig, DriverError> {
    let tls = |e: &dyn std::fmt::Display| DriverError::Tls(e.to_string());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).map_err(|e| tls(&e))?;
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .allow_unauthenticated()
        .build()
        .map_err(|e| tls(&e))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| tls(&e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![cert, ca.clone()], key)
        .map_err(|e| tls(&e))?;
    config.alpn_protocols = vec![ALPN.to_vec(), crate::enrol::ENROL_ALPN.to_vec()];
    let quic = QuicServerConfig::try_from(config).map_err(|e| tls(&e))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic));
    server.transport_config(transport(liveness)?);
    Ok(server)
}

/// A van's client configuration: it trusts only the pinned fleet CA and presents its
/// device certificate.
pub fn client_config(
    ca: &CertificateDer<'static>,
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    liveness: Liveness,
) -> Result<quinn::ClientConfig, DriverError> {
    let tls = |e: &dyn std::fmt::Display| DriverError::Tls(e.to_string());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).map_err(|e| tls(&e))?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| tls(&e))?
        .with_root_certificates(roots)
        .with_client_auth_cert(vec![cert], key)
        .map_err(|e| tls(&e))?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    let quic = QuicClientConfig::try_from(config).map_err(|e| tls(&e))?;
    let mut client = quinn::ClientConfig::new(Arc::new(quic));
    client.transport_config(transport(liveness)?);
    Ok(client)
}

/// Carries `session` over one bidirectional stream until the peer finishes it, or until
/// both directions have been quiet for `quiet` with nothing left to send (then this side
/// finishes its half).
pub async fn run(
    session: &mut Session,
    replica: &mut impl Replica,
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    quiet: Duration,
) -> Result<(), DriverError> {
    let conn = |e: &dyn std::fmt::Display| DriverError::Connection(e.to_string());
    let mut decoder = Decoder::default();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        while let Some(m) = session.poll_transmit(replica) {
            send.write_all(&encode(&m)).await.map_err(|e| conn(&e))?;
        }
        if session.is_closed() {
            let _ = send.finish();
            return Ok(());
        }
        match tokio::time::timeout(quiet, recv.read(&mut buf)).await {
            Err(_) if session.is_idle() => {
                // Both sides quiet: finish this half, then wait for the peer to finish its
                // own, so closing the connection cannot cut off anything it still sends.
                let _ = send.finish();
                let drained = tokio::time::timeout(quiet * 4, async {
                    while let Ok(Some(n)) = recv.read(&mut buf).await {
                        decoder.push(&buf[..n]);
                    }
                })
                .await;
                if drained.is_err() {
                    tracing::debug!("the peer did not finish its half of the stream in time");
                }
                while let Some(m) = decoder.next_message()? {
                    session.handle(m, replica)?;
                }
                return Ok(());
            }
            Err(_) => {}
            Ok(Ok(Some(n))) => {
                decoder.push(&buf[..n]);
                while let Some(m) = decoder.next_message()? {
                    session.handle(m, replica)?;
                }
            }
            Ok(Ok(None)) => {
                let _ = send.finish();
                return Ok(());
            }
            Ok(Err(e)) => return Err(conn(&e)),
        }
    }
}

/// What a live session reports as it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiveState {
    /// Messages are waiting to be sent or answers are expected.
    Syncing,
    /// Nothing waits: everything local has been offered to the peer.
    Idle,
}

/// Carries `session` over one stream for as long as the connection lives, offering each
/// local change as it happens (`local` yields the documents that changed). Returns when
/// the peer finishes, `local` closes, or the connection dies (a dead link is noticed by
/// the transport's idle timeout, see [`Liveness`]).
pub async fn run_live(
    session: &mut Session,
    replica: &mut impl Replica,
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    local: &mut tokio::sync::mpsc::UnboundedReceiver<sync_proto::DocId>,
    mut report: impl FnMut(LiveState),
) -> Result<(), DriverError> {
    let conn = |e: &dyn std::fmt::Display| DriverError::Connection(e.to_string());
    let mut decoder = Decoder::default();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        while let Some(m) = session.poll_transmit(replica) {
            report(LiveState::Syncing);
            send.write_all(&encode(&m)).await.map_err(|e| conn(&e))?;
        }
        if session.is_closed() {
            let _ = send.finish();
            return Ok(());
        }
        if session.is_idle() {
            report(LiveState::Idle);
        }
        tokio::select! {
            read = recv.read(&mut buf) => match read {
                Ok(Some(n)) => {
                    decoder.push(&buf[..n]);
                    while let Some(m) = decoder.next_message()? {
                        session.handle(m, replica)?;
                    }
                }
                Ok(None) => {
                    let _ = send.finish();
                    return Ok(());
                }
                Err(e) => return Err(conn(&e)),
            },
            changed = local.recv() => match changed {
                Some(doc) => {
                    report(LiveState::Syncing);
                    session.local_change(doc, replica);
                }
                None => {
                    let _ = send.finish();
                    return Ok(());
                }
            },
        }
    }
}
