//! `fuzz_wire_append_entries` and `fuzz_wire_install_snapshot`: the binary
//! Raft RPCs as any peer (or anything that reaches the gRPC port) may send
//! them. Besides mutations of the whole message, the JSON inside (an entry's
//! payload, the snapshot header) is mutated and framed again with a correct
//! length, so the JSON decoders see it too. What decodes must encode back
//! to the same request.

use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest};
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use vpn_fuzzkit::{bytes, mutate, mutation, mutations, Mutation};

use super::{entries, log_id, stored_membership, vote};
use crate::codec;
use crate::types::{Entry, LogId, SnapshotMeta, TypeConfig, Vote};
use crate::wire;

/// An AppendEntries request (openraft's has no `Debug` a strategy needs).
#[derive(Clone, Debug)]
struct Append {
    vote: Vote,
    prev_log_id: Option<LogId>,
    leader_commit: Option<LogId>,
    entries: Vec<Entry>,
}

impl Append {
    fn request(&self) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: self.vote,
            prev_log_id: self.prev_log_id,
            leader_commit: self.leader_commit,
            entries: self.entries.clone(),
        }
    }
}

type Fields = (Vote, Option<LogId>, Option<LogId>, Vec<Entry>);

fn fields(r: &AppendEntriesRequest<TypeConfig>) -> Fields {
    (r.vote, r.prev_log_id, r.leader_commit, r.entries.clone())
}

#[derive(Clone, Debug)]
enum AppendCase {
    Random(Vec<u8>),
    /// `inner[i % len]` corrupts the i-th entry (framed again with its true
    /// length), then `outer` the whole message.
    Mutated {
        append: Append,
        inner: Vec<Vec<Mutation>>,
        outer: Vec<Mutation>,
    },
}

fn append() -> impl Strategy<Value = Append> {
    (vote(), option::of(log_id()), option::of(log_id()), entries(4))
        .prop_map(|(vote, prev_log_id, leader_commit, entries)| Append { vote, prev_log_id, leader_commit, entries })
}

fn append_case() -> impl Strategy<Value = AppendCase> {
    let inner = prop_oneof![4 => Just(Vec::new()), 1 => vec(mutation(), 1..4)];
    prop_oneof![
        1 => bytes(200).prop_map(AppendCase::Random),
        4 => (append(), vec(inner, 4), mutations())
            .prop_map(|(append, inner, outer)| AppendCase::Mutated { append, inner, outer }),
    ]
}

impl AppendCase {
    fn bytes(&self) -> (Vec<u8>, Option<Fields>) {
        let (append, inner, outer) = match self {
            AppendCase::Random(bytes) => return (bytes.clone(), None),
            AppendCase::Mutated { append, inner, outer } => (append, inner, outer),
        };
        let request = append.request();
        let mut unchanged = outer.is_empty();
        let mut buf = wire::encode_append_entries(&request).expect("a request encodes");
        if inner.iter().take(append.entries.len()).any(|m| !m.is_empty()) {
            unchanged = false;
            // The envelope of no entries ends in the entry count; the entries follow.
            let empty = AppendEntriesRequest { entries: Vec::new(), ..request.clone() };
            buf = wire::encode_append_entries(&empty).expect("a request encodes");
            buf.truncate(buf.len() - 4);
            codec::put_u32(&mut buf, append.entries.len() as u32);
            for (i, entry) in append.entries.iter().enumerate() {
                let mut body = Vec::new();
                codec::put_entry(&mut body, entry).expect("an entry encodes");
                let body = mutate(&body, &inner[i % inner.len()]);
                codec::put_u32(&mut buf, body.len() as u32);
                buf.extend_from_slice(&body);
            }
        }
        (mutate(&buf, outer), unchanged.then(|| fields(&request)))
    }
}

