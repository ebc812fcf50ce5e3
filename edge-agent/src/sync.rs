//! The van's side of sync: the protocol's [`Replica`] over the case store.
//!
//! Sync states are kept in memory during a session and written to the store in one batch
//! by [`StoreReplica::flush`] (losing them costs bytes, never data). Every change received
//! is durable before the protocol acknowledges it, as with any edit.
//!
//! Store calls block (SQLite, fsync). Inside the multi-threaded runtime they run under
//! `block_in_place`, so the runtime moves its other tasks (the touchscreen's API) to
//! another worker meanwhile; outside a runtime they simply run.

use std::collections::BTreeMap;

use anyhow::Context;
use automerge::sync;
use case_model::{CaseId, EditContext, UserId};
use case_store::{Store, StoreError};
use sync_proto::{AuditRecord, BlobState, DocId, Priority, RefusalReason, Replica, ReplicaRefusal, SignedHead};
use sync_quic::driver::LocalChange;

/// A store seen by one sync peer.
#[derive(Debug)]
pub struct StoreReplica {
    store: Store,
    peer: String,
    /// The acting user recorded on changes received from the peer.
    actor: UserId,
    pending: BTreeMap<DocId, Vec<u8>>,
    /// Signs the audit log's tree heads; without it the log is not sent.
    signer: Option<std::sync::Arc<AuditSigner>>,
    /// Seals the crew roster as it arrives; without it no roster is taken.
    roster_key: Option<[u8; 32]>,
    /// Who waits for the hub's answer about a call ticket.
    tickets: Tickets,
}

/// Those waiting for call tickets, by case.
type Tickets = std::sync::Arc<std::sync::Mutex<BTreeMap<DocId, Vec<TicketReply>>>>;
type TicketReply = tokio::sync::oneshot::Sender<Result<sync_proto::CallGrant, String>>;

/// Signs tree heads of the van's audit log with the van's device key (ECDSA P-256), so the
/// hub, and an auditor later, can tell the van vouched for every entry up to each head.
pub struct AuditSigner {
    key: ring::signature::EcdsaKeyPair,
    log_id: String,
}

impl std::fmt::Debug for AuditSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditSigner").field("log_id", &self.log_id).finish_non_exhaustive()
    }
}

impl AuditSigner {
    /// A signer over the device key (PKCS#8) for the log `org/van`.
    pub fn new(pkcs8: &[u8], log_id: &str) -> anyhow::Result<AuditSigner> {
        let rng = ring::rand::SystemRandom::new();
        let key =
            ring::signature::EcdsaKeyPair::from_pkcs8(&ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8, &rng)
                .map_err(|e| anyhow::anyhow!("the device key is not an ECDSA P-256 key: {e}"))?;
        Ok(AuditSigner { key, log_id: log_id.to_owned() })
    }

    /// The signer for a van identity: its key, under the log id its certificate names.
    pub fn for_identity(identity: &crate::identity::Identity) -> anyhow::Result<AuditSigner> {
        let device = sync_quic::identity::device_of(&identity.cert)?;
        AuditSigner::new(identity.key.secret_der(), &format!("{}/{}", device.org, device.van))
    }

    fn sign(&self, head: &audit::merkle::TreeHead) -> Vec<u8> {
        let rng = ring::rand::SystemRandom::new();
        self.key.sign(&rng, &head.signing_bytes(&self.log_id)).map(|s| s.as_ref().to_vec()).unwrap_or_default()
    }
}

/// Where the hub's confirmation of the audit log is kept, per peer.
const AUDIT_ACKED: &str = "audit-acked";

impl StoreReplica {
    /// The store as the peer named `peer` syncs with it.
    pub fn new(store: Store, peer: &str) -> anyhow::Result<StoreReplica> {
        let actor = UserId::parse(&format!("sync:{peer}"))?;
        Ok(StoreReplica {
            store,
            peer: peer.to_owned(),
            actor,
            pending: BTreeMap::new(),
            signer: None,
            roster_key: None,
            tickets: Default::default(),
        })
    }

    /// Hands the hub's answers about call tickets to those waiting in `tickets`.
    fn with_tickets(mut self, tickets: Tickets) -> StoreReplica {
        self.tickets = tickets;
        self
    }

