//! The audit log: an append-only, hash-chained record of every access to patient data.
//!
//! Each entry's hash covers its own fields and the previous entry's hash, so changing,
//! removing or reordering any stored entry breaks the chain at that entry, and [`verify`]
//! names it. The log lives in the same encrypted SQLite database as the cases, and an entry
//! is written in the same transaction as the access it records: the access is acknowledged
//! only once its entry is durable.
//!
//! A chain alone cannot show that its tail was cut off: [`merkle`] computes tree heads over
//! the entries and checks that each new head extends the last one (signing them and sending
//! them to the hub is the identity issue's, in progress).

pub mod copy;
pub mod export;
pub mod merkle;

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// SQL that creates the log. Triggers refuse updates and deletes, so tampering needs a
/// deliberate schema change, which the chain then exposes.
pub const SCHEMA_SQL: &str = "
CREATE TABLE audit_log (
    seq INTEGER PRIMARY KEY,
    at INTEGER NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    case_id TEXT,
    outcome TEXT NOT NULL,
    detail TEXT NOT NULL,
    prev BLOB NOT NULL,
    hash BLOB NOT NULL
);
CREATE INDEX audit_by_case ON audit_log(case_id, seq);
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit_log BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit_log BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
";

/// Whether an access was allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The access happened.
    Allowed,
    /// The access was refused (not permitted, or invalid).
    Refused,
}

impl Outcome {
    /// The stored text form.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Refused => "refused",
        }
    }

    /// Parses the stored text form.
    pub fn parse(s: &str) -> Option<Outcome> {
        match s {
            "allowed" => Some(Outcome::Allowed),
            "refused" => Some(Outcome::Refused),
            _ => None,
        }
    }
}

/// What to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// When, in milliseconds since the epoch.
    pub at: i64,
    /// Who: a user id, or `system:...`.
    pub actor: String,
    /// What: `case.read`, `case.edit`, `case.create`, `case.list`, `blob.read`...
    pub action: String,
    /// Which case, if one.
    pub case_id: Option<String>,
    /// Allowed or refused.
    pub outcome: Outcome,
    /// Anything else an auditor needs (the edits made, the reason for a refusal).
    pub detail: String,
}

/// A stored entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// Position in the log, from 1.
    pub seq: u64,
    /// When.
    pub at: i64,
    /// Who.
    pub actor: String,
    /// What.
    pub action: String,
    /// Which case.
    pub case_id: Option<String>,
    /// Allowed or refused.
    pub outcome: Outcome,
    /// Details.
    pub detail: String,
    /// The previous entry's hash, hex.
    pub prev: String,
    /// This entry's hash, hex.
    pub hash: String,
}

impl Entry {
    /// What the entry records, without its place in the chain.
    pub fn record(&self) -> Record {
        Record {
            at: self.at,
            actor: self.actor.clone(),
            action: self.action.clone(),
            case_id: self.case_id.clone(),
            outcome: self.outcome,
            detail: self.detail.clone(),
        }
    }
}

/// Errors reading or writing the log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// The database refused the operation.
    #[error("audit log storage failed: {0}")]
    Sql(#[from] rusqlite::Error),
}

/// What [`verify`] found wrong: the first bad entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChainError {
    /// An entry's contents do not match its hash: it was changed (or moved, since the
    /// position is part of what is hashed).
    #[error("audit entry {seq} was altered: its contents do not match its hash")]
    Altered {
        /// The entry.
        seq: u64,
    },
    /// An entry does not link to the one before it.
    #[error(
        "audit entry {seq} does not follow entry {previous}: an entry between them was removed or the entries were reordered"
    )]
    BrokenLink {
        /// The entry whose link is broken.
        seq: u64,
        /// The entry before it in storage.
        previous: u64,
    },
    /// A position is missing.
    #[error("audit entry {seq} is missing: it was removed")]
    Missing {
        /// The missing position.
        seq: u64,
    },
    /// The log could not be read at all.
    #[error("the audit log could not be read: {0}")]
    Unreadable(String),
}

/// The verified state of a log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChainHead {
    /// Number of entries.
    pub size: u64,
    /// The last entry's hash, hex (all zeros for an empty log).
    pub head: String,
}

/// Appends an entry, linking it to the last one. Call inside the transaction that performs
/// the access, so both become durable together.
pub fn append(conn: &Connection, rec: &Record) -> Result<Entry, AuditError> {
    let last: Option<(u64, Vec<u8>)> = conn
        .query_row("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1", [], |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get(1)?))
        })
        .optional()?;
    let (seq, prev) = match last {
        Some((s, h)) => (s + 1, to_array(&h)),
        None => (1, [0u8; 32]),
    };
    let hash =
        entry_hash(seq, rec.at, &rec.actor, &rec.action, rec.case_id.as_deref(), rec.outcome, &rec.detail, &prev);
    conn.execute(
        "INSERT INTO audit_log (seq, at, actor, action, case_id, outcome, detail, prev, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![seq as i64, rec.at, rec.actor, rec.action, rec.case_id, rec.outcome.as_str(), rec.detail, &prev[..], &hash[..]],
    )?;
    Ok(Entry {
        seq,
        at: rec.at,
        actor: rec.actor.clone(),
        action: rec.action.clone(),
        case_id: rec.case_id.clone(),
        outcome: rec.outcome,
        detail: rec.detail.clone(),
        prev: hex::encode(prev),
        hash: hex::encode(hash),
    })
}

