//! Settings of a node: from flags, from a TOML file (`--config`), or `--dev`.
//! Flags win over the file. Everything is validated here, before anything on
//! disk or on the network is touched, and errors name the flag to fix.
//!
//! Layout: this file holds the flags, the file and the control-plane
//! settings; [`dataplane`] the `--dataplane` settings.

pub mod dataplane;
pub mod login;
pub mod scheduling;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Parser;
use serde::Deserialize;

pub use self::dataplane::DataplaneConfig;
pub use self::scheduling::SchedulingConfig;
use crate::error::Error;
use crate::tls::{Files, HttpTls, Security};

/// `vpnd`: one node of the replicated VPN control plane.
#[derive(Debug, Default, Parser)]
#[command(
    name = "vpnd",
    version,
    about = "One node of the replicated VPN control plane",
    long_about = "One node of the replicated VPN control plane.\n\n\
        Start three nodes with the same --initial-members to form a cluster:\n  \
        vpnd --id 1 --listen 10.0.0.1:7000 --http 10.0.0.1:7080 --data-dir /var/lib/vpnd \\\n       \
        --initial-members 1=10.0.0.1:7000,2=10.0.0.2:7000,3=10.0.0.3:7000\n\n\
        Add a node to a running cluster with --join <any member>. Try it locally with `vpnd --dev`.\n\n\
        A data-plane node runs engines that serve users:\n  \
        vpnd --id 4 --http :7080 --data-dir /var/lib/vpnd --join 10.0.0.1:7000,10.0.0.2:7000,10.0.0.3:7000 \\\n       \
        --dataplane --public-host vpn4.example.com --inbound vless-tls=443 --inbound shadowsocks-2022=8388\n\
        It holds no replicated state and serves no gRPC: its agent fetches the users placed on it from the\n\
        control-plane nodes of --join (give it every start). With --voter it is also a control-plane member."
)]
pub struct Args {
    /// This node's id (a positive integer, unique in the cluster, never reused).
    #[arg(long)]
    pub id: Option<u64>,
    /// gRPC address to listen on (public API, Raft, health), host:port.
    #[arg(long)]
    pub listen: Option<String>,
    /// gRPC address other nodes and clients use to reach this node (default: --listen).
    #[arg(long)]
    pub advertise: Option<String>,
    /// HTTP address for /livez, /readyz and /metrics, host:port.
    #[arg(long)]
    pub http: Option<String>,
    /// Directory holding this node's Raft log, state and identity.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Static bootstrap: every member gets the same list, id=host:port,...
    #[arg(long)]
    pub initial_members: Option<String>,
    /// Join a running cluster through any of these members, host:port,...
    #[arg(long)]
    pub join: Option<String>,
    /// With --join: stay a learner (replicates, never votes) instead of becoming a voter.
    #[arg(long)]
    pub learner: bool,
    /// With --join --dataplane: also be a control-plane member (a voter); without it a
    /// data-plane node holds no replicated state.
    #[arg(long)]
    pub voter: bool,
    /// TOML file with any of these settings (flags win).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// One self-bootstrapping node: id 1 on 127.0.0.1:7000 (HTTP :7080), data in ./vpn-data,
    /// unless other flags say otherwise.
    #[arg(long)]
    pub dev: bool,
    /// Raft heartbeat interval in milliseconds (default 100; also the AppendEntries timeout).
    #[arg(long)]
    pub heartbeat_ms: Option<u64>,
    /// Lower bound of the randomized election timeout in ms (default 300).
    #[arg(long)]
    pub election_timeout_min_ms: Option<u64>,
    /// Upper bound of the randomized election timeout in ms (default 600).
    #[arg(long)]
    pub election_timeout_max_ms: Option<u64>,
    /// Build a snapshot (and purge the log behind it) every this many entries (default 10000).
    #[arg(long)]
    pub snapshot_every: Option<u64>,
    /// PEM file of the cluster's CA (`vpnctl pki init`): peers and clients must present
    /// certificates it issued.
    #[arg(long, value_name = "FILE")]
    pub trusted_ca_file: Option<PathBuf>,
    /// PEM file of this node's certificate (`vpnctl pki node-cert --id <this id>`).
    #[arg(long, value_name = "FILE")]
    pub cert_file: Option<PathBuf>,
    /// PEM file of this node's private key (mode 0600).
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    /// Serve plaintext gRPC with no authentication at all: anyone who reaches --listen can do
    /// anything. Only for a private test network.
    #[arg(long)]
    pub insecure: bool,
    /// With --join and no certificate files: a token from `vpnctl join-token create`. The node
    /// makes its key, checks the cluster's CA against the token, and gets its certificate
    /// (kept in <data-dir>/pki; restarts need no token).
    #[arg(long, value_name = "TOKEN")]
    pub join_token: Option<String>,
    /// The CA's private key (`vpnctl pki init`'s ca.key, mode 0600), on control-plane nodes that
    /// may sign the certificates of nodes joining with a token.
    #[arg(long, value_name = "FILE")]
    pub ca_key_file: Option<PathBuf>,
    /// Lifetime of the node certificates this node signs for joining and renewing nodes,
    /// e.g. 90d (the default), 12h; nodes renew theirs at 2/3 of it.
    #[arg(long, value_name = "DURATION")]
    pub node_cert_lifetime: Option<String>,
    /// How long the audit log keeps a record, e.g. 90d (the default), 365d.
    #[arg(long, value_name = "DURATION")]
    pub audit_retention: Option<String>,
    /// Most audit records kept (the oldest go first); 1,000,000 by default
    /// (~300 MB of memory on every control-plane node at ~300 bytes each).
    #[arg(long, value_name = "N")]
    pub audit_max_records: Option<u64>,
    /// Serve --http (subscriptions, health, metrics) over HTTPS with this PEM certificate
    /// chain (an operator's, for the name clients fetch subscriptions from), with --http-tls-key.
    #[arg(long, value_name = "FILE")]
    pub http_tls_cert: Option<PathBuf>,
    /// The private key of --http-tls-cert (mode 0600).
    #[arg(long, value_name = "FILE")]
    pub http_tls_key: Option<PathBuf>,

