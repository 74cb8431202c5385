//! The public gRPC API (`vpn.v1`). Thin services: validate, route the write
//! to the leader (one hop) or run it here, convert at the edge.
//!
//! Layout:
//! - `users`: the `Users` service (and a user's client links).
//! - `access`: the `Access` service (roles, bindings, API tokens, the audit log).
//! - `nodes`: the `Nodes` service (data-plane nodes).
//! - `cluster`: the `Cluster` service (status and membership); `join_tokens`:
//!   its join-token RPCs and joining by CSR.
//! - `user_fields`: validation of expiry, reset period, placement constraint.
//! - `convert`: domain <-> proto.
//! - `status`: our `Error` -> `tonic::Status`, in one place.
//! - `forward`: the one-hop forwarding of writes to the leader.

pub mod access;
pub mod cluster;
pub(crate) mod convert;
pub(crate) mod forward;
pub(crate) mod join_tokens;
pub mod nodes;
mod status;
pub(crate) mod user_fields;
pub mod users;

use vpn_proto::v1::ReadConsistency;

use crate::error::Error;
use crate::node::Node;

/// Waits as long as the requested read consistency needs. A node whose
/// applied state did not persist answers no read (UNAVAILABLE).
async fn read_barrier(node: &Node, consistency: i32) -> Result<(), Error> {
    node.ensure_persisted()?;
    match self::consistency(consistency)? {
        ReadConsistency::Linearizable => node.linearizable_barrier().await,
        ReadConsistency::Local => Ok(()),
    }
}

/// The read consistency a request's `consistency` field asks for.
pub(crate) fn consistency(raw: i32) -> Result<ReadConsistency, Error> {
    ReadConsistency::try_from(raw).map_err(|_| Error::InvalidArgument {
        field: "consistency",
        detail: format!("unknown value {raw}: use LINEARIZABLE (0) or LOCAL (1)"),
    })
}
