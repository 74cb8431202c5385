//! `vpnd`: one node of the replicated VPN control plane.
//!
//! Every node runs openraft over tonic with its state in sled (`vpn-storage`),
//! serves the public gRPC API (any node takes any request; writes are
//! forwarded to the leader in one hop), the internal Raft service,
//! `grpc.health.v1`, and HTTP health and metrics.
//!
//! Layout:
//! - [`config`]: flags, TOML file, `--dev`; all validation of settings.
//! - `agent`: on a `--dataplane` node, secrets, the session with the control
//!   plane (its assignment), and the desired state handed to the runtime's
//!   reconciler (`vpn-runtime`). It needs nothing of the Raft store.
//! - `edge`: a data-plane-only node: the agent, HTTP health and metrics, and
//!   nothing of the control plane.
//! - `dispatcher`: the control plane's side of the agent protocol.
//! - `identity`: the data dir's node id, incarnation and cluster id;
//!   `data_dir`: keeping the data dir private to the node's user.
//! - `leader`: what only the leader does: data-plane liveness, the
//!   scheduler's executor, expiry and traffic resets, heartbeat intake.
//! - [`node`]: the shared handle: propose, linearizable reads, leader routing.
//! - `raft`: openraft wiring: network, internal service, bootstrap/join, leadership transfer.
//! - `api`: the public `Users`, `Cluster` and `Nodes` services, client links.
//! - `http`: `/livez`, `/readyz`, `/metrics`.
//! - `observer`: Raft gauges and gRPC health from openraft's metrics.
//! - [`tls`]: mutual TLS of the gRPC port (or `--insecure`); `join_token`:
//!   a certificate by CSR with a join token; `renewal`: renewing it before
//!   it expires; `auth`: who may call which RPC, by the caller's certificate.
//! - `metrics`, `peers`, [`error`].
//! - `fuzz` (tests): fuzz targets of every gRPC request, the agent protocol,
//!   the config file and `/sub/{token}` (`ops/scripts/fuzz.sh`).
//!
//! [`run`] takes bound listeners and a shutdown future, so tests start nodes
//! in-process on port 0.

mod agent;
mod api;
pub mod auth;
pub mod config;
mod data_dir;
mod dispatcher;
mod edge;
pub mod error;
#[cfg(test)]
mod fuzz;
mod http;
mod identity;
mod join_token;
mod leader;
pub mod limits;
pub mod login;
mod metrics;
pub mod node;
mod observer;
mod peers;
mod raft;
mod renewal;
pub mod tls;

use std::future::Future;
use std::process::ExitCode;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;
use vpn_proto::internal::agent_server::AgentServer;
use vpn_proto::internal::raft_server::RaftServer;
use vpn_proto::v1::access_server::AccessServer;
use vpn_proto::v1::cluster_server::ClusterServer;
use vpn_proto::v1::nodes_server::NodesServer;
use vpn_proto::v1::users_server::UsersServer;
use vpn_storage::types::Raft;

pub use config::{Args, Bootstrap, Config};
pub use error::Error;
use tls::Security;

use crate::api::cluster::ClusterApi;
use crate::api::nodes::NodesApi;
use crate::api::users::UsersApi;
use crate::identity::{ClusterCell, ClusterId, Identity};
use crate::metrics::Metrics;
use crate::node::Node;
use crate::peers::Peers;
use crate::raft::network::Network;
use crate::raft::service::{RaftService, RefuseOtherClusters};

/// The node's listeners, bound before the node starts. A data-plane-only
/// node serves no gRPC.
pub struct Listeners {
    pub grpc: Option<TcpListener>,
    pub http: TcpListener,
}

impl Listeners {
    pub async fn bind(config: &Config) -> Result<Self, Error> {
        let bind = |what, addr: std::net::SocketAddr| async move {
            TcpListener::bind(addr).await.map_err(|e| Error::Bind {
                what,
                addr: addr.to_string(),
                detail: e.to_string(),
            })
        };
        let grpc = match config.bootstrap {
            Bootstrap::Edge { .. } => None,
            _ => Some(bind("--listen", config.listen).await?),
        };
        Ok(Self { grpc, http: bind("--http", config.http).await? })
    }
}

