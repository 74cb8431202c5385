//! The torn-write rule of `wal`, one fault at a time. A batch here is a run
//! of TRUNCATE frames (25 bytes each): what a frame carries does not matter
//! to the rule, only where its bytes are.

use std::os::unix::fs::FileExt as _;

use openraft::{CommittedLeaderId, EntryPayload};

use super::*;

/// `n` frames, laid out as the `put_*` functions do.
fn frames(n: u64) -> Vec<u8> {
    let mut buf = Vec::new();
    (0..n).for_each(|i| put_truncate(&mut buf, i));
    buf
}

/// A segment holding `batches` (batch i + 1 is `batches[i]`, sealed), and
/// where each batch begins.
fn segment(batches: &[Vec<u8>]) -> (Vec<u8>, Vec<usize>) {
    let mut buf = MAGIC.to_vec();
    let mut starts = Vec::new();
    for (i, batch) in batches.iter().enumerate() {
        starts.push(buf.len());
        let at = buf.len();
        buf.extend_from_slice(batch);
        seal(&mut buf[at..], i as u32 + 1);
    }
    (buf, starts)
}

/// The zero fill the writer keeps ahead of the frames.
fn zero_filled(mut buf: Vec<u8>) -> Vec<u8> {
    buf.resize(buf.len().div_ceil(CHUNK as usize) * CHUNK as usize, 0);
    buf
}

/// Sector `sector` as the disk holds it if it never wrote the batch that
/// begins at `batch_start`: what was there before (the bytes of earlier
/// batches, zeros from the batch on).
fn lose_sector(buf: &mut [u8], sector: usize, batch_start: usize) {
    let from = (sector * SECTOR).max(batch_start);
    let to = ((sector + 1) * SECTOR).min(buf.len());
    buf[from..to].fill(0);
}

/// The sectors a byte range touches.
fn sectors(range: Range<usize>) -> Range<usize> {
    range.start / SECTOR..range.end.div_ceil(SECTOR)
}

#[test]
fn scan_reads_every_frame_of_every_batch() {
    let (buf, _) = segment(&[frames(2), frames(1), frames(3)]);
    let end = buf.len();
    let buf = zero_filled(buf);
    for is_last in [true, false] {
        let s = scan(&buf, is_last).expect("scan");
        assert_eq!((s.format, s.records.len(), s.valid_len, s.batch), (Format::V2, 6, end, 3));
        assert!(s.torn.is_none());
    }
}

#[test]
fn the_checksum_covers_the_batch_word() {
    let (mut buf, starts) = segment(&[frames(1), frames(1)]);
    buf[starts[1] + 12] ^= 0x01; // batch 2 claims to be batch 3
    let err = scan(&buf, false).err().expect("a changed batch word");
    assert!(err.contains("checksum mismatch at offset"), "{err}");
}

/// The file ends inside the last batch (its size was written, its blocks
/// were not): the whole batch goes, what came before stays.
#[test]
fn a_last_batch_cut_short_by_the_end_of_the_file_is_cut_whole() {
    let (buf, starts) = segment(&[frames(2), frames(3)]);
    for cut in starts[1] + 1..buf.len() {
        let s = scan(&buf[..cut], true).expect("a torn tail");
        assert_eq!((s.records.len(), s.valid_len, s.batch), (2, starts[1], 1), "cut at {cut}");
        assert_eq!(s.torn.and_then(|t| t.batch), Some(2));
        assert!(scan(&buf[..cut], false).is_err(), "a torn middle segment at {cut} passed");
    }
}

