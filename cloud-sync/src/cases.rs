//! The hub's cases: what vans sync and doctors edit, above the storage interface.
//!
//! [`CaseHub`] owns the rules, so both storage backends follow them alike:
//! - A case belongs to the organisation written in it and to the van that created it; a
//!   fleet manager may assign it to other vans of the same organisation. A van syncs
//!   exactly those cases ([`CaseHub::replica_for`]). Any other change a van sends is
//!   refused, audited and logged, and the session goes on.
//! - Changes from vans and edits by doctors are appended durably (and audited in the same
//!   transaction) before they are acknowledged, then announced on [`CaseHub::changes`] so
//!   that connected vans receive them at once.
//! - Documents are cached in memory, keyed by their stored version: a hub process that
//!   finds the version moved (another process appended) reloads before use, and an append
//!   that loses the race is re-applied on top of the winner's.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use automerge::sync::{self, SyncDoc};
use automerge::{Automerge, ChangeHash, ReadDoc};
use case_model::{CaseDoc, CaseId, CaseSummary, CaseView, Edit, EditContext, OrgId, Timestamp, UserId};
use sha2::{Digest, Sha256};
use sync_proto::{BlobState, CHUNK, DocId, Priority, RefusalReason, Replica, ReplicaRefusal};
use sync_quic::identity::{DeviceId, check_name};
use tokio::sync::broadcast;

use crate::storage::crypto::{self, Sealer};
use crate::storage::{Append, CaseMeta, Storage, StorageError};

/// Cases kept in memory at most (each is re-read from storage when needed again).
const CACHE: usize = 2048;
/// How many complete blobs' sizes are remembered (about 50 bytes each).
const COMPLETE_BLOBS: usize = 200_000;
/// Appends after which a case is compacted into one saved document.
const COMPACT_AFTER: usize = 64;
/// The largest blob a van may upload.
pub const MAX_BLOB: u64 = 4 << 30;

/// Why a request on the hub's cases failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaseError {
    /// No such case in the caller's organisation (whether it exists elsewhere is not said).
    #[error("there is no case {0} in your organisation")]
    NotFound(CaseId),
    /// The edit was refused; nothing was written.
    #[error("the edit was refused: {0}")]
    Refused(#[from] case_model::BatchError),
    /// A van or organisation name that cannot go into a certificate.
    #[error("{0:?} cannot name a van or an organisation: use 1 to 64 letters, digits, '.', '_' and '-'")]
    BadName(String),
    /// Storage failed; nothing was written.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// Stored bytes are not a case.
    #[error("case {0} is damaged in storage: {1}")]
    Damaged(String, String),
    /// An attachment the case lists whose bytes have not all arrived yet.
    #[error("attachment {0} has not finished arriving from the van; try again shortly")]
    NotYetHere(String),
}

struct Slot {
    meta: CaseMeta,
    doc: CaseDoc,
}

/// The hub's cases.
pub struct CaseHub {
    storage: Arc<dyn Storage>,
    sealer: Sealer,
    cache: Mutex<HashMap<DocId, Arc<Mutex<Option<Slot>>>>>,
    /// Sizes of blobs known complete (by storage key): a complete blob never changes, so a
    /// van's reconnect need not ask storage about each of its images again.
    complete: Mutex<HashMap<[u8; 32], u64>>,
    changes: broadcast::Sender<DocId>,
    positions: broadcast::Sender<VanPosition>,
    actor: automerge::ActorId,
}

impl std::fmt::Debug for CaseHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaseHub").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn now() -> Timestamp {
    let ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
    Timestamp::from_unix_millis(ms)
}

fn record(actor: &str, action: &str, case: Option<DocId>, outcome: audit::Outcome, detail: String) -> audit::Record {
    audit::Record {
        at: now().unix_millis(),
        actor: actor.to_owned(),
        action: action.to_owned(),
        case_id: case.map(|d| CaseId::from_bytes(d.0).to_string()),
        outcome,
        detail,
    }
}

impl CaseHub {
    /// The hub's cases over `storage`, sealing with `sealer`.
    pub fn new(storage: Arc<dyn Storage>, sealer: Sealer) -> CaseHub {
        let mut random = [0u8; 8];
        rand::fill(&mut random);
        CaseHub {
            storage,
            sealer,
            cache: Mutex::new(HashMap::new()),
            complete: Mutex::new(HashMap::new()),
            changes: broadcast::channel(4096).0,
            positions: broadcast::channel(1024).0,
            actor: case_model::session_actor(b"medvhub\0", random),
        }
    }

    /// The storage underneath.
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    /// What seals data before it reaches storage.
    pub(crate) fn sealer(&self) -> &Sealer {
        &self.sealer
    }

    /// Cases changed on this hub, as they change: connected vans' sessions listen here.
    pub fn changes(&self) -> broadcast::Sender<DocId> {
        self.changes.clone()
    }

    /// Vans' positions as their sessions report them (the geofence service listens).
    pub fn positions(&self) -> broadcast::Sender<VanPosition> {
        self.positions.clone()
    }