/// Runs a node until `shutdown` resolves (then stops gracefully, handing off
/// leadership) or a fatal error occurs.
pub async fn run(config: Config, listeners: Listeners, shutdown: impl Future<Output = ()> + Send) -> Result<(), Error> {
    data_dir::make_private(&config.data_dir)?;
    match (&config.bootstrap, listeners.grpc) {
        (Bootstrap::Edge { control_plane }, _) => {
            let control_plane = control_plane.clone();
            edge::run(config, control_plane, listeners.http, shutdown).await
        }
        (_, Some(grpc)) => run_control_plane(config, grpc, listeners.http, shutdown).await,
        (_, None) => Err(Error::Internal("a control-plane node needs its gRPC listener".into())),
    }
}

/// A control-plane node: Raft, the gRPC API, the leader's loops, and the
/// agent when it also serves users (`--dataplane`).
async fn run_control_plane(
    config: Config,
    grpc_listener: TcpListener,
    http_listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), Error> {
    let identity = Identity::load_or_create(&config.data_dir, config.id)?;
    let (log, sm) = vpn_storage::open(&config.data_dir)?;
    let cluster = ClusterCell::new(identity.cluster_id);
    if let Bootstrap::Initial(members) = &config.bootstrap {
        // Only a dir that was never part of a cluster takes its id from the
        // flag: an existing member ignores --initial-members, as Raft does.
        if log.holds_no_raft_state() {
            let id = ClusterId::from_initial_members(members);
            identity::record_cluster(&config.data_dir, identity, &cluster, id)?;
        }
    }
    let material = match &config.security {
        Security::Insecure => {
            tracing::warn!(
                listen = %config.listen,
                "--insecure: the gRPC port serves plaintext and authenticates nobody; anyone who reaches it can do anything"
            );
            None
        }
        Security::Mtls(material, _) => Some(material.clone()),
        Security::Dev => {
            let material = tls::Material::dev(&config.data_dir, config.id, &own_hosts(&config))?;
            write_dev_context(&config);
            Some(material)
        }
        Security::JoinToken(token) => {
            let Bootstrap::Join { seeds, .. } = &config.bootstrap else {
                return Err(Error::invalid("--join-token", "goes with --join (the members to ask)"));
            };
            Some(join_token::material(&config.data_dir, config.id, seeds, token, &own_hosts(&config)).await?)
        }
    };
    let ca_signer = match (&config.ca_signer, &config.security) {
        (Some(signer), _) => Some(signer.clone()),
        // --dev holds its own CA: it signs for nodes that join it.
        (None, Security::Dev) => {
            let pki = config.data_dir.join("pki");
            vpn_pki::Ca::load(&pki.join("ca.crt"), &pki.join("ca.key")).ok().map(Arc::new)
        }
        (None, _) => None,
    };
    let state = sm.reader();
    let metrics = Arc::new(Metrics::default());
    metrics.watch_state_machine(state.persistence().clone());
    let peers = Arc::new(Peers::new(cluster.clone(), material.as_ref().map(tls::Material::client)));
    let network = Network { identity, state: state.clone(), peers: peers.clone(), metrics: metrics.clone() };
    let raft = Raft::new(config.id, raft::raft_config(&config.raft)?, network, log, sm)
        .await
        .map_err(|e| Error::Internal(format!("raft failed to start: {e}")))?;
    let proposer = vpn_storage::Proposer::new(raft.clone());
    let node = Arc::new(Node {
        id: config.id,
        identity,
        raft,
        proposer,
        state,
        metrics,
        peers,
        liveness: Default::default(),
        scheduling: config.scheduling.clone(),
        tls: material.as_ref().map(|m| m.info.clone()),
        ca_signer,
        ca_digest: material.as_ref().map(tls::Material::ca_digest),
        cert_lifetime: config.node_cert_lifetime,
        audit_retention: config.audit_retention,
        logins: login::Logins::new(config.login.clone()),
    });

    let (stop_tx, stop_rx) = watch::channel(false);
    let (fatal_tx, mut fatal_rx) = mpsc::channel::<Error>(4);
    // The node certificate's expiry: renewal moves it, the agent registers it.
    let cert_expiry = watch::channel(node.tls.as_ref().map(|cert| cert.not_after));
    let agent = match &config.dataplane {
        None => None,
        Some(dataplane) => {
            // The agent speaks to this node first, as it would to any other.
            let host = agent::Host {
                identity,
                data_dir: config.data_dir.clone(),
                peers: node.peers.clone(),
                control_plane: control_plane_endpoints(&config),
                heartbeat: config.scheduling.node_heartbeat,
                metrics: node.metrics.exposition.clone(),
                cert_not_after: cert_expiry.1.clone(),
                fatal: fatal_tx.clone(),
            };
            match agent::start(host, dataplane, stop_rx.clone()).await {
                Ok(agent) => Some(agent),
                Err(e) => {
                    let _ = node.raft.shutdown().await;
                    return Err(e);
                }
            }
        }
    };
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_service_status("", tonic_health::ServingStatus::NotServing).await;

    let server_tls = material.as_ref().map(tls::ServerTls::new).transpose()?.map(Arc::new);
    let assignments = dispatcher::Assignments::start(node.clone(), stop_rx.clone());
    let routes = limits::grpc_server()
        .layer(auth::AuthLayer::new(node.clone(), material.is_some()))
        .add_service(health_service)
        .add_service(
            UsersServer::new(UsersApi { node: node.clone() }).max_decoding_message_size(limits::PUBLIC_MESSAGE),
        )
        .add_service(
            ClusterServer::new(ClusterApi { node: node.clone() }).max_decoding_message_size(limits::PUBLIC_MESSAGE),
        )
        .add_service(
            NodesServer::new(NodesApi { node: node.clone() }).max_decoding_message_size(limits::PUBLIC_MESSAGE),
        )
        .add_service(
            AccessServer::new(api::access::AccessApi { node: node.clone() })
                .max_decoding_message_size(limits::PUBLIC_MESSAGE),
        )
        .add_service(InterceptedService::new(
            RaftServer::new(RaftService::new(node.clone()))
                .max_decoding_message_size(limits::RAFT_MESSAGE)
                .max_encoding_message_size(limits::RAFT_MESSAGE),
            RefuseOtherClusters(cluster.clone()),
        ))
        .add_service(InterceptedService::new(
            AgentServer::new(dispatcher::AgentService { node: node.clone(), assignments })
                .max_decoding_message_size(limits::AGENT_MESSAGE),
            RefuseOtherClusters(cluster),
        ));
    let grpc: std::pin::Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>> = match &server_tls {
        Some(server_tls) => {
            Box::pin(routes.serve_with_incoming_shutdown(server_tls.incoming(grpc_listener), stopped(stop_rx.clone())))
        }
        // Without TCP_NODELAY small replies wait for delayed ACKs (~40 ms tails).
        None => Box::pin(routes.serve_with_incoming_shutdown(
            TcpIncoming::from(grpc_listener).with_nodelay(Some(true)),
            stopped(stop_rx.clone()),
        )),
    };
    let mut grpc_task = tokio::spawn(grpc);
    // Certificates this node keeps in its data dir renew themselves; the
    // operator's files are taken in when replaced.
    let renewal_task = match (&server_tls, &config.security) {
        (Some(server), Security::Dev | Security::JoinToken(_)) => {
            let seeds = match &config.bootstrap {
                Bootstrap::Join { seeds, .. } => seeds.clone(),
                _ => Vec::new(),
            };
            let voters_of = node.clone();
            let renewal = renewal::Renewal {
                id: node.id,
                peers: node.peers.clone(),
                server: Some(server.clone()),
                signer: node.ca_signer.clone().map(|ca| (ca, node.cert_lifetime)),
                voters: Box::new(move || voters_of.voter_addrs()),
                renewed: cert_expiry.0,
                data_dir: config.data_dir.clone(),
                hosts: own_hosts(&config),
                seeds,
            };
            Some(tokio::spawn(renewal.run(stop_rx.clone())))
        }
        (Some(server), Security::Mtls(material, files)) => {
            let reload = renewal::Reload {
                id: node.id,
                files: files.clone(),
                ca_digest: material.ca_digest(),
                peers: node.peers.clone(),
                server: Some(server.clone()),
                renewed: cert_expiry.0,
            };
            Some(tokio::spawn(reload.run(stop_rx.clone())))
        }
        _ => None,
    };
    let http =
        http::serve(http_listener, http::router(node.clone()), config.http_tls.clone(), stopped(stop_rx.clone()));
    let http_task = tokio::spawn(http);
    let observer_task = tokio::spawn(observer::run(node.clone(), health, stop_rx.clone()));
    let leader_task = tokio::spawn(leader::run(node.clone(), config.scheduling.clone(), stop_rx.clone()));

    start_membership(&node, &config, fatal_tx).await?;
    tracing::info!(id = config.id, listen = %config.listen, http = %config.http, "vpnd started");

    let outcome = tokio::select! {
        () = shutdown => Ok(()),
        Some(e) = fatal_rx.recv() => Err(e),
        res = &mut grpc_task => Err(Error::Internal(format!("gRPC server stopped: {res:?}"))),
    };
    tracing::info!("stopping");
    raft::transfer::hand_off_leadership(&node).await;
    let _ = stop_tx.send(true);
    if let Err(e) = node.raft.shutdown().await {
        tracing::warn!("raft shutdown: {e}");
    }
    if let Some(agent) = agent {
        agent.stopped().await;
    }
    for task in
        [http_task.abort_handle(), observer_task.abort_handle(), leader_task.abort_handle(), grpc_task.abort_handle()]
    {
        task.abort();
    }
    if let Some(task) = renewal_task {
        task.abort();
    }
    outcome
}

