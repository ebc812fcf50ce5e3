//! Opening the encrypted database, and its schema.
//!
//! Order matters: the key goes first, then the file is proven readable, and only then is
//! anything written (migrations). A database that cannot be read is never touched.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};

use crate::error::OpenError;
use crate::key::Keys;

/// How hard commits are pushed to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Durability {
    /// `synchronous=FULL`: in WAL mode, the only setting that keeps acknowledged commits
    /// through a power cut. The default, and the only one a van should run.
    #[default]
    Full,
    /// `synchronous=NORMAL`: loses the last commits on power loss. Exists so the power-cut
    /// harness can show it catches the loss.
    UnsafeNormal,
    /// `synchronous=OFF`: likewise, for the harness only.
    UnsafeOff,
}

/// Schema migrations, applied in order; `user_version` counts how many ran.
const MIGRATIONS: &[&str] = &[
    // 1: cases as Automerge changes and snapshots, the index, blobs, the audit log.
    "
    CREATE TABLE changes (
        id INTEGER PRIMARY KEY,
        case_id TEXT NOT NULL,
        bytes BLOB NOT NULL
    );
    CREATE INDEX changes_by_case ON changes(case_id, id);
    CREATE TABLE snapshots (
        case_id TEXT PRIMARY KEY,
        upto INTEGER NOT NULL,
        bytes BLOB NOT NULL
    );
    CREATE TABLE cases (
        id TEXT PRIMARY KEY,
        org TEXT NOT NULL,
        van TEXT NOT NULL,
        status TEXT,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        patient_name TEXT,
        temp_patient_id TEXT,
        chief_complaint TEXT,
        has_conflicts INTEGER NOT NULL DEFAULT 0,
        summary TEXT NOT NULL
    );
    CREATE INDEX cases_by_status ON cases(status, updated_at);
    CREATE INDEX cases_by_van ON cases(van, updated_at);
    CREATE INDEX cases_by_created ON cases(created_at);
    CREATE INDEX cases_by_patient ON cases(patient_name);
    CREATE TABLE blobs (
        sha256 TEXT PRIMARY KEY,
        size INTEGER NOT NULL,
        media_type TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );
    ",
    // 2: Automerge sync states per peer and case, so a reconnect resumes.
    "
    CREATE TABLE sync_states (
        peer TEXT NOT NULL,
        case_id TEXT NOT NULL,
        state BLOB NOT NULL,
        PRIMARY KEY (peer, case_id)
    );
    ",
];

/// Where the store keeps its files.
#[derive(Debug, Clone)]
pub(crate) struct Paths {
    pub(crate) db: PathBuf,
    pub(crate) marker: PathBuf,
    pub(crate) blobs: PathBuf,
}

impl Paths {
    pub(crate) fn new(dir: &Path) -> Paths {
        Paths { db: dir.join("cases.db"), marker: dir.join("store.id"), blobs: dir.join("blobs") }
    }
}

