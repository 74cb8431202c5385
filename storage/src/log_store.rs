//! The Raft log, vote and committed id: on disk in the segment files of
//! `wal` (written through `wal_writer`), indexed in memory.
//!
//! Every operation takes the writer first, then updates memory, then writes
//! its record, so the file sees them in the order openraft made them. An
//! append is readable from memory before its `fdatasync`, and openraft's
//! callback fires after it; votes return once theirs is durable. Memory
//! holds every entry's id and, once written, where its frame is; only the
//! newest [`CACHE`] entries stay decoded (after a restart, the few replay
//! decoded and what was appended since), older ones are read back from
//! their segment.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader, StorageIOError};

use crate::error::OpenError;
use crate::types::{Entry, LogId, StorageError, TypeConfig, Vote};
use crate::wal::{self, Location, Replayed};
use crate::wal_writer::{Carried, Op, WalWriter};

/// How many of the newest entries stay decoded in memory: replication and
/// apply read just behind the head of the log.
pub(crate) const CACHE: usize = 1024;

/// How many of them a start decodes (and so checks): those apply and
/// replication ask for first; the cache then fills with what is appended.
/// Decoding all [`CACHE`] at open (1,024 batches of commands) was a third
/// of a start's work with 10,000 users.
pub(crate) const DECODED_AT_OPEN: usize = 64;

/// The Raft log storage. Clones share everything; a clone is the log reader.
#[derive(Clone)]
pub struct LogStore(Arc<Shared>);

struct Shared {
    mem: Arc<Mutex<Mem>>,
    writer: WalWriter,
}

struct Mem {
    vote: Option<Vote>,
    committed: Option<LogId>,
    purged: Option<LogId>,
    /// Every entry: contiguous (each index one more than the one before),
    /// with where it is on disk once the writer wrote it.
    ids: VecDeque<(LogId, Option<Location>)>,
    /// The newest entries, decoded: `cache[i]` belongs to
    /// `ids[ids.len() - cache.len() + i]`.
    cache: VecDeque<Entry>,
}

/// An entry as a read finds it.
enum Found {
    Cached(Entry),
    OnDisk(LogId, Location),
}

impl Mem {
    fn last_log_id(&self) -> Option<LogId> {
        self.ids.back().map(|(id, _)| *id).or(self.purged)
    }

    fn push(&mut self, entry: Entry) {
        self.ids.push_back((entry.log_id, None));
        self.cache.push_back(entry);
    }

    /// Drops the entries from index `from` on.
    fn truncate(&mut self, from: u64) {
        while self.ids.back().is_some_and(|(id, _)| id.index >= from) {
            self.ids.pop_back();
            self.cache.pop_back();
        }
    }

    /// Drops the entries up to index `upto`.
    fn purge(&mut self, upto: u64) {
        while self.ids.front().is_some_and(|(id, _)| id.index <= upto) {
            self.ids.pop_front();
        }
        while self.cache.len() > self.ids.len() {
            self.cache.pop_front();
        }
    }

    /// Records where the writer put entries, then lets decoded entries
    /// beyond the newest [`CACHE`] go once they can be read back.
    fn located(&mut self, located: Vec<(LogId, Location)>) {
        let Some(first) = self.ids.front().map(|(id, _)| id.index) else { return };
        for (log_id, at) in located {
            let slot = log_id.index.checked_sub(first).and_then(|i| self.ids.get_mut(i as usize));
            // A truncate may have replaced the entry at that index meanwhile.
            if let Some(slot) = slot.filter(|(id, _)| *id == log_id) {
                slot.1 = Some(at);
            }
        }
        while self.cache.len() > CACHE && self.ids[self.ids.len() - self.cache.len()].1.is_some() {
            self.cache.pop_front();
        }
    }

    fn find(&self, pos: usize) -> Option<Found> {
        let uncached = self.ids.len() - self.cache.len();
        match pos.checked_sub(uncached) {
            Some(i) => self.cache.get(i).cloned().map(Found::Cached),
            None => {
                let (id, at) = self.ids.get(pos)?;
                // Uncached entries always have a location.
                at.clone().map(|at| Found::OnDisk(*id, at))
            }
        }
    }

    /// Positions in `ids` of the indexes in `range`.
    fn positions(&self, range: &impl RangeBounds<u64>) -> std::ops::Range<usize> {
        let Some(first) = self.ids.front().map(|(id, _)| id.index) else { return 0..0 };
        let len = self.ids.len() as u64;
        let pos = |i: u64| i.saturating_sub(first).min(len) as usize;
        let start = match range.start_bound() {
            Bound::Included(i) => pos(*i),
            Bound::Excluded(i) => pos(i.saturating_add(1)),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => pos(i.saturating_add(1)),
            Bound::Excluded(i) => pos(*i),
            Bound::Unbounded => len as usize,
        };
        start..end.max(start)
    }
}