/// Gives vpnctl a context for this `--dev` node (its admin certificate), so
/// `vpnctl user add alice` works with no flags. Never replaces a context of
/// another data dir; a failure costs only the convenience.
fn write_dev_context(config: &Config) {
    let Some(path) = vpn_pki::contexts::default_path() else { return };
    let pki = std::path::absolute(config.data_dir.join("pki")).unwrap_or_else(|_| config.data_dir.join("pki"));
    let context = vpn_pki::contexts::Context {
        endpoints: vec![config.advertise.clone()],
        ca_cert: Some(pki.join("ca.crt")),
        cert: Some(pki.join("admin.crt")),
        key: Some(pki.join("admin.key")),
        token: None,
    };
    let written = vpn_pki::contexts::Contexts::load(&path).and_then(|mut contexts| {
        let name = contexts.add_own("dev", context);
        let current = contexts.current_context.clone();
        contexts.save(&path).map(|()| (name, current))
    });
    match written {
        Ok((name, current)) if current.as_deref() == Some(name.as_str()) => {
            tracing::info!(path = %path.display(), "vpnctl context {name:?} written and in use")
        }
        Ok((name, _)) => tracing::info!(
            path = %path.display(),
            "vpnctl context {name:?} written; another is in use: run `vpnctl context use {name}`"
        ),
        Err(e) => {
            tracing::warn!("no vpnctl context written: {e}; use vpnctl --ca-cert/--cert/--key with {}", pki.display())
        }
    }
}

