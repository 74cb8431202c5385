//! The proposer on a real single-node openraft: concurrent writes share log
//! entries, and each caller gets the response of its own command.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use openraft::error::{InstallSnapshotError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::{BasicNode, RaftLogReader};
use vpn_storage::command::{Command, CommandResponse};
use vpn_storage::model::User;
use vpn_storage::types::{NodeId, Raft, TypeConfig};
use vpn_storage::Proposer;

/// A network for a cluster of one: never used.
struct Alone;

type Rpc<T, E = openraft::error::Infallible> = Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>;

fn no_peer<E: std::error::Error>() -> RPCError<NodeId, BasicNode, RaftError<NodeId, E>> {
    RPCError::Unreachable(Unreachable::new(&std::io::Error::other("a cluster of one has no peers")))
}

impl RaftNetwork<TypeConfig> for Alone {
    async fn append_entries(
        &mut self,
        _: AppendEntriesRequest<TypeConfig>,
        _: RPCOption,
    ) -> Rpc<AppendEntriesResponse<NodeId>> {
        Err(no_peer())
    }

    async fn install_snapshot(
        &mut self,
        _: InstallSnapshotRequest<TypeConfig>,
        _: RPCOption,
    ) -> Rpc<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        Err(no_peer())
    }

    async fn vote(&mut self, _: VoteRequest<NodeId>, _: RPCOption) -> Rpc<VoteResponse<NodeId>> {
        Err(no_peer())
    }
}

impl RaftNetworkFactory<TypeConfig> for Alone {
    type Network = Alone;

    async fn new_client(&mut self, _: NodeId, _: &BasicNode) -> Alone {
        Alone
    }
}

/// A leader of a cluster of one in `dir`, and a reader of its log.
async fn leader(dir: &std::path::Path) -> (Raft, vpn_storage::LogStore, vpn_storage::StateReader) {
    let (log, sm) = vpn_storage::open(dir).expect("open");
    let state = sm.reader();
    let reader = log.clone();
    let config = Arc::new(openraft::Config::default().validate().expect("config"));
    let raft = Raft::new(1, config, Alone, log, sm).await.expect("raft");
    raft.initialize(BTreeSet::from([1])).await.expect("initialize");
    raft.wait(None).state(openraft::ServerState::Leader, "leader").await.expect("leader");
    (raft, reader, state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_share_entries_and_get_their_own_responses() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (raft, mut reader, _) = leader(dir.path()).await;

    let proposer = Arc::new(Proposer::new(raft.clone()));
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    const N: usize = 300;
    let writes: Vec<_> = (0..N)
        .map(|i| {
            let proposer = proposer.clone();
            let name = format!("user-{i:04}");
            tokio::spawn(async move {
                let resp = proposer.client_write(Command::CreateUser(User::new(name.clone(), now))).await;
                (name, resp)
            })
        })
        .collect();
    for write in writes {
        let (name, resp) = write.await.expect("task");
        match resp.expect("write").data {
            CommandResponse::User(user) => assert_eq!(user.name, name),
            other => panic!("{name} got {other:?}"),
        }
    }
    // A duplicate is refused to its own caller.
    let again = proposer.client_write(Command::CreateUser(User::new("user-0000".into(), now))).await;
    assert!(matches!(again.expect("write").data, CommandResponse::Refused(_)));

    let entries = reader.try_get_log_entries(..).await.expect("log");
    let commands: usize = entries
        .iter()
        .map(|e| match &e.payload {
            openraft::EntryPayload::Normal(Command::Batch(cmds)) => cmds.len(),
            openraft::EntryPayload::Normal(_) => 1,
            _ => 0,
        })
        .sum();
    assert_eq!(commands, N + 1);
    assert!(entries.len() < N, "{} entries for {N} concurrent writes: nothing was batched", entries.len());
    raft.shutdown().await.expect("shutdown");
}

/// Past the bound, a proposal is refused at once and writes nothing; the
/// ones taken are all written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_a_proposal_and_writes_nothing_of_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (raft, _, state) = leader(dir.path()).await;
    const MAX: usize = 4;
    let proposer = Arc::new(Proposer::with_max_queued(raft.clone(), MAX));
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    let writes: Vec<_> = (0..200)
        .map(|i| {
            let proposer = proposer.clone();
            let name = format!("user-{i:04}");
            tokio::spawn(async move {
                (name.clone(), proposer.client_write(Command::CreateUser(User::new(name, now))).await)
            })
        })
        .collect();
    let (mut written, mut refused) = (Vec::new(), Vec::new());
    for write in writes {
        match write.await.expect("task") {
            (name, Ok(_)) => written.push(name),
            (name, Err(vpn_storage::ProposeError::Busy { queued })) => {
                assert!(queued >= MAX, "refused with {queued} waiting");
                refused.push(name);
            }
            (name, Err(e)) => panic!("{name}: {e}"),
        }
    }
    assert!(!refused.is_empty(), "200 writes at once never filled a queue of {MAX}");
    assert!(written.len() >= MAX, "{} written", written.len());
    state.read(|s| {
        assert!(written.iter().all(|n| s.users.contains_key(n)), "a taken write is missing");
        assert!(refused.iter().all(|n| !s.users.contains_key(n)), "a refused write was applied");
    });
    raft.shutdown().await.expect("shutdown");
}
