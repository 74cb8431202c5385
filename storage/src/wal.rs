//! The Raft log on disk: a directory of append-only segment files
//! (`<data dir>/raft-log/<seq>.wal`), read back in full when the store opens.
//!
//! A segment starts with [`MAGIC`] (`VPNWAL2\n`), then frames, all integers
//! little-endian:
//! `[len: u32][!len: u32][crc32(batch word ‖ payload): u32][batch word: u32][payload: len bytes]`;
//! a payload is a record kind and its body:
//! - `ENTRY`: a log entry (`codec::put_entry`);
//! - `VOTE`, `COMMITTED`, `PURGED`: the latest value wins;
//! - `TRUNCATE`: entries from this index on are gone.
//!
//! Every write to a segment is one batch of frames, made durable by one
//! `fdatasync` before anything it carries is acknowledged; the next batch is
//! written only after that. The batch word numbers the batches of a segment
//! from 1, and its top bit ([`LAST`]) marks the final frame of each: every
//! intact frame tells which write it came from, and whether that write ended.
//! A segment holds whole batches only (a torn one is cut off whole).
//!
//! Format 1 (`VPNWAL1\n`, written before batches were numbered) has the same
//! frames without the batch word: a 12-byte header, the checksum over the
//! payload alone. Its segments are still read. A store whose last segment is
//! in format 1 begins a new segment for its writes: no segment mixes formats.
//!
//! A new segment begins with the current vote, committed and purged ids (its
//! batch 1), so older segments can be unlinked once every entry in them is
//! purged.
//!
//! Segments grow in zero-filled steps of [`CHUNK`] bytes ahead of the
//! frames: writing over blocks that already exist lets `fdatasync` flush
//! just the data, without a journal commit for the new file size (measured
//! here: 0.12 ms instead of 0.2 ms per synced 256-byte write). Zeros where a
//! frame header would be mark the end of the frames. It also means a batch
//! is always written over zeros, already on the disk or past the end of the file.
//!
//! # Torn writes and corruption
//! A frame that fails its checks is judged when the store opens:
//! - In a segment other than the last, it is corruption: every write to that
//!   segment was synced before the next segment was begun.
//! - In the last segment, if an intact frame of a later batch follows it, it
//!   is corruption: that later write proves the damaged batch had been synced
//!   (and maybe acknowledged) before it.
//! - Otherwise the damage is in the segment's last batch. It is a torn write,
//!   and the batch is cut off whole, only if it bears the mark of a write that
//!   never completed: the file ends inside the frame, or a 512-byte sector of
//!   the frame still reads as the zeros that were there before the write (a
//!   disk writes whole sectors, and `fdatasync` returns only once every sector
//!   of the batch is written, so nothing of that batch was acknowledged). The
//!   sectors after a lost one may well hold the batch's later frames: a disk
//!   may persist an unsynced write out of order. Damage without that mark
//!   (flipped bits, garbage where a frame was written) may be in a batch that
//!   was synced and acknowledged, so the store refuses to open.
//!
//! A cut is logged at warn (where the cut starts, how many bytes, where the
//! damage is, its batch, the intact frames cut with it) and the node starts;
//! a refusal names the segment, the offset, the batch and what was found.
//!
//! Format 1 segments keep their rule: a bad frame at the very end of the last
//! segment (nothing but zeros after it) is a torn write; anything else is
//! corruption.
//!
//! Entries follow one another without a gap, with one exception: after
//! installing a snapshot a follower appends the entries that follow it
//! before openraft purges the log the snapshot replaced, so a crash between
//! the two leaves a gap. It is accepted when the snapshot on disk reaches
//! across it (its entries are the snapshot's); any other gap is corruption.
//!
//! Why this rule. etcd's WAL (`server/storage/wal`: `decoder.go`,
//! `repair.go`) repairs only an `io.ErrUnexpectedEOF` in its last file: a
//! record cut short by the end of the file, or one in which some 512-byte
//! sector is all zeros (`isTornEntry`); a checksum mismatch is fatal.
//! TigerBeetle's journal (`src/vsr/journal.zig`) writes a prepare's redundant
//! header only after the prepare itself, and truncates a damaged prepare as
//! torn only when it is the op just past the newest valid one, its redundant
//! header was not written yet, and no other slot is faulty; any other damaged
//! prepare is repaired from the other replicas, never dropped. We take etcd's
//! mark of a write cut short, and TigerBeetle's use of a later write as proof
//! that an earlier one was durable; the batch word gives that proof here.
//! What no log can tell alone: a synced last batch of which the disk later
//! lost whole sectors reads as a torn write and is cut, as etcd would.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::codec::{self, invalid, Reader};
use crate::error::OpenError;
use crate::types::{Entry, LogId, Vote};

