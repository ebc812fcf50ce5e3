//! The van's store: every acknowledged write survives a power cut, and nothing at rest can
//! be read without the key.
//!
//! - Cases are Automerge documents persisted as their changes, one row per change, in an
//!   SQLCipher database (WAL, `synchronous=FULL`). A background pass folds a case's changes
//!   into a snapshot once it has many.
//! - One writer thread makes every write durable with group commit ([`writer`]): concurrent
//!   requests share one WAL sync.
//! - An index table lists cases by status, van, time and patient without loading documents.
//! - Large binaries are encrypted, content-addressed blob files ([`blobs`]).
//! - Every read and write of patient data appends an audit entry in the same transaction as
//!   the write it records (for reads: before the data is returned).
//!
//! Locking: each cached case has its own mutex, held from applying an edit until the edit
//! is durable. Edits of one case are therefore serialised and never build on a change that
//! could still be lost, while edits of different cases share group commits.

mod blobs;
mod db;
mod error;
mod key;
mod writer;

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::thread;

use case_model::{
    ActorId, CaseDoc, CaseId, CaseSummary, CaseView, Conflict, Edit, EditContext, NewCase, OrgId, UserId, VanId,
};
use rusqlite::{Connection, OptionalExtension, params};

pub use audit::{ChainError, ChainHead, Entry as AuditEntry, Outcome};
pub use blobs::BlobRef;
pub use db::Durability;
pub use error::{OpenError, StoreError};
pub use key::{apply_sqlcipher_key, generate_key_file, read_key_file};

use writer::{IndexRow, Op, Writer};

/// How to open a store.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Directory holding `cases.db`, `store.id` and `blobs/`.
    pub data_dir: PathBuf,
    /// The key file (64 hex digits, mode 0600).
    pub key_file: PathBuf,
    /// The van this store belongs to; names the Automerge actors of this device.
    pub van: VanId,
    /// Commit durability. Leave at [`Durability::Full`].
    pub durability: Durability,
    /// Fold a case's changes into a snapshot once it has this many.
    pub compact_after: usize,
    /// Largest attachment accepted, in bytes.
    pub max_blob_bytes: u64,
    /// Most requests written by one commit. The default (512) bounds the latency a group
    /// adds; 1 gives one fsync per edit, which only benchmarks want.
    pub max_group: usize,
    /// An SQLite VFS to use instead of the default (fault-injection tests only).
    pub vfs: Option<String>,
    /// Create a new, empty store if the directory holds none. Off by default: a van whose
    /// data partition failed to mount must not quietly start an empty record.
    pub create_if_missing: bool,
}

impl StoreConfig {
    /// A config with the defaults.
    pub fn new(data_dir: impl Into<PathBuf>, key_file: impl Into<PathBuf>, van: VanId) -> StoreConfig {
        StoreConfig {
            data_dir: data_dir.into(),
            key_file: key_file.into(),
            van,
            durability: Durability::Full,
            compact_after: 500,
            max_blob_bytes: 1 << 30,
            max_group: 512,
            vfs: None,
            create_if_missing: false,
        }
    }
}

/// Which cases to list.
#[derive(Debug, Clone, Default)]
pub struct CaseFilter {
    /// Only cases with this status.
    pub status: Option<String>,
    /// Only cases of this van.
    pub van: Option<String>,
    /// Only cases created at or after this time (ms).
    pub created_after: Option<i64>,
    /// Only cases created before this time (ms).
    pub created_before: Option<i64>,
    /// Patient name contains this (case-insensitive).
    pub patient: Option<String>,
    /// At most this many (default 100, at most 1000).
    pub limit: Option<u32>,
}

/// The store. Cheap to clone; all clones share one writer.
#[derive(Debug, Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

type Slot = Arc<Mutex<Option<CaseDoc>>>;

#[derive(Debug)]
struct Inner {
    config: StoreConfig,
    writer: Writer,
    reader: Mutex<Connection>,
    cache: Mutex<HashMap<CaseId, Slot>>,
    blobs: blobs::Blobs,
    actor: ActorId,
    compactor: Mutex<Option<mpsc::Sender<CaseId>>>,
    /// Changes stored per case since its last snapshot, counted as they are written.
    uncompacted: Mutex<HashMap<CaseId, usize>>,
    /// Held until the store is closed: the OS releases it if the process dies.
    lock: Mutex<Option<std::fs::File>>,
    /// Called after each durable local change (the sync service listens).
    listeners: Mutex<Vec<Listener>>,
    /// Called after each blob stored locally (the sync service offers it).
    blob_listeners: Mutex<Vec<BlobListener>>,
}

/// What a blob listener is called with: the hash, the size and the media type.
type BlobCallback = dyn Fn([u8; 32], u64, &str) + Send + Sync;

/// A blob listener.
struct BlobListener(Box<BlobCallback>);

impl std::fmt::Debug for BlobListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BlobListener")
    }
}

/// A change listener.
struct Listener(Box<dyn Fn(CaseId) + Send + Sync>);

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Listener")
    }
}

