//! The public gRPC API (`vpn.v1`). Thin services: validate, route the write
//! to the leader (one hop) or run it here, convert at the edge.
//!
//! Layout:
//! - `users`: the `Users` service (and a user's client links).
//! - `nodes`: the `Nodes` service (data-plane nodes).
//! - `cluster`: the `Cluster` service (status and membership); `join_tokens`:
//!   its join-token RPCs and joining by CSR.
//! - `user_fields`: validation of expiry, reset period, placement constraint.
//! - `convert`: domain <-> proto.
//! - `status`: our `Error` -> `tonic::Status`, in one place.
//! - `forward`: the one-hop forwarding of writes to the leader.

pub mod cluster;
pub(crate) mod convert;
pub(crate) mod forward;
mod join_tokens;
pub mod nodes;
mod status;
mod user_fields;
pub mod users;

use vpn_proto::v1::ReadConsistency;

use crate::error::Error;
use crate::node::Node;

/// Waits as long as the requested read consistency needs.
async fn read_barrier(node: &Node, consistency: i32) -> Result<(), Error> {
    match ReadConsistency::try_from(consistency) {
        Ok(ReadConsistency::Linearizable) => node.linearizable_barrier().await,
        Ok(ReadConsistency::Local) => Ok(()),
        Err(_) => Err(Error::InvalidArgument {
            field: "consistency",
            detail: format!("unknown value {consistency}: use LINEARIZABLE (0) or LOCAL (1)"),
        }),
    }
}
