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

/// The congestion controller a side sends with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Congestion {
    /// quinn's own default. It backs off on every loss, so on a cellular link with random
    /// loss it leaves most of the link idle: an 18 MB image took 6.3 times the bandwidth
    /// bound at 2% loss in the sync benchmark.
    Cubic,
    /// BBR (quinn calls its implementation experimental): paces at the measured bottleneck
    /// rate and does not take random loss for congestion; 1.08 times the bound in the same
    /// run, like TCP with BBR. Medvan's default, on both sides.
    #[default]
    Bbr,
}

fn transport(liveness: Liveness) -> Result<Arc<quinn::TransportConfig>, DriverError> {
    transport_with(liveness, Congestion::default())
}

fn transport_with(liveness: Liveness, congestion: Congestion) -> Result<Arc<quinn::TransportConfig>, DriverError> {
    let mut t = quinn::TransportConfig::default();
    if congestion == Congestion::Bbr {
        t.congestion_controller_factory(Arc::new(quinn::congestion::BbrConfig::default()));
    }
    // Vans reconnect often, over links whose MTU changes as they move: path MTU probes
    // (from either side) would cost kilobytes on every connection for a few percent less
    // header overhead on large images. QUIC's 1200-byte minimum works on every path.
    t.mtu_discovery_config(None);
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
    /// The peer closed the connection without an error (close code 0), giving this reason.
    #[error("the peer hung up: {0}")]
    PeerClosed(String),
    /// The hub turned down this connection's 0-RTT data (it no longer held the TLS
    /// session, say after a restart): start the session again on a new stream.
    #[error("the hub did not take the early data; start the session again")]
    EarlyDataRejected,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Picks the hub's certificate chain by ALPN: enrolment gets the chain with the CA, so a
/// van holding only the CA's fingerprint (from its token) can check it; sync connections
/// come from vans that pin the CA already and get the hub's certificate alone, which
/// keeps every reconnect about 450 bytes smaller.
#[derive(Debug)]
struct ChainByAlpn {
    with_ca: Arc<rustls::sign::CertifiedKey>,
    without_ca: Arc<rustls::sign::CertifiedKey>,
}

impl rustls::server::ResolvesServerCert for ChainByAlpn {
    fn resolve(&self, hello: rustls::server::ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        let enrolling = hello.alpn().is_some_and(|mut protocols| protocols.any(|p| p == crate::enrol::ENROL_ALPN));
        Some(if enrolling { self.with_ca.clone() } else { self.without_ca.clone() })
    }
}

/// The hub's endpoint configuration. Clients presenting a certificate must present one
/// from `ca`; clients with none get in only to enrol (the hub closes a sync connection
/// without a certificate).
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
        .with_cert_resolver({
            let signing = provider().key_provider.load_private_key(key).map_err(|e| tls(&e))?;
            Arc::new(ChainByAlpn {
                with_ca: Arc::new(rustls::sign::CertifiedKey::new(vec![cert.clone(), ca.clone()], signing.clone())),
                without_ca: Arc::new(rustls::sign::CertifiedKey::new(vec![cert], signing)),
            })
        });
    config.alpn_protocols = vec![ALPN.to_vec(), crate::enrol::ENROL_ALPN.to_vec()];
    // A van reconnecting resumes its TLS session and sends its hello as 0-RTT data, so an
    // idle reconnect is one round trip (see `connect`). Tickets are kept here, one per
    // connection and single-use, so a replayed first flight finds its ticket gone and gets
    // a full handshake, which it cannot finish: the 0-RTT hello is never answered twice.
    // A resumed session skips certificate verification; the hub checks the certificate's
    // validity and revocation on every connection itself (see `hub`).
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(TLS_SESSIONS);
    config.send_tls13_tickets = 1;
    config.max_early_data_size = u32::MAX;
    let quic = QuicServerConfig::try_from(config).map_err(|e| tls(&e))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic));
    server.transport_config(transport(liveness)?);
    // No address-validation tokens: every connection's bytes count on a cellular plan, and
    // vans do not come back from an address the hub could vouch for.
    let mut tokens = quinn::ValidationTokenConfig::default();
    tokens.sent(0);
    server.validation_token_config(tokens);
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
    client_config_with(ca, cert, key, liveness, Congestion::default())
}

