//! A verified copy of another system's log: the hub keeps each van's audit log, and takes
//! each new run of entries only if it extends what it holds. Sans-IO: the caller passes
//! what it holds (the entries' chain hashes, in order) and what arrived, and stores the
//! entries this accepts.
//!
//! The run must link to the held tail and every entry's hash must match its contents; an
//! entry the copy already holds must come again unchanged; and the signed tree head sent
//! with the run must be the Merkle root over everything held plus the run. So an entry
//! changed, removed or reordered after the hub received it, or a tail cut and written
//! anew after a head was sent, is caught, and the first bad entry is named.

use crate::merkle::{self, TreeHead};
use crate::{Entry, record_hash};

/// What is wrong with a run of another log's entries.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CopyError {
    /// An entry the copy holds came again with other contents.
    #[error("entry {seq} differs from the copy already received: the log was changed after it was sent")]
    Changed {
        /// The entry.
        seq: u64,
    },
    /// The run does not start where the copy ends (nothing is lost: send from `held + 1`).
    #[error("the entries start at {first}, but {held} are held; send from {}", held + 1)]
    Gap {
        /// The first entry sent.
        first: u64,
        /// Entries held.
        held: u64,
    },
    /// Entries out of order or with one missing.
    #[error("entry {seq} is out of place: an entry before it was removed or the entries were reordered")]
    OutOfOrder {
        /// The entry.
        seq: u64,
    },
    /// An entry does not link to the one before it.
    #[error("entry {seq} does not follow entry {}: an entry was removed, reordered or rewritten", seq - 1)]
    BrokenLink {
        /// The entry.
        seq: u64,
    },
    /// An entry's contents do not match its hash.
    #[error("entry {seq} was altered: its contents do not match its hash")]
    Altered {
        /// The entry.
        seq: u64,
    },
    /// The signed head does not cover exactly the entries held plus the run.
    #[error("the signed tree head (size {size}) does not match the entries: the log was cut or rewritten")]
    HeadMismatch {
        /// The head's size.
        size: u64,
    },
}

fn hash_of(e: &Entry) -> Option<[u8; 32]> {
    hex::decode(&e.hash).ok()?.try_into().ok()
}

fn prev_of(e: &Entry) -> Option<[u8; 32]> {
    hex::decode(&e.prev).ok()?.try_into().ok()
}

/// Checks that `run` (entries from `run[0].seq` on) and `head` extend a copy holding the
/// entries whose chain hashes are `held`. Returns the entries to append (the run less what
/// is held already).
pub fn check_extension<'a>(held: &[[u8; 32]], run: &'a [Entry], head: &TreeHead) -> Result<&'a [Entry], CopyError> {
    let n = held.len() as u64;
    let Some(first) = run.first() else {
        return if head.size == n && head.root == merkle::root(&leaves(held)) {
            Ok(run)
        } else {
            Err(CopyError::HeadMismatch { size: head.size })
        };
    };
    if first.seq == 0 || first.seq > n + 1 {
        return Err(CopyError::Gap { first: first.seq, held: n });
    }
    let mut hashes: Vec<[u8; 32]> = held.to_vec();
    let mut new_from = run.len();
    for (i, e) in run.iter().enumerate() {
        if e.seq != first.seq + i as u64 {
            return Err(CopyError::OutOfOrder { seq: e.seq });
        }
        let h = hash_of(e).ok_or(CopyError::Altered { seq: e.seq })?;
        let record = e.record();
        let prev = prev_of(e).ok_or(CopyError::BrokenLink { seq: e.seq })?;
        if record_hash(e.seq, &record, &prev) != h {
            return Err(CopyError::Altered { seq: e.seq });
        }
        let expected_prev = if e.seq == 1 { [0u8; 32] } else { hashes[(e.seq - 2) as usize] };
        if prev != expected_prev {
            return Err(CopyError::BrokenLink { seq: e.seq });
        }
        if e.seq <= n {
            if hashes[(e.seq - 1) as usize] != h {
                return Err(CopyError::Changed { seq: e.seq });
            }
        } else {
            if new_from == run.len() {
                new_from = i;
            }
            hashes.push(h);
        }
    }
    if head.size != hashes.len() as u64 || head.root != merkle::root(&leaves(&hashes)) {
        return Err(CopyError::HeadMismatch { size: head.size });
    }
    Ok(&run[new_from..])
}

