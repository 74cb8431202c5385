//! What was made durable is there after the store is dropped and reopened.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::{blank, log_id, membership, normal, reopen_sled, state_of};
use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::{RaftLogReader, RaftSnapshotBuilder, Vote};
use vpn_storage::command::Command;
use vpn_storage::model::User;

fn user(name: &str) -> User {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    User::new(name.to_owned(), now)
}

#[tokio::test]
async fn log_vote_and_committed_survive_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (mut log, _sm) = vpn_storage::open(dir.path()).expect("open");
        log.blocking_append((1..=5).map(blank)).await.expect("append");
        log.save_vote(&Vote::new(3, 1)).await.expect("vote");
        log.save_committed(Some(log_id(1, 4))).await.expect("committed");
    }
    let (mut log, _sm) = vpn_storage::open(dir.path()).expect("reopen");
    let entries = log.try_get_log_entries(..).await.expect("entries");
    let ids: Vec<_> = entries.iter().map(|e| e.log_id.index).collect();
    assert_eq!(ids, [1, 2, 3, 4, 5]);
    assert_eq!(log.read_vote().await.expect("vote"), Some(Vote::new(3, 1)));
    assert_eq!(log.read_committed().await.expect("committed"), Some(log_id(1, 4)));
}

#[tokio::test]
async fn truncate_and_purge_survive_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (mut log, _sm) = vpn_storage::open(dir.path()).expect("open");
        log.blocking_append((1..=10).map(blank)).await.expect("append");
        log.truncate(log_id(1, 8)).await.expect("truncate");
        log.purge(log_id(1, 3)).await.expect("purge");
    }
    let (mut log, _sm) = vpn_storage::open(dir.path()).expect("reopen");
    let state = log.get_log_state().await.expect("log state");
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 3)));
    assert_eq!(state.last_log_id, Some(log_id(1, 7)));
    let entries = log.try_get_log_entries(..).await.expect("entries");
    let ids: Vec<_> = entries.iter().map(|e| e.log_id.index).collect();
    assert_eq!(ids, [4, 5, 6, 7]);
}

#[tokio::test]
async fn applied_state_survives_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let before = {
        let (_log, mut sm) = vpn_storage::open(dir.path()).expect("open");
        sm.apply([
            membership(1, &[1, 2, 3]),
            normal(2, Command::CreateUser(user("alice"))),
            normal(3, Command::CreateUser(user("bob"))),
        ])
        .await
        .expect("apply");
        sm.apply([normal(4, Command::DeleteUser { name: "alice".into() }), blank(5)]).await.expect("apply");
        state_of(&sm)
    };
    assert_eq!(before.last_applied, Some(log_id(1, 5)));
    assert_eq!(before.users.keys().collect::<Vec<_>>(), ["bob"]);
    let (_log, mut sm) = vpn_storage::open(dir.path()).expect("reopen");
    assert_eq!(state_of(&sm), before);
    let (applied, members) = sm.applied_state().await.expect("applied state");
    assert_eq!(applied, Some(log_id(1, 5)));
    assert_eq!(members.log_id(), &Some(log_id(1, 1)));
}

