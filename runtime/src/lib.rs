//! The data plane of a node: engines (sing-box first), their configuration,
//! and level-triggered reconciliation of engine containers through Docker.
//!
//! The node builds a [`DesiredState`] from the replicated state and hands it
//! over through a `watch` channel; [`Reconciler::start`] runs the loop and
//! reports an [`ApplyStatus`]. This crate never sees the Raft store.
//!
//! ```text
//! let (desired_tx, desired_rx) = watch::channel(None);
//! let handle = Reconciler::start(RuntimeConfig::new(id, image, data_dir.join("engines")), desired_rx, shutdown_rx).await?;
//! handle.metrics.register(&mut registry);
//! desired_tx.send_replace(Some(state));          // on every change that affects this node
//! handle.status.borrow().applied_generation;     // for heartbeats
//! handle.usage.counters().await?;                // per-user byte counters, for traffic accounting
//! ```
//!
//! Engines are served in generations: a container per generation of each
//! protocol inbound (`vpn-<node>-<protocol>-g<N>`), host networking, restart
//! `unless-stopped`, labels `vpn.owner-node`, `vpn.engine`, `vpn.protocol`,
//! `vpn.config-hash`, `vpn.generation`, `vpn.engine-port` (plus the allocated
//! API ports, see [`ports`]). nftables redirects each public port to the
//! current generation and counts every user's bytes; without it
//! ([`NftablesUse`]) each generation listens on the public port and replaces
//! the previous one. Engines and the rules keep running when the node exits.
//!
//! Layout:
//! - [`desired`]: what the node should serve (built by `vpn-node`).
//! - [`validate`](validate()): our own checks before anything is applied.
//! - [`engine`]: the [`engine::Engine`] trait; [`engine::singbox`] renders
//!   configs and talks to sing-box's clash API.
//! - [`reconcile`]: observe, the pure [`reconcile::plan::plan`], the executor.
//! - `reconciler`: the loop ([`Reconciler`], [`RuntimeConfig`], [`ApplyStatus`]).
//! - [`nftables`]: the node's table (handoff between generations, per-user
//!   counts); [`marks`]: the users' socket marks.
//! - [`docker`]: the bollard calls and labels; [`ports`]: the port checks and port scheme.
//! - [`keys`], [`tls`]: Reality x25519 keys, Shadowsocks keys, self-signed certificates.
//! - [`usage`]: per-user traffic counters ([`UsageReader`]): the kernel's, or
//!   without nftables the engines' connection events ([`usage::stream`]).
//! - [`metrics`]: Prometheus series; `error`: [`RuntimeError`].

pub mod desired;
pub mod docker;
pub mod engine;
mod error;
mod fsutil;
pub mod keys;
pub mod marks;
pub mod metrics;
pub mod nftables;
pub mod ports;
pub mod reconcile;
mod reconciler;
pub mod tls;
pub mod usage;
mod validate;

#[cfg(test)]
mod testutil;

pub use desired::{DesiredState, EngineUser, InboundSpec, Protocol, RealitySettings, TlsFiles};
pub use error::RuntimeError;
pub use metrics::Metrics;
pub use reconciler::{Accounting, ApplyStatus, NftablesUse, Reconciler, ReconcilerHandle, RuntimeConfig};
pub use usage::{Counter, UsageReader};
pub use validate::validate;
