//! Engines: the proxy programs that serve an inbound inside a container.
//! The reconciler talks to them only through [`Engine`]; sing-box is the one
//! implementation today ([`singbox::SingBox`]).

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;

use crate::{EngineUser, InboundSpec, Protocol, RuntimeError};

pub mod singbox;

/// How user changes reach a running engine of one protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UserStrategy {
    /// Added and removed through a live API: nothing restarts, no session is
    /// disturbed (sing-box `ssm-api` for Shadowsocks-2022).
    Live,
    /// Users live in the config file, and a reload would cut every session: an
    /// added user starts the next engine generation, which takes the new
    /// connections while the previous one serves its own until they end (see
    /// [`crate::handoff`]); a removed user is refused at once on every
    /// generation through a live switch, and its sessions are closed (VLESS).
    Generations,
}

/// The loopback API ports and bearer secret of one engine container,
/// allocated when it is created and recorded in its labels for adoption.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiAccess {
    pub ports: Vec<u16>,
    pub secret: String,
}

/// One cumulative byte counter of a running engine process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineCounter {
    /// Names the counting source within the engine process, e.g. `ss/<user>` or `conn/<id>`.
    pub key: String,
    /// The [`EngineUser::name`] whose bytes these are.
    pub user: String,
    /// Uplink + downlink since the source started counting.
    pub bytes: u64,
}

/// One file of an engine's config dir, relative to that dir.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigFile {
    pub path: PathBuf,
    pub contents: Vec<u8>,
    /// Written with mode 0600 (private keys).
    pub private: bool,
}

/// What the reconciler needs from an engine.
pub trait Engine: Send + Sync + 'static {
    /// The `vpn.engine` label value.
    fn name(&self) -> &'static str;

    fn user_strategy(&self, protocol: Protocol) -> UserStrategy;

    /// How many loopback API ports an engine of this protocol listens on.
    fn api_port_count(&self, protocol: Protocol) -> usize;

    /// Where the config dir is mounted inside the container.
    fn container_dir(&self) -> &'static str;

    /// The name of the main config file inside the config dir.
    fn config_file(&self) -> &'static str;

    /// Container command (after the image's entrypoint) that serves `config_file`.
    fn run_args(&self) -> Vec<String>;

    /// Container command that validates `file` (in the config dir) and exits non-zero if bad.
    fn check_args(&self, file: &str) -> Vec<String>;

    /// A hash of everything whose change needs a new container (image,
    /// protocol, port, keys, TLS material); never of the user list.
    fn config_hash(&self, image: &str, inbound: &InboundSpec) -> Result<String, RuntimeError>;

    /// The config dir's files for this inbound serving these users on
    /// `listen_port` (the inbound's own port, or a generation's).
    fn render(
        &self,
        inbound: &InboundSpec,
        listen_port: u16,
        users: &[EngineUser],
        api: &ApiAccess,
    ) -> Result<Vec<ConfigFile>, RuntimeError>;

    /// The users (name -> credential) a freshly started engine loads from this config file.
    fn users_in_config(&self, config: &[u8]) -> BTreeMap<String, String>;

    /// Answers once the engine's APIs serve requests.
    fn ping(&self, protocol: Protocol, api: &ApiAccess) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// [`UserStrategy::Live`]: users (name -> credential) the engine serves now.
    fn live_users(
        &self,
        api: &ApiAccess,
    ) -> impl Future<Output = Result<BTreeMap<String, String>, RuntimeError>> + Send;

    /// [`UserStrategy::Live`]: starts serving these (name, credential) pairs.
    fn add_users(
        &self,
        api: &ApiAccess,
        users: &[(String, String)],
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// [`UserStrategy::Live`]: stops accepting these users' new sessions.
    fn remove_users(&self, api: &ApiAccess, names: &[String]) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// The cumulative byte counters of a running engine, one per counting
    /// source; a source's count never goes down while the process runs.
    fn counters(
        &self,
        protocol: Protocol,
        api: &ApiAccess,
    ) -> impl Future<Output = Result<Vec<EngineCounter>, RuntimeError>> + Send;

    /// How many sessions the engine serves now.
    fn sessions(&self, api: &ApiAccess) -> impl Future<Output = Result<usize, RuntimeError>> + Send;

    /// [`UserStrategy::Generations`]: refuses (or serves again) these users
    /// live; refusing also closes their live sessions. Returns sessions closed.
    fn set_refused(
        &self,
        api: &ApiAccess,
        names: &[String],
        refused: bool,
    ) -> impl Future<Output = Result<u64, RuntimeError>> + Send;
}