/// The case of issue 14: the disk wrote later sectors of the last batch but
/// not an earlier one. Every frame before the damage, and every intact frame
/// of the batch after it, goes with the batch; the segment opens.
#[test]
fn a_torn_last_batch_with_written_sectors_after_a_lost_one_is_cut() {
    let (full, starts) = segment(&[frames(2), frames(100)]);
    let batch_2 = starts[1]..full.len();
    for lost in sectors(batch_2.clone()) {
        let mut buf = zero_filled(full.clone());
        lose_sector(&mut buf, lost, batch_2.start);
        let s = scan(&buf, true).unwrap_or_else(|e| panic!("sector {lost} lost: {e}"));
        assert_eq!((s.records.len(), s.valid_len, s.batch), (2, batch_2.start, 1), "sector {lost}");
        let torn = s.torn.expect("torn");
        assert_eq!(torn.batch, Some(2));
        // 25-byte frames: at most 22 of them touch the lost sector.
        assert!(torn.intact_frames >= 100 - 22, "sector {lost}: {} intact frames", torn.intact_frames);
    }
    // What the disk holds after the lost sector need not be frames at all
    // (stale blocks, say): with no later batch in it, the batch still goes.
    let mut buf = zero_filled(full.clone());
    let lost = batch_2.start / SECTOR + 1;
    lose_sector(&mut buf, lost, batch_2.start);
    buf[(lost + 1) * SECTOR..(lost + 2) * SECTOR].fill(0x5a);
    let s = scan(&buf, true).expect("garbage after a lost sector");
    assert_eq!(s.valid_len, batch_2.start);
}

/// A batch is written only after the one before it is synced: damage in a
/// batch that a later batch follows is damage to synced data.
#[test]
fn a_bad_frame_followed_by_a_frame_of_a_later_batch_is_corruption() {
    let (full, starts) = segment(&[frames(2), frames(100), frames(1)]);
    let mut lost = zero_filled(full.clone());
    lose_sector(&mut lost, starts[1] / SECTOR + 2, starts[1]);
    let mut flipped = full.clone();
    flipped[starts[1] + 30] ^= 0x10;
    let mut last_frame_of_2 = full.clone();
    last_frame_of_2[starts[2] - 3] ^= 0x01;
    for (case, buf) in [("lost sector", lost), ("flipped bit", flipped), ("batch's last frame", last_frame_of_2)] {
        let err = scan(&buf, true).err().unwrap_or_else(|| panic!("{case}: opened"));
        assert!(err.contains("(in batch 2)"), "{case}: {err}");
        assert!(err.contains(&format!("later batch 3 follows at offset {}", starts[2])), "{case}: {err}");
    }
    // The same damage at the head of batch 3, the last: a torn write.
    let mut buf = zero_filled(full);
    lose_sector(&mut buf, starts[2] / SECTOR, starts[2]);
    assert_eq!(scan(&buf, true).expect("torn batch 3").valid_len, starts[2]);
}

/// Flipped bits or garbage leave no sector as it was before the write: the
/// batch may have been synced and acknowledged, so it is not cut.
#[test]
fn damage_to_the_last_batch_without_the_mark_of_a_torn_write_is_corruption() {
    let (full, starts) = segment(&[frames(2), frames(100)]);
    let mut flipped = zero_filled(full.clone());
    flipped[starts[1] + 600] ^= 0x04;
    let mut garbage = zero_filled(full.clone());
    garbage[starts[1] + 100..starts[1] + 700].fill(0x5a);
    // Part of a sector as it was before the write (frame 10 of the batch
    // holding 0 for 10): a disk writes a sector whole or not at all.
    let mut partial = zero_filled(full);
    partial[starts[1] + 10 * 25 + HEADER + 1] = 0;
    for (case, buf) in [("flipped bit", flipped), ("garbage", garbage), ("part of a sector", partial)] {
        let err = scan(&buf, true).err().unwrap_or_else(|| panic!("{case}: opened"));
        assert!(err.contains("no mark of a write that never completed"), "{case}: {err}");
    }
}

#[test]
fn any_bad_frame_in_a_segment_before_the_last_is_corruption() {
    let (full, starts) = segment(&[frames(2), frames(100)]);
    let mut lost = zero_filled(full.clone());
    lose_sector(&mut lost, starts[1] / SECTOR + 1, starts[1]);
    let mut flipped = full.clone();
    flipped[starts[1] + 300] ^= 0x80;
    let cut = full[..full.len() - 10].to_vec();
    for (case, buf) in [("lost sector", lost), ("flipped bit", flipped), ("cut short", cut)] {
        let err = scan(&buf, false).err().unwrap_or_else(|| panic!("{case}: opened"));
        assert!(err.contains("not the last one"), "{case}: {err}");
    }
}

