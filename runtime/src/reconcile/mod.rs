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

/// Everything that runs for this node, as Docker, the engines and nftables report it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    pub containers: Vec<ObservedContainer>,
    /// Public port -> the engine port new connections are handed to (see [`crate::nftables`]).
    pub routes: BTreeMap<u16, u16>,
    /// Users with a socket mark (see [`crate::marks`]).
    pub marked: BTreeSet<String>,
    /// This node's nftables table exists.
    pub table: bool,
}

/// One container labelled as this node's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedContainer {
    pub id: String,
    pub name: String,
    /// `None` when no known protocol is labelled (e.g. a leftover check container).
    pub protocol: Option<Protocol>,
    pub config_hash: String,
    /// The public port it serves.
    pub listen_port: Option<u16>,
    /// The generation's number (0 for an engine from before generations) and own port.
    pub generation: Option<u64>,
    pub engine_port: Option<u16>,
    /// When Docker created it (Unix ms): a generation's successor's creation starts its drain.
    pub created_ms: Option<u64>,
    pub running: bool,
    /// Docker's start time of the engine process; a restart changes it.
    pub started_at: String,
    pub api: Option<ApiAccess>,
    /// What the engine serves; `None` when it is not running or not ours to ask.
    pub users: Option<EngineUsers>,
    /// Live sessions of a running generation that no longer takes new connections.
    pub sessions: Option<usize>,
}

/// The users a running engine serves.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EngineUsers {
    /// Name -> credential (Shadowsocks key or VLESS UUID).
    pub live: BTreeMap<String, String>,
    /// Users still in the engine but refused.
    pub refused: BTreeSet<String>,
}
