//! The single writer thread and its group commit.
//!
//! Every durable write of the store goes through here. The thread takes whatever requests
//! are waiting, writes them all in one SQLite transaction (each in its own savepoint, so one
//! bad request cannot fail the others) and commits once: with `synchronous=FULL` that is one
//! WAL sync for the whole group. Each request is answered only after the commit returned,
//! so an acknowledged write is on disk.

use std::sync::{Mutex, mpsc};
use std::thread;

use rusqlite::{Connection, params};

use crate::error::StoreError;

/// One write of a request.
#[derive(Debug)]
pub(crate) enum Op {
    /// Append an Automerge change of a case.
    Change { case_id: String, bytes: Vec<u8> },
    /// Replace the index row of a case.
    Index(IndexRow),
    /// Append an audit entry.
    Audit(audit::Record),
    /// Record a blob whose file is already durable.
    Blob { sha256: String, size: u64, media_type: String, at: i64 },
    /// Replace the sync state of a case with a peer.
    SyncState { peer: String, case_id: String, state: Vec<u8> },
    /// Replace a case's changes up to now with a snapshot.
    Snapshot { case_id: String, bytes: Vec<u8> },
}

/// What the index keeps per case.
#[derive(Debug)]
pub(crate) struct IndexRow {
    pub(crate) id: String,
    pub(crate) org: String,
    pub(crate) van: String,
    pub(crate) status: Option<String>,
    pub(crate) created_at: i64,
    pub(crate) updated_at: i64,
    pub(crate) patient_name: Option<String>,
    pub(crate) temp_patient_id: Option<String>,
    pub(crate) chief_complaint: Option<String>,
    pub(crate) has_conflicts: bool,
    pub(crate) summary: String,
}

struct Request {
    ops: Vec<Op>,
    done: mpsc::SyncSender<Result<(), StoreError>>,
}

/// Handle to the writer thread.
#[derive(Debug)]
pub(crate) struct Writer {
    tx: Mutex<Option<mpsc::Sender<Request>>>,
    thread: Mutex<Option<thread::JoinHandle<()>>>,
}

impl Writer {
    /// Starts the writer; `max_group` bounds how many requests share one commit (1 turns
    /// group commit off, for comparison).
    pub(crate) fn start(conn: Connection, max_group: usize) -> Writer {
        let (tx, rx) = mpsc::channel::<Request>();
        let max_group = max_group.max(1);
        let thread = thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || run(conn, rx, max_group))
            .expect("spawning the writer thread");
        Writer { tx: Mutex::new(Some(tx)), thread: Mutex::new(Some(thread)) }
    }

    /// Writes `ops` atomically and durably; returns once they are on disk.
    pub(crate) fn write(&self, ops: Vec<Op>) -> Result<(), StoreError> {
        let (done, wait) = mpsc::sync_channel(1);
        let sender = self.tx.lock().unwrap_or_else(|p| p.into_inner()).clone().ok_or(StoreError::Closed)?;
        sender.send(Request { ops, done }).map_err(|_| StoreError::Closed)?;
        wait.recv().map_err(|_| StoreError::Closed)?
    }

    /// Whether the writer thread is running (it stops only when the store closes, or on a bug).
    pub(crate) fn alive(&self) -> bool {
        self.thread.lock().unwrap_or_else(|p| p.into_inner()).as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Finishes queued writes and stops the thread.
    pub(crate) fn shutdown(&self) {
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = t.join();
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn run(mut conn: Connection, rx: mpsc::Receiver<Request>, max_group: usize) {
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        while group.len() < max_group {
            match rx.try_recv() {
                Ok(r) => group.push(r),
                Err(_) => break,
            }
        }
        let results = write_group(&mut conn, &group);
        for (req, result) in group.into_iter().zip(results) {
            let _ = req.done.send(result);
        }
    }
    // Leave the WAL folded into the main file on a clean shutdown.
    let _ = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);");
}

