//! A damaged data dir is reported, never silently reset.

use std::fs;
use std::path::Path;

use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
use openraft::{Entry, EntryPayload, LogId, RaftLogReader};
use vpn_storage::types::TypeConfig;
use vpn_storage::OpenError;

fn blank(index: u64) -> Entry<TypeConfig> {
    Entry {
        log_id: LogId::new(openraft::CommittedLeaderId::new(1, 0), index),
        payload: EntryPayload::Blank,
    }
}

/// A data dir holding a few log entries and a vote.
async fn populated(dir: &Path) {
    let (mut log, _sm) = vpn_storage::open(dir).expect("open");
    log.blocking_append((1..=3).map(blank)).await.expect("append");
    log.save_vote(&openraft::Vote::new(1, 0)).await.expect("vote");
}

fn expect_corrupt(dir: &Path) {
    match vpn_storage::open(dir) {
        Err(e @ OpenError::Corrupt { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains(&dir.display().to_string()), "{msg}");
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
    expect_corrupt(dir.path());
}

#[tokio::test]
async fn truncated_db_file_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    populated(dir.path()).await;
    let db = dir.path().join("raft").join("db");
    fs::File::options()
        .write(true)
        .open(&db)
        .and_then(|f| f.set_len(0))
        .expect("truncate");
    expect_corrupt(dir.path());
}
