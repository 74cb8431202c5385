//! The `Cluster` service: status from this node's view, membership changes
//! on the leader (a new node is added as a learner, caught up, then promoted).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use openraft::{BasicNode, ChangeMembers};
use tonic::{Request, Response, Status};
use vpn_proto::v1::cluster_client::ClusterClient;
use vpn_proto::v1::cluster_server::Cluster;
use vpn_proto::v1::{
    AddMemberRequest, ClusterStatus, CreateJoinTokenRequest, JoinRequest, JoinResponse, JoinTokenInfo, JoinTokenSecret,
    ListJoinTokensRequest, ListJoinTokensResponse, Member, MemberRole, RemoveMemberRequest, RenewCertificateRequest,
    RevokeJoinTokenRequest, StatusRequest,
};
use vpn_storage::command::{Command, CommandResponse};
use vpn_storage::model::MemberRecord;

use super::{forward, join_tokens};
use crate::error::Error;
use crate::node::{Node, Route};

/// How long AddMember waits for a new learner to catch up before answering.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(60);

pub struct ClusterApi {
    pub node: Arc<Node>,
}

impl ClusterApi {
    async fn status(&self) -> ClusterStatus {
        let readiness = self.node.readiness().await;
        let metrics = self.node.raft.metrics();
        let m = metrics.borrow();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, n)| Member {
                id: *id,
                addr: n.addr.clone(),
                role: if voters.contains(id) { MemberRole::Voter } else { MemberRole::Learner } as i32,
            })
            .collect();
        ClusterStatus {
            leader_id: m.current_leader,
            term: m.current_term,
            members,
            node_id: self.node.id,
            commit_index: readiness.committed,
            applied_index: readiness.applied,
            cluster_id: self.node.peers.cluster().get().map(|id| id.to_string()).unwrap_or_default(),
            tls: self.node.tls.is_some(),
        }
    }

    fn is_voter(&self, id: u64) -> bool {
        self.node.raft.metrics().borrow().membership_config.membership().voter_ids().any(|v| v == id)
    }

    fn member_addr(&self, id: u64) -> Option<String> {
        self.node.raft.metrics().borrow().membership_config.membership().get_node(&id).map(|n| n.addr.clone())
    }

    async fn add_member_here(&self, req: AddMemberRequest) -> Result<(), Error> {
        // The checks below read the membership: as of now, not as a leader
        // cut off from its majority last saw it.
        self.node.linearizable_barrier().await?;
        if let Some(existing) = self.member_addr(req.id).filter(|a| *a != req.addr) {
            return Err(Error::FailedPrecondition(format!(
                "member {} already exists at {existing}: remove it first (vpnctl member remove {})",
                req.id, req.id
            )));
        }
        if !req.incarnation.is_empty() {
            let incarnation = req.incarnation.parse().map_err(|_| Error::InvalidArgument {
                field: "incarnation",
                detail: format!("{:?} is not a UUID", req.incarnation),
            })?;
            let record = MemberRecord { id: req.id, addr: req.addr.clone(), incarnation };
            match self.node.propose(Command::RegisterMember(record)).await? {
                CommandResponse::MemberRegistered => {}
                CommandResponse::Refused(r) => return Err(r.into()),
                other => return Err(Error::Internal(format!("unexpected apply result {other:?}"))),
            }
        }
        if self.member_addr(req.id).is_none() {
            self.node
                .raft
                .add_learner(req.id, BasicNode::new(&req.addr), false)
                .await
                .map_err(Node::membership_error)?;
        }
        self.wait_caught_up(req.id, &req.addr).await?;
        if req.voter && !self.is_voter(req.id) {
            let ids = BTreeSet::from([req.id]);
            self.node
                .raft
                .change_membership(ChangeMembers::AddVoterIds(ids), false)
                .await
                .map_err(Node::membership_error)?;
        }
        Ok(())
    }

    /// Waits until the leader has replicated its whole log (as of now) to `id`.
    /// openraft's own blocking `add_learner` counts a node within 5000 entries
    /// as caught up, even one that never answered.
    async fn wait_caught_up(&self, id: u64, addr: &str) -> Result<(), Error> {
        let target = self.node.raft.metrics().borrow().last_log_index;
        self.node
            .raft
            .wait(Some(CATCH_UP_TIMEOUT))
            .metrics(
                |m| {
                    let matched = m.replication.as_ref().and_then(|r| r.get(&id)).and_then(|l| l.map(|l| l.index));
                    matched.is_some() && matched >= target
                },
                "new member caught up",
            )
            .await
            .map(|_| ())
            .map_err(|_| {
                Error::unavailable(format!(
                    "node {id} is a learner but has not caught up within {CATCH_UP_TIMEOUT:?}: check that vpnd runs at {addr}, then retry"
                ))
            })
    }

    async fn remove_member_here(&self, id: u64) -> Result<(), Error> {
        self.node.linearizable_barrier().await?;
        if self.member_addr(id).is_none() {
            // A data-plane-only node is no Raft member: only its records go.
            if self.node.state.read(|s| s.dataplane_nodes.contains_key(&id)) {
                self.node.propose(Command::ForgetMember { id }).await?;
                return Ok(());
            }
            return Err(Error::NotFound(format!(
                "member {id} not found: see `vpnctl cluster status` and `vpnctl node list`"
            )));
        }
        let change = if self.is_voter(id) {
            let voters = self.node.raft.metrics().borrow().membership_config.membership().voter_ids().count();
            if voters == 1 {
                return Err(Error::FailedPrecondition(format!(
                    "member {id} is the last voter: add another voter before removing it"
                )));
            }
            if id == self.node.id {
                // A leader that removes itself steps down with its follow-up
                // write (ForgetMember) pending, which openraft answers only once
                // applied: never, on a node no longer replicated to, so the call
                // hung. Leadership moves first, and the caller retries at the
                // new leader (vpnctl does so on UNAVAILABLE).
                crate::raft::transfer::hand_off_leadership(&self.node).await;
                return Err(Error::Unavailable {
                    detail: format!("node {id} led the cluster and is the member to remove: leadership moved; retry"),
                    leader_addr: self.node.leader().map(|(_, addr)| addr),
                });
            }
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        };
        self.node.raft.change_membership(change, false).await.map_err(Node::membership_error)?;
        // The id may now be reused on purpose, by a new data dir.
        self.node.propose(Command::ForgetMember { id }).await?;
        Ok(())
    }
}