/// [`client_config`] with a chosen congestion controller for what the van sends.
pub fn client_config_with(
    ca: &CertificateDer<'static>,
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    liveness: Liveness,
    congestion: Congestion,
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
    // Resumption with 0-RTT: the hello rides in the first flight. Tickets are tied to this
    // configuration (rustls resumes only with the same verifier and certificate), so a van
    // builds it once per identity and keeps it.
    config.enable_early_data = true;
    let quic = QuicClientConfig::try_from(config).map_err(|e| tls(&e))?;
    let mut client = quinn::ClientConfig::new(Arc::new(quic));
    client.transport_config(transport_with(liveness, congestion)?);
    Ok(client)
}

/// How many vans' TLS sessions the hub keeps for resumption (about 1 KiB each).
const TLS_SESSIONS: usize = 8192;

/// A van's endpoint configuration: a zero-length connection ID for itself, since a van
/// talks to one hub at a time. The hub's packets then carry no ID for the van, and the
/// hub issues it one spare ID instead of seven, which keeps a reconnect's bytes down.
///
/// Packets are then told apart by the hub's address alone, so such an endpoint must hold
/// one connection to a hub at a time, a closed one still draining included:
/// [`connect`] waits for the last one to drain.
pub fn van_endpoint_config() -> quinn::EndpointConfig {
    let mut config = quinn::EndpointConfig::default();
    config.cid_generator(|| Box::new(NoConnectionId));
    config
}

/// Zero-length connection IDs: the van's single connection is found by the hub's address.
struct NoConnectionId;

impl quinn::ConnectionIdGenerator for NoConnectionId {
    fn generate_cid(&mut self) -> quinn::ConnectionId {
        quinn::ConnectionId::new(&[])
    }
    fn cid_len(&self) -> usize {
        0
    }
    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

/// A connection to the hub, and whether its first flight may carry data.
pub struct Connected {
    /// The connection (still completing its handshake when `early` is set).
    pub conn: quinn::Connection,
    /// Set when this connection resumed a TLS session: what is written now goes out as
    /// 0-RTT data, and this resolves to whether the hub took it. Only the session's hello
    /// may be sent this way (it is harmless if replayed); the protocol sends nothing else
    /// before the hub's welcome, which arrives after the handshake's keys.
    pub early: Option<quinn::ZeroRttAccepted>,
    /// Whether a session turned down as 0-RTT data may still start again.
    retry_left: bool,
}

impl Connected {
    /// Whether a session that ended with `result` should start again on a new stream: once,
    /// when the hub turned the 0-RTT attempt down (nothing of it reached the hub then).
    ///
    /// ```ignore
    /// loop {
    ///     let (mut send, mut recv) = connected.conn.open_bi().await?;
    ///     let result = run(&mut Session::new(Role::Van), ...).await;
    ///     if !connected.retry(&result) { break result; }
    /// }
    /// ```
    pub fn retry<T>(&mut self, result: &Result<T, DriverError>) -> bool {
        let retry = matches!(result, Err(DriverError::EarlyDataRejected)) && self.retry_left;
        if retry {
            tracing::debug!("the hub did not take the 0-RTT hello; starting again after the handshake");
            self.retry_left = false;
        }
        retry
    }
}

impl std::fmt::Debug for Connected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connected")
            .field("conn", &self.conn)
            .field("early", &self.early.is_some())
            .field("retry_left", &self.retry_left)
            .finish()
    }
}

/// Connects to the hub, resuming the last TLS session with 0-RTT when the endpoint's client
/// configuration holds a ticket for it, and with a full handshake otherwise.
pub async fn connect(
    endpoint: &quinn::Endpoint,
    addr: std::net::SocketAddr,
    server_name: &str,
) -> Result<Connected, DriverError> {
    let conn = |e: &dyn std::fmt::Display| DriverError::Connection(e.to_string());
    // A connection still draining would take the new one's packets (see
    // `van_endpoint_config`); draining lasts three probe timeouts, well under this bound.
    if tokio::time::timeout(Duration::from_secs(10), endpoint.wait_idle()).await.is_err() {
        return Err(DriverError::Connection(
            "the previous connection to the hub is still open or draining; try again shortly".into(),
        ));
    }
    let connecting = endpoint.connect(addr, server_name).map_err(|e| conn(&e))?;
    match connecting.into_0rtt() {
        Ok((c, accepted)) => Ok(Connected { conn: c, early: Some(accepted), retry_left: true }),
        Err(connecting) => {
            Ok(Connected { conn: connecting.await.map_err(|e| conn(&e))?, early: None, retry_left: false })
        }
    }
}