    /// Takes the crew roster from the hub, sealed with the van's PIN key.
    pub fn with_roster_key(mut self, key: Option<[u8; 32]>) -> StoreReplica {
        self.roster_key = key;
        self
    }

    /// Sends the store's audit log too, its tree heads signed by `signer`.
    pub fn with_audit_signer(mut self, signer: std::sync::Arc<AuditSigner>) -> StoreReplica {
        self.signer = Some(signer);
        self
    }

    /// Writes the session's sync states to the store.
    pub fn save_states(&mut self) -> Result<(), StoreError> {
        let states = std::mem::take(&mut self.pending).into_iter().map(|(d, s)| (CaseId::from_bytes(d.0), s)).collect();
        blocking(|| self.store.save_sync_states(&self.peer, states))
    }

    fn ctx(&self) -> EditContext {
        EditContext { user: self.actor.clone(), now: crate::api::now() }
    }
}

/// Runs a blocking store call without stalling the async runtime (see the module docs).
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

fn case(doc: DocId) -> CaseId {
    CaseId::from_bytes(doc.0)
}

impl Replica for StoreReplica {
    fn scope(&self) -> Vec<DocId> {
        match blocking(|| self.store.case_ids()) {
            Ok(ids) => ids.into_iter().map(|id| DocId(*id.as_bytes())).collect(),
            Err(e) => {
                tracing::error!(error = %e, "sync: could not list cases");
                Vec::new()
            }
        }
    }

    fn heads(&self, doc: DocId) -> Vec<automerge::ChangeHash> {
        let mut heads = blocking(|| self.store.heads(case(doc))).unwrap_or_default();
        heads.sort();
        heads
    }

    fn priority(&self, _doc: DocId) -> Priority {
        Priority::Case
    }

    fn sync_state(&mut self, doc: DocId) -> sync::State {
        let stored = match self.pending.get(&doc) {
            Some(s) => Some(s.clone()),
            None => blocking(|| self.store.sync_state(&self.peer, case(doc))).ok().flatten(),
        };
        stored.and_then(|b| sync::State::decode(&b).ok()).unwrap_or_default()
    }

    fn save_sync_state(&mut self, doc: DocId, state: &sync::State) {
        self.pending.insert(doc, state.encode());
    }