pub(crate) fn check_add(req: &AddMemberRequest) -> Result<(), Error> {
    if req.id == 0 {
        return Err(Error::InvalidArgument { field: "id", detail: "0 is reserved: use a positive node id".into() });
    }
    let valid_addr = req
        .addr
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
    if !valid_addr {
        return Err(Error::InvalidArgument {
            field: "addr",
            detail: format!("{:?} is not host:port of the node's gRPC listener, e.g. 10.0.0.4:7000", req.addr),
        });
    }
    Ok(())
}

#[tonic::async_trait]
impl Cluster for ClusterApi {
    async fn status(&self, _req: Request<StatusRequest>) -> Result<Response<ClusterStatus>, Status> {
        Ok(Response::new(ClusterApi::status(self).await))
    }

    async fn add_member(&self, req: Request<AddMemberRequest>) -> Result<Response<ClusterStatus>, Status> {
        check_add(req.get_ref())?;
        crate::auth::check_join(&req, req.get_ref().id)?;
        if let Route::Leader(ch) = self.node.route_write(forward::was_forwarded(&req))? {
            let mut fwd = forward::to_leader(&self.node, "AddMember", req.into_inner());
            fwd.set_timeout(CATCH_UP_TIMEOUT + Duration::from_secs(5));
            return forward::relayed(ClusterClient::new(ch).add_member(fwd).await);
        }
        self.add_member_here(req.into_inner()).await?;
        Ok(Response::new(ClusterApi::status(self).await))
    }

    async fn create_join_token(
        &self,
        req: Request<CreateJoinTokenRequest>,
    ) -> Result<Response<JoinTokenSecret>, Status> {
        join_tokens::create(&self.node, req).await
    }

    async fn list_join_tokens(
        &self,
        req: Request<ListJoinTokensRequest>,
    ) -> Result<Response<ListJoinTokensResponse>, Status> {
        join_tokens::list(&self.node, req).await
    }

    async fn revoke_join_token(&self, req: Request<RevokeJoinTokenRequest>) -> Result<Response<JoinTokenInfo>, Status> {
        join_tokens::revoke(&self.node, req).await
    }

    async fn join(&self, req: Request<JoinRequest>) -> Result<Response<JoinResponse>, Status> {
        join_tokens::join(&self.node, req).await
    }

    async fn renew_certificate(&self, req: Request<RenewCertificateRequest>) -> Result<Response<JoinResponse>, Status> {
        join_tokens::renew(&self.node, req).await
    }

    async fn remove_member(&self, req: Request<RemoveMemberRequest>) -> Result<Response<ClusterStatus>, Status> {
        if let Route::Leader(ch) = self.node.route_write(forward::was_forwarded(&req))? {
            let fwd = forward::to_leader(&self.node, "RemoveMember", req.into_inner());
            return forward::relayed(ClusterClient::new(ch).remove_member(fwd).await);
        }
        self.remove_member_here(req.into_inner().id).await?;
        Ok(Response::new(ClusterApi::status(self).await))
    }
}
