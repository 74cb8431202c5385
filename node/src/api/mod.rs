//! The public gRPC API (`vpn.v1`). Thin services: validate, route the write
//! to the leader (one hop) or run it here, convert at the edge.
//!
//! Layout:
//! - `users`: the `Users` service.
//! - `cluster`: the `Cluster` service (status and membership).
//! - `convert`: domain <-> proto.
//! - `status`: our `Error` -> `tonic::Status`, in one place.
//! - `forward`: the one-hop forwarding of writes to the leader.

pub mod cluster;
mod convert;
mod forward;
mod status;
pub mod users;
