//! The embedded backend: one SQLCipher database and a directory of sealed blob files.
//!
//! The database runs in WAL mode with `synchronous=FULL`, so every committed write survives
//! a power cut. A blob's chunks go into one file, each in its own fixed-size slot, and the
//! file is synced before the database records the chunk as held: after a crash the
//! database never claims a chunk the file lacks.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use sync_proto::{BlobState, CHUNK, DocId};
use sync_quic::enrol::EnrolError;
use sync_quic::identity::DeviceId;
use sync_quic::registry::{Registry, RegistryError, Revocation, VOIDED, redeem};

use super::crypto::Sealer;
use super::{Append, CaseMeta, DicomRow, IdentityRow, Storage, StorageError, StoredCa, VanHead, doc_from, doc_key};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS orgs (id TEXT PRIMARY KEY, name TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cases (
    id BLOB PRIMARY KEY, org TEXT NOT NULL REFERENCES orgs(id), creator TEXT NOT NULL, version INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS cases_by_org ON cases(org, creator);
CREATE TABLE IF NOT EXISTS case_chunks (
    case_id BLOB NOT NULL, seq INTEGER NOT NULL, data BLOB NOT NULL, PRIMARY KEY (case_id, seq));
CREATE TABLE IF NOT EXISTS assignments (case_id BLOB NOT NULL, van TEXT NOT NULL, PRIMARY KEY (case_id, van));
CREATE INDEX IF NOT EXISTS assignments_by_van ON assignments(van);
CREATE TABLE IF NOT EXISTS sync_states (
    peer TEXT NOT NULL, case_id BLOB NOT NULL, state BLOB NOT NULL, PRIMARY KEY (peer, case_id));
CREATE TABLE IF NOT EXISTS blobs (
    sha BLOB PRIMARY KEY, held INTEGER NOT NULL, chunks INTEGER NOT NULL, complete INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS tokens (
    hash BLOB PRIMARY KEY, org TEXT NOT NULL, van TEXT NOT NULL, expires_at INTEGER NOT NULL, used_by BLOB);
CREATE TABLE IF NOT EXISTS certificates (
    fingerprint TEXT PRIMARY KEY, org TEXT NOT NULL, van TEXT NOT NULL, not_after INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS revocations (
    seq INTEGER PRIMARY KEY, fingerprint TEXT NOT NULL UNIQUE, org TEXT NOT NULL, van TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS dicom_instances (
    org TEXT NOT NULL, sop_uid TEXT NOT NULL, study_uid TEXT NOT NULL, series_uid TEXT NOT NULL, case_id TEXT,
    sha BLOB NOT NULL, size INTEGER NOT NULL, meta BLOB NOT NULL, stored_at INTEGER NOT NULL,
    PRIMARY KEY (org, sop_uid));
CREATE INDEX IF NOT EXISTS dicom_by_study ON dicom_instances(org, study_uid);
CREATE TABLE IF NOT EXISTS identities (
    kind TEXT NOT NULL, id TEXT NOT NULL, org TEXT NOT NULL, version INTEGER NOT NULL, body BLOB NOT NULL,
    PRIMARY KEY (kind, id));
CREATE INDEX IF NOT EXISTS identities_by_org ON identities(kind, org);
CREATE TABLE IF NOT EXISTS van_audit (
    org TEXT NOT NULL, van TEXT NOT NULL, seq INTEGER NOT NULL, at INTEGER NOT NULL, actor TEXT NOT NULL,
    action TEXT NOT NULL, case_id TEXT, outcome TEXT NOT NULL, detail TEXT NOT NULL, prev BLOB NOT NULL,
    hash BLOB NOT NULL, PRIMARY KEY (org, van, seq));
CREATE TABLE IF NOT EXISTS van_audit_heads (
    org TEXT NOT NULL, van TEXT NOT NULL, size INTEGER NOT NULL, root BLOB NOT NULL, signature BLOB NOT NULL,
    received_at INTEGER NOT NULL, PRIMARY KEY (org, van, size));
";

/// The embedded backend.
#[derive(Debug)]
pub struct SqliteStorage {
    conn: Mutex<Connection>,
    blob_dir: PathBuf,
}

/// A slot holds a chunk's length (4 bytes) and its sealed bytes (a 24-byte nonce in front,
/// the AEAD tag of 16 behind).
const SLOT: u64 = 4 + 24 + CHUNK + 16;

impl SqliteStorage {
    /// Opens (creating if needed) the store under `dir`.
    pub fn open(dir: &Path, sealer: &Sealer) -> Result<SqliteStorage, StorageError> {
        fs::create_dir_all(dir.join("blobs"))?;
        let conn = Connection::open(dir.join("hub.db"))?;
        case_store::apply_sqlcipher_key(&conn, sealer.sqlcipher_key())?;
        // The first read tells a wrong key from a good one.
        conn.query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(())).map_err(|_| {
            StorageError::Unsealed(format!(
                "{} cannot be opened with this key file: the wrong key, or not a hub database",
                dir.join("hub.db").display()
            ))
        })?;
        conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;")?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        let has_audit: bool =
            conn.query_row("SELECT count(*) FROM sqlite_master WHERE name = 'audit_log'", [], |r| r.get::<_, i64>(0))?
                > 0;
        conn.execute_batch(SCHEMA)?;
        if !has_audit {
            conn.execute_batch(audit::SCHEMA_SQL)?;
        }
        Ok(SqliteStorage { conn: Mutex::new(conn), blob_dir: dir.join("blobs") })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn blob_path(&self, sha: &[u8; 32]) -> PathBuf {
        self.blob_dir.join(format!("{}.blob", hex::encode(sha)))
    }

    fn reg<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, RegistryError> {
        f(&self.conn()).map_err(|e| RegistryError(e.to_string()))
    }
}

fn in_tx<T>(
    conn: &mut Connection,
    f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T, StorageError>,
) -> Result<T, StorageError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let out = f(&tx)?;
    tx.commit()?;
    Ok(out)
}

/// An audit entry of a van's copy from a row whose columns, from `first`, are seq, at, actor,
/// action, case_id, outcome, detail, prev, hash.
fn van_entry(r: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<audit::Entry> {
    Ok(audit::Entry {
        seq: r.get::<_, i64>(first)? as u64,
        at: r.get(first + 1)?,
        actor: r.get(first + 2)?,
        action: r.get(first + 3)?,
        case_id: r.get(first + 4)?,
        outcome: audit::Outcome::parse(&r.get::<_, String>(first + 5)?).unwrap_or(audit::Outcome::Refused),
        detail: r.get(first + 6)?,
        prev: hex::encode(r.get::<_, Vec<u8>>(first + 7)?),
        hash: hex::encode(r.get::<_, Vec<u8>>(first + 8)?),
    })
}

fn append_audit(tx: &Connection, rec: &audit::Record) -> Result<(), StorageError> {
    audit::append(tx, rec).map_err(|e| StorageError::Database(e.to_string()))?;
    Ok(())
}

impl Registry for SqliteStorage {
    fn add_token(&self, secret_hash: [u8; 32], device: &DeviceId, expires_at: i64) -> Result<(), RegistryError> {
        self.reg(|c| {
            c.execute(
                "INSERT INTO tokens (hash, org, van, expires_at) VALUES (?1, ?2, ?3, ?4)",
                params![&secret_hash[..], device.org, device.van, expires_at],
            )
            .map(|_| ())
        })
    }

    fn redeem_token(&self, secret_hash: [u8; 32], key_hash: [u8; 32], now: i64) -> Result<DeviceId, EnrolError> {
        let mut conn = self.conn();
        let storage = |e: rusqlite::Error| EnrolError::Refused(format!("the hub's storage failed: {e}"));
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(storage)?;
        let row: Option<(String, String, i64, Option<Vec<u8>>)> = tx
            .query_row("SELECT org, van, expires_at, used_by FROM tokens WHERE hash = ?1", [&secret_hash[..]], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .optional()
            .map_err(storage)?;
        let (org, van, expires_at, used_by) = row.ok_or(EnrolError::Unknown)?;
        let used_by = used_by.and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok());
        redeem(used_by, expires_at, key_hash, now)?;
        tx.execute("UPDATE tokens SET used_by = ?1 WHERE hash = ?2", params![&key_hash[..], &secret_hash[..]])
            .map_err(storage)?;
        tx.commit().map_err(storage)?;
        DeviceId::new(&org, &van).map_err(|e| EnrolError::Refused(e.to_string()))
    }

    fn record_certificate(&self, fingerprint: &str, device: &DeviceId, not_after: i64) -> Result<(), RegistryError> {
        self.reg(|c| {
            c.execute(
                "INSERT OR REPLACE INTO certificates (fingerprint, org, van, not_after) VALUES (?1, ?2, ?3, ?4)",
                params![fingerprint, device.org, device.van, not_after],
            )
            .map(|_| ())
        })
    }

    fn revoke_device(&self, device: &DeviceId) -> Result<usize, RegistryError> {
        self.reg(|c| {
            c.execute(
                "UPDATE tokens SET used_by = ?1 WHERE org = ?2 AND van = ?3",
                params![&VOIDED[..], device.org, device.van],
            )?;
            c.execute(
                "INSERT OR IGNORE INTO revocations (fingerprint, org, van)
                 SELECT fingerprint, org, van FROM certificates WHERE org = ?1 AND van = ?2",
                params![device.org, device.van],
            )
        })
    }

    fn is_revoked(&self, fingerprint: &str) -> Result<bool, RegistryError> {
        self.reg(|c| {
            c.query_row("SELECT count(*) FROM revocations WHERE fingerprint = ?1", [fingerprint], |r| {
                r.get::<_, i64>(0)
            })
            .map(|n| n > 0)
        })
    }

    fn revocations_after(&self, after: u64) -> Result<Vec<Revocation>, RegistryError> {
        self.reg(|c| {
            let mut stmt =
                c.prepare_cached("SELECT seq, fingerprint, org, van FROM revocations WHERE seq > ?1 ORDER BY seq")?;
            let rows = stmt.query_map([after as i64], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, String>(3)?))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (seq, fingerprint, org, van) = row?;
                if let Ok(device) = DeviceId::new(&org, &van) {
                    out.push(Revocation { seq: seq as u64, fingerprint, device });
                }
            }
            Ok(out)
        })
    }
}

impl Storage for SqliteStorage {
    fn load_ca(&self) -> Result<Option<StoredCa>, StorageError> {
        let conn = self.conn();
        let get = |k: &str| -> Result<Option<Vec<u8>>, StorageError> {
            Ok(conn.query_row("SELECT value FROM meta WHERE key = ?1", [k], |r| r.get(0)).optional()?)
        };
        Ok(match (get("ca_cert")?, get("ca_key")?) {
            (Some(cert), Some(sealed_key)) => Some(StoredCa { cert, sealed_key }),
            _ => None,
        })
    }

    fn save_ca(&self, cert: &[u8], sealed_key: &[u8]) -> Result<(), StorageError> {
        in_tx(&mut self.conn(), |tx| {
            let n: i64 = tx.query_row("SELECT count(*) FROM meta WHERE key = 'ca_cert'", [], |r| r.get(0))?;
            if n > 0 {
                return Err(StorageError::CaExists);
            }
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ('ca_cert', ?1), ('ca_key', ?2)",
                params![cert, sealed_key],
            )?;
            Ok(())
        })
    }

    fn create_org(&self, org: &str, name: &str) -> Result<(), StorageError> {
        match self.conn().execute("INSERT INTO orgs (id, name) VALUES (?1, ?2)", params![org, name]) {
            Ok(_) => Ok(()),
            Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::ConstraintViolation => {
                Err(StorageError::OrgExists(org.to_owned()))
            }
            Err(e) => Err(e.into()),
        }
    }

    fn orgs(&self) -> Result<Vec<(String, String)>, StorageError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT id, name FROM orgs ORDER BY id")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn case_meta(&self, doc: DocId) -> Result<Option<CaseMeta>, StorageError> {
        let conn = self.conn();
        let row: Option<(String, String, i64)> = conn
            .query_row("SELECT org, creator, version FROM cases WHERE id = ?1", [doc_key(doc)], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .optional()?;
        let Some((org, creator, version)) = row else { return Ok(None) };
        let mut stmt = conn.prepare_cached("SELECT van FROM assignments WHERE case_id = ?1 ORDER BY van")?;
        let assigned = stmt.query_map([doc_key(doc)], |r| r.get(0))?.collect::<Result<_, _>>()?;
        Ok(Some(CaseMeta { org, creator, assigned, version }))
    }

    fn case_chunks(&self, doc: DocId) -> Result<Vec<Vec<u8>>, StorageError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached("SELECT data FROM case_chunks WHERE case_id = ?1 ORDER BY seq")?;
        let rows = stmt.query_map([doc_key(doc)], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn insert_case(&self, org: &str, creator: &str, a: Append<'_>) -> Result<i64, StorageError> {
        in_tx(&mut self.conn(), |tx| {
            let exists: i64 =
                tx.query_row("SELECT count(*) FROM cases WHERE id = ?1", [doc_key(a.doc)], |r| r.get(0))?;
            if exists > 0 {
                return Err(StorageError::Conflict);
            }
            let org_known: i64 = tx.query_row("SELECT count(*) FROM orgs WHERE id = ?1", [org], |r| r.get(0))?;
            if org_known == 0 {
                return Err(StorageError::NoSuchOrg(org.to_owned()));
            }
            tx.execute(
                "INSERT INTO cases (id, org, creator, version) VALUES (?1, ?2, ?3, 1)",
                params![doc_key(a.doc), org, creator],
            )?;
            tx.execute(
                "INSERT INTO case_chunks (case_id, seq, data) VALUES (?1, 1, ?2)",
                params![doc_key(a.doc), a.sealed],
            )?;
            append_audit(tx, a.audit)?;
            Ok(1)
        })
    }

    fn append_case(&self, a: Append<'_>) -> Result<i64, StorageError> {
        in_tx(&mut self.conn(), |tx| {
            let version: Option<i64> =
                tx.query_row("SELECT version FROM cases WHERE id = ?1", [doc_key(a.doc)], |r| r.get(0)).optional()?;
            match version {
                None => return Err(StorageError::NoSuchCase(hex::encode(a.doc.0))),
                Some(v) if v != a.expected_version => return Err(StorageError::Conflict),
                Some(_) => {}
            }
            let next = a.expected_version + 1;
            tx.execute("UPDATE cases SET version = ?1 WHERE id = ?2", params![next, doc_key(a.doc)])?;
            tx.execute(
                "INSERT INTO case_chunks (case_id, seq, data) VALUES (?1, ?2, ?3)",
                params![doc_key(a.doc), next, a.sealed],
            )?;
            append_audit(tx, a.audit)?;
            Ok(next)
        })
    }

    fn compact_case(&self, doc: DocId, version: i64, sealed: &[u8]) -> Result<(), StorageError> {
        in_tx(&mut self.conn(), |tx| {
            let current: Option<i64> =
                tx.query_row("SELECT version FROM cases WHERE id = ?1", [doc_key(doc)], |r| r.get(0)).optional()?;
            if current != Some(version) {
                return Err(StorageError::Conflict);
            }
            tx.execute("DELETE FROM case_chunks WHERE case_id = ?1", [doc_key(doc)])?;
            tx.execute(
                "INSERT INTO case_chunks (case_id, seq, data) VALUES (?1, ?2, ?3)",
                params![doc_key(doc), version, sealed],
            )?;
            Ok(())
        })
    }

    fn assign(&self, doc: DocId, van: &str, audit: &audit::Record) -> Result<(), StorageError> {
        in_tx(&mut self.conn(), |tx| {
            let exists: i64 = tx.query_row("SELECT count(*) FROM cases WHERE id = ?1", [doc_key(doc)], |r| r.get(0))?;
            if exists == 0 {
                return Err(StorageError::NoSuchCase(hex::encode(doc.0)));
            }
            tx.execute("INSERT OR IGNORE INTO assignments (case_id, van) VALUES (?1, ?2)", params![doc_key(doc), van])?;
            append_audit(tx, audit)
        })
    }

    fn case_versions_for_van(&self, org: &str, van: &str) -> Result<Vec<(DocId, i64)>, StorageError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT id, version FROM cases WHERE org = ?1 AND creator = ?2
             UNION SELECT c.id, c.version FROM cases c JOIN assignments a ON a.case_id = c.id
                   WHERE c.org = ?1 AND a.van = ?2",
        )?;
        let rows = stmt.query_map(params![org, van], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?)))?;
        rows.map(|r| {
            let (id, version) = r?;
            Ok((doc_from(&id)?, version))
        })
        .collect()
    }

    fn cases_of_org(&self, org: &str) -> Result<Vec<DocId>, StorageError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached("SELECT id FROM cases WHERE org = ?1 ORDER BY id")?;
        let rows = stmt.query_map([org], |r| r.get::<_, Vec<u8>>(0))?;
        rows.map(|r| doc_from(&r?)).collect()
    }

    fn sync_state(&self, peer: &str, doc: DocId) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT state FROM sync_states WHERE peer = ?1 AND case_id = ?2",
                params![peer, doc_key(doc)],
                |r| r.get(0),
            )
            .optional()?)
    }

    fn save_sync_states(&self, peer: &str, states: &[(DocId, Vec<u8>)]) -> Result<(), StorageError> {
        in_tx(&mut self.conn(), |tx| {
            let mut stmt =
                tx.prepare_cached("INSERT OR REPLACE INTO sync_states (peer, case_id, state) VALUES (?1, ?2, ?3)")?;
            for (doc, state) in states {
                stmt.execute(params![peer, doc_key(*doc), state])?;
            }
            Ok(())
        })
    }

    fn blob_state(&self, sha: &[u8; 32]) -> Result<BlobState, StorageError> {
        let row: Option<(i64, bool)> = self
            .conn()
            .query_row("SELECT held, complete FROM blobs WHERE sha = ?1", [&sha[..]], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        Ok(match row {
            None => BlobState::Missing,
            Some((_, true)) => BlobState::Complete,
            Some((held, false)) => BlobState::Partial(held as u64),
        })
    }

    fn put_blob_chunk(&self, sha: &[u8; 32], index: u64, plain_len: u64, sealed: &[u8]) -> Result<(), StorageError> {
        let mut conn = self.conn();
        let (held, chunks): (i64, i64) = conn
            .query_row("SELECT held, chunks FROM blobs WHERE sha = ?1", [&sha[..]], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?
            .unwrap_or((0, 0));
        if index != chunks as u64 {
            return Err(StorageError::BlobOffset { sha: hex::encode(sha), offset: index * CHUNK, held: held as u64 });
        }
        let path = self.blob_path(sha);
        let new_file = !path.exists();
        let mut f = fs::OpenOptions::new().create(true).write(true).truncate(false).open(&path)?;
        f.seek(SeekFrom::Start(index * SLOT))?;
        f.write_all(&(sealed.len() as u32).to_be_bytes())?;
        f.write_all(sealed)?;
        f.sync_data()?;
        if new_file {
            fs::File::open(&self.blob_dir)?.sync_all()?;
        }
        in_tx(&mut conn, |tx| {
            tx.execute(
                "INSERT INTO blobs (sha, held, chunks, complete) VALUES (?1, ?2, 1, 0)
                 ON CONFLICT(sha) DO UPDATE SET held = held + ?2, chunks = chunks + 1",
                params![&sha[..], plain_len as i64],
            )?;
            Ok(())
        })
    }

    fn blob_chunk(&self, sha: &[u8; 32], index: u64) -> Result<Option<Vec<u8>>, StorageError> {
        let chunks: Option<i64> =
            self.conn().query_row("SELECT chunks FROM blobs WHERE sha = ?1", [&sha[..]], |r| r.get(0)).optional()?;
        if chunks.is_none_or(|n| index >= n as u64) {
            return Ok(None);
        }
        let mut f = fs::File::open(self.blob_path(sha))?;
        f.seek(SeekFrom::Start(index * SLOT))?;
        let mut len = [0u8; 4];
        f.read_exact(&mut len)?;
        let len = u32::from_be_bytes(len) as u64;
        if len > SLOT - 4 {
            return Err(StorageError::Unsealed(format!(
                "chunk {index} of blob {} has a damaged length",
                hex::encode(sha)
            )));
        }
        let mut buf = vec![0u8; len as usize];
        f.read_exact(&mut buf)?;
        Ok(Some(buf))
    }

    fn complete_blob_size(&self, sha: &[u8; 32]) -> Result<Option<u64>, StorageError> {
        let held: Option<i64> = self
            .conn()
            .query_row("SELECT held FROM blobs WHERE sha = ?1 AND complete = 1", [&sha[..]], |r| r.get(0))
            .optional()?;
        Ok(held.map(|h| h as u64))
    }

    fn complete_blob(&self, sha: &[u8; 32], size: u64) -> Result<(), StorageError> {
        let n = self
            .conn()
            .execute("UPDATE blobs SET complete = 1 WHERE sha = ?1 AND held = ?2", params![&sha[..], size as i64])?;
        if n == 0 {
            return Err(StorageError::BlobMismatch(hex::encode(sha)));
        }
        Ok(())
    }

    fn drop_blob(&self, sha: &[u8; 32]) -> Result<(), StorageError> {
        self.conn().execute("DELETE FROM blobs WHERE sha = ?1", [&sha[..]])?;
        match fs::remove_file(self.blob_path(sha)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    fn audit(&self, record: &audit::Record) -> Result<(), StorageError> {
        in_tx(&mut self.conn(), |tx| append_audit(tx, record))
    }

    fn put_dicom_instance(&self, row: &DicomRow, audit: &audit::Record) -> Result<Option<[u8; 32]>, StorageError> {
        in_tx(&mut self.conn(), |tx| {
            let held: Option<Vec<u8>> = tx
                .query_row(
                    "SELECT sha FROM dicom_instances WHERE org = ?1 AND sop_uid = ?2",
                    params![row.org, row.sop],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(sha) = held {
                return Ok(Some(
                    sha.try_into().map_err(|_| StorageError::Database("a stored hash is not 32 bytes".into()))?,
                ));
            }
            tx.execute(
                "INSERT INTO dicom_instances (org, sop_uid, study_uid, series_uid, case_id, sha, size, meta, stored_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    row.org,
                    row.sop,
                    row.study,
                    row.series,
                    row.case_id,
                    row.sha256.as_slice(),
                    row.size as i64,
                    row.sealed_meta,
                    row.stored_at
                ],
            )?;
            append_audit(tx, audit)?;
            Ok(None)
        })
    }

    fn dicom_instances(&self, org: &str, study: Option<&str>) -> Result<Vec<DicomRow>, StorageError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT study_uid, series_uid, sop_uid, case_id, sha, size, meta, stored_at FROM dicom_instances
             WHERE org = ?1 AND (?2 IS NULL OR study_uid = ?2) ORDER BY rowid",
        )?;
        let rows = stmt.query_map(params![org, study], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, Vec<u8>>(4)?,
                r.get::<_, i64>(5)?,
                r.get::<_, Vec<u8>>(6)?,
                r.get::<_, i64>(7)?,
            ))
        })?;
        rows.map(|r| {
            let (study, series, sop, case_id, sha, size, sealed_meta, stored_at) = r?;
            Ok(DicomRow {
                org: org.to_owned(),
                study,
                series,
                sop,
                case_id,
                sha256: sha.try_into().map_err(|_| StorageError::Database("a stored hash is not 32 bytes".into()))?,
                size: size as u64,
                sealed_meta,
                stored_at,
            })
        })
        .collect()
    }

    fn identity(&self, kind: &str, id: &str) -> Result<Option<IdentityRow>, StorageError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached("SELECT org, version, body FROM identities WHERE kind = ?1 AND id = ?2")?;
        Ok(stmt
            .query_row(params![kind, id], |r| {
                Ok(IdentityRow {
                    kind: kind.to_owned(),
                    id: id.to_owned(),
                    org: r.get(0)?,
                    version: r.get(1)?,
                    sealed: r.get(2)?,
                })
            })
            .optional()?)
    }

    fn identities(&self, kind: &str, org: &str) -> Result<Vec<IdentityRow>, StorageError> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare_cached("SELECT id, version, body FROM identities WHERE kind = ?1 AND org = ?2 ORDER BY id")?;
        let rows = stmt.query_map(params![kind, org], |r| {
            Ok(IdentityRow {
                kind: kind.to_owned(),
                id: r.get(0)?,
                org: org.to_owned(),
                version: r.get(1)?,
                sealed: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn put_identity(
        &self,
        kind: &str,
        id: &str,
        org: &str,
        expected_version: i64,
        sealed: &[u8],
        audit: Option<&audit::Record>,
    ) -> Result<i64, StorageError> {
        in_tx(&mut self.conn(), |tx| {
            let changed = if expected_version == 0 {
                tx.execute(
                    "INSERT INTO identities (kind, id, org, version, body) VALUES (?1, ?2, ?3, 1, ?4)
                     ON CONFLICT DO NOTHING",
                    params![kind, id, org, sealed],
                )?
            } else {
                tx.execute(
                    "UPDATE identities SET body = ?4, org = ?3, version = version + 1
                     WHERE kind = ?1 AND id = ?2 AND version = ?5",
                    params![kind, id, org, sealed, expected_version],
                )?
            };
            if changed == 0 {
                return Err(StorageError::Conflict);
            }
            if let Some(a) = audit {
                append_audit(tx, a)?;
            }
            Ok(expected_version + 1)
        })
    }

    fn delete_identity(&self, kind: &str, id: &str, audit: Option<&audit::Record>) -> Result<bool, StorageError> {
        in_tx(&mut self.conn(), |tx| {
            let n = tx.execute("DELETE FROM identities WHERE kind = ?1 AND id = ?2", params![kind, id])?;
            if let Some(a) = audit {
                append_audit(tx, a)?;
            }
            Ok(n > 0)
        })
    }

    fn audit_of_case(&self, case_id: &str) -> Result<Vec<audit::Entry>, StorageError> {
        audit::for_case(&self.conn(), case_id).map_err(|e| StorageError::Database(e.to_string()))
    }

    fn van_audit_hashes(&self, org: &str, van: &str) -> Result<Vec<[u8; 32]>, StorageError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached("SELECT hash FROM van_audit WHERE org = ?1 AND van = ?2 ORDER BY seq")?;
        let rows = stmt.query_map(params![org, van], |r| r.get::<_, Vec<u8>>(0))?;
        rows.map(|h| h?.try_into().map_err(|_| StorageError::Database("a stored hash is not 32 bytes".into())))
            .collect()
    }

    fn append_van_audit(
        &self,
        org: &str,
        van: &str,
        entries: &[audit::Entry],
        head: &VanHead,
    ) -> Result<(), StorageError> {
        in_tx(&mut self.conn(), |tx| {
            let held: i64 =
                tx.query_row("SELECT count(*) FROM van_audit WHERE org = ?1 AND van = ?2", params![org, van], |r| {
                    r.get(0)
                })?;
            if entries.first().is_some_and(|e| e.seq != held as u64 + 1) {
                return Err(StorageError::Conflict);
            }
            for e in entries {
                tx.execute(
                    "INSERT INTO van_audit (org, van, seq, at, actor, action, case_id, outcome, detail, prev, hash)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                    params![
                        org,
                        van,
                        e.seq as i64,
                        e.at,
                        e.actor,
                        e.action,
                        e.case_id,
                        e.outcome.as_str(),
                        e.detail,
                        hex::decode(&e.prev).unwrap_or_default(),
                        hex::decode(&e.hash).unwrap_or_default()
                    ],
                )?;
            }
            tx.execute(
                "INSERT OR IGNORE INTO van_audit_heads (org, van, size, root, signature, received_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![org, van, head.size as i64, head.root.as_slice(), head.signature, head.received_at],
            )?;
            Ok(())
        })
    }

    fn van_audit_entries(
        &self,
        org: &str,
        van: &str,
        after: u64,
        limit: u32,
    ) -> Result<Vec<audit::Entry>, StorageError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT seq, at, actor, action, case_id, outcome, detail, prev, hash FROM van_audit
             WHERE org = ?1 AND van = ?2 AND seq > ?3 ORDER BY seq LIMIT ?4",
        )?;
        let rows = stmt.query_map(params![org, van, after as i64, i64::from(limit)], |r| van_entry(r, 0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn van_audit_by_action(
        &self,
        org: &str,
        action: &str,
        limit: u32,
    ) -> Result<Vec<(String, audit::Entry)>, StorageError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT van, seq, at, actor, action, case_id, outcome, detail, prev, hash FROM van_audit
             WHERE org = ?1 AND action = ?2 ORDER BY at DESC LIMIT ?3",
        )?;
        let rows =
            stmt.query_map(params![org, action, i64::from(limit)], |r| Ok((r.get::<_, String>(0)?, van_entry(r, 1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn van_audit_head(&self, org: &str, van: &str) -> Result<Option<VanHead>, StorageError> {
        let conn = self.conn();
        let row = conn
            .query_row(
                "SELECT size, root, signature, received_at FROM van_audit_heads WHERE org = ?1 AND van = ?2
                 ORDER BY size DESC LIMIT 1",
                params![org, van],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?, r.get::<_, Vec<u8>>(2)?, r.get::<_, i64>(3)?)),
            )
            .optional()?;
        row.map(|(size, root, signature, received_at)| {
            Ok(VanHead {
                size: size as u64,
                root: root.try_into().map_err(|_| StorageError::Database("a stored root is not 32 bytes".into()))?,
                signature,
                received_at,
            })
        })
        .transpose()
    }

    fn audit_entries(&self, after: u64, limit: u32) -> Result<Vec<audit::Entry>, StorageError> {
        audit::after(&self.conn(), after, limit).map_err(|e| StorageError::Database(e.to_string()))
    }

    fn verify_audit(&self) -> Result<Result<audit::ChainHead, audit::ChainError>, StorageError> {
        Ok(audit::verify(&self.conn()))
    }
}