    #[command(flatten)]
    pub data_plane: dataplane::DataplaneArgs,

    #[command(flatten)]
    pub scheduling: scheduling::SchedulingArgs,

    #[command(flatten)]
    pub login: login::LoginArgs,
}

/// The `--config` file: the same settings as the flags, in kebab-case.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileSettings {
    id: Option<u64>,
    listen: Option<String>,
    advertise: Option<String>,
    http: Option<String>,
    data_dir: Option<PathBuf>,
    initial_members: Option<String>,
    join: Option<String>,
    learner: Option<bool>,
    voter: Option<bool>,
    heartbeat_ms: Option<u64>,
    election_timeout_min_ms: Option<u64>,
    election_timeout_max_ms: Option<u64>,
    snapshot_every: Option<u64>,
    trusted_ca_file: Option<PathBuf>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    insecure: Option<bool>,
    join_token: Option<String>,
    ca_key_file: Option<PathBuf>,
    http_tls_cert: Option<PathBuf>,
    http_tls_key: Option<PathBuf>,
    node_cert_lifetime: Option<String>,
    audit_retention: Option<String>,
    audit_max_records: Option<u64>,
    dataplane: Option<bool>,
    public_host: Option<String>,
    /// A list: `inbound = ["vless-tls=443", "shadowsocks-2022=8388"]`.
    inbound: Option<Vec<String>>,
    engine_image: Option<String>,
    labels: Option<String>,
    capacity: Option<u32>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_server_name: Option<String>,
    reality_server_name: Option<String>,
    reality_handshake: Option<String>,
    resync_secs: Option<u64>,
    docker_host: Option<String>,
    engine_drain: Option<String>,
    engine_max_generations: Option<usize>,
    nftables: Option<String>,
    replicas: Option<usize>,
    down_after_ms: Option<u64>,
    node_heartbeat_ms: Option<u64>,
    max_moves_per_sec: Option<usize>,
    subscription_base_url: Option<String>,
    /// The `ldap-*`, `oidc-*` and `session-ttl` keys (see `read_file`).
    #[serde(skip)]
    login: login::LoginArgs,
}

/// How this node finds its cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Bootstrap {
    /// Form a new cluster from this member list (ignored once the node holds state).
    Initial(BTreeMap<u64, String>),
    /// Ask a running cluster, through any of these members, to add this node.
    Join { seeds: Vec<String>, voter: bool },
    /// Neither flag: the data dir must already hold this node's state.
    Restart,
    /// A data-plane-only node (`--dataplane --join` without `--voter`): no
    /// Raft, no gRPC port; its agent talks to these control-plane nodes.
    Edge { control_plane: Vec<String> },
}

/// Raft timings; defaults suit loopback and a LAN.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RaftTimings {
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    pub snapshot_every: u64,
}

