//! The PostgreSQL backend, through tokio-postgres.
//!
//! The hub's protocol code is synchronous (the sans-IO session calls its replica), so this
//! backend owns a small runtime that drives its connections, and each call blocks on it:
//! under `block_in_place` inside the hub's multi-threaded runtime, directly elsewhere.
//!
//! Every table lives in one PostgreSQL schema (the config's `postgres_schema`), so several
//! hubs, or test runs, can share a database. Audit entries are chained as in SQLite: the
//! log is locked for the length of the transaction that appends, so the chain has one order.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};

use sync_proto::{BlobState, CHUNK, DocId};
use sync_quic::enrol::EnrolError;
use sync_quic::identity::DeviceId;
use sync_quic::registry::{Registry, RegistryError, Revocation, VOIDED, redeem};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};

use super::{Append, CaseMeta, DicomRow, IdentityRow, Storage, StorageError, StoredCa, VanHead, doc_from, doc_key};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BYTEA NOT NULL);
CREATE TABLE IF NOT EXISTS orgs (id TEXT PRIMARY KEY, name TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cases (
    id BYTEA PRIMARY KEY, org TEXT NOT NULL REFERENCES orgs(id), creator TEXT NOT NULL, version BIGINT NOT NULL);
CREATE INDEX IF NOT EXISTS cases_by_org ON cases(org, creator);
CREATE TABLE IF NOT EXISTS case_chunks (
    case_id BYTEA NOT NULL, seq BIGINT NOT NULL, data BYTEA NOT NULL, PRIMARY KEY (case_id, seq));
CREATE TABLE IF NOT EXISTS assignments (case_id BYTEA NOT NULL, van TEXT NOT NULL, PRIMARY KEY (case_id, van));
CREATE INDEX IF NOT EXISTS assignments_by_van ON assignments(van);
CREATE TABLE IF NOT EXISTS sync_states (
    peer TEXT NOT NULL, case_id BYTEA NOT NULL, state BYTEA NOT NULL, PRIMARY KEY (peer, case_id));
CREATE TABLE IF NOT EXISTS blobs (
    sha BYTEA PRIMARY KEY, held BIGINT NOT NULL, chunks BIGINT NOT NULL, complete BOOLEAN NOT NULL);
CREATE TABLE IF NOT EXISTS blob_chunks (
    sha BYTEA NOT NULL, idx BIGINT NOT NULL, data BYTEA NOT NULL, PRIMARY KEY (sha, idx));
CREATE TABLE IF NOT EXISTS tokens (
    hash BYTEA PRIMARY KEY, org TEXT NOT NULL, van TEXT NOT NULL, expires_at BIGINT NOT NULL, used_by BYTEA);
CREATE TABLE IF NOT EXISTS certificates (
    fingerprint TEXT PRIMARY KEY, org TEXT NOT NULL, van TEXT NOT NULL, not_after BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS revocations (
    seq BIGSERIAL PRIMARY KEY, fingerprint TEXT NOT NULL UNIQUE, org TEXT NOT NULL, van TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS dicom_instances (
    org TEXT NOT NULL, sop_uid TEXT NOT NULL, study_uid TEXT NOT NULL, series_uid TEXT NOT NULL, case_id TEXT,
    sha BYTEA NOT NULL, size BIGINT NOT NULL, meta BYTEA NOT NULL, stored_at BIGINT NOT NULL,
    seq BIGSERIAL, PRIMARY KEY (org, sop_uid));
CREATE INDEX IF NOT EXISTS dicom_by_study ON dicom_instances(org, study_uid);
CREATE TABLE IF NOT EXISTS identities (
    kind TEXT NOT NULL, id TEXT NOT NULL, org TEXT NOT NULL, version BIGINT NOT NULL, body BYTEA NOT NULL,
    PRIMARY KEY (kind, id));
CREATE INDEX IF NOT EXISTS identities_by_org ON identities(kind, org);
CREATE TABLE IF NOT EXISTS van_audit (
    org TEXT NOT NULL, van TEXT NOT NULL, seq BIGINT NOT NULL, at BIGINT NOT NULL, actor TEXT NOT NULL,
    action TEXT NOT NULL, case_id TEXT, outcome TEXT NOT NULL, detail TEXT NOT NULL, prev BYTEA NOT NULL,
    hash BYTEA NOT NULL, PRIMARY KEY (org, van, seq));
CREATE TABLE IF NOT EXISTS van_audit_heads (
    org TEXT NOT NULL, van TEXT NOT NULL, size BIGINT NOT NULL, root BYTEA NOT NULL, signature BYTEA NOT NULL,
    received_at BIGINT NOT NULL, PRIMARY KEY (org, van, size));
CREATE TABLE IF NOT EXISTS audit_log (
    seq BIGINT PRIMARY KEY, at BIGINT NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL, case_id TEXT,
    outcome TEXT NOT NULL, detail TEXT NOT NULL, prev BYTEA NOT NULL, hash BYTEA NOT NULL);
CREATE INDEX IF NOT EXISTS audit_by_case ON audit_log(case_id, seq);
CREATE OR REPLACE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS
    $$ BEGIN RAISE EXCEPTION 'the audit log is append-only'; END $$;
DROP TRIGGER IF EXISTS audit_no_change ON audit_log;
CREATE TRIGGER audit_no_change BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
";

/// The PostgreSQL backend.
#[derive(Debug)]
pub struct PgStorage {
    runtime: Option<tokio::runtime::Runtime>,
    clients: Vec<tokio::sync::Mutex<Client>>,
    next: AtomicUsize,
    conninfo: String,
    schema: String,
}

impl Drop for PgStorage {
    fn drop(&mut self) {
        // Dropping a runtime may happen inside another one (a test, the hub's shutdown).
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl PgStorage {
    /// Connects `connections` clients to `conninfo` (a libpq-style string or URL), using
    /// tables in `schema`, which is created if missing.
    pub fn connect(conninfo: &str, schema: &str, connections: usize) -> Result<PgStorage, StorageError> {
        if schema.is_empty() || !schema.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
            return Err(StorageError::Database(format!(
                "postgres_schema {schema:?} must be lower-case letters, digits and '_'"
            )));
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("medvan-pg")
            .enable_all()
            .build()?;
        let mut storage = PgStorage {
            runtime: Some(runtime),
            clients: Vec::new(),
            next: AtomicUsize::new(0),
            conninfo: conninfo.to_owned(),
            schema: schema.to_owned(),
        };
        let mut clients = Vec::new();
        for _ in 0..connections.max(1) {
            clients.push(tokio::sync::Mutex::new(storage.block(storage.open_client())?));
        }
        storage.clients = clients;
        storage.block(async {
            let mut c = storage.clients[0].lock().await;
            let tx = c.transaction().await?;
            // One process creates the schema at a time.
            tx.execute("SELECT pg_advisory_xact_lock(7415001)", &[]).await?;
            tx.batch_execute(SCHEMA).await?;
            tx.commit().await?;
            Ok::<_, StorageError>(())
        })?;
        Ok(storage)
    }

    /// Drops the schema and everything in it: for tests, and for decommissioning a hub.
    pub fn destroy(self) -> Result<(), StorageError> {
        self.with(async |c| Ok(c.batch_execute(&format!("DROP SCHEMA {} CASCADE", self.schema)).await?))
    }

    async fn open_client(&self) -> Result<Client, StorageError> {
        let (client, connection) = tokio_postgres::connect(&self.conninfo, NoTls).await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(error = %e, "PostgreSQL connection ended");
            }
        });
        client.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {0}; SET search_path TO {0}", self.schema)).await?;
        Ok(client)
    }

    /// Runs `f` on the backend's runtime and waits for it (see the module docs).
    fn block<T>(&self, f: impl Future<Output = T>) -> T {
        let handle = self.runtime.as_ref().expect("the runtime lives as long as the storage").handle();
        match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(|| handle.block_on(f))
            }
            Ok(_) => panic!("the PostgreSQL backend blocks, so it needs a multi-threaded runtime (or none)"),
            Err(_) => handle.block_on(f),
        }
    }

    /// Runs `f` with one of the clients, reconnecting it first if its connection died.
    fn with<T>(
        &self,
        f: impl for<'c> AsyncFnOnce(&'c mut Client) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.clients.len();
        self.block(async {
            let mut client = self.clients[i].lock().await;
            if client.is_closed() {
                *client = self.open_client().await?;
            }
            f(&mut client).await
        })
    }

    fn reg<T>(
        &self,
        f: impl for<'c> AsyncFnOnce(&'c mut Client) -> Result<T, StorageError>,
    ) -> Result<T, RegistryError> {
        self.with(f).map_err(|e| RegistryError(e.to_string()))
    }
}