impl Store {
    /// Opens the store in `config.data_dir`, creating it if the directory holds none.
    pub fn open(config: StoreConfig) -> Result<Store, OpenError> {
        let keys = key::Keys::load(&config.key_file)?;
        let paths = db::Paths::new(&config.data_dir);
        if !paths.db.exists() && !paths.marker.exists() && !config.create_if_missing {
            return Err(OpenError::NoStore { dir: config.data_dir.clone() });
        }
        let io = |source| OpenError::Io { path: config.data_dir.clone(), source };
        if !config.data_dir.exists() {
            std::fs::create_dir_all(&config.data_dir).map_err(io)?;
            if let Some(parent) = config.data_dir.parent() {
                db::sync_dir(parent).map_err(io)?;
            }
        }
        restrict_to_owner(&config.data_dir).map_err(io)?;
        // One process per store: compaction and blob clean-up assume no other writer.
        let lock_file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(config.data_dir.join("store.lock"))
            .map_err(io)?;
        match lock_file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(OpenError::InUse { dir: config.data_dir.clone() }),
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        let conn = db::open(&paths, &keys, &config.key_file, config.durability, config.vfs.as_deref())?;
        let reader = db::open_reader(&paths, &keys, config.vfs.as_deref())
            .map_err(|source| OpenError::Sqlite { db: paths.db.clone(), source })?;
        let blobs = blobs::Blobs::open(&paths.blobs, keys.clone())
            .map_err(|source| OpenError::Io { path: paths.blobs.clone(), source })?;
        let mut device = [0u8; 8];
        let digest = <sha2::Sha256 as sha2::Digest>::digest(config.van.as_str().as_bytes());
        device.copy_from_slice(&digest[..8]);
        let mut random = [0u8; 8];
        rand::fill(&mut random);
        let inner = Arc::new(Inner {
            actor: case_model::session_actor(&device, random),
            writer: Writer::start(conn, config.max_group),
            reader: Mutex::new(reader),
            cache: Mutex::new(HashMap::new()),
            blobs,
            config,
            compactor: Mutex::new(None),
            uncompacted: Mutex::new(HashMap::new()),
            lock: Mutex::new(Some(lock_file)),
            listeners: Mutex::new(Vec::new()),
            blob_listeners: Mutex::new(Vec::new()),
        });
        let store = Store { inner };
        store.start_compactor();
        Ok(store)
    }

    /// Opens a new case for `org` in this store's van.
    pub fn create_case(&self, ctx: &EditContext, org: &OrgId) -> Result<CaseView, StoreError> {
        let mut random = [0u8; 10];
        rand::fill(&mut random);
        let id = CaseId::new_v7(ctx.now, random);
        let new = NewCase {
            id,
            org: org.clone(),
            van: self.inner.config.van.clone(),
            temp_patient_id: temp_patient_id(&random),
        };
        let (doc, applied) = CaseDoc::create(self.inner.actor.clone(), ctx, new);
        let slot: Slot = Arc::new(Mutex::new(None));
        let mut guard = lock(&slot);
        self.inner.cache_insert(id, slot.clone());
        let result = self.write(vec![
            Op::Change { case_id: id.to_string(), bytes: applied.change },
            Op::Index(index_row(&doc.summary(), ctx)),
            Op::Audit(record(ctx, "case.create", Some(id), audit::Outcome::Allowed, String::new())),
        ]);
        match result {
            Ok(()) => {
                let view = doc.view();
                *guard = Some(doc);
                drop(guard);
                self.notify(id);
                Ok(view)
            }
            Err(e) => {
                drop(guard);
                lock(&self.inner.cache).remove(&id);
                Err(e)
            }
        }
    }

    /// Applies a batch of edits as one change, durably, and returns the case's new summary.
    /// Refusals are audited too.
    pub fn edit_case(&self, ctx: &EditContext, id: CaseId, edits: &[Edit]) -> Result<CaseSummary, StoreError> {
        self.edit(ctx, id, edits, |doc| doc.summary())
    }

    /// Like [`Store::edit_case`], returning the whole case as it stands after the edit (the
    /// editor sees the result of their own edit; the edit's audit entry covers it).
    pub fn edit_case_view(&self, ctx: &EditContext, id: CaseId, edits: &[Edit]) -> Result<CaseView, StoreError> {
        self.edit(ctx, id, edits, CaseDoc::view)
    }

    fn edit<T>(
        &self,
        ctx: &EditContext,
        id: CaseId,
        edits: &[Edit],
        answer: impl FnOnce(&CaseDoc) -> T,
    ) -> Result<T, StoreError> {
        let slot = self.slot(ctx, id, "case.edit")?;
        let edits = match self.check_attachments(edits)? {
            Ok(e) => e,
            Err(e) => return Err(self.refuse(ctx, id, e)),
        };
        let mut guard = lock(&slot);
        let doc = self.loaded(&mut guard, id)?;
        let ops: Vec<String> = edits.iter().map(Edit::audit_detail).collect();
        let applied = match doc.apply(ctx, &edits) {
            Ok(a) => a,
            Err(e) => {
                drop(guard);
                return Err(self.refuse(ctx, id, e));
            }
        };
        let summary = doc.summary();
        let result = self.write(vec![
            Op::Change { case_id: id.to_string(), bytes: applied.change },
            Op::Index(index_row(&summary, ctx)),
            Op::Audit(record(ctx, "case.edit", Some(id), audit::Outcome::Allowed, ops.join(","))),
        ]);
        if let Err(e) = result {
            // The change is in memory but may not be on disk: forget the in-memory document
            // so the next access reloads exactly what is stored.
            *guard = None;
            return Err(e);
        }
        let out = answer(doc);
        drop(guard);
        self.notify(id);
        self.maybe_compact(id);
        Ok(out)
    }

    /// Audits a refused edit (naming the field, not the refused value, which may be
    /// patient data) and returns the error to give the caller.
    fn refuse(&self, ctx: &EditContext, id: CaseId, e: case_model::BatchError) -> StoreError {
        let detail =
            format!("edit {}: {} {}", e.index, e.error.kind(), e.error.field().unwrap_or("")).trim_end().to_owned();
        match self.write(vec![Op::Audit(record(ctx, "case.edit", Some(id), audit::Outcome::Refused, detail))]) {
            Ok(()) => e.into(),
            Err(write_error) => write_error,
        }
    }