#[test]
fn fuzz_wire_append_entries() {
    vpn_fuzzkit::run("wire_append_entries", file!(), append_case(), |case| {
        let (bytes, valid) = case.bytes();
        let decoded = match wire::decode_append_entries(&bytes) {
            Ok(decoded) => decoded,
            Err(e) => {
                prop_assert!(valid.is_none(), "a request the encoder wrote was refused: {e}");
                return Ok(());
            }
        };
        if let Some(valid) = valid {
            prop_assert_eq!(&fields(&decoded), &valid);
        }
        let again = wire::encode_append_entries(&decoded).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let back = wire::decode_append_entries(&again)
            .map_err(|e| TestCaseError::fail(format!("a decoded request does not decode once encoded again: {e}")))?;
        prop_assert_eq!(fields(&back), fields(&decoded));
        Ok(())
    });
}

#[derive(Clone, Debug)]
enum SnapshotCase {
    Random(Vec<u8>),
    /// `header` corrupts the JSON header (framed again with its true
    /// length), then `outer` the whole message.
    Mutated {
        request: Box<InstallSnapshotRequest<TypeConfig>>,
        header: Vec<Mutation>,
        outer: Vec<Mutation>,
    },
}

fn install_snapshot() -> impl Strategy<Value = InstallSnapshotRequest<TypeConfig>> {
    (vote(), option::of(log_id()), stored_membership(), ".{0,16}", any::<u64>(), bytes(64), any::<bool>()).prop_map(
        |(vote, last_log_id, last_membership, snapshot_id, offset, data, done)| InstallSnapshotRequest {
            vote,
            meta: SnapshotMeta { last_log_id, last_membership, snapshot_id },
            offset,
            data,
            done,
        },
    )
}

fn snapshot_case() -> impl Strategy<Value = SnapshotCase> {
    prop_oneof![
        1 => bytes(200).prop_map(SnapshotCase::Random),
        4 => (install_snapshot(), prop_oneof![2 => Just(Vec::new()), 1 => vec(mutation(), 1..4)], mutations())
            .prop_map(|(request, header, outer)| SnapshotCase::Mutated { request: Box::new(request), header, outer }),
    ]
}

impl SnapshotCase {
    fn bytes(&self) -> (Vec<u8>, Option<&InstallSnapshotRequest<TypeConfig>>) {
        let (request, header, outer) = match self {
            SnapshotCase::Random(bytes) => return (bytes.clone(), None),
            SnapshotCase::Mutated { request, header, outer } => (request, header, outer),
        };
        let mut buf = wire::encode_install_snapshot(request).expect("a request encodes");
        if !header.is_empty() {
            // [version][json length: u32][json][data]
            let json_len = u32::from_le_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
            let json = mutate(&buf[5..5 + json_len], header);
            let mut framed = vec![buf[0]];
            codec::put_u32(&mut framed, json.len() as u32);
            framed.extend_from_slice(&json);
            framed.extend_from_slice(&buf[5 + json_len..]);
            buf = framed;
        }
        let unchanged = header.is_empty() && outer.is_empty();
        (mutate(&buf, outer), unchanged.then_some(request))
    }
}

#[test]
fn fuzz_wire_install_snapshot() {
    vpn_fuzzkit::run("wire_install_snapshot", file!(), snapshot_case(), |case| {
        let (bytes, valid) = case.bytes();
        let decoded = match wire::decode_install_snapshot(&bytes) {
            Ok(decoded) => decoded,
            Err(e) => {
                prop_assert!(valid.is_none(), "a request the encoder wrote was refused: {e}");
                return Ok(());
            }
        };
        if let Some(valid) = valid {
            prop_assert_eq!(&decoded, valid);
        }
        let again = wire::encode_install_snapshot(&decoded).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let back = wire::decode_install_snapshot(&again)
            .map_err(|e| TestCaseError::fail(format!("a decoded request does not decode once encoded again: {e}")))?;
        prop_assert_eq!(back, decoded);
        Ok(())
    });
}