async fn append_audit(tx: &tokio_postgres::Transaction<'_>, rec: &audit::Record) -> Result<(), StorageError> {
    tx.execute("LOCK TABLE audit_log IN SHARE ROW EXCLUSIVE MODE", &[]).await?;
    let last = tx.query_opt("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1", &[]).await?;
    let (seq, prev) = match last {
        Some(row) => {
            let h: Vec<u8> = row.get(1);
            (row.get::<_, i64>(0) as u64 + 1, h.try_into().unwrap_or([0u8; 32]))
        }
        None => (1, [0u8; 32]),
    };
    let hash = audit::record_hash(seq, rec, &prev);
    tx.execute(
        "INSERT INTO audit_log (seq, at, actor, action, case_id, outcome, detail, prev, hash)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        &[
            &(seq as i64),
            &rec.at,
            &rec.actor,
            &rec.action,
            &rec.case_id,
            &rec.outcome.as_str(),
            &rec.detail,
            &&prev[..],
            &&hash[..],
        ],
    )
    .await?;
    Ok(())
}

fn entry(row: &tokio_postgres::Row) -> audit::Entry {
    audit::Entry {
        seq: row.get::<_, i64>(0) as u64,
        at: row.get(1),
        actor: row.get(2),
        action: row.get(3),
        case_id: row.get(4),
        outcome: audit::Outcome::parse(row.get(5)).unwrap_or(audit::Outcome::Refused),
        detail: row.get(6),
        prev: hex::encode(row.get::<_, Vec<u8>>(7)),
        hash: hex::encode(row.get::<_, Vec<u8>>(8)),
    }
}

