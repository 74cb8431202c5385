//! A small binary encoding for what the Raft log and the Raft RPCs carry
//! most often: log ids, votes and entries.
//!
//! Fixed-width little-endian integers for openraft's own types; the payload
//! of an entry (a [`Command`] or a membership) stays JSON, so fields added to
//! the domain model with `#[serde(default)]` still read old entries. What the
//! binary part saves is the JSON of the envelope and of every log id.

use std::io;

use openraft::{EntryPayload, LeaderId};

use crate::command::Command;
use crate::types::{Entry, LogId, Vote};

const PAYLOAD_BLANK: u8 = 0;
const PAYLOAD_NORMAL: u8 = 1;
const PAYLOAD_MEMBERSHIP: u8 = 2;

pub(crate) fn invalid(what: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

pub(crate) fn put_u64(buf: &mut Vec<u8>, v: u64) {
    buf.extend_from_slice(&v.to_le_bytes());
}

pub(crate) fn put_u32(buf: &mut Vec<u8>, v: u32) {
    buf.extend_from_slice(&v.to_le_bytes());
}

pub(crate) fn put_log_id(buf: &mut Vec<u8>, id: &LogId) {
    put_u64(buf, id.leader_id.term);
    put_u64(buf, id.leader_id.node_id);
    put_u64(buf, id.index);
}

pub(crate) fn put_opt_log_id(buf: &mut Vec<u8>, id: Option<&LogId>) {
    match id {
        None => buf.push(0),
        Some(id) => {
            buf.push(1);
            put_log_id(buf, id);
        }
    }
}

pub(crate) fn put_vote(buf: &mut Vec<u8>, vote: &Vote) {
    put_u64(buf, vote.leader_id.term);
    put_u64(buf, vote.leader_id.node_id);
    buf.push(u8::from(vote.committed));
}

/// Appends `entry`: its log id, the payload kind, then the payload's JSON.
pub(crate) fn put_entry(buf: &mut Vec<u8>, entry: &Entry) -> io::Result<()> {
    put_log_id(buf, &entry.log_id);
    let written = match &entry.payload {
        EntryPayload::Blank => {
            buf.push(PAYLOAD_BLANK);
            Ok(())
        }
        EntryPayload::Normal(cmd) => {
            buf.push(PAYLOAD_NORMAL);
            serde_json::to_writer(&mut *buf, cmd)
        }
        EntryPayload::Membership(m) => {
            buf.push(PAYLOAD_MEMBERSHIP);
            serde_json::to_writer(&mut *buf, m)
        }
    };
    written.map_err(|e| invalid(format!("entry {}: {e}", entry.log_id)))
}

/// Reads what the `put_*` functions wrote, failing on truncated input.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    pub(crate) fn take(&mut self, n: usize) -> io::Result<&'a [u8]> {
        if self.bytes.len() < n {
            return Err(invalid(format!("truncated: wanted {n} more bytes, {} left", self.bytes.len())));
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }

    /// Everything not read yet.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.bytes)
    }

    pub(crate) fn u8(&mut self) -> io::Result<u8> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn u32(&mut self) -> io::Result<u32> {
        let mut b = [0u8; 4];
        b.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(b))
    }

    pub(crate) fn u64(&mut self) -> io::Result<u64> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(b))
    }

    fn flag(&mut self) -> io::Result<bool> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(invalid(format!("bad flag byte {other}"))),
        }
    }

    pub(crate) fn log_id(&mut self) -> io::Result<LogId> {
        let (term, node_id, index) = (self.u64()?, self.u64()?, self.u64()?);
        Ok(LogId::new(LeaderId::new(term, node_id), index))
    }

    pub(crate) fn opt_log_id(&mut self) -> io::Result<Option<LogId>> {
        if self.flag()? {
            self.log_id().map(Some)
        } else {
            Ok(None)
        }
    }

    pub(crate) fn vote(&mut self) -> io::Result<Vote> {
        let (term, node_id, committed) = (self.u64()?, self.u64()?, self.flag()?);
        Ok(if committed { Vote::new_committed(term, node_id) } else { Vote::new(term, node_id) })
    }

    /// Reads an entry that spans the rest of the input.
    pub(crate) fn entry(&mut self) -> io::Result<Entry> {
        let log_id = self.log_id()?;
        let kind = self.u8()?;
        let json = self.rest();
        let bad = |e: serde_json::Error| invalid(format!("entry {log_id}: {e}"));
        let payload = match kind {
            PAYLOAD_BLANK if json.is_empty() => EntryPayload::Blank,
            PAYLOAD_NORMAL => EntryPayload::Normal(serde_json::from_slice::<Command>(json).map_err(bad)?),
            PAYLOAD_MEMBERSHIP => EntryPayload::Membership(serde_json::from_slice(json).map_err(bad)?),
            other => return Err(invalid(format!("entry {log_id}: unknown payload kind {other}"))),
        };
        Ok(Entry { log_id, payload })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use openraft::{CommittedLeaderId, Membership};

    use super::*;
    use crate::model::User;

    fn round_trip(entry: Entry) {
        let mut buf = Vec::new();
        put_entry(&mut buf, &entry).expect("encode");
        let back = Reader::new(&buf).entry().expect("decode");
        assert_eq!(back, entry);
    }

    #[test]
    fn entries_round_trip() {
        let id = |i| LogId::new(CommittedLeaderId::new(7, 3), i);
        round_trip(Entry { log_id: id(1), payload: EntryPayload::Blank });
        let cmd = Command::CreateUser(User::new("alice".into(), 1_700_000_000_000));
        round_trip(Entry { log_id: id(2), payload: EntryPayload::Normal(cmd) });
        let voters: BTreeSet<u64> = [1, 2, 3].into();
        round_trip(Entry { log_id: id(3), payload: EntryPayload::Membership(Membership::new(vec![voters], None)) });
    }

    #[test]
    fn votes_and_log_ids_round_trip() {
        for vote in [Vote::new(4, 2), Vote::new_committed(9, 1)] {
            let mut buf = Vec::new();
            put_vote(&mut buf, &vote);
            assert_eq!(Reader::new(&buf).vote().expect("vote"), vote);
        }
        let id = LogId::new(CommittedLeaderId::new(u64::MAX, 5), 42);
        for opt in [None, Some(id)] {
            let mut buf = Vec::new();
            put_opt_log_id(&mut buf, opt.as_ref());
            assert_eq!(Reader::new(&buf).opt_log_id().expect("log id"), opt);
        }
    }

    #[test]
    fn truncated_input_is_an_error() {
        let mut buf = Vec::new();
        put_entry(
            &mut buf,
            &Entry { log_id: LogId::new(CommittedLeaderId::new(1, 1), 1), payload: EntryPayload::Blank },
        )
        .expect("encode");
        for cut in 0..buf.len() {
            assert!(Reader::new(&buf[..cut]).entry().is_err(), "cut at {cut} decoded");
        }
    }
}
