//! The state machine: the applied [`State`] in memory, written through to the
//! sled tree `sm` by the `sm_writer` thread (changes of many `apply` calls
//! per atomic batch), and snapshots.
//!
//! The `sm` tree is not fsynced: the log is durable, and a lost batch is
//! re-applied from it. A batch carries `meta/applied` with the data it
//! applied, so the tree never holds data from entries it does not claim.

use std::collections::BTreeSet;
use std::io::{self, Cursor};
use std::sync::{Arc, PoisonError, RwLock, RwLockWriteGuard};

use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder, StorageIOError};

use crate::access::KeptRecord;
use crate::command::{self, Command, CommandResponse};
use crate::durable::{blocking, decode, encode, get_json, DurableDb};
use crate::error::OpenError;
use crate::model::{DataplaneNode, MemberRecord, User};
use crate::sm_writer::{Changes, Persistence, SmOp, SmWriter, Tree};
use crate::snapshot_file::{SnapshotFile, Stored};
use crate::state::State;
use crate::types::{Entry, LogId, NodeId, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig};

const APPLIED: &[u8] = b"meta/applied";
const MEMBERSHIP: &[u8] = b"meta/membership";
const GENERATION: &[u8] = b"meta/generation";
/// The whole of `State::trust`, small (a few tokens, the ids ever issued).
const TRUST: &[u8] = b"meta/trust";
/// The whole of `State::access` (roles, bindings, API tokens: small).
const ACCESS: &[u8] = b"meta/access";
/// The audit log's next record number; the records are under `a/`.
const AUDIT_NEXT: &[u8] = b"meta/audit-next";
const AUDIT: &str = "a/";
const USERS: &str = "u/";
const MEMBERS: &str = "m/";
const DATAPLANE: &str = "d/";

fn user_key(name: &str) -> String {
    format!("{USERS}{name}")
}

fn member_key(id: NodeId) -> String {
    format!("{MEMBERS}{id}")
}

fn dataplane_key(id: NodeId) -> String {
    format!("{DATAPLANE}{id}")
}

/// Zero-padded, so the tree's order is the records' order.
fn audit_key(seq: u64) -> String {
    format!("{AUDIT}{seq:020}")
}

/// An audit record under its key, which names its seq.
fn kept_audit_record((key, json): (sled::IVec, sled::IVec)) -> io::Result<(u64, KeptRecord)> {
    let seq = key.strip_prefix(AUDIT.as_bytes()).and_then(|k| std::str::from_utf8(k).ok()?.parse().ok());
    let seq = seq.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("audit record key {key:?}")))?;
    let record = KeptRecord::from_json(&json).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    Ok((seq, record))
}

/// A shared, read-only view of the applied state for the API and the agent,
/// and whether that state is persisted.
#[derive(Clone)]
pub struct StateReader {
    state: Arc<RwLock<State>>,
    persistence: Persistence,
}