impl Registry for PgStorage {
    fn add_token(&self, secret_hash: [u8; 32], device: &DeviceId, expires_at: i64) -> Result<(), RegistryError> {
        self.reg(async |c| {
            c.execute(
                "INSERT INTO tokens (hash, org, van, expires_at) VALUES ($1, $2, $3, $4)",
                &[&&secret_hash[..], &device.org, &device.van, &expires_at],
            )
            .await?;
            Ok(())
        })
    }

    fn redeem_token(&self, secret_hash: [u8; 32], key_hash: [u8; 32], now: i64) -> Result<DeviceId, EnrolError> {
        let result = self.with(async |c| {
            let tx = c.transaction().await?;
            let Some(row) = tx
                .query_opt(
                    "SELECT org, van, expires_at, used_by FROM tokens WHERE hash = $1 FOR UPDATE",
                    &[&&secret_hash[..]],
                )
                .await?
            else {
                return Ok(Err(EnrolError::Unknown));
            };
            let used_by: Option<Vec<u8>> = row.get(3);
            let used_by = used_by.and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok());
            if let Err(e) = redeem(used_by, row.get(2), key_hash, now) {
                return Ok(Err(e));
            }
            tx.execute("UPDATE tokens SET used_by = $1 WHERE hash = $2", &[&&key_hash[..], &&secret_hash[..]]).await?;
            tx.commit().await?;
            Ok(DeviceId::new(row.get(0), row.get(1)).map_err(|e| EnrolError::Refused(e.to_string())))
        });
        result.map_err(|e| EnrolError::Refused(e.to_string()))?
    }

    fn record_certificate(&self, fingerprint: &str, device: &DeviceId, not_after: i64) -> Result<(), RegistryError> {
        self.reg(async |c| {
            c.execute(
                "INSERT INTO certificates (fingerprint, org, van, not_after) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (fingerprint) DO NOTHING",
                &[&fingerprint, &device.org, &device.van, &not_after],
            )
            .await?;
            Ok(())
        })
    }

    fn revoke_device(&self, device: &DeviceId) -> Result<usize, RegistryError> {
        self.reg(async |c| {
            c.execute(
                "UPDATE tokens SET used_by = $1 WHERE org = $2 AND van = $3",
                &[&&VOIDED[..], &device.org, &device.van],
            )
            .await?;
            let n = c
                .execute(
                    "INSERT INTO revocations (fingerprint, org, van)
                     SELECT fingerprint, org, van FROM certificates WHERE org = $1 AND van = $2
                     ON CONFLICT (fingerprint) DO NOTHING",
                    &[&device.org, &device.van],
                )
                .await?;
            Ok(n as usize)
        })
    }

    fn is_revoked(&self, fingerprint: &str) -> Result<bool, RegistryError> {
        self.reg(async |c| {
            Ok(c.query_opt("SELECT 1 FROM revocations WHERE fingerprint = $1", &[&fingerprint]).await?.is_some())
        })
    }

    fn revocations_after(&self, after: u64) -> Result<Vec<Revocation>, RegistryError> {
        self.reg(async |c| {
            let rows = c
                .query(
                    "SELECT seq, fingerprint, org, van FROM revocations WHERE seq > $1 ORDER BY seq",
                    &[&(after as i64)],
                )
                .await?;
            Ok(rows
                .iter()
                .filter_map(|r| {
                    let device = DeviceId::new(r.get(2), r.get(3)).ok()?;
                    Some(Revocation { seq: r.get::<_, i64>(0) as u64, fingerprint: r.get(1), device })
                })
                .collect())
        })
    }
}