/// The first bytes of a segment in the current format (2).
pub(crate) const MAGIC: &[u8; 8] = b"VPNWAL2\n";
/// The first bytes of a segment in format 1 (no batch words).
const MAGIC_V1: &[u8; 8] = b"VPNWAL1\n";
/// A segment that grew past this is closed and a new one started.
pub(crate) const SEGMENT_BYTES: u64 = 8 << 20;
/// Segments are zero-filled this far ahead of their frames.
pub(crate) const CHUNK: u64 = 256 << 10;
/// A frame's header: length, its complement, checksum, batch word.
pub(crate) const HEADER: usize = 16;
/// A frame's header in format 1: length, its complement, checksum. The
/// checksum covers the bytes after it in both formats.
const HEADER_V1: usize = 12;
const MAX_FRAME: usize = 256 << 20;
/// The bit of a batch word that marks the last frame of its batch.
pub(crate) const LAST: u32 = 1 << 31;
/// The unit a disk writes whole: a write that never completed leaves whole
/// sectors unwritten (etcd's `minSectorSize`).
pub(crate) const SECTOR: usize = 512;

const ENTRY: u8 = 1;
const VOTE: u8 = 2;
const COMMITTED: u8 = 3;
const PURGED: u8 = 4;
const TRUNCATE: u8 = 5;

/// A segment's frame layout, told by its magic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    V1,
    V2,
}

