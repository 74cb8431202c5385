//! The `Nodes` service: the data-plane nodes, their offers and how far their
//! engines have caught up with the cluster's state.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use vpn_proto::v1::nodes_server::Nodes;
use vpn_proto::v1::{GetNodeRequest, ListNodesRequest, ListNodesResponse, Node as NodeMsg};

use super::{convert, read_barrier};
use crate::error::Error;
use crate::node::Node;

pub struct NodesApi {
    pub node: Arc<Node>,
}

#[tonic::async_trait]
impl Nodes for NodesApi {
    async fn list_nodes(&self, req: Request<ListNodesRequest>) -> Result<Response<ListNodesResponse>, Status> {
        read_barrier(&self.node, req.get_ref().consistency).await?;
        let nodes = self.node.state.read(|s| s.dataplane_nodes.values().map(|n| convert::node(s, n)).collect());
        Ok(Response::new(ListNodesResponse { nodes }))
    }

    async fn get_node(&self, req: Request<GetNodeRequest>) -> Result<Response<NodeMsg>, Status> {
        let req = req.into_inner();
        read_barrier(&self.node, req.consistency).await?;
        self.node
            .state
            .read(|s| s.dataplane_nodes.get(&req.id).map(|n| convert::node(s, n)))
            .map(Response::new)
            .ok_or_else(|| {
                Error::NotFound(format!("node {} is not a data-plane node: `vpnctl node list` shows them", req.id))
                    .into()
            })
    }
}
