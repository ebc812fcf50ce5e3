//! The hub's storage: one interface, two backends.
//!
//! - [`sqlite`]: the embedded default. One SQLCipher database file and a directory of
//!   encrypted blob files, under the hub's data directory.
//! - [`postgres`]: for a hub that outgrows one machine, through tokio-postgres; blob
//!   chunks are rows.
//!
//! Both keep the same things with the same meaning: organisations, cases as append-only
//! runs of Automerge bytes with a version for optimistic concurrency (two hub processes
//! on one PostgreSQL database never lose each other's appends), per-van case assignments,
//! sync states, blobs in 64 KiB chunks, the enrolment registry, and a hash-chained audit
//! log. What the hub does with them (authorisation, Automerge) lives in [`crate::cases`],
//! above this interface, so both backends behave alike by construction; the test suite
//! runs against both.
//!
//! Patient data is sealed before it reaches either backend ([`crypto`]): case bytes, sync
//! states, blob chunks and the CA key are encrypted with keys derived from the hub's key
//! file, so a PostgreSQL dump or a copied data directory reveals no patient.

pub mod crypto;
pub mod postgres;
pub mod sqlite;

use sync_proto::{BlobState, DocId};
use sync_quic::registry::Registry;

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The organisation exists already.
    #[error("organisation {0:?} exists already")]
    OrgExists(String),
    /// No such organisation.
    #[error("there is no organisation {0:?}; create it first with `medvan-hub org create`")]
    NoSuchOrg(String),
    /// No such case.
    #[error("there is no case {0}")]
    NoSuchCase(String),
    /// Another writer appended to the case first; reload and try again.
    #[error("the case changed underneath this write; reload and retry")]
    Conflict,
    /// The hub already has a CA; it is never replaced silently.
    #[error("this hub already has a fleet CA; it is never replaced (every van pins it)")]
    CaExists,
    /// Stored bytes failed authentication: tampering, corruption or the wrong key file.
    #[error("stored data failed authentication ({0}): the wrong key file, or the data was damaged")]
    Unsealed(String),
    /// A blob's bytes do not hash to its name.
    #[error("blob {0} does not match its hash; it was discarded and will be fetched again")]
    BlobMismatch(String),
    /// A blob offset that does not follow what is held.
    #[error("blob {sha} bytes at {offset} do not follow the {held} bytes held")]
    BlobOffset {
        /// The blob.
        sha: String,
        /// Where the write was.
        offset: u64,
        /// What is held.
        held: u64,
    },
    /// The database failed.
    #[error("the hub's database failed: {0}")]
    Database(String),
    /// The file system failed.
    #[error("the hub's files failed: {0}")]
    Io(#[from] std::io::Error),
}

impl From<rusqlite::Error> for StorageError {
    fn from(e: rusqlite::Error) -> Self {
        StorageError::Database(e.to_string())
    }
}

impl From<tokio_postgres::Error> for StorageError {
    fn from(e: tokio_postgres::Error) -> Self {
        // The server's message says what failed; the Display of the error alone is "db error".
        match e.as_db_error() {
            Some(db) => StorageError::Database(format!("{}: {}", db.code().code(), db.message())),
            None => StorageError::Database(e.to_string()),
        }
    }
}

/// Who a case belongs to and who may sync it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseMeta {
    /// The organisation.
    pub org: String,
    /// The van that created it.
    pub creator: String,
    /// Vans it was assigned to since.
    pub assigned: Vec<String>,
    /// The version: the number of appends so far.
    pub version: i64,
}

impl CaseMeta {
    /// Whether `van` of `org` may sync the case.
    pub fn entitles(&self, org: &str, van: &str) -> bool {
        self.org == org && (self.creator == van || self.assigned.iter().any(|a| a == van))
    }
}

/// The fleet CA as stored.
#[derive(Debug, Clone)]
pub struct StoredCa {
    /// Its certificate, DER.
    pub cert: Vec<u8>,
    /// Its private key, sealed.
    pub sealed_key: Vec<u8>,
}

/// One append to a case, with the audit record written in the same transaction.
#[derive(Debug)]
pub struct Append<'a> {
    /// The case.
    pub doc: DocId,
    /// The version the writer read; the append fails with [`StorageError::Conflict`] if
    /// the stored version differs.
    pub expected_version: i64,
    /// Automerge bytes (changes or a saved document), sealed by the caller.
    pub sealed: &'a [u8],
    /// What the audit log records.
    pub audit: &'a audit::Record,
}