impl Storage for PgStorage {
    fn load_ca(&self) -> Result<Option<StoredCa>, StorageError> {
        self.with(async |c| {
            let cert = c.query_opt("SELECT value FROM meta WHERE key = 'ca_cert'", &[]).await?;
            let key = c.query_opt("SELECT value FROM meta WHERE key = 'ca_key'", &[]).await?;
            Ok(match (cert, key) {
                (Some(c), Some(k)) => Some(StoredCa { cert: c.get(0), sealed_key: k.get(0) }),
                _ => None,
            })
        })
    }

    fn save_ca(&self, cert: &[u8], sealed_key: &[u8]) -> Result<(), StorageError> {
        self.with(async |c| {
            let tx = c.transaction().await?;
            let n = tx
                .execute(
                    "INSERT INTO meta (key, value) VALUES ('ca_cert', $1), ('ca_key', $2) ON CONFLICT (key) DO NOTHING",
                    &[&cert, &sealed_key],
                )
                .await?;
            if n != 2 {
                return Err(StorageError::CaExists);
            }
            tx.commit().await?;
            Ok(())
        })
    }

    fn create_org(&self, org: &str, name: &str) -> Result<(), StorageError> {
        self.with(async |c| match c.execute("INSERT INTO orgs (id, name) VALUES ($1, $2)", &[&org, &name]).await {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => Err(StorageError::OrgExists(org.to_owned())),
            Err(e) => Err(e.into()),
        })
    }

    fn orgs(&self) -> Result<Vec<(String, String)>, StorageError> {
        self.with(async |c| {
            Ok(c.query("SELECT id, name FROM orgs ORDER BY id", &[])
                .await?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect())
        })
    }

    fn case_meta(&self, doc: DocId) -> Result<Option<CaseMeta>, StorageError> {
        self.with(async |c| {
            let Some(row) =
                c.query_opt("SELECT org, creator, version FROM cases WHERE id = $1", &[&doc_key(doc)]).await?
            else {
                return Ok(None);
            };
            let assigned = c
                .query("SELECT van FROM assignments WHERE case_id = $1 ORDER BY van", &[&doc_key(doc)])
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            Ok(Some(CaseMeta { org: row.get(0), creator: row.get(1), assigned, version: row.get(2) }))
        })
    }

    fn case_chunks(&self, doc: DocId) -> Result<Vec<Vec<u8>>, StorageError> {
        self.with(async |c| {
            Ok(c.query("SELECT data FROM case_chunks WHERE case_id = $1 ORDER BY seq", &[&doc_key(doc)])
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect())
        })
    }

    fn insert_case(&self, org: &str, creator: &str, a: Append<'_>) -> Result<i64, StorageError> {
        self.with(async |c| {
            let tx = c.transaction().await?;
            if tx.query_opt("SELECT 1 FROM orgs WHERE id = $1", &[&org]).await?.is_none() {
                return Err(StorageError::NoSuchOrg(org.to_owned()));
            }
            let n = tx
                .execute(
                    "INSERT INTO cases (id, org, creator, version) VALUES ($1, $2, $3, 1) ON CONFLICT (id) DO NOTHING",
                    &[&doc_key(a.doc), &org, &creator],
                )
                .await?;
            if n == 0 {
                return Err(StorageError::Conflict);
            }
            tx.execute(
                "INSERT INTO case_chunks (case_id, seq, data) VALUES ($1, 1, $2)",
                &[&doc_key(a.doc), &a.sealed],
            )
            .await?;
            append_audit(&tx, a.audit).await?;
            tx.commit().await?;
            Ok(1)
        })
    }

    fn append_case(&self, a: Append<'_>) -> Result<i64, StorageError> {
        self.with(async |c| {
            let tx = c.transaction().await?;
            let next = a.expected_version + 1;
            let n = tx
                .execute(
                    "UPDATE cases SET version = $1 WHERE id = $2 AND version = $3",
                    &[&next, &doc_key(a.doc), &a.expected_version],
                )
                .await?;
            if n == 0 {
                let exists = tx.query_opt("SELECT 1 FROM cases WHERE id = $1", &[&doc_key(a.doc)]).await?.is_some();
                return Err(if exists {
                    StorageError::Conflict
                } else {
                    StorageError::NoSuchCase(hex::encode(a.doc.0))
                });
            }
            tx.execute(
                "INSERT INTO case_chunks (case_id, seq, data) VALUES ($1, $2, $3)",
                &[&doc_key(a.doc), &next, &a.sealed],
            )
            .await?;
            append_audit(&tx, a.audit).await?;
            tx.commit().await?;
            Ok(next)
        })
    }

