//! Engines: the proxy programs that serve an inbound inside a container.
//! The reconciler talks to them only through [`Engine`]; sing-box is the one
//! implementation today ([`singbox::SingBox`]).
//!
//! An engine learns its users from its config file and only there, so a
//! change of the user set starts the next generation of the engine, which
//! takes the new connections while the previous one serves its own until they
//! end (see [`crate::nftables`]; without nftables the next one replaces it).
//! A removed user is refused at once, on every generation, through a live
//! switch, and their sessions are closed.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;

use crate::{EngineUser, InboundSpec, RuntimeError};

pub mod singbox;

/// The loopback API ports and bearer secret of one engine container,
/// allocated when it is created and recorded in its labels for adoption.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiAccess {
    pub ports: Vec<u16>,
    pub secret: String,
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

    /// How many loopback API ports an engine listens on.
    fn api_port_count(&self) -> usize;

    /// Where the config dir is mounted inside the container.
    fn container_dir(&self) -> &'static str;

    /// The name of the main config file inside the config dir.
    fn config_file(&self) -> &'static str;

    /// Container command (after the image's entrypoint) that serves `config_file`.
    fn run_args(&self) -> Vec<String>;

    /// A hash of everything whose change needs a new generation besides the
    /// users (image, protocol, keys, TLS material).
    fn config_hash(&self, image: &str, inbound: &InboundSpec) -> Result<String, RuntimeError>;

    /// The config dir's files for this inbound serving these users on
    /// `listen_port`, each user's upstream sockets marked with `marks[name]`.
    fn render(
        &self,
        inbound: &InboundSpec,
        listen_port: u16,
        users: &[EngineUser],
        marks: &BTreeMap<String, u32>,
        api: &ApiAccess,
    ) -> Result<Vec<ConfigFile>, RuntimeError>;

    /// The users (name -> credential) a freshly started engine loads from this config file.
    fn users_in_config(&self, config: &[u8]) -> BTreeMap<String, String>;

    /// Answers once the engine's API serves requests.
    fn ping(&self, api: &ApiAccess) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// How many sessions the engine serves now.
    fn sessions(&self, api: &ApiAccess) -> impl Future<Output = Result<usize, RuntimeError>> + Send;

    /// Refuses (or serves again) these users live; refusing also closes their
    /// live sessions. Returns the sessions closed.
    fn set_refused(
        &self,
        api: &ApiAccess,
        names: &[String],
        refused: bool,
    ) -> impl Future<Output = Result<u64, RuntimeError>> + Send;
}
