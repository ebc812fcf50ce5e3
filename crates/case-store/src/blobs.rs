//! Encrypted, content-addressed blob files (X-ray studies, previews, video segments).
//!
//! A blob is addressed by the SHA-256 of its plaintext, which is what the case document
//! and the sync protocol name. On disk it is encrypted in 64 KiB chunks with
//! XChaCha20-Poly1305 in the STREAM construction (each chunk's nonce carries its index and a
//! last-chunk flag, so chunks cannot be reordered, dropped or the file truncated unnoticed),
//! and its file name is an HMAC of the hash, so the directory listing reveals nothing.
//!
//! Writes go to a temporary file that is synced, renamed into place, and the directory
//! synced, so a blob is either absent or whole after a power cut.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};

use crate::db::sync_dir;
use crate::error::StoreError;
use crate::key::Keys;

const MAGIC: &[u8; 8] = b"MVBLOB1\0";
const CHUNK: usize = 64 * 1024;
const TAG: usize = 16;
const PREFIX: usize = 19;

/// A stored blob.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BlobRef {
    /// SHA-256 of the content, lower-case hex.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
}

#[derive(Debug)]
pub(crate) struct Blobs {
    dir: PathBuf,
    keys: Keys,
}

impl Blobs {
    pub(crate) fn open(dir: &Path, keys: Keys) -> io::Result<Blobs> {
        if !dir.join("tmp").exists() {
            fs::create_dir_all(dir.join("tmp"))?;
            sync_dir(dir)?;
            if let Some(parent) = dir.parent() {
                sync_dir(parent)?;
            }
        }
        // Temporary files are writes that never finished; nothing refers to them.
        for entry in fs::read_dir(dir.join("tmp"))? {
            let _ = fs::remove_file(entry?.path());
        }
        Ok(Blobs { dir: dir.to_owned(), keys })
    }

    /// Encrypts `content` into the store. Returns once the file is durable.
    pub(crate) fn put(&self, content: &mut dyn Read, limit: u64) -> Result<BlobRef, StoreError> {
        let mut prefix = [0u8; PREFIX];
        rand::fill(&mut prefix);
        let tmp = self.dir.join("tmp").join(format!("{}.part", hex::encode(&prefix[..8])));
        let result = self.write_tmp(&tmp, &prefix, content, limit);
        let (sha, size) = match result {
            Ok(v) => v,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
        };
        let path = self.path_of(&sha);
        let parent = path.parent().unwrap_or(&self.dir).to_owned();
        if !parent.exists() {
            fs::create_dir_all(&parent)?;
            sync_dir(&self.dir)?;
        }
        if path.exists() {
            // Same content already stored: keep the existing file.
            fs::remove_file(&tmp)?;
        } else {
            fs::rename(&tmp, &path)?;
        }
        // Synced even when the file existed: an earlier put may have died between its
        // rename and its sync.
        sync_dir(&parent)?;
        Ok(BlobRef { sha256: hex::encode(sha), size })
    }

    fn write_tmp(
        &self,
        tmp: &Path,
        prefix: &[u8; PREFIX],
        content: &mut dyn Read,
        limit: u64,
    ) -> Result<([u8; 32], u64), StoreError> {
        let cipher = XChaCha20Poly1305::new((&self.keys.blob_cipher).into());
        let mut out = io::BufWriter::new(fs::File::create(tmp)?);
        out.write_all(MAGIC)?;
        out.write_all(prefix)?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut index = 0u32;
        // Read one chunk ahead so the last chunk can be flagged as last.
        let mut current = read_chunk(content)?;
        loop {
            let next = if current.len() == CHUNK { read_chunk(content)? } else { Vec::new() };
            let last = next.is_empty();
            size += current.len() as u64;
            if size > limit {
                return Err(StoreError::BlobTooLarge { limit });
            }
            hasher.update(&current);
            let ct = cipher
                .encrypt(&nonce(prefix, index, last), Payload { msg: &current, aad: MAGIC })
                .map_err(|_| io::Error::other("encryption failed"))?;
            out.write_all(&ct)?;
            if last {
                break;
            }
            index = index.checked_add(1).ok_or(StoreError::BlobTooLarge { limit })?;
            current = next;
        }
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok((hasher.finalize().into(), size))
    }