    fn generate(&mut self, doc: DocId, state: &mut sync::State) -> Option<sync::Message> {
        match blocking(|| self.store.sync_generate(case(doc), state)) {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(case = %case(doc), error = %e, "sync: could not prepare a case");
                None
            }
        }
    }

    fn flush(&mut self) {
        if let Err(e) = self.save_states() {
            tracing::warn!(peer = %self.peer, error = %e, "sync: could not save sync states; the next sync resends more");
        }
    }

    fn receive(&mut self, doc: DocId, state: &mut sync::State, msg: sync::Message) -> Result<(), ReplicaRefusal> {
        let ctx = self.ctx();
        blocking(|| self.store.sync_receive(&ctx, case(doc), state, msg))
            .map(|_| ())
            .map_err(|e| ReplicaRefusal { reason: RefusalReason::Malformed, detail: e.to_string() })
    }

    fn accepts_blob(&self, _sha256: &[u8; 32], size: u64) -> bool {
        // The hub offers only blobs of cases this van holds; the store enforces its size limit.
        size <= MAX_BLOB
    }

    fn blobs(&self) -> Vec<([u8; 32], u64, Priority)> {
        match blocking(|| self.store.blob_list()) {
            Ok(list) => list.into_iter().map(|(sha, size, media)| (sha, size, blob_priority(&media))).collect(),
            Err(e) => {
                tracing::error!(error = %e, "sync: could not list blobs");
                Vec::new()
            }
        }
    }

    fn blob_state(&self, sha256: &[u8; 32]) -> BlobState {
        if self.store.has_blob(sha256) {
            return BlobState::Complete;
        }
        match self.store.incoming_blob_len(sha256) {
            Ok(0) | Err(_) => BlobState::Missing,
            Ok(n) => BlobState::Partial(n),
        }
    }

    fn read_blob(&mut self, sha256: &[u8; 32], offset: u64, len: u64) -> Result<Vec<u8>, ReplicaRefusal> {
        blocking(|| self.store.blob_range(sha256, offset, len))
            .map_err(|e| ReplicaRefusal { reason: RefusalReason::Malformed, detail: e.to_string() })
    }

    fn write_blob(&mut self, sha256: &[u8; 32], size: u64, offset: u64, data: &[u8]) -> Result<(), ReplicaRefusal> {
        blocking(|| self.store.write_incoming_blob(sha256, size, offset, data))
            .map_err(|e| ReplicaRefusal { reason: RefusalReason::Malformed, detail: e.to_string() })
    }

    fn receive_call_ticket(&mut self, doc: DocId, grant: Result<sync_proto::CallGrant, String>) {
        for reply in lock(&self.tickets).remove(&doc).unwrap_or_default() {
            let _ = reply.send(grant.clone());
        }
    }

    fn audit_batch(&mut self, after: u64, max: usize) -> Option<(Vec<AuditRecord>, SignedHead)> {
        let signer = self.signer.clone()?;
        let store = &self.store;
        let (entries, hashes) = blocking(|| {
            let entries = store.audit_after(after, max as u32)?;
            // Nothing after what the hub holds: send the head alone only if the log is now
            // shorter than that (entries were removed), so the hub sees it.
            let last = match entries.last() {
                Some(e) => e.seq,
                None => store.audit_size()?,
            };
            if entries.is_empty() && last >= after {
                return Ok(None);
            }
            Ok::<_, StoreError>(Some((entries, store.audit_hashes(last)?)))
        })
        .map_err(|e| tracing::warn!(error = %e, "could not read the audit log to send"))
        .ok()??;
        let last = entries.last().map_or(hashes.len() as u64, |e| e.seq);
        if hashes.len() as u64 != last {
            tracing::warn!(last, held = hashes.len(), "the audit log has a gap; not sent (verify-audit names it)");
            return None;
        }
        let leaves: Vec<[u8; 32]> = hashes.iter().map(audit::merkle::leaf).collect();
        let head = audit::merkle::head(&leaves);
        let signature = signer.sign(&head);
        let hex32 = |s: &str| -> [u8; 32] { hex::decode(s).ok().and_then(|b| b.try_into().ok()).unwrap_or([0; 32]) };
        let records = entries
            .into_iter()
            .map(|e| AuditRecord {
                seq: e.seq,
                at: e.at,
                actor: e.actor,
                action: e.action,
                case_id: e.case_id,
                outcome: e.outcome.as_str().to_owned(),
                detail: e.detail,
                prev: hex32(&e.prev),
                hash: hex32(&e.hash),
            })
            .collect();
        Some((records, SignedHead { size: head.size, root: head.root, signature }))
    }

    fn receive_roster(
        &mut self,
        _digest: [u8; 32],
        members: Vec<sync_proto::CrewMember>,
    ) -> Result<(), ReplicaRefusal> {
        let Some(key) = self.roster_key else {
            return Err(ReplicaRefusal {
                reason: RefusalReason::NotAuthorised,
                detail: "this van has no PIN key; crew PIN login is off".into(),
            });
        };
        let n = members.len();
        blocking(|| crate::crew::store_roster(&self.store, &key, &members))
            .map_err(|e| ReplicaRefusal { reason: RefusalReason::Malformed, detail: e.to_string() })?;
        tracing::info!(members = n, "crew roster updated");
        Ok(())
    }

    fn audit_acked(&self) -> Option<u64> {
        match blocking(|| self.store.peer_value(&self.peer, AUDIT_ACKED)) {
            Ok(value) => Some(value.and_then(|v| v.try_into().ok()).map(u64::from_be_bytes).unwrap_or(0)),
            // Unknown: sending from 0 would look, to the hub, like a log cut short.
            Err(e) => {
                tracing::warn!(error = %e, "could not read the hub's audit confirmation; the log waits");
                None
            }
        }
    }

    fn set_audit_acked(&mut self, size: u64) {
        if let Err(e) = blocking(|| self.store.set_peer_value(&self.peer, AUDIT_ACKED, size.to_be_bytes().to_vec())) {
            // Only costs a resend: the hub skips entries it holds.
            tracing::warn!(error = %e, "could not record the hub's audit confirmation");
        }
    }

    fn finish_blob(&mut self, sha256: &[u8; 32], size: u64) -> Result<(), ReplicaRefusal> {
        let ctx = self.ctx();
        blocking(|| self.store.finish_incoming_blob(&ctx, sha256, size))
            .map_err(|e| ReplicaRefusal { reason: RefusalReason::Malformed, detail: e.to_string() })
    }
}

