//! Sealing patient data before it reaches a storage backend.
//!
//! One 256-bit key in the hub's key file; HKDF derives a key per purpose. Records (case
//! bytes, sync states, the CA key) are sealed with XChaCha20-Poly1305 under a random nonce
//! stored in front, and bound by associated data to what they are (a case's bytes cannot
//! be moved to another case unnoticed). Blob chunks likewise carry a random nonce and are
//! bound to their blob and position. (A nonce derived from the blob's name would repeat
//! for bytes a van chooses, since chunks are sealed before the whole blob is verified.)

use std::path::Path;

use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use sha2::Sha256;

use super::StorageError;

const NONCE: usize = 24;

/// The hub's keys.
#[derive(Clone)]
pub struct Sealer {
    records: XChaCha20Poly1305,
    blobs: XChaCha20Poly1305,
    sqlcipher: [u8; 32],
    names: ring::hmac::Key,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer").finish_non_exhaustive()
    }
}

impl Sealer {
    /// Reads the key file: 64 hex digits, readable by its owner only.
    pub fn load(path: &Path) -> anyhow::Result<Sealer> {
        if !path.exists() {
            anyhow::bail!("The hub's key file {} does not exist; create it with `medvan-hub init`", path.display());
        }
        Ok(Sealer::from_master(&case_store::read_key_file(path)?))
    }

    /// Keys derived from a master key.
    pub fn from_master(master: &[u8; 32]) -> Sealer {
        let hk = Hkdf::<Sha256>::new(Some(b"medvan-hub-v1"), master);
        let derive = |label: &[u8]| {
            let mut out = [0u8; 32];
            hk.expand(label, &mut out).expect("32 bytes is a valid HKDF output length");
            out
        };
        Sealer {
            records: XChaCha20Poly1305::new(&derive(b"records").into()),
            blobs: XChaCha20Poly1305::new(&derive(b"blobs").into()),
            sqlcipher: derive(b"sqlcipher"),
            names: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &derive(b"names")),
        }
    }

    /// A keyed hash (hex) of a name, to key a record by a name without storing the name (a
    /// plain hash of a guessable name is reversed by guessing).
    pub(crate) fn name_key(&self, name: &str) -> String {
        hex::encode(ring::hmac::sign(&self.names, name.as_bytes()))
    }

    /// The raw key for SQLCipher.
    pub(crate) fn sqlcipher_key(&self) -> &[u8; 32] {
        &self.sqlcipher
    }

    /// Seals a record; `what` names it (and binds it to its place).
    pub fn seal(&self, what: &[u8], plain: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE];
        rand::fill(&mut nonce);
        let mut out = nonce.to_vec();
        let sealed = self
            .records
            .encrypt(&XNonce::from(nonce), Payload { msg: plain, aad: what })
            .expect("XChaCha20-Poly1305 encrypts any length this hub stores");
        out.extend_from_slice(&sealed);
        out
    }

    /// Opens a sealed record.
    pub fn open(&self, what: &[u8], sealed: &[u8]) -> Result<Vec<u8>, StorageError> {
        if sealed.len() < NONCE {
            return Err(StorageError::Unsealed("record too short".into()));
        }
        let (nonce, body) = sealed.split_at(NONCE);
        let nonce: [u8; NONCE] = nonce.try_into().expect("split at the nonce length");
        self.records
            .decrypt(&XNonce::from(nonce), Payload { msg: body, aad: what })
            .map_err(|_| StorageError::Unsealed(String::from_utf8_lossy(what).into_owned()))
    }

    /// Seals chunk `index` of blob `sha`: a random nonce, then the ciphertext.
    pub fn seal_chunk(&self, sha: &[u8; 32], index: u64, plain: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE];
        rand::fill(&mut nonce);
        let mut out = nonce.to_vec();
        let sealed = self
            .blobs
            .encrypt(&XNonce::from(nonce), Payload { msg: plain, aad: &chunk_aad(sha, index) })
            .expect("XChaCha20-Poly1305 encrypts any chunk");
        out.extend_from_slice(&sealed);
        out
    }

    /// Opens chunk `index` of blob `sha`.
    pub fn open_chunk(&self, sha: &[u8; 32], index: u64, sealed: &[u8]) -> Result<Vec<u8>, StorageError> {
        let damaged = || StorageError::Unsealed(format!("chunk {index} of blob {}", hex::encode(sha)));
        if sealed.len() < NONCE {
            return Err(damaged());
        }
        let (nonce, body) = sealed.split_at(NONCE);
        let nonce: [u8; NONCE] = nonce.try_into().expect("split at the nonce length");
        self.blobs
            .decrypt(&XNonce::from(nonce), Payload { msg: body, aad: &chunk_aad(sha, index) })
            .map_err(|_| damaged())
    }
}

fn chunk_aad(sha: &[u8; 32], index: u64) -> [u8; 40] {
    let mut aad = [0u8; 40];
    aad[..32].copy_from_slice(sha);
    aad[32..].copy_from_slice(&index.to_be_bytes());
    aad
}

/// Sealed-record labels.
pub(crate) fn case_label(doc: sync_proto::DocId) -> Vec<u8> {
    let mut l = b"case:".to_vec();
    l.extend_from_slice(&doc.0);
    l
}

pub(crate) fn sync_label(peer: &str, doc: sync_proto::DocId) -> Vec<u8> {
    let mut l = format!("sync:{peer}:").into_bytes();
    l.extend_from_slice(&doc.0);
    l
}

pub(crate) const CA_LABEL: &[u8] = b"fleet-ca-key";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_records_are_bound_to_their_label_and_key() {
        let s = Sealer::from_master(&[1; 32]);
        let sealed = s.seal(b"case:a", b"patient");
        assert_eq!(s.open(b"case:a", &sealed).unwrap(), b"patient");
        assert!(s.open(b"case:b", &sealed).is_err(), "moved to another case");
        assert!(Sealer::from_master(&[2; 32]).open(b"case:a", &sealed).is_err(), "wrong key");
        let chunk = s.seal_chunk(&[9; 32], 3, b"pixels");
        assert_eq!(s.open_chunk(&[9; 32], 3, &chunk).unwrap(), b"pixels");
        assert!(s.open_chunk(&[9; 32], 4, &chunk).is_err(), "moved to another position");
    }
}
