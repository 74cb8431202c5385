//! Level-triggered reconciliation in the kube-rs controller shape: observe
//! what runs (`observe`), compute the difference with a pure
//! [`plan`](plan::plan), apply it (`executor`), and repeat until the plan is
//! empty. No step is told why it runs, so every step is idempotent.

use std::collections::{BTreeMap, BTreeSet};

use crate::engine::ApiAccess;
use crate::Protocol;

pub(crate) mod env;
pub(crate) mod executor;
pub(crate) mod observe;
pub mod plan;

/// Everything that runs for this node, as Docker and the engines report it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    pub containers: Vec<ObservedContainer>,
}

/// One container labelled as this node's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedContainer {
    pub id: String,
    pub name: String,
    /// `None` when no known protocol is labelled (e.g. a leftover check container).
    pub protocol: Option<Protocol>,
    pub config_hash: String,
    pub listen_port: Option<u16>,
    pub running: bool,
    /// Docker's start time of the engine process; a restart changes it.
    pub started_at: String,
    pub api: Option<ApiAccess>,
    /// What the engine serves; `None` when it is not running or not ours to ask.
    pub users: Option<EngineUsers>,
}

/// The users a running engine serves.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EngineUsers {
    /// Name -> credential (Shadowsocks key or VLESS UUID).
    pub live: BTreeMap<String, String>,
    /// Users still in the engine but refused (reload-based engines).
    pub refused: BTreeSet<String>,
}