impl Format {
    fn header(self) -> usize {
        match self {
            Self::V1 => HEADER_V1,
            Self::V2 => HEADER,
        }
    }
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// Appends one frame whose payload is `kind` and what `body` writes. Its
/// checksum and batch word are left to [`seal`].
fn frame(buf: &mut Vec<u8>, kind: u8, body: impl FnOnce(&mut Vec<u8>) -> io::Result<()>) -> io::Result<()> {
    let at = buf.len();
    buf.extend_from_slice(&[0; HEADER]);
    buf.push(kind);
    if let Err(e) = body(buf) {
        buf.truncate(at);
        return Err(e);
    }
    let len = buf.len() - at - HEADER;
    if len > MAX_FRAME {
        buf.truncate(at);
        return Err(invalid(format!("a log record of {len} bytes is over the {MAX_FRAME} byte limit")));
    }
    let len = len as u32;
    buf[at..at + 4].copy_from_slice(&len.to_le_bytes());
    buf[at + 4..at + 8].copy_from_slice(&(!len).to_le_bytes());
    Ok(())
}

/// Makes `frames` (laid out by the `put_*` functions) batch number `batch`
/// of its segment: stamps every frame's batch word, marks the last frame,
/// and computes the checksums.
pub(crate) fn seal(frames: &mut [u8], batch: u32) {
    debug_assert!(batch > 0 && batch < LAST, "batch number {batch}");
    let mut at = 0;
    while at + HEADER <= frames.len() {
        let end = (at + HEADER + u32_at(frames, at) as usize).min(frames.len());
        let word = if end == frames.len() { batch | LAST } else { batch };
        frames[at + 12..at + 16].copy_from_slice(&word.to_le_bytes());
        let crc = crc32fast::hash(&frames[at + HEADER_V1..end]);
        frames[at + 8..at + 12].copy_from_slice(&crc.to_le_bytes());
        at = end;
    }
}

pub(crate) fn put_entry(buf: &mut Vec<u8>, entry: &Entry) -> io::Result<()> {
    frame(buf, ENTRY, |b| codec::put_entry(b, entry))
}

pub(crate) fn put_vote(buf: &mut Vec<u8>, vote: &Vote) {
    let _infallible = frame(buf, VOTE, |b| {
        codec::put_vote(b, vote);
        Ok(())
    });
}

pub(crate) fn put_committed(buf: &mut Vec<u8>, committed: Option<&LogId>) {
    let _infallible = frame(buf, COMMITTED, |b| {
        codec::put_opt_log_id(b, committed);
        Ok(())
    });
}

pub(crate) fn put_purged(buf: &mut Vec<u8>, purged: &LogId) {
    let _infallible = frame(buf, PURGED, |b| {
        codec::put_log_id(b, purged);
        Ok(())
    });
}

pub(crate) fn put_truncate(buf: &mut Vec<u8>, from_index: u64) {
    let _infallible = frame(buf, TRUNCATE, |b| {
        codec::put_u64(b, from_index);
        Ok(())
    });
}

/// The records that start a new segment: the state it must carry forward.
pub(crate) fn put_state(buf: &mut Vec<u8>, vote: Option<&Vote>, committed: Option<&LogId>, purged: Option<&LogId>) {
    if let Some(vote) = vote {
        put_vote(buf, vote);
    }
    put_committed(buf, committed);
    if let Some(purged) = purged {
        put_purged(buf, purged);
    }
}

/// One segment file and the highest entry index ever written to it.
#[derive(Debug)]
pub(crate) struct Segment {
    pub seq: u64,
    pub path: PathBuf,
    pub max_index: Option<u64>,
}

pub(crate) fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.wal"))
}

/// Where an entry's frame is: readers keep the file open, so an entry stays
/// readable even after its segment was unlinked by a purge.
#[derive(Clone)]
pub(crate) struct Location {
    pub file: Arc<File>,
    pub offset: u64,
    pub len: u32,
    pub format: Format,
}

impl Location {
    /// Reads the frame back, checks it and decodes its entry.
    pub(crate) fn read(&self) -> io::Result<Entry> {
        let mut frame = vec![0u8; self.len as usize];
        self.file.read_exact_at(&mut frame, self.offset)?;
        let bad = |what: &str| invalid(format!("raft log frame at offset {}: {what}", self.offset));
        let header = self.format.header();
        if frame.len() < header + 1 {
            return Err(bad("too short"));
        }
        let len = u32_at(&frame, 0);
        if u32_at(&frame, 4) != !len || len as usize != frame.len() - header {
            return Err(bad("bad header"));
        }
        if crc32fast::hash(&frame[HEADER_V1..]) != u32_at(&frame, 8) {
            return Err(bad("checksum mismatch"));
        }
        if frame[header] != ENTRY {
            return Err(bad("not an entry"));
        }
        Reader::new(&frame[header + 1..]).entry()
    }
}

/// The frames of `frames` (laid out by `put_entry` calls) that start at
/// `offsets`, as locations once `frames` is written at `base` of `file`.
pub(crate) fn locate(file: &Arc<File>, base: u64, offsets: &[(LogId, u32, u32)]) -> Vec<(LogId, Location)> {
    let at = |&(id, off, len): &(LogId, u32, u32)| {
        (id, Location { file: file.clone(), offset: base + u64::from(off), len, format: Format::V2 })
    };
    offsets.iter().map(at).collect()
}

/// Where appends go: the file, where the frames end, how far it is
/// zero-filled, and the number of its last batch.
pub(crate) struct Active {
    pub file: Arc<File>,
    pub pos: u64,
    pub capacity: u64,
    /// 0 before the first batch.
    pub batch: u32,
}