/// On disk: the cut is durable, the writer numbers its next batch after the
/// kept ones, and a segment before the last is held to the strict rule.
#[test]
fn replay_cuts_a_torn_last_batch_and_appends_after_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (full, starts) = segment(&[frames(2), frames(100)]);
    let mut torn = zero_filled(full);
    lose_sector(&mut torn, starts[1] / SECTOR + 1, starts[1]);
    let path = segment_path(dir.path(), 1);
    fs::write(&path, &torn).expect("write");

    let replayed = replay(dir.path(), 10, None).expect("replay");
    assert_eq!(fs::metadata(&path).expect("segment").len(), starts[1] as u64, "the cut is on disk");
    let mut active = replayed.active.expect("active");
    assert_eq!((active.pos, active.batch), (starts[1] as u64, 1));
    active.append(&mut frames(3)).expect("append");
    drop(active);
    let replayed = replay(dir.path(), 10, None).expect("replay again");
    assert_eq!(replayed.active.map(|a| a.batch), Some(2));

    // The same damage in a segment that another one follows.
    fs::write(&path, &torn).expect("write");
    fs::write(segment_path(dir.path(), 2), segment(&[frames(1)]).0).expect("write");
    match replay(dir.path(), 10, None) {
        Err(OpenError::Corrupt { path: named, reason }) => {
            assert_eq!(named, path);
            assert!(reason.contains("not the last one"), "{reason}");
        }
        Err(other) => panic!("expected corruption, got {other}"),
        Ok(_) => panic!("a damaged segment before the last opened"),
    }
}

fn entry(index: u64) -> Entry {
    Entry { log_id: LogId::new(CommittedLeaderId::new(3, 1), index), payload: EntryPayload::Blank }
}

/// One frame as format 1 wrote it: the checksum over the payload, no batch word.
fn put_v1(buf: &mut Vec<u8>, payload: &[u8]) {
    let len = payload.len() as u32;
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&(!len).to_le_bytes());
    buf.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    buf.extend_from_slice(payload);
}

fn v1_segment(n: u64) -> Vec<u8> {
    let mut buf = MAGIC_V1.to_vec();
    for i in 0..n {
        let mut payload = vec![TRUNCATE];
        codec::put_u64(&mut payload, i);
        put_v1(&mut buf, &payload);
    }
    buf
}

/// A segment written by the code before batches were numbered (commit
/// a68a0d8): a vote, entries 1 to 4, a committed id.
#[test]
fn a_segment_in_format_1_still_reads() {
    let fixture = include_bytes!("../tests/data/v1-segment.wal");
    let s = scan(&zero_filled(fixture.to_vec()), true).expect("format 1");
    assert_eq!((s.format, s.valid_len), (Format::V1, fixture.len()));
    let kinds: Vec<u8> = s.records.iter().map(|(kind, _)| *kind).collect();
    assert_eq!(kinds, [VOTE, ENTRY, ENTRY, ENTRY, ENTRY, COMMITTED]);
}

#[test]
fn locations_read_entries_in_both_formats() {
    let file = tempfile::tempfile().expect("file");
    let mut v1 = vec![ENTRY];
    codec::put_entry(&mut v1, &entry(7)).expect("encode");
    let mut bytes = Vec::new();
    put_v1(&mut bytes, &v1);
    let v1_len = bytes.len();
    let mut v2 = Vec::new();
    put_entry(&mut v2, &entry(8)).expect("encode");
    seal(&mut v2, 1);
    bytes.extend_from_slice(&v2);
    file.write_all_at(&bytes, 0).expect("write");
    let file = Arc::new(file);
    let at = |offset: usize, len: usize, format| Location {
        file: file.clone(),
        offset: offset as u64,
        len: len as u32,
        format,
    };
    assert_eq!(at(0, v1_len, Format::V1).read().expect("format 1").log_id.index, 7);
    assert_eq!(at(v1_len, v2.len(), Format::V2).read().expect("format 2").log_id.index, 8);
    assert!(at(v1_len, v2.len(), Format::V1).read().is_err(), "a frame read in the wrong format");
}