impl LogStore {
    /// Opens the log under `dir` (see `wal`), replaying what is there.
    pub(crate) fn open(dir: &Path, replayed: Replayed) -> Result<Self, OpenError> {
        let Replayed { vote, committed, purged, entries, cached, segments, active } = replayed;
        let ids = entries.into_iter().map(|(id, at)| (id, Some(at))).collect();
        let mem = Arc::new(Mutex::new(Mem { vote, committed, purged, ids, cache: cached }));
        let carried = Carried { vote, committed, purged };
        let on_written = {
            let mem = mem.clone();
            Box::new(move |located| lock(&mem).located(located))
        };
        let writer = WalWriter::start(dir.to_owned(), segments, active, carried, on_written)
            .map_err(|e| OpenError::from_io(dir, e))?;
        Ok(Self(Arc::new(Shared { mem, writer })))
    }

    /// Whether the log holds nothing at all (no vote, no entry, nothing
    /// purged): the node has never taken part in any cluster.
    pub fn holds_no_raft_state(&self) -> bool {
        let mem = self.mem();
        mem.vote.is_none() && mem.ids.is_empty() && mem.purged.is_none()
    }

    /// How many fdatasyncs the log has done.
    pub fn fsync_count(&self) -> u64 {
        self.0.writer.sync_count()
    }

    fn mem(&self) -> MutexGuard<'_, Mem> {
        lock(&self.0.mem)
    }

    #[cfg(test)]
    pub(crate) fn hold_writes(&self) -> std::sync::MutexGuard<'_, ()> {
        self.0.writer.hold()
    }
}