impl Default for RaftTimings {
    fn default() -> Self {
        Self { heartbeat_ms: 100, election_timeout_min_ms: 300, election_timeout_max_ms: 600, snapshot_every: 10_000 }
    }
}

/// A validated node configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub id: u64,
    pub listen: SocketAddr,
    /// host:port under which peers and clients reach this node.
    pub advertise: String,
    pub http: SocketAddr,
    pub data_dir: PathBuf,
    pub bootstrap: Bootstrap,
    pub raft: RaftTimings,
    /// Set on a data-plane node (`--dataplane`).
    pub dataplane: Option<DataplaneConfig>,
    pub scheduling: SchedulingConfig,
    pub security: Security,
    /// The CA (with its key) when this node may sign joining nodes' certificates.
    pub ca_signer: Option<std::sync::Arc<vpn_pki::Ca>>,
    /// HTTPS on `--http`, when given a certificate.
    pub http_tls: Option<HttpTls>,
    /// How long the node certificates this node signs are valid.
    pub node_cert_lifetime: std::time::Duration,
    /// What the audit log keeps.
    pub audit_retention: crate::auth::audit::Retention,
    /// LDAP and OIDC logins.
    pub login: crate::login::LoginConfig,
}

impl Config {
    /// Builds the configuration from parsed flags and the optional TOML file.
    pub fn from_args(mut args: Args) -> Result<Self, Error> {
        let dev = args.dev;
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileSettings::default(),
        };
        if dev {
            dev_defaults(&mut args, &file);
        }
        let id = args.id.or(file.id).ok_or(Error::MissingFlag("--id"))?;
        if id == 0 {
            return Err(Error::invalid("--id", "0 is reserved: use a positive integer"));
        }
        // A data-plane-only node serves no gRPC: --listen means nothing to it.
        let edge = !dev
            && (args.data_plane.dataplane || file.dataplane.unwrap_or(false))
            && (args.join.is_some() || file.join.is_some())
            && !(args.voter || file.voter.unwrap_or(false));
        let listen_raw = match args.listen.or(file.listen) {
            Some(listen) => listen,
            None if edge => "127.0.0.1:0".to_owned(),
            None => return Err(Error::MissingFlag("--listen")),
        };
        let listen = parse_socket_addr("--listen", &listen_raw)?;
        let http_raw = args.http.or(file.http).ok_or(Error::MissingFlag("--http"))?;
        let http = parse_socket_addr("--http", &http_raw)?;
        let advertise = match args.advertise.or(file.advertise) {
            Some(a) => {
                parse_host_port("--advertise", &a)?;
                a
            }
            None if listen.ip().is_unspecified() => return Err(Error::invalid(
                "--advertise",
                "--listen binds all interfaces, so give the address peers should dial, e.g. --advertise 10.0.0.1:7000",
            )),
            None => listen.to_string(),
        };
        let data_dir = args.data_dir.or(file.data_dir).ok_or(Error::MissingFlag("--data-dir"))?;
        let dp = args.data_plane;
        let dataplane = dataplane::parse(
            dataplane::DataplaneArgs {
                dataplane: dp.dataplane || file.dataplane.unwrap_or(false),
                public_host: dp.public_host.or(file.public_host),
                inbounds: if dp.inbounds.is_empty() { file.inbound.unwrap_or_default() } else { dp.inbounds },
                engine_image: dp.engine_image.or(file.engine_image),
                labels: dp.labels.or(file.labels),
                capacity: dp.capacity.or(file.capacity),
                tls_cert: dp.tls_cert.or(file.tls_cert),
                tls_key: dp.tls_key.or(file.tls_key),
                tls_server_name: dp.tls_server_name.or(file.tls_server_name),
                reality_server_name: dp.reality_server_name.or(file.reality_server_name),
                reality_handshake: dp.reality_handshake.or(file.reality_handshake),
                resync_secs: dp.resync_secs.or(file.resync_secs),
                docker_host: dp.docker_host.or(file.docker_host),
                engine_drain: dp.engine_drain.or(file.engine_drain),
                engine_max_generations: dp.engine_max_generations.or(file.engine_max_generations),
                nftables: dp.nftables.or(file.nftables),
            },
            &[("--listen", listen.port()), ("--http", http.port())],
        )?;
        let initial = args.initial_members.or(file.initial_members);
        let join = args.join.or(file.join);
        let learner = args.learner || file.learner.unwrap_or(false);
        let wants_vote = args.voter || file.voter.unwrap_or(false);
        if learner && wants_vote {
            return Err(Error::invalid("--voter", "give either --voter or --learner, not both"));
        }
        if learner && dataplane.is_some() {
            return Err(Error::invalid(
                "--learner",
                "a data-plane node replicates nothing: drop --learner (or give --voter to make it a control-plane member too)",
            ));
        }
        let voter = !learner;
        let bootstrap = match (initial, join) {
            (Some(_), _) | (_, Some(_)) if dev => {
                return Err(Error::invalid(
                    "--dev",
                    "starts a one-node cluster of its own: drop --initial-members and --join",
                ))
            }
            (None, None) if dev => Bootstrap::Initial(BTreeMap::from([(id, advertise.clone())])),
            (Some(_), Some(_)) => {
                return Err(Error::invalid(
                    "--join",
                    "give either --initial-members (new cluster) or --join (existing cluster), not both",
                ))
            }
            (Some(list), None) => {
                let members = parse_initial_members(&list)?;
                match members.get(&id) {
                    None => {
                        return Err(Error::invalid(
                            "--initial-members",
                            &format!("does not list this node's --id {id}: add {id}=<host:port>, or use --join"),
                        ))
                    }
                    Some(addr) if *addr != advertise => {
                        return Err(Error::invalid(
                            "--initial-members",
                            &format!("lists {id}={addr}, but this node advertises {advertise}: make them match (see --advertise)"),
                        ))
                    }
                    Some(_) => Bootstrap::Initial(members),
                }
            }
            (None, Some(list)) if edge => Bootstrap::Edge { control_plane: parse_seed_list(&list)? },
            (None, Some(list)) => Bootstrap::Join { seeds: parse_seed_list(&list)?, voter },
            (None, None) => Bootstrap::Restart,
        };
        let defaults = RaftTimings::default();
        let raft = RaftTimings {
            heartbeat_ms: args.heartbeat_ms.or(file.heartbeat_ms).unwrap_or(defaults.heartbeat_ms),
            election_timeout_min_ms: args
                .election_timeout_min_ms
                .or(file.election_timeout_min_ms)
                .unwrap_or(defaults.election_timeout_min_ms),
            election_timeout_max_ms: args
                .election_timeout_max_ms
                .or(file.election_timeout_max_ms)
                .unwrap_or(defaults.election_timeout_max_ms),
            snapshot_every: args.snapshot_every.or(file.snapshot_every).unwrap_or(defaults.snapshot_every),
        };
        validate_timings(&raft)?;
        let sched = args.scheduling;
        let scheduling = scheduling::parse(
            scheduling::SchedulingArgs {
                replicas: sched.replicas.or(file.replicas),
                down_after_ms: sched.down_after_ms.or(file.down_after_ms),
                node_heartbeat_ms: sched.node_heartbeat_ms.or(file.node_heartbeat_ms),
                max_moves_per_sec: sched.max_moves_per_sec.or(file.max_moves_per_sec),
                subscription_base_url: sched.subscription_base_url.or(file.subscription_base_url),
            },
            http,
        )?;
        let join_token = args.join_token.or(file.join_token);
        let ca_key_file = args.ca_key_file.or(file.ca_key_file);
        let trusted_ca_file = args.trusted_ca_file.or(file.trusted_ca_file);
        let security = match join_token {
            Some(token) => join_security(&token, &bootstrap, [&trusted_ca_file, &args.cert_file, &args.key_file])?,
            None => security(
                id,
                dev,
                args.insecure || file.insecure.unwrap_or(false),
                [trusted_ca_file.clone(), args.cert_file.or(file.cert_file), args.key_file.or(file.key_file)],
            )?,
        };
        let ca_signer = match (ca_key_file, &trusted_ca_file) {
            (None, _) => None,
            (Some(key), Some(cert)) => {
                // The CA key can issue any identity: never start on one others can read.
                crate::tls::refuse_shared_key_of("--ca-key-file", &key)?;
                Some(std::sync::Arc::new(
                    vpn_pki::Ca::load(cert, &key)
                        .map_err(|e| Error::InvalidFlag { flag: "--ca-key-file", detail: e.to_string() })?,
                ))
            }
            (Some(_), None) => {
                return Err(Error::invalid(
                    "--ca-key-file",
                    "goes with --trusted-ca-file (the CA certificate it belongs to)",
                ))
            }
        };
        let http_tls = match (args.http_tls_cert.or(file.http_tls_cert), args.http_tls_key.or(file.http_tls_key)) {
            (Some(cert), Some(key)) => Some(HttpTls::load(&cert, &key)?),
            (None, None) => None,
            (Some(_), None) => {
                return Err(Error::invalid("--http-tls-key", "is missing: it goes with --http-tls-cert"))
            }
            (None, Some(_)) => {
                return Err(Error::invalid("--http-tls-cert", "is missing: it goes with --http-tls-key"))
            }
        };
        let node_cert_lifetime = match args.node_cert_lifetime.or(file.node_cert_lifetime) {
            None => vpn_pki::ca::NODE_LIFETIME,
            Some(raw) => parse_lifetime(&raw).ok_or_else(|| {
                Error::invalid("--node-cert-lifetime", &format!("{raw:?} is not a lifetime: use e.g. 90d, 12h or 30m"))
            })?,
        };
        let mut audit_retention = crate::auth::audit::Retention::default();
        if let Some(raw) = args.audit_retention.or(file.audit_retention) {
            audit_retention.max_age = parse_lifetime(&raw).ok_or_else(|| {
                Error::invalid("--audit-retention", &format!("{raw:?} is not a duration: use e.g. 90d, 365d or 12h"))
            })?;
        }
        match args.audit_max_records.or(file.audit_max_records) {
            Some(0) => return Err(Error::invalid("--audit-max-records", "is 0: keep at least one record")),
            Some(n) => audit_retention.max_records = n,
            None => {}
        }
        let login = login::parse(args.login.or(file.login))?;
        Ok(Self {
            id,
            listen,
            advertise,
            http,
            data_dir,
            bootstrap,
            raft,
            dataplane,
            scheduling,
            security,
            ca_signer,
            http_tls,
            node_cert_lifetime,
            audit_retention,
            login,
        })
    }
}

