//! The data-plane settings (`--dataplane` and the flags that go with it):
//! parsed and validated before anything starts, every error naming its flag.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use vpn_runtime::NftablesUse;
use vpn_storage::model::Protocol;

use crate::error::Error;

/// The official sing-box image; operators without registry access build a
/// local one with `ops/images/build-sing-box.sh` and pass `--engine-image`.
pub const DEFAULT_ENGINE_IMAGE: &str = "ghcr.io/sagernet/sing-box:v1.14.4";
const DEFAULT_RESYNC_SECS: u64 = 10;
/// A VLESS generation that no longer takes new connections serves its own for
/// up to this long; the sessions still open then are cut (and counted).
const DEFAULT_ENGINE_DRAIN: Duration = Duration::from_secs(3600);
/// Generations of one inbound alive at once (each is a sing-box process of
/// ~15-25 MB): beyond it the oldest one's sessions are cut (and counted).
const DEFAULT_MAX_GENERATIONS: usize = 8;
const MAX_GENERATIONS: std::ops::RangeInclusive<usize> = 2..=64;

/// A validated data-plane configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataplaneConfig {
    /// Host name or IP address clients connect to.
    pub public_host: String,
    /// One inbound per protocol, ports distinct.
    pub inbounds: Vec<InboundConfig>,
    pub engine_image: String,
    pub labels: BTreeMap<String, String>,
    /// Most users the operator wants here; 0: no limit.
    pub capacity: u32,
    /// Present when a `vless-tls` inbound is configured.
    pub tls: Option<TlsConfig>,
    /// Present when a `vless-reality` inbound is configured.
    pub reality: Option<RealityConfig>,
    /// Periodic reconcile, the safety net behind change notifications.
    pub resync: Duration,
    /// `None`: the runtime's default (`$DOCKER_HOST`, else the local socket).
    pub docker_host: Option<String>,
    /// How long a previous VLESS generation serves its sessions.
    pub engine_drain: Duration,
    /// Most VLESS generations of one inbound alive at once.
    pub engine_max_generations: usize,
    /// Whether to use nftables (`--nftables`).
    pub nftables: NftablesUse,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InboundConfig {
    pub protocol: Protocol,
    pub port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsConfig {
    /// The certificate's name and the SNI clients send.
    pub server_name: String,
    /// The operator's certificate and key (PEM); `None`: the node makes a
    /// self-signed one on first start.
    pub files: Option<(PathBuf, PathBuf)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RealityConfig {
    /// The camouflage site clients name in their SNI.
    pub server_name: String,
    /// Where handshakes that are not ours are forwarded.
    pub handshake_host: String,
    pub handshake_port: u16,
}

/// The `--dataplane` flags, part of `vpnd`'s command line; also the
/// settings as given (flags over file) before [`parse`] validates them.
#[derive(Debug, Default, clap::Args)]
#[command(next_help_heading = "Data plane")]
pub struct DataplaneArgs {
    /// Also serve users: run the node agent and its engine containers (needs Docker).
    #[arg(long)]
    pub dataplane: bool,
    /// Host name or IP address clients connect to (required with --dataplane).
    #[arg(long)]
    pub public_host: Option<String>,
    /// An inbound to serve, <protocol>=<port>; protocols: shadowsocks-2022, vless-tls, vless-reality. Repeatable.
    #[arg(long = "inbound", value_name = "PROTOCOL=PORT")]
    pub inbounds: Vec<String>,
    /// Engine image (default ghcr.io/sagernet/sing-box:v1.14.4; build a local one with ops/images/build-sing-box.sh).
    #[arg(long)]
    pub engine_image: Option<String>,
    /// Labels for placement, k=v,...
    #[arg(long)]
    pub labels: Option<String>,
    /// Most users this node should serve (default 0: no limit).
    #[arg(long)]
    pub capacity: Option<u32>,
    /// PEM certificate for vless-tls (default: a self-signed one made on first start).
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long)]
    pub tls_key: Option<PathBuf>,
    /// The certificate's name, the SNI clients send (default: --public-host).
    #[arg(long)]
    pub tls_server_name: Option<String>,
    /// vless-reality: the site clients appear to visit (their SNI), e.g. www.example.com.
    #[arg(long)]
    pub reality_server_name: Option<String>,
    /// vless-reality: where other handshakes are forwarded, host:port (default <reality-server-name>:443).
    #[arg(long)]
    pub reality_handshake: Option<String>,
    /// Seconds between full reconciles of the engines, a safety net behind change notifications (default 10).
    #[arg(long)]
    pub resync_secs: Option<u64>,
    /// Docker endpoint, e.g. unix:///var/run/docker.sock (default: $DOCKER_HOST, else the local socket).
    #[arg(long)]
    pub docker_host: Option<String>,
    /// How long a previous VLESS engine generation serves its live sessions before they are cut, e.g. 90s, 30m, 1h (default 1h).
    #[arg(long, value_name = "DURATION")]
    pub engine_drain: Option<String>,
    /// Most VLESS engine generations of one inbound alive at once, 2-64 (default 8); beyond it the oldest one's sessions are cut.
    #[arg(long, value_name = "N")]
    pub engine_max_generations: Option<usize>,
    /// nftables for handing users' changes to engines without cuts and counting traffic in the kernel:
    /// auto (default: where it works, else restart engines on changes and count from their events), on or off.
    #[arg(long, value_name = "WHEN")]
    pub nftables: Option<String>,
}

