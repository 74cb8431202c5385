//! The Raft log, vote and committed index in two sled trees: `log` (big-endian
//! index -> JSON entry, so key order is index order) and `raft_meta`.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader, StorageIOError};

use crate::durable::{blocking, decode, encode, get_json, DurableDb, Flusher};
use crate::error::OpenError;
use crate::types::{Entry, LogId, StorageError, TypeConfig, Vote};

const VOTE: &[u8] = b"vote";
const COMMITTED: &[u8] = b"committed";
const LAST_PURGED: &[u8] = b"last_purged";

/// The Raft log storage. Clones share everything; a clone is the log reader.
#[derive(Clone)]
pub struct LogStore {
    db: DurableDb,
    log: sled::Tree,
    meta: sled::Tree,
    flusher: Arc<Flusher>,
}

impl LogStore {
    pub(crate) fn open(db: DurableDb) -> Result<Self, OpenError> {
        let corrupt = |e: &dyn std::fmt::Display| OpenError::corrupt(db.path(), e);
        let log = db.db().open_tree("log").map_err(|e| corrupt(&e))?;
        let meta = db.db().open_tree("raft_meta").map_err(|e| corrupt(&e))?;
        // Refuse to start on unreadable metadata rather than fail at first use.
        get_json::<Vote>(&meta, VOTE).map_err(|e| corrupt(&format!("vote: {e}")))?;
        get_json::<LogId>(&meta, COMMITTED).map_err(|e| corrupt(&format!("committed: {e}")))?;
        get_json::<LogId>(&meta, LAST_PURGED).map_err(|e| corrupt(&format!("last purged log id: {e}")))?;
        last_entry_id(&log).map_err(|e| corrupt(&format!("last log entry: {e}")))?;

        let flusher =
            Flusher::start(db.clone()).map_err(|source| OpenError::Io { path: db.path().to_owned(), source })?;
        Ok(Self { db, log, meta, flusher: Arc::new(flusher) })
    }

    /// How many fdatasyncs the store has done: a metric; appends per fsync
    /// show group commit at work.
    pub fn fsync_count(&self) -> u64 {
        self.db.sync_count()
    }

