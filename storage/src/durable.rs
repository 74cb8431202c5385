//! The sled database (the state machine's tree and the store id) with a real
//! durability point.
//!
//! sled's `flush()` ends in `sync_file_range`, which does not flush the disk's
//! write cache. [`DurableDb::sync`] follows it with `fdatasync` on sled's data
//! file (and on any blob files sled wrote for large values, which it never
//! syncs itself).

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::{self, File};
use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::error::OpenError;
use crate::store_id;

/// A cheap handle to the one sled database of a data dir.
#[derive(Clone)]
pub(crate) struct DurableDb(Arc<Inner>);

struct Inner {
    db: sled::Db,
    /// Kept open so `sync` can `fdatasync` sled's data file.
    data_file: File,
    dir: PathBuf,
    /// Blob files already synced; sled creates each once and never rewrites it.
    synced_blobs: Mutex<HashSet<OsString>>,
}

impl DurableDb {
    /// Opens (or creates) sled at `<dir>/raft`.
    pub(crate) fn open(dir: &Path) -> Result<Self, OpenError> {
        let path = dir.join("raft");
        fs::create_dir_all(&path).map_err(|e| OpenError::from_io(&path, e))?;
        probe_writable(&path)?;

        let db = open_sled(&path)?;
        let data_file = File::open(path.join("db")).map_err(|e| OpenError::from_io(&path, e))?;
        // Make the files sled just created (and their directory entries) durable.
        let made_durable = data_file
            .sync_all()
            .and_then(|()| File::open(path.join("conf"))?.sync_all())
            .and_then(|()| sync_dir(&path))
            .and_then(|()| sync_dir(dir));
        made_durable.map_err(|e| OpenError::from_io(&path, e))?;

        let db = Self(Arc::new(Inner { db, data_file, dir: path, synced_blobs: Mutex::new(HashSet::new()) }));
        store_id::check(&db)?;
        Ok(db)
    }

    pub(crate) fn db(&self) -> &sled::Db {
        &self.0.db
    }

    /// `<data dir>/raft`, for error messages.
    pub(crate) fn path(&self) -> &Path {
        &self.0.dir
    }

    /// Makes every write before this call durable: sled flush, then fdatasync.
    pub(crate) fn sync(&self) -> io::Result<()> {
        self.0.db.flush().map_err(|e| io::Error::other(format!("sled flush: {e}")))?;
        self.0.data_file.sync_data()?;
        self.sync_new_blobs()
    }

    /// sled stores values over segment_size/4 (128 KiB) as separate blob files
    /// and only writes them; sync the ones we have not synced yet.
    fn sync_new_blobs(&self) -> io::Result<()> {
        let blobs = self.0.dir.join("blobs");
        let mut synced = self.0.synced_blobs.lock().unwrap_or_else(PoisonError::into_inner);
        let mut present = HashSet::new();
        let mut any_new = false;
        for entry in fs::read_dir(&blobs)? {
            let entry = entry?;
            let name = entry.file_name();
            if !synced.contains(&name) {
                match File::open(entry.path()).and_then(|f| f.sync_data()) {
                    Ok(()) => any_new = true,
                    // sled removed it meanwhile: nothing left to make durable.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                }
            }
            present.insert(name);
        }
        *synced = present;
        if any_new {
            sync_dir(&blobs)?;
        }
        Ok(())
    }
}

/// Fails early, with a clear message, on a dir we cannot create files in.
fn probe_writable(path: &Path) -> Result<(), OpenError> {
    let probe = path.join(".write-probe");
    File::create(&probe).and_then(|_| fs::remove_file(&probe)).map_err(|e| OpenError::from_io(path, e))
}

/// How long opening waits for sled's lock file. sled releases it lazily when
/// a `Db` is dropped (its background threads let go of the file a moment
/// later), so reopening a dir this process just closed can briefly find it
/// locked; another live process keeps it locked and is reported after this.
const LOCK_WAIT: Duration = Duration::from_secs(2);

/// Opens sled, turning its errors and the panics it raises on some corrupt
/// files into an [`OpenError`].
fn open_sled(path: &Path) -> Result<sled::Db, OpenError> {
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        match open_sled_once(path) {
            Err(OpenError::InUse { .. }) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            other => return other,
        }
    }
}

fn open_sled_once(path: &Path) -> Result<sled::Db, OpenError> {
    // No periodic flush: nothing relies on it (the log is not in sled, and
    // where the state machine needs a durability point, `sync` flushes), and
    // its background `sync_file_range`s compete with the log's fdatasyncs.
    let config = sled::Config::new().path(path).flush_every_ms(None);
    let opened = panic::catch_unwind(AssertUnwindSafe(|| config.open())).map_err(|panic| {
        let what = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("sled panicked while reading it");
        OpenError::corrupt(path, what)
    })?;
    opened.map_err(|e| match e {
        sled::Error::Io(io) if io.to_string().contains("could not acquire lock") => {
            OpenError::InUse { path: path.to_owned(), reason: io.to_string() }
        }
        sled::Error::Io(io) => OpenError::from_io(path, io),
        other => OpenError::corrupt(path, other),
    })
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Runs blocking sled or file work off the async runtime's workers.
pub(crate) async fn blocking<T, F>(work: F) -> io::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> io::Result<T> + Send + 'static,
{
    tokio::task::spawn_blocking(work).await.map_err(|e| io::Error::other(format!("storage task failed: {e}")))?
}

/// Reads and decodes one JSON value; a value that does not decode is an error.
pub(crate) fn get_json<T: serde::de::DeserializeOwned>(tree: &sled::Tree, key: &[u8]) -> io::Result<Option<T>> {
    match tree.get(key)? {
        None => Ok(None),
        Some(bytes) => decode(&bytes).map(Some),
    }
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> io::Result<T> {
    serde_json::from_slice(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

pub(crate) fn encode<T: serde::Serialize>(value: &T) -> io::Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// sled writes a value this large to its own blob file, which `sync`
    /// must find and fdatasync.
    #[test]
    fn sync_covers_blob_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = DurableDb::open(dir.path()).expect("open");
        db.db().insert("big", vec![7u8; 300 * 1024]).expect("insert");
        db.sync().expect("sync");
        let synced = db.0.synced_blobs.lock().expect("lock").len();
        assert!(synced >= 1, "no blob file was synced");
    }
}
