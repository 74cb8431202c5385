//! A damaged data dir is reported, never silently reset.

mod common;

use std::fs;
use std::path::Path;

use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
use openraft::{Entry, EntryPayload, LogId, RaftLogReader};
use vpn_storage::types::TypeConfig;
use vpn_storage::{disk_faults, OpenError};

fn blank(index: u64) -> Entry<TypeConfig> {
    Entry { log_id: LogId::new(openraft::CommittedLeaderId::new(1, 0), index), payload: EntryPayload::Blank }
}

/// A data dir holding a few log entries and a vote.
async fn populated(dir: &Path) {
    let (mut log, _sm) = vpn_storage::open(dir).expect("open");
    log.blocking_append((1..=3).map(blank)).await.expect("append");
    log.save_vote(&openraft::Vote::new(1, 0)).await.expect("vote");
}

/// Opening `dir` must fail as corrupt, naming `names` (the damaged part).
fn expect_corrupt(names: &Path, dir: &Path) {
    match vpn_storage::open(dir) {
        Err(e @ OpenError::Corrupt { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains(&names.display().to_string()), "{msg}");
            assert!(msg.contains("restore it from a backup"), "{msg}");
        }
        Err(other) => panic!("expected a corrupt data dir, got: {other}"),
        Ok(_) => panic!("a damaged data dir opened as if it were fine"),
    }
}

#[tokio::test]
async fn garbage_db_file_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    populated(dir.path()).await;
    let db = dir.path().join("raft").join("db");
    let len = fs::metadata(&db).expect("db file").len() as usize;
    let garbage: Vec<u8> = (0..len.max(4096)).map(|i| (i * 7 + 13) as u8).collect();
    fs::write(&db, garbage).expect("write garbage");
    expect_corrupt(&dir.path().join("raft"), dir.path());
}

#[tokio::test]
async fn truncated_db_file_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    populated(dir.path()).await;
    let db = dir.path().join("raft").join("db");
    fs::File::options().write(true).open(&db).and_then(|f| f.set_len(0)).expect("truncate");
    expect_corrupt(&dir.path().join("raft"), dir.path());
}

/// The one segment file a small log lives in.
fn segment(dir: &Path) -> std::path::PathBuf {
    let mut files: Vec<_> = fs::read_dir(dir.join("raft-log"))
        .expect("raft-log dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    files.remove(0)
}

/// Where the frames of a segment end (the zero fill ahead of them starts).
fn frames_end(path: &Path) -> usize {
    disk_faults::frames_end(path).expect("read segment")
}

fn write_at(path: &Path, offset: usize, bytes: &[u8]) {
    use std::os::unix::fs::FileExt as _;
    let file = fs::OpenOptions::new().write(true).open(path).expect("open segment");
    file.write_all_at(bytes, offset as u64).expect("write");
}

/// A crash in the middle of a write leaves part of a frame at the end: it
/// was never acknowledged, so it is cut off and the log before it is intact.
#[tokio::test]
async fn torn_tail_of_the_log_is_cut_off() {
    let dir = tempfile::tempdir().expect("tempdir");
    populated(dir.path()).await;
    let seg = segment(dir.path());
    // Part of a frame after the last one, up to the end of its sector.
    let good_len = disk_faults::tear_tail(&seg).expect("tear the tail");
    {
        let (mut log, _sm) = vpn_storage::open(dir.path()).expect("a torn tail opens");
        assert_eq!(fs::metadata(&seg).expect("segment").len(), good_len as u64, "the torn tail was not cut off");
        let ids: Vec<_> = log.try_get_log_entries(..).await.expect("entries").iter().map(|e| e.log_id.index).collect();
        assert_eq!(ids, [1, 2, 3]);
        assert_eq!(log.read_vote().await.expect("vote"), Some(openraft::Vote::new(1, 0)));
        log.blocking_append([blank(4)]).await.expect("append after the cut");
    }
    let (mut log, _sm) = vpn_storage::open(dir.path()).expect("reopen");
    assert_eq!(log.try_get_log_entries(..).await.expect("entries").len(), 4);
}

/// A frame that fails its checksum with more log after it is not a torn
/// write: the store refuses to open and names the segment.
#[tokio::test]
async fn bad_frame_in_the_middle_of_the_log_is_corruption() {
    let dir = tempfile::tempdir().expect("tempdir");
    populated(dir.path()).await;
    let seg = segment(dir.path());
    let mut bytes = fs::read(&seg).expect("read");
    // The magic (8) and the first frame's header (16) and kind (1): inside its body.
    bytes[8 + 16 + 3] ^= 0x20;
    fs::write(&seg, &bytes).expect("write");
    expect_corrupt(&seg, dir.path());
}

/// Entries big enough that one append spans several 512-byte sectors.
fn users(from: u64, n: u64) -> Vec<Entry<TypeConfig>> {
    let user = |i: u64| vpn_storage::model::User::new(format!("user-{i}"), 1_700_000_000_000);
    let entry = |i| Entry {
        log_id: LogId::new(openraft::CommittedLeaderId::new(1, 0), i),
        payload: EntryPayload::Normal(vpn_storage::command::Command::CreateUser(user(i))),
    };
    (from..from + n).map(entry).collect()
}

/// Zeroes the 512-byte sector one sector after `offset`: what the disk holds
/// there if it never wrote the batch that `offset` is in.
fn lose_sector_after(path: &Path, offset: usize) {
    write_at(path, (offset / 512 + 1) * 512, &[0; 512]);
}

/// The fault of issue 14: the disk wrote the later sectors of the last,
/// unacknowledged append but not an earlier one. The store opens without
/// that append, whole, and takes new appends after it.
#[tokio::test]
async fn torn_last_batch_with_later_sectors_on_disk_is_cut_off() {
    let dir = tempfile::tempdir().expect("tempdir");
    populated(dir.path()).await;
    let seg = segment(dir.path());
    let batch_start = frames_end(&seg);
    {
        let (mut log, _sm) = vpn_storage::open(dir.path()).expect("open");
        log.blocking_append(users(4, 8)).await.expect("append");
    }
    let batch_end = frames_end(&seg);
    assert!(batch_end - batch_start > 3 * 512, "the append spans {} bytes", batch_end - batch_start);
    lose_sector_after(&seg, batch_start);
    {
        let (mut log, _sm) = vpn_storage::open(dir.path()).expect("a torn last batch opens");
        assert_eq!(fs::metadata(&seg).expect("segment").len(), batch_start as u64, "the batch was not cut whole");
        let ids: Vec<_> = log.try_get_log_entries(..).await.expect("entries").iter().map(|e| e.log_id.index).collect();
        assert_eq!(ids, [1, 2, 3]);
        log.blocking_append(users(4, 2)).await.expect("append after the cut");
    }
    let (mut log, _sm) = vpn_storage::open(dir.path()).expect("reopen");
    assert_eq!(log.try_get_log_entries(..).await.expect("entries").len(), 5);
}

/// The same lost sector, but another append came after that batch: it was
/// synced before that append was written, so the store refuses, naming the
/// segment, the offset and the batch.
#[tokio::test]
async fn lost_sector_before_a_later_batch_is_corruption() {
    let dir = tempfile::tempdir().expect("tempdir");
    populated(dir.path()).await;
    let seg = segment(dir.path());
    let batch_start = frames_end(&seg);
    {
        let (mut log, _sm) = vpn_storage::open(dir.path()).expect("open");
        log.blocking_append(users(4, 8)).await.expect("append");
        log.blocking_append([blank(12)]).await.expect("a later append");
    }
    lose_sector_after(&seg, batch_start);
    expect_corrupt(&seg, dir.path());
    let Err(e) = vpn_storage::open(dir.path()) else { panic!("opened") };
    let msg = e.to_string();
    assert!(msg.contains("at offset") && msg.contains("an intact frame of the later batch"), "{msg}");
}

/// A flipped bit in the last append leaves no sector as it was before the
/// write: that append may have been acknowledged, so nothing is cut.
#[tokio::test]
async fn flipped_bit_in_the_last_batch_is_corruption() {
    let dir = tempfile::tempdir().expect("tempdir");
    populated(dir.path()).await;
    let seg = segment(dir.path());
    let batch_start = frames_end(&seg);
    {
        let (mut log, _sm) = vpn_storage::open(dir.path()).expect("open");
        log.blocking_append(users(4, 8)).await.expect("append");
    }
    let mut bytes = fs::read(&seg).expect("read");
    bytes[batch_start + 700] ^= 0x08;
    fs::write(&seg, &bytes).expect("write");
    expect_corrupt(&seg, dir.path());
}

#[tokio::test]
async fn missing_log_dir_is_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    populated(dir.path()).await;
    fs::remove_dir_all(dir.path().join("raft-log")).expect("remove");
    expect_corrupt(&dir.path().join("raft-log"), dir.path());
}