/// Mutual TLS from the three files, `--insecure`, or `--dev`'s own CA; never
/// plaintext by default.
fn security(id: u64, dev: bool, insecure: bool, files: [Option<PathBuf>; 3]) -> Result<Security, Error> {
    const FLAGS: &str = "--trusted-ca-file, --cert-file and --key-file";
    match (insecure, files) {
        (true, [None, None, None]) => Ok(Security::Insecure),
        (true, _) => Err(Error::invalid("--insecure", &format!("turns TLS off: drop {FLAGS}, or --insecure"))),
        (false, [Some(ca), Some(cert), Some(key)]) => {
            let files = Files { ca, cert, key };
            Ok(Security::Mtls(files.load(id)?, files))
        }
        (false, [None, None, None]) if dev => Ok(Security::Dev),
        (false, [None, None, None]) => Err(Error::InvalidFlag {
            flag: "--trusted-ca-file",
            detail: format!(
                "the gRPC port needs TLS: give {FLAGS} (made with `vpnctl pki`), or --insecure to serve plaintext \
                 with no authentication"
            ),
        }),
        (false, [ca, cert, _]) => Err(Error::InvalidFlag {
            flag: if ca.is_none() {
                "--trusted-ca-file"
            } else if cert.is_none() {
                "--cert-file"
            } else {
                "--key-file"
            },
            detail: format!("is missing: mutual TLS needs all of {FLAGS}"),
        }),
    }
}

