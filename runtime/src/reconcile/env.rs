//! What reconciliation works with: the engine, Docker, this node's identity
//! and its config dir, plus the small per-engine state file.
//!
//! Config dir layout (`RuntimeConfig::config_dir`), per protocol `<p>`:
//! - `<p>/`: mounted read-only into a live-API engine's container (`config.json`, `tls/`);
//! - `<p>.next/`: a new container's files while `sing-box check` validates them;
//! - `<p>.g<N>/`: generation N's files, mounted read-only into its container;
//! - `<p>.g<N>.state.json`: the users generation N's process loaded and
//!   those refused since, keyed by container id and start time.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::docker::{ContainerSpec, Docker, LABEL_ENGINE, LABEL_OWNER, LABEL_ROLE};
use crate::engine::Engine;
use crate::fsutil::write_atomic;
use crate::handoff::PortRoutes;
use crate::reconcile::plan::DrainPolicy;
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
    pub routes: PortRoutes,
    pub drain: DrainPolicy,
}

impl<E: Engine> Env<E> {
    /// Unique per node and protocol, so nodes sharing a host never collide.
    pub fn container_name(&self, protocol: Protocol) -> String {
        format!("vpn-{}-{}", self.node_id, protocol.as_str())
    }

    pub fn owner_label(&self) -> String {
        format!("{LABEL_OWNER}={}", self.node_id)
    }

    pub fn generation_name(&self, protocol: Protocol, generation: u64) -> String {
        format!("vpn-{}-{}-g{generation}", self.node_id, protocol.as_str())
    }

    pub fn generation_dir(&self, protocol: Protocol, generation: u64) -> PathBuf {
        self.config_dir.join(format!("{}.g{generation}", protocol.as_str()))
    }

    pub fn generation_state_path(&self, protocol: Protocol, generation: u64) -> PathBuf {
        self.config_dir.join(format!("{}.g{generation}.state.json", protocol.as_str()))
    }

    pub fn engine_dir(&self, protocol: Protocol) -> PathBuf {
        self.config_dir.join(protocol.as_str())
    }

    pub fn staging_dir(&self, protocol: Protocol) -> PathBuf {
        self.config_dir.join(format!("{}.next", protocol.as_str()))
    }

    /// Runs `check` on `file` in `dir` in a throwaway container of the engine image.
    pub async fn check(&self, protocol: Protocol, dir: &std::path::Path, file: &str) -> Result<(), RuntimeError> {
        let spec = ContainerSpec {
            name: None,
            image: self.image.clone(),
            cmd: self.engine.check_args(file),
            labels: HashMap::from([
                (LABEL_OWNER.to_string(), self.node_id.to_string()),
                (LABEL_ENGINE.to_string(), self.engine.name().to_string()),
                (LABEL_ROLE.to_string(), "check".to_string()),
            ]),
            binds: vec![format!("{}:{}:ro", dir.display(), self.engine.container_dir())],
            network_mode: "none".into(),
            restart: false,
        };
        let (code, output) = self.docker.run_to_completion(&spec).await?;
        if code != 0 {
            return Err(RuntimeError::ConfigRejected { protocol: protocol.as_str().to_string(), output });
        }
        Ok(())
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