    /// A van's view of the hub's cases, for one sync connection.
    pub fn replica_for(self: &Arc<Self>, device: &DeviceId) -> HubReplica {
        HubReplica {
            hub: self.clone(),
            device: device.clone(),
            peer: format!("van:{}/{}", device.org, device.van),
            scratch: HashMap::new(),
            pending: BTreeMap::new(),
            peer_key: None,
            identity: None,
        }
    }

    fn slot(&self, doc: DocId) -> Arc<Mutex<Option<Slot>>> {
        let mut cache = lock(&self.cache);
        if cache.len() >= CACHE && !cache.contains_key(&doc) {
            // Drop cases no one is using; they are read again from storage when needed.
            cache.retain(|_, s| Arc::strong_count(s) > 1);
        }
        cache.entry(doc).or_default().clone()
    }

    /// The size of a complete blob, or `None` while it is missing or partial.
    fn complete_blob_size(&self, key: &[u8; 32]) -> Result<Option<u64>, StorageError> {
        if let Some(size) = lock(&self.complete).get(key) {
            return Ok(Some(*size));
        }
        let size = self.storage.complete_blob_size(key)?;
        if let Some(size) = size {
            let mut known = lock(&self.complete);
            if known.len() >= COMPLETE_BLOBS {
                known.clear();
            }
            known.insert(*key, size);
        }
        Ok(size)
    }

    /// Runs `f` on a case's cached copy, read again from storage first unless the cache
    /// holds `version` (a version read with the van's whole scope in one query).
    fn with_version<T>(&self, doc: DocId, version: i64, f: impl FnOnce(&Slot) -> T) -> Option<T> {
        let slot = self.slot(doc);
        let mut slot = lock(&slot);
        if slot.as_ref().is_none_or(|s| s.meta.version != version) && self.refresh(doc, &mut slot).is_err() {
            return None;
        }
        slot.as_ref().map(f)
    }

    /// Brings a slot up to date with storage: `None` if the case does not exist.
    fn refresh(&self, doc: DocId, slot: &mut Option<Slot>) -> Result<(), CaseError> {
        let Some(meta) = self.storage.case_meta(doc)? else {
            *slot = None;
            return Ok(());
        };
        if let Some(s) = slot.as_mut()
            && s.meta.version == meta.version
        {
            s.meta = meta;
            return Ok(());
        }
        let chunks = self.storage.case_chunks(doc)?;
        let label = crypto::case_label(doc);
        let mut am = Automerge::new();
        let id = CaseId::from_bytes(doc.0).to_string();
        for sealed in &chunks {
            let plain = self.sealer.open(&label, sealed)?;
            am.load_incremental(&plain).map_err(|e| CaseError::Damaged(id.clone(), e.to_string()))?;
        }
        let mut case = CaseDoc::from_automerge(am.with_actor(self.actor.clone()))
            .map_err(|e| CaseError::Damaged(id.clone(), e.to_string()))?;
        case.refresh_conflicts();
        if chunks.len() > COMPACT_AFTER {
            let sealed = self.sealer.seal(&label, &case.save());
            // Losing this race to another writer only postpones compaction.
            if let Err(e) = self.storage.compact_case(doc, meta.version, &sealed)
                && !matches!(e, StorageError::Conflict)
            {
                tracing::warn!(case = %id, error = %e, "could not compact a case");
            }
        }
        *slot = Some(Slot { meta, doc: case });
        Ok(())
    }

    /// Appends the changes `slot`'s document gained since `before`, re-applying them on top
    /// of another process's appends if it got there first.
    fn persist(
        &self,
        doc: DocId,
        slot: &mut Option<Slot>,
        before: &[ChangeHash],
        audit: &audit::Record,
    ) -> Result<(), CaseError> {
        let label = crypto::case_label(doc);
        let s = slot.as_mut().expect("persist is called on a loaded case");
        let mut bytes = s.doc.automerge_mut().save_after(before);
        for _ in 0..8 {
            let s = slot.as_mut().expect("persist is called on a loaded case");
            let sealed = self.sealer.seal(&label, &bytes);
            match self.storage.append_case(Append { doc, expected_version: s.meta.version, sealed: &sealed, audit }) {
                Ok(version) => {
                    s.meta.version = version;
                    let _ = self.changes.send(doc);
                    return Ok(());
                }
                Err(StorageError::Conflict) => {
                    // Another hub process appended: reload, then apply ours on top.
                    *slot = None;
                    self.refresh(doc, slot)?;
                    let s = slot.as_mut().ok_or(CaseError::NotFound(CaseId::from_bytes(doc.0)))?;
                    let heads = s.doc.heads();
                    let am = s.doc.automerge_mut();
                    am.load_incremental(&bytes)
                        .map_err(|e| CaseError::Damaged(CaseId::from_bytes(doc.0).to_string(), e.to_string()))?;
                    bytes = am.save_after(&heads);
                }
                Err(e) => {
                    // The in-memory document is ahead of storage: forget it.
                    *slot = None;
                    return Err(e.into());
                }
            }
        }
        *slot = None;
        Err(StorageError::Conflict.into())
    }