impl StateReader {
    /// Runs `f` on the current state. Keep `f` short: apply waits for it.
    pub fn read<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        // A panic elsewhere cannot leave `State` half-updated in a way a
        // reader could not see anyway, so a poisoned lock is still usable.
        f(&self.state.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Whether the state read here also reached sled (see `sm_writer`).
    pub fn persistence(&self) -> &Persistence {
        &self.persistence
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The Raft state machine. Clones share everything; a clone builds snapshots.
#[derive(Clone)]
pub struct StateMachineStore {
    db: DurableDb,
    writer: Arc<SmWriter>,
    state: StateReader,
    snapshot: Arc<SnapshotFile>,
}

impl StateMachineStore {
    /// Loads the `sm` tree, or the current snapshot if that is newer (an
    /// install that crashed before rewriting the tree).
    pub(crate) fn open(db: DurableDb, snapshot: (SnapshotFile, Option<Stored>)) -> Result<Self, OpenError> {
        Self::open_with(db, snapshot, |tree| tree)
    }

    /// [`open`](Self::open), with the writer writing to what `wrap` makes
    /// of the tree (a test's tree that fails on demand).
    pub(crate) fn open_with<T: Tree>(
        db: DurableDb,
        (snapshot, current): (SnapshotFile, Option<Stored>),
        wrap: impl FnOnce(sled::Tree) -> T,
    ) -> Result<Self, OpenError> {
        let tree = db.db().open_tree("sm").map_err(|e| OpenError::corrupt(db.path(), e))?;
        let mut state = load_tree(&tree).map_err(|e| OpenError::corrupt(db.path(), format!("state machine: {e}")))?;
        if let Some((meta, data)) = current {
            if meta.last_log_id > state.last_applied {
                state = state_from_snapshot(&meta, &data).map_err(|e| OpenError::corrupt(snapshot.dir(), e))?;
                rewrite_tree(&tree, &state).map_err(|e| OpenError::from_io(db.path(), e))?;
            }
        }
        let persistence = Persistence::default();
        let writer = SmWriter::start(wrap(tree), persistence.clone()).map_err(|e| OpenError::from_io(db.path(), e))?;
        Ok(Self {
            db,
            writer: Arc::new(writer),
            state: StateReader { state: Arc::new(RwLock::new(state)), persistence },
            snapshot: Arc::new(snapshot),
        })
    }

    /// A handle that reads the applied state; it follows every apply.
    pub fn reader(&self) -> StateReader {
        self.state.clone()
    }
}

fn load_tree(tree: &sled::Tree) -> io::Result<State> {
    let mut state = State {
        last_applied: get_json(tree, APPLIED)?,
        last_membership: get_json(tree, MEMBERSHIP)?.unwrap_or_default(),
        generation: get_json(tree, GENERATION)?.unwrap_or_default(),
        trust: get_json(tree, TRUST)?.unwrap_or_default(),
        access: get_json(tree, ACCESS)?.unwrap_or_default(),
        ..State::default()
    };
    state.audit.next_seq = get_json(tree, AUDIT_NEXT)?.unwrap_or_default();
    // The users (decoded) and the audit log (a record per change, so about
    // as many, kept as JSON) are most of a start's work: on two threads.
    let audit = std::thread::scope(|scope| {
        let audit = scope.spawn(|| tree.scan_prefix(AUDIT).map(|item| kept_audit_record(item?)).collect());
        for item in tree.scan_prefix(USERS) {
            let user: User = decode(&item?.1)?;
            state.users.insert(user.name.clone(), user);
        }
        audit.join().unwrap_or_else(|_| Err(io::Error::other("the audit log's loader panicked")))
    })?;
    state.audit.records = audit;
    for item in tree.scan_prefix(MEMBERS) {
        let member: MemberRecord = decode(&item?.1)?;
        state.members.insert(member.id, member);
    }
    for item in tree.scan_prefix(DATAPLANE) {
        let node: DataplaneNode = decode(&item?.1)?;
        state.dataplane_nodes.insert(node.id, node);
    }
    state.reindex_tokens();
    Ok(state)
}

fn put_meta(changes: &mut Changes, state: &State) -> io::Result<()> {
    changes.push((APPLIED.to_vec(), state.last_applied.as_ref().map(encode).transpose()?));
    changes.push((MEMBERSHIP.to_vec(), Some(encode(&state.last_membership)?)));
    changes.push((GENERATION.to_vec(), Some(encode(&state.generation)?)));
    changes.push((TRUST.to_vec(), Some(encode(&state.trust)?)));
    changes.push((ACCESS.to_vec(), Some(encode(&state.access)?)));
    changes.push((AUDIT_NEXT.to_vec(), Some(encode(&state.audit.next_seq)?)));
    Ok(())
}

/// Every key of `state`, for a tree that holds nothing else.
fn all_pairs(state: &State) -> io::Result<Changes> {
    let mut pairs = Changes::new();
    for user in state.users.values() {
        pairs.push((user_key(&user.name).into_bytes(), Some(encode(user)?)));
    }
    for member in state.members.values() {
        pairs.push((member_key(member.id).into_bytes(), Some(encode(member)?)));
    }
    for node in state.dataplane_nodes.values() {
        pairs.push((dataplane_key(node.id).into_bytes(), Some(encode(node)?)));
    }
    for (seq, record) in &state.audit.records {
        pairs.push((audit_key(*seq).into_bytes(), Some(record.json().to_vec())));
    }
    put_meta(&mut pairs, state)?;
    Ok(pairs)
}

/// Replaces the whole tree with `state` in one atomic batch.
fn rewrite_tree(tree: &sled::Tree, state: &State) -> io::Result<()> {
    let mut batch = sled::Batch::default();
    for key in tree.iter().keys() {
        batch.remove(key?);
    }
    for (key, value) in all_pairs(state)? {
        if let Some(value) = value {
            batch.insert(key, value);
        }
    }
    Ok(tree.apply_batch(batch)?)
}

/// The snapshot's meta is authoritative for what it covers.
pub(crate) fn state_from_snapshot(meta: &SnapshotMeta, data: &[u8]) -> io::Result<State> {
    let mut state: State = decode(data)?;
    check_keys(&state)?;
    state.last_applied = meta.last_log_id;
    state.last_membership = meta.last_membership.clone();
    state.reindex_tokens();
    Ok(state)
}

/// Refuses a state that files a record under another name or id than its
/// own. `apply` never does; a damaged or forged snapshot could, and would
/// then send one user's subscription to another user's record (the token
/// index follows the record's name), and read back from the tree (keyed by
/// the record) as another state than the one installed.
fn check_keys(state: &State) -> io::Result<()> {
    let users = state.users.iter().filter(|(k, u)| **k != u.name).map(|(k, _)| format!("user {k:?}"));
    let members = state.members.iter().filter(|(k, m)| **k != m.id).map(|(k, _)| format!("member {k}"));
    let nodes = state.dataplane_nodes.iter().filter(|(k, n)| **k != n.id).map(|(k, _)| format!("data-plane node {k}"));
    let tokens = state.trust.join_tokens.iter().filter(|(k, t)| **k != t.id).map(|(k, _)| format!("join token {k:?}"));
    let api_tokens =
        state.access.api_tokens.iter().filter(|(k, t)| **k != t.name).map(|(k, _)| format!("API token {k:?}"));
    let audit = state
        .audit
        .records
        .iter()
        .filter(|(k, r)| r.decode().map_or(true, |r| r.seq != **k))
        .map(|(k, _)| format!("audit record {k}"));
    let found = users.chain(members).chain(nodes).chain(tokens).chain(api_tokens).chain(audit).next();
    match found {
        None => Ok(()),
        Some(what) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("snapshot: {what} holds the record of another name or id"),
        )),
    }
}

/// The keys one apply call changed, written from the final state in one batch.
#[derive(Default)]
struct Touched {
    /// The generation before the first entry: a node whose assignment moved
    /// past it is written too, whatever command moved it.
    generation_before: u64,
    /// The audit log's kept range before the first entry: records dropped
    /// since are removed, records written since are added.
    audit_before: std::ops::Range<u64>,
    all_users: bool,
    users: BTreeSet<String>,
    members: BTreeSet<NodeId>,
    dataplane: BTreeSet<NodeId>,
}

impl Touched {
    fn note(&mut self, cmd: &Command) {
        match cmd {
            Command::CreateUser(user) => self.users.insert(user.name.clone()),
            Command::UpdateUser { name, .. }
            | Command::DeleteUser { name }
            | Command::ResetTraffic { name, .. }
            | Command::RotateToken { name, .. } => self.users.insert(name.clone()),
            Command::Reevaluate { names, .. } => {
                self.users.extend(names.iter().cloned());
                true
            }
            Command::Place(moves) => {
                self.users.extend(moves.iter().map(|m| m.user.clone()));
                true
            }
            Command::RecordTraffic { node, reports, .. } => {
                self.users.extend(reports.iter().flat_map(|r| r.usage.iter().map(|u| u.name.clone())));
                self.dataplane.insert(*node)
            }
            Command::SetNodeHealth { node, .. } | Command::SetNodeSchedule { node, .. } => self.dataplane.insert(*node),
            Command::RegisterMember(record) => self.members.insert(record.id),
            Command::ForgetMember { id } => {
                // Placements on the node go with it: every user may change.
                self.all_users = true;
                self.members.insert(*id);
                self.dataplane.insert(*id)
            }
            Command::RegisterDataplaneNode(node) => self.dataplane.insert(node.id),
            Command::ReportApplied { node, .. } => self.dataplane.insert(*node),
            Command::Batch(cmds) => {
                cmds.iter().for_each(|c| self.note(c));
                true
            }
            // Kept whole under one key, written with the meta of every batch.
            Command::Trust(_) | Command::Access(_) => true,
            // Its record is found by `audit_before`.
            Command::Audited { command, .. } => {
                self.note(command);
                true
            }
        };
    }

