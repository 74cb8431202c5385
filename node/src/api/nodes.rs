//! The `Nodes` service: the data-plane nodes, their offers and how far their
//! engines have caught up with the cluster's state.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use vpn_proto::v1::nodes_client::NodesClient;
use vpn_proto::v1::nodes_server::Nodes;
use vpn_proto::v1::{GetNodeRequest, ListNodesRequest, ListNodesResponse, Node as NodeMsg, NodeRequest};
use vpn_storage::command::{Command, CommandResponse};
use vpn_storage::model::Schedule;
use vpn_storage::state::State;
use vpn_storage::types::NodeId;

use super::{convert, forward, read_barrier};
use crate::error::Error;
use crate::node::{Node, Route};

pub struct NodesApi {
    pub node: Arc<Node>,
}

#[tonic::async_trait]
impl Nodes for NodesApi {
    async fn list_nodes(&self, req: Request<ListNodesRequest>) -> Result<Response<ListNodesResponse>, Status> {
        read_barrier(&self.node, req.get_ref().consistency).await?;
        let nodes = self.node.state.read(|s| {
            let counts = s.placement_counts();
            s.dataplane_nodes.values().map(|n| convert::node(n, counts.get(&n.id).copied().unwrap_or(0))).collect()
        });
        Ok(Response::new(ListNodesResponse { nodes }))
    }

    async fn get_node(&self, req: Request<GetNodeRequest>) -> Result<Response<NodeMsg>, Status> {
        let req = req.into_inner();
        read_barrier(&self.node, req.consistency).await?;
        self.node.state.read(|s| shown(s, req.id)).map(Response::new).ok_or_else(|| not_found(req.id).into())
    }

    async fn cordon_node(&self, req: Request<NodeRequest>) -> Result<Response<NodeMsg>, Status> {
        self.set_schedule(req, Schedule::Cordoned, "CordonNode").await
    }

    async fn uncordon_node(&self, req: Request<NodeRequest>) -> Result<Response<NodeMsg>, Status> {
        self.set_schedule(req, Schedule::Schedulable, "UncordonNode").await
    }

    async fn drain_node(&self, req: Request<NodeRequest>) -> Result<Response<NodeMsg>, Status> {
        self.set_schedule(req, Schedule::Draining, "DrainNode").await
    }
}

impl NodesApi {
    /// Writes the node's maintenance setting through the leader; the
    /// scheduler acts on it within a second.
    async fn set_schedule(
        &self,
        req: Request<NodeRequest>,
        schedule: Schedule,
        method: &'static str,
    ) -> Result<Response<NodeMsg>, Status> {
        if let Route::Leader(ch) = self.node.route_write(forward::was_forwarded(&req))? {
            let fwd = forward::to_leader(&self.node, method, req.into_inner());
            let mut client = NodesClient::new(ch);
            return forward::relayed(match schedule {
                Schedule::Cordoned => client.cordon_node(fwd).await,
                Schedule::Schedulable => client.uncordon_node(fwd).await,
                Schedule::Draining => client.drain_node(fwd).await,
            });
        }
        let id = req.into_inner().id;
        match self.node.propose(Command::SetNodeSchedule { node: id, schedule }).await? {
            CommandResponse::DataplaneNode(_) => {
                self.node.state.read(|s| shown(s, id)).map(Response::new).ok_or_else(|| not_found(id).into())
            }
            CommandResponse::Refused(_) => Err(not_found(id).into()),
            other => Err(Error::Internal(format!("unexpected apply result {other:?}")).into()),
        }
    }
}

fn shown(state: &State, id: NodeId) -> Option<NodeMsg> {
    let node = state.dataplane_nodes.get(&id)?;
    let users = state.users.values().filter(|u| u.placed_on(id)).count() as u64;
    Some(convert::node(node, users))
}

fn not_found(id: NodeId) -> Error {
    Error::NotFound(format!("node {id} is not a data-plane node: `vpnctl node list` shows them"))
}