/// Opens (or, in an empty directory, creates) the database.
pub(crate) fn open(
    paths: &Paths,
    keys: &Keys,
    key_file: &Path,
    durability: Durability,
    vfs: Option<&str>,
) -> Result<Connection, OpenError> {
    let sql_err = |source| OpenError::Sqlite { db: paths.db.clone(), source };
    let marker = read_marker(&paths.marker).map_err(|source| OpenError::Io { path: paths.marker.clone(), source })?;
    let exists = paths.db.exists();
    if !exists && marker.is_some() {
        return Err(OpenError::MissingDatabase { db: paths.db.clone(), marker: paths.marker.clone() });
    }
    if let Some(id) = &marker
        && *id != keys.key_id
    {
        return Err(OpenError::WrongKey { db: paths.db.clone(), key_file: key_file.to_owned() });
    }
    if exists {
        let len = fs::metadata(&paths.db).map_err(|source| OpenError::Io { path: paths.db.clone(), source })?.len();
        if len == 0 && marker.is_some() {
            return Err(OpenError::Corrupt {
                db: paths.db.clone(),
                detail: "the file is empty: it was truncated".into(),
            });
        }
    }
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = match vfs {
        Some(v) => Connection::open_with_flags_and_vfs(&paths.db, flags, v),
        None => Connection::open_with_flags(&paths.db, flags),
    }
    .map_err(sql_err)?;
    // SQLCipher's own logging writes to stderr; the store reports errors itself.
    let _ = conn.execute_batch("PRAGMA cipher_log_level = NONE;");
    // A raw key skips SQLCipher's passphrase derivation: the key is already random.
    crate::key::apply_sqlcipher_key(&conn, &keys.sqlcipher).map_err(sql_err)?;
    // Prove the file readable before writing anything.
    let version: i64 = match conn.query_row("PRAGMA user_version", [], |r| r.get(0)) {
        Ok(v) => v,
        Err(e) => return Err(classify(paths, e, marker.is_some(), key_file)),
    };
    if exists && len_of(&paths.db) > 0 {
        let check: String = conn
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .map_err(|e| classify(paths, e, marker.is_some(), key_file))?;
        if check != "ok" {
            return Err(OpenError::Corrupt { db: paths.db.clone(), detail: format!("integrity check: {check}") });
        }
    }
    if version == 0 && marker.is_some() {
        return Err(OpenError::Corrupt {
            db: paths.db.clone(),
            detail: "it holds no Medvan schema: it was truncated or replaced".into(),
        });
    }
    let latest = MIGRATIONS.len() as i64;
    if version > latest {
        return Err(OpenError::NewerSchema { db: paths.db.clone(), found: version, supported: latest });
    }
    let sync = match durability {
        Durability::Full => "FULL",
        Durability::UnsafeNormal => "NORMAL",
        Durability::UnsafeOff => "OFF",
    };
    conn.execute_batch(&format!(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = {sync};
         PRAGMA temp_store = MEMORY;
         PRAGMA foreign_keys = ON;
         PRAGMA busy_timeout = 5000;"
    ))
    .map_err(|e| classify(paths, e, marker.is_some(), key_file))?;
    migrate(&conn, version).map_err(sql_err)?;
    if marker.is_none() {
        write_marker(&paths.marker, &keys.key_id)
            .map_err(|source| OpenError::Io { path: paths.marker.clone(), source })?;
    }
    Ok(conn)
}

/// Opens another connection to an open store, for reads.
pub(crate) fn open_reader(paths: &Paths, keys: &Keys, vfs: Option<&str>) -> rusqlite::Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = match vfs {
        Some(v) => Connection::open_with_flags_and_vfs(&paths.db, flags, v)?,
        None => Connection::open_with_flags(&paths.db, flags)?,
    };
    crate::key::apply_sqlcipher_key(&conn, &keys.sqlcipher)?;
    conn.execute_batch("PRAGMA temp_store = MEMORY; PRAGMA busy_timeout = 5000; PRAGMA query_only = ON;")?;
    Ok(conn)
}

fn migrate(conn: &Connection, from: i64) -> rusqlite::Result<()> {
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(from as usize) {
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(sql)?;
        if i == 0 {
            tx.execute_batch(audit::SCHEMA_SQL)?;
        }
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

fn classify(paths: &Paths, e: rusqlite::Error, had_marker: bool, key_file: &Path) -> OpenError {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::NotADatabase) if !had_marker => {
            // No marker to compare keys with: say both possibilities.
            OpenError::Corrupt {
                db: paths.db.clone(),
                detail: format!(
                    "not readable with the key in {}: either the key is wrong or the file is damaged",
                    key_file.display()
                ),
            }
        }
        Some(rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt) => {
            OpenError::Corrupt { db: paths.db.clone(), detail: e.to_string() }
        }
        _ => OpenError::Sqlite { db: paths.db.clone(), source: e },
    }
}

fn len_of(p: &Path) -> u64 {
    fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

fn read_marker(path: &Path) -> std::io::Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(s) => {
            let v: serde_json::Value = serde_json::from_str(&s).map_err(std::io::Error::other)?;
            Ok(v.get("key_id").and_then(|k| k.as_str()).map(str::to_owned))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Written atomically: a temporary file, synced, renamed, and the directory synced.
fn write_marker(path: &Path, key_id: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::File::create(&tmp)?;
    writeln!(f, "{}", serde_json::json!({ "format": 1, "key_id": key_id }))?;
    f.sync_all()?;
    fs::rename(&tmp, path)?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Makes a directory's entries (new or renamed files) durable.
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    fs::File::open(dir)?.sync_all()
}