impl Active {
    /// Writes `frames` (laid out by the `put_*` functions) as the segment's
    /// next batch, sealed, and makes it durable.
    pub(crate) fn append(&mut self, frames: &mut [u8]) -> io::Result<()> {
        if frames.is_empty() {
            return Ok(());
        }
        let batch = self.batch + 1;
        seal(frames, batch);
        self.write_and_sync(frames)?;
        self.batch = batch;
        Ok(())
    }

    /// Writes `buf` at the end of the frames, zero-filling the file ahead of
    /// them when they outgrow it, then makes it durable: `fdatasync`, or a
    /// full `fsync` when the file grew.
    fn write_and_sync(&mut self, buf: &[u8]) -> io::Result<()> {
        let end = self.pos + buf.len() as u64;
        self.file.write_all_at(buf, self.pos)?;
        let grew = end > self.capacity;
        if grew {
            let capacity = end.div_ceil(CHUNK) * CHUNK;
            let zeros = vec![0u8; (capacity - end) as usize];
            self.file.write_all_at(&zeros, end)?;
            self.capacity = capacity;
        }
        self.pos = end;
        if grew {
            self.file.sync_all()
        } else {
            self.file.sync_data()
        }
    }
}

/// Creates segment `seq` holding `MAGIC` and `initial` frames (its batch 1),
/// durably (file and directory entry). Fails if it exists.
pub(crate) fn create_segment(dir: &Path, seq: u64, initial: &[u8]) -> io::Result<Active> {
    let path = segment_path(dir, seq);
    let file = OpenOptions::new().read(true).write(true).create_new(true).open(&path)?;
    let mut active = Active { file: Arc::new(file), pos: 0, capacity: 0, batch: 0 };
    let mut first = MAGIC.to_vec();
    first.extend_from_slice(initial);
    if !initial.is_empty() {
        seal(&mut first[MAGIC.len()..], 1);
        active.batch = 1;
    }
    active.write_and_sync(&first)?;
    sync_dir(dir)?;
    Ok(active)
}

pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// What the segments say, after replaying every record in order.
pub(crate) struct Replayed {
    pub vote: Option<Vote>,
    pub committed: Option<LogId>,
    pub purged: Option<LogId>,
    /// Every entry in the log, and where it is.
    pub entries: VecDeque<(LogId, Location)>,
    /// The newest of them (up to `cache`, see [`replay`]), decoded.
    pub cached: VecDeque<Entry>,
    /// In order; the last one is where appends go.
    pub segments: Vec<Segment>,
    /// The last segment, open for appending; none when there is no segment
    /// or the last one is in format 1 (appends then go to a new one).
    pub active: Option<Active>,
}

/// An entry seen while replaying, decoded only if it survives.
struct Pending {
    log_id: LogId,
    segment: usize,
    body: Range<usize>,
}