/// `30s`, `30m`, `12h`, `90d`: at least 10 s (a certificate renews at 2/3 of its life).
pub(crate) fn parse_lifetime(raw: &str) -> Option<std::time::Duration> {
    let raw = raw.trim();
    let split = raw.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = raw.split_at(split);
    let number: u64 = number.parse().ok()?;
    let seconds = match unit {
        "s" => number,
        "m" => number.checked_mul(60)?,
        "h" => number.checked_mul(3600)?,
        "d" => number.checked_mul(86_400)?,
        _ => return None,
    };
    (seconds >= 10).then(|| std::time::Duration::from_secs(seconds))
}

/// `--join-token`: only with `--join`, and instead of certificate files.
fn join_security(token: &str, bootstrap: &Bootstrap, files: [&Option<PathBuf>; 3]) -> Result<Security, Error> {
    if !matches!(bootstrap, Bootstrap::Join { .. } | Bootstrap::Edge { .. }) {
        return Err(Error::invalid("--join-token", "goes with --join (the members to ask)"));
    }
    if files.iter().any(|f| f.is_some()) {
        return Err(Error::invalid(
            "--join-token",
            "gets this node its certificate: drop --trusted-ca-file, --cert-file and --key-file",
        ));
    }
    let token = vpn_pki::join_token::JoinToken::parse(token)
        .map_err(|e| Error::InvalidFlag { flag: "--join-token", detail: e.to_string() })?;
    Ok(Security::JoinToken(token))
}

