//! How a node finds its cluster: initialize from `--initial-members`, or ask
//! a running cluster to add it (`--join`); then record this data dir's
//! identity in the replicated state so a wiped node cannot reuse the id.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use openraft::BasicNode;
use vpn_proto::v1::cluster_client::ClusterClient;
use vpn_proto::v1::AddMemberRequest;
use vpn_storage::command::{Command, CommandResponse};
use vpn_storage::model::MemberRecord;

use crate::error::Error;
use crate::identity::{self, ClusterId};
use crate::node::Node;

/// How long `--join` keeps trying before vpnd gives up and exits.
const JOIN_DEADLINE: Duration = Duration::from_secs(60);

/// Static bootstrap: every member calls this with the same list; a node that
/// already holds state ignores it.
pub async fn initialize(node: &Node, members: &BTreeMap<u64, String>) -> Result<(), Error> {
    let initialized =
        node.raft.is_initialized().await.map_err(|e| Error::Internal(format!("raft stopped during startup: {e}")))?;
    if initialized {
        return Ok(());
    }
    let nodes: BTreeMap<u64, BasicNode> = members.iter().map(|(id, addr)| (*id, BasicNode::new(addr))).collect();
    match node.raft.initialize(nodes).await {
        Ok(()) => Ok(()),
        // Another member's leader already replicated to us: fine.
        Err(openraft::error::RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => Ok(()),
        Err(e) => Err(Error::Internal(format!("cannot initialize the cluster: {e}"))),
    }
}

/// `--join`: asks the cluster, through any seed, to add this node (as a learner
/// that is promoted to voter once caught up, when `voter`), and records the
/// cluster id it answers with in `data_dir`.
pub async fn join(node: &Node, data_dir: &Path, advertise: &str, seeds: &[String], voter: bool) -> Result<(), Error> {
    let request = AddMemberRequest {
        id: node.id,
        addr: advertise.to_owned(),
        voter,
        incarnation: node.identity.incarnation.to_string(),
    };
    let deadline = tokio::time::Instant::now() + JOIN_DEADLINE;
    let mut last_error = String::new();
    let mut backoff = Duration::from_millis(100);
    while tokio::time::Instant::now() < deadline {
        for seed in seeds {
            let channel = node.peers.channel(seed)?;
            let mut req = tonic::Request::new(request.clone());
            req.set_timeout(Duration::from_secs(30));
            match ClusterClient::new(channel).add_member(req).await {
                Ok(reply) => {
                    let cluster = reply.into_inner().cluster_id;
                    tracing::info!(%seed, %cluster, "joined the cluster");
                    // Empty when the cluster's nodes predate cluster ids.
                    return match cluster.parse::<ClusterId>() {
                        Ok(id) => identity::record_cluster(data_dir, node.identity, node.peers.cluster(), id),
                        Err(_) => Ok(()),
                    };
                }
                // Refusals are final: retrying cannot change them.
                Err(s)
                    if matches!(
                        s.code(),
                        tonic::Code::FailedPrecondition | tonic::Code::InvalidArgument | tonic::Code::AlreadyExists
                    ) =>
                {
                    return Err(Error::Join { seeds: seeds.join(","), detail: s.message().to_owned() });
                }
                Err(s) => last_error = format!("{seed}: {}", s.message()),
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
    Err(Error::Join {
        seeds: seeds.join(","),
        detail: format!("no member accepted within {JOIN_DEADLINE:?}; last error: {last_error}"),
    })
}

/// Records this data dir's incarnation under our id once a leader exists.
/// Returns an error only when the cluster knows our id under another
/// incarnation: then this node must not take part.
pub async fn register_identity(node: Arc<Node>, advertise: String) -> Result<(), Error> {
    let record = MemberRecord { id: node.id, addr: advertise, incarnation: node.identity.incarnation };
    let mut backoff = Duration::from_millis(50);
    loop {
        let known = node.state.read(|s| s.members.get(&node.id).cloned());
        match known {
            Some(k) if k.incarnation == record.incarnation => return Ok(()),
            Some(k) => return Err(conflict(node.id, &k)),
            None => {}
        }
        match node.propose_anywhere(Command::RegisterMember(record.clone())).await {
            Ok(CommandResponse::MemberRegistered) => return Ok(()),
            Ok(CommandResponse::Refused(r)) => return Err(Error::Identity(r.to_string())),
            Ok(other) => return Err(Error::Internal(format!("unexpected apply result {other:?}"))),
            // No leader yet, or it moved: try again.
            Err(e) => tracing::debug!("recording this node's identity: {e}"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

fn conflict(id: u64, known: &MemberRecord) -> Error {
    Error::Identity(format!(
        "the cluster knows node {id} with another data dir (incarnation {}): this dir was wiped or replaced; \
         run `vpnctl member remove {id}` and start this node with a new --id and --join",
        known.incarnation
    ))
}