    /// Attachments must name a blob this store holds; their size and media type are taken
    /// from the stored blob, not from the request.
    /// The outer error is the store failing; the inner one a refused edit.
    fn check_attachments(&self, edits: &[Edit]) -> Result<Result<Vec<Edit>, case_model::BatchError>, StoreError> {
        let mut out = edits.to_vec();
        for (index, edit) in out.iter_mut().enumerate() {
            let Edit::AddAttachment(a) = edit else { continue };
            let row: Option<(i64, String)> = lock(&self.inner.reader)
                .query_row("SELECT size, media_type FROM blobs WHERE sha256 = ?1", [&a.sha256], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .optional()?;
            match row {
                Some((size, media_type)) => {
                    a.size = size as u64;
                    a.media_type = media_type;
                }
                None => {
                    return Ok(Err(case_model::BatchError {
                        index,
                        error: case_model::EditError::Invalid {
                            field: "attachment.sha256".into(),
                            element: "",
                            reason: "no uploaded attachment has this hash; upload the file first, then attach it"
                                .into(),
                        },
                    }));
                }
            }
        }
        Ok(Ok(out))
    }

    /// Reads a case. The read is audited before the data is returned.
    pub fn read_case(&self, ctx: &EditContext, id: CaseId) -> Result<CaseView, StoreError> {
        self.audited_read(ctx, id, "", CaseDoc::view)
    }

    /// The unresolved conflicts of a case (an audited read).
    pub fn conflicts(&self, ctx: &EditContext, id: CaseId) -> Result<Vec<Conflict>, StoreError> {
        self.audited_read(ctx, id, "conflicts", CaseDoc::conflicts)
    }

    /// Lists cases from the index, newest first. Audited: one entry per case shown (a list
    /// shows patient names), so "who saw this patient" includes list views.
    pub fn list_cases(&self, ctx: &EditContext, filter: &CaseFilter) -> Result<Vec<CaseSummary>, StoreError> {
        let limit = filter.limit.unwrap_or(100).min(1000);
        let pattern = filter.patient.as_ref().map(|p| format!("%{}%", p.replace(['%', '_'], "")));
        let rows = {
            let conn = lock(&self.inner.reader);
            let mut stmt = conn.prepare_cached(
                "SELECT summary FROM cases
                 WHERE (?1 IS NULL OR status = ?1) AND (?2 IS NULL OR van = ?2)
                   AND (?3 IS NULL OR created_at >= ?3) AND (?4 IS NULL OR created_at < ?4)
                   AND (?5 IS NULL OR patient_name LIKE ?5)
                 ORDER BY created_at DESC LIMIT ?6",
            )?;
            stmt.query_map(
                params![filter.status, filter.van, filter.created_after, filter.created_before, pattern, limit],
                |r| r.get::<_, String>(0),
            )?
            .collect::<Result<Vec<_>, _>>()?
        };
        let summaries: Vec<CaseSummary> = rows.iter().filter_map(|s| serde_json::from_str(s).ok()).collect();
        let detail = if filter.patient.is_some() { "listed; patient name search" } else { "listed" };
        let mut ops: Vec<Op> = summaries
            .iter()
            .map(|c| Op::Audit(record(ctx, "case.list", Some(c.id), audit::Outcome::Allowed, detail.into())))
            .collect();
        if ops.is_empty() {
            ops.push(Op::Audit(record(ctx, "case.list", None, audit::Outcome::Allowed, "no cases shown".into())));
        }
        self.write(ops)?;
        Ok(summaries)
    }

    /// Stores an attachment's bytes for a case, encrypted, and attaches it in the same step.
    pub fn attach(
        &self,
        ctx: &EditContext,
        id: CaseId,
        content: &mut dyn Read,
        media_type: &str,
        kind: case_model::codes::AttachmentKind,
        label: Option<String>,
    ) -> Result<CaseView, StoreError> {
        let blob = self.put_blob(ctx, id, content, media_type)?;
        let edit = Edit::AddAttachment(case_model::edit::AttachmentInput {
            sha256: blob.sha256,
            kind,
            media_type: media_type.to_owned(),
            size: blob.size,
            label,
        });
        self.edit_case_view(ctx, id, &[edit])
    }

    /// Stores an attachment's bytes for a case, encrypted; attach it with an
    /// [`Edit::AddAttachment`] naming the returned hash (or use [`Store::attach`]).
    pub fn put_blob(
        &self,
        ctx: &EditContext,
        id: CaseId,
        content: &mut dyn Read,
        media_type: &str,
    ) -> Result<BlobRef, StoreError> {
        // The case must exist before patient data is written for it.
        self.slot(ctx, id, "blob.write")?;
        let blob = self.inner.blobs.put(content, self.inner.config.max_blob_bytes)?;
        self.write(vec![
            Op::Blob {
                sha256: blob.sha256.clone(),
                size: blob.size,
                media_type: media_type.to_owned(),
                at: ctx.now.unix_millis(),
            },
            Op::Audit(record(ctx, "blob.write", Some(id), audit::Outcome::Allowed, blob.sha256.clone())),
        ])?;
        if let Some(sha) = blobs::parse_sha(&blob.sha256) {
            for listener in lock(&self.inner.blob_listeners).iter() {
                (listener.0)(sha, blob.size, media_type);
            }
        }
        Ok(blob)
    }

    /// Reads an attachment of a case, verified, with its media type (an audited read).
    pub fn read_blob(&self, ctx: &EditContext, id: CaseId, sha256: &str) -> Result<(Vec<u8>, String), StoreError> {
        let slot = self.slot(ctx, id, "blob.read")?;
        let mut guard = lock(&slot);
        let attachment = self
            .loaded(&mut guard, id)?
            .view()
            .attachments
            .into_iter()
            .find(|a| a.get("sha256").and_then(|s| s.as_str()) == Some(sha256));
        drop(guard);
        let Some(attachment) = attachment else {
            self.write(vec![Op::Audit(record(
                ctx,
                "blob.read",
                Some(id),
                audit::Outcome::Refused,
                "no such attachment".into(),
            ))])?;
            return Err(StoreError::BlobNotFound { case: id, sha256: sha256.chars().take(64).collect() });
        };
        let media_type =
            attachment.get("media_type").and_then(|m| m.as_str()).unwrap_or("application/octet-stream").to_owned();
        // A missing or damaged file is reported as such, not as "no attachment".
        let data = self.inner.blobs.read(sha256)?;
        self.write(vec![Op::Audit(record(ctx, "blob.read", Some(id), audit::Outcome::Allowed, sha256.to_owned()))])?;
        Ok((data, media_type))
    }

    /// Every change of a case with who made it (an audited read).
    pub fn history(&self, ctx: &EditContext, id: CaseId) -> Result<Vec<case_model::ChangeInfo>, StoreError> {
        self.audited_read(ctx, id, "history", CaseDoc::history)
    }

    /// Reads something of a case and appends its `case.read` audit entry (durable before
    /// the data is returned).
    fn audited_read<T>(
        &self,
        ctx: &EditContext,
        id: CaseId,
        detail: &str,
        read: impl FnOnce(&CaseDoc) -> T,
    ) -> Result<T, StoreError> {
        let slot = self.slot(ctx, id, "case.read")?;
        let mut guard = lock(&slot);
        let out = read(self.loaded(&mut guard, id)?);
        drop(guard);
        self.write(vec![Op::Audit(record(ctx, "case.read", Some(id), audit::Outcome::Allowed, detail.to_owned()))])?;
        Ok(out)
    }

    /// Who accessed a case: its audit entries, oldest first. Looking is itself audited.
    pub fn audit_trail(&self, ctx: &EditContext, id: CaseId) -> Result<Vec<AuditEntry>, StoreError> {
        self.slot(ctx, id, "audit.read")?;
        self.write(vec![Op::Audit(record(ctx, "audit.read", Some(id), audit::Outcome::Allowed, String::new()))])?;
        self.audit_of_case(id)
    }

    /// Stores a case that arrives whole from a peer (a case the hub assigned to this van),
    /// one Automerge change per item, or merges into it if it is already here.
    pub fn import_case(&self, ctx: &EditContext, id: CaseId, changes: &[Vec<u8>]) -> Result<CaseView, StoreError> {
        let known = lock(&self.inner.cache).contains_key(&id)
            || lock(&self.inner.reader)
                .query_row("SELECT 1 FROM cases WHERE id = ?1", [id.to_string()], |_| Ok(()))
                .optional()?
                .is_some();
        if known {
            return self.apply_remote_changes(ctx, id, changes);
        }
        let load_err = |source| StoreError::Load { case: id, source: Box::new(source) };
        let mut doc =
            CaseDoc::load(self.inner.actor.clone(), None, changes.iter().map(Vec::as_slice)).map_err(load_err)?;
        if doc.id() != id {
            return Err(load_err(case_model::LoadError::NotACase("the changes belong to another case")));
        }
        let slot = self.inner.cache_insert(id, Arc::new(Mutex::new(None)));
        let mut guard = lock(&slot);
        if guard.is_some() {
            drop(guard);
            return self.apply_remote_changes(ctx, id, changes);
        }
        let mut ops: Vec<Op> =
            changes.iter().map(|c| Op::Change { case_id: id.to_string(), bytes: c.clone() }).collect();
        let count = ops.len();
        if let Some(applied) = doc.migrate(&migration_context(ctx)).map_err(load_err)? {
            ops.push(Op::Change { case_id: id.to_string(), bytes: applied.change });
            ops.push(Op::Audit(record(
                &migration_context(ctx),
                "case.migrate",
                Some(id),
                audit::Outcome::Allowed,
                String::new(),
            )));
        }
        doc.refresh_conflicts();
        ops.push(Op::Index(index_row(&doc.summary(), ctx)));
        ops.push(Op::Audit(record(ctx, "case.import", Some(id), audit::Outcome::Allowed, format!("{count} changes"))));
        if let Err(e) = self.write(ops) {
            // Leave no empty slot behind: the next attempt must import afresh.
            drop(guard);
            lock(&self.inner.cache).remove(&id);
            return Err(e);
        }
        let view = doc.view();
        *guard = Some(doc);
        Ok(view)
    }

    /// Merges changes from another replica of a case (the sync protocol's way in), one
    /// Automerge change per item, and persists the ones that were new. Returns the case as
    /// it now stands.
    pub fn apply_remote_changes(
        &self,
        ctx: &EditContext,
        id: CaseId,
        changes: &[Vec<u8>],
    ) -> Result<CaseView, StoreError> {
        let slot = self.slot(ctx, id, "case.merge")?;
        let mut guard = lock(&slot);
        let doc = self.loaded(&mut guard, id)?;
        let before = doc.heads();
        if let Err(source) = doc.apply_changes(changes.iter().map(Vec::as_slice)) {
            // Nothing was applied (changes are checked before any is), but drop the cached
            // document anyway so memory never runs ahead of disk.
            *guard = None;
            drop(guard);
            self.write(vec![Op::Audit(record(
                ctx,
                "case.merge",
                Some(id),
                audit::Outcome::Refused,
                source.to_string(),
            ))])?;
            return Err(StoreError::Load { case: id, source: Box::new(source) });
        }
        let mut ops = change_ops(doc, id, &before);
        let count = ops.len();
        doc.refresh_conflicts();
        let view = doc.view();
        ops.push(Op::Index(index_row(&doc.summary(), ctx)));
        ops.push(Op::Audit(record(ctx, "case.merge", Some(id), audit::Outcome::Allowed, format!("{count} changes"))));
        if let Err(e) = self.write(ops) {
            *guard = None;
            return Err(e);
        }
        Ok(view)
    }

    /// The current heads of a case (empty if the store does not hold it). Heads are hashes,
    /// not patient data: not audited.
    pub fn heads(&self, id: CaseId) -> Result<Vec<automerge::ChangeHash>, StoreError> {
        let Some(slot) = self.existing_slot(id)? else { return Ok(Vec::new()) };
        let mut guard = lock(&slot);
        Ok(self.loaded(&mut guard, id)?.heads())
    }

    /// The persisted Automerge sync state of a case with a peer, if any.
    pub fn sync_state(&self, peer: &str, id: CaseId) -> Result<Option<Vec<u8>>, StoreError> {
        let conn = lock(&self.inner.reader);
        Ok(conn
            .query_row("SELECT state FROM sync_states WHERE peer = ?1 AND case_id = ?2", [peer, &id.to_string()], |r| {
                r.get(0)
            })
            .optional()?)
    }

    /// Persists sync states with a peer, in one durable write. Losing them costs only
    /// bytes (the next sync starts that case over), so callers batch them.
    pub fn save_sync_states(&self, peer: &str, states: Vec<(CaseId, Vec<u8>)>) -> Result<(), StoreError> {
        if states.is_empty() {
            return Ok(());
        }
        let ops = states
            .into_iter()
            .map(|(id, state)| Op::SyncState { peer: peer.to_owned(), case_id: id.to_string(), state })
            .collect();
        self.write(ops)
    }

    /// The next Automerge sync message for a case, for the sync protocol.
    pub fn sync_generate(
        &self,
        id: CaseId,
        state: &mut automerge::sync::State,
    ) -> Result<Option<automerge::sync::Message>, StoreError> {
        use automerge::sync::SyncDoc;
        let Some(slot) = self.existing_slot(id)? else {
            // A case the peer holds and this store does not: answering from an empty
            // document asks the peer for all of it.
            return Ok(automerge::Automerge::new().generate_sync_message(state));
        };
        let mut guard = lock(&slot);
        Ok(self.loaded(&mut guard, id)?.automerge().generate_sync_message(state))
    }

    /// Applies an Automerge sync message from a peer to a case (creating the case if the
    /// peer sent one this store lacks), persisting every new change durably before it
    /// returns. Returns whether the case changed.
    pub fn sync_receive(
        &self,
        ctx: &EditContext,
        id: CaseId,
        state: &mut automerge::sync::State,
        msg: automerge::sync::Message,
    ) -> Result<bool, StoreError> {
        use automerge::sync::SyncDoc;
        let load_err = |e: automerge::AutomergeError| StoreError::Load {
            case: id,
            source: Box::new(case_model::LoadError::Decode(e)),
        };
        let Some(slot) = self.existing_slot(id)? else {
            // A case this store does not hold yet: take it whole once its changes arrive.
            let mut doc = automerge::Automerge::new();
            doc.receive_sync_message(state, msg).map_err(load_err)?;
            let changes: Vec<Vec<u8>> = doc.get_changes(&[]).into_iter().map(|mut c| c.bytes().into_owned()).collect();
            if changes.is_empty() {
                return Ok(false);
            }
            self.import_case(ctx, id, &changes)?;
            return Ok(true);
        };
        let mut guard = lock(&slot);
        let doc = self.loaded(&mut guard, id)?;
        let before = doc.heads();
        if let Err(e) = doc.automerge_mut().receive_sync_message(state, msg) {
            *guard = None;
            return Err(load_err(e));
        }
        let mut ops = change_ops(doc, id, &before);
        if ops.is_empty() {
            return Ok(false);
        }
        let count = ops.len();
        doc.refresh_conflicts();
        ops.push(Op::Index(index_row(&doc.summary(), ctx)));
        ops.push(Op::Audit(record(ctx, "case.merge", Some(id), audit::Outcome::Allowed, format!("{count} changes"))));
        if let Err(e) = self.write(ops) {
            *guard = None;
            return Err(e);
        }
        drop(guard);
        self.maybe_compact(id);
        Ok(true)
    }

    /// Up to `limit` audit entries after position `after`, oldest first: what the van sends
    /// the hub.
    pub fn audit_after(&self, after: u64, limit: u32) -> Result<Vec<AuditEntry>, StoreError> {
        let conn = lock(&self.inner.reader);
        Ok(audit::after(&conn, after, limit)?)
    }

    /// Records an event that touches no case (a crew login, a refused PIN, a break-glass
    /// login) in the audit log, durably.
    pub fn record_event(
        &self,
        ctx: &EditContext,
        action: &str,
        outcome: audit::Outcome,
        detail: String,
    ) -> Result<(), StoreError> {
        self.write(vec![Op::Audit(record(ctx, action, None, outcome, detail))])
    }

    /// Records an event about a case that changes nothing in it (a video consult started or
    /// watched) in the audit log, durably, so the case's trail shows it.
    pub fn record_case_event(
        &self,
        ctx: &EditContext,
        id: CaseId,
        action: &str,
        outcome: audit::Outcome,
        detail: String,
    ) -> Result<(), StoreError> {
        self.write(vec![Op::Audit(record(ctx, action, Some(id), outcome, detail))])
    }

    /// How many entries the audit log holds (its last position).
    pub fn audit_size(&self) -> Result<u64, StoreError> {
        let conn = lock(&self.inner.reader);
        Ok(conn.query_row("SELECT coalesce(max(seq), 0) FROM audit_log", [], |r| r.get::<_, i64>(0))? as u64)
    }

    /// The chain hashes of the first `size` audit entries, in order: the leaves of the log's
    /// Merkle tree.
    pub fn audit_hashes(&self, size: u64) -> Result<Vec<[u8; 32]>, StoreError> {
        let conn = lock(&self.inner.reader);
        let mut stmt = conn.prepare_cached("SELECT hash FROM audit_log WHERE seq <= ?1 ORDER BY seq")?;
        let rows = stmt.query_map([size as i64], |r| r.get::<_, Vec<u8>>(0))?;
        let mut out = Vec::new();
        for h in rows {
            let h = h?;
            out.push(
                h.try_into().map_err(|_| StoreError::Failed("an audit hash in the store is not 32 bytes".into()))?,
            );
        }
        Ok(out)
    }

    /// A small value kept per sync peer (how much of the audit log the hub confirmed, say),
    /// beside the peer's sync states under a key no case id can take.
    pub fn peer_value(&self, peer: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let conn = lock(&self.inner.reader);
        Ok(conn
            .query_row(
                "SELECT state FROM sync_states WHERE peer = ?1 AND case_id = ?2",
                [peer, &format!("~{key}")],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Keeps a small value per sync peer, durably.
    pub fn set_peer_value(&self, peer: &str, key: &str, value: Vec<u8>) -> Result<(), StoreError> {
        self.write(vec![Op::SyncState { peer: peer.to_owned(), case_id: format!("~{key}"), state: value }])
    }

    /// Checks the audit chain end to end.
    pub fn verify_audit(&self) -> Result<ChainHead, ChainError> {
        let conn = lock(&self.inner.reader);
        audit::verify(&conn)
    }

    /// The audit entries of one case, oldest first.
    pub fn audit_of_case(&self, id: CaseId) -> Result<Vec<AuditEntry>, StoreError> {
        let conn = lock(&self.inner.reader);
        Ok(audit::for_case(&conn, &id.to_string())?)
    }

    /// SQLite's full integrity check: `ok` when the database is sound.
    pub fn integrity_check(&self) -> Result<String, StoreError> {
        let conn = lock(&self.inner.reader);
        Ok(conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))?)
    }

    /// The newest case of `van` that is not closed and was opened between `since_ms` and
    /// `until_ms`: the case the crew is working, where the van's route goes. (A case dated
    /// in the future, by a clock that was wrong, is not taken for the newest.) An id from
    /// the index, no patient data, so not audited.
    pub fn active_case(&self, van: &str, since_ms: i64, until_ms: i64) -> Result<Option<CaseId>, StoreError> {
        let conn = lock(&self.inner.reader);
        let id: Option<String> = conn
            .query_row(
                "SELECT id FROM cases WHERE van = ?1 AND created_at >= ?2 AND created_at <= ?3
                   AND (status IS NULL OR status <> 'closed')
                 ORDER BY created_at DESC LIMIT 1",
                params![van, since_ms, until_ms],
                |r| r.get(0),
            )
            .optional()?;
        Ok(id.and_then(|s| CaseId::parse(&s).ok()))
    }

    /// Ids of every stored case.
    pub fn case_ids(&self) -> Result<Vec<CaseId>, StoreError> {
        let conn = lock(&self.inner.reader);
        let mut stmt = conn.prepare("SELECT id FROM cases ORDER BY created_at")?;
        let ids = stmt.query_map([], |r| r.get::<_, String>(0))?.collect::<Result<Vec<_>, _>>()?;
        Ok(ids.iter().filter_map(|s| CaseId::parse(s).ok()).collect())
    }

    /// Blobs this store holds whole, for sync: `(sha256, size, media type)`.
    pub fn blob_list(&self) -> Result<Vec<([u8; 32], u64, String)>, StoreError> {
        let conn = lock(&self.inner.reader);
        let mut stmt = conn.prepare_cached("SELECT sha256, size, media_type FROM blobs ORDER BY sha256")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, String>(2)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (sha, size, media) = row?;
            if let Some(sha) = blobs::parse_sha(&sha) {
                out.push((sha, size as u64, media));
            }
        }
        Ok(out)
    }

    /// Bytes of a stored blob, for a sync peer. Not audited piece by piece: the sync
    /// replica audits each blob it sends once.
    pub fn blob_range(&self, sha256: &[u8; 32], offset: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        self.inner.blobs.read_range(sha256, offset, len)
    }

    /// Whether a blob is stored whole.
    pub fn has_blob(&self, sha256: &[u8; 32]) -> bool {
        self.inner.blobs.exists(sha256)
    }

    /// How many bytes of a blob being received from a sync peer are held.
    pub fn incoming_blob_len(&self, sha256: &[u8; 32]) -> Result<u64, StoreError> {
        Ok(self.inner.blobs.incoming_len(sha256)?)
    }

    /// Stores the next piece of a blob being received from a sync peer (at `offset`, the
    /// end of what is held, of a blob of `size` bytes), encrypted and durable on return.
    pub fn write_incoming_blob(
        &self,
        sha256: &[u8; 32],
        size: u64,
        offset: u64,
        data: &[u8],
    ) -> Result<(), StoreError> {
        if size > self.inner.config.max_blob_bytes {
            return Err(StoreError::BlobTooLarge { limit: self.inner.config.max_blob_bytes });
        }
        self.inner.blobs.write_incoming(sha256, size, offset, data)
    }

    /// A blob received from a sync peer is whole: verify it against its hash and keep it
    /// (audited), or discard it.
    pub fn finish_incoming_blob(&self, ctx: &EditContext, sha256: &[u8; 32], size: u64) -> Result<(), StoreError> {
        self.inner.blobs.finish_incoming(sha256)?;
        let hex = hex::encode(sha256);
        self.write(vec![
            Op::Blob {
                sha256: hex.clone(),
                size,
                media_type: "application/octet-stream".into(),
                at: ctx.now.unix_millis(),
            },
            Op::Audit(record(ctx, "blob.sync_receive", None, audit::Outcome::Allowed, hex)),
        ])
    }

    /// Loads a case straight from disk, bypassing the cache and the audit log. For
    /// recovery checks and tests; the agent's API never calls it.
    pub fn load_from_disk(&self, id: CaseId) -> Result<CaseDoc, StoreError> {
        self.load(id)?.ok_or(StoreError::NotFound(id))
    }

    /// Folds a case's changes into one snapshot.
    pub fn compact(&self, id: CaseId) -> Result<(), StoreError> {
        let Some(slot) = lock(&self.inner.cache).get(&id).cloned() else {
            return Ok(());
        };
        let mut guard = lock(&slot);
        let bytes = self.loaded(&mut guard, id)?.save();
        self.write(vec![Op::Snapshot { case_id: id.to_string(), bytes }])?;
        lock(&self.inner.uncompacted).insert(id, 0);
        Ok(())
    }

    /// Stops the writer after queued writes finish.
    pub fn close(&self) {
        lock(&self.inner.compactor).take();
        self.inner.writer.shutdown();
        lock(&self.inner.lock).take();
    }

    /// Verifies the audit chain of a store without opening it for writing, so it can run
    /// beside a running agent (WAL readers do not block the writer).
    pub fn verify_audit_at(config: &StoreConfig) -> Result<Result<ChainHead, ChainError>, OpenError> {
        let keys = key::Keys::load(&config.key_file)?;
        let paths = db::Paths::new(&config.data_dir);
        if !paths.db.exists() {
            return Err(OpenError::NoStore { dir: config.data_dir.clone() });
        }
        let conn = db::open_reader(&paths, &keys, config.vfs.as_deref())
            .map_err(|source| OpenError::Sqlite { db: paths.db.clone(), source })?;
        Ok(audit::verify(&conn))
    }

    /// A raw connection to the encrypted database, bypassing the store: for forensic tools
    /// and tamper tests. Writes through it are not audited.
    pub fn raw_connection(config: &StoreConfig) -> Result<Connection, OpenError> {
        let keys = key::Keys::load(&config.key_file)?;
        let paths = db::Paths::new(&config.data_dir);
        let conn = Connection::open(&paths.db).map_err(|source| OpenError::Sqlite { db: paths.db.clone(), source })?;
        key::apply_sqlcipher_key(&conn, &keys.sqlcipher)
            .map_err(|source| OpenError::Sqlite { db: paths.db.clone(), source })?;
        Ok(conn)
    }

    /// Calls `f` with the case id after every durable local change (not changes taken in
    /// from a peer). Keep `f` quick: it runs on the editing thread.
    pub fn on_local_change(&self, f: impl Fn(CaseId) + Send + Sync + 'static) {
        lock(&self.inner.listeners).push(Listener(Box::new(f)));
    }

    /// Calls `f` with a blob's hash, size and media type after it is stored locally.
    pub fn on_local_blob(&self, f: impl Fn([u8; 32], u64, &str) + Send + Sync + 'static) {
        lock(&self.inner.blob_listeners).push(BlobListener(Box::new(f)));
    }

    fn notify(&self, id: CaseId) {
        for listener in lock(&self.inner.listeners).iter() {
            (listener.0)(id);
        }
    }

    /// Whether the store can take writes: its writer thread is running.
    pub fn is_writable(&self) -> bool {
        self.inner.writer.alive()
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.inner.config.data_dir
    }

    fn write(&self, ops: Vec<Op>) -> Result<(), StoreError> {
        self.inner.writer.write(ops)
    }

    /// The cache slot of a case if the store holds it (no audit: for sync plumbing).
    fn existing_slot(&self, id: CaseId) -> Result<Option<Slot>, StoreError> {
        if let Some(s) = lock(&self.inner.cache).get(&id) {
            return Ok(Some(s.clone()));
        }
        let exists: Option<i64> = lock(&self.inner.reader)
            .query_row("SELECT 1 FROM cases WHERE id = ?1", [id.to_string()], |r| r.get(0))
            .optional()?;
        Ok(exists.map(|_| self.inner.cache_insert(id, Arc::new(Mutex::new(None)))))
    }

    /// The cache slot of a case that exists, or a refusal (audited) if it does not.
    fn slot(&self, ctx: &EditContext, id: CaseId, action: &str) -> Result<Slot, StoreError> {
        if let Some(s) = lock(&self.inner.cache).get(&id) {
            return Ok(s.clone());
        }
        let exists: Option<i64> = lock(&self.inner.reader)
            .query_row("SELECT 1 FROM cases WHERE id = ?1", [id.to_string()], |r| r.get(0))
            .optional()?;
        if exists.is_none() {
            self.write(vec![Op::Audit(record(ctx, action, Some(id), audit::Outcome::Refused, "no such case".into()))])?;
            return Err(StoreError::NotFound(id));
        }
        let slot: Slot = Arc::new(Mutex::new(None));
        Ok(self.inner.cache_insert(id, slot))
    }

    /// The document in a locked slot, loading it from disk if needed (and migrating it).
    fn loaded<'a>(
        &self,
        guard: &'a mut MutexGuard<'_, Option<CaseDoc>>,
        id: CaseId,
    ) -> Result<&'a mut CaseDoc, StoreError> {
        if guard.is_none() {
            let mut doc = self.load(id)?.ok_or(StoreError::NotFound(id))?;
            let ctx =
                migration_context(&EditContext { user: UserId::parse("system").expect("valid literal"), now: now() });
            let migrated =
                doc.migrate(&ctx).map_err(|source| StoreError::Load { case: id, source: Box::new(source) })?;
            if let Some(applied) = migrated {
                self.write(vec![
                    Op::Change { case_id: id.to_string(), bytes: applied.change },
                    Op::Audit(record(
                        &ctx,
                        "case.migrate",
                        Some(id),
                        audit::Outcome::Allowed,
                        format!("to schema {}", case_model::SCHEMA_VERSION),
                    )),
                ])?;
            }
            doc.refresh_conflicts();
            **guard = Some(doc);
        }
        Ok(guard.as_mut().expect("filled above"))
    }

    fn load(&self, id: CaseId) -> Result<Option<CaseDoc>, StoreError> {
        let conn = lock(&self.inner.reader);
        let key = id.to_string();
        let snapshot: Option<Vec<u8>> =
            conn.query_row("SELECT bytes FROM snapshots WHERE case_id = ?1", [&key], |r| r.get(0)).optional()?;
        let mut stmt = conn.prepare_cached("SELECT bytes FROM changes WHERE case_id = ?1 ORDER BY id")?;
        let changes = stmt.query_map([&key], |r| r.get::<_, Vec<u8>>(0))?.collect::<Result<Vec<_>, _>>()?;
        if snapshot.is_none() && changes.is_empty() {
            return Ok(None);
        }
        let doc = CaseDoc::load(self.inner.actor.clone(), snapshot.as_deref(), changes.iter().map(Vec::as_slice))
            .map_err(|source| StoreError::Load { case: id, source: Box::new(source) })?;
        Ok(Some(doc))
    }

    fn maybe_compact(&self, id: CaseId) {
        let mut counts = lock(&self.inner.uncompacted);
        let count = match counts.get_mut(&id) {
            Some(c) => {
                *c += 1;
                *c
            }
            None => {
                let stored: i64 = lock(&self.inner.reader)
                    .query_row("SELECT COUNT(*) FROM changes WHERE case_id = ?1", [id.to_string()], |r| r.get(0))
                    .unwrap_or(0);
                counts.insert(id, stored as usize);
                stored as usize
            }
        };
        if count >= self.inner.config.compact_after {
            counts.insert(id, 0);
            if let Some(tx) = lock(&self.inner.compactor).as_ref() {
                let _ = tx.send(id);
            }
        }
    }

    fn start_compactor(&self) {
        let (tx, rx) = mpsc::channel::<CaseId>();
        *lock(&self.inner.compactor) = Some(tx);
        // A weak handle: the compactor must not keep the store alive.
        let weak = Arc::downgrade(&self.inner);
        let _ = thread::Builder::new().name("store-compactor".into()).spawn(move || {
            while let Ok(id) = rx.recv() {
                let Some(inner) = weak.upgrade() else { break };
                let store = Store { inner };
                if let Err(e) = store.compact(id) {
                    tracing::warn!(case = %id, error = %e, "compaction failed; the case's changes stay as they are");
                }
            }
        });
    }
}

