//! A damaged data dir is reported, never silently reset.

use std::fs;
use std::path::Path;

use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
use openraft::{Entry, EntryPayload, LogId, RaftLogReader};
use vpn_storage::types::TypeConfig;
use vpn_storage::OpenError;

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

#[tokio::test]
async fn undecodable_log_entry_is_a_read_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    populated(dir.path()).await;
    {
        let db = sled::open(dir.path().join("raft")).expect("sled");
        let log = db.open_tree("log").expect("log tree");
        log.insert(2u64.to_be_bytes(), &b"{not json"[..]).expect("insert");
        db.flush().expect("flush");
    }
    let (mut log, _sm) = vpn_storage::open(dir.path()).expect("the last entry still decodes");
    assert!(log.try_get_log_entries(1..4).await.is_err());
    assert_eq!(log.try_get_log_entries(3..4).await.expect("entry 3").len(), 1);
}

#[tokio::test]
async fn undecodable_vote_is_reported_at_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    populated(dir.path()).await;
    {
        let db = sled::open(dir.path().join("raft")).expect("sled");
        let meta = db.open_tree("raft_meta").expect("meta tree");
        meta.insert("vote", &b"\xff"[..]).expect("insert");
        db.flush().expect("flush");
    }
    expect_corrupt(&dir.path().join("raft"), dir.path());
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
