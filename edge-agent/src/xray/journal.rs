//! The exposure journal: what the X-ray service meant to do, on disk before it does it.
//!
//! The intent is written (and fsynced) before the operator's confirm reaches the safety
//! controller, so before an `EXPOSE` can be sent; the delivered dose is added as soon as
//! the generator reports it; the entry goes once the attempt is in the case record, and
//! only that attempt's entry (the service starts no new attempt while one is unrecorded). An
//! agent killed anywhere in between finds the entry when it starts again and records what
//! it knows: an exposure that may have started and was stopped by the generator's
//! watchdog, or one that was delivered but whose image was never stored.
//!
//! One attempt at a time (the unit has one tube), so the journal is one small file,
//! replaced atomically (write, fsync, rename, fsync the directory). It holds ids and
//! device values, no patient data.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// An exposure attempt in flight.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Entry {
    /// The attempt's id (also the series' UID source).
    pub(crate) exposure_id: String,
    /// The case it is for.
    pub(crate) case_id: String,
    /// Who pressed the confirm.
    pub(crate) user: String,
    /// `HAND`, `PA`, `L`.
    pub(crate) body_part: String,
    pub(crate) view: String,
    pub(crate) laterality: String,
    /// The technique asked.
    pub(crate) kv_x10: u16,
    pub(crate) mas_x100: u32,
    pub(crate) ms: u16,
    /// When the confirm was pressed (ms since the epoch).
    pub(crate) pressed_at: i64,
    /// The press's token: the controller's reports of the exposure carry it.
    #[serde(default)]
    pub(crate) token: u64,
    /// The detector frame the exposure goes into.
    #[serde(default)]
    pub(crate) frame_id: u32,
    /// What the generator reported delivering, once it has.
    #[serde(default)]
    pub(crate) delivered: Option<Delivered>,
}

/// A completed exposure's figures, as the generator reported them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub(crate) struct Delivered {
    pub(crate) kv_x10: u16,
    pub(crate) mas_x100: u32,
    pub(crate) ms: u16,
    pub(crate) dap_x100: u32,
}

/// The journal file in the agent's data directory.
#[derive(Debug, Clone)]
pub(crate) struct Journal {
    path: PathBuf,
}

impl Journal {
    pub(crate) fn new(dir: &Path) -> Journal {
        Journal { path: dir.join("xray-journal.json") }
    }

    /// The entry left by an attempt that did not finish, if any.
    pub(crate) fn read(&self) -> std::io::Result<Option<Entry>> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("the X-ray journal {} is damaged ({e})", self.path.display()),
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes `entry` durably, replacing what was there.
    pub(crate) fn write(&self, entry: &Entry) -> std::io::Result<()> {
        let tmp = self.path.with_extension("json.tmp");
        let mut f = File::create(&tmp)?;
        f.write_all(&serde_json::to_vec(entry).map_err(std::io::Error::other)?)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, &self.path)?;
        sync_dir(&self.path)
    }

    /// Moves a damaged journal aside (kept for a person to inspect) so the unit stays usable.
    pub(crate) fn set_aside(&self) -> std::io::Result<PathBuf> {
        let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
        let to = self.path.with_extension(format!("damaged-{ms}.json"));
        std::fs::rename(&self.path, &to)?;
        sync_dir(&self.path)?;
        Ok(to)
    }

    /// Removes the entry once its attempt is in the case record.
    pub(crate) fn clear(&self) -> std::io::Result<()> {
        match std::fs::remove_file(&self.path) {
            Ok(()) => sync_dir(&self.path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }
}

fn sync_dir(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(dir) => File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_survives_until_cleared_and_a_damaged_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::new(dir.path());
        assert_eq!(j.read().unwrap(), None);
        let mut e = Entry {
            exposure_id: "x".into(),
            case_id: "c".into(),
            user: "ana".into(),
            body_part: "HAND".into(),
            view: "PA".into(),
            laterality: "L".into(),
            kv_x10: 550,
            mas_x100: 250,
            ms: 25,
            pressed_at: 1,
            token: 7,
            frame_id: 1,
            delivered: None,
        };
        j.write(&e).unwrap();
        e.delivered = Some(Delivered { kv_x10: 550, mas_x100: 250, ms: 25, dap_x100: 31 });
        j.write(&e).unwrap();
        assert_eq!(Journal::new(dir.path()).read().unwrap(), Some(e));
        j.clear().unwrap();
        assert_eq!(j.read().unwrap(), None);
        std::fs::write(dir.path().join("xray-journal.json"), b"{").unwrap();
        assert!(j.read().unwrap_err().to_string().contains("damaged"));
        // Set aside, never written over: the evidence stays and the unit is usable again.
        let kept = j.set_aside().unwrap();
        assert_eq!(std::fs::read(&kept).unwrap(), b"{");
        assert_eq!(j.read().unwrap(), None);
    }
}