/// The control-plane nodes an in-process agent talks to: this node first,
/// then the other members it was started with.
fn control_plane_endpoints(config: &Config) -> Vec<String> {
    let others = match &config.bootstrap {
        Bootstrap::Initial(members) => members.values().cloned().collect(),
        Bootstrap::Join { seeds, .. } => seeds.clone(),
        Bootstrap::Restart | Bootstrap::Edge { .. } => Vec::new(),
    };
    let mut endpoints = vec![config.advertise.clone()];
    endpoints.extend(others.into_iter().filter(|e| *e != config.advertise));
    endpoints
}

/// The names a certificate made here is valid for (`--dev`'s, or one asked
/// for with a join token): the listen and advertised hosts, and localhost.
fn own_hosts(config: &Config) -> Vec<String> {
    let mut hosts = vec![config.listen.ip().to_string(), "localhost".to_owned()];
    if let Some((host, _)) = config.advertise.rsplit_once(':') {
        hosts.push(host.trim_matches(|c| c == '[' || c == ']').to_owned());
    }
    hosts.sort();
    hosts.dedup();
    hosts
}

/// Static bootstrap, join (unless already a member), or restart; then record
/// this data dir's identity.
async fn start_membership(node: &Arc<Node>, config: &Config, fatal: mpsc::Sender<Error>) -> Result<(), Error> {
    match &config.bootstrap {
        Bootstrap::Initial(members) => raft::bootstrap::initialize(node, members).await?,
        // Already a member in the role asked for: a restart, which must not
        // depend on a seed being up (a data-plane node keeps serving while
        // the voters are away).
        Bootstrap::Join { voter, .. } if joined(node, *voter) => {}
        Bootstrap::Join { seeds, voter } => {
            let (node, data_dir, advertise, seeds, voter, fatal) =
                (node.clone(), config.data_dir.clone(), config.advertise.clone(), seeds.clone(), *voter, fatal.clone());
            tokio::spawn(async move {
                if let Err(e) = raft::bootstrap::join(&node, &data_dir, &advertise, &seeds, voter).await {
                    let _ = fatal.send(e).await;
                }
            });
        }
        Bootstrap::Restart => {
            let initialized = node.raft.is_initialized().await.unwrap_or(false);
            if !initialized {
                return Err(Error::DataDir {
                    path: config.data_dir.clone(),
                    detail: "holds no cluster state: give --initial-members to form a cluster or --join to join one \
                             (a data-plane-only node needs --join on every start)"
                        .into(),
                });
            }
        }
        Bootstrap::Edge { .. } => return Err(Error::Internal("a data-plane-only node has no membership".into())),
    }
    let (node, advertise) = (node.clone(), config.advertise.clone());
    tokio::spawn(async move {
        if let Err(e) = raft::bootstrap::register_identity(node, advertise).await {
            let _ = fatal.send(e).await;
        }
    });
    Ok(())
}