/// Carries `session` over one bidirectional stream until the peer finishes it, or until
/// nothing has been received for `quiet` while this side has nothing left to send (then
/// this side finishes its half). For one-shot exchanges and tools; a van's background sync
/// and the hub use [`run_live`]. Choose `quiet` well above the link's round trip.
pub async fn run(
    session: &mut Session,
    replica: &mut impl Replica,
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    quiet: Duration,
) -> Result<(), DriverError> {
    drive(session, replica, send, recv, None, Some(quiet), |_| {}).await
}

/// Something that changed on this side during a live session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalChange {
    /// A document changed.
    Doc(sync_proto::DocId),
    /// A blob was stored.
    Blob {
        /// Its hash.
        sha256: [u8; 32],
        /// Its size.
        size: u64,
        /// How urgent it is.
        priority: sync_proto::Priority,
    },
    /// The hub: the van's crew roster may have changed.
    Roster,
    /// The van: where it is now.
    Position(sync_proto::PositionReport),
    /// The van: the crew wants a ticket to this case's live call.
    CallTicket(sync_proto::DocId),
}

impl From<sync_proto::DocId> for LocalChange {
    fn from(doc: sync_proto::DocId) -> Self {
        LocalChange::Doc(doc)
    }
}

/// What a live session reports as it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiveState {
    /// Messages are waiting to be sent.
    Syncing,
    /// This side has sent everything it had. (The peer may still be answering: this is
    /// not proof that the peer holds everything.)
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
    local: &mut tokio::sync::mpsc::UnboundedReceiver<LocalChange>,
    report: impl FnMut(LiveState),
) -> Result<(), DriverError> {
    drive(session, replica, send, recv, Some(local), None, report).await
}

