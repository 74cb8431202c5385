//! The log's writer: the only code that writes segment files. Each
//! operation is written as one batch (see `wal`) with one `write` and made
//! durable with one `fdatasync` before the call returns, on the caller's
//! thread.
//!
//! openraft 0.9's core makes every log call itself, one at a time, and waits
//! for each append's flush before it does anything else, so a writer thread
//! could never merge two appends: it only added two thread wake-ups to every
//! write (one to hand the write over, one to hand the callback back). Writes
//! that arrive together still share a sync one level up: the proposer puts
//! concurrent proposals into one entry.

use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::types::{LogId, Vote};
use crate::wal::{self, Active, Location, Segment};

/// Told where written entries are, once they are durable.
pub(crate) type OnWritten = Box<dyn Fn(Vec<(LogId, Location)>) + Send>;

pub(crate) enum Op {
    /// Framed entries, each entry's (id, offset, length) in `frames`, and
    /// the highest index among them.
    Append {
        frames: Vec<u8>,
        layout: Vec<(LogId, u32, u32)>,
        last_index: Option<u64>,
    },
    Truncate {
        from_index: u64,
    },
    Purge {
        upto: LogId,
    },
    Vote(Vote),
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

/// The writer; dropping it writes a committed id still waiting.
pub(crate) struct WalWriter {
    state: Mutex<State>,
    syncs: Arc<AtomicU64>,
    #[cfg(test)]
    gate: Arc<Mutex<()>>,
}

impl WalWriter {
    /// Starts the writer on `segments` (the last one, `active`, takes the
    /// appends; with none, a new segment is created first).
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
        let gate = Arc::new(Mutex::new(()));
        let state = State {
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
        Ok(Self {
            state: Mutex::new(state),
            syncs,
            #[cfg(test)]
            gate,
        })
    }

    /// The writer, locked: the log takes it before it changes its memory, so
    /// the file sees operations in the order memory does.
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| {
            // A write panicked halfway: the file is in an unknown state, as
            // after a failed write, so nothing more is written to it.
            let mut state = poisoned.into_inner();
            state.failed.get_or_insert((io::ErrorKind::Other, "a raft log write panicked".into()));
            state
        })
    }

    pub(crate) fn sync_count(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    /// Lets unit tests hold the writer just before it writes.
    #[cfg(test)]
    pub(crate) fn hold(&self) -> MutexGuard<'_, ()> {
        self.gate.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for WalWriter {
    fn drop(&mut self) {
        if self.state.is_poisoned() {
            return;
        }
        let state = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
        if let Some(committed) = state.pending_committed.take() {
            state.buf.clear();
            wal::put_committed(&mut state.buf, committed.as_ref());
            let _best_effort = state.write_and_sync(None);
        }
    }
}

pub(crate) struct State {
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

impl State {
    /// Writes `op` and syncs it (with any committed id waiting); a committed
    /// id alone only waits for the next write.
    pub(crate) fn write(&mut self, op: Op) -> io::Result<()> {
        self.buf.clear();
        let (mut purge, mut max_index, mut layout) = (None, None, Vec::new());
        match op {
            Op::Append { frames, layout: l, last_index } => {
                self.buf = frames;
                layout = l;
                max_index = last_index;
            }
            Op::Truncate { from_index } => wal::put_truncate(&mut self.buf, from_index),
            Op::Purge { upto } => {
                wal::put_purged(&mut self.buf, &upto);
                purge = Some(upto);
            }
            Op::Vote(vote) => {
                wal::put_vote(&mut self.buf, &vote);
                self.carried.vote = Some(vote);
            }
            Op::Committed(committed) => {
                self.pending_committed = Some(committed);
                return Ok(());
            }
        }
        if self.buf.is_empty() {
            return Ok(()); // an append of nothing
        }
        if let Some(committed) = self.pending_committed.take() {
            wal::put_committed(&mut self.buf, committed.as_ref());
            self.carried.committed = committed;
        }
        if let Some(upto) = purge {
            self.carried.purged = Some(upto);
        }
        let (file, base) = self.write_and_sync(max_index)?;
        if !layout.is_empty() {
            (self.on_written)(wal::locate(&file, base, &layout));
        }
        if let Some(upto) = purge {
            self.unlink_purged(upto);
        }
        Ok(())
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
        self.active.append(&mut self.buf)?;
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
}