/// Whether the membership this node applied already lists it (as a voter when `voter`).
fn joined(node: &Node, voter: bool) -> bool {
    node.state.read(|s| {
        let membership = s.last_membership.membership();
        membership.get_node(&node.id).is_some() && (!voter || membership.voter_ids().any(|v| v == node.id))
    })
}

async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// A future that resolves on SIGTERM or Ctrl-C. The SIGTERM handler is
/// installed by this call, not when the future is first polled: a SIGTERM that
/// arrives while the node is still starting must stop it gracefully too.
/// Call it inside the runtime.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    async move {
        match term {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(e) => {
                tracing::warn!("cannot watch SIGTERM ({e}); stopping on Ctrl-C only");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}

/// What vpnd logs: `RUST_LOG` when set, as comma-separated `level` and
/// `target=level` directives (`debug`, `info,vpn_node::agent=debug`), else
/// info with openraft's and sled's chatter at warn. Directives are matched by
/// target prefix, without regular expressions: `EnvFilter` would bring a
/// regex engine into a binary whose idle memory is mostly its code. A value
/// that does not parse is ignored, and why is returned to be logged.
fn log_filter(rust_log: Option<String>) -> (tracing_subscriber::filter::Targets, Option<String>) {
    use tracing::Level;
    let default = tracing_subscriber::filter::Targets::new()
        .with_default(Level::INFO)
        .with_target("openraft", Level::WARN)
        .with_target("sled", Level::WARN);
    match rust_log.map(|value| (value.parse(), value)) {
        None => (default, None),
        Some((Ok(filter), _)) => (filter, None),
        Some((Err(e), value)) => {
            let why = format!(
                "RUST_LOG={value:?} ignored ({e}): give levels and target=level directives, \
                 e.g. RUST_LOG=info,vpn_node=debug"
            );
            (default, Some(why))
        }
    }
}

/// The `vpnd` command: parse flags, run until SIGTERM, exit 0 on a graceful
/// stop, 2 on bad settings, 1 on any other failure.
pub fn main() -> ExitCode {
    data_dir::private_umask();
    let (filter, ignored) = log_filter(std::env::var("RUST_LOG").ok());
    {
        use tracing_subscriber::layer::SubscriberExt as _;
        use tracing_subscriber::util::SubscriberInitExt as _;
        let stderr = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
        tracing_subscriber::registry().with(stderr).with(filter).init();
    }
    if let Some(why) = ignored {
        tracing::warn!("{why}");
    }
    let config = match Config::from_args(<Args as clap::Parser>::parse()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vpnd: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vpnd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result: Result<(), Error> = runtime.block_on(async {
        let stop = shutdown_signal();
        let listeners = Listeners::bind(&config).await?;
        run(config, listeners, stop).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vpnd: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use tracing::Level;

    use super::log_filter;

    #[test]
    fn rust_log_sets_levels_by_target_and_a_bad_value_keeps_the_default_and_says_why() {
        let (default, ignored) = log_filter(None);
        assert!(ignored.is_none());
        assert!(default.would_enable("vpn_node::agent", &Level::INFO));
        assert!(!default.would_enable("openraft::core", &Level::INFO));

        let (set, ignored) = log_filter(Some("warn,vpn_node::agent=debug".into()));
        assert!(ignored.is_none());
        assert!(set.would_enable("vpn_node::agent::session", &Level::DEBUG));
        assert!(!set.would_enable("vpn_node::api", &Level::INFO));

        let (kept, ignored) = log_filter(Some("vpn_node=loud".into()));
        let why = ignored.expect("a bad RUST_LOG is said");
        assert!(why.contains("RUST_LOG=\"vpn_node=loud\" ignored"), "{why}");
        assert!(kept.would_enable("vpn_node::agent", &Level::INFO));
        assert!(!kept.would_enable("sled::pagecache", &Level::INFO));
    }
}
