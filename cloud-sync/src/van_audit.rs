//! Vans' audit logs at the hub. Each van sends its log with the sync, in runs that end with
//! a tree head signed by the van's device key. The hub keeps a copy per van and takes a run
//! only if it extends what it holds ([`audit::copy`]): an entry changed, removed or
//! reordered on the van after it was sent, or a tail cut after a head was signed, is
//! refused, recorded in the hub's own audit log as `van_audit.tampered` naming the first bad
//! entry, and logged as an error for the operators.

use audit::copy::{CopyError, check_extension};
use audit::merkle::TreeHead;
use ring::signature::{ECDSA_P256_SHA256_ASN1, UnparsedPublicKey};
use sync_proto::{AuditRecord, RefusalReason, ReplicaRefusal, SignedHead};
use sync_quic::identity::DeviceId;

use crate::storage::{Storage, StorageError, VanHead};

/// The log id a van's heads are signed under.
pub fn log_id(device: &DeviceId) -> String {
    format!("{}/{}", device.org, device.van)
}

fn entry(r: AuditRecord) -> audit::Entry {
    audit::Entry {
        seq: r.seq,
        at: r.at,
        actor: r.actor,
        action: r.action,
        case_id: r.case_id,
        // An outcome that does not parse cannot match the entry's hash: refused below.
        outcome: audit::Outcome::parse(&r.outcome).unwrap_or(audit::Outcome::Refused),
        detail: r.detail,
        prev: hex::encode(r.prev),
        hash: hex::encode(r.hash),
    }
}

/// Takes a run of a van's log; answers how much of it the hub now holds. Only a run that
/// does not extend the copy, or a head the van did not sign, is refused (and raised).
pub(crate) fn receive(
    storage: &dyn Storage,
    device: &DeviceId,
    peer_key: Option<&[u8]>,
    records: Vec<AuditRecord>,
    head: SignedHead,
) -> Result<u64, ReplicaRefusal> {
    let (org, van) = (device.org.as_str(), device.van.as_str());
    // A storage failure is not the van's doing: the answer says what is held (nothing new),
    // and the van sends again next session.
    let unstored = |e: StorageError, held: u64| {
        tracing::error!(error = %e, org, van, "could not store a van's audit log; it comes again");
        held
    };
    let held = match storage.van_audit_hashes(org, van) {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(error = %e, org, van, "could not read a van's audit log copy");
            return Err(ReplicaRefusal {
                reason: RefusalReason::NotAuthorised,
                detail: format!("the hub could not read its copy of this van's audit log ({e})"),
            });
        }
    };
    let n = held.len() as u64;
    let tree = TreeHead { size: head.size, root: head.root };
    let Some(key) = peer_key else {
        // No certificate key to check the head with (not a QUIC connection): take nothing.
        return Ok(n);
    };
    if UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, key)
        .verify(&tree.signing_bytes(&log_id(device)), &head.signature)
        .is_err()
    {
        return Err(alarm(storage, device, "the tree head's signature does not verify with the van's certificate key"));
    }
    let entries: Vec<audit::Entry> = records.into_iter().map(entry).collect();
    let new = match check_extension(&held, &entries, &tree) {
        Ok(new) => new,
        // Nothing wrong: the van assumed the hub held more. It sends again from here.
        Err(CopyError::Gap { held, .. }) => return Ok(held),
        Err(e) => return Err(alarm(storage, device, &e.to_string())),
    };
    let now = crate::cases::now().unix_millis();
    let stored = VanHead { size: head.size, root: head.root, signature: head.signature, received_at: now };
    match storage.append_van_audit(org, van, new, &stored) {
        Ok(()) => Ok(head.size),
        // Another connection of the van stored first: say what is held now.
        Err(StorageError::Conflict) => Ok(storage.van_audit_hashes(org, van).map_or(n, |h| h.len() as u64)),
        Err(e) => Ok(unstored(e, n)),
    }
}

fn alarm(storage: &dyn Storage, device: &DeviceId, what: &str) -> ReplicaRefusal {
    tracing::error!(org = %device.org, van = %device.van, problem = what, "a van's audit log was tampered with");
    let rec = audit::Record {
        at: crate::cases::now().unix_millis(),
        actor: format!("van:{}", log_id(device)),
        action: "van_audit.tampered".into(),
        case_id: None,
        outcome: audit::Outcome::Refused,
        detail: what.to_owned(),
    };
    if let Err(e) = storage.audit(&rec) {
        tracing::error!(error = %e, "could not record the audit alarm");
    }
    ReplicaRefusal { reason: RefusalReason::Malformed, detail: format!("the hub refused this van's audit log: {what}") }
}