fn leaves(hashes: &[[u8; 32]]) -> Vec<[u8; 32]> {
    hashes.iter().map(merkle::leaf).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Outcome, Record};

    /// A log of `n` entries, as stored.
    fn log(n: u64) -> Vec<Entry> {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch(crate::SCHEMA_SQL).unwrap();
        for i in 0..n {
            crate::append(
                &conn,
                &Record {
                    at: 1_000 + i as i64,
                    actor: "ana".into(),
                    action: "case.read".into(),
                    case_id: Some(format!("case-{}", i % 3)),
                    outcome: Outcome::Allowed,
                    detail: String::new(),
                },
            )
            .unwrap();
        }
        crate::after(&conn, 0, 1000).unwrap()
    }

    fn hashes(entries: &[Entry]) -> Vec<[u8; 32]> {
        entries.iter().map(|e| hash_of(e).unwrap()).collect()
    }

    fn head_of(entries: &[Entry]) -> TreeHead {
        merkle::head(&leaves(&hashes(entries)))
    }

    #[test]
    fn a_run_that_extends_the_copy_is_taken_and_resent_entries_are_skipped() {
        let all = log(30);
        let held = hashes(&all[..10]);
        let new = check_extension(&held, &all[10..], &head_of(&all)).unwrap();
        assert_eq!(new.len(), 20);
        // A resend from earlier is fine as long as it is the same.
        let new = check_extension(&held, &all[5..20], &head_of(&all[..20])).unwrap();
        assert_eq!(new.first().unwrap().seq, 11);
        // Nothing new, the same head: fine.
        assert!(check_extension(&held, &[], &head_of(&all[..10])).unwrap().is_empty());
    }

    #[test]
    fn a_changed_removed_reordered_or_cut_log_is_caught_naming_the_first_bad_entry() {
        let all = log(30);
        let held = hashes(&all[..20]);
        // Entry 16 changed after the hub got it.
        let mut changed = all[10..].to_vec();
        changed[5].detail = "nothing to see".into();
        assert_eq!(check_extension(&held, &changed, &head_of(&all)), Err(CopyError::Altered { seq: 16 }));
        // An entry not yet sent is removed: the next one is out of place.
        let mut removed = all[20..].to_vec();
        removed.remove(3);
        assert_eq!(check_extension(&held, &removed, &head_of(&all)), Err(CopyError::OutOfOrder { seq: 25 }));
        // Two swapped.
        let mut swapped = all[20..].to_vec();
        swapped.swap(2, 3);
        assert_eq!(check_extension(&held, &swapped, &head_of(&all)), Err(CopyError::OutOfOrder { seq: 24 }));
        // The tail after 15 cut and written anew (a consistent chain of its own): its first
        // rewritten entry differs from the copy.
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch(crate::SCHEMA_SQL).unwrap();
        for e in &all[..15] {
            crate::append(&conn, &e.record()).unwrap();
        }
        for i in 0..10 {
            let r = Record {
                at: 5_000 + i,
                actor: "mallory".into(),
                action: "case.list".into(),
                case_id: None,
                outcome: Outcome::Allowed,
                detail: String::new(),
            };
            crate::append(&conn, &r).unwrap();
        }
        let rewritten = crate::after(&conn, 0, 1000).unwrap();
        assert_eq!(check_extension(&held, &rewritten[15..], &head_of(&rewritten)), Err(CopyError::Changed { seq: 16 }));
        // Cut and not rewritten: a head smaller than the copy.
        assert_eq!(check_extension(&held, &[], &head_of(&all[..15])), Err(CopyError::HeadMismatch { size: 15 }));
        // A head that does not match the entries.
        assert_eq!(check_extension(&held, &all[20..], &head_of(&all[..29])), Err(CopyError::HeadMismatch { size: 29 }));
        // A gap.
        assert_eq!(check_extension(&held, &all[25..], &head_of(&all)), Err(CopyError::Gap { first: 26, held: 20 }));
    }
}