#[test]
fn format_1_any_cut_of_the_last_frame_is_a_torn_tail() {
    let buf = v1_segment(3);
    let last_start = v1_segment(2).len();
    for cut in last_start + 1..buf.len() {
        let s = scan(&buf[..cut], true).expect("torn tail");
        assert_eq!((s.records.len(), s.valid_len), (2, last_start), "cut at {cut}");
        assert!(scan(&buf[..cut], false).is_err(), "a torn middle segment at {cut} passed");
    }
    let mut zero_filled = buf[..last_start + 3].to_vec();
    zero_filled.resize(buf.len() + 100, 0);
    let s = scan(&zero_filled, true).expect("zeros");
    assert_eq!((s.valid_len, s.torn.is_some()), (last_start, true));
}

/// Format 1 cannot tell batches apart: a bad frame with data after it is
/// corruption, as it always was.
#[test]
fn format_1_a_bad_frame_followed_by_data_is_corruption() {
    let mut buf = v1_segment(3);
    buf[MAGIC_V1.len() + HEADER_V1 + 2] ^= 0x40;
    let err = scan(&buf, true).err().expect("corruption");
    assert!(err.contains("checksum mismatch"), "{err}");
    let mut buf = v1_segment(3);
    buf[MAGIC_V1.len()] ^= 0x01; // the length of the first frame
    assert!(scan(&buf, true).err().expect("corruption").contains("bad frame header"));
}

#[test]
fn a_garbage_file_is_not_a_segment() {
    assert!(scan(b"garbage that is long enough", true).is_err());
    assert_eq!(scan(b"VPN", true).expect("torn creation").valid_len, 0);
    assert_eq!(scan(&[0; 100], true).expect("torn creation").valid_len, 0);
}

/// What a fault does to a segment of whole batches.
#[derive(Clone, Debug)]
enum Fault {
    /// The disk never wrote one sector of batch `batch` (what it held before:
    /// zeros, from the batch's first byte on).
    LoseSector { batch: prop::sample::Index, sector: prop::sample::Index },
    /// A bit flipped anywhere in the frames.
    FlipBit { at: prop::sample::Index, bit: u8 },
    /// Garbage over some bytes of the frames.
    Garbage { at: prop::sample::Index, bytes: Vec<u8> },
    /// The file ends inside the frames (its blocks never made it).
    Cut { at: prop::sample::Index },
}

fn fault() -> impl Strategy<Value = Fault> {
    use prop::sample::Index;
    prop_oneof![
        (any::<Index>(), any::<Index>()).prop_map(|(batch, sector)| Fault::LoseSector { batch, sector }),
        (any::<Index>(), 0u8..8).prop_map(|(at, bit)| Fault::FlipBit { at, bit }),
        (any::<Index>(), prop::collection::vec(any::<u8>(), 1..40))
            .prop_map(|(at, bytes)| Fault::Garbage { at, bytes }),
        any::<Index>().prop_map(|at| Fault::Cut { at }),
    ]
}