impl Inner {
    fn cache_insert(&self, id: CaseId, slot: Slot) -> Slot {
        lock(&self.cache).entry(id).or_insert(slot).clone()
    }
}

/// The acting "user" of a schema migration, at the time given.
fn migration_context(ctx: &EditContext) -> EditContext {
    EditContext { user: UserId::parse("system:schema-migration").expect("valid literal"), now: ctx.now }
}

/// The device clock, for writes the store makes on its own (migrations).
fn now() -> case_model::Timestamp {
    let ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
    case_model::Timestamp::from_unix_millis(ms)
}

/// Everything in the data directory is encrypted; the directory is still the agent's alone.
fn restrict_to_owner(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks is a bug; the data behind them stays
    // consistent because every mutation is validated before it is made.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The changes a case gained since `before`, as writes for the writer thread.
fn change_ops(doc: &CaseDoc, id: CaseId, before: &[automerge::ChangeHash]) -> Vec<Op> {
    doc.automerge()
        .get_changes(before)
        .into_iter()
        .map(|mut c| Op::Change { case_id: id.to_string(), bytes: c.bytes().into_owned() })
        .collect()
}

fn record(
    ctx: &EditContext,
    action: &str,
    case: Option<CaseId>,
    outcome: audit::Outcome,
    detail: String,
) -> audit::Record {
    audit::Record {
        at: ctx.now.unix_millis(),
        actor: ctx.user.to_string(),
        action: action.to_owned(),
        case_id: case.map(|c| c.to_string()),
        outcome,
        detail,
    }
}

fn index_row(s: &CaseSummary, ctx: &EditContext) -> IndexRow {
    IndexRow {
        id: s.id.to_string(),
        org: s.org.to_string(),
        van: s.van.to_string(),
        status: s.status.map(|st| st.as_str().to_owned()),
        created_at: s.created_at.unix_millis(),
        updated_at: ctx.now.unix_millis(),
        patient_name: s.patient_name.clone(),
        temp_patient_id: s.temp_patient_id.clone(),
        chief_complaint: s.chief_complaint.clone(),
        has_conflicts: s.has_conflicts,
        summary: serde_json::to_string(s).unwrap_or_default(),
    }
}

/// `T-` and six characters a person can read out over a radio (no 0/O, 1/I).
fn temp_patient_id(random: &[u8; 10]) -> String {
    const ALPHABET: &[u8] = b"23456789ABCDEFGHJKLMNPQRSTUVWXYZ";
    let id: String = random[..6].iter().map(|b| ALPHABET[(*b as usize) % ALPHABET.len()] as char).collect();
    format!("T-{id}")
}