/// A DICOM instance as filed: its identity in clear (UIDs and the case it belongs to, no
/// clinical values), its attributes sealed, its bytes an organisation blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DicomRow {
    /// The organisation it is filed under.
    pub org: String,
    /// Study Instance UID.
    pub study: String,
    /// Series Instance UID.
    pub series: String,
    /// SOP Instance UID.
    pub sop: String,
    /// The case it belongs to, when its identifiers name one of the organisation's cases.
    pub case_id: Option<String>,
    /// SHA-256 of its bytes (the organisation blob holding them).
    pub sha256: [u8; 32],
    /// Its size in bytes.
    pub size: u64,
    /// Its attributes in the DICOM JSON model, sealed.
    pub sealed_meta: Vec<u8>,
    /// When it was filed (ms since the epoch).
    pub stored_at: i64,
}

/// One identity record as stored: an account, a login session, a signing key, a reset
/// token. Its body is sealed by the caller; its kind, id and organisation are in clear so
/// records can be found, and hold nothing clinical.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityRow {
    /// What it is (`user`, `session`, `signing_key`, `reset`).
    pub kind: String,
    /// Its key within its kind.
    pub id: String,
    /// The organisation it belongs to (empty for the hub's own records).
    pub org: String,
    /// The number of writes so far (optimistic concurrency).
    pub version: i64,
    /// The sealed body.
    pub sealed: Vec<u8>,
}

/// A signed tree head of a van's audit log, as the hub accepted it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VanHead {
    /// Entries covered.
    pub size: u64,
    /// The Merkle root over them.
    pub root: [u8; 32],
    /// The van's signature over the head.
    pub signature: Vec<u8>,
    /// When the hub accepted it (ms since the epoch).
    pub received_at: i64,
}

/// The storage interface the hub runs on.
pub trait Storage: Registry {
    /// The fleet CA, if the hub has one.
    fn load_ca(&self) -> Result<Option<StoredCa>, StorageError>;
    /// Keeps the fleet CA; refuses to replace one.
    fn save_ca(&self, cert: &[u8], sealed_key: &[u8]) -> Result<(), StorageError>;

    /// Creates an organisation.
    fn create_org(&self, org: &str, name: &str) -> Result<(), StorageError>;
    /// Organisations: `(id, name)`.
    fn orgs(&self) -> Result<Vec<(String, String)>, StorageError>;

