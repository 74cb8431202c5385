//! The gRPC protocol of the VPN control plane, generated from `proto/`.
//!
//! Layout:
//! - [`v1`]: the public API (`vpn.v1`): `Users`, `Cluster`, `Nodes` and `Access` services.
//! - [`internal`]: node-to-node traffic (`vpn.internal.v1`): Raft RPCs,
//!   the data-plane agent's session (`Agent`),
//!   read-index, leadership transfer and forwarded proposals. Not a stable interface.

/// The public API, package `vpn.v1`.
pub mod v1 {
    tonic::include_proto!("vpn.v1");
}

/// Node-to-node RPCs, package `vpn.internal.v1`.
pub mod internal {
    tonic::include_proto!("vpn.internal.v1");
}

/// The encoded `FileDescriptorSet` of every proto above (prost-types
/// decodes it): what each service declares, for tests that walk every RPC.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/vpn_descriptor.bin"));