/// The one loop: reads, local changes and writes are served together, one message at a
/// time, so a large blob being written never stops this side from reading the peer or
/// offering a new case edit (which the session then sends first), and two sides sending
/// large amounts to each other cannot block each other.
async fn drive(
    session: &mut Session,
    replica: &mut impl Replica,
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    mut local: Option<&mut tokio::sync::mpsc::UnboundedReceiver<LocalChange>>,
    quiet: Option<Duration>,
    mut report: impl FnMut(LiveState),
) -> Result<(), DriverError> {
    let conn = |e: &dyn std::fmt::Display| DriverError::Connection(e.to_string());
    let mut decoder = Decoder::default();
    let mut buf = vec![0u8; 64 * 1024];
    // The frame being written and how much of it is out.
    let mut out: Option<(Vec<u8>, usize)> = None;
    let mut peer_done = false;
    let result: Result<(), DriverError> = loop {
        if out.is_none()
            && let Some(m) = session.poll_transmit(replica)
        {
            report(LiveState::Syncing);
            let frame = encode(&m);
            if frame.len() > sync_proto::frame::DEFAULT_MAX_FRAME + 4 {
                // The peer would refuse it and end the session, over and over; skip it and
                // say which document is too large to sync in one message.
                let doc = match &m {
                    sync_proto::Message::Doc { doc, .. } => format!("{:?}", doc.0),
                    _ => "-".into(),
                };
                tracing::error!(%doc, bytes = frame.len(), "a sync message is over the frame limit and was not sent");
            } else {
                out = Some((frame, 0));
            }
        }
        log_events(session);
        if out.is_none() {
            if session.is_closed() || peer_done {
                break Ok(());
            }
            if session.is_idle() {
                report(LiveState::Idle);
            }
        }
        let quiet_timer = async {
            match quiet {
                Some(q) => tokio::time::sleep(q).await,
                None => std::future::pending::<()>().await,
            }
        };
        let local_next = async {
            match local.as_deref_mut() {
                Some(rx) => rx.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            written = async {
                let (frame, offset) = out.as_ref().expect("guarded by the branch condition");
                send.write(&frame[*offset..]).await
            }, if out.is_some() => match written {
                Ok(n) => {
                    if let Some((frame, offset)) = out.as_mut() {
                        *offset += n;
                        if *offset >= frame.len() {
                            out = None;
                        }
                    }
                }
                Err(quinn::WriteError::ConnectionLost(c)) => break Err(lost(&c)),
                Err(quinn::WriteError::ZeroRttRejected) => break Err(DriverError::EarlyDataRejected),
                Err(e) => break Err(conn(&e)),
            },
            read = recv.read(&mut buf), if !peer_done => match read {
                Ok(Some(n)) => {
                    decoder.push(&buf[..n]);
                    let mut failed = None;
                    loop {
                        match decoder.next_message() {
                            Ok(Some(m)) => {
                                if let Err(e) = session.handle(m, replica) {
                                    failed = Some(DriverError::from(e));
                                    break;
                                }
                            }
                            Ok(None) => break,
                            Err(e) => {
                                failed = Some(DriverError::from(e));
                                break;
                            }
                        }
                    }
                    if let Some(e) = failed {
                        break Err(e);
                    }
                }
                Ok(None) => peer_done = true,
                Err(quinn::ReadError::ConnectionLost(c)) => break Err(lost(&c)),
                Err(quinn::ReadError::ZeroRttRejected) => break Err(DriverError::EarlyDataRejected),
                Err(e) => break Err(conn(&e)),
            },
            changed = local_next => match changed {
                Some(LocalChange::Doc(doc)) => session.local_change(doc, replica),
                Some(LocalChange::Blob { sha256, size, priority }) => session.local_blob(sha256, size, priority),
                Some(LocalChange::Roster) => session.roster_changed(replica),
                Some(LocalChange::Position(report)) => {
                    session.position(report);
                }
                Some(LocalChange::CallTicket(doc)) => {
                    if !session.request_call_ticket(doc) {
                        // Answered at once, so nobody waits for a question never sent.
                        replica.receive_call_ticket(
                            doc,
                            Err("the hub cannot be asked yet (the session is starting, or the hub predates live \
                                 calls); try again in a moment"
                                .into()),
                        );
                    }
                }
                None => break Ok(()),
            },
            _ = quiet_timer, if out.is_none() && session.is_idle() => break Ok(()),
        }
    };
    // Whatever the session still has to say (a refusal naming the reason, say) goes out
    // before this side finishes, if the connection still allows it.
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        if let Some((frame, offset)) = out.take() {
            send.write_all(&frame[offset..]).await?;
        }
        while let Some(m) = session.poll_transmit(replica) {
            send.write_all(&encode(&m)).await?;
        }
        Ok::<(), quinn::WriteError>(())
    })
    .await;
    let _ = send.finish();
    if let Some(q) = quiet {
        // One-shot mode: the caller closes the connection next, which would discard data
        // still being retransmitted on a lossy link; wait until the peer acknowledged it all.
        let _ = tokio::time::timeout(q * 4, send.stopped()).await;
    }
    if let (Some(q), Ok(()), false) = (quiet, &result, peer_done) {
        // One-shot mode: wait for the peer to finish its half too, so the caller closing the
        // connection cannot cut off anything still on its way.
        let _ = tokio::time::timeout(q * 4, async {
            while let Ok(Some(n)) = recv.read(&mut buf).await {
                decoder.push(&buf[..n]);
            }
        })
        .await;
        while let Ok(Some(m)) = decoder.next_message() {
            if session.handle(m, replica).is_err() {
                break;
            }
        }
    }
    log_events(session);
    replica.flush();
    result
}

/// Names why a connection was lost ("timed out" for a silent link, the peer's reason for a
/// close), which quinn's stream errors alone do not say.
fn lost(cause: &quinn::ConnectionError) -> DriverError {
    match cause {
        quinn::ConnectionError::ApplicationClosed(close) if close.error_code == quinn::VarInt::from_u32(0) => {
            DriverError::PeerClosed(String::from_utf8_lossy(&close.reason).into_owned())
        }
        _ => DriverError::Connection(format!("connection lost: {cause}")),
    }
}

fn log_events(session: &mut Session) {
    while let Some(event) = session.poll_event() {
        match event {
            sync_proto::Event::RefusedByPeer { doc, detail, .. } => {
                tracing::warn!(doc = ?doc.0, %detail, "the peer refused changes to a document");
            }
            sync_proto::Event::RefusedPeer { doc, detail } => {
                tracing::warn!(doc = ?doc.0, %detail, "refused the peer's changes to a document");
            }
            sync_proto::Event::AuditTampered { detail } => {
                tracing::error!(%detail, "audit log refused: it does not extend the copy the hub holds");
            }
            sync_proto::Event::AuditDelivered(size) => {
                tracing::debug!(size, "the hub holds the audit log");
            }
            sync_proto::Event::BlobRejected { sha256, detail } => {
                tracing::warn!(blob = ?sha256, %detail, "a received blob was rejected");
            }
            other => tracing::debug!(event = ?other, "sync"),
        }
    }
}
