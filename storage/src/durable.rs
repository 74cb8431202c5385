//! The sled database with a real durability point, and the group-commit
//! flusher that acknowledges appended log entries only after it.
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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};

use openraft::storage::LogFlushed;

use crate::error::OpenError;
use crate::store_id;
use crate::types::TypeConfig;

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
    syncs: AtomicU64,
    /// Lets unit tests hold the flusher in the middle of a sync.
    #[cfg(test)]
    gate: Mutex<()>,
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

        let db = Self(Arc::new(Inner {
            db,
            data_file,
            dir: path,
            synced_blobs: Mutex::new(HashSet::new()),
            syncs: AtomicU64::new(0),
            #[cfg(test)]
            gate: Mutex::new(()),
        }));
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
        #[cfg(test)]
        let _gate = self.0.gate.lock().unwrap_or_else(PoisonError::into_inner);
        self.0.db.flush().map_err(|e| io::Error::other(format!("sled flush: {e}")))?;
        self.0.data_file.sync_data()?;
        self.sync_new_blobs()?;
        self.0.syncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// How many `sync` calls completed.
    pub(crate) fn sync_count(&self) -> u64 {
        self.0.syncs.load(Ordering::Relaxed)
    }

    #[cfg(test)]
    pub(crate) fn hold_syncs(&self) -> std::sync::MutexGuard<'_, ()> {
        self.0.gate.lock().unwrap_or_else(PoisonError::into_inner)
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

/// Opens sled, turning its errors and the panics it raises on some corrupt
/// files into an [`OpenError`].
fn open_sled(path: &Path) -> Result<sled::Db, OpenError> {
    let config = sled::Config::new().path(path);
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

/// The group-commit flusher: a thread that acknowledges appended entries once
/// they are durable, one `sync` for everything queued meanwhile.
pub(crate) struct Flusher {
    tx: Option<mpsc::Sender<LogFlushed<TypeConfig>>>,
    thread: Option<JoinHandle<()>>,
}

impl Flusher {
    pub(crate) fn start(db: DurableDb) -> io::Result<Self> {
        let (tx, rx) = mpsc::channel();
        let thread = thread::Builder::new().name("raft-log-flusher".into()).spawn(move || flush_loop(&db, &rx))?;
        Ok(Self { tx: Some(tx), thread: Some(thread) })
    }

    /// Queues `callback` for the next sync; gives it back if the flusher is gone.
    pub(crate) fn submit(&self, callback: LogFlushed<TypeConfig>) -> Result<(), LogFlushed<TypeConfig>> {
        match &self.tx {
            Some(tx) => tx.send(callback).map_err(|e| e.0),
            None => Err(callback),
        }
    }
}

impl Drop for Flusher {
    // Closing the channel lets the thread finish what is queued; joining it
    // releases its handle on the db, so the dir can be reopened right away.
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("raft log flusher thread panicked");
            }
        }
    }
}

fn flush_loop(db: &DurableDb, rx: &mpsc::Receiver<LogFlushed<TypeConfig>>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        batch.extend(rx.try_iter());
        match db.sync() {
            Ok(()) => batch.into_iter().for_each(|cb| cb.log_io_completed(Ok(()))),
            Err(e) => {
                tracing::error!(path = %db.path().display(), "fdatasync of the raft log failed: {e}");
                for cb in batch {
                    cb.log_io_completed(Err(io::Error::new(e.kind(), e.to_string())));
                }
            }
        }
    }
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