/// `--dev`: node 1 on loopback with data in ./vpn-data, forming a cluster of
/// its own, where neither a flag nor the file says otherwise.
fn dev_defaults(args: &mut Args, file: &FileSettings) {
    args.id = args.id.or(file.id).or(Some(1));
    args.listen = args.listen.take().or_else(|| file.listen.clone()).or_else(|| Some("127.0.0.1:7000".into()));
    args.http = args.http.take().or_else(|| file.http.clone()).or_else(|| Some("127.0.0.1:7080".into()));
    args.data_dir = args.data_dir.take().or_else(|| file.data_dir.clone()).or_else(|| Some(PathBuf::from("vpn-data")));
}

/// The file's settings. The login keys (`ldap-*`, `oidc-*`, `session-ttl`)
/// are read apart, into their own struct: both halves refuse a key they do
/// not know.
fn read_file(path: &Path) -> Result<FileSettings, Error> {
    let bad = |detail: String| Error::ConfigFile { path: path.to_owned(), detail };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let mut table: toml::Table = toml::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let is_login = |key: &str| key.starts_with("ldap-") || key.starts_with("oidc-") || key == "session-ttl";
    let keys: Vec<String> = table.keys().filter(|k| is_login(k)).cloned().collect();
    let login_table: toml::Table = keys.iter().filter_map(|k| table.remove_entry(k)).collect();
    let mut settings: FileSettings = table.try_into().map_err(|e: toml::de::Error| bad(e.to_string()))?;
    settings.login = login_table.try_into().map_err(|e: toml::de::Error| bad(e.to_string()))?;
    Ok(settings)
}

fn validate_timings(t: &RaftTimings) -> Result<(), Error> {
    if t.heartbeat_ms == 0 {
        return Err(Error::invalid("--heartbeat-ms", "must be at least 1"));
    }
    if t.election_timeout_min_ms <= t.heartbeat_ms {
        return Err(Error::invalid(
            "--election-timeout-min-ms",
            "must be larger than --heartbeat-ms (a few heartbeats, e.g. 6x)",
        ));
    }
    if t.election_timeout_max_ms <= t.election_timeout_min_ms {
        return Err(Error::invalid(
            "--election-timeout-max-ms",
            "must be larger than --election-timeout-min-ms (e.g. 2x)",
        ));
    }
    if t.snapshot_every == 0 {
        return Err(Error::invalid("--snapshot-every", "must be at least 1"));
    }
    Ok(())
}

fn parse_socket_addr(flag: &'static str, raw: &str) -> Result<SocketAddr, Error> {
    raw.parse().map_err(|_| Error::invalid(flag, &format!("{raw:?} is not an ip:port address, e.g. 127.0.0.1:7000")))
}

/// Checks `host:port` (a name or an IP; the port a number in 1..=65535).
fn parse_host_port(flag: &'static str, raw: &str) -> Result<(), Error> {
    let bad = || Error::invalid(flag, &format!("{raw:?} is not host:port, e.g. 10.0.0.1:7000"));
    let (host, port) = raw.rsplit_once(':').ok_or_else(bad)?;
    match port.parse::<u16>() {
        Ok(p) if p > 0 && !host.is_empty() && !host.contains(char::is_whitespace) => Ok(()),
        _ => Err(bad()),
    }
}

fn parse_initial_members(raw: &str) -> Result<BTreeMap<u64, String>, Error> {
    const FLAG: &str = "--initial-members";
    let mut members = BTreeMap::new();
    for item in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (id, addr) = item
            .split_once('=')
            .ok_or_else(|| Error::invalid(FLAG, &format!("{item:?} is not id=host:port, e.g. 1=10.0.0.1:7000")))?;
        let id: u64 = id
            .trim()
            .parse()
            .ok()
            .filter(|id| *id > 0)
            .ok_or_else(|| Error::invalid(FLAG, &format!("{id:?} in {item:?} is not a positive node id")))?;
        let addr = addr.trim();
        parse_host_port(FLAG, addr)?;
        if members.insert(id, addr.to_owned()).is_some() {
            return Err(Error::invalid(FLAG, &format!("node id {id} is listed twice")));
        }
    }
    if members.is_empty() {
        return Err(Error::invalid(FLAG, "is empty: give id=host:port,... for every initial member"));
    }
    Ok(members)
}