fn lock(mem: &Mutex<Mem>) -> MutexGuard<'_, Mem> {
    // Every update to `Mem` is a few pushes and pops that cannot panic
    // halfway in a way that breaks its invariants.
    mem.lock().unwrap_or_else(PoisonError::into_inner)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let found: Vec<Found> = {
            let mem = self.mem();
            mem.positions(&range).filter_map(|pos| mem.find(pos)).collect()
        };
        if found.iter().all(|f| matches!(f, Found::Cached(_))) {
            return Ok(found
                .into_iter()
                .filter_map(|f| if let Found::Cached(e) = f { Some(e) } else { None })
                .collect());
        }
        // Older entries come from their segments, off the async workers.
        let read = tokio::task::spawn_blocking(move || {
            let read_one = |f: Found| match f {
                Found::Cached(entry) => Ok(entry),
                Found::OnDisk(id, at) => match at.read() {
                    Ok(entry) if entry.log_id == id => Ok(entry),
                    Ok(entry) => Err(io::Error::other(format!("entry {id} reads back as {}", entry.log_id))),
                    Err(e) => Err(io::Error::new(e.kind(), format!("reading entry {id}: {e}"))),
                },
            };
            found.into_iter().map(read_one).collect::<io::Result<Vec<Entry>>>()
        });
        let entries = read.await.map_err(|e| io::Error::other(format!("log read task failed: {e}")));
        entries.and_then(|r| r).map_err(|e| StorageIOError::read_logs(&e).into())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let mem = self.mem();
        Ok(LogState { last_purged_log_id: mem.purged, last_log_id: mem.last_log_id() })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    /// Durable before it returns: a vote must never be forgotten.
    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let written = self.0.writer.lock().write(Op::Vote(*vote));
        written.map_err(|e| StorageIOError::write_vote(&e))?;
        self.mem().vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(self.mem().vote)
    }

    // Written with the next synced write, not synced for its own sake: a lost
    // committed id only means re-applying from the state machine's last
    // applied id, which the log still holds.
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        let mut writer = self.0.writer.lock();
        self.mem().committed = committed;
        writer.write(Op::Committed(committed)).map_err(|e| StorageIOError::write(&e).into())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.mem().committed)
    }

    /// Makes the entries readable, writes and syncs them, then calls
    /// `callback` with the outcome.
    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut writer = self.0.writer.lock();
        let op = {
            let mut mem = self.mem();
            // Entries at or below the purge point are already in the state
            // machine; keeping them would leave a hole (openraft's suite appends
            // such entries after a purge; replay skips them the same way).
            let purged = mem.purged.map(|p| p.index);
            let entries: Vec<Entry> =
                entries.into_iter().filter(|e| purged.is_none_or(|p| e.log_id.index > p)).collect();
            let mut frames = Vec::with_capacity(entries.len() * 320);
            let mut layout = Vec::with_capacity(entries.len());
            for entry in &entries {
                let start = frames.len();
                wal::put_entry(&mut frames, entry).map_err(|e| StorageIOError::write_log_entry(entry.log_id, &e))?;
                layout.push((entry.log_id, start as u32, (frames.len() - start) as u32));
            }
            let last_index = entries.last().map(|e| e.log_id.index);
            if let Some(first) = entries.first().map(|e| e.log_id.index) {
                // Entries at or below the last one replace it and what follows
                // (replay does the same, so the file needs no truncate record).
                mem.truncate(first);
                if let Some(expected) = mem.last_log_id().map(|id| id.index + 1) {
                    if first != expected {
                        let e = io::Error::other(format!(
                            "append of entry {first} would leave a hole: the log ends at {}",
                            expected - 1
                        ));
                        return Err(StorageIOError::write_logs(&e).into());
                    }
                }
            }
            entries.into_iter().for_each(|e| mem.push(e));
            Op::Append { frames, layout, last_index }
        };
        // Memory is released first: the writer records where the frames went.
        callback.log_io_completed(writer.write(op));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut writer = self.0.writer.lock();
        self.mem().truncate(log_id.index);
        writer.write(Op::Truncate { from_index: log_id.index }).map_err(|e| StorageIOError::write_logs(&e).into())
    }

    /// The purge record is synced before any segment is unlinked, so a crash
    /// leaves extra entries below the purge point, never a hole.
    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut writer = self.0.writer.lock();
        {
            let mut mem = self.mem();
            if mem.purged.is_some_and(|p| p >= log_id) {
                return Ok(());
            }
            mem.purged = Some(log_id);
            mem.purge(log_id.index);
        }
        writer.write(Op::Purge { upto: log_id }).map_err(|e| StorageIOError::write_logs(&e).into())
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

    /// Holds the writer before its write: the append must already be
    /// readable, but its callback may not fire until the fdatasync is done.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    // Holding the gate across awaits is the point; the append runs on a
    // blocking thread of its own.
    #[allow(clippy::await_holding_lock)]
    async fn callbacks_wait_for_fdatasync() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (log, _sm) = crate::open(dir.path()).expect("open");
        let before = log.fsync_count();
        let gate = log.hold_writes();

        let mut store = log.clone();
        let append = tokio::task::spawn_blocking(move || {
            tokio::runtime::Handle::current().block_on(store.blocking_append([blank(1)])).is_ok()
        });
        let mut reader = log.clone();
        let deadline = Instant::now() + Duration::from_secs(10);
        while reader.try_get_log_entries(1..=1).await.expect("read").is_empty() {
            assert!(Instant::now() < deadline, "the append did not become readable");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // A grace period for a wrongly early callback to show up.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!append.is_finished(), "the callback fired before fdatasync");
        assert_eq!(log.fsync_count(), before);

        drop(gate);
        assert!(append.await.expect("task"), "the append failed");
        assert_eq!(log.fsync_count() - before, 1);
    }

    /// Past the cache, entries are read back from their segment; they read
    /// the same before and after a reopen.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn entries_beyond_the_cache_read_back_from_disk() {
        use crate::command::Command;
        use crate::model::User;
        let dir = tempfile::tempdir().expect("tempdir");
        let n = (CACHE * 3) as u64;
        let entry = |i: u64| Entry {
            log_id: LogId::new(CommittedLeaderId::new(2, 1), i),
            payload: EntryPayload::Normal(Command::CreateUser(User::new(format!("u{i}"), i as i64))),
        };
        let written: Vec<Entry> = (1..=n).map(entry).collect();
        {
            let (mut log, _sm) = crate::open(dir.path()).expect("open");
            for chunk in written.chunks(100) {
                log.blocking_append(chunk.to_vec()).await.expect("append");
            }
            assert_eq!(log.mem().cache.len(), CACHE, "written entries stayed decoded");
            assert_eq!(log.try_get_log_entries(..).await.expect("read"), written);
            assert_eq!(log.try_get_log_entries(5..8).await.expect("read"), written[4..7]);
            log.purge(LogId::new(CommittedLeaderId::new(2, 1), 10)).await.expect("purge");
            assert_eq!(log.try_get_log_entries(..=12).await.expect("read"), written[10..12]);
        }
        let (mut log, _sm) = crate::open(dir.path()).expect("reopen");
        assert_eq!(log.mem().cache.len(), DECODED_AT_OPEN, "the newest entries decoded at open");
        assert_eq!(log.try_get_log_entries(..).await.expect("read"), written[10..]);
    }

    #[test]
    fn positions_follow_range_bounds() {
        let mut mem = Mem { vote: None, committed: None, purged: None, ids: VecDeque::new(), cache: VecDeque::new() };
        (5..=9).map(blank).for_each(|e| mem.push(e));
        assert_eq!(mem.positions(&(..)), 0..5);
        assert_eq!(mem.positions(&(6..8)), 1..3);
        assert_eq!(mem.positions(&(6..=8)), 1..4);
        assert_eq!(mem.positions(&(0..=4)), 0..0);
        assert_eq!(mem.positions(&(0..5)), 0..0);
        assert_eq!(mem.positions(&(9..)), 4..5);
        assert_eq!(mem.positions(&(10..20)), 5..5);
        assert_eq!(mem.positions(&(3..=6)), 0..2);
    }
}