use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Whatever the fault, the store either refuses or keeps whole batches
    /// that read back clean; it refuses whenever an intact later batch
    /// follows the damage, and cuts a torn last batch.
    #[test]
    fn a_fault_is_cut_only_in_the_last_batch(sizes in prop::collection::vec(1u64..40, 1..5), fault in fault()) {
        let batches: Vec<Vec<u8>> = sizes.iter().map(|n| frames(*n)).collect();
        let (clean, starts) = segment(&batches);
        let end = clean.len();
        let batch_of = |at: usize| starts.iter().rposition(|s| *s <= at).unwrap_or(0);
        let mut buf = zero_filled(clean.clone());
        let frames_at = |i: &prop::sample::Index| MAGIC.len() + i.index(end - MAGIC.len());
        // The batch the fault is in, and whether the disk could have done
        // it to a write that never completed.
        let (hit, torn_like) = match &fault {
            Fault::LoseSector { batch, sector } => {
                let b = batch.index(starts.len());
                let range = starts[b]..starts.get(b + 1).copied().unwrap_or(end);
                let s = sector.index(sectors(range.clone()).len()) + range.start / SECTOR;
                let to = ((s + 1) * SECTOR).min(range.end);
                buf[(s * SECTOR).max(range.start)..to].fill(0);
                (b, true)
            }
            Fault::FlipBit { at, bit } => {
                let at = frames_at(at);
                buf[at] ^= 1 << bit;
                (batch_of(at), false)
            }
            Fault::Garbage { at, bytes } => {
                let at = frames_at(at);
                let to = (at + bytes.len()).min(end);
                buf[at..to].copy_from_slice(&bytes[..to - at]);
                (batch_of(at), false)
            }
            Fault::Cut { at } => {
                let at = frames_at(at);
                buf.truncate(at);
                (batch_of(at), true)
            }
        };
        // A cut file holds nothing of the batches after the cut either.
        let last = hit + 1 == starts.len() || matches!(fault, Fault::Cut { .. });
        match scan(&buf, true) {
            _ if buf[..end.min(buf.len())] == clean[..] => {} // the fault changed nothing
            Err(why) => {
                prop_assert!(!(last && torn_like), "a torn last batch was refused: {why}");
            }
            Ok(s) => {
                prop_assert!(last, "damage to batch {} of {} was kept or cut", hit + 1, starts.len());
                prop_assert_eq!(s.valid_len, starts[hit], "not cut at the start of the torn batch");
                prop_assert_eq!(s.batch as usize, hit);
                let kept = scan(&zero_filled(buf[..s.valid_len].to_vec()), true).expect("the kept batches rescan");
                prop_assert!(kept.torn.is_none());
                prop_assert_eq!(kept.records.len(), s.records.len());
            }
        }
    }
}

/// A segment of the entries `indexes`, in one batch.
fn entries_segment(indexes: std::ops::RangeInclusive<u64>) -> Vec<u8> {
    let mut batch = Vec::new();
    for i in indexes {
        put_entry(&mut batch, &entry(i)).expect("encode");
    }
    segment(&[batch]).0
}

/// A follower crashed after appending what follows an installed snapshot
/// and before purging the log it replaced: entries 1-3, then 10-12. The
/// snapshot on disk (through entry 9) covers the gap; without it, or with
/// one that ends short of it, the gap is corruption.
#[test]
fn a_gap_is_accepted_only_where_the_snapshot_covers_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(segment_path(dir.path(), 1), zero_filled(entries_segment(1..=3))).expect("write");
    fs::write(segment_path(dir.path(), 2), zero_filled(entries_segment(10..=12))).expect("write");
    let at = |index| Some(entry(index).log_id);
    for snapshot in [None, at(8)] {
        match replay(dir.path(), 10, snapshot) {
            Err(OpenError::Corrupt { reason, .. }) => {
                assert!(reason.contains("hole in the log: entry 10 follows 3"), "{reason}")
            }
            Err(other) => panic!("expected corruption, got {other}"),
            Ok(_) => panic!("a gap the snapshot through {snapshot:?} does not cover was accepted"),
        }
    }
    let replayed = replay(dir.path(), 10, at(9)).expect("the snapshot covers the gap");
    assert_eq!(replayed.purged, at(9));
    let kept: Vec<u64> = replayed.entries.iter().map(|(id, _)| id.index).collect();
    assert_eq!(kept, [10, 11, 12]);
    let replayed = replay(dir.path(), 10, at(11)).expect("a snapshot past the gap");
    let kept: Vec<u64> = replayed.entries.iter().map(|(id, _)| id.index).collect();
    assert_eq!((replayed.purged, kept.as_slice()), (at(11), [12].as_slice()));
}
