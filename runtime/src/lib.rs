//! The data plane of a node: engines (sing-box first), their configuration,
//! and level-triggered reconciliation of engine containers through Docker.
//!
//! Layout:
//! - [`desired`]: what the node should serve (built by `vpn-node`).

pub mod desired;
