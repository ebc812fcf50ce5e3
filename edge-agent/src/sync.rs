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
use sync_proto::{DocId, Priority, RefusalReason, Replica, ReplicaRefusal};

/// A store seen by one sync peer.
#[derive(Debug)]
pub struct StoreReplica {
    store: Store,
    peer: String,
    /// The acting user recorded on changes received from the peer.
    actor: UserId,
    pending: BTreeMap<DocId, Vec<u8>>,
}

impl StoreReplica {
    /// The store as the peer named `peer` syncs with it.
    pub fn new(store: Store, peer: &str) -> anyhow::Result<StoreReplica> {
        let actor = UserId::parse(&format!("sync:{peer}"))?;
        Ok(StoreReplica { store, peer: peer.to_owned(), actor, pending: BTreeMap::new() })
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
}

/// What the touchscreen shows about sync.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SyncStatus {
    /// `not_configured`, `connecting`, `offline`, `syncing` or `up_to_date`.
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
    /// The fleet CA (pinned).
    pub ca: rustls::pki_types::CertificateDer<'static>,
    /// This van's certificate.
    pub cert: rustls::pki_types::CertificateDer<'static>,
    /// This van's key.
    pub key: rustls::pki_types::PrivateKeyDer<'static>,
    /// How fast a dead link is noticed.
    pub liveness: sync_quic::driver::Liveness,
}

/// The running sync service.
#[derive(Debug, Clone)]
pub struct SyncHandle {
    status: std::sync::Arc<std::sync::Mutex<SyncStatus>>,
    pending: std::sync::Arc<std::sync::Mutex<std::collections::BTreeSet<CaseId>>>,
}

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
        }
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
/// No one ever has to press "sync".
pub fn spawn(store: Store, settings: SyncSettings) -> anyhow::Result<SyncHandle> {
    let handle = SyncHandle::not_configured();
    lock(&handle.status).state = "connecting";
    lock(&handle.status).hub = Some(settings.address.clone());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<DocId>();
    let pending = handle.pending.clone();
    store.on_local_change(move |id| {
        lock(&pending).insert(id);
        let _ = tx.send(DocId(*id.as_bytes()));
    });
    let client = sync_quic::driver::client_config(
        &settings.ca,
        settings.cert.clone(),
        settings.key.clone_key(),
        settings.liveness,
    )?;
    // One socket for both families, where the OS allows it; IPv4 otherwise.
    let v6: std::net::SocketAddr = "[::]:0".parse()?;
    let v4: std::net::SocketAddr = "0.0.0.0:0".parse()?;
    let mut endpoint = quinn::Endpoint::client(v6).or_else(|_| quinn::Endpoint::client(v4))?;
    endpoint.set_default_client_config(client);
    let out = handle.clone();
    tokio::spawn(async move {
        let mut backoff = std::time::Duration::from_secs(1);
        loop {
            lock(&out.status).state = "connecting";
            let result = session(&store, &endpoint, &settings, &mut rx, &out).await;
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
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(std::time::Duration::from_secs(60));
        }
    });
    Ok(handle)
}

/// One connection's worth of sync. `Ok(true)` if it connected at all.
async fn session(
    store: &Store,
    endpoint: &quinn::Endpoint,
    settings: &SyncSettings,
    local: &mut tokio::sync::mpsc::UnboundedReceiver<DocId>,
    out: &SyncHandle,
) -> anyhow::Result<bool> {
    let addr = tokio::net::lookup_host(&settings.address)
        .await
        .with_context(|| format!("cannot resolve the hub address {}", settings.address))?
        .next()
        .with_context(|| format!("the hub address {} resolves to nothing", settings.address))?;
    let conn = endpoint.connect(addr, &settings.server_name)?.await?;
    lock(&out.status).connections += 1;
    let (mut send, mut recv) = conn.open_bi().await?;
    lock(&out.status).state = "syncing";
    lock(&out.status).last_error = None;
    // Changes made before this connection are covered by the inventory exchange.
    while local.try_recv().is_ok() {}
    let mut replica = StoreReplica::new(store.clone(), "hub")?;
    let mut session = sync_proto::Session::new(sync_proto::Role::Van);
    session.start(&replica);
    let result = sync_quic::driver::run_live(&mut session, &mut replica, &mut send, &mut recv, local, |state| {
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
    result?;
    Ok(true)
}