    /// Creates an organisation.
    pub fn create_org(&self, actor: &UserId, org: &OrgId, name: &str) -> Result<(), CaseError> {
        // Organisation ids go into the vans' certificates.
        check_name(org.as_str()).map_err(|_| CaseError::BadName(org.to_string()))?;
        self.storage.create_org(org.as_str(), name)?;
        self.storage.audit(&record(actor.as_str(), "org.create", None, audit::Outcome::Allowed, org.to_string()))?;
        Ok(())
    }

    /// Assigns a case of `org` to a van of the same organisation.
    pub fn assign(&self, actor: &UserId, org: &OrgId, case: CaseId, van: &str) -> Result<(), CaseError> {
        check_name(van).map_err(|_| CaseError::BadName(van.to_owned()))?;
        let doc = DocId(*case.as_bytes());
        match self.storage.case_meta(doc)? {
            Some(meta) if meta.org == org.as_str() => {}
            _ => return Err(CaseError::NotFound(case)),
        }
        let rec = record(actor.as_str(), "case.assign", Some(doc), audit::Outcome::Allowed, format!("to van {van}"));
        self.storage.assign(doc, van, &rec)?;
        let _ = self.changes.send(doc);
        Ok(())
    }

    /// Runs `f` on a case of `org`, loaded and current.
    fn with_case<T>(
        &self,
        org: &OrgId,
        case: CaseId,
        f: impl FnOnce(&mut Option<Slot>) -> Result<T, CaseError>,
    ) -> Result<T, CaseError> {
        let doc = DocId(*case.as_bytes());
        let slot = self.slot(doc);
        let mut slot = lock(&slot);
        self.refresh(doc, &mut slot)?;
        match slot.as_ref() {
            Some(s) if s.meta.org == org.as_str() => f(&mut slot),
            _ => Err(CaseError::NotFound(case)),
        }
    }

    /// Reads a case (a doctor, an admin), audited.
    pub fn read_case(&self, user: &UserId, org: &OrgId, case: CaseId) -> Result<CaseView, CaseError> {
        let doc = DocId(*case.as_bytes());
        let result = self.with_case(org, case, |slot| Ok(slot.as_ref().expect("checked").doc.view()));
        self.audit_access(user, "case.read", doc, &result, String::new())?;
        result
    }

    /// Who accessed a case (of the caller's organisation), oldest first: "who saw this
    /// patient". Reading it is an access too, and is recorded before the answer.
    pub fn access_log(&self, user: &UserId, org: &OrgId, case: CaseId) -> Result<Vec<audit::Entry>, CaseError> {
        let doc = DocId(*case.as_bytes());
        let owner = self.storage.case_meta(doc)?.map(|m| m.org);
        let result = if owner.as_deref() == Some(org.as_str()) { Ok(()) } else { Err(CaseError::NotFound(case)) };
        self.audit_access(user, "audit.read", doc, &result, String::new())?;
        result?;
        Ok(self.storage.audit_of_case(&case.to_string())?)
    }

    /// An attachment's bytes and media type, when the case (of the caller's organisation)
    /// lists it; audited.
    pub fn read_attachment(
        &self,
        user: &UserId,
        org: &OrgId,
        case: CaseId,
        sha256: &str,
    ) -> Result<(Vec<u8>, String), CaseError> {
        let doc = DocId(*case.as_bytes());
        let result = self.with_case(org, case, |slot| {
            let doc = &slot.as_ref().expect("checked").doc;
            doc.attachments()
                .into_iter()
                .find(|a| a.get("sha256").and_then(|s| s.as_str()) == Some(sha256))
                .map(|a| a.get("media_type").and_then(|m| m.as_str()).unwrap_or("application/octet-stream").to_owned())
                .ok_or(CaseError::NotFound(case))
        });
        self.audit_access(user, "blob.read", doc, &result, sha256.chars().take(64).collect())?;
        let media = result?;
        let sha: [u8; 32] =
            hex::decode(sha256).ok().and_then(|b| b.try_into().ok()).ok_or(CaseError::NotFound(case))?;
        // The size stored with the blob, never the one the case document claims.
        let Some(size) = self.complete_blob_size(&blob_key(org.as_str(), &sha))? else {
            return Err(CaseError::NotYetHere(sha256.to_owned()));
        };
        let data = read_blob(self, org.as_str(), &sha, 0, size)?;
        Ok((data, media))
    }

    /// Writes edits into a case on behalf of a user of its organisation (a doctor's note),
    /// durably and audited, and offers them to connected vans.
    pub fn edit_case(
        &self,
        ctx: &EditContext,
        org: &OrgId,
        case: CaseId,
        edits: &[Edit],
    ) -> Result<CaseView, CaseError> {
        let doc = DocId(*case.as_bytes());
        let ops: Vec<&str> = edits.iter().map(Edit::name).collect();
        let result = self.with_case(org, case, |slot| {
            let s = slot.as_mut().expect("checked");
            let before = s.doc.heads();
            s.doc.apply(ctx, edits)?;
            let rec = record(ctx.user.as_str(), "case.edit", Some(doc), audit::Outcome::Allowed, ops.join(","));
            self.persist(doc, slot, &before, &rec)?;
            Ok(slot.as_ref().expect("persisted").doc.view())
        });
        if result.is_err() {
            self.audit_access(&ctx.user, "case.edit", doc, &result, ops.join(","))?;
        }
        result
    }