    async fn read_meta<T>(&self, key: &'static [u8]) -> io::Result<Option<T>>
    where
        T: serde::de::DeserializeOwned + Send + 'static,
    {
        let meta = self.meta.clone();
        blocking(move || get_json(&meta, key)).await
    }
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn key_bound(bound: Bound<&u64>) -> Bound<[u8; 8]> {
    match bound {
        Bound::Included(i) => Bound::Included(index_key(*i)),
        Bound::Excluded(i) => Bound::Excluded(index_key(*i)),
        Bound::Unbounded => Bound::Unbounded,
    }
}

fn last_entry_id(log: &sled::Tree) -> io::Result<Option<LogId>> {
    match log.last()? {
        None => Ok(None),
        Some((_, bytes)) => Ok(Some(decode::<Entry>(&bytes)?.log_id)),
    }
}

/// Removes every key of `log` in `range` in one batch.
fn remove_range(log: &sled::Tree, range: (Bound<[u8; 8]>, Bound<[u8; 8]>)) -> io::Result<()> {
    let mut batch = sled::Batch::default();
    for key in log.range(range).keys() {
        batch.remove(key?);
    }
    Ok(log.apply_batch(batch)?)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let bounds = (key_bound(range.start_bound()), key_bound(range.end_bound()));
        let log = self.log.clone();
        let read = blocking(move || {
            log.range(bounds).values().map(|value| decode::<Entry>(&value?)).collect::<io::Result<Vec<_>>>()
        });
        read.await.map_err(|e| StorageIOError::read_logs(&e).into())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id =
            self.read_meta::<LogId>(LAST_PURGED).await.map_err(|e| StorageIOError::read_logs(&e))?;
        let log = self.log.clone();
        let last = blocking(move || last_entry_id(&log)).await.map_err(|e| StorageIOError::read_logs(&e))?;
        Ok(LogState { last_log_id: last.or(last_purged_log_id), last_purged_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    /// Durable before it returns: a vote must never be forgotten.
    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let bytes = encode(vote).map_err(|e| StorageIOError::write_vote(&e))?;
        let (meta, db) = (self.meta.clone(), self.db.clone());
        blocking(move || {
            meta.insert(VOTE, bytes)?;
            db.sync()
        })
        .await
        .map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        let vote = self.read_meta(VOTE).await;
        vote.map_err(|e| StorageIOError::read_vote(&e).into())
    }

    // Not synced: a lost committed index only means re-applying from the
    // state machine's last applied id, which the log still holds.
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        let meta = self.meta.clone();
        let saved = blocking(move || {
            match committed {
                Some(id) => meta.insert(COMMITTED, encode(&id)?)?,
                None => meta.remove(COMMITTED)?,
            };
            Ok(())
        });
        saved.await.map_err(|e| StorageIOError::write(&e).into())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let committed = self.read_meta(COMMITTED).await;
        committed.map_err(|e| StorageIOError::read(&e).into())
    }

    /// Writes the entries (readable once this returns) and hands `callback`
    /// to the flusher, which calls it after the next fdatasync.
    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = sled::Batch::default();
        for entry in entries {
            let bytes = encode(&entry).map_err(|e| StorageIOError::write_log_entry(entry.log_id, &e))?;
            batch.insert(&index_key(entry.log_id.index), bytes);
        }
        let log = self.log.clone();
        blocking(move || Ok(log.apply_batch(batch)?)).await.map_err(|e| StorageIOError::write_logs(&e))?;

        if let Err(callback) = self.flusher.submit(callback) {
            let e = io::Error::other("the raft log flusher has stopped");
            let err = StorageIOError::write_logs(&e);
            callback.log_io_completed(Err(e));
            return Err(err.into());
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let log = self.log.clone();
        let from = (Bound::Included(index_key(log_id.index)), Bound::Unbounded);
        let removed = blocking(move || remove_range(&log, from));
        removed.await.map_err(|e| StorageIOError::write_logs(&e).into())
    }

    /// Records the purge point first, so a crash midway leaves extra entries
    /// below it, never a hole above it.
    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let bytes = encode(&log_id).map_err(|e| StorageIOError::write_logs(&e))?;
        let (log, meta) = (self.log.clone(), self.meta.clone());
        let upto = (Bound::Unbounded, Bound::Included(index_key(log_id.index)));
        let purged = blocking(move || {
            meta.insert(LAST_PURGED, bytes)?;
            remove_range(&log, upto)
        });
        purged.await.map_err(|e| StorageIOError::write_logs(&e).into())
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use openraft::storage::RaftLogStorageExt as _;
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;

    fn blank(index: u64) -> Entry {
        Entry { log_id: LogId::new(CommittedLeaderId::new(1, 0), index), payload: EntryPayload::Blank }
    }

    /// Holds the flusher inside its sync: appends must become readable, but no
    /// callback may fire; once released, all of them share at most two syncs
    /// (the one already started and one for everything queued behind it).
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    // Holding the sync gate across awaits is the point; only this test's own
    // future holds it, and the appends run on other tasks.
    #[allow(clippy::await_holding_lock)]
    async fn callbacks_wait_for_fdatasync_and_share_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (log, _sm) = crate::open(dir.path()).expect("open");
        let before = log.fsync_count();
        let gate = log.db.hold_syncs();

        let appends: Vec<_> = (1..=10)
            .map(|i| {
                let mut store = log.clone();
                tokio::spawn(async move { store.blocking_append([blank(i)]).await })
            })
            .collect();

        let mut reader = log.clone();
        let deadline = Instant::now() + Duration::from_secs(10);
        while reader.try_get_log_entries(1..=10).await.expect("read").len() < 10 {
            assert!(Instant::now() < deadline, "appends did not become readable");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // A grace period for a wrongly early callback to show up.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(appends.iter().all(|a| !a.is_finished()), "a callback fired before fdatasync");
        assert_eq!(log.fsync_count(), before);

        drop(gate);
        for append in appends {
            append.await.expect("task").expect("append");
        }
        let used = log.fsync_count() - before;
        assert!((1..=2).contains(&used), "10 queued appends used {used} syncs");
    }
}