/// Walks the whole log and checks every link. Returns the head, or the first bad entry.
pub fn verify(conn: &Connection) -> Result<ChainHead, ChainError> {
    let unreadable = |e: rusqlite::Error| ChainError::Unreadable(e.to_string());
    let mut stmt = conn
        .prepare("SELECT seq, at, actor, action, case_id, outcome, detail, prev, hash FROM audit_log ORDER BY seq")
        .map_err(unreadable)?;
    let mut rows = stmt.query([]).map_err(unreadable)?;
    let mut walk = ChainWalk::default();
    while let Some(row) = rows.next().map_err(unreadable)? {
        let seq = row.get::<_, i64>(0).map_err(unreadable)? as u64;
        let outcome: String = row.get(5).map_err(unreadable)?;
        let record = Record {
            at: row.get(1).map_err(unreadable)?,
            actor: row.get(2).map_err(unreadable)?,
            action: row.get(3).map_err(unreadable)?,
            case_id: row.get(4).map_err(unreadable)?,
            outcome: Outcome::parse(&outcome).ok_or(ChainError::Altered { seq })?,
            detail: row.get(6).map_err(unreadable)?,
        };
        let prev: Vec<u8> = row.get(7).map_err(unreadable)?;
        let hash: Vec<u8> = row.get(8).map_err(unreadable)?;
        walk.next(seq, &record, &prev, &hash)?;
    }
    Ok(walk.head())
}

/// Checks a log entry by entry, in order of position; for logs kept outside SQLite (the
/// hub's PostgreSQL store) with the same hashing.
#[derive(Debug, Default)]
pub struct ChainWalk {
    checked: u64,
    prev: [u8; 32],
}

impl ChainWalk {
    /// Checks the next stored entry: its position, its hash, its link to the one before.
    pub fn next(
        &mut self,
        seq: u64,
        record: &Record,
        stored_prev: &[u8],
        stored_hash: &[u8],
    ) -> Result<(), ChainError> {
        let expected = self.checked + 1;
        if seq != expected {
            return Err(ChainError::Missing { seq: expected });
        }
        let computed = record_hash(seq, record, &to_array(stored_prev));
        if computed[..] != stored_hash[..] {
            return Err(ChainError::Altered { seq });
        }
        if stored_prev[..] != self.prev[..] {
            return Err(ChainError::BrokenLink { seq, previous: seq - 1 });
        }
        self.prev = computed;
        self.checked = seq;
        Ok(())
    }

    /// The head of what was checked.
    pub fn head(&self) -> ChainHead {
        ChainHead { size: self.checked, head: hex::encode(self.prev) }
    }
}

/// The hash of the entry at position `seq` holding `record` after an entry hashed `prev`
/// (all zeros for the first).
pub fn record_hash(seq: u64, record: &Record, prev: &[u8; 32]) -> [u8; 32] {
    entry_hash(
        seq,
        record.at,
        &record.actor,
        &record.action,
        record.case_id.as_deref(),
        record.outcome,
        &record.detail,
        prev,
    )
}

/// Entries about one case, oldest first: "who saw this patient".
pub fn for_case(conn: &Connection, case_id: &str) -> Result<Vec<Entry>, AuditError> {
    query(
        conn,
        "SELECT seq, at, actor, action, case_id, outcome, detail, prev, hash FROM audit_log WHERE case_id = ?1 ORDER BY seq",
        Some(case_id),
    )
}

/// Up to `limit` entries after position `after`, oldest first (an export's next page).
pub fn after(conn: &Connection, after: u64, limit: u32) -> Result<Vec<Entry>, AuditError> {
    let sql = format!(
        "SELECT seq, at, actor, action, case_id, outcome, detail, prev, hash FROM audit_log WHERE seq > {after} ORDER BY seq LIMIT {limit}"
    );
    query(conn, &sql, None)
}

/// The latest `limit` entries, newest first.
pub fn latest(conn: &Connection, limit: u32) -> Result<Vec<Entry>, AuditError> {
    let sql = format!(
        "SELECT seq, at, actor, action, case_id, outcome, detail, prev, hash FROM audit_log ORDER BY seq DESC LIMIT {limit}"
    );
    query(conn, &sql, None)
}

