//! `fuzz_wal_segments`: the Raft log's segment files as a crash, a bad disk
//! or a bug could leave them, replayed the way the store replays them when
//! it opens. Segments of the current format are laid out by the log's own
//! writer (`put_*`, batches sealed by `seal`); segments of format 1, which
//! is no longer written but still read, by its frozen layout. Frames are
//! corrupted two ways: inside (the record's body, framed again with a good
//! checksum, so the body decoder sees it) and outside (the file's bytes:
//! headers, checksums, batch words, magic, lengths).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::TestCaseError;
use vpn_fuzzkit::{bytes, mutate, mutation, Mutation};

use super::{entries, log_id, scratch_dir, vote};
use crate::codec;
use crate::types::{Entry, LogId, Vote};
use crate::wal::{self, Replayed, MAGIC};

/// The magic of a format 1 segment.
const MAGIC_V1: &[u8; 8] = b"VPNWAL1\n";

// Record kinds, as `wal.rs` documents the format.
const ENTRY: u8 = 1;
const VOTE: u8 = 2;
const COMMITTED: u8 = 3;
const PURGED: u8 = 4;
const TRUNCATE: u8 = 5;

#[derive(Clone, Debug)]
enum Record {
    Entry(Entry),
    Vote(Vote),
    Committed(Option<LogId>),
    Purged(LogId),
    Truncate(u64),
    Unknown(u8, Vec<u8>),
}

impl Record {
    /// The frame as the log's writer makes it (unsealed), or as format 1 had it.
    fn put(&self, buf: &mut Vec<u8>, v1: bool) {
        if v1 {
            return frame_v1(buf, &self.payload());
        }
        match self {
            Record::Entry(entry) => wal::put_entry(buf, entry).expect("an entry encodes"),
            Record::Vote(v) => wal::put_vote(buf, v),
            Record::Committed(c) => wal::put_committed(buf, c.as_ref()),
            Record::Purged(p) => wal::put_purged(buf, p),
            Record::Truncate(from) => wal::put_truncate(buf, *from),
            Record::Unknown(..) => frame_v2(buf, &self.payload()),
        }
    }

    /// The frame's payload: the record kind, then its body.
    fn payload(&self) -> Vec<u8> {
        let mut p = Vec::new();
        match self {
            Record::Entry(entry) => {
                p.push(ENTRY);
                codec::put_entry(&mut p, entry).expect("an entry encodes");
            }
            Record::Vote(v) => {
                p.push(VOTE);
                codec::put_vote(&mut p, v);
            }
            Record::Committed(c) => {
                p.push(COMMITTED);
                codec::put_opt_log_id(&mut p, c.as_ref());
            }
            Record::Purged(id) => {
                p.push(PURGED);
                codec::put_log_id(&mut p, id);
            }
            Record::Truncate(from) => {
                p.push(TRUNCATE);
                codec::put_u64(&mut p, *from);
            }
            Record::Unknown(kind, body) => {
                p.push(*kind);
                p.extend_from_slice(body);
            }
        }
        p
    }
}

/// A frame of format 1, which no longer changes:
/// `[len][!len][crc32(payload)][payload]`, little-endian.
fn frame_v1(buf: &mut Vec<u8>, payload: &[u8]) {
    let len = payload.len() as u32;
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&(!len).to_le_bytes());
    buf.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    buf.extend_from_slice(payload);
}

/// A frame of the current format around any payload: `[len][!len]`, the
/// rest of the header left for `wal::seal` (its length measured on a frame
/// the writer made, whose payload is a kind and a u64).
fn frame_v2(buf: &mut Vec<u8>, payload: &[u8]) {
    let mut probe = Vec::new();
    wal::put_truncate(&mut probe, 0);
    let header = probe.len() - 9;
    let len = payload.len() as u32;
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&(!len).to_le_bytes());
    buf.resize(buf.len() + header - 8, 0);
    buf.extend_from_slice(payload);
}

/// A log as the writer could have left it: segments of batches of records.
#[derive(Clone, Debug)]
struct Log {
    segments: Vec<Vec<Vec<Record>>>,
    /// How many of the first segments are in format 1 (no batches).
    v1: usize,
    /// Only entries, votes and commits: the log then reads back as exactly
    /// its entries, the last vote and the last commit.
    plain: bool,
}