/// Reads every segment under `dir` (which must exist) and replays it,
/// decoding the newest `cache` entries. A torn write at the end of the last
/// segment is cut off (it was never acknowledged); a gap between entries is
/// accepted only where `snapshot` (the last entry of the snapshot on disk)
/// covers it; anything else that does not read back is reported as
/// corruption (see the top of this file).
pub(crate) fn replay(dir: &Path, cache: usize, snapshot: Option<LogId>) -> Result<Replayed, OpenError> {
    let corrupt = |path: &Path, why: &dyn std::fmt::Display| OpenError::corrupt(path, why);
    let mut seqs = Vec::new();
    for item in fs::read_dir(dir).map_err(|e| OpenError::from_io(dir, e))? {
        let item = item.map_err(|e| OpenError::from_io(dir, e))?;
        let name = item.file_name();
        let Some(seq) = name.to_str().and_then(|n| n.strip_suffix(".wal")).and_then(|n| n.parse::<u64>().ok()) else {
            continue;
        };
        seqs.push(seq);
    }
    seqs.sort_unstable();

    let mut contents: Vec<Vec<u8>> = Vec::new();
    let mut formats = Vec::new();
    let mut segments = Vec::new();
    let mut state = ReplayState { snapshot, ..ReplayState::default() };
    let (mut last_pos, mut last_batch) = (0, 0);
    for (i, &seq) in seqs.iter().enumerate() {
        let path = segment_path(dir, seq);
        let bytes = fs::read(&path).map_err(|e| OpenError::from_io(&path, e))?;
        let is_last = i + 1 == seqs.len();
        let scanned = scan(&bytes, is_last).map_err(|why| corrupt(&path, &why))?;
        if let Some(torn) = &scanned.torn {
            cut_torn_tail(&path, scanned.valid_len, bytes.len(), torn)?;
            if scanned.valid_len < MAGIC.len() {
                // Torn while being created: it never held anything.
                continue;
            }
        }
        let mut max_index = None;
        for (kind, body) in scanned.records {
            let entry = state.record(kind, &bytes, body, contents.len()).map_err(|e| corrupt(&path, &e))?;
            max_index = entry.or(max_index);
        }
        contents.push(bytes);
        formats.push(scanned.format);
        segments.push(Segment { seq, path, max_index });
        (last_pos, last_batch) = (scanned.valid_len as u64, scanned.batch);
    }
    let appendable = formats.last() == Some(&Format::V2);
    if let (false, Some(seg)) = (appendable, segments.last()) {
        tracing::info!(path = %seg.path.display(), "the last raft log segment is in format 1: writes go to a new segment");
    }

    // Readers' handles; the last segment's is the writer's too.
    let mut files = Vec::with_capacity(segments.len());
    for (i, seg) in segments.iter().enumerate() {
        let writable = appendable && i + 1 == segments.len();
        let file = OpenOptions::new().read(true).write(writable).open(&seg.path);
        files.push(Arc::new(file.map_err(|e| OpenError::from_io(&seg.path, e))?));
    }
    let first_cached = state.entries.len().saturating_sub(cache);
    let mut entries = VecDeque::with_capacity(state.entries.len());
    let mut cached = VecDeque::with_capacity(state.entries.len() - first_cached);
    for (i, p) in state.entries.into_iter().enumerate() {
        if i >= first_cached {
            let path = &segments[p.segment].path;
            let entry = Reader::new(&contents[p.segment][p.body.clone()]).entry().map_err(|e| corrupt(path, &e))?;
            if entry.log_id != p.log_id {
                return Err(corrupt(path, &format!("entry {} does not read back as itself", p.log_id)));
            }
            cached.push_back(entry);
        }
        let format = formats[p.segment];
        let frame_start = p.body.start - 1 - format.header();
        let len = (p.body.end - frame_start) as u32;
        let at = Location { file: files[p.segment].clone(), offset: frame_start as u64, len, format };
        entries.push_back((p.log_id, at));
    }
    let active = match (segments.last(), files.last()) {
        (Some(seg), Some(file)) if appendable => {
            let capacity = file.metadata().map_err(|e| OpenError::from_io(&seg.path, e))?.len();
            Some(Active { file: file.clone(), pos: last_pos, capacity, batch: last_batch })
        }
        _ => None,
    };
    Ok(Replayed {
        vote: state.vote,
        committed: state.committed,
        purged: state.purged,
        entries,
        cached,
        segments,
        active,
    })
}

#[derive(Default)]
struct ReplayState {
    /// The last entry the snapshot on disk holds, if there is one.
    snapshot: Option<LogId>,
    vote: Option<Vote>,
    committed: Option<LogId>,
    purged: Option<LogId>,
    entries: VecDeque<Pending>,
}