fn parse_seed_list(raw: &str) -> Result<Vec<String>, Error> {
    let seeds: Vec<String> = raw.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect();
    if seeds.is_empty() {
        return Err(Error::invalid("--join", "is empty: give host:port of at least one member"));
    }
    for seed in &seeds {
        parse_host_port("--join", seed)?;
    }
    Ok(seeds)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Args {
        let mut argv = vec![
            "vpnd",
            "--id",
            "1",
            "--listen",
            "127.0.0.1:7000",
            "--http",
            "127.0.0.1:7080",
            "--data-dir",
            "/tmp/x",
            "--insecure",
        ];
        argv.extend_from_slice(extra);
        Args::parse_from(argv)
    }

    #[test]
    fn a_ca_key_others_can_read_stops_the_node_naming_the_flag() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = vpn_pki::Ca::generate("ca").expect("ca");
        let node = ca.issue_node(1, vpn_pki::Role::ControlPlane, &[], vpn_pki::ca::NODE_LIFETIME).expect("cert");
        let write = |name: &str, text: &str, mode: u32| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).expect("write");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
            path.display().to_string()
        };
        let (ca_crt, ca_key) = (write("ca.crt", ca.cert_pem(), 0o644), write("ca.key", &ca.key_pem(), 0o644));
        let (crt, key) = (write("node.crt", &node.cert_pem, 0o644), write("node.key", &node.key_pem, 0o600));
        let base = ["vpnd", "--id", "1", "--listen", "127.0.0.1:7000", "--http", "127.0.0.1:7080", "--data-dir", "/x"];
        let tls = ["--trusted-ca-file", &ca_crt, "--cert-file", &crt, "--key-file", &key, "--ca-key-file", &ca_key];
        let argv = || base.iter().chain(tls.iter()).copied().collect::<Vec<_>>();
        let e = Config::from_args(Args::parse_from(argv())).expect_err("a shared CA key");
        assert!(e.to_string().starts_with("--ca-key-file:") && e.to_string().contains("chmod 600"), "{e}");
        std::fs::set_permissions(&ca_key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let c = Config::from_args(Args::parse_from(argv())).expect("a private CA key");
        assert!(c.ca_signer.is_some_and(|signer| signer.digest() == ca.digest()));
    }

    #[test]
    fn the_grpc_port_needs_tls_files_or_an_explicit_insecure() {
        let bare = ["vpnd", "--id", "1", "--listen", "127.0.0.1:7000", "--http", "127.0.0.1:7080", "--data-dir", "/x"];
        let e = Config::from_args(Args::parse_from(bare)).expect_err("no TLS settings");
        let text = e.to_string();
        assert!(
            text.contains("--trusted-ca-file") && text.contains("--key-file") && text.contains("--insecure"),
            "{e}"
        );
        let partial = bare.iter().copied().chain(["--trusted-ca-file", "/ca.crt", "--cert-file", "/n.crt"]);
        let e = Config::from_args(Args::parse_from(partial)).expect_err("no key");
        assert!(e.to_string().starts_with("--key-file: is missing"), "{e}");
        assert!(err(&["--trusted-ca-file", "/ca.crt"]).starts_with("--insecure:"), "both TLS and --insecure");
        let c = Config::from_args(args(&[])).expect("--insecure");
        assert!(matches!(c.security, Security::Insecure));
        let dev = Config::from_args(Args::parse_from(["vpnd", "--dev"])).expect("dev");
        assert!(matches!(dev.security, Security::Dev));
    }

    fn err(extra: &[&str]) -> String {
        match Config::from_args(args(extra)) {
            Ok(c) => panic!("accepted {extra:?}: {c:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn initial_members_are_parsed() {
        let c = Config::from_args(args(&["--initial-members", "1=127.0.0.1:7000, 2=10.0.0.2:7000"])).expect("valid");
        assert_eq!(
            c.bootstrap,
            Bootstrap::Initial(BTreeMap::from([(1, "127.0.0.1:7000".into()), (2, "10.0.0.2:7000".into())]))
        );
    }

    #[test]
    fn dev_alone_is_node_1_on_loopback() {
        let c = Config::from_args(Args::parse_from(["vpnd", "--dev"])).expect("valid");
        assert_eq!(
            (c.id, c.listen.to_string(), c.http.to_string()),
            (1, "127.0.0.1:7000".into(), "127.0.0.1:7080".into())
        );
        assert_eq!(c.data_dir, PathBuf::from("vpn-data"));
        assert_eq!(c.bootstrap, Bootstrap::Initial(BTreeMap::from([(1, "127.0.0.1:7000".into())])));
    }

    #[test]
    fn dev_keeps_the_flags_given_with_it() {
        let argv = ["vpnd", "--dev", "--listen", "127.0.0.1:7100", "--data-dir", "/tmp/x", "--heartbeat-ms", "50"];
        let c = Config::from_args(Args::parse_from(argv)).expect("valid");
        assert_eq!(
            (c.listen.to_string(), c.data_dir.clone(), c.raft.heartbeat_ms),
            ("127.0.0.1:7100".into(), PathBuf::from("/tmp/x"), 50)
        );
        assert_eq!(c.bootstrap, Bootstrap::Initial(BTreeMap::from([(1, "127.0.0.1:7100".into())])));
        for extra in [["--join", "10.0.0.1:7000"], ["--initial-members", "1=127.0.0.1:7000"]] {
            let argv = ["vpnd", "--dev"].into_iter().chain(extra);
            let e = Config::from_args(Args::parse_from(argv)).expect_err("refused");
            assert!(e.to_string().contains("--dev"), "{e}");
        }
    }

    #[test]
    fn malformed_initial_members_name_the_flag() {
        for bad in [
            "",
            "1",
            "x=127.0.0.1:7000",
            "1=127.0.0.1",
            "1=127.0.0.1:0",
            "1=127.0.0.1:7000,1=127.0.0.1:7001",
            "2=127.0.0.1:7000",
            "1=127.0.0.1:7001",
        ] {
            let e = err(&["--initial-members", bad]);
            assert!(e.contains("--initial-members"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn bad_flags_are_named() {
        assert!(err(&["--join", "a:1", "--initial-members", "1=127.0.0.1:7000"]).contains("--join"));
        assert!(err(&["--heartbeat-ms", "500"]).contains("--election-timeout-min-ms"));
        assert!(Config::from_args(Args::parse_from(["vpnd", "--id", "1"])).is_err());
        let e = Config::from_args(Args::parse_from([
            "vpnd",
            "--id",
            "0",
            "--listen",
            "127.0.0.1:1",
            "--http",
            "127.0.0.1:2",
            "--data-dir",
            "d",
        ]))
        .expect_err("id 0");
        assert!(e.to_string().contains("--id"));
        let e = Config::from_args(Args::parse_from([
            "vpnd",
            "--id",
            "1",
            "--listen",
            "0.0.0.0:1",
            "--http",
            "127.0.0.1:2",
            "--data-dir",
            "d",
        ]))
        .expect_err("unspecified listen");
        assert!(e.to_string().contains("--advertise"));
    }

    #[test]
    fn file_settings_apply_and_flags_win() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("vpnd.toml");
        std::fs::write(&path, "id = 2\nlisten = \"127.0.0.1:7100\"\nhttp = \"127.0.0.1:7180\"\ndata-dir = \"/d\"\nheartbeat-ms = 20\njoin = \"127.0.0.1:7000\"\n")
            .expect("write");
        let argv = ["vpnd", "--config", path.to_str().expect("utf8"), "--id", "3", "--insecure"];
        let c = Config::from_args(Args::parse_from(argv)).expect("valid");
        assert_eq!(c.id, 3);
        assert_eq!(c.raft.heartbeat_ms, 20);
        assert_eq!(c.bootstrap, Bootstrap::Join { seeds: vec!["127.0.0.1:7000".into()], voter: true });
        // --dev takes the file's settings over its own defaults.
        std::fs::write(&path, "listen = \"127.0.0.1:7100\"\ndata-dir = \"/d\"\n").expect("write");
        let c = Config::from_args(Args::parse_from(["vpnd", "--dev", "--config", path.to_str().expect("utf8")]))
            .expect("valid");
        assert_eq!(
            (c.listen.to_string(), c.data_dir.clone(), c.http.to_string()),
            ("127.0.0.1:7100".into(), PathBuf::from("/d"), "127.0.0.1:7080".into())
        );
        std::fs::write(&path, "idd = 2\n").expect("write");
        let e = Config::from_args(Args::parse_from(["vpnd", "--config", path.to_str().expect("utf8")]))
            .expect_err("unknown key");
        assert!(e.to_string().contains("idd"), "{e}");
    }
}
