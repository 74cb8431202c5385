//! The log's writer thread: the only code that writes segment files.
//!
//! It takes whatever operations queued up while it was busy, writes them with
//! one `write` and makes them durable with one `fdatasync` (group commit),
//! then acknowledges them: openraft's flush callbacks, waiting vote saves.
//! Appends do not wait for it: `LogStore` keeps the entries in memory, and
//! the callback tells openraft when they are on disk.

use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::{self, JoinHandle};

use openraft::storage::LogFlushed;
use tokio::sync::oneshot;

use crate::types::{LogId, TypeConfig, Vote};
use crate::wal::{self, Active, Location, Segment};

/// Told where written entries are, once they are durable.
pub(crate) type OnWritten = Box<dyn Fn(Vec<(LogId, Location)>) + Send>;

pub(crate) enum Op {
    /// Framed entries, each entry's (id, offset, length) in `frames`, and
    /// the highest index among them (none for an empty append, still
    /// acknowledged only behind earlier ones).
    Append {
        frames: Vec<u8>,
        layout: Vec<(LogId, u32, u32)>,
        last_index: Option<u64>,
        callback: LogFlushed<TypeConfig>,
    },
    Truncate {
        from_index: u64,
    },
    Purge {
        upto: LogId,
    },
    Vote {
        vote: Vote,
        done: oneshot::Sender<io::Result<()>>,
    },
    /// Written with the next write that has to be synced anyway: a lost
    /// committed id only means openraft re-learns it from the leader.
    Committed(Option<LogId>),
}

/// What a new segment must restate, as of the last write.
#[derive(Default)]
pub(crate) struct Carried {
    pub vote: Option<Vote>,
    pub committed: Option<LogId>,
    pub purged: Option<LogId>,
}

/// The thread's handle: dropping it lets the thread finish what is queued
/// and joins it, so a reopen of the dir finds no writer left.
pub(crate) struct WalWriter {
    tx: Option<mpsc::Sender<Op>>,
    thread: Option<JoinHandle<()>>,
    syncs: Arc<AtomicU64>,
    #[cfg(test)]
    gate: Arc<std::sync::Mutex<()>>,
}

impl WalWriter {
    /// Starts the writer on `segments` (the last one, `active`, takes the
    /// appends; with none, segment 1 is created first).
    pub(crate) fn start(
        dir: PathBuf,
        segments: Vec<Segment>,
        active: Option<Active>,
        carried: Carried,
        on_written: OnWritten,
    ) -> io::Result<Self> {
        let (segments, active) = match active {
            Some(active) => (segments, active),
            None => {
                let mut initial = Vec::new();
                wal::put_state(
                    &mut initial,
                    carried.vote.as_ref(),
                    carried.committed.as_ref(),
                    carried.purged.as_ref(),
                );
                let seq = segments.last().map_or(1, |s| s.seq + 1);
                let active = wal::create_segment(&dir, seq, &initial)?;
                let mut segments = segments;
                segments.push(Segment { seq, path: wal::segment_path(&dir, seq), max_index: None });
                (segments, active)
            }
        };
        let syncs = Arc::new(AtomicU64::new(0));
        #[cfg(test)]
        let gate = Arc::new(std::sync::Mutex::new(()));
        let mut state = State {
            dir,
            segments,
            active,
            carried,
            on_written,
            pending_committed: None,
            failed: None,
            buf: Vec::new(),
            syncs: syncs.clone(),
            #[cfg(test)]
            gate: gate.clone(),
        };
        let (tx, rx) = mpsc::channel();
        let thread = thread::Builder::new().name("raft-log-writer".into()).spawn(move || state.run(&rx))?;
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
            syncs,
            #[cfg(test)]
            gate,
        })
    }

    /// Queues `op`; gives it back if the thread is gone.
    pub(crate) fn submit(&self, op: Op) -> Result<(), Op> {
        match &self.tx {
            Some(tx) => tx.send(op).map_err(|e| e.0),
            None => Err(op),
        }
    }

    pub(crate) fn sync_count(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    /// Lets unit tests hold the writer just before it writes.
    #[cfg(test)]
    pub(crate) fn hold(&self) -> std::sync::MutexGuard<'_, ()> {
        self.gate.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for WalWriter {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the raft log writer thread panicked");
            }
        }
    }
}

struct State {
    dir: PathBuf,
    segments: Vec<Segment>,
    active: Active,
    carried: Carried,
    on_written: OnWritten,
    pending_committed: Option<Option<LogId>>,
    /// After a failed write or sync the file's state is unknown: every later
    /// operation fails with this.
    failed: Option<(io::ErrorKind, String)>,
    buf: Vec<u8>,
    syncs: Arc<AtomicU64>,
    #[cfg(test)]
    gate: Arc<std::sync::Mutex<()>>,
}

/// Who to tell once a batch is durable.
#[derive(Default)]
struct Waiters {
    callbacks: Vec<LogFlushed<TypeConfig>>,
    done: Vec<oneshot::Sender<io::Result<()>>>,
}