impl ReplayState {
    /// Applies the record `kind` whose body is `bytes[body]` in segment
    /// number `segment`; returns the index of an entry record.
    fn record(&mut self, kind: u8, bytes: &[u8], body: Range<usize>, segment: usize) -> io::Result<Option<u64>> {
        let mut r = Reader::new(&bytes[body.clone()]);
        match kind {
            ENTRY => {
                let log_id = r.log_id()?;
                self.entry(Pending { log_id, segment, body })?;
                return Ok(Some(log_id.index));
            }
            VOTE => self.vote = Some(r.vote()?),
            COMMITTED => self.committed = r.opt_log_id()?,
            PURGED => self.purge(r.log_id()?),
            TRUNCATE => self.truncate(r.u64()?),
            other => return Err(invalid(format!("unknown record kind {other}"))),
        }
        Ok(None)
    }

    fn entry(&mut self, p: Pending) -> io::Result<()> {
        let index = p.log_id.index;
        if self.purged.is_some_and(|purged| index <= purged.index) {
            return Ok(());
        }
        // An entry at or below the last one replaces it and what follows.
        self.truncate(index);
        let expected = match (self.entries.back(), self.purged) {
            (Some(last), _) => Some(last.log_id.index + 1),
            (None, Some(purged)) => Some(purged.index + 1),
            (None, None) => None,
        };
        if let Some(expected) = expected.filter(|e| *e != index) {
            // After installing a snapshot a follower appends what follows
            // it before openraft purges the log it replaced: a crash between
            // the two leaves a gap that the snapshot on disk covers.
            match self.snapshot.filter(|s| s.index + 1 >= index) {
                Some(snapshot) => {
                    tracing::info!(
                        after = expected - 1,
                        next = index,
                        snapshot = snapshot.index,
                        "the raft log has a gap the snapshot covers (a crash after a snapshot install, before the purge)"
                    );
                    self.purge(snapshot);
                    if index <= snapshot.index {
                        return Ok(());
                    }
                }
                None => return Err(invalid(format!("hole in the log: entry {index} follows {}", expected - 1))),
            }
        }
        self.entries.push_back(p);
        Ok(())
    }

    fn truncate(&mut self, from: u64) {
        while self.entries.back().is_some_and(|e| e.log_id.index >= from) {
            self.entries.pop_back();
        }
    }

    fn purge(&mut self, upto: LogId) {
        if self.purged.is_some_and(|p| p >= upto) {
            return;
        }
        self.purged = Some(upto);
        while self.entries.front().is_some_and(|e| e.log_id.index <= upto.index) {
            self.entries.pop_front();
        }
    }
}

struct Scanned {
    format: Format,
    /// Each kept record's kind and the byte range of its body.
    records: Vec<(u8, Range<usize>)>,
    /// Where the kept frames end.
    valid_len: usize,
    /// The number of the last batch kept (format 2).
    batch: u32,
    /// The torn write cut off after them, if any.
    torn: Option<Torn>,
}

/// A write that never completed, found at the end of the last segment.
struct Torn {
    /// Where the damage starts, and what is wrong there.
    at: usize,
    what: &'static str,
    /// The batch it belongs to (format 2).
    batch: Option<u32>,
    /// Intact frames of that batch, before and after the damage, that are
    /// cut off with it.
    intact_frames: usize,
}

/// A frame that passed its checks.
struct Good {
    kind: u8,
    body: Range<usize>,
    /// The batch word (0 in format 1).
    word: u32,
    end: usize,
}

/// A frame that failed its checks: why, and the bytes `from..to` it would
/// take (`to` may lie past the end of the file).
struct Bad {
    what: &'static str,
    from: usize,
    to: usize,
}

impl Bad {
    /// Whether it bears the mark of a write that never completed: the file
    /// ends inside it, or one of its sectors reads, from the frame on, as
    /// nothing but zeros (what it held before the write).
    fn interrupted(&self, bytes: &[u8]) -> bool {
        if self.to > bytes.len() {
            return true;
        }
        let mut at = self.from;
        while at < self.to {
            let sector_end = (at / SECTOR + 1) * SECTOR;
            if bytes[at..sector_end.min(bytes.len())].iter().all(|b| *b == 0) {
                return true;
            }
            at = sector_end;
        }
        false
    }
}

