//! [`CaseDoc`]: one case, one Automerge document.
//!
//! Call contract: create or load a document, [`CaseDoc::apply`] batches of edits (each batch
//! becomes one Automerge change whose bytes the caller persists before acknowledging), and
//! read it with [`CaseDoc::view`], [`CaseDoc::conflicts`] and [`CaseDoc::summary`]. Changes
//! from other replicas arrive through [`CaseDoc::apply_changes`] or [`CaseDoc::merge`].

use automerge::transaction::{CommitOptions, Transactable};
use automerge::{ActorId, Automerge, ChangeHash, LoadOptions, OnPartialLoad, ReadDoc, VerificationMode};
use serde::{Deserialize, Serialize};

use crate::apply;
use crate::conflict::{self, Conflict};
use crate::edit::{Edit, EditContext};
use crate::error::{BatchError, EditError, LoadError};
use crate::ids::{CaseId, OrgId, VanId};
use crate::layout::{self, SCHEMA_VERSION};
use crate::schema;
use crate::time::Timestamp;
use crate::view::{self, CaseSummary, CaseView};

/// What a new case is created with.
#[derive(Debug, Clone)]
pub struct NewCase {
    /// Its id.
    pub id: CaseId,
    /// The organisation that owns it.
    pub org: OrgId,
    /// The van that opened it.
    pub van: VanId,
    /// A temporary patient identity, until the patient is identified and matched at the hub.
    pub temp_patient_id: String,
}

/// One case record.
#[derive(Debug, Clone)]
pub struct CaseDoc {
    doc: Automerge,
    id: CaseId,
    org: OrgId,
    van: VanId,
    /// Known to hold no conflict. Local edits never create one (a put supersedes every value
    /// it sees, and contradictions are refused), so once a check found none, only changes
    /// from other replicas make a new check necessary.
    conflict_free: bool,
}

/// The result of a successful batch.
#[derive(Debug, Clone)]
pub struct Applied {
    /// The change's bytes, to be persisted before the edit is acknowledged.
    pub change: Vec<u8>,
    /// The change's hash.
    pub hash: ChangeHash,
}

/// Who made a change and what it did; stored as the change's message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeMeta {
    /// The user (an Automerge actor is a device, not a person).
    pub by: String,
    /// The edits of the batch, by name.
    pub ops: Vec<String>,
}

impl ChangeMeta {
    pub(crate) fn parse(s: &str) -> Option<ChangeMeta> {
        serde_json::from_str(s).ok()
    }
}

/// One change in a case's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangeInfo {
    /// Its hash.
    pub hash: String,
    /// The device (Automerge actor) that made it.
    pub actor: String,
    /// The user who made it.
    pub by: String,
    /// When (the device's clock).
    pub at: Timestamp,
    /// What it did.
    pub ops: Vec<String>,
}