/// A log that outgrows its segment moves on to a new one, which restates
/// the vote; a purge past every entry of the old segment removes its file.
#[tokio::test]
async fn log_moves_to_a_new_segment_and_purge_removes_the_old_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let segments = || {
        let mut names: Vec<_> = std::fs::read_dir(dir.path().join("raft-log"))
            .expect("raft-log")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".wal"))
            .collect();
        names.sort();
        names
    };
    // Blank entries take 42 bytes on disk: this overfills one 8 MiB segment.
    const N: u64 = 230_000;
    {
        let (mut log, _sm) = vpn_storage::open(dir.path()).expect("open");
        log.save_vote(&Vote::new(2, 1)).await.expect("vote");
        log.blocking_append((1..=N).map(blank)).await.expect("append");
        log.blocking_append([blank(N + 1)]).await.expect("append into a new segment");
        assert_eq!(segments().len(), 2, "{:?}", segments());
        log.purge(log_id(1, N)).await.expect("purge");
        log.blocking_append([blank(N + 2)]).await.expect("append after the purge");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while segments().len() > 1 {
            assert!(std::time::Instant::now() < deadline, "the purged segment is still there: {:?}", segments());
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
    let (mut log, _sm) = vpn_storage::open(dir.path()).expect("reopen");
    let state = log.get_log_state().await.expect("log state");
    assert_eq!(state.last_purged_log_id, Some(log_id(1, N)));
    assert_eq!(state.last_log_id, Some(log_id(1, N + 2)));
    let ids: Vec<_> = log.try_get_log_entries(..).await.expect("entries").iter().map(|e| e.log_id.index).collect();
    assert_eq!(ids, [N + 1, N + 2]);
    assert_eq!(log.read_vote().await.expect("vote"), Some(Vote::new(2, 1)));
}

/// An install that crashed after persisting the snapshot file but before
/// rewriting the `sm` tree: the snapshot is newer, so open loads it.
#[tokio::test]
async fn newer_snapshot_wins_over_stale_tree_on_open() {
    let leader = tempfile::tempdir().expect("tempdir");
    let (_log, mut sm) = vpn_storage::open(leader.path()).expect("open leader");
    sm.apply([membership(1, &[1]), normal(2, Command::CreateUser(user("carol")))]).await.expect("apply");
    let snapshot = sm.get_snapshot_builder().await.build_snapshot().await.expect("build");

    let follower = tempfile::tempdir().expect("tempdir");
    {
        let (_log, mut sm) = vpn_storage::open(follower.path()).expect("open follower");
        sm.install_snapshot(&snapshot.meta, snapshot.snapshot).await.expect("install");
    }
    {
        let db = reopen_sled(follower.path());
        db.open_tree("sm").expect("sm tree").clear().expect("clear");
        db.flush().expect("flush");
    }
    let (_log, sm_f) = vpn_storage::open(follower.path()).expect("reopen follower");
    assert_eq!(state_of(&sm_f), state_of(&sm));
}

/// A data dir whose log was written before frames carried batch numbers
/// (format 1, `tests/data/v1-segment.wal`, written by commit a68a0d8: vote
/// 2/1, entries 1 to 4, committed 1/2) opens with all of it; new writes go
/// to a new segment in the current format, and both read back.
#[tokio::test]
async fn a_log_in_format_1_opens_and_takes_new_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    drop(vpn_storage::open(dir.path()).expect("create"));
    let log_dir = dir.path().join("raft-log");
    let first = log_dir.join(format!("{:020}.wal", 1));
    std::fs::write(&first, include_bytes!("data/v1-segment.wal")).expect("write the old segment");
    let segments = || {
        let mut names: Vec<_> = std::fs::read_dir(&log_dir)
            .expect("raft-log")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|x| x == "wal"))
            .collect();
        names.sort();
        names
    };
    let check = |entries: &[openraft::Entry<vpn_storage::types::TypeConfig>], n: u64| {
        let ids: Vec<u64> = entries.iter().map(|e| e.log_id.index).collect();
        assert_eq!(ids, (1..=n).collect::<Vec<_>>());
        assert!(
            matches!(&entries[1].payload, openraft::EntryPayload::Normal(Command::CreateUser(u)) if u.name == "alice"),
            "entry 2: {:?}",
            entries[1].payload
        );
    };
    {
        let (mut log, _sm) = vpn_storage::open(dir.path()).expect("open a format 1 log");
        check(&log.try_get_log_entries(..).await.expect("entries"), 4);
        assert_eq!(log.read_vote().await.expect("vote"), Some(Vote::new(2, 1)));
        assert_eq!(log.read_committed().await.expect("committed"), Some(log_id(1, 2)));
        log.blocking_append([blank(5)]).await.expect("append");
    }
    let files = segments();
    assert_eq!(files.len(), 2, "{files:?}");
    assert_eq!(std::fs::read(&first).expect("old segment"), include_bytes!("data/v1-segment.wal"), "format 1 changed");
    assert!(std::fs::read(&files[1]).expect("new segment").starts_with(b"VPNWAL2\n"));
    let (mut log, _sm) = vpn_storage::open(dir.path()).expect("reopen");
    check(&log.try_get_log_entries(..).await.expect("entries"), 5);
    assert_eq!(log.read_vote().await.expect("vote"), Some(Vote::new(2, 1)));
}
