//! Tree heads over the audit log, as Certificate Transparency keeps them (RFC 6962 / RFC
//! 9162 Merkle trees): a hash chain shows a changed entry, but not a tail cut off; a tree
//! head (size and root) signed by the van, and the hub's check that each new head extends
//! the last it saw, shows that too.
//!
//! Leaves are the entries' chain hashes. Sans-IO: callers sign and send heads, and keep the
//! last head they accepted.

use sha2::{Digest, Sha256};

/// A Merkle tree head: how many entries, and the root over them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TreeHead {
    /// Number of entries.
    pub size: u64,
    /// Root hash.
    pub root: [u8; 32],
}

impl TreeHead {
    /// The bytes a van signs: a domain label, the size, the root.
    pub fn signing_bytes(&self, log_id: &str) -> Vec<u8> {
        let mut b = b"medvan-audit-tree-head-v1\0".to_vec();
        b.extend_from_slice(log_id.as_bytes());
        b.push(0);
        b.extend_from_slice(&self.size.to_be_bytes());
        b.extend_from_slice(&self.root);
        b
    }
}

/// The leaf hash of an entry (its chain hash).
pub fn leaf(entry_hash: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(entry_hash);
    h.finalize().into()
}

fn node(l: &[u8; 32], r: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(l);
    h.update(r);
    h.finalize().into()
}

/// The largest power of two smaller than `n` (n > 1).
fn split(n: usize) -> usize {
    let mut k = 1;
    while k * 2 < n {
        k *= 2;
    }
    k
}

/// The root over leaf hashes (RFC 6962 MTH); the hash of nothing for an empty log.
pub fn root(leaves: &[[u8; 32]]) -> [u8; 32] {
    match leaves.len() {
        0 => Sha256::digest([]).into(),
        1 => leaves[0],
        n => {
            let k = split(n);
            node(&root(&leaves[..k]), &root(&leaves[k..]))
        }
    }
}

/// The head over all of `leaves`.
pub fn head(leaves: &[[u8; 32]]) -> TreeHead {
    TreeHead { size: leaves.len() as u64, root: root(leaves) }
}

/// A proof that the first `m` leaves are a prefix of `leaves` (RFC 6962 2.1.2 PROOF).
pub fn consistency_proof(m: usize, leaves: &[[u8; 32]]) -> Vec<[u8; 32]> {
    if m == 0 || m >= leaves.len() {
        return Vec::new();
    }
    subproof(m, leaves, true)
}

fn subproof(m: usize, d: &[[u8; 32]], whole: bool) -> Vec<[u8; 32]> {
    let n = d.len();
    if m == n {
        return if whole { Vec::new() } else { vec![root(d)] };
    }
    let k = split(n);
    if m <= k {
        let mut p = subproof(m, &d[..k], whole);
        p.push(root(&d[k..]));
        p
    } else {
        let mut p = subproof(m - k, &d[k..], false);
        p.push(root(&d[..k]));
        p
    }
}

/// Checks that `new` extends `old` with `proof` (RFC 9162 2.1.4.2).
pub fn verify_consistency(old: &TreeHead, new: &TreeHead, proof: &[[u8; 32]]) -> bool {
    let (m, n) = (old.size, new.size);
    if m > n {
        return false;
    }
    if m == n {
        return old.root == new.root && proof.is_empty();
    }
    if m == 0 {
        return proof.is_empty();
    }
    if proof.is_empty() {
        return false;
    }
    // If m is a power of two, the old root is the first value of the path.
    let mut path: Vec<[u8; 32]> = proof.to_vec();
    if m.is_power_of_two() {
        path.insert(0, old.root);
    }
    let Some((first, rest)) = path.split_first() else { return false };
    let (mut fnode, mut snode) = (m - 1, n - 1);
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
        if snode == 0 {
            return false;
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node(c, &fr);
            sr = node(c, &sr);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            sr = node(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    snode == 0 && fr == old.root && sr == new.root
}

/// Why a new head was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeadError {
    /// Fewer entries than a head already accepted: the log's tail was cut.
    #[error("the log has {new} entries, fewer than the {old} of a head it signed before: its tail was cut")]
    Shrunk {
        /// Entries in the head accepted before.
        old: u64,
        /// Entries now.
        new: u64,
    },
    /// The new head does not extend the old one: entries it covered were changed or removed.
    #[error(
        "the log's new head ({new} entries) does not extend the one it signed at {old} entries: entries were changed or removed"
    )]
    NotExtending {
        /// Entries in the head accepted before.
        old: u64,
        /// Entries now.
        new: u64,
    },
}

/// Checks `new` against the last head accepted from the same log.
pub fn check_extends(last: Option<&TreeHead>, new: &TreeHead, proof: &[[u8; 32]]) -> Result<(), HeadError> {
    let Some(old) = last else { return Ok(()) };
    if new.size < old.size {
        return Err(HeadError::Shrunk { old: old.size, new: new.size });
    }
    if !verify_consistency(old, new, proof) {
        return Err(HeadError::NotExtending { old: old.size, new: new.size });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn leaves(n: usize, salt: u8) -> Vec<[u8; 32]> {
        (0..n).map(|i| leaf(&Sha256::digest([salt, (i % 256) as u8, (i / 256) as u8]).into())).collect()
    }

    #[test]
    fn roots_match_the_rfc_6962_shape() {
        let l = leaves(3, 0);
        assert_eq!(root(&l), node(&node(&l[0], &l[1]), &l[2]));
        let l = leaves(5, 0);
        assert_eq!(root(&l), node(&root(&l[..4]), &l[4]));
        assert_eq!(root(&[]), <[u8; 32]>::from(Sha256::digest([])));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() })]

        /// Every prefix of a log is proved consistent with the whole; a changed entry in the
        /// prefix, a different log, or a cut tail is never accepted.
        #[test]
        fn a_log_extends_its_prefixes_and_nothing_else(n in 1usize..200, m_frac in 0.0f64..1.0, at_frac in 0.0f64..1.0) {
            let all = leaves(n, 1);
            let m = ((n as f64) * m_frac) as usize;
            let (old, new) = (head(&all[..m]), head(&all));
            let proof = consistency_proof(m, &all);
            prop_assert!(verify_consistency(&old, &new, &proof), "{m} of {n}");
            prop_assert_eq!(check_extends(Some(&old), &new, &proof), Ok(()));
            if m > 0 && m < n {
                // One entry of the old part changed: the new log no longer extends the old head.
                let at = ((m as f64) * at_frac) as usize;
                let mut changed = all.clone();
                changed[at] = leaf(&[0xAA; 32]);
                let forged = head(&changed);
                let proof = consistency_proof(m, &changed);
                prop_assert!(!verify_consistency(&old, &forged, &proof));
                let refused = matches!(check_extends(Some(&old), &forged, &proof), Err(HeadError::NotExtending { .. }));
                prop_assert!(refused, "a changed entry at {} of {} was accepted", at, m);
            }
            // A tail cut after a head was signed.
            if m > 0 {
                let cut = head(&all[..m - 1]);
                let refused = matches!(check_extends(Some(&head(&all[..m])), &cut, &[]), Err(HeadError::Shrunk { .. }));
                prop_assert!(refused, "a cut tail was accepted");
            }
        }
    }
}