fn extra_record() -> impl Strategy<Value = Record> {
    prop_oneof![
        log_id().prop_map(Record::Purged),
        prop_oneof![0u64..1100, any::<u64>()].prop_map(Record::Truncate),
        (prop_oneof![Just(0u8), 6u8..], bytes(16)).prop_map(|(kind, body)| Record::Unknown(kind, body)),
    ]
}

fn log() -> impl Strategy<Value = Log> {
    let extras = prop_oneof![Just(Vec::new()), vec((any::<Index>(), extra_record()), 1..3)];
    let v1 = prop_oneof![4 => Just(0usize), 1 => 1usize..3];
    (option::of(vote()), option::of(log_id()), entries(6), extras, vec(any::<Index>(), 0..6), v1).prop_map(
        |(vote, committed, entries, extras, cuts, v1)| {
            let mut records: Vec<Record> = vote.map(Record::Vote).into_iter().collect();
            records.push(Record::Committed(committed));
            records.extend(entries.into_iter().map(Record::Entry));
            let plain = extras.is_empty();
            for (at, record) in extras {
                records.insert(at.index(records.len() + 1), record);
            }
            // Cuts between records: the first half end segments, the rest batches.
            let mut segments = vec![vec![Vec::new()]];
            let at = |c: &Index| c.index(records.len() + 1);
            let (ends_segment, ends_batch): (Vec<usize>, Vec<usize>) = (
                cuts.iter().take(cuts.len() / 2).map(at).collect(),
                cuts.iter().skip(cuts.len() / 2).map(at).collect(),
            );
            for (i, record) in records.into_iter().enumerate() {
                if ends_segment.contains(&i) {
                    segments.push(vec![Vec::new()]);
                } else if ends_batch.contains(&i) {
                    segments.last_mut().expect("a segment").push(Vec::new());
                }
                segments.last_mut().expect("a segment").last_mut().expect("a batch").push(record);
            }
            for batches in &mut segments {
                batches.retain(|b| !b.is_empty());
            }
            Log { segments, v1, plain }
        },
    )
}

#[derive(Clone, Debug)]
enum Case {
    /// Files of random bytes, some behind a good magic.
    Random(Vec<(bool, Vec<u8>)>),
    /// `inner[k % len]` corrupts the body of the k-th record, `outer[i % len]`
    /// the bytes of the i-th segment; `zeros[i % len]` is its zero fill.
    Mutated { log: Log, inner: Vec<Vec<Mutation>>, outer: Vec<Vec<Mutation>>, zeros: Vec<usize>, cache: usize },
}

/// What a log that was not corrupted must read back as.
struct Expected {
    vote: Option<Vote>,
    committed: Option<LogId>,
    entries: Vec<Entry>,
}

impl Case {
    /// The segment files, the cache size to replay with, and what must come
    /// back when nothing was corrupted.
    fn files(&self) -> (Vec<Vec<u8>>, usize, Option<Expected>) {
        let (log, inner, outer, zeros, cache) = match self {
            Case::Random(files) => {
                let file = |(magic, bytes): &(bool, Vec<u8>)| {
                    if *magic {
                        [&MAGIC[..], bytes].concat()
                    } else {
                        bytes.clone()
                    }
                };
                return (files.iter().map(file).collect(), 3, None);
            }
            Case::Mutated { log, inner, outer, zeros, cache } => (log, inner, outer, zeros, cache),
        };
        let mut files = Vec::new();
        let mut unchanged = true;
        let mut k = 0;
        for (i, batches) in log.segments.iter().enumerate() {
            let v1 = i < log.v1;
            let mut buf = if v1 { MAGIC_V1.to_vec() } else { MAGIC.to_vec() };
            for (n, records) in batches.iter().enumerate() {
                let mut frames = Vec::new();
                for record in records {
                    let changes = &inner[k % inner.len()];
                    k += 1;
                    if changes.is_empty() {
                        record.put(&mut frames, v1);
                    } else {
                        unchanged = false;
                        let payload = mutate(&record.payload(), changes);
                        if v1 {
                            frame_v1(&mut frames, &payload);
                        } else {
                            frame_v2(&mut frames, &payload);
                        }
                    }
                }
                if !v1 {
                    wal::seal(&mut frames, n as u32 + 1);
                }
                buf.extend_from_slice(&frames);
            }
            buf.resize(buf.len() + zeros[i % zeros.len()], 0);
            let changes = &outer[i % outer.len()];
            unchanged &= changes.is_empty();
            files.push(mutate(&buf, changes));
        }
        let expected = (unchanged && log.plain).then(|| {
            let mut e = Expected { vote: None, committed: None, entries: Vec::new() };
            for record in log.segments.iter().flatten().flatten() {
                match record {
                    Record::Entry(entry) => e.entries.push(entry.clone()),
                    Record::Vote(v) => e.vote = Some(*v),
                    Record::Committed(c) => e.committed = *c,
                    _ => {}
                }
            }
            e
        });
        (files, *cache, expected)
    }
}