impl CaseDoc {
    /// Creates a case. `actor` identifies this device's session (see the crate docs).
    pub fn create(actor: ActorId, ctx: &EditContext, new: NewCase) -> (CaseDoc, Applied) {
        let mut doc = Automerge::new().with_actor(actor);
        let mut tx = doc.transaction();
        // These writes target objects created in the same transaction; they cannot fail.
        let build = |tx: &mut automerge::transaction::Transaction<'_>| -> Result<(), automerge::AutomergeError> {
            tx.put(automerge::ROOT, layout::SCHEMA, SCHEMA_VERSION)?;
            layout::create_containers(tx)?;
            let case = layout::walk_maps(tx, &[layout::CASE]).ok_or(automerge::AutomergeError::Fail)?;
            tx.put(&case, "id", new.id.to_string())?;
            tx.put(&case, "org", new.org.as_str())?;
            tx.put(&case, "van", new.van.as_str())?;
            tx.put(&case, "created_at", ctx.now.unix_millis())?;
            tx.put(&case, "created_by", ctx.user.as_str())?;
            let patient = layout::walk_maps(tx, &["patient"]).ok_or(automerge::AutomergeError::Fail)?;
            tx.put(&patient, "temp_id", new.temp_patient_id.as_str())?;
            Ok(())
        };
        build(&mut tx).expect("writing a fresh document cannot fail");
        commit(tx, ctx, &["create_case".into()]);
        let change = last_change(&doc);
        (CaseDoc { doc, id: new.id, org: new.org, van: new.van, conflict_free: true }, change)
    }

    /// Loads a case from a snapshot (if any, as [`CaseDoc::save`] wrote it and a store
    /// that authenticates its contents kept it) followed by changes, one change per item, as
    /// the store keeps them. Strict: a change that does not decode fails the load, naming
    /// it, rather than hiding it and everything after it.
    pub fn load<'a>(
        actor: ActorId,
        snapshot: Option<&[u8]>,
        changes: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<CaseDoc, LoadError> {
        let mut doc = match snapshot {
            // Snapshots come from the store, whose pages SQLCipher authenticates, so the
            // heads need not be re-hashed to prove them intact; changes from peers are checked
            // change by change below.
            Some(bytes) => Automerge::load_with_options(
                bytes,
                LoadOptions::new().on_partial_load(OnPartialLoad::Error).verification_mode(VerificationMode::DontCheck),
            )?,
            None => Automerge::new(),
        };
        let parsed = parse_changes(changes)?;
        if !parsed.is_empty() {
            doc.apply_changes(parsed)?;
        }
        let missing = doc.get_missing_deps(&[]).len();
        if missing > 0 {
            return Err(LoadError::MissingDependencies(missing));
        }
        let doc = doc.with_actor(actor);
        Self::from_automerge(doc)
    }

    /// Wraps a document received whole (for example from a peer), checking it is a case.
    pub fn from_automerge(doc: Automerge) -> Result<CaseDoc, LoadError> {
        let (id, org, van) = Self::from_automerge_ref(&doc)?;
        Ok(CaseDoc { doc, id, org, van, conflict_free: false })
    }

    /// Re-reads the case's identity (id, organisation, opening van) from the document and
    /// checks it still matches what it was loaded with. Changes from a peer could rewrite
    /// those fields; a store that authorises by organisation must refuse such changes.
    pub fn identity_unchanged(&self) -> bool {
        match Self::from_automerge_ref(&self.doc) {
            Ok((id, org, van)) => id == self.id && org == self.org && van == self.van,
            Err(_) => false,
        }
    }

    fn from_automerge_ref(doc: &Automerge) -> Result<(CaseId, OrgId, VanId), LoadError> {
        let case = layout::walk_maps(doc, &[layout::CASE]).ok_or(LoadError::NotACase("no case identity"))?;
        let id = layout::get_str(doc, &case, "id")
            .and_then(|s| CaseId::parse(&s).ok())
            .ok_or(LoadError::NotACase("no valid case id"))?;
        let org = layout::get_str(doc, &case, "org")
            .and_then(|s| OrgId::parse(&s).ok())
            .ok_or(LoadError::NotACase("no valid organisation"))?;
        let van = layout::get_str(doc, &case, "van")
            .and_then(|s| VanId::parse(&s).ok())
            .ok_or(LoadError::NotACase("no valid van"))?;
        Ok((id, org, van))
    }

    /// Applies a batch of edits as one change. Nothing is applied if any edit is refused.
    pub fn apply(&mut self, ctx: &EditContext, edits: &[Edit]) -> Result<Applied, BatchError> {
        if edits.is_empty() {
            return Err(BatchError { index: 0, error: EditError::Empty });
        }
        let found = self.schema_version();
        if found > SCHEMA_VERSION {
            return Err(BatchError { index: 0, error: EditError::NewerSchema { found, supported: SCHEMA_VERSION } });
        }
        if found < SCHEMA_VERSION {
            // Edits are written in the current layout; an old document must be migrated
            // first, or the migration would later overwrite what they wrote.
            return Err(BatchError { index: 0, error: EditError::NeedsMigration { found, current: SCHEMA_VERSION } });
        }
        let mut closed = apply::closed_at(&self.doc);
        let mut tx = self.doc.transaction();
        for (index, edit) in edits.iter().enumerate() {
            if let Err(error) = apply::apply(&mut tx, ctx, edit, closed) {
                tx.rollback();
                return Err(BatchError { index, error });
            }
            if closed.is_none() {
                closed = apply::closed_at(&tx);
            }
        }
        let ops = edits.iter().map(|e| e.name().to_owned()).collect::<Vec<_>>();
        commit(tx, ctx, &ops);
        debug_assert!(!self.conflict_free || conflict::find(&self.doc).is_empty(), "a local edit created a conflict");
        Ok(last_change(&self.doc))
    }

    /// Upgrades a document written under an older schema. Returns the migration's change,
    /// to persist like any edit, or `None` if nothing needed doing.
    pub fn migrate(&mut self, ctx: &EditContext) -> Result<Option<Applied>, LoadError> {
        if self.schema_version() >= SCHEMA_VERSION {
            return Ok(None);
        }
        self.conflict_free = false;
        let mut tx = self.doc.transaction();
        match schema::migrate(&mut tx) {
            Ok(()) => {
                commit(tx, ctx, &["migrate_schema".into()]);
                Ok(Some(last_change(&self.doc)))
            }
            Err(e) => {
                tx.rollback();
                Err(LoadError::Decode(e))
            }
        }
    }

    /// The schema version the document carries.
    pub fn schema_version(&self) -> u64 {
        layout::get_i64(&self.doc, &automerge::ROOT, layout::SCHEMA).map_or(0, |v| v as u64)
    }

    /// Applies changes from another replica, one Automerge change per item. Strict: a
    /// change that does not decode is refused before anything is applied.
    pub fn apply_changes<'a>(&mut self, changes: impl IntoIterator<Item = &'a [u8]>) -> Result<(), LoadError> {
        let parsed = parse_changes(changes)?;
        self.conflict_free = false;
        self.doc.apply_changes(parsed)?;
        Ok(())
    }

    /// Merges another replica of the same case into this one.
    pub fn merge(&mut self, other: &mut CaseDoc) -> Result<(), LoadError> {
        self.conflict_free = false;
        self.doc.merge(&mut other.doc)?;
        Ok(())
    }

    /// Everything this replica holds, compacted.
    pub fn save(&self) -> Vec<u8> {
        self.doc.save()
    }

    /// The current heads.
    pub fn heads(&self) -> Vec<ChangeHash> {
        self.doc.get_heads()
    }

    /// The underlying Automerge document, for the sync protocol.
    pub fn automerge(&self) -> &Automerge {
        &self.doc
    }

    /// The underlying Automerge document, mutable, for the sync protocol.
    pub fn automerge_mut(&mut self) -> &mut Automerge {
        self.conflict_free = false;
        &mut self.doc
    }

    /// Looks for conflicts now, so later local edits can skip the search while none exist.
    /// Call after loading or merging; returns whether any exist.
    pub fn refresh_conflicts(&mut self) -> bool {
        self.conflict_free = conflict::find(&self.doc).is_empty();
        !self.conflict_free
    }

    /// The case id.
    pub fn id(&self) -> CaseId {
        self.id
    }

    /// The owning organisation.
    pub fn org(&self) -> &OrgId {
        &self.org
    }

    /// The van that opened it.
    pub fn van(&self) -> &VanId {
        &self.van
    }

    /// A typed, serialisable view of the whole case, conflicts included.
    pub fn view(&self) -> CaseView {
        view::view(&self.doc, self.id, &self.org, &self.van, self.conflicts())
    }

    /// The attachments alone (as in [`CaseDoc::view`]): what sync asks of every case in a
    /// van's scope, without reading the rest.
    pub fn attachments(&self) -> Vec<crate::Item> {
        view::attachments(&self.doc)
    }

    /// What the case index holds for listing without loading the document.
    pub fn summary(&self) -> CaseSummary {
        let has_conflicts = !self.conflict_free && !conflict::find(&self.doc).is_empty();
        view::summary(&self.doc, self.id, &self.org, &self.van, has_conflicts)
    }

    /// Every unresolved conflict.
    pub fn conflicts(&self) -> Vec<Conflict> {
        if self.conflict_free { Vec::new() } else { conflict::find(&self.doc) }
    }

    /// When the case was closed, if it is.
    pub fn closed_at(&self) -> Option<Timestamp> {
        apply::closed_at(&self.doc)
    }

    /// Every change, oldest first, with who made it.
    pub fn history(&self) -> Vec<ChangeInfo> {
        self.doc
            .get_changes(&[])
            .into_iter()
            .map(|c| {
                let meta = c.message().and_then(ChangeMeta::parse);
                ChangeInfo {
                    hash: c.hash().to_string(),
                    actor: c.actor_id().to_hex_string(),
                    by: meta.as_ref().map(|m| m.by.clone()).unwrap_or_default(),
                    at: Timestamp::from_unix_millis(c.timestamp()),
                    ops: meta.map(|m| m.ops).unwrap_or_default(),
                }
            })
            .collect()
    }
}

