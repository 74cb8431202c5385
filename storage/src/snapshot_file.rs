//! The current snapshot as one file, `<data dir>/snapshots/current`: a line of
//! JSON [`SnapshotMeta`], then the snapshot bytes. It is replaced atomically
//! (temp file, fsync, rename, fsync of the dir), so it is whole or absent.

use std::fs::{self, File};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use crate::durable::{decode, encode};
use crate::error::OpenError;
use crate::types::SnapshotMeta;

const CURRENT: &str = "current";
const TEMP: &str = "current.tmp";

/// A snapshot as stored: its meta and its bytes.
pub(crate) type Stored = (SnapshotMeta, Vec<u8>);

pub(crate) struct SnapshotFile {
    dir: PathBuf,
    /// Meta of the file on disk; the lock also serializes writers.
    current: Mutex<Option<SnapshotMeta>>,
}

impl SnapshotFile {
    /// Opens `dir` (creating it) and returns the current snapshot, if any.
    pub(crate) fn open(dir: &Path) -> Result<(Self, Option<Stored>), OpenError> {
        fs::create_dir_all(dir).map_err(|e| OpenError::from_io(dir, e))?;
        // A temp file is a write that crashed before its rename: never current.
        match fs::remove_file(dir.join(TEMP)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(OpenError::from_io(dir, e)),
            _ => {}
        }
        let current = read(&dir.join(CURRENT)).map_err(|e| match e.kind() {
            io::ErrorKind::InvalidData => OpenError::corrupt(dir.join(CURRENT), e),
            _ => OpenError::from_io(dir, e),
        })?;
        let file = Self { dir: dir.to_owned(), current: Mutex::new(current.as_ref().map(|(meta, _)| meta.clone())) };
        Ok((file, current))
    }

    /// Makes `data` the current snapshot, durably, unless a newer one already is.
    pub(crate) fn save(&self, meta: &SnapshotMeta, data: &[u8]) -> io::Result<()> {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if matches!(&*current, Some(cur) if cur.last_log_id > meta.last_log_id) {
            return Ok(());
        }
        let temp = self.dir.join(TEMP);
        let mut file = File::create(&temp)?;
        file.write_all(&encode(meta)?)?;
        file.write_all(b"\n")?;
        file.write_all(data)?;
        file.sync_all()?;
        fs::rename(&temp, self.dir.join(CURRENT))?;
        File::open(&self.dir)?.sync_all()?;
        *current = Some(meta.clone());
        Ok(())
    }

    /// Needs no lock: the rename makes a reader see the old file or the new one.
    pub(crate) fn load(&self) -> io::Result<Option<Stored>> {
        read(&self.dir.join(CURRENT))
    }
}

fn read(path: &Path) -> io::Result<Option<Stored>> {
    let mut bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let Some(newline) = bytes.iter().position(|b| *b == b'\n') else {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "snapshot file has no header line"));
    };
    let meta = decode(&bytes[..newline])?;
    let data = bytes.split_off(newline + 1);
    Ok(Some((meta, data)))
}
