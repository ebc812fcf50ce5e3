//! The store's key: one 256-bit secret in a key file, from which every cipher key is derived.
//!
//! Sealing the key file to the van's TPM comes with the device image; until then it is a
//! file readable by the agent's user only.

use std::fs;
use std::io::Write;
use std::path::Path;

use hkdf::Hkdf;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::error::OpenError;

/// Keys derived from the master key, one per purpose.
#[derive(Clone)]
pub(crate) struct Keys {
    /// SQLCipher's raw key.
    pub(crate) sqlcipher: [u8; 32],
    /// XChaCha20-Poly1305 key for blob contents.
    pub(crate) blob_cipher: [u8; 32],
    /// HMAC key naming blob files, so file names do not reveal content hashes.
    pub(crate) blob_names: [u8; 32],
    /// A fingerprint of the master key, stored beside the database to tell "wrong key"
    /// from "damaged file". It reveals nothing about the key.
    pub(crate) key_id: String,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys").field("key_id", &self.key_id).finish_non_exhaustive()
    }
}

impl Keys {
    /// Reads and checks the key file: 64 hex digits, readable by its owner only.
    pub(crate) fn load(path: &Path) -> Result<Keys, OpenError> {
        let master = read_key_file(path).map_err(|e| match e {
            OpenError::Key { path, reason } if !path.exists() => OpenError::Key {
                reason: format!("{reason}; create one with `edge-agent gen-key {}`", path.display()),
                path,
            },
            other => other,
        })?;
        Ok(Keys::derive(&master))
    }

    pub(crate) fn derive(master: &[u8; 32]) -> Keys {
        let hk = Hkdf::<Sha256>::new(Some(b"medvan-store-v1"), master);
        let derive = |label: &[u8]| {
            let mut out = [0u8; 32];
            // 32 bytes is far below HKDF-SHA256's output limit.
            hk.expand(label, &mut out).expect("32 bytes is a valid HKDF output length");
            out
        };
        let id = derive(b"key-id");
        Keys {
            sqlcipher: derive(b"sqlcipher"),
            blob_cipher: derive(b"blob-cipher"),
            blob_names: derive(b"blob-names"),
            key_id: hex::encode(&id[..16]),
        }
    }

    /// The file name of a blob, from its content hash.
    pub(crate) fn blob_name(&self, sha256: &[u8; 32]) -> String {
        let mut mac =
            <Hmac<Sha256> as KeyInit>::new_from_slice(&self.blob_names).expect("HMAC takes keys of any length");
        mac.update(sha256);
        hex::encode(mac.finalize().into_bytes())
    }
}

/// Reads a key file: 64 hex digits, readable by its owner only (the hub keeps its key the
/// same way). A missing file is reported as unreadable; callers add which command makes one.
pub fn read_key_file(path: &Path) -> Result<[u8; 32], OpenError> {
    let err = |reason: String| OpenError::Key { path: path.to_owned(), reason };
    let meta = fs::metadata(path).map_err(|e| err(format!("cannot read it ({e})")))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(err(format!(
                "is readable by other users (mode {mode:04o}); run `chmod 600 {}`",
                path.display()
            )));
        }
    }
    let text = fs::read_to_string(path).map_err(|e| err(format!("cannot read it ({e})")))?;
    let bytes =
        hex::decode(text.trim()).map_err(|_| err("must hold 64 hexadecimal characters (a 256-bit key)".into()))?;
    bytes.try_into().map_err(|_| err("must hold 64 hexadecimal characters (a 256-bit key)".into()))
}

/// Writes a new random key file readable by its owner only. Refuses to overwrite one.
pub fn generate_key_file(path: &Path) -> std::io::Result<()> {
    let mut key = [0u8; 32];
    rand::fill(&mut key);
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    writeln!(f, "{}", hex::encode(key))?;
    f.sync_all()?;
    // Losing the key loses every case: make its directory entry durable too.
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    fs::File::open(parent)?.sync_all()
}

/// Keys an SQLCipher connection with a raw 256-bit key and makes it read its first page,
/// one connection at a time in the process: SQLCipher sets up its codec on the first use
/// of a key, and connections keyed at the same instant on several threads have been seen
/// to fail with "An error occurred with PRAGMA key". Every SQLCipher database of the
/// process (the van's store, the hub's) is keyed through here.
pub fn apply_sqlcipher_key(conn: &rusqlite::Connection, key: &[u8; 32]) -> rusqlite::Result<()> {
    static KEYING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = KEYING.lock().unwrap_or_else(|p| p.into_inner());
    conn.execute_batch(&format!("PRAGMA key = \"x'{}'\";", hex::encode(key)))?;
    // The codec is set up on the first read; a wrong key shows here too (callers check).
    let _ = conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get::<_, i64>(0));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        generate_key_file(&path).unwrap();
        let keys = Keys::load(&path).unwrap();
        assert_eq!(keys.key_id.len(), 32);
        assert!(generate_key_file(&path).is_err(), "never overwrites a key");

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
            let err = Keys::load(&path).unwrap_err().to_string();
            assert!(err.contains("chmod 600"), "{err}");
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        }
        fs::write(&path, "not hex").unwrap();
        assert!(Keys::load(&path).unwrap_err().to_string().contains("64 hexadecimal"));
        assert!(Keys::load(&dir.path().join("missing")).unwrap_err().to_string().contains("gen-key"));
    }
}
