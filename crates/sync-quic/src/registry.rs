//! What enrolment and revocation must remember: tokens, issued certificates, revocations.
//!
//! The hub's storage implements [`Registry`] so that all of it survives a restart and is
//! shared by every hub process on the same database; [`MemoryRegistry`] serves tests and
//! tools that need no persistence.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::enrol::EnrolError;
use crate::identity::DeviceId;

/// The registry's storage failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the hub's registry storage failed: {0}")]
pub struct RegistryError(pub String);

/// A revocation, in the order they were made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    /// Position in the revocation log, from 1.
    pub seq: u64,
    /// The fingerprint of the revoked certificate.
    pub fingerprint: String,
    /// The van it was issued to.
    pub device: DeviceId,
}

/// Persistent state of enrolment and revocation. Implementations must make
/// [`Registry::redeem_token`] atomic: two concurrent redemptions of one token never both
/// succeed with different keys.
pub trait Registry: Send + Sync + std::fmt::Debug {
    /// Records a new token by the SHA-256 of its secret (the secret itself is never kept).
    fn add_token(&self, secret_hash: [u8; 32], device: &DeviceId, expires_at: i64) -> Result<(), RegistryError>;
    /// Marks a token used by the key whose SubjectPublicKeyInfo hashes to `key_hash` and
    /// returns the van it enrols. Redeeming again with the same key (a van retrying after
    /// the answer was lost) succeeds again; with another key it is refused as used.
    fn redeem_token(&self, secret_hash: [u8; 32], key_hash: [u8; 32], now: i64) -> Result<DeviceId, EnrolError>;
    /// Records an issued certificate, so that revoking its van can name it.
    fn record_certificate(&self, fingerprint: &str, device: &DeviceId, not_after: i64) -> Result<(), RegistryError>;
    /// Revokes every certificate issued to a van and voids its enrolment tokens (used or
    /// not, see [`VOIDED`]); returns how many certificates were revoked.
    fn revoke_device(&self, device: &DeviceId) -> Result<usize, RegistryError>;
    /// Whether a certificate is revoked.
    fn is_revoked(&self, fingerprint: &str) -> Result<bool, RegistryError>;
    /// Revocations after position `after`, oldest first.
    fn revocations_after(&self, after: u64) -> Result<Vec<Revocation>, RegistryError>;
}

#[derive(Debug)]
struct Token {
    device: DeviceId,
    expires_at: i64,
    used_by: Option<[u8; 32]>,
}

/// A registry in memory.
#[derive(Debug, Default)]
pub struct MemoryRegistry {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    tokens: HashMap<[u8; 32], Token>,
    certs: Vec<(String, DeviceId)>,
    revoked: Vec<Revocation>,
}

impl Registry for MemoryRegistry {
    fn add_token(&self, secret_hash: [u8; 32], device: &DeviceId, expires_at: i64) -> Result<(), RegistryError> {
        lock(&self.inner).tokens.insert(secret_hash, Token { device: device.clone(), expires_at, used_by: None });
        Ok(())
    }

    fn redeem_token(&self, secret_hash: [u8; 32], key_hash: [u8; 32], now: i64) -> Result<DeviceId, EnrolError> {
        let mut inner = lock(&self.inner);
        let token = inner.tokens.get_mut(&secret_hash).ok_or(EnrolError::Unknown)?;
        redeem(token.used_by, token.expires_at, key_hash, now)?;
        token.used_by = Some(key_hash);
        Ok(token.device.clone())
    }

    fn record_certificate(&self, fingerprint: &str, device: &DeviceId, _not_after: i64) -> Result<(), RegistryError> {
        lock(&self.inner).certs.push((fingerprint.to_owned(), device.clone()));
        Ok(())
    }

    fn revoke_device(&self, device: &DeviceId) -> Result<usize, RegistryError> {
        let mut inner = lock(&self.inner);
        let Inner { certs, revoked, tokens } = &mut *inner;
        for token in tokens.values_mut().filter(|t| &t.device == device) {
            token.used_by = Some(VOIDED);
        }
        let mut n = 0;
        for (fp, d) in certs.iter().filter(|(_, d)| d == device) {
            if !revoked.iter().any(|r| &r.fingerprint == fp) {
                let seq = revoked.len() as u64 + 1;
                revoked.push(Revocation { seq, fingerprint: fp.clone(), device: d.clone() });
                n += 1;
            }
        }
        Ok(n)
    }

    fn is_revoked(&self, fingerprint: &str) -> Result<bool, RegistryError> {
        Ok(lock(&self.inner).revoked.iter().any(|r| r.fingerprint == fingerprint))
    }

    fn revocations_after(&self, after: u64) -> Result<Vec<Revocation>, RegistryError> {
        Ok(lock(&self.inner).revoked.iter().filter(|r| r.seq > after).cloned().collect())
    }
}

/// The rule every registry applies to a token being redeemed: unused or used by this same
/// key (a retry), and not expired either way.
pub fn redeem(used_by: Option<[u8; 32]>, expires_at: i64, key_hash: [u8; 32], now: i64) -> Result<(), EnrolError> {
    match used_by {
        Some(k) if k != key_hash => Err(EnrolError::AlreadyUsed),
        _ if now > expires_at => Err(EnrolError::Expired),
        _ => Ok(()),
    }
}

/// What a revoked van's tokens are marked used by: no key hashes to it, so none of them
/// enrols anything again, not even a retry by the key they were bound to.
pub const VOIDED: [u8; 32] = [0xff; 32];

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
