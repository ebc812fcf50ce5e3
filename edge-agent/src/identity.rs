//! The van's identity on disk: the pinned fleet CA, the device certificate and its key,
//! readable by the agent only.
//!
//! A renewal replaces the certificate and the key together. Both are written complete as
//! `*.next` files before either is renamed into place, so a power cut between the two
//! renames is finished at the next load instead of leaving a key that does not match its
//! certificate.

use std::path::Path;

use anyhow::Context;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// What the van presents to the hub.
#[derive(Debug)]
pub struct Identity {
    /// The fleet CA (pinned).
    pub ca: CertificateDer<'static>,
    /// This van's certificate.
    pub cert: CertificateDer<'static>,
    /// This van's key.
    pub key: PrivateKeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity { ca: self.ca.clone(), cert: self.cert.clone(), key: self.key.clone_key() }
    }
}

impl Identity {
    /// When the certificate starts and stops being valid (unix seconds).
    pub fn validity(&self) -> anyhow::Result<(i64, i64)> {
        Ok(sync_quic::identity::validity(&self.cert)?)
    }
}

const KEY: &str = "device.key";
const CERT: &str = "device.der";
const CA: &str = "ca.der";

/// Loads the identity in `dir`, finishing an interrupted renewal first; `None` if the van
/// was never enrolled.
pub fn load(dir: &Path) -> anyhow::Result<Option<Identity>> {
    finish_renewal(dir)?;
    let read = |name: &str| std::fs::read(dir.join(name));
    match (read(CA), read(CERT), read(KEY)) {
        (Ok(ca), Ok(cert), Ok(key)) => {
            Ok(Some(Identity { ca: ca.into(), cert: cert.into(), key: PrivatePkcs8KeyDer::from(key).into() }))
        }
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
            Err(e).with_context(|| format!("Failed to read the van's identity in {}", dir.display()))
        }
    }
}

/// Stores a new identity (first enrolment, re-enrolment or renewal) in `dir`.
pub fn store(dir: &Path, identity: &Identity) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("Failed to create {}", dir.display()))?;
    // The pair is staged whole, then marked complete; only a complete pair is installed.
    let _ = std::fs::remove_file(dir.join(COMPLETE));
    write_private(&dir.join(format!("{KEY}.next")), identity.key.secret_der())?;
    write_private(&dir.join(format!("{CERT}.next")), identity.cert.as_ref())?;
    write_private(&dir.join(format!("{CA}.next")), identity.ca.as_ref())?;
    write_private(&dir.join(COMPLETE), b"")?;
    finish_renewal(dir)
}

/// Marks a staged identity as complete: written whole and synced.
const COMPLETE: &str = "next.complete";

/// Installs a staged identity if it was staged whole; a partial one (the power went while
/// it was written) is discarded, and the current identity stays as it was.
fn finish_renewal(dir: &Path) -> anyhow::Result<()> {
    let staged = [(format!("{KEY}.next"), KEY), (format!("{CERT}.next"), CERT), (format!("{CA}.next"), CA)];
    if dir.join(COMPLETE).exists() {
        // Any order: a rename interrupted here is finished at the next load, since the
        // marker goes last.
        for (next, name) in &staged {
            let next = dir.join(next);
            if next.exists() {
                std::fs::rename(&next, dir.join(name))
                    .with_context(|| format!("Failed to install {}", next.display()))?;
            }
        }
        std::fs::remove_file(dir.join(COMPLETE))?;
    } else {
        for (next, _) in &staged {
            let _ = std::fs::remove_file(dir.join(next));
        }
    }
    if dir.exists() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("Failed to write {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("Failed to write {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interrupted_renewal_is_finished_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let id = Identity { ca: vec![1].into(), cert: vec![2].into(), key: PrivatePkcs8KeyDer::from(vec![3]).into() };
        store(dir.path(), &id).unwrap();
        // A renewal staged its files whole, then the power went before the renames.
        std::fs::write(dir.path().join("device.key.next"), [4]).unwrap();
        std::fs::write(dir.path().join("device.der.next"), [5]).unwrap();
        std::fs::write(dir.path().join("next.complete"), []).unwrap();
        let loaded = load(dir.path()).unwrap().unwrap();
        assert_eq!(loaded.key.secret_der(), [4]);
        assert_eq!(loaded.cert.as_ref(), [5]);
        // A renewal cut off while staging: the key is new, the certificate never came. The
        // working pair stays, and the stray file goes.
        std::fs::write(dir.path().join("device.key.next"), [6]).unwrap();
        let loaded = load(dir.path()).unwrap().unwrap();
        assert_eq!(loaded.key.secret_der(), [4]);
        assert_eq!(loaded.cert.as_ref(), [5]);
        assert!(!dir.path().join("device.key.next").exists());
        assert!(load(&dir.path().join("never-enrolled")).unwrap().is_none());
    }
}