fn zeros(bytes: &[u8], from: usize) -> bool {
    bytes.get(from..).is_none_or(|rest| rest.iter().all(|b| *b == 0))
}

/// Reads and checks the frame at `pos` (not past the end of `bytes`).
fn read_frame(bytes: &[u8], pos: usize, format: Format) -> Result<Good, Bad> {
    let header = format.header();
    let bad = |what, to| Bad { what, from: pos, to };
    if bytes.len() - pos < header {
        return Err(bad("incomplete frame header", pos + header));
    }
    let len = u32_at(bytes, pos);
    if u32_at(bytes, pos + 4) != !len || len == 0 || len as usize > MAX_FRAME {
        return Err(bad("bad frame header", pos + header));
    }
    let end = pos + header + len as usize;
    if end > bytes.len() {
        return Err(bad("frame cut short by the end of the file", end));
    }
    if crc32fast::hash(&bytes[pos + HEADER_V1..end]) != u32_at(bytes, pos + 8) {
        return Err(bad("checksum mismatch", end));
    }
    let word = if format == Format::V2 { u32_at(bytes, pos + 12) } else { 0 };
    Ok(Good { kind: bytes[pos + header], body: pos + header + 1..end, word, end })
}

/// Walks the frames of one segment, up to the end of the file or of the
/// frames (nothing but zeros from there on), and judges a bad frame by the
/// rule of its format (see the top of this file): a torn write at the end of
/// the last segment is left out of what is kept, anything else is an error.
fn scan(bytes: &[u8], is_last: bool) -> Result<Scanned, String> {
    if bytes.starts_with(MAGIC) {
        return scan_v2(bytes, is_last);
    }
    if bytes.starts_with(MAGIC_V1) {
        return scan_v1(bytes, is_last);
    }
    let torn_creation = MAGIC.starts_with(bytes) || MAGIC_V1.starts_with(bytes) || zeros(bytes, 0);
    if is_last && torn_creation {
        let torn = Torn { at: 0, what: "incomplete segment magic", batch: None, intact_frames: 0 };
        return Ok(Scanned { format: Format::V2, records: Vec::new(), valid_len: 0, batch: 0, torn: Some(torn) });
    }
    Err("not a raft log segment (bad magic)".into())
}

/// Format 1: in the last segment, a bad frame with nothing but zeros after
/// it (after its header, for a bad header), or one cut short by the end of
/// the file, is a torn write.
fn scan_v1(bytes: &[u8], is_last: bool) -> Result<Scanned, String> {
    let mut records = Vec::new();
    let mut pos = MAGIC_V1.len();
    while !zeros(bytes, pos) {
        match read_frame(bytes, pos, Format::V1) {
            Ok(f) => {
                records.push((f.kind, f.body));
                pos = f.end;
            }
            Err(bad) if is_last && (bad.to > bytes.len() || zeros(bytes, bad.to)) => {
                let torn = Torn { at: pos, what: bad.what, batch: None, intact_frames: 0 };
                return Ok(Scanned { format: Format::V1, records, valid_len: pos, batch: 0, torn: Some(torn) });
            }
            Err(bad) => return Err(format!("{} at offset {pos} of {} bytes", bad.what, bytes.len())),
        }
    }
    Ok(Scanned { format: Format::V1, records, valid_len: pos, batch: 0, torn: None })
}

