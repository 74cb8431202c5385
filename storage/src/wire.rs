//! How the two bulky Raft RPCs travel between nodes: binary, not JSON.
//!
//! - `AppendEntries`: the vote, two log ids and each entry in the log's own
//!   entry encoding (see `codec`), length-prefixed.
//! - `InstallSnapshot`: a JSON header (vote, snapshot meta, offset, done), then
//!   the chunk's raw bytes (JSON would spell each byte as a decimal number).
//!
//! Replies and votes are small and stay JSON.

use std::io;

use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest};
use serde::{Deserialize, Serialize};

use crate::codec::{self, invalid, Reader};
use crate::types::{SnapshotMeta, TypeConfig, Vote};

/// Format tag: a peer on another encoding fails loudly instead of misreading.
const APPEND_ENTRIES_V1: u8 = 1;
const INSTALL_SNAPSHOT_V1: u8 = 1;

pub fn encode_append_entries(req: &AppendEntriesRequest<TypeConfig>) -> io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(64 + req.entries.len() * 320);
    buf.push(APPEND_ENTRIES_V1);
    codec::put_vote(&mut buf, &req.vote);
    codec::put_opt_log_id(&mut buf, req.prev_log_id.as_ref());
    codec::put_opt_log_id(&mut buf, req.leader_commit.as_ref());
    let count = u32::try_from(req.entries.len()).map_err(|_| invalid("too many entries in one message"))?;
    codec::put_u32(&mut buf, count);
    for entry in &req.entries {
        // Length prefix, patched once the entry is written.
        let at = buf.len();
        codec::put_u32(&mut buf, 0);
        codec::put_entry(&mut buf, entry)?;
        let len = u32::try_from(buf.len() - at - 4).map_err(|_| invalid("entry too large"))?;
        buf[at..at + 4].copy_from_slice(&len.to_le_bytes());
    }
    Ok(buf)
}

pub fn decode_append_entries(bytes: &[u8]) -> io::Result<AppendEntriesRequest<TypeConfig>> {
    let mut r = Reader::new(bytes);
    let version = r.u8()?;
    if version != APPEND_ENTRIES_V1 {
        return Err(invalid(format!("AppendEntries encoding {version} is not supported here")));
    }
    let vote = r.vote()?;
    let prev_log_id = r.opt_log_id()?;
    let leader_commit = r.opt_log_id()?;
    let count = r.u32()? as usize;
    // Each entry takes at least 29 bytes: do not trust `count` for capacity.
    let mut entries = Vec::with_capacity(count.min(bytes.len() / 29));
    for _ in 0..count {
        let len = r.u32()? as usize;
        entries.push(Reader::new(r.take(len)?).entry()?);
    }
    if !r.is_empty() {
        return Err(invalid("trailing bytes after the entries"));
    }
    Ok(AppendEntriesRequest { vote, prev_log_id, leader_commit, entries })
}

#[derive(Serialize, Deserialize)]
struct ChunkHeader {
    vote: Vote,
    meta: SnapshotMeta,
    offset: u64,
    done: bool,
}

pub fn encode_install_snapshot(req: &InstallSnapshotRequest<TypeConfig>) -> io::Result<Vec<u8>> {
    let header = ChunkHeader { vote: req.vote, meta: req.meta.clone(), offset: req.offset, done: req.done };
    let json = serde_json::to_vec(&header).map_err(invalid)?;
    let json_len = u32::try_from(json.len()).map_err(|_| invalid("snapshot header too large"))?;
    let mut buf = Vec::with_capacity(5 + json.len() + req.data.len());
    buf.push(INSTALL_SNAPSHOT_V1);
    codec::put_u32(&mut buf, json_len);
    buf.extend_from_slice(&json);
    buf.extend_from_slice(&req.data);
    Ok(buf)
}

pub fn decode_install_snapshot(bytes: &[u8]) -> io::Result<InstallSnapshotRequest<TypeConfig>> {
    let mut r = Reader::new(bytes);
    let version = r.u8()?;
    if version != INSTALL_SNAPSHOT_V1 {
        return Err(invalid(format!("InstallSnapshot encoding {version} is not supported here")));
    }
    let json_len = r.u32()? as usize;
    let header: ChunkHeader = serde_json::from_slice(r.take(json_len)?).map_err(invalid)?;
    let data = r.rest().to_vec();
    Ok(InstallSnapshotRequest { vote: header.vote, meta: header.meta, offset: header.offset, data, done: header.done })
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload, LogId, StoredMembership};

    use super::*;
    use crate::command::Command;
    use crate::model::User;
    use crate::types::Entry;

    #[test]
    fn append_entries_round_trip() {
        let id = |i| LogId::new(CommittedLeaderId::new(3, 1), i);
        let req = AppendEntriesRequest::<TypeConfig> {
            vote: Vote::new_committed(3, 1),
            prev_log_id: Some(id(9)),
            leader_commit: None,
            entries: vec![
                Entry { log_id: id(10), payload: EntryPayload::Blank },
                Entry { log_id: id(11), payload: EntryPayload::Normal(Command::CreateUser(User::new("bo".into(), 5))) },
            ],
        };
        let bytes = encode_append_entries(&req).expect("encode");
        let back = decode_append_entries(&bytes).expect("decode");
        assert_eq!((back.vote, back.prev_log_id, back.leader_commit), (req.vote, req.prev_log_id, req.leader_commit));
        assert_eq!(back.entries, req.entries);
        assert!(decode_append_entries(&bytes[..bytes.len() - 1]).is_err());
        assert!(decode_append_entries(b"{\"vote\":1}").is_err());
    }

    #[test]
    fn install_snapshot_round_trip() {
        let meta = SnapshotMeta {
            last_log_id: Some(LogId::new(CommittedLeaderId::new(2, 2), 40)),
            last_membership: StoredMembership::default(),
            snapshot_id: "2-40-abc".into(),
        };
        let req = InstallSnapshotRequest::<TypeConfig> {
            vote: Vote::new(2, 2),
            meta,
            offset: 4096,
            data: (0..=255u8).collect(),
            done: true,
        };
        let back = decode_install_snapshot(&encode_install_snapshot(&req).expect("encode")).expect("decode");
        assert_eq!(back, req);
    }
}