    fn compact_case(&self, doc: DocId, version: i64, sealed: &[u8]) -> Result<(), StorageError> {
        self.with(async |c| {
            let tx = c.transaction().await?;
            let row = tx.query_opt("SELECT version FROM cases WHERE id = $1 FOR UPDATE", &[&doc_key(doc)]).await?;
            if row.map(|r| r.get::<_, i64>(0)) != Some(version) {
                return Err(StorageError::Conflict);
            }
            tx.execute("DELETE FROM case_chunks WHERE case_id = $1", &[&doc_key(doc)]).await?;
            tx.execute(
                "INSERT INTO case_chunks (case_id, seq, data) VALUES ($1, $2, $3)",
                &[&doc_key(doc), &version, &sealed],
            )
            .await?;
            tx.commit().await?;
            Ok(())
        })
    }

    fn assign(&self, doc: DocId, van: &str, audit: &audit::Record) -> Result<(), StorageError> {
        self.with(async |c| {
            let tx = c.transaction().await?;
            if tx.query_opt("SELECT 1 FROM cases WHERE id = $1", &[&doc_key(doc)]).await?.is_none() {
                return Err(StorageError::NoSuchCase(hex::encode(doc.0)));
            }
            tx.execute(
                "INSERT INTO assignments (case_id, van) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[&doc_key(doc), &van],
            )
            .await?;
            append_audit(&tx, audit).await?;
            tx.commit().await?;
            Ok(())
        })
    }

    fn case_versions_for_van(&self, org: &str, van: &str) -> Result<Vec<(DocId, i64)>, StorageError> {
        self.with(async |c| {
            let rows = c
                .query(
                    "SELECT id, version FROM cases WHERE org = $1 AND creator = $2
                     UNION SELECT c.id, c.version FROM cases c JOIN assignments a ON a.case_id = c.id
                           WHERE c.org = $1 AND a.van = $2",
                    &[&org, &van],
                )
                .await?;
            rows.iter().map(|r| Ok((doc_from(r.get(0))?, r.get(1)))).collect()
        })
    }

    fn cases_of_org(&self, org: &str) -> Result<Vec<DocId>, StorageError> {
        self.with(async |c| {
            let rows = c.query("SELECT id FROM cases WHERE org = $1 ORDER BY id", &[&org]).await?;
            rows.iter().map(|r| doc_from(r.get(0))).collect()
        })
    }

    fn sync_state(&self, peer: &str, doc: DocId) -> Result<Option<Vec<u8>>, StorageError> {
        self.with(async |c| {
            Ok(c.query_opt("SELECT state FROM sync_states WHERE peer = $1 AND case_id = $2", &[&peer, &doc_key(doc)])
                .await?
                .map(|r| r.get(0)))
        })
    }