impl DataplaneArgs {
    /// The first data-plane flag given, if any.
    fn first_given(&self) -> Option<&'static str> {
        [
            ("--public-host", self.public_host.is_some()),
            ("--inbound", !self.inbounds.is_empty()),
            ("--engine-image", self.engine_image.is_some()),
            ("--labels", self.labels.is_some()),
            ("--capacity", self.capacity.is_some()),
            ("--tls-cert", self.tls_cert.is_some()),
            ("--tls-key", self.tls_key.is_some()),
            ("--tls-server-name", self.tls_server_name.is_some()),
            ("--reality-server-name", self.reality_server_name.is_some()),
            ("--reality-handshake", self.reality_handshake.is_some()),
            ("--resync-secs", self.resync_secs.is_some()),
            ("--docker-host", self.docker_host.is_some()),
            ("--engine-drain", self.engine_drain.is_some()),
            ("--engine-max-generations", self.engine_max_generations.is_some()),
            ("--nftables", self.nftables.is_some()),
        ]
        .into_iter()
        .find_map(|(flag, given)| given.then_some(flag))
    }
}

/// Validates the data-plane settings. `taken` are ports this node already
/// listens on (with the flag that names them); engines use host networking,
/// so an inbound must not reuse one.
pub(super) fn parse(raw: DataplaneArgs, taken: &[(&'static str, u16)]) -> Result<Option<DataplaneConfig>, Error> {
    if !raw.dataplane {
        return match raw.first_given() {
            Some(flag) => Err(Error::invalid(flag, "only applies to a data-plane node: add --dataplane")),
            None => Ok(None),
        };
    }
    let public_host = raw.public_host.as_deref().ok_or(Error::invalid(
        "--public-host",
        "is required with --dataplane: give the host name or IP address clients connect to",
    ))?;
    let public_host = check_host("--public-host", public_host)?;
    let inbounds = parse_inbounds(&raw.inbounds, taken)?;
    let has = |p: Protocol| inbounds.iter().any(|i| i.protocol == p);
    let tls = if has(Protocol::VlessTls) {
        let files = match (raw.tls_cert, raw.tls_key) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (Some(_), None) => return Err(Error::invalid("--tls-key", "is required with --tls-cert")),
            (None, Some(_)) => return Err(Error::invalid("--tls-cert", "is required with --tls-key")),
            (None, None) => None,
        };
        let server_name = match &raw.tls_server_name {
            Some(name) => check_host("--tls-server-name", name)?,
            None => public_host.clone(),
        };
        Some(TlsConfig { server_name, files })
    } else {
        let unused = [
            ("--tls-cert", raw.tls_cert.is_some()),
            ("--tls-key", raw.tls_key.is_some()),
            ("--tls-server-name", raw.tls_server_name.is_some()),
        ];
        if let Some((flag, _)) = unused.into_iter().find(|(_, given)| *given) {
            return Err(Error::invalid(flag, "only applies to a vless-tls inbound: add --inbound vless-tls=<port>"));
        }
        None
    };
    let reality = if has(Protocol::VlessReality) {
        let server_name = raw.reality_server_name.as_deref().ok_or(Error::invalid(
            "--reality-server-name",
            "is required with a vless-reality inbound: the site clients appear to visit, e.g. www.example.com",
        ))?;
        let server_name = check_host("--reality-server-name", server_name)?;
        let (handshake_host, handshake_port) = match &raw.reality_handshake {
            Some(target) => parse_target("--reality-handshake", target)?,
            None => (server_name.clone(), 443),
        };
        Some(RealityConfig { server_name, handshake_host, handshake_port })
    } else {
        let unused = [
            ("--reality-server-name", raw.reality_server_name.is_some()),
            ("--reality-handshake", raw.reality_handshake.is_some()),
        ];
        if let Some((flag, _)) = unused.into_iter().find(|(_, given)| *given) {
            return Err(Error::invalid(
                flag,
                "only applies to a vless-reality inbound: add --inbound vless-reality=<port>",
            ));
        }
        None
    };
    let engine_image = raw.engine_image.unwrap_or_else(|| DEFAULT_ENGINE_IMAGE.to_owned());
    if engine_image.is_empty() || engine_image.contains(char::is_whitespace) {
        return Err(Error::invalid(
            "--engine-image",
            &format!("{engine_image:?} is not an image name, e.g. {DEFAULT_ENGINE_IMAGE}"),
        ));
    }
    let resync_secs = raw.resync_secs.unwrap_or(DEFAULT_RESYNC_SECS);
    if !(1..=3600).contains(&resync_secs) {
        return Err(Error::invalid("--resync-secs", "must be 1-3600 seconds (default 10)"));
    }
    let engine_drain = match raw.engine_drain.as_deref() {
        Some(text) => parse_duration(text).ok_or_else(|| {
            Error::invalid("--engine-drain", &format!("{text:?} is not a duration: give e.g. 90s, 30m, 1h or 2d"))
        })?,
        None => DEFAULT_ENGINE_DRAIN,
    };
    let engine_max_generations = raw.engine_max_generations.unwrap_or(DEFAULT_MAX_GENERATIONS);
    if !MAX_GENERATIONS.contains(&engine_max_generations) {
        return Err(Error::invalid(
            "--engine-max-generations",
            &format!(
                "must be {}-{} (default {DEFAULT_MAX_GENERATIONS})",
                MAX_GENERATIONS.start(),
                MAX_GENERATIONS.end()
            ),
        ));
    }
    let nftables = match raw.nftables.as_deref().map(str::trim) {
        None | Some("auto") => NftablesUse::Auto,
        Some("on") => NftablesUse::On,
        Some("off") => NftablesUse::Off,
        Some(other) => {
            return Err(Error::invalid(
                "--nftables",
                &format!("{other:?}: give auto (the default: nftables where it works), on (required) or off"),
            ))
        }
    };
    Ok(Some(DataplaneConfig {
        public_host,
        inbounds,
        engine_image,
        labels: raw.labels.as_deref().map(parse_labels).transpose()?.unwrap_or_default(),
        capacity: raw.capacity.unwrap_or(0),
        tls,
        reality,
        resync: Duration::from_secs(resync_secs),
        docker_host: raw.docker_host.filter(|h| !h.trim().is_empty()),
        engine_drain,
        engine_max_generations,
        nftables,
    }))
}

/// `<n><unit>` with unit s, m, h or d (`0s` allowed: cut at once).
fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let unit = text.chars().last()?;
    let secs = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => return None,
    };
    let n: u64 = text[..text.len() - 1].parse().ok()?;
    n.checked_mul(secs).map(Duration::from_secs)
}