    /// A case's owner, creator, assignments and version.
    fn case_meta(&self, doc: DocId) -> Result<Option<CaseMeta>, StorageError>;
    /// A case's sealed appends, oldest first.
    fn case_chunks(&self, doc: DocId) -> Result<Vec<Vec<u8>>, StorageError>;
    /// Creates a case with its first append (`expected_version` 0).
    fn insert_case(&self, org: &str, creator: &str, append: Append<'_>) -> Result<i64, StorageError>;
    /// Appends to a case; returns the new version.
    fn append_case(&self, append: Append<'_>) -> Result<i64, StorageError>;
    /// Replaces all appends up to `version` with one (a compacted save), if the case is
    /// still at `version`.
    fn compact_case(&self, doc: DocId, version: i64, sealed: &[u8]) -> Result<(), StorageError>;
    /// Assigns a case to a van.
    fn assign(&self, doc: DocId, van: &str, audit: &audit::Record) -> Result<(), StorageError>;
    /// The cases a van may sync: of its organisation, created by or assigned to it.
    fn cases_for_van(&self, org: &str, van: &str) -> Result<Vec<DocId>, StorageError> {
        Ok(self.case_versions_for_van(org, van)?.into_iter().map(|(doc, _)| doc).collect())
    }
    /// [`Storage::cases_for_van`] with each case's version, in one query: what a van's
    /// reconnect compares, against cached copies where their version still holds.
    fn case_versions_for_van(&self, org: &str, van: &str) -> Result<Vec<(DocId, i64)>, StorageError>;
    /// All cases of an organisation.
    fn cases_of_org(&self, org: &str) -> Result<Vec<DocId>, StorageError>;

    /// The sealed sync state of a case with a peer.
    fn sync_state(&self, peer: &str, doc: DocId) -> Result<Option<Vec<u8>>, StorageError>;
    /// Saves sealed sync states with a peer, in one transaction.
    fn save_sync_states(&self, peer: &str, states: &[(DocId, Vec<u8>)]) -> Result<(), StorageError>;

    /// How much of a blob is held (plaintext bytes).
    fn blob_state(&self, sha: &[u8; 32]) -> Result<BlobState, StorageError>;
    /// Stores sealed chunk `index` of a blob being received; `plain_len` is its plaintext
    /// length. Durable on return.
    fn put_blob_chunk(&self, sha: &[u8; 32], index: u64, plain_len: u64, sealed: &[u8]) -> Result<(), StorageError>;
    /// A stored sealed chunk and its plaintext length.
    fn blob_chunk(&self, sha: &[u8; 32], index: u64) -> Result<Option<Vec<u8>>, StorageError>;
    /// The size of a complete blob; `None` if it is not held whole.
    fn complete_blob_size(&self, sha: &[u8; 32]) -> Result<Option<u64>, StorageError>;
    /// Marks a blob complete at `size` bytes.
    fn complete_blob(&self, sha: &[u8; 32], size: u64) -> Result<(), StorageError>;
    /// Forgets a blob (it failed verification).
    fn drop_blob(&self, sha: &[u8; 32]) -> Result<(), StorageError>;

    /// Files a DICOM instance, with its audit record, unless the organisation holds that
    /// SOP instance already: then nothing changes and the held copy's hash is returned.
    fn put_dicom_instance(&self, row: &DicomRow, audit: &audit::Record) -> Result<Option<[u8; 32]>, StorageError>;

    /// An organisation's DICOM instances: of one study, or all, in filing order.
    fn dicom_instances(&self, org: &str, study: Option<&str>) -> Result<Vec<DicomRow>, StorageError>;

    /// An identity record.
    fn identity(&self, kind: &str, id: &str) -> Result<Option<IdentityRow>, StorageError>;
    /// The identity records of one kind in one organisation, by id.
    fn identities(&self, kind: &str, org: &str) -> Result<Vec<IdentityRow>, StorageError>;
    /// Writes an identity record if it is still at `expected_version` (0: it must not
    /// exist), with `audit` in the same transaction; returns the new version, or
    /// [`StorageError::Conflict`] when another writer came first.
    fn put_identity(
        &self,
        kind: &str,
        id: &str,
        org: &str,
        expected_version: i64,
        sealed: &[u8],
        audit: Option<&audit::Record>,
    ) -> Result<i64, StorageError>;
    /// Removes an identity record, with `audit` in the same transaction; whether it was there.
    fn delete_identity(&self, kind: &str, id: &str, audit: Option<&audit::Record>) -> Result<bool, StorageError>;

    /// The chain hashes of a van's audit entries the hub holds, in order.
    fn van_audit_hashes(&self, org: &str, van: &str) -> Result<Vec<[u8; 32]>, StorageError>;
    /// Appends entries of a van's audit log (checked by the caller to extend what is held)
    /// and the signed head after them, in one transaction; [`StorageError::Conflict`] if
    /// another connection of the van appended first.
    fn append_van_audit(
        &self,
        org: &str,
        van: &str,
        entries: &[audit::Entry],
        head: &VanHead,
    ) -> Result<(), StorageError>;
    /// Up to `limit` entries of a van's audit log after position `after`, oldest first.
    fn van_audit_entries(
        &self,
        org: &str,
        van: &str,
        after: u64,
        limit: u32,
    ) -> Result<Vec<audit::Entry>, StorageError>;
    /// Entries with `action` in the audit logs of an organisation's vans, newest first:
    /// `(van, entry)`.
    fn van_audit_by_action(
        &self,
        org: &str,
        action: &str,
        limit: u32,
    ) -> Result<Vec<(String, audit::Entry)>, StorageError>;
    /// The last signed head accepted from a van.
    fn van_audit_head(&self, org: &str, van: &str) -> Result<Option<VanHead>, StorageError>;
    /// Appends an audit record on its own.
    fn audit(&self, record: &audit::Record) -> Result<(), StorageError>;
    /// Audit entries about a case, oldest first.
    fn audit_of_case(&self, case_id: &str) -> Result<Vec<audit::Entry>, StorageError>;
    /// Up to `limit` audit entries after position `after`, oldest first.
    fn audit_entries(&self, after: u64, limit: u32) -> Result<Vec<audit::Entry>, StorageError>;
    /// Walks the whole audit chain.
    fn verify_audit(&self) -> Result<Result<audit::ChainHead, audit::ChainError>, StorageError>;
}

/// Hex of a 16-byte case id, as stored.
pub(crate) fn doc_key(doc: DocId) -> Vec<u8> {
    doc.0.to_vec()
}

pub(crate) fn doc_from(bytes: &[u8]) -> Result<DocId, StorageError> {
    let arr: [u8; 16] =
        bytes.try_into().map_err(|_| StorageError::Database("a stored case id is not 16 bytes".into()))?;
    Ok(DocId(arr))
}
