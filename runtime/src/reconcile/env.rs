//! What reconciliation works with: the engine, Docker, this node's identity
//! and its config dir, plus the small per-engine state file.
//!
//! Config dir layout (`RuntimeConfig::config_dir`), per protocol `<p>`:
//! - `<p>.g<N>/`: generation N's files (`config.json`, `tls/`), mounted read-only into its container;
//! - `<p>.g<N>.state.json`: the users generation N's process loaded and
//!   those refused since, keyed by container id and start time;
//! - `marks.json`: the users' socket marks (see [`crate::marks`]).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use crate::docker::{Docker, LABEL_OWNER};
use crate::engine::Engine;
use crate::fsutil::write_atomic;
use crate::marks::Marks;
use crate::nftables::NodeTable;
use crate::ports::PublicPorts;
use crate::reconcile::plan::DrainPolicy;
use crate::usage::stream::StreamCounts;
use crate::usage::FinalReadings;
use crate::{Metrics, Protocol, RuntimeError};

pub struct Env<E: Engine> {
    pub engine: E,
    pub docker: Docker,
    pub node_id: u64,
    pub image: String,
    pub config_dir: PathBuf,
    pub metrics: Metrics,
    /// Counter readings taken just before an op ends their sources (see [`crate::usage`]).
    pub finals: FinalReadings,
    pub table: NodeTable,
    /// Shared with the [`UsageReader`](crate::UsageReader), which names users by their marks.
    pub marks: Arc<Mutex<Marks>>,
    pub drain: DrainPolicy,
    /// The public ports routed to generations, held so no other program takes them.
    pub public_ports: PublicPorts,
    /// Without nftables: the engines' event counts (and no handoff: a change
    /// replaces the engine on the public port). `None`: nftables.
    pub stream: Option<StreamCounts>,
}

impl<E: Engine> Env<E> {
    pub fn owner_label(&self) -> String {
        format!("{LABEL_OWNER}={}", self.node_id)
    }

    /// Unique per node, protocol and generation, so nodes sharing a host never collide.
    pub fn generation_name(&self, protocol: Protocol, generation: u64) -> String {
        format!("vpn-{}-{}-g{generation}", self.node_id, protocol.as_str())
    }

    pub fn generation_dir(&self, protocol: Protocol, generation: u64) -> PathBuf {
        self.config_dir.join(format!("{}.g{generation}", protocol.as_str()))
    }

    pub fn generation_state_path(&self, protocol: Protocol, generation: u64) -> PathBuf {
        self.config_dir.join(format!("{}.g{generation}.state.json", protocol.as_str()))
    }

    pub fn marks(&self) -> MutexGuard<'_, Marks> {
        self.marks.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn read_state(&self, protocol: Protocol, generation: u64) -> Option<LiveState> {
        let bytes = std::fs::read(self.generation_state_path(protocol, generation)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    pub fn write_state(&self, protocol: Protocol, generation: u64, state: &LiveState) -> Result<(), RuntimeError> {
        let path = self.generation_state_path(protocol, generation);
        let bytes = serde_json::to_vec_pretty(state)
            .map_err(|e| RuntimeError::io("encode", &path, std::io::Error::other(e)))?;
        write_atomic(&path, &bytes, true)
    }
}

/// What a generation's running process serves. Valid only for the process it
/// names: a restart loads `config.json` afresh and refuses no one.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveState {
    pub container_id: String,
    pub started_at: String,
    /// Name -> credential loaded by the last start or reload.
    pub live: BTreeMap<String, String>,
    pub refused: BTreeSet<String>,
}
