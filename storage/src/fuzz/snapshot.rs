//! `fuzz_snapshot_file`: `<data dir>/snapshots/current` as a bad disk or a
//! bug could leave it (its meta line, its state, or the whole file
//! corrupted), opened the way the store opens it, then turned into the
//! state it carries. What loads must hold together and save and load back
//! as itself.

use std::path::Path;

use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use vpn_fuzzkit::{bytes, mutate, mutation, mutations, Mutation};

use super::{log_id, scratch_dir, state, stored_membership};
use crate::durable::encode;
use crate::snapshot_file::SnapshotFile;
use crate::state::State;
use crate::state_machine::state_from_snapshot;
use crate::types::SnapshotMeta;

#[derive(Clone, Debug)]
enum Case {
    Random(Vec<u8>),
    /// `meta` corrupts the meta line, `data` the state, `outer` the file.
    Mutated {
        snapshot: Box<(SnapshotMeta, State)>,
        meta: Vec<Mutation>,
        data: Vec<Mutation>,
        outer: Vec<Mutation>,
    },
}

/// A snapshot as `build_snapshot` makes one: the state's own last applied
/// id and membership are the meta's.
fn snapshot() -> impl Strategy<Value = (SnapshotMeta, State)> {
    (option::of(log_id()), stored_membership(), "[a-z0-9-]{0,20}", state()).prop_map(
        |(last_log_id, last_membership, snapshot_id, mut state)| {
            state.last_applied = last_log_id;
            state.last_membership = last_membership.clone();
            (SnapshotMeta { last_log_id, last_membership, snapshot_id }, state)
        },
    )
}

fn case() -> impl Strategy<Value = Case> {
    let part = || prop_oneof![2 => Just(Vec::new()), 1 => vec(mutation(), 1..4)];
    prop_oneof![
        1 => bytes(300).prop_map(Case::Random),
        4 => (snapshot(), part(), part(), mutations())
            .prop_map(|(snapshot, meta, data, outer)| Case::Mutated { snapshot: Box::new(snapshot), meta, data, outer }),
    ]
}

fn current(dir: &Path) -> std::path::PathBuf {
    dir.join("current")
}

/// Saves `state` with `meta` the way the store does, and opens it again.
fn save_and_load(dir: &Path, meta: &SnapshotMeta, state: &State) -> Result<Option<(SnapshotMeta, Vec<u8>)>, String> {
    let (file, _) = SnapshotFile::open(dir).map_err(|e| e.to_string())?;
    let data = encode(state).map_err(|e| e.to_string())?;
    file.save(meta, &data).map_err(|e| e.to_string())?;
    SnapshotFile::open(dir).map(|(_, stored)| stored).map_err(|e| e.to_string())
}

/// Writes the case's file; returns the snapshot it must load as when nothing was corrupted.
fn write(dir: &Path, case: &Case) -> Option<(SnapshotMeta, State)> {
    let (snapshot, meta_changes, data_changes, outer) = match case {
        Case::Random(bytes) => {
            std::fs::write(current(dir), bytes).expect("a snapshot file");
            return None;
        }
        Case::Mutated { snapshot, meta, data, outer } => (snapshot, meta, data, outer),
    };
    save_and_load(dir, &snapshot.0, &snapshot.1).expect("a snapshot saves and loads");
    let saved = std::fs::read(current(dir)).expect("the saved file");
    let newline = saved.iter().position(|b| *b == b'\n').expect("a meta line");
    let mut file = mutate(&saved[..newline], meta_changes);
    file.push(b'\n');
    file.extend_from_slice(&mutate(&saved[newline + 1..], data_changes));
    std::fs::write(current(dir), mutate(&file, outer)).expect("a snapshot file");
    let unchanged = meta_changes.is_empty() && data_changes.is_empty() && outer.is_empty();
    unchanged.then(|| (**snapshot).clone())
}

fn check(dir: &Path, valid: Option<(SnapshotMeta, State)>) -> Result<(), TestCaseError> {
    let fail = |what: &str, e: &dyn std::fmt::Display| TestCaseError::fail(format!("{what}: {e}"));
    let stored = match SnapshotFile::open(dir) {
        Ok((_, stored)) => stored,
        Err(e) => {
            prop_assert!(valid.is_none(), "a snapshot the store wrote was refused: {e}");
            return Ok(());
        }
    };
    let Some((meta, data)) = stored else {
        return Err(TestCaseError::fail("the file is there, yet no snapshot was found"));
    };
    let state = match state_from_snapshot(&meta, &data) {
        Ok(state) => state,
        Err(e) => {
            prop_assert!(valid.is_none(), "the state of a snapshot the store wrote was refused: {e}");
            return Ok(());
        }
    };
    if let Some((valid_meta, valid_state)) = valid {
        prop_assert_eq!(&meta, &valid_meta);
        prop_assert_eq!(&state, &valid_state);
    }
    // Every user's subscription token finds a user holding that token.
    for user in state.users.values().filter(|u| !u.sub_token.is_empty()) {
        let found = state.user_by_token(&user.sub_token).map(|u| u.sub_token.as_str());
        prop_assert_eq!(found, Some(user.sub_token.as_str()), "the token of user {:?} finds another user", user.name);
    }
    let loaded = save_and_load(dir, &meta, &state).map_err(|e| fail("a loaded snapshot does not save and load", &e))?;
    let (meta2, data2) = loaded.ok_or_else(|| TestCaseError::fail("a saved snapshot is gone"))?;
    let state2 = state_from_snapshot(&meta2, &data2).map_err(|e| fail("a loaded state does not load again", &e))?;
    prop_assert_eq!(meta2, meta);
    prop_assert_eq!(state2, state);
    Ok(())
}

#[test]
fn fuzz_snapshot_file() {
    let scratch = scratch_dir();
    vpn_fuzzkit::run("snapshot_file", file!(), case(), |case| {
        let dir = scratch.path().join("snapshots");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).expect("a case dir");
        let valid = write(&dir, &case);
        check(&dir, valid)
    });
}

/// Found by `fuzz_snapshot_file`: one byte changed in a user's `name` left
/// the user filed under its old name, and the token index (built from the
/// record) pointed the user's subscription at no user, or at another one.
#[test]
fn regression_a_record_filed_under_another_name_or_id_is_refused() {
    let meta = SnapshotMeta::default();
    let mut state = State::default();
    crate::command::apply(&mut state, &crate::command::Command::CreateUser(crate::model::User::new("alice".into(), 0)));
    let data = String::from_utf8(encode(&state).expect("encode")).expect("json");
    assert!(state_from_snapshot(&meta, data.as_bytes()).is_ok());
    for (from, to) in [(r#""name":"alice""#, r#""name":"alicf""#), (r#""alice":{"#, r#""bob":{"#)] {
        assert!(data.contains(from), "{data}");
        let misfiled = data.replace(from, to);
        let err = state_from_snapshot(&meta, misfiled.as_bytes()).expect_err("a misfiled user");
        assert!(err.to_string().contains("another name"), "{err}");
    }
}