/// The largest blob a van takes from the hub.
const MAX_BLOB: u64 = 4 << 30;

/// How urgent a blob is, from its media type: previews before full studies before video.
fn blob_priority(media_type: &str) -> Priority {
    match media_type {
        "application/dicom" => Priority::FullImage,
        m if m.starts_with("video/") => Priority::Video,
        m if m.starts_with("image/") => Priority::Preview,
        _ => Priority::FullImage,
    }
}

/// What the touchscreen shows about sync.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SyncStatus {
    /// `not_configured`, `connecting`, `offline`, `syncing`, `up_to_date` or
    /// `certificate_expired` (re-enrol; `last_error` says how).
    pub state: &'static str,
    /// The hub's address.
    pub hub: Option<String>,
    /// Cases changed here and not yet offered to the hub.
    pub pending_cases: usize,
    /// When the van was last up to date with the hub.
    pub last_success: Option<case_model::Timestamp>,
    /// Why the last connection failed or ended, if it did.
    pub last_error: Option<String>,
    /// Connections made to the hub since the agent started.
    pub connections: u64,
}

/// Where and how to reach the hub.
#[derive(Debug)]
pub struct SyncSettings {
    /// The hub's address, `host:port`; resolved at each attempt, so a van that starts out of
    /// coverage (or whose hub moves) still connects once it can.
    pub address: String,
    /// The name in the hub's certificate.
    pub server_name: String,
    /// The van's certificate, key and pinned CA.
    pub identity: crate::identity::Identity,
    /// Where the identity lives: renewals are written there, and a re-enrolment written
    /// there while the agent runs is picked up. `None` keeps renewals in memory (tests).
    pub identity_dir: Option<std::path::PathBuf>,
    /// Renew the certificate when less than this remains; `None`: a third of its lifetime.
    pub renew_below: Option<std::time::Duration>,
    /// How fast a dead link is noticed.
    pub liveness: sync_quic::driver::Liveness,
    /// The PIN key, to take the crew roster with; `None`: no roster is taken.
    pub roster_key: Option<[u8; 32]>,
}

/// The running sync service.
#[derive(Debug, Clone)]
pub struct SyncHandle {
    status: std::sync::Arc<std::sync::Mutex<SyncStatus>>,
    pending: std::sync::Arc<std::sync::Mutex<std::collections::BTreeSet<CaseId>>>,
    /// Into the live session (call ticket requests); `None` when sync is not running.
    requests: Option<tokio::sync::mpsc::UnboundedSender<LocalChange>>,
    tickets: Tickets,
}

/// Why the van has no ticket to a case's live call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TicketError {
    /// Sync is not set up (no hub, not enrolled, or the identity is unusable).
    #[error("this van does not sync with a hub (not enrolled?), and calls go through the hub")]
    NotConfigured,
    /// No session with the hub now.
    #[error("the hub is out of reach; a video consult needs the link: try again when the van is online")]
    Offline,
    /// The hub said no, or did not answer in time.
    #[error("the hub gave no call ticket: {0}")]
    Refused(String),
}

/// How long the van keeps asking for a ticket (the case may be a moment behind at the hub).
const TICKET_PATIENCE: std::time::Duration = std::time::Duration::from_secs(6);

impl SyncHandle {
    /// A handle that reports sync as not configured.
    pub fn not_configured() -> SyncHandle {
        SyncHandle {
            status: std::sync::Arc::new(std::sync::Mutex::new(SyncStatus {
                state: "not_configured",
                hub: None,
                pending_cases: 0,
                last_success: None,
                last_error: None,
                connections: 0,
            })),
            pending: Default::default(),
            requests: None,
            tickets: Default::default(),
        }
    }