    /// Summaries of an organisation's cases, audited.
    pub fn list_cases(&self, user: &UserId, org: &OrgId) -> Result<Vec<CaseSummary>, CaseError> {
        let mut out = Vec::new();
        for doc in self.storage.cases_of_org(org.as_str())? {
            match self
                .with_case(org, CaseId::from_bytes(doc.0), |slot| Ok(slot.as_ref().expect("checked").doc.summary()))
            {
                Ok(s) => out.push(s),
                Err(CaseError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        self.storage.audit(&record(user.as_str(), "case.list", None, audit::Outcome::Allowed, org.to_string()))?;
        Ok(out)
    }

    /// The open cases of an organisation that asked for a consult, for the doctors' queue;
    /// one audit entry for the look.
    pub fn consulting_cases(&self, user: &UserId, org: &OrgId) -> Result<Vec<case_model::CaseView>, CaseError> {
        let mut out = Vec::new();
        for doc in self.storage.cases_of_org(org.as_str())? {
            let view = self.with_case(org, CaseId::from_bytes(doc.0), |slot| {
                let doc = &slot.as_ref().expect("checked").doc;
                Ok(doc.view())
            });
            match view {
                Ok(v) if v.closed_at.is_none() && !v.consults.is_empty() => out.push(v),
                Ok(_) | Err(CaseError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        self.storage.audit(&record(user.as_str(), "consult.list", None, audit::Outcome::Allowed, org.to_string()))?;
        Ok(out)
    }

    /// The organisation a case belongs to, if the hub holds it.
    pub fn org_of(&self, doc: DocId) -> Result<Option<String>, CaseError> {
        Ok(self.storage.case_meta(doc)?.map(|m| m.org))
    }

    fn audit_access<T>(
        &self,
        user: &UserId,
        action: &str,
        doc: DocId,
        result: &Result<T, CaseError>,
        detail: String,
    ) -> Result<(), CaseError> {
        let (outcome, detail) = match result {
            Ok(_) => (audit::Outcome::Allowed, detail),
            Err(e) => (audit::Outcome::Refused, format!("{detail} {e}").trim().to_owned()),
        };
        self.storage.audit(&record(user.as_str(), action, Some(doc), outcome, detail))?;
        Ok(())
    }
}

/// A van's position as its session reported it.
#[derive(Debug, Clone)]
pub struct VanPosition {
    /// The van's organisation (from its certificate).
    pub org: String,
    /// The van (from its certificate).
    pub van: String,
    /// What it reported.
    pub report: sync_proto::PositionReport,
}

/// One van's view of the hub's cases, for the sync protocol: the cases it may sync, and
/// nothing else, in either direction.
pub struct HubReplica {
    hub: Arc<CaseHub>,
    device: DeviceId,
    peer: String,
    /// Documents the van offered that the hub does not hold yet: kept per connection until
    /// they arrive whole and are checked, so nothing unchecked is ever shared.
    scratch: HashMap<DocId, Automerge>,
    pending: BTreeMap<DocId, Vec<u8>>,
    /// The van's certificate key, to check its signed audit tree heads.
    peer_key: Option<Vec<u8>>,
    /// Where the crew roster comes from.
    identity: Option<Arc<crate::identity::Identity>>,
}

impl std::fmt::Debug for HubReplica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubReplica").field("peer", &self.peer).finish_non_exhaustive()
    }
}

fn refuse(reason: RefusalReason, detail: impl Into<String>) -> ReplicaRefusal {
    ReplicaRefusal { reason, detail: detail.into() }
}

impl HubReplica {
    /// Sends the van its organisation's crew roster from `identity`.
    pub fn with_roster(mut self, identity: Arc<crate::identity::Identity>) -> HubReplica {
        self.identity = Some(identity);
        self
    }

    fn entitled(&self, meta: &CaseMeta) -> bool {
        meta.entitles(&self.device.org, &self.device.van)
    }

    fn refused(&self, doc: DocId, why: &str) -> ReplicaRefusal {
        tracing::warn!(van = %self.peer, case = %CaseId::from_bytes(doc.0), reason = why, "refused a van's changes");
        let rec = record(&self.peer, "case.sync", Some(doc), audit::Outcome::Refused, why.to_owned());
        if let Err(e) = self.hub.storage.audit(&rec) {
            tracing::error!(error = %e, "could not audit a refusal");
        }
        refuse(
            RefusalReason::NotAuthorised,
            "this van may not sync this case (ask the fleet manager to assign it); the hub logged why",
        )
    }

    fn unavailable(&self, doc: DocId, e: &CaseError) -> ReplicaRefusal {
        tracing::error!(van = %self.peer, case = %CaseId::from_bytes(doc.0), error = %e, "could not store a van's changes");
        refuse(RefusalReason::Malformed, format!("the hub could not store this case now ({e}); it is sent again later"))
    }

    /// Receives changes to a case the hub already holds.
    fn receive_known(
        &mut self,
        doc: DocId,
        slot: &mut Option<Slot>,
        state: &mut sync::State,
        msg: sync::Message,
    ) -> Result<(), ReplicaRefusal> {
        let s = slot.as_mut().expect("known");
        if !self.entitled(&s.meta) {
            // The audit log and the hub's log say which rule refused it; the van is told
            // only that it may not sync the case, so it learns nothing of other
            // organisations' cases.
            let why = if s.meta.org != self.device.org {
                "the case belongs to another organisation"
            } else {
                "the case was neither created by this van nor assigned to it"
            };
            return Err(self.refused(doc, why));
        }
        let before = s.doc.heads();
        let mut trial = state.clone();
        let changes = msg.changes.len();
        if let Err(e) = s.doc.automerge_mut().receive_sync_message(&mut trial, msg) {
            *slot = None;
            return Err(refuse(RefusalReason::Malformed, format!("the sync message could not be applied: {e}")));
        }
        if s.doc.heads() != before {
            if !s.doc.identity_unchanged() {
                *slot = None;
                return Err(self.refused(doc, "the changes rewrite the case's identity or organisation"));
            }
            let rec = record(
                &self.peer,
                "case.sync",
                Some(doc),
                audit::Outcome::Allowed,
                format!("{changes} change chunk(s) received"),
            );
            if let Err(e) = self.hub.persist(doc, slot, &before, &rec) {
                return Err(self.unavailable(doc, &e));
            }
        }
        *state = trial;
        Ok(())
    }

    /// Receives a case the hub does not hold yet: it becomes the hub's once it arrives whole
    /// and names this van's organisation and this van.
    fn receive_new(
        &mut self,
        doc: DocId,
        slot: &mut Option<Slot>,
        state: &mut sync::State,
        msg: sync::Message,
    ) -> Result<(), ReplicaRefusal> {
        let mut trial = state.clone();
        let scratch = self.scratch.entry(doc).or_default();
        if let Err(e) = scratch.receive_sync_message(&mut trial, msg) {
            self.scratch.remove(&doc);
            return Err(refuse(RefusalReason::Malformed, format!("the sync message could not be applied: {e}")));
        }
        if scratch.get_heads().is_empty() || !scratch.get_missing_deps(&[]).is_empty() {
            // Nothing yet, or not all of it: wait for the rest.
            *state = trial;
            return Ok(());
        }
        let am = self.scratch.remove(&doc).expect("present").with_actor(self.hub.actor.clone());
        let case = match CaseDoc::from_automerge(am) {
            Ok(c) => c,
            Err(e) => return Err(refuse(RefusalReason::Malformed, format!("this is not a Medvan case: {e}"))),
        };
        if case.id().as_bytes() != &doc.0 {
            return Err(self.refused(doc, "the document's case id differs from the id it was sent under"));
        }
        if case.org().as_str() != self.device.org {
            return Err(self.refused(doc, "the case names another organisation than this van's"));
        }
        if case.van().as_str() != self.device.van {
            return Err(self.refused(doc, "the case names another van as its creator"));
        }
        let sealed = self.hub.sealer.seal(&crypto::case_label(doc), &case.save());
        let rec = record(&self.peer, "case.create", Some(doc), audit::Outcome::Allowed, "received from the van".into());
        let append = Append { doc, expected_version: 0, sealed: &sealed, audit: &rec };
        match self.hub.storage.insert_case(&self.device.org, &self.device.van, append) {
            Ok(version) => {
                let meta = CaseMeta {
                    org: self.device.org.clone(),
                    creator: self.device.van.clone(),
                    assigned: vec![],
                    version,
                };
                *slot = Some(Slot { meta, doc: case });
                let _ = self.hub.changes.send(doc);
                *state = trial;
                Ok(())
            }
            Err(StorageError::Conflict) => {
                // Created meanwhile (the same van on a second connection, or another hub
                // process): apply as changes to the stored case.
                *slot = None;
                Err(refuse(RefusalReason::Malformed, "the case was created concurrently; it is sent again"))
            }
            Err(StorageError::NoSuchOrg(o)) => {
                Err(self.refused(doc, &format!("organisation {o} does not exist on this hub")))
            }
            Err(e) => Err(self.unavailable(doc, &CaseError::Storage(e))),
        }
    }

    /// The van's cases with their versions: one query.
    fn scope_versions(&self) -> Vec<(DocId, i64)> {
        match self.hub.storage.case_versions_for_van(&self.device.org, &self.device.van) {
            Ok(docs) => docs,
            Err(e) => {
                tracing::error!(van = %self.peer, error = %e, "sync: could not list the van's cases");
                Vec::new()
            }
        }
    }

    /// Blobs referenced by the cases this van may sync, with their priorities.
    fn referenced_blobs(&self) -> Vec<([u8; 32], Priority)> {
        let mut out = Vec::new();
        for (doc, version) in self.scope_versions() {
            let _ = self.hub.with_version(doc, version, |s| {
                for item in s.doc.attachments() {
                    let sha = item.get("sha256").and_then(|v| v.as_str()).and_then(|h| hex::decode(h).ok());
                    let Some(sha) = sha.and_then(|b| <[u8; 32]>::try_from(b).ok()) else { continue };
                    let priority = match item.get("kind").and_then(|v| v.as_str()) {
                        Some("xray_preview") => Priority::Preview,
                        Some("video_segment") => Priority::Video,
                        _ => Priority::FullImage,
                    };
                    out.push((sha, priority));
                }
            });
        }
        out
    }
}

/// The replica's work, run under [`blocking`] by the trait's methods.
impl HubReplica {
    fn heads_now(&self, doc: DocId) -> Vec<ChangeHash> {
        let slot = self.hub.slot(doc);
        let mut slot = lock(&slot);
        if self.hub.refresh(doc, &mut slot).is_err() {
            return Vec::new();
        }
        let mut heads = match slot.as_ref() {
            Some(s) if self.entitled(&s.meta) => s.doc.heads(),
            Some(_) => Vec::new(),
            None => self.scratch.get(&doc).map(|d| d.get_heads()).unwrap_or_default(),
        };
        heads.sort();
        heads
    }

    fn sync_state_now(&mut self, doc: DocId) -> sync::State {
        let sealed = match self.pending.get(&doc) {
            Some(s) => return sync::State::decode(s).unwrap_or_default(),
            None => self.hub.storage.sync_state(&self.peer, doc).ok().flatten(),
        };
        sealed
            .and_then(|s| self.hub.sealer.open(&crypto::sync_label(&self.peer, doc), &s).ok())
            .and_then(|b| sync::State::decode(&b).ok())
            .unwrap_or_default()
    }

    fn flush_now(&mut self) {
        let states: Vec<(DocId, Vec<u8>)> = std::mem::take(&mut self.pending)
            .into_iter()
            .map(|(doc, s)| (doc, self.hub.sealer.seal(&crypto::sync_label(&self.peer, doc), &s)))
            .collect();
        if let Err(e) = self.hub.storage.save_sync_states(&self.peer, &states) {
            tracing::warn!(van = %self.peer, error = %e, "sync: could not save sync states; the next sync resends more");
        }
    }

    fn generate_now(&mut self, doc: DocId, state: &mut sync::State) -> Option<sync::Message> {
        let slot = self.hub.slot(doc);
        let mut slot = lock(&slot);
        if let Err(e) = self.hub.refresh(doc, &mut slot) {
            tracing::error!(case = %CaseId::from_bytes(doc.0), error = %e, "sync: could not load a case");
            return None;
        }
        match slot.as_ref() {
            Some(s) if self.entitled(&s.meta) => {
                let msg = s.doc.automerge().generate_sync_message(state)?;
                if !msg.changes.is_empty() {
                    let rec = record(&self.peer, "case.sync_send", Some(doc), audit::Outcome::Allowed, String::new());
                    if let Err(e) = self.hub.storage.audit(&rec) {
                        // Nothing leaves unaudited.
                        tracing::error!(error = %e, "could not audit a send; not sent");
                        return None;
                    }
                }
                Some(msg)
            }
            // Never send anything of a case the van may not have.
            Some(_) => None,
            None => self.scratch.entry(doc).or_default().generate_sync_message(state),
        }
    }

    fn receive_now(&mut self, doc: DocId, state: &mut sync::State, msg: sync::Message) -> Result<(), ReplicaRefusal> {
        let slot = self.hub.slot(doc);
        let mut slot = lock(&slot);
        if let Err(e) = self.hub.refresh(doc, &mut slot) {
            return Err(self.unavailable(doc, &e));
        }
        if slot.is_some() {
            self.receive_known(doc, &mut slot, state, msg)
        } else {
            self.receive_new(doc, &mut slot, state, msg)
        }
    }
}

impl Replica for HubReplica {
    fn call_ticket(&mut self, doc: DocId) -> Result<sync_proto::CallGrant, String> {
        let Some(identity) = self.identity.clone() else {
            return Err("this hub does not issue call tickets".into());
        };
        blocking(|| {
            let meta = match self.hub.storage.case_meta(doc) {
                Ok(m) => m,
                Err(e) => {
                    tracing::error!(van = %self.peer, error = %e, "could not read a case for a call ticket");
                    return Err("the hub cannot check this case now; try again".into());
                }
            };
            // The same rule as syncing the case: a van calls about a case it may hold.
            let (outcome, answer): (_, Result<sync_proto::CallGrant, String>) = match &meta {
                None => (
                    audit::Outcome::Refused,
                    Err("the hub has not received this case yet; try again in a moment".into()),
                ),
                Some(m) if !self.entitled(m) => (
                    audit::Outcome::Refused,
                    Err("this van may not sync this case, so it may not call about it; the hub logged why".into()),
                ),
                Some(_) => {
                    let case = CaseId::from_bytes(doc.0);
                    let now_s = now().unix_millis() / 1000;
                    (
                        audit::Outcome::Allowed,
                        Ok(identity.issue_call_ticket(&self.device.org, &self.device.van, case, now_s)),
                    )
                }
            };
            let rec = record(&self.peer, "call.ticket", Some(doc), outcome, String::new());
            if let Err(e) = self.hub.storage.audit(&rec) {
                // Nothing leaves unaudited.
                tracing::error!(error = %e, "could not audit a call ticket; none given");
                return Err("the hub could not record the request; try again".into());
            }
            answer
        })
    }

    fn receive_position(&mut self, report: sync_proto::PositionReport) {
        // Nobody listening (a hub without the geofence service) is fine.
        let _ =
            self.hub.positions.send(VanPosition { org: self.device.org.clone(), van: self.device.van.clone(), report });
    }

    fn scope(&self) -> Vec<DocId> {
        blocking(|| self.scope_versions()).into_iter().map(|(doc, _)| doc).collect()
    }

    fn heads(&self, doc: DocId) -> Vec<ChangeHash> {
        blocking(|| self.heads_now(doc))
    }

    fn scope_heads(&self) -> Vec<(DocId, Vec<ChangeHash>)> {
        // One query for the versions; cached copies answer where their version holds.
        blocking(|| {
            self.scope_versions()
                .into_iter()
                .map(|(doc, version)| {
                    let mut heads = self.hub.with_version(doc, version, |s| s.doc.heads()).unwrap_or_default();
                    heads.sort();
                    (doc, heads)
                })
                .collect()
        })
    }

    fn priority(&self, _doc: DocId) -> Priority {
        Priority::Case
    }

    fn sync_state(&mut self, doc: DocId) -> sync::State {
        blocking(|| self.sync_state_now(doc))
    }

    fn save_sync_state(&mut self, doc: DocId, state: &sync::State) {
        self.pending.insert(doc, state.encode());
    }

    fn flush(&mut self) {
        blocking(|| self.flush_now())
    }

    fn generate(&mut self, doc: DocId, state: &mut sync::State) -> Option<sync::Message> {
        blocking(|| self.generate_now(doc, state))
    }

    fn receive(&mut self, doc: DocId, state: &mut sync::State, msg: sync::Message) -> Result<(), ReplicaRefusal> {
        blocking(|| self.receive_now(doc, state, msg))
    }

    fn accepts_blob(&self, _sha256: &[u8; 32], size: u64) -> bool {
        // Blobs are kept per organisation (see `blob_key`), so another organisation's upload
        // neither answers for nor interferes with this one's; sending one to a van needs a
        // case it may sync that refers to it. An upload may arrive before that case does.
        size <= MAX_BLOB
    }

    fn blobs(&self) -> Vec<([u8; 32], u64, Priority)> {
        let mut out = Vec::new();
        blocking(|| {
            for (sha, priority) in self.referenced_blobs() {
                let key = blob_key(&self.device.org, &sha);
                if let Ok(Some(size)) = self.hub.complete_blob_size(&key) {
                    out.push((sha, size, priority));
                }
            }
        });
        out.sort();
        out.dedup_by_key(|b| b.0);
        out
    }

    fn blob_state(&self, sha256: &[u8; 32]) -> BlobState {
        let key = blob_key(&self.device.org, sha256);
        blocking(|| self.hub.storage.blob_state(&key)).unwrap_or(BlobState::Missing)
    }

    fn read_blob(&mut self, sha256: &[u8; 32], offset: u64, len: u64) -> Result<Vec<u8>, ReplicaRefusal> {
        blocking(|| read_blob(&self.hub, &self.device.org, sha256, offset, len))
            .map_err(|e| refuse(RefusalReason::Malformed, e.to_string()))
    }

    fn write_blob(&mut self, sha256: &[u8; 32], size: u64, offset: u64, data: &[u8]) -> Result<(), ReplicaRefusal> {
        // Every piece but the last is a whole chunk, so a resumed transfer always starts
        // on a chunk boundary.
        if !offset.is_multiple_of(CHUNK) || offset >= size || data.len() as u64 != CHUNK.min(size - offset) {
            return Err(refuse(RefusalReason::Malformed, format!("blob bytes at {offset} are not a whole chunk")));
        }
        let key = blob_key(&self.device.org, sha256);
        let index = offset / CHUNK;
        let sealed = self.hub.sealer.seal_chunk(&key, index, data);
        blocking(|| self.hub.storage.put_blob_chunk(&key, index, data.len() as u64, &sealed))
            .map_err(|e| refuse(RefusalReason::Malformed, e.to_string()))
    }

    fn roster_update(&mut self) -> Option<([u8; 32], Vec<sync_proto::CrewMember>)> {
        let identity = self.identity.as_ref()?;
        let (org, van) = (&self.device.org, &self.device.van);
        let found = blocking(|| {
            let (digest, members) = identity.roster(org)?;
            let acked = identity.roster_acked(org, van)?;
            Ok::<_, crate::identity::IdentityError>((acked != Some(digest)).then_some((digest, members)))
        });
        found.map_err(|e| tracing::error!(error = %e, "could not read the crew roster")).ok().flatten()
    }

    fn roster_acked(&mut self, digest: [u8; 32]) {
        if let Some(identity) = &self.identity {
            let (org, van) = (&self.device.org, &self.device.van);
            if let Err(e) = blocking(|| identity.set_roster_acked(org, van, digest)) {
                tracing::warn!(error = %e, "could not record the van's roster confirmation; it is sent again");
            }
        }
    }

    fn set_peer_key(&mut self, key: &[u8]) {
        self.peer_key = Some(key.to_vec());
    }

    fn receive_audit(
        &mut self,
        _first_seq: u64,
        entries: Vec<sync_proto::AuditRecord>,
        head: sync_proto::SignedHead,
    ) -> Result<u64, ReplicaRefusal> {
        let (storage, device, key) = (&*self.hub.storage, &self.device, self.peer_key.as_deref());
        blocking(|| crate::van_audit::receive(storage, device, key, entries, head))
    }

    fn finish_blob(&mut self, sha256: &[u8; 32], size: u64) -> Result<(), ReplicaRefusal> {
        let key = blob_key(&self.device.org, sha256);
        let result = blocking(|| -> Result<(), StorageError> {
            let mut hasher = Sha256::new();
            let mut offset = 0;
            while offset < size {
                let len = CHUNK.min(size - offset);
                hasher.update(read_blob_any(&self.hub, &key, offset, len)?);
                offset += len;
            }
            if <[u8; 32]>::from(hasher.finalize()) != *sha256 {
                self.hub.storage.drop_blob(&key)?;
                lock(&self.hub.complete).remove(&key);
                return Err(StorageError::BlobMismatch(hex::encode(sha256)));
            }
            self.hub.storage.complete_blob(&key, size)
        });
        match result {
            Ok(()) => {
                let rec = record(&self.peer, "blob.receive", None, audit::Outcome::Allowed, hex::encode(sha256));
                let _ = self.hub.storage.audit(&rec);
                blocking(|| self.index_if_dicom(sha256, size));
                Ok(())
            }
            Err(e) => Err(refuse(RefusalReason::Malformed, e.to_string())),
        }
    }
}

impl HubReplica {
    /// A van's X-ray arrives as a blob; a DICOM one is filed for DICOMweb under the van's
    /// organisation (and linked to its case) as soon as it is whole.
    fn index_if_dicom(&self, sha256: &[u8; 32], size: u64) {
        if size > crate::dicom::MAX_OBJECT as u64 || size < 132 {
            return;
        }
        let Ok(head) = read_blob(&self.hub, &self.device.org, sha256, 128, 4) else { return };
        if head != b"DICM" {
            return;
        }
        let Ok(org) = case_model::OrgId::parse(&self.device.org) else { return };
        let filed = read_blob(&self.hub, &self.device.org, sha256, 0, size)
            .map_err(CaseError::from)
            .and_then(|bytes| self.hub.store_dicom(&self.peer, &org, &bytes, None));
        match filed {
            Ok(Ok(f)) => {
                tracing::info!(study = %f.study, instance = %f.sop_instance, van = %self.peer, "filed a van's image for DICOMweb")
            }
            Ok(Err(r)) => tracing::warn!(van = %self.peer, reason = %r.message, "a van's DICOM object was not filed"),
            Err(e) => tracing::error!(van = %self.peer, error = %e, "a van's DICOM object could not be filed"),
        }
    }
}

/// Where an organisation's copy of a blob is kept: blobs are content-addressed within an
/// organisation only, so no van learns whether another organisation holds an image, or
/// gets it by naming its hash in a case of its own.
pub fn blob_key(org: &str, sha: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"medvan-blob-v1\0");
    h.update((org.len() as u64).to_be_bytes());
    h.update(org.as_bytes());
    h.update(sha);
    h.finalize().into()
}

/// Reads bytes of an organisation's complete blob.
pub fn read_blob(hub: &CaseHub, org: &str, sha: &[u8; 32], offset: u64, len: u64) -> Result<Vec<u8>, StorageError> {
    let key = blob_key(org, sha);
    if hub.storage.blob_state(&key)? != BlobState::Complete {
        return Err(StorageError::BlobMismatch(hex::encode(sha)));
    }
    read_blob_any(hub, &key, offset, len)
}

/// Runs a blocking storage call without stalling the async runtime's other tasks (QUIC
/// keep-alives and acknowledgements of every other van).
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

fn read_blob_any(hub: &CaseHub, sha: &[u8; 32], offset: u64, len: u64) -> Result<Vec<u8>, StorageError> {
    let mut out = Vec::with_capacity(len as usize);
    let mut pos = offset;
    while pos < offset + len {
        let index = pos / CHUNK;
        let sealed = hub.storage.blob_chunk(sha, index)?.ok_or_else(|| StorageError::BlobOffset {
            sha: hex::encode(sha),
            offset: pos,
            held: index * CHUNK,
        })?;
        let plain = hub.sealer.open_chunk(sha, index, &sealed)?;
        let start = (pos - index * CHUNK) as usize;
        let end = plain.len().min(start + (offset + len - pos) as usize);
        if start >= end {
            break;
        }
        out.extend_from_slice(&plain[start..end]);
        pos += (end - start) as u64;
    }
    Ok(out)
}
