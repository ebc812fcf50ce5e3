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
        let out = self.decrypt_file(sha256_hex, &data)?;
        if Sha256::digest(&out)[..] != sha[..] {
            return Err(corrupt("its content does not match its hash"));
        }
        Ok(out)
    }

    fn decrypt_file(&self, sha256_hex: &str, data: &[u8]) -> Result<Vec<u8>, StoreError> {
        let corrupt =
            |reason: &str| StoreError::BlobCorrupt { sha256: sha256_hex.to_owned(), reason: reason.to_owned() };
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
        Ok(out)
    }

    /// Reads `len` bytes from `offset` of a stored blob, decrypting only the chunks that
    /// hold them (sync sends a large image piece by piece without loading it whole).
    pub(crate) fn read_range(&self, sha: &[u8; 32], offset: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        let corrupt = |reason: &str| StoreError::BlobCorrupt { sha256: hex::encode(sha), reason: reason.to_owned() };
        let mut file = match fs::File::open(self.path_of(sha)) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(corrupt("its file is missing")),
            Err(e) => return Err(e.into()),
        };
        let header = (MAGIC.len() + PREFIX) as u64;
        let file_len = file.metadata()?.len();
        let mut head = [0u8; MAGIC.len() + PREFIX];
        file.read_exact(&mut head).map_err(|_| corrupt("the file header is damaged"))?;
        if &head[..MAGIC.len()] != MAGIC {
            return Err(corrupt("the file header is damaged"));
        }
        let prefix: [u8; PREFIX] = head[MAGIC.len()..].try_into().expect("sized above");
        let cipher = XChaCha20Poly1305::new((&self.keys.blob_cipher).into());
        let body_len = file_len - header;
        let chunks = body_len.div_ceil((CHUNK + TAG) as u64).max(1);
        let mut out = Vec::with_capacity(len as usize);
        let mut pos = offset;
        while pos < offset + len {
            let index = pos / CHUNK as u64;
            if index >= chunks {
                return Err(corrupt("a read past its end"));
            }
            let start = header + index * (CHUNK + TAG) as u64;
            let take = (file_len - start).min((CHUNK + TAG) as u64) as usize;
            let mut buf = vec![0u8; take];
            io::Seek::seek(&mut file, io::SeekFrom::Start(start))?;
            file.read_exact(&mut buf)?;
            let last = index + 1 == chunks;
            let plain = cipher
                .decrypt(&nonce(&prefix, index as u32, last), Payload { msg: &buf, aad: MAGIC })
                .map_err(|_| corrupt("a chunk failed authentication (damaged, truncated or tampered with)"))?;
            let from = (pos - index * CHUNK as u64) as usize;
            let to = plain.len().min(from + (offset + len - pos) as usize);
            if from >= to {
                return Err(corrupt("a read past its end"));
            }
            out.extend_from_slice(&plain[from..to]);
            pos += (to - from) as u64;
        }
        Ok(out)
    }

    /// How many bytes of a blob being received are held (0 if none).
    pub(crate) fn incoming_len(&self, sha: &[u8; 32]) -> io::Result<u64> {
        let path = self.incoming_path(sha);
        let len = match fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        let header = (MAGIC.len() + PREFIX) as u64;
        // Only whole chunks count; a chunk torn by a power cut is written again.
        Ok(len.saturating_sub(header) / (CHUNK + TAG) as u64 * CHUNK as u64)
    }

    /// Appends the piece of a blob being received at `offset` (a multiple of the chunk
    /// size, the end of what is held) of a blob of `size` bytes. Durable on return.
    pub(crate) fn write_incoming(&self, sha: &[u8; 32], size: u64, offset: u64, data: &[u8]) -> Result<(), StoreError> {
        let held = self.incoming_len(sha)?;
        let expected = if offset + CHUNK as u64 >= size { size - offset } else { CHUNK as u64 };
        if offset != held || data.len() as u64 != expected {
            return Err(StoreError::BlobCorrupt {
                sha256: hex::encode(sha),
                reason: format!("a piece at {offset} of {} bytes does not follow the {held} bytes held", data.len()),
            });
        }
        let dir = self.dir.join("incoming");
        if !dir.exists() {
            fs::create_dir_all(&dir)?;
            sync_dir(&self.dir)?;
        }
        let path = self.incoming_path(sha);
        let mut file = fs::OpenOptions::new().create(true).read(true).write(true).truncate(false).open(&path)?;
        let header = (MAGIC.len() + PREFIX) as u64;
        let prefix = if offset == 0 {
            let mut prefix = [0u8; PREFIX];
            rand::fill(&mut prefix);
            file.set_len(0)?;
            file.write_all(MAGIC)?;
            file.write_all(&prefix)?;
            prefix
        } else {
            let mut head = [0u8; MAGIC.len() + PREFIX];
            file.read_exact(&mut head)?;
            head[MAGIC.len()..].try_into().expect("sized above")
        };
        let index = offset / CHUNK as u64;
        let last = offset + data.len() as u64 >= size;
        let cipher = XChaCha20Poly1305::new((&self.keys.blob_cipher).into());
        let ct = cipher
            .encrypt(&nonce(&prefix, index as u32, last), Payload { msg: data, aad: MAGIC })
            .map_err(|_| io::Error::other("encryption failed"))?;
        let at = header + index * (CHUNK + TAG) as u64;
        // Whatever a torn earlier write left past the held chunks goes.
        file.set_len(at)?;
        io::Seek::seek(&mut file, io::SeekFrom::Start(at))?;
        file.write_all(&ct)?;
        file.sync_data()?;
        if offset == 0 {
            sync_dir(&dir)?;
        }
        Ok(())
    }

    /// A received blob is whole: verify it and move it into place, or discard it.
    pub(crate) fn finish_incoming(&self, sha: &[u8; 32]) -> Result<(), StoreError> {
        let tmp = self.incoming_path(sha);
        let name = hex::encode(sha);
        let result = (|| {
            let data = fs::read(&tmp)?;
            let plain = self.decrypt_file(&name, &data)?;
            if Sha256::digest(&plain)[..] != sha[..] {
                return Err(StoreError::BlobCorrupt {
                    sha256: name.clone(),
                    reason: "its content does not match its hash".into(),
                });
            }
            let path = self.path_of(sha);
            let parent = path.parent().unwrap_or(&self.dir).to_owned();
            if !parent.exists() {
                fs::create_dir_all(&parent)?;
                sync_dir(&self.dir)?;
            }
            fs::rename(&tmp, &path)?;
            sync_dir(&parent)?;
            Ok(())
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    fn incoming_path(&self, sha: &[u8; 32]) -> PathBuf {
        self.dir.join("incoming").join(self.keys.blob_name(sha))
    }

    /// Whether a blob is stored whole.
    pub(crate) fn exists(&self, sha: &[u8; 32]) -> bool {
        self.path_of(sha).exists()
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
    fn ranges_read_only_what_is_asked_and_incoming_blobs_resume_after_a_torn_write() {
        let (_d, blobs) = store();
        let data: Vec<u8> = (0..3 * CHUNK + 100).map(|i| (i * 13 % 251) as u8).collect();
        let r = blobs.put(&mut data.as_slice(), u64::MAX).unwrap();
        let sha = parse_sha(&r.sha256).unwrap();
        assert_eq!(blobs.read_range(&sha, CHUNK as u64, CHUNK as u64).unwrap(), &data[CHUNK..2 * CHUNK]);
        assert_eq!(blobs.read_range(&sha, 10, 3 * CHUNK as u64).unwrap(), &data[10..3 * CHUNK + 10]);
        assert!(blobs.read_range(&sha, data.len() as u64, 1).is_err());

        // Receiving the same content from a peer into a second store.
        let (_d2, other) = store();
        let size = data.len() as u64;
        other.write_incoming(&sha, size, 0, &data[..CHUNK]).unwrap();
        other.write_incoming(&sha, size, CHUNK as u64, &data[CHUNK..2 * CHUNK]).unwrap();
        assert_eq!(other.incoming_len(&sha).unwrap(), 2 * CHUNK as u64);
        // A power cut tore the next write: half a chunk on disk.
        let path = other.incoming_path(&sha);
        let mut f = fs::OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[0u8; 1000]).unwrap();
        assert_eq!(other.incoming_len(&sha).unwrap(), 2 * CHUNK as u64, "only whole chunks count");
        let other = Blobs::open(&_d2.path().join("blobs"), Keys::derive(&[9; 32])).unwrap();
        assert_eq!(other.incoming_len(&sha).unwrap(), 2 * CHUNK as u64, "survives a restart");
        other.write_incoming(&sha, size, 2 * CHUNK as u64, &data[2 * CHUNK..3 * CHUNK]).unwrap();
        other.write_incoming(&sha, size, 3 * CHUNK as u64, &data[3 * CHUNK..]).unwrap();
        other.finish_incoming(&sha).unwrap();
        assert_eq!(other.read(&r.sha256).unwrap(), data);
        // Bytes that do not hash to the name are discarded.
        let wrong = [7u8; 32];
        other.write_incoming(&wrong, 5, 0, b"hello").unwrap();
        assert!(other.finish_incoming(&wrong).is_err());
        assert_eq!(other.incoming_len(&wrong).unwrap(), 0);
        assert!(!other.exists(&wrong));
    }

    #[test]
    fn over_limit_blobs_are_refused_and_leave_nothing() {
        let (d, blobs) = store();
        let data = vec![1u8; CHUNK * 2];
        assert!(matches!(blobs.put(&mut data.as_slice(), 1000), Err(StoreError::BlobTooLarge { limit: 1000 })));
        assert_eq!(fs::read_dir(d.path().join("blobs/tmp")).unwrap().count(), 0);
    }
}