    /// A ticket to `case`'s live call from the hub, over the sync session (the van's
    /// certificate is the credential). Asked again for a few seconds if the hub says no,
    /// since a case made just now may not have reached it yet.
    pub async fn call_ticket(&self, case: CaseId) -> Result<sync_proto::CallGrant, TicketError> {
        let requests = self.requests.as_ref().ok_or(TicketError::NotConfigured)?;
        let doc = DocId(*case.as_bytes());
        let deadline = tokio::time::Instant::now() + TICKET_PATIENCE;
        let mut last = String::from("no answer in time");
        loop {
            if !matches!(lock(&self.status).state, "syncing" | "up_to_date") {
                return Err(TicketError::Offline);
            }
            let (tx, rx) = tokio::sync::oneshot::channel();
            {
                let mut waiting = lock(&self.tickets);
                let list = waiting.entry(doc).or_default();
                // Askers who gave up (timed out) wait no more.
                list.retain(|w| !w.is_closed());
                list.push(tx);
            }
            if requests.send(LocalChange::CallTicket(doc)).is_err() {
                return Err(TicketError::NotConfigured);
            }
            match tokio::time::timeout_at(deadline, rx).await {
                Ok(Ok(Ok(grant))) => return Ok(grant),
                Ok(Ok(Err(why))) => last = why,
                // The answer's sender went away unanswered: ask again.
                Ok(Err(_)) => {}
                Err(_) => return Err(TicketError::Refused(last)),
            }
            if tokio::time::Instant::now() + std::time::Duration::from_secs(1) > deadline {
                return Err(TicketError::Refused(last));
            }
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    }

    /// A handle reporting that the van's identity cannot be used (sync is off until a
    /// re-enrolment; the agent runs on).
    pub fn identity_unusable(why: String) -> SyncHandle {
        let handle = SyncHandle::not_configured();
        {
            let mut s = lock(&handle.status);
            s.state = "certificate_expired";
            s.last_error = Some(why);
        }
        handle
    }

    /// The current status.
    pub fn status(&self) -> SyncStatus {
        let mut s = lock(&self.status).clone();
        s.pending_cases = lock(&self.pending).len();
        s
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Starts syncing in the background: connects whenever the hub is reachable, backs off
/// (1 s doubling to 60 s) while it is not, and offers every local change as it happens.
/// No one ever has to press "sync". The certificate is renewed before it expires; a van
/// whose certificate lapsed says so and waits for a re-enrolment, which it picks up
/// without a restart.
pub fn spawn(store: Store, settings: SyncSettings) -> anyhow::Result<SyncHandle> {
    spawn_reporting(store, settings, None)
}

/// [`spawn`], also reporting each new position from `positions` to the hub while connected.
pub fn spawn_reporting(
    store: Store,
    settings: SyncSettings,
    positions: Option<tokio::sync::watch::Receiver<Option<sync_proto::PositionReport>>>,
) -> anyhow::Result<SyncHandle> {
    let mut handle = SyncHandle::not_configured();
    lock(&handle.status).state = "connecting";
    lock(&handle.status).hub = Some(settings.address.clone());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<LocalChange>();
    handle.requests = Some(tx.clone());
    let pending = handle.pending.clone();
    let blob_tx = tx.clone();
    let position_tx = tx.clone();
    store.on_local_change(move |id| {
        lock(&pending).insert(id);
        let _ = tx.send(LocalChange::Doc(DocId(*id.as_bytes())));
    });
    store.on_local_blob(move |sha256, size, media_type| {
        let _ = blob_tx.send(LocalChange::Blob { sha256, size, priority: blob_priority(media_type) });
    });
    if let Some(mut positions) = positions {
        let (tx, status) = (position_tx, handle.status.clone());
        tokio::spawn(async move {
            while positions.changed().await.is_ok() {
                let report = *positions.borrow_and_update();
                // Only into a live session: offline, positions would pile up unread (the
                // newest is sent within a second of connecting anyway).
                let live = matches!(lock(&status).state, "syncing" | "up_to_date");
                if let (Some(r), true) = (report, live)
                    && tx.send(LocalChange::Position(r)).is_err()
                {
                    return;
                }
            }
        });
    }
    // One socket for both families, where the OS allows it; IPv4 otherwise.
    let socket = std::net::UdpSocket::bind("[::]:0").or_else(|_| std::net::UdpSocket::bind("0.0.0.0:0"))?;
    let mut endpoint = quinn::Endpoint::new(
        sync_quic::driver::van_endpoint_config(),
        None,
        socket,
        std::sync::Arc::new(quinn::TokioRuntime),
    )?;
    endpoint.set_default_client_config(client(&settings)?);
    let out = handle.clone();
    let mut settings = settings;
    tokio::spawn(async move {
        let mut backoff = std::time::Duration::from_secs(1);
        loop {
            match check_identity(&mut settings, &mut endpoint, &out).await {
                IdentityState::Usable { renew_in } => {
                    lock(&out.status).state = "connecting";
                    // A session still open when renewal is due is ended then, to renew.
                    let result = tokio::select! {
                        r = session(&store, &endpoint, &settings, &mut rx, &out) => r,
                        _ = tokio::time::sleep(renew_in) => Ok(true),
                    };
                    let connected = matches!(result, Ok(true));
                    {
                        let mut s = lock(&out.status);
                        s.state = "offline";
                        if let Err(e) = &result {
                            s.last_error = Some(e.to_string());
                        }
                    }
                    if connected {
                        backoff = std::time::Duration::from_secs(1);
                    }
                }
                IdentityState::Lapsed => {
                    // Nothing to try with the hub; look for a re-enrolment again soon.
                    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                    continue;
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(std::time::Duration::from_secs(60));
        }
    });
    Ok(handle)
}

fn client(settings: &SyncSettings) -> anyhow::Result<quinn::ClientConfig> {
    let id = &settings.identity;
    Ok(sync_quic::driver::client_config(&id.ca, id.cert.clone(), id.key.clone_key(), settings.liveness)?)
}

enum IdentityState {
    /// Connect; renew after this long.
    Usable { renew_in: std::time::Duration },
    /// The certificate expired: only a new enrolment helps.
    Lapsed,
}

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// When to renew a certificate valid between the two times (unix seconds).
fn renew_at(settings: &SyncSettings, not_before: i64, not_after: i64) -> i64 {
    let below = settings.renew_below.map(|d| d.as_secs() as i64).unwrap_or((not_after - not_before) / 3);
    not_after - below
}

/// Picks up an identity written by `edge-agent enrol` while the agent runs, renews the
/// certificate when its time has come, and says whether it can be used.
async fn check_identity(
    settings: &mut SyncSettings,
    endpoint: &mut quinn::Endpoint,
    out: &SyncHandle,
) -> IdentityState {
    if let Some(dir) = &settings.identity_dir {
        match crate::identity::load(dir) {
            Ok(Some(on_disk)) if on_disk.cert != settings.identity.cert => {
                tracing::info!("a new identity was written; using it");
                settings.identity = on_disk;
                match client(settings) {
                    Ok(c) => endpoint.set_default_client_config(c),
                    Err(e) => tracing::error!(error = %e, "the new identity is unusable"),
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "could not read the identity directory"),
        }
    }
    let Ok((not_before, not_after)) = settings.identity.validity() else {
        let mut s = lock(&out.status);
        s.state = "certificate_expired";
        s.last_error = Some("this van's certificate does not decode; enrol again".into());
        return IdentityState::Lapsed;
    };
    let now = unix_now();
    if now >= not_after {
        let mut s = lock(&out.status);
        s.state = "certificate_expired";
        s.last_error = Some(format!(
            "this van's certificate expired {} h ago; ask the fleet manager for an enrolment token and run `edge-agent enrol --token ...` (cases keep being recorded meanwhile)",
            (now - not_after) / 3600
        ));
        return IdentityState::Lapsed;
    }
    let due = renew_at(settings, not_before, not_after);
    if now < due {
        return IdentityState::Usable { renew_in: std::time::Duration::from_secs((due - now) as u64) };
    }
    match renew(settings).await {
        Ok(()) => {
            tracing::info!("renewed this van's certificate");
            match client(settings) {
                Ok(c) => endpoint.set_default_client_config(c),
                Err(e) => tracing::error!(error = %e, "the renewed identity is unusable"),
            }
            let next = settings.identity.validity().map(|(b, a)| renew_at(settings, b, a) - unix_now()).unwrap_or(3600);
            IdentityState::Usable { renew_in: std::time::Duration::from_secs(next.max(60) as u64) }
        }
        Err(e) => {
            // The current certificate still works; try again later.
            tracing::warn!(error = %e, "could not renew this van's certificate yet");
            lock(&out.status).last_error = Some(format!("certificate renewal failed: {e:#}"));
            IdentityState::Usable { renew_in: std::time::Duration::from_secs(600) }
        }
    }
}

async fn renew(settings: &mut SyncSettings) -> anyhow::Result<()> {
    let addr = tokio::net::lookup_host(&settings.address)
        .await
        .with_context(|| format!("cannot resolve the hub address {}", settings.address))?
        .next()
        .with_context(|| format!("the hub address {} resolves to nothing", settings.address))?;
    let id = &settings.identity;
    let renewed =
        sync_quic::enrol::renew(addr, &settings.server_name, &id.ca, id.cert.clone(), id.key.clone_key()).await?;
    let identity = crate::identity::Identity { ca: renewed.ca, cert: renewed.cert, key: renewed.key };
    if let Some(dir) = &settings.identity_dir {
        crate::identity::store(dir, &identity)?;
    }
    settings.identity = identity;
    Ok(())
}

/// One connection's worth of sync. `Ok(true)` if it connected at all.
async fn session(
    store: &Store,
    endpoint: &quinn::Endpoint,
    settings: &SyncSettings,
    local: &mut tokio::sync::mpsc::UnboundedReceiver<LocalChange>,
    out: &SyncHandle,
) -> anyhow::Result<bool> {
    let addr = tokio::net::lookup_host(&settings.address)
        .await
        .with_context(|| format!("cannot resolve the hub address {}", settings.address))?
        .next()
        .with_context(|| format!("the hub address {} resolves to nothing", settings.address))?;
    let mut connected = sync_quic::driver::connect(endpoint, addr, &settings.server_name).await?;
    // With 0-RTT the session starts before the hub has answered: until the handshake
    // completes the van says "connecting", so nobody reads "syncing" off a dead link.
    let confirmed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(connected.early.is_none()));
    let attempt = {
        let mut s = lock(&out.status);
        s.connections += 1;
        s.state = if connected.early.is_none() { "syncing" } else { "connecting" };
        s.last_error = None;
        s.connections
    };
    if let Some(accepted) = connected.early.take() {
        let (confirmed, out, conn) = (confirmed.clone(), out.clone(), connected.conn.clone());
        tokio::spawn(async move {
            // Resolves when the handshake completes (whether the early data was taken or
            // not), or when the connection is lost: only a live connection counts.
            accepted.await;
            if conn.close_reason().is_some() {
                return;
            }
            confirmed.store(true, std::sync::atomic::Ordering::Relaxed);
            let mut s = lock(&out.status);
            if s.state == "connecting" && s.connections == attempt {
                s.state = "syncing";
            }
        });
    }
    // Changes made before this connection are covered by the inventory exchange.
    // A ticket asked meanwhile is answered below, so its asker asks again.
    let mut asked = Vec::new();
    while let Ok(change) = local.try_recv() {
        if let LocalChange::CallTicket(doc) = change {
            asked.push(doc);
        }
    }
    let signer = std::sync::Arc::new(AuditSigner::for_identity(&settings.identity)?);
    let mut replica = StoreReplica::new(store.clone(), "hub")?
        .with_audit_signer(signer)
        .with_roster_key(settings.roster_key)
        .with_tickets(out.tickets.clone());
    for doc in asked {
        replica.receive_call_ticket(doc, Err("the link to the hub was starting; asked again".into()));
    }
    loop {
        let (mut send, mut recv) = connected.conn.open_bi().await?;
        let mut session = sync_proto::Session::new(sync_proto::Role::Van);
        session.start(&replica);
        let result = sync_quic::driver::run_live(&mut session, &mut replica, &mut send, &mut recv, local, |state| {
            if !confirmed.load(std::sync::atomic::Ordering::Relaxed) {
                return;
            }
            let mut s = lock(&out.status);
            match state {
                sync_quic::driver::LiveState::Syncing => s.state = "syncing",
                sync_quic::driver::LiveState::Idle => {
                    s.state = "up_to_date";
                    s.last_success = Some(crate::api::now());
                    lock(&out.pending).clear();
                }
            }
        })
        .await;
        if !connected.retry(&result) {
            result?;
            return Ok(true);
        }
    }
}