    /// Reads and verifies a blob.
    pub(crate) fn read(&self, sha256_hex: &str) -> Result<Vec<u8>, StoreError> {
        let corrupt =
            |reason: &str| StoreError::BlobCorrupt { sha256: sha256_hex.to_owned(), reason: reason.to_owned() };
        let sha = parse_sha(sha256_hex).ok_or_else(|| corrupt("not a SHA-256"))?;
        let data = match fs::read(self.path_of(&sha)) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(corrupt("its file is missing")),
            Err(e) => return Err(e.into()),
        };
        if data.len() < MAGIC.len() + PREFIX + TAG || &data[..MAGIC.len()] != MAGIC {
            return Err(corrupt("the file header is damaged"));
        }
        let prefix: [u8; PREFIX] = data[MAGIC.len()..MAGIC.len() + PREFIX].try_into().expect("length checked above");
        let cipher = XChaCha20Poly1305::new((&self.keys.blob_cipher).into());
        let mut body = &data[MAGIC.len() + PREFIX..];
        let mut out = Vec::with_capacity(body.len());
        let mut index = 0u32;
        loop {
            let take = body.len().min(CHUNK + TAG);
            let last = take == body.len();
            let plain = cipher
                .decrypt(&nonce(&prefix, index, last), Payload { msg: &body[..take], aad: MAGIC })
                .map_err(|_| corrupt("a chunk failed authentication (damaged, truncated or tampered with)"))?;
            out.extend_from_slice(&plain);
            body = &body[take..];
            if last {
                break;
            }
            index += 1;
        }
        if Sha256::digest(&out)[..] != sha[..] {
            return Err(corrupt("its content does not match its hash"));
        }
        Ok(out)
    }

    fn path_of(&self, sha: &[u8; 32]) -> PathBuf {
        let name = self.keys.blob_name(sha);
        self.dir.join(&name[..2]).join(&name[2..])
    }
}

fn nonce(prefix: &[u8; PREFIX], index: u32, last: bool) -> XNonce {
    let mut n = [0u8; 24];
    n[..PREFIX].copy_from_slice(prefix);
    n[PREFIX..PREFIX + 4].copy_from_slice(&index.to_be_bytes());
    n[23] = u8::from(last);
    n.into()
}

fn read_chunk(r: &mut dyn Read) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; CHUNK];
    let mut filled = 0;
    while filled < CHUNK {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(filled);
    Ok(buf)
}

pub(crate) fn parse_sha(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || s.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    hex::decode(s).ok()?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Blobs) {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::open(&dir.path().join("blobs"), Keys::derive(&[9; 32])).unwrap();
        (dir, blobs)
    }

    #[test]
    fn round_trips_sizes_around_chunk_boundaries() {
        let (_d, blobs) = store();
        for size in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 17] {
            let data: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
            let r = blobs.put(&mut data.as_slice(), u64::MAX).unwrap();
            assert_eq!(r.size, size as u64);
            assert_eq!(r.sha256, hex::encode(Sha256::digest(&data)));
            assert_eq!(blobs.read(&r.sha256).unwrap(), data);
        }
    }

    #[test]
    fn damage_truncation_and_chunk_removal_are_detected() {
        let (_d, blobs) = store();
        let data = vec![42u8; 3 * CHUNK];
        let r = blobs.put(&mut data.as_slice(), u64::MAX).unwrap();
        let path = blobs.path_of(&parse_sha(&r.sha256).unwrap());
        let good = fs::read(&path).unwrap();

        let mut flipped = good.clone();
        flipped[100] ^= 1;
        fs::write(&path, &flipped).unwrap();
        assert!(blobs.read(&r.sha256).unwrap_err().to_string().contains("failed authentication"));

        // Dropping the last chunk leaves a file that ends on a chunk not flagged as last.
        let cut = good.len() - (CHUNK + TAG);
        fs::write(&path, &good[..cut]).unwrap();
        assert!(blobs.read(&r.sha256).is_err());

        fs::write(&path, &good).unwrap();
        assert_eq!(blobs.read(&r.sha256).unwrap(), data);
    }

    #[test]
    fn over_limit_blobs_are_refused_and_leave_nothing() {
        let (d, blobs) = store();
        let data = vec![1u8; CHUNK * 2];
        assert!(matches!(blobs.put(&mut data.as_slice(), 1000), Err(StoreError::BlobTooLarge { limit: 1000 })));
        assert_eq!(fs::read_dir(d.path().join("blobs/tmp")).unwrap().count(), 0);
    }
}