fn scan_v2(bytes: &[u8], is_last: bool) -> Result<Scanned, String> {
    let mut records = Vec::new();
    let mut pos = MAGIC.len();
    // The last batch read, whether its last frame is still to come, and where
    // it began (its offset, and how many records came before it).
    let (mut batch, mut open, mut began) = (0u32, false, (pos, 0));
    let bad = loop {
        if zeros(bytes, pos) {
            if !open {
                return Ok(Scanned { format: Format::V2, records, valid_len: pos, batch, torn: None });
            }
            break Bad { what: "the batch ends without its last frame", from: pos, to: pos + HEADER };
        }
        match read_frame(bytes, pos, Format::V2) {
            Ok(f) => {
                let expected = if open { batch } else { batch + 1 };
                if f.word & !LAST != expected {
                    let found = f.word & !LAST;
                    return Err(format!("the frame at offset {pos} belongs to batch {found} where batch {expected} was due (batches are written in order)"));
                }
                if !open {
                    began = (pos, records.len());
                }
                (batch, open) = (expected, f.word & LAST == 0);
                records.push((f.kind, f.body));
                pos = f.end;
            }
            Err(bad) => break bad,
        }
    };
    // The batch the damage is in: the one read last, or the next one.
    let damaged = if open { batch } else { batch + 1 };
    let (cut, kept) = if open { began } else { (pos, records.len()) };
    let found = format!("{} at offset {pos} (in batch {damaged}) of {} bytes", bad.what, bytes.len());
    if !is_last {
        return Err(format!(
            "{found}, in a segment that is not the last one (it was complete and synced before the next one was begun)"
        ));
    }
    let (same, later) = intact_after(bytes, pos + 1, damaged);
    if let Some((at, later)) = later {
        return Err(format!(
            "{found}, and an intact frame of the later batch {later} follows at offset {at}: a batch is written only \
             once the one before it is synced, so the damaged batch was on disk and may have been acknowledged"
        ));
    }
    if !bad.interrupted(bytes) {
        return Err(format!(
            "{found}, with no mark of a write that never completed (the file does not end inside the frame, and no \
             512-byte sector of it reads as zeros): it may have been acknowledged"
        ));
    }
    let intact_frames = records.len() - kept + same;
    records.truncate(kept);
    let torn = Torn { at: pos, what: bad.what, batch: Some(damaged), intact_frames };
    Ok(Scanned { format: Format::V2, records, valid_len: cut, batch: damaged - 1, torn: Some(torn) })
}

/// The intact frames at or after `from`, at any offset (past damage, a
/// frame need not begin where the one before it ended): how many belong to
/// `batch`, and the first one from a later batch, with its offset.
fn intact_after(bytes: &[u8], from: usize, batch: u32) -> (usize, Option<(usize, u32)>) {
    let (mut same, mut at) = (0, from);
    while at + HEADER <= bytes.len() {
        match read_frame(bytes, at, Format::V2) {
            Ok(f) if f.word & !LAST > batch => return (same, Some((at, f.word & !LAST))),
            Ok(f) => {
                same += usize::from(f.word & !LAST == batch);
                at = f.end;
            }
            Err(_) => at += 1,
        }
    }
    (same, None)
}

/// Cuts the last segment back to `valid_len` (or removes it if not even its
/// magic made it to disk), durably.
fn cut_torn_tail(path: &Path, valid_len: usize, file_len: usize, torn: &Torn) -> Result<(), OpenError> {
    tracing::warn!(
        path = %path.display(),
        cut_from = valid_len,
        cut_bytes = file_len - valid_len,
        damage_at = torn.at,
        damage = torn.what,
        batch = torn.batch,
        intact_frames_cut = torn.intact_frames,
        "the raft log ends in a write that never completed (a crash while writing; it was never acknowledged): \
         cutting it off"
    );
    let cut = || -> io::Result<()> {
        if valid_len < MAGIC.len() {
            fs::remove_file(path)?;
            return path.parent().map_or(Ok(()), sync_dir);
        }
        let file = OpenOptions::new().write(true).open(path)?;
        file.set_len(valid_len as u64)?;
        file.sync_all()
    };
    cut().map_err(|e| OpenError::from_io(path, e))
}

#[cfg(test)]
#[path = "wal_tests.rs"]
mod tests;