fn query(conn: &Connection, sql: &str, arg: Option<&str>) -> Result<Vec<Entry>, AuditError> {
    let mut stmt = conn.prepare(sql)?;
    let map = |r: &rusqlite::Row<'_>| -> rusqlite::Result<Entry> {
        Ok(Entry {
            seq: r.get::<_, i64>(0)? as u64,
            at: r.get(1)?,
            actor: r.get(2)?,
            action: r.get(3)?,
            case_id: r.get(4)?,
            outcome: Outcome::parse(&r.get::<_, String>(5)?).unwrap_or(Outcome::Refused),
            detail: r.get(6)?,
            prev: hex::encode(r.get::<_, Vec<u8>>(7)?),
            hash: hex::encode(r.get::<_, Vec<u8>>(8)?),
        })
    };
    let rows = match arg {
        Some(a) => stmt.query_map([a], map)?.collect::<Result<Vec<_>, _>>()?,
        None => stmt.query_map([], map)?.collect::<Result<Vec<_>, _>>()?,
    };
    Ok(rows)
}

/// Hash of an entry. Every field is length-prefixed so that no two different entries
/// serialise to the same bytes.
#[allow(clippy::too_many_arguments)]
fn entry_hash(
    seq: u64,
    at: i64,
    actor: &str,
    action: &str,
    case_id: Option<&str>,
    outcome: Outcome,
    detail: &str,
    prev: &[u8; 32],
) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"medvan-audit-v1\0");
    h.update(seq.to_be_bytes());
    h.update(at.to_be_bytes());
    for field in [actor, action, case_id.unwrap_or("\u{0}none"), outcome.as_str(), detail] {
        h.update((field.len() as u64).to_be_bytes());
        h.update(field.as_bytes());
    }
    h.update(prev);
    h.finalize().into()
}

fn to_array(b: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    let n = b.len().min(32);
    out[..n].copy_from_slice(&b[..n]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_with(n: u64) -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(SCHEMA_SQL).unwrap();
        for i in 0..n {
            let rec = Record {
                at: 1_000 + i as i64,
                actor: if i % 2 == 0 { "ana".into() } else { "dr-osei".into() },
                action: "case.read".into(),
                case_id: Some(format!("case-{}", i % 3)),
                outcome: Outcome::Allowed,
                detail: String::new(),
            };
            assert_eq!(append(&conn, &rec).unwrap().seq, i + 1);
        }
        conn
    }

    fn unlock(conn: &Connection) {
        conn.execute_batch("DROP TRIGGER audit_no_update; DROP TRIGGER audit_no_delete;").unwrap();
    }

    #[test]
    fn an_intact_log_verifies() {
        let conn = log_with(10);
        let head = verify(&conn).unwrap();
        assert_eq!(head.size, 10);
        assert_eq!(for_case(&conn, "case-1").unwrap().len(), 3);
    }

    #[test]
    fn updates_and_deletes_are_refused_by_the_database() {
        let conn = log_with(3);
        let err = conn.execute("UPDATE audit_log SET actor = 'mallory' WHERE seq = 2", []).unwrap_err();
        assert!(err.to_string().contains("append-only"), "{err}");
        assert!(conn.execute("DELETE FROM audit_log WHERE seq = 2", []).is_err());
    }

    #[test]
    fn a_changed_entry_is_named() {
        let conn = log_with(10);
        unlock(&conn);
        conn.execute("UPDATE audit_log SET actor = 'mallory' WHERE seq = 6", []).unwrap();
        assert_eq!(verify(&conn), Err(ChainError::Altered { seq: 6 }));
    }

    #[test]
    fn a_removed_entry_is_named() {
        let conn = log_with(10);
        unlock(&conn);
        conn.execute("DELETE FROM audit_log WHERE seq = 4", []).unwrap();
        assert_eq!(verify(&conn), Err(ChainError::Missing { seq: 4 }));
    }

    #[test]
    fn reordered_entries_are_named() {
        let conn = log_with(10);
        unlock(&conn);
        // Swap entries 7 and 8 wholesale, keeping positions: the chain breaks at 7.
        conn.execute_batch(
            "UPDATE audit_log SET seq = -7 WHERE seq = 7;
             UPDATE audit_log SET seq = 7 WHERE seq = 8;
             UPDATE audit_log SET seq = 8 WHERE seq = -7;",
        )
        .unwrap();
        assert_eq!(verify(&conn), Err(ChainError::Altered { seq: 7 }));
    }

    #[test]
    fn a_rehashed_forgery_still_breaks_the_next_link() {
        let conn = log_with(10);
        unlock(&conn);
        // A forger who recomputes entry 3's own hash still cannot fix entry 4's link.
        let row: (i64, String, String, Option<String>, String, String, Vec<u8>) = conn
            .query_row(
                "SELECT at, actor, action, case_id, outcome, detail, prev FROM audit_log WHERE seq = 3",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?)),
            )
            .unwrap();
        let forged =
            entry_hash(3, row.0, "mallory", &row.2, row.3.as_deref(), Outcome::Allowed, &row.5, &to_array(&row.6));
        conn.execute("UPDATE audit_log SET actor = 'mallory', hash = ?1 WHERE seq = 3", [&forged[..]]).unwrap();
        assert_eq!(verify(&conn), Err(ChainError::BrokenLink { seq: 4, previous: 3 }));
    }
}
