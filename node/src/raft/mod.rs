//! Raft wiring: openraft's configuration from our timings, the gRPC network,
//! the internal service, how a node finds its cluster, and leadership
//! transfer on shutdown.
//!
//! Layout:
//! - `network`: openraft's network over tonic (client side).
//! - `service`: the internal Raft gRPC service (server side).
//! - `bootstrap`: static bootstrap, `--join`, and recording this data dir's identity.
//! - `transfer`: hand leadership to a caught-up voter before stopping.

pub mod bootstrap;
pub mod network;
pub mod service;
pub mod transfer;

use std::sync::Arc;

use openraft::SnapshotPolicy;

use crate::config::RaftTimings;
use crate::error::Error;

/// Entries per AppendEntries RPC (see `raft_config`).
const MAX_PAYLOAD_ENTRIES: u64 = 32;

/// openraft's configuration for our timings.
pub fn raft_config(t: &RaftTimings) -> Result<Arc<openraft::Config>, Error> {
    let config = openraft::Config {
        cluster_name: "vpn".to_owned(),
        heartbeat_interval: t.heartbeat_ms,
        election_timeout_min: t.election_timeout_min_ms,
        election_timeout_max: t.election_timeout_max_ms,
        // Snapshots of 10k users are a few MB; give slow disks room.
        install_snapshot_timeout: 10_000,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(t.snapshot_every),
        // Keep some log behind a snapshot so a briefly lagging follower can
        // catch up from the log instead of a full snapshot.
        max_in_snapshot_log_to_keep: (t.snapshot_every / 10).max(1),
        snapshot_max_chunk_size: 4 * 1024 * 1024,
        // openraft 0.9 gives every AppendEntries one heartbeat interval to
        // finish and resends the same range after a timeout: a payload too
        // big to write and fsync in that time would stall replication for
        // good. Our entries hold up to 128 batched writes (~40 KB), so cap
        // the entries per RPC (default 300, i.e. up to ~12 MB); the network
        // halves it for a while whenever a request still runs out of time.
        max_payload_entries: MAX_PAYLOAD_ENTRIES,
        ..Default::default()
    };
    config
        .validate()
        .map(Arc::new)
        .map_err(|e| Error::invalid("--election-timeout-min-ms", &format!("Raft timings rejected: {e}")))
}