/// `<protocol>=<port>` items: known protocols, one inbound per protocol,
/// distinct ports that no other listener of this node uses.
fn parse_inbounds(items: &[String], taken: &[(&'static str, u16)]) -> Result<Vec<InboundConfig>, Error> {
    const FLAG: &str = "--inbound";
    if items.is_empty() {
        return Err(Error::invalid(
            FLAG,
            "is required with --dataplane: give at least one, e.g. --inbound vless-tls=443",
        ));
    }
    let names = Protocol::ALL.map(Protocol::as_str).join(", ");
    let mut inbounds: Vec<InboundConfig> = Vec::new();
    for item in items.iter().flat_map(|i| i.split(',')).map(str::trim).filter(|i| !i.is_empty()) {
        let (name, port) = item
            .split_once('=')
            .ok_or_else(|| Error::invalid(FLAG, &format!("{item:?} is not <protocol>=<port>, e.g. vless-tls=443")))?;
        let protocol = Protocol::parse(name.trim()).ok_or_else(|| {
            Error::invalid(FLAG, &format!("unknown protocol {name:?} in {item:?}: use one of {names}"))
        })?;
        let port =
            port.trim().parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| {
                Error::invalid(FLAG, &format!("port {port:?} in {item:?} is not a number in 1-65535"))
            })?;
        if let Some(other) = inbounds.iter().find(|i| i.port == port) {
            return Err(Error::invalid(
                FLAG,
                &format!("port {port} is given twice ({} and {protocol})", other.protocol),
            ));
        }
        if inbounds.iter().any(|i| i.protocol == protocol) {
            return Err(Error::invalid(FLAG, &format!("{protocol} is given twice: one inbound per protocol")));
        }
        if let Some((flag, _)) = taken.iter().find(|(_, p)| *p == port) {
            return Err(Error::invalid(FLAG, &format!("port {port} of {protocol} is already this node's {flag} port")));
        }
        inbounds.push(InboundConfig { protocol, port });
    }
    Ok(inbounds)
}

/// A host name or an IP address (an IPv6 address may come in brackets).
fn check_host(flag: &'static str, raw: &str) -> Result<String, Error> {
    let raw = raw.trim();
    let unbracketed = raw.strip_prefix('[').and_then(|r| r.strip_suffix(']')).unwrap_or(raw);
    if let Ok(ip) = unbracketed.parse::<IpAddr>() {
        return Ok(ip.to_string());
    }
    let valid_label = |l: &str| {
        (1..=63).contains(&l.len())
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if raw.is_empty() || raw.len() > 253 || !raw.trim_end_matches('.').split('.').all(valid_label) {
        return Err(Error::invalid(flag, &format!("{raw:?} is not a host name or IP address, e.g. vpn.example.com")));
    }
    Ok(raw.to_ascii_lowercase())
}

/// Comma-separated `key=value` pairs; keys and values of `[A-Za-z0-9._/-]`.
fn parse_labels(raw: &str) -> Result<BTreeMap<String, String>, Error> {
    const FLAG: &str = "--labels";
    let valid = |s: &str| s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '/' | '-'));
    let mut labels = BTreeMap::new();
    for item in raw.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (key, value) = item.split_once('=').map(|(k, v)| (k.trim(), v.trim())).unwrap_or((item, ""));
        if key.is_empty() || !valid(key) || !valid(value) || !item.contains('=') {
            return Err(Error::invalid(
                FLAG,
                &format!("{item:?} is not key=value of letters, digits, '.', '_', '/', '-', e.g. region=eu"),
            ));
        }
        if key.len() > 63 || value.len() > 63 {
            return Err(Error::invalid(FLAG, &format!("{item:?}: keys and values are at most 63 characters")));
        }
        if labels.insert(key.to_owned(), value.to_owned()).is_some() {
            return Err(Error::invalid(FLAG, &format!("label {key:?} is given twice")));
        }
    }
    if labels.len() > crate::limits::NODE_LABELS {
        return Err(Error::invalid(FLAG, &format!("{} labels: at most {}", labels.len(), crate::limits::NODE_LABELS)));
    }
    Ok(labels)
}

/// `host:port` of a server this node dials.
fn parse_target(flag: &'static str, raw: &str) -> Result<(String, u16), Error> {
    let bad = || Error::invalid(flag, &format!("{raw:?} is not host:port, e.g. www.example.com:443"));
    let (host, port) = raw.trim().rsplit_once(':').ok_or_else(bad)?;
    let port = port.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(bad)?;
    Ok((check_host(flag, host).map_err(|_| bad())?, port))
}

#[cfg(test)]
#[path = "dataplane_tests.rs"]
mod tests;
