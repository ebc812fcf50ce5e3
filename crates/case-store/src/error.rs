//! Errors of the store. Each says what went wrong and what a person can do about it.

use std::path::PathBuf;

use case_model::{BatchError, CaseId, LoadError};

/// Why the store could not be opened. The store never creates, migrates or overwrites a
/// database it could not read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The key file is missing, unreadable, malformed or too widely readable.
    #[error("key file {path}: {reason}")]
    Key {
        /// The key file's path.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The database was encrypted with another key.
    #[error(
        "{db} was encrypted with a different key than {key_file}; configure the key file this van was set up with (the database is untouched)"
    )]
    WrongKey {
        /// The database file.
        db: PathBuf,
        /// The key file configured.
        key_file: PathBuf,
    },
    /// The database cannot be read: damaged or truncated.
    #[error(
        "{db} cannot be read ({detail}); it was left untouched: restore it from the hub or a backup, or move it aside to start an empty store"
    )]
    Corrupt {
        /// The database file.
        db: PathBuf,
        /// What SQLite said.
        detail: String,
    },
    /// The store's marker says a database should be here, but it is gone.
    #[error(
        "{db} is missing although {marker} says a store was set up here; restore the database, or remove the marker to start an empty store"
    )]
    MissingDatabase {
        /// The missing file.
        db: PathBuf,
        /// The marker file.
        marker: PathBuf,
    },
    /// No store exists here and creating one was not asked for.
    #[error(
        "no case store in {dir}: if this van is new, create one with `edge-agent init-store`; if it had one, check that its data partition is mounted"
    )]
    NoStore {
        /// The data directory.
        dir: PathBuf,
    },
    /// Another process has the store open.
    #[error("another process has the case store in {dir} open (is an edge agent already running?); stop it first")]
    InUse {
        /// The data directory.
        dir: PathBuf,
    },
    /// The data directory could not be created or written.
    #[error("data directory {path}: {source}")]
    Io {
        /// The directory or file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The database was written by a newer Medvan.
    #[error("{db} has schema version {found}, newer than this agent understands ({supported}); update the agent")]
    NewerSchema {
        /// The database file.
        db: PathBuf,
        /// Version found.
        found: i64,
        /// Newest known.
        supported: i64,
    },
    /// Another SQLite failure while opening.
    #[error("{db}: {source}")]
    Sqlite {
        /// The database file.
        db: PathBuf,
        /// SQLite's error.
        source: rusqlite::Error,
    },
}

/// Why a store operation failed. Nothing already stored is lost by any of these.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The edit was refused by validation; nothing was written.
    #[error(transparent)]
    Invalid(#[from] BatchError),
    /// No such case (or not one this user may see).
    #[error("no case with id {0}")]
    NotFound(CaseId),
    /// No such blob attached to the case.
    #[error("case {case} has no attachment with SHA-256 {sha256}")]
    BlobNotFound {
        /// The case.
        case: CaseId,
        /// The blob's hash.
        sha256: String,
    },
    /// The disk is full; the operation was not saved, and everything saved before is intact.
    #[error(
        "the disk is full: this change was not saved (earlier data is intact); free space on the data partition and retry"
    )]
    DiskFull,
    /// A stored blob failed verification.
    #[error("stored attachment {sha256} failed verification ({reason}); it must be fetched again from the hub")]
    BlobCorrupt {
        /// The blob's hash.
        sha256: String,
        /// What failed.
        reason: String,
    },
    /// A blob was larger than allowed.
    #[error("attachment is larger than the limit of {limit} bytes")]
    BlobTooLarge {
        /// The limit.
        limit: u64,
    },
    /// A stored case could not be decoded.
    #[error("case {case} could not be loaded: {source}")]
    Load {
        /// The case.
        case: CaseId,
        /// Why.
        source: Box<LoadError>,
    },
    /// A commit failed in a way that leaves its outcome unknown (an I/O error while syncing).
    #[error("saving failed ({0}) and the change may or may not have been stored; reload the case before retrying")]
    Uncertain(String),
    /// A failure from another part of the store, passed on to each request of a group.
    #[error("{0}")]
    Failed(String),
    /// The store is shutting down.
    #[error("the store is shutting down; retry after the agent restarts")]
    Closed,
    /// An I/O failure.
    #[error("storage I/O failed: {0}")]
    Io(std::io::Error),
    /// An SQLite failure.
    #[error("database error: {0}")]
    Sqlite(rusqlite::Error),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull) {
            StoreError::DiskFull
        } else {
            StoreError::Sqlite(e)
        }
    }
}

impl From<std::io::Error> for StoreError {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::StorageFull { StoreError::DiskFull } else { StoreError::Io(e) }
    }
}

impl From<audit::AuditError> for StoreError {
    fn from(e: audit::AuditError) -> Self {
        match e {
            audit::AuditError::Sql(e) => e.into(),
            other => StoreError::Io(std::io::Error::other(other.to_string())),
        }
    }
}

impl Clone for StoreError {
    /// Errors fan out to every request of a failed group commit.
    fn clone(&self) -> Self {
        match self {
            StoreError::DiskFull => StoreError::DiskFull,
            StoreError::Closed => StoreError::Closed,
            StoreError::NotFound(id) => StoreError::NotFound(*id),
            StoreError::Invalid(b) => StoreError::Invalid(b.clone()),
            StoreError::Uncertain(m) => StoreError::Uncertain(m.clone()),
            StoreError::Io(e) => StoreError::Io(std::io::Error::new(e.kind(), e.to_string())),
            other => StoreError::Failed(other.to_string()),
        }
    }
}