fn case() -> impl Strategy<Value = Case> {
    let changes = |none: u32, some: u32| prop_oneof![none => Just(Vec::new()), some => vec(mutation(), 1..4)];
    let zeros = prop_oneof![Just(0usize), 1usize..40, Just(4096)];
    let cache = prop_oneof![Just(0usize), 1usize..4, Just(usize::MAX)];
    prop_oneof![
        1 => vec((any::<bool>(), bytes(300)), 1..3).prop_map(Case::Random),
        4 => (log(), vec(changes(8, 1), 16), vec(changes(3, 2), 3), vec(zeros, 3), cache).prop_map(
            |(log, inner, outer, zeros, cache)| Case::Mutated { log, inner, outer, zeros, cache }
        ),
    ]
}

/// What two replays of one directory must agree on.
fn summary(r: &Replayed) -> (Option<Vote>, Option<LogId>, Option<LogId>, Vec<LogId>) {
    (r.vote, r.committed, r.purged, r.entries.iter().map(|(id, _)| *id).collect())
}

/// Replays `dir`: a clean error, or a log that holds together and that a
/// second replay (after any torn tail was cut off) reads the same way.
fn check(dir: &Path, cache: usize, expected: Option<Expected>) -> Result<(), TestCaseError> {
    let first = match wal::replay(dir, cache, None) {
        Ok(replayed) => replayed,
        Err(e) => {
            prop_assert!(expected.is_none(), "a log the writer wrote was refused: {e}");
            return Ok(());
        }
    };
    let seen = summary(&first);
    let ids = &seen.3;
    prop_assert!(ids.windows(2).all(|w| w[1].index == w[0].index + 1), "entries with a hole: {ids:?}");
    // Each entry reads back from where the log says it is, as itself (or
    // fails cleanly: only the cached ones were decoded in full).
    for (id, at) in &first.entries {
        if let Ok(entry) = at.read() {
            prop_assert_eq!(entry.log_id, *id);
        }
    }
    prop_assert_eq!(first.cached.len(), ids.len().min(cache));
    let newest = &ids[ids.len() - first.cached.len()..];
    prop_assert!(first.cached.iter().map(|e| e.log_id).eq(newest.iter().copied()), "cache is not the newest entries");
    if let Some(expected) = expected {
        prop_assert_eq!((first.vote, first.committed, first.purged), (expected.vote, expected.committed, None));
        let read: Result<Vec<Entry>, _> = first.entries.iter().map(|(_, at)| at.read()).collect();
        prop_assert_eq!(read.map_err(|e| TestCaseError::fail(e.to_string()))?, expected.entries);
    }
    drop(first);
    let second = wal::replay(dir, cache, None)
        .map_err(|e| TestCaseError::fail(format!("a log that opened once is refused the next time: {e}")))?;
    prop_assert_eq!(summary(&second), seen, "a second replay reads another log");
    Ok(())
}

#[test]
fn fuzz_wal_segments() {
    let scratch = scratch_dir();
    let next = AtomicU64::new(0);
    vpn_fuzzkit::run("wal_segments", file!(), case(), |case| {
        let dir = scratch.path().join(next.fetch_add(1, Ordering::Relaxed).to_string());
        std::fs::create_dir(&dir).expect("a case dir");
        let (files, cache, expected) = case.files();
        for (i, bytes) in files.iter().enumerate() {
            std::fs::write(wal::segment_path(&dir, i as u64 + 1), bytes).expect("a segment file");
        }
        let outcome = check(&dir, cache, expected);
        let _ = std::fs::remove_dir_all(&dir);
        outcome
    });
}