/// A data dir written when the log lived in sled (trees `log` and
/// `raft_meta`, JSON values) opens with its log and vote.
#[tokio::test]
async fn log_kept_in_sled_by_an_earlier_version_is_imported() {
    let dir = tempfile::tempdir().expect("tempdir");
    drop(vpn_storage::open(dir.path()).expect("create"));
    fs::remove_dir_all(dir.path().join("raft-log")).expect("remove");
    {
        let db = common::reopen_sled(dir.path());
        db.remove("raft_log_dir").expect("unmark");
        let log = db.open_tree("log").expect("log tree");
        for i in 1..=3u64 {
            log.insert(i.to_be_bytes(), serde_json::to_vec(&blank(i)).expect("json")).expect("insert");
        }
        let meta = db.open_tree("raft_meta").expect("meta tree");
        meta.insert("vote", serde_json::to_vec(&openraft::Vote::<u64>::new(5, 2)).expect("json")).expect("vote");
        db.flush().expect("flush");
    }
    let (mut log, _sm) = vpn_storage::open(dir.path()).expect("open the old layout");
    let ids: Vec<_> = log.try_get_log_entries(..).await.expect("entries").iter().map(|e| e.log_id.index).collect();
    assert_eq!(ids, [1, 2, 3]);
    assert_eq!(log.read_vote().await.expect("vote"), Some(openraft::Vote::new(5, 2)));
}

#[test]
fn data_dir_in_use_is_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _first = vpn_storage::open(dir.path()).expect("open");
    match vpn_storage::open(dir.path()) {
        Err(e @ OpenError::InUse { .. }) => assert!(e.to_string().contains("--data-dir"), "{e}"),
        Err(other) => panic!("expected in use, got: {other}"),
        Ok(_) => panic!("opened one data dir twice"),
    }
}

#[test]
fn data_dir_blocked_by_a_file_is_not_writable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("data");
    fs::write(&file, b"not a dir").expect("write");
    match vpn_storage::open(&file) {
        Err(e @ OpenError::NotWritable { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains(&file.display().to_string()), "{msg}");
            assert!(msg.contains("choose another --data-dir"), "{msg}");
        }
        Err(other) => panic!("expected not writable, got: {other}"),
        Ok(_) => panic!("opened a data dir inside a file"),
    }
}

#[tokio::test]
async fn garbage_snapshot_file_is_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    populated(dir.path()).await;
    let current = dir.path().join("snapshots").join("current");
    fs::write(&current, b"{\"last_log_id\": 7}\ngarbage").expect("write");
    expect_corrupt(&current, dir.path());
}