fn write_group(conn: &mut Connection, group: &[Request]) -> Vec<Result<(), StoreError>> {
    let tx = match conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => {
            let err = StoreError::from(e);
            return group.iter().map(|_| Err(err.clone())).collect();
        }
    };
    let mut results = Vec::with_capacity(group.len());
    for req in group {
        let result = (|| -> Result<(), StoreError> {
            tx.execute_batch("SAVEPOINT request")?;
            match req.ops.iter().try_for_each(|op| apply(&tx, op)) {
                Ok(()) => {
                    tx.execute_batch("RELEASE request")?;
                    Ok(())
                }
                Err(e) => {
                    // After a full disk or an I/O error SQLite may have rolled back the whole
                    // transaction; only roll back to the savepoint while it still exists.
                    if !tx.is_autocommit() {
                        tx.execute_batch("ROLLBACK TO request; RELEASE request")?;
                    }
                    Err(e)
                }
            }
        })();
        let fatal = match &result {
            Ok(()) => false,
            Err(e) => tx.is_autocommit() || matches!(e, StoreError::DiskFull | StoreError::Io(_)),
        };
        if let (true, Err(e)) = (fatal, &result) {
            // The transaction is gone or the disk is failing: the whole group fails, the
            // requests written before this one included (they were in the same
            // transaction), and none after it may start a transaction of its own.
            tracing::error!(error = %e, "a write failed; failing its whole group");
            return group.iter().map(|_| Err(e.clone())).collect();
        }
        results.push(result);
    }
    if let Err(e) = tx.commit() {
        // The commit did not complete. With an I/O error during the sync, frames may still
        // reach the disk; callers are told the outcome is uncertain (see StoreError::Uncertain).
        // SQLITE_FULL rolls the transaction back: then nothing was stored, for certain.
        let err = match StoreError::from(e) {
            StoreError::DiskFull => StoreError::DiskFull,
            other => StoreError::Uncertain(other.to_string()),
        };
        tracing::error!(error = %err, "group commit failed");
        return group.iter().map(|_| Err(err.clone())).collect();
    }
    results
}

fn apply(conn: &Connection, op: &Op) -> Result<(), StoreError> {
    match op {
        Op::Change { case_id, bytes } => {
            conn.prepare_cached("INSERT INTO changes (case_id, bytes) VALUES (?1, ?2)")?
                .execute(params![case_id, bytes])?;
        }
        Op::Index(r) => {
            conn.prepare_cached(
                "INSERT OR REPLACE INTO cases (id, org, van, status, created_at, updated_at, patient_name, temp_patient_id, chief_complaint, has_conflicts, summary)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )?
            .execute(params![
                r.id,
                r.org,
                r.van,
                r.status,
                r.created_at,
                r.updated_at,
                r.patient_name,
                r.temp_patient_id,
                r.chief_complaint,
                r.has_conflicts,
                r.summary
            ])?;
        }
        Op::Audit(rec) => {
            audit::append(conn, rec)?;
        }
        Op::Blob { sha256, size, media_type, at } => {
            conn.prepare_cached(
                "INSERT OR IGNORE INTO blobs (sha256, size, media_type, created_at) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![sha256, *size as i64, media_type, at])?;
        }
        Op::SyncState { peer, case_id, state } => {
            conn.prepare_cached("INSERT OR REPLACE INTO sync_states (peer, case_id, state) VALUES (?1, ?2, ?3)")?
                .execute(params![peer, case_id, state])?;
        }
        Op::Snapshot { case_id, bytes } => {
            // Callers hold the case's lock and every change of it is already durable, so
            // the snapshot covers exactly the changes stored so far.
            let upto: i64 =
                conn.query_row("SELECT COALESCE(MAX(id), 0) FROM changes WHERE case_id = ?1", [case_id], |r| r.get(0))?;
            conn.execute(
                "INSERT OR REPLACE INTO snapshots (case_id, upto, bytes) VALUES (?1, ?2, ?3)",
                params![case_id, upto, bytes],
            )?;
            conn.execute("DELETE FROM changes WHERE case_id = ?1 AND id <= ?2", params![case_id, upto])?;
        }
    }
    Ok(())
}