fn parse_changes<'a>(changes: impl IntoIterator<Item = &'a [u8]>) -> Result<Vec<automerge::Change>, LoadError> {
    changes
        .into_iter()
        .enumerate()
        .map(|(index, bytes)| {
            automerge::Change::from_bytes(bytes.to_vec())
                .map_err(|e| LoadError::BadChange { index, reason: e.to_string() })
        })
        .collect()
}

/// The user who made the change goes into its message: Automerge records devices, not people.
fn commit(tx: automerge::transaction::Transaction<'_>, ctx: &EditContext, ops: &[String]) {
    let meta = ChangeMeta { by: ctx.user.as_str().to_owned(), ops: ops.to_vec() };
    let msg = serde_json::to_string(&meta).unwrap_or_default();
    tx.commit_with(CommitOptions::default().with_message(msg).with_time(ctx.now.unix_millis()));
}

fn last_change(doc: &Automerge) -> Applied {
    // Called right after a local commit, so there is always a last local change.
    let mut change = doc.get_last_local_change().expect("a change was just committed");
    Applied { hash: change.hash(), change: change.bytes().into_owned() }
}

/// A new actor id for a device session: 8 bytes naming the device, 8 random bytes so that
/// a restarted agent never reuses a sequence number it may have lost in a power cut.
pub fn session_actor(device: &[u8; 8], random: [u8; 8]) -> ActorId {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(device);
    b[8..].copy_from_slice(&random);
    ActorId::from(b.as_slice())
}