impl State {
    fn run(&mut self, rx: &mpsc::Receiver<Op>) {
        while let Ok(first) = rx.recv() {
            let mut waiters = Waiters::default();
            let mut purge = None;
            let mut max_index = None;
            let mut layouts = Vec::new();
            self.buf.clear();
            for op in std::iter::once(first).chain(rx.try_iter()) {
                match op {
                    Op::Append { frames, layout, last_index, callback } => {
                        layouts.push((self.buf.len() as u64, layout));
                        self.buf.extend_from_slice(&frames);
                        max_index = max_index.max(last_index);
                        waiters.callbacks.push(callback);
                    }
                    Op::Truncate { from_index } => wal::put_truncate(&mut self.buf, from_index),
                    Op::Purge { upto } => {
                        wal::put_purged(&mut self.buf, &upto);
                        purge = Some(upto);
                    }
                    Op::Vote { vote, done } => {
                        wal::put_vote(&mut self.buf, &vote);
                        self.carried.vote = Some(vote);
                        waiters.done.push(done);
                    }
                    Op::Committed(committed) => self.pending_committed = Some(committed),
                }
            }
            if self.buf.is_empty() && waiters.callbacks.is_empty() && waiters.done.is_empty() {
                continue; // only a committed id: it waits for the next write
            }
            if let Some(committed) = self.pending_committed.take() {
                wal::put_committed(&mut self.buf, committed.as_ref());
                self.carried.committed = committed;
            }
            if let Some(upto) = purge {
                self.carried.purged = Some(upto);
            }
            let result = self.write_and_sync(max_index);
            if let Ok((file, base)) = &result {
                let located = layouts.iter().flat_map(|(at, layout)| wal::locate(file, base + at, layout)).collect();
                (self.on_written)(located);
            }
            let result = result.map(|_| ());
            self.acknowledge(waiters, &result);
            if let (Some(upto), Ok(())) = (purge, &result) {
                self.unlink_purged(upto);
            }
        }
        // Closed: keep the last committed id too.
        if let Some(committed) = self.pending_committed.take() {
            self.buf.clear();
            wal::put_committed(&mut self.buf, committed.as_ref());
            let _best_effort = self.write_and_sync(None);
        }
    }

    /// Returns the file and the offset the buffer went to.
    fn write_and_sync(&mut self, max_index: Option<u64>) -> io::Result<(Arc<File>, u64)> {
        if let Some((kind, msg)) = &self.failed {
            return Err(io::Error::new(*kind, format!("an earlier raft log write failed: {msg}")));
        }
        #[cfg(test)]
        let gate = self.gate.clone();
        #[cfg(test)]
        let _held = gate.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let result = self.try_write_and_sync(max_index);
        if let Err(e) = &result {
            tracing::error!(dir = %self.dir.display(), "writing the raft log failed: {e}");
            self.failed = Some((e.kind(), e.to_string()));
        }
        result
    }

    fn try_write_and_sync(&mut self, max_index: Option<u64>) -> io::Result<(Arc<File>, u64)> {
        if self.active.pos >= wal::SEGMENT_BYTES {
            self.rotate()?;
        }
        let base = self.active.pos;
        self.active.write_and_sync(&self.buf)?;
        if let (Some(index), Some(seg)) = (max_index, self.segments.last_mut()) {
            seg.max_index = Some(seg.max_index.map_or(index, |m| m.max(index)));
        }
        self.syncs.fetch_add(1, Ordering::Relaxed);
        Ok((self.active.file.clone(), base))
    }

    /// Starts the next segment with the state the old ones carried. Every
    /// earlier write was synced, so the old segment is complete.
    fn rotate(&mut self) -> io::Result<()> {
        let mut initial = Vec::new();
        let c = &self.carried;
        wal::put_state(&mut initial, c.vote.as_ref(), c.committed.as_ref(), c.purged.as_ref());
        let seq = self.segments.last().map_or(1, |s| s.seq + 1);
        self.active = wal::create_segment(&self.dir, seq, &initial)?;
        self.segments.push(Segment { seq, path: wal::segment_path(&self.dir, seq), max_index: None });
        if let Some(upto) = self.carried.purged {
            self.unlink_purged(upto);
        }
        Ok(())
    }

    /// Removes the oldest segments while every entry in them is purged; the
    /// purge record that allows it is already durable. Never the active one.
    fn unlink_purged(&mut self, upto: LogId) {
        let removable = self
            .segments
            .iter()
            .take(self.segments.len().saturating_sub(1))
            .take_while(|s| s.max_index.is_none_or(|m| m <= upto.index))
            .count();
        for seg in self.segments.drain(..removable) {
            if let Err(e) = std::fs::remove_file(&seg.path) {
                tracing::warn!(path = %seg.path.display(), "could not remove a purged raft log segment: {e}");
            }
        }
    }

    fn acknowledge(&self, waiters: Waiters, result: &io::Result<()>) {
        let outcome = |r: &io::Result<()>| r.as_ref().map(|_| ()).map_err(|e| io::Error::new(e.kind(), e.to_string()));
        for callback in waiters.callbacks {
            callback.log_io_completed(outcome(result));
        }
        for done in waiters.done {
            let _receiver_gone = done.send(outcome(result));
        }
    }
}