    fn changes(&self, state: &State) -> io::Result<Changes> {
        let mut changes = Changes::new();
        if self.all_users {
            for user in state.users.values() {
                changes.push((user_key(&user.name).into_bytes(), Some(encode(user)?)));
            }
        }
        for name in &self.users {
            let value = state.users.get(name).map(encode).transpose()?;
            changes.push((user_key(name).into_bytes(), value));
        }
        for id in &self.members {
            let value = state.members.get(id).map(encode).transpose()?;
            changes.push((member_key(*id).into_bytes(), value));
        }
        let reassigned = state
            .dataplane_nodes
            .values()
            .filter(|n| state.generation > self.generation_before && n.assigned_generation > self.generation_before)
            .map(|n| n.id);
        let dataplane: BTreeSet<NodeId> = self.dataplane.iter().copied().chain(reassigned).collect();
        for id in dataplane {
            let value = state.dataplane_nodes.get(&id).map(encode).transpose()?;
            changes.push((dataplane_key(id).into_bytes(), value));
        }
        let (before, audit) = (&self.audit_before, &state.audit);
        for seq in before.start..audit.first_seq().min(before.end) {
            changes.push((audit_key(seq).into_bytes(), None));
        }
        for (seq, record) in audit.records.range(before.end..) {
            changes.push((audit_key(*seq).into_bytes(), Some(record.json().to_vec())));
        }
        put_meta(&mut changes, state)?;
        Ok(changes)
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok(self.state.read(|s| (s.last_applied, s.last_membership.clone())))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResponse>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut responses = Vec::new();
        let mut touched = Touched::default();
        let changes = {
            let mut state = self.state.write();
            touched.generation_before = state.generation;
            touched.audit_before = state.audit.first_seq()..state.audit.next_seq;
            for entry in entries {
                state.last_applied = Some(entry.log_id);
                let response = match entry.payload {
                    EntryPayload::Blank => CommandResponse::None,
                    EntryPayload::Normal(cmd) => {
                        touched.note(&cmd);
                        command::apply(&mut state, &cmd)
                    }
                    EntryPayload::Membership(m) => {
                        state.last_membership = StoredMembership::new(Some(entry.log_id), m);
                        CommandResponse::None
                    }
                };
                responses.push(response);
            }
            touched.changes(&state)
        };
        let written = changes.and_then(|changes| self.writer.submit(SmOp::Apply(changes)));
        written.map_err(|e| StorageIOError::write_state_machine(&e))?;
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    /// Persists the snapshot file first: if the tree rewrite is then lost,
    /// `open` finds the newer snapshot and loads it.
    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let state =
            state_from_snapshot(meta, &data).map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        let (file, meta_owned) = (self.snapshot.clone(), meta.clone());
        let saved = async {
            blocking(move || file.save(&meta_owned, &data)).await?;
            self.writer.submit(SmOp::Rewrite(all_pairs(&state)?))
        };
        saved.await.map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        *self.state.write() = state;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let file = self.snapshot.clone();
        let current = blocking(move || file.load()).await.map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        Ok(current.map(|(meta, data)| Snapshot { meta, snapshot: Box::new(Cursor::new(data)) }))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    /// Makes the `sm` tree durable up to here first (fewer entries to
    /// re-apply after a restart; the snapshot file alone would do for
    /// correctness), then writes the snapshot file durably.
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let db = self.db.clone();
        let synced = async {
            self.writer.flush().await?;
            blocking(move || db.sync()).await
        };
        synced.await.map_err(|e| StorageIOError::write_state_machine(&e))?;

        let (data, last_log_id, last_membership) = self
            .state
            .read(|s| encode(s).map(|data| (data, s.last_applied, s.last_membership.clone())))
            .map_err(|e| StorageIOError::read_state_machine(&e))?;
        let snapshot_id = match last_log_id {
            Some(id) => format!("{}-{}-{:08x}", id.leader_id.term, id.index, rand::random::<u32>()),
            None => format!("none-{:08x}", rand::random::<u32>()),
        };
        let meta = SnapshotMeta { last_log_id, last_membership, snapshot_id };

        let (file, meta_owned) = (self.snapshot.clone(), meta.clone());
        let data = blocking(move || file.save(&meta_owned, &data).map(|()| data))
            .await
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) })
    }
}