    fn save_sync_states(&self, peer: &str, states: &[(DocId, Vec<u8>)]) -> Result<(), StorageError> {
        self.with(async |c| {
            let tx = c.transaction().await?;
            let stmt = tx
                .prepare(
                    "INSERT INTO sync_states (peer, case_id, state) VALUES ($1, $2, $3)
                     ON CONFLICT (peer, case_id) DO UPDATE SET state = EXCLUDED.state",
                )
                .await?;
            for (doc, state) in states {
                tx.execute(&stmt, &[&peer, &doc_key(*doc), state]).await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    fn blob_state(&self, sha: &[u8; 32]) -> Result<BlobState, StorageError> {
        self.with(async |c| {
            let row = c.query_opt("SELECT held, complete FROM blobs WHERE sha = $1", &[&&sha[..]]).await?;
            Ok(match row {
                None => BlobState::Missing,
                Some(r) if r.get::<_, bool>(1) => BlobState::Complete,
                Some(r) => BlobState::Partial(r.get::<_, i64>(0) as u64),
            })
        })
    }

    fn put_blob_chunk(&self, sha: &[u8; 32], index: u64, plain_len: u64, sealed: &[u8]) -> Result<(), StorageError> {
        self.with(async |c| {
            let tx = c.transaction().await?;
            // The row exists before it is locked: two first chunks cannot both pass the check.
            tx.execute(
                "INSERT INTO blobs (sha, held, chunks, complete) VALUES ($1, 0, 0, false) ON CONFLICT (sha) DO NOTHING",
                &[&&sha[..]],
            )
            .await?;
            let row = tx.query_one("SELECT held, chunks FROM blobs WHERE sha = $1 FOR UPDATE", &[&&sha[..]]).await?;
            let (held, chunks) = (row.get::<_, i64>(0), row.get::<_, i64>(1));
            if index != chunks as u64 {
                return Err(StorageError::BlobOffset {
                    sha: hex::encode(sha),
                    offset: index * CHUNK,
                    held: held as u64,
                });
            }
            tx.execute(
                "INSERT INTO blob_chunks (sha, idx, data) VALUES ($1, $2, $3)
                 ON CONFLICT (sha, idx) DO UPDATE SET data = EXCLUDED.data",
                &[&&sha[..], &(index as i64), &sealed],
            )
            .await?;
            tx.execute(
                "UPDATE blobs SET held = held + $2, chunks = chunks + 1 WHERE sha = $1",
                &[&&sha[..], &(plain_len as i64)],
            )
            .await?;
            tx.commit().await?;
            Ok(())
        })
    }

    fn blob_chunk(&self, sha: &[u8; 32], index: u64) -> Result<Option<Vec<u8>>, StorageError> {
        self.with(async |c| {
            Ok(c.query_opt("SELECT data FROM blob_chunks WHERE sha = $1 AND idx = $2", &[&&sha[..], &(index as i64)])
                .await?
                .map(|r| r.get(0)))
        })
    }

    fn complete_blob_size(&self, sha: &[u8; 32]) -> Result<Option<u64>, StorageError> {
        self.with(async |c| {
            Ok(c.query_opt("SELECT held FROM blobs WHERE sha = $1 AND complete", &[&&sha[..]])
                .await?
                .map(|r| r.get::<_, i64>(0) as u64))
        })
    }

    fn complete_blob(&self, sha: &[u8; 32], size: u64) -> Result<(), StorageError> {
        self.with(async |c| {
            let n = c
                .execute("UPDATE blobs SET complete = true WHERE sha = $1 AND held = $2", &[&&sha[..], &(size as i64)])
                .await?;
            if n == 0 {
                return Err(StorageError::BlobMismatch(hex::encode(sha)));
            }
            Ok(())
        })
    }

    fn drop_blob(&self, sha: &[u8; 32]) -> Result<(), StorageError> {
        self.with(async |c| {
            let tx = c.transaction().await?;
            tx.execute("DELETE FROM blob_chunks WHERE sha = $1", &[&&sha[..]]).await?;
            tx.execute("DELETE FROM blobs WHERE sha = $1", &[&&sha[..]]).await?;
            tx.commit().await?;
            Ok(())
        })
    }

    fn audit(&self, record: &audit::Record) -> Result<(), StorageError> {
        self.with(async |c| {
            let tx = c.transaction().await?;
            append_audit(&tx, record).await?;
            tx.commit().await?;
            Ok(())
        })
    }

    fn put_dicom_instance(&self, row: &DicomRow, audit: &audit::Record) -> Result<Option<[u8; 32]>, StorageError> {
        self.with(async |c| {
            let tx = c.transaction().await?;
            // Two hub processes filing the same instance at once: one inserts, the other
            // finds it held.
            let inserted = tx
                .execute(
                    "INSERT INTO dicom_instances (org, sop_uid, study_uid, series_uid, case_id, sha, size, meta, stored_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT DO NOTHING",
                    &[
                        &row.org,
                        &row.sop,
                        &row.study,
                        &row.series,
                        &row.case_id,
                        &row.sha256.as_slice(),
                        &(row.size as i64),
                        &row.sealed_meta,
                        &row.stored_at,
                    ],
                )
                .await?;
            if inserted == 0 {
                let held = tx
                    .query_one("SELECT sha FROM dicom_instances WHERE org = $1 AND sop_uid = $2", &[&row.org, &row.sop])
                    .await?;
                let sha: Vec<u8> = held.get(0);
                return Ok(Some(
                    sha.try_into().map_err(|_| StorageError::Database("a stored hash is not 32 bytes".into()))?,
                ));
            }
            append_audit(&tx, audit).await?;
            tx.commit().await?;
            Ok(None)
        })
    }

    fn dicom_instances(&self, org: &str, study: Option<&str>) -> Result<Vec<DicomRow>, StorageError> {
        self.with(async |c| {
            let rows = c
                .query(
                    "SELECT study_uid, series_uid, sop_uid, case_id, sha, size, meta, stored_at FROM dicom_instances
                     WHERE org = $1 AND ($2::TEXT IS NULL OR study_uid = $2) ORDER BY seq",
                    &[&org, &study],
                )
                .await?;
            rows.iter()
                .map(|r| {
                    let sha: Vec<u8> = r.get(4);
                    Ok(DicomRow {
                        org: org.to_owned(),
                        study: r.get(0),
                        series: r.get(1),
                        sop: r.get(2),
                        case_id: r.get(3),
                        sha256: sha
                            .try_into()
                            .map_err(|_| StorageError::Database("a stored hash is not 32 bytes".into()))?,
                        size: r.get::<_, i64>(5) as u64,
                        sealed_meta: r.get(6),
                        stored_at: r.get(7),
                    })
                })
                .collect()
        })
    }

    fn identity(&self, kind: &str, id: &str) -> Result<Option<IdentityRow>, StorageError> {
        self.with(async |c| {
            let row = c
                .query_opt("SELECT org, version, body FROM identities WHERE kind = $1 AND id = $2", &[&kind, &id])
                .await?;
            Ok(row.map(|r| IdentityRow {
                kind: kind.to_owned(),
                id: id.to_owned(),
                org: r.get(0),
                version: r.get(1),
                sealed: r.get(2),
            }))
        })
    }

    fn identities(&self, kind: &str, org: &str) -> Result<Vec<IdentityRow>, StorageError> {
        self.with(async |c| {
            let rows = c
                .query(
                    "SELECT id, version, body FROM identities WHERE kind = $1 AND org = $2 ORDER BY id",
                    &[&kind, &org],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|r| IdentityRow {
                    kind: kind.to_owned(),
                    id: r.get(0),
                    org: org.to_owned(),
                    version: r.get(1),
                    sealed: r.get(2),
                })
                .collect())
        })
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
        self.with(async |c| {
            let tx = c.transaction().await?;
            let changed = if expected_version == 0 {
                tx.execute(
                    "INSERT INTO identities (kind, id, org, version, body) VALUES ($1, $2, $3, 1, $4)
                     ON CONFLICT DO NOTHING",
                    &[&kind, &id, &org, &sealed],
                )
                .await?
            } else {
                tx.execute(
                    "UPDATE identities SET body = $4, org = $3, version = version + 1
                     WHERE kind = $1 AND id = $2 AND version = $5",
                    &[&kind, &id, &org, &sealed, &expected_version],
                )
                .await?
            };
            if changed == 0 {
                return Err(StorageError::Conflict);
            }
            if let Some(a) = audit {
                append_audit(&tx, a).await?;
            }
            tx.commit().await?;
            Ok(expected_version + 1)
        })
    }

    fn delete_identity(&self, kind: &str, id: &str, audit: Option<&audit::Record>) -> Result<bool, StorageError> {
        self.with(async |c| {
            let tx = c.transaction().await?;
            let n = tx.execute("DELETE FROM identities WHERE kind = $1 AND id = $2", &[&kind, &id]).await?;
            if let Some(a) = audit {
                append_audit(&tx, a).await?;
            }
            tx.commit().await?;
            Ok(n > 0)
        })
    }

    fn audit_of_case(&self, case_id: &str) -> Result<Vec<audit::Entry>, StorageError> {
        self.with(async |c| {
            let rows = c
                .query(
                    "SELECT seq, at, actor, action, case_id, outcome, detail, prev, hash FROM audit_log
                     WHERE case_id = $1 ORDER BY seq",
                    &[&case_id],
                )
                .await?;
            Ok(rows.iter().map(entry).collect())
        })
    }

    fn van_audit_hashes(&self, org: &str, van: &str) -> Result<Vec<[u8; 32]>, StorageError> {
        self.with(async |c| {
            let rows =
                c.query("SELECT hash FROM van_audit WHERE org = $1 AND van = $2 ORDER BY seq", &[&org, &van]).await?;
            rows.iter()
                .map(|r| {
                    r.get::<_, Vec<u8>>(0)
                        .try_into()
                        .map_err(|_| StorageError::Database("a stored hash is not 32 bytes".into()))
                })
                .collect()
        })
    }

    fn append_van_audit(
        &self,
        org: &str,
        van: &str,
        entries: &[audit::Entry],
        head: &VanHead,
    ) -> Result<(), StorageError> {
        self.with(async |c| {
            let tx = c.transaction().await?;
            // One append per van at a time, across hub processes.
            tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&format!("van-audit/{org}/{van}")]).await?;
            let held: i64 =
                tx.query_one("SELECT count(*) FROM van_audit WHERE org = $1 AND van = $2", &[&org, &van]).await?.get(0);
            if entries.first().is_some_and(|e| e.seq != held as u64 + 1) {
                return Err(StorageError::Conflict);
            }
            for e in entries {
                tx.execute(
                    "INSERT INTO van_audit (org, van, seq, at, actor, action, case_id, outcome, detail, prev, hash)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                    &[
                        &org,
                        &van,
                        &(e.seq as i64),
                        &e.at,
                        &e.actor,
                        &e.action,
                        &e.case_id,
                        &e.outcome.as_str(),
                        &e.detail,
                        &hex::decode(&e.prev).unwrap_or_default(),
                        &hex::decode(&e.hash).unwrap_or_default(),
                    ],
                )
                .await?;
            }
            tx.execute(
                "INSERT INTO van_audit_heads (org, van, size, root, signature, received_at)
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
                &[&org, &van, &(head.size as i64), &head.root.as_slice(), &head.signature, &head.received_at],
            )
            .await?;
            tx.commit().await?;
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
        self.with(async |c| {
            let rows = c
                .query(
                    "SELECT seq, at, actor, action, case_id, outcome, detail, prev, hash FROM van_audit
                     WHERE org = $1 AND van = $2 AND seq > $3 ORDER BY seq LIMIT $4",
                    &[&org, &van, &(after as i64), &i64::from(limit)],
                )
                .await?;
            Ok(rows.iter().map(entry).collect())
        })
    }

    fn van_audit_by_action(
        &self,
        org: &str,
        action: &str,
        limit: u32,
    ) -> Result<Vec<(String, audit::Entry)>, StorageError> {
        self.with(async |c| {
            let rows = c
                .query(
                    "SELECT seq, at, actor, action, case_id, outcome, detail, prev, hash, van FROM van_audit
                     WHERE org = $1 AND action = $2 ORDER BY at DESC LIMIT $3",
                    &[&org, &action, &i64::from(limit)],
                )
                .await?;
            Ok(rows.iter().map(|r| (r.get::<_, String>(9), entry(r))).collect())
        })
    }

    fn van_audit_head(&self, org: &str, van: &str) -> Result<Option<VanHead>, StorageError> {
        self.with(async |c| {
            let row = c
                .query_opt(
                    "SELECT size, root, signature, received_at FROM van_audit_heads WHERE org = $1 AND van = $2
                     ORDER BY size DESC LIMIT 1",
                    &[&org, &van],
                )
                .await?;
            row.map(|r| {
                Ok(VanHead {
                    size: r.get::<_, i64>(0) as u64,
                    root: r
                        .get::<_, Vec<u8>>(1)
                        .try_into()
                        .map_err(|_| StorageError::Database("a stored root is not 32 bytes".into()))?,
                    signature: r.get(2),
                    received_at: r.get(3),
                })
            })
            .transpose()
        })
    }

    fn audit_entries(&self, after: u64, limit: u32) -> Result<Vec<audit::Entry>, StorageError> {
        self.with(async |c| {
            let rows = c
                .query(
                    "SELECT seq, at, actor, action, case_id, outcome, detail, prev, hash FROM audit_log
                     WHERE seq > $1 ORDER BY seq LIMIT $2",
                    &[&(after as i64), &i64::from(limit)],
                )
                .await?;
            Ok(rows.iter().map(entry).collect())
        })
    }

    fn verify_audit(&self) -> Result<Result<audit::ChainHead, audit::ChainError>, StorageError> {
        self.with(async |c| {
            let rows = c
                .query(
                    "SELECT seq, at, actor, action, case_id, outcome, detail, prev, hash FROM audit_log ORDER BY seq",
                    &[],
                )
                .await?;
            let mut walk = audit::ChainWalk::default();
            for row in &rows {
                let e = entry(row);
                let Some(outcome) = audit::Outcome::parse(row.get(5)) else {
                    return Ok(Err(audit::ChainError::Altered { seq: e.seq }));
                };
                let record = audit::Record {
                    at: e.at,
                    actor: e.actor,
                    action: e.action,
                    case_id: e.case_id,
                    outcome,
                    detail: e.detail,
                };
                if let Err(err) = walk.next(e.seq, &record, &row.get::<_, Vec<u8>>(7), &row.get::<_, Vec<u8>>(8)) {
                    return Ok(Err(err));
                }
            }
            Ok(Ok(walk.head()))
        })
    }
}