#[cfg(test)]
mod tests {
    use openraft::storage::RaftStateMachine;

    use super::*;
    use crate::access::AuditContext;

    fn audited(index: u64, name: &str, at_ms: i64) -> Entry {
        let audit = AuditContext {
            principal: "admin".into(),
            authenticated_by: "certificate".into(),
            source: "127.0.0.1:9".into(),
            method: "CreateUser".into(),
            target: format!("user {name}"),
            summary: String::new(),
            at_ms,
            retention_ms: 1_000,
            max_records: 3,
        };
        let command = Box::new(Command::CreateUser(User::new(name.to_owned(), at_ms)));
        Entry {
            log_id: LogId::new(openraft::CommittedLeaderId::new(1, 0), index),
            payload: EntryPayload::Normal(Command::Audited { audit, command }),
        }
    }

    fn kept(sm: &StateMachineStore) -> Vec<(u64, String)> {
        let records =
            sm.reader().read(|s| s.audit.records.values().map(KeptRecord::decode).collect::<Result<Vec<_>, _>>());
        records.expect("decode").into_iter().map(|r| (r.seq, r.target)).collect()
    }

    /// The records are written with their changes, dropped as retention
    /// says, and what a restart or a snapshot brings back is what was kept.
    #[tokio::test]
    async fn audit_records_persist_with_their_changes_and_retention_removes_them_from_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let snapshot_state = {
            let (_log, mut sm) = crate::open(dir.path()).expect("open");
            sm.apply([audited(1, "a", 0), audited(2, "b", 10)]).await.expect("apply");
            sm.apply([audited(3, "c", 20), audited(4, "d", 30)]).await.expect("apply");
            sm.apply([audited(5, "e", 1_025)]).await.expect("apply");
            let expected = vec![(3, "user d".to_owned()), (4, "user e".to_owned())];
            assert_eq!(kept(&sm), expected, "3 at most, none older than 1 s");
            assert!(sm.reader().read(|s| s.users.contains_key("a")), "the changes stay");
            let snapshot = sm.build_snapshot().await.expect("snapshot");
            state_from_snapshot(&snapshot.meta, snapshot.snapshot.get_ref()).expect("decode")
        };
        assert_eq!(snapshot_state.audit.records.len(), 2);
        let (_log, sm) = crate::open(dir.path()).expect("reopen");
        assert_eq!(kept(&sm), [(3, "user d".to_owned()), (4, "user e".to_owned())]);
        assert_eq!(sm.reader().read(|s| s.audit.next_seq), 5);
    }
}
