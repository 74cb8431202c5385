//! Shared fixtures for the tests that run real engines on the machine's Docker:
//! the image (built by `ops/images/build-sing-box.sh` when missing), a node
//! fixture that removes its containers on drop, a local HTTP server, and real
//! sing-box clients reached through SOCKS5.
#![allow(dead_code)] // Each test binary uses a different part.

pub mod client;
pub mod http;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use uuid::Uuid;
use vpn_runtime::{
    keys, ApplyStatus, DesiredState, EngineUser, InboundSpec, NftablesUse, Protocol, Reconciler, ReconcilerHandle,
    RuntimeConfig, TlsFiles,
};

/// The image the build script makes locally (no registry here).
pub const IMAGE: &str = "vpn-local/sing-box:1.14.4";

/// A user with fresh credentials.
pub fn user(name: &str) -> EngineUser {
    EngineUser { name: name.into(), vless_uuid: Uuid::new_v4(), ss2022_key: keys::generate_ss2022_key() }
}

/// A VLESS-over-TLS inbound on `port` serving the certificate `tls`.
pub fn vless_inbound(port: u16, tls: TlsFiles) -> InboundSpec {
    InboundSpec {
        protocol: Protocol::VlessTls,
        listen_port: port,
        ss2022_server_key: None,
        tls: Some(tls),
        reality: None,
    }
}

/// A Shadowsocks-2022 inbound on `port` with server key `key`.
pub fn ss_inbound(port: u16, key: &str) -> InboundSpec {
    InboundSpec {
        protocol: Protocol::Shadowsocks2022,
        listen_port: port,
        ss2022_server_key: Some(key.to_string()),
        tls: None,
        reality: None,
    }
}

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The sing-box binary the build script leaves for use as a real client.
pub fn sing_box_bin() -> PathBuf {
    workspace_root().join("target/sing-box/sing-box")
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Runs the build script once per test binary: image and client binary.
fn prepare() -> &'static Result<(), String> {
    static READY: OnceLock<Result<(), String>> = OnceLock::new();
    READY.get_or_init(|| {
        let script = workspace_root().join("ops/images/build-sing-box.sh");
        let out =
            Command::new("bash").arg(&script).arg(IMAGE).output().map_err(|e| format!("{}: {e}", script.display()))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("{} failed: {}", script.display(), String::from_utf8_lossy(&out.stderr).trim()))
        }
    })
}

/// True when Docker and the engine image are usable. Under CI=true a missing
/// daemon or image fails the test; elsewhere the test is skipped, loudly.
pub fn docker_ready() -> bool {
    match prepare() {
        Ok(()) => true,
        Err(e) if in_ci() => panic!("Docker tests need Docker and the engine image under CI: {e}"),
        Err(e) => {
            eprintln!("\n!!! SKIPPING a Docker test: {e}\n!!! (under CI=true this is a failure)\n");
            false
        }
    }
}

/// True when the sing-box binary is there (the script extracts it before it
/// needs Docker). Under CI=true its absence fails the test.
pub fn sing_box_ready() -> bool {
    let _ = prepare();
    let bin = sing_box_bin();
    match bin.exists() {
        true => true,
        false if in_ci() => panic!("{} missing: ops/images/build-sing-box.sh did not extract it", bin.display()),
        false => {
            eprintln!("\n!!! SKIPPING: {} missing (run ops/images/build-sing-box.sh)\n", bin.display());
            false
        }
    }
}

/// A port free on 0.0.0.0 for TCP and UDP right now, claimed for this test
/// process (see `vpn_test_ports`), from 9000-9999: below the ephemeral
/// range, whose ports outgoing connections take, and apart from the cluster
/// tests' ranges (`cluster_tests::net`), which run beside these.
pub fn free_port() -> u16 {
    vpn_test_ports::claim(9_000..10_000, vpn_test_ports::free_everywhere)
        .unwrap_or_else(|| panic!("no free port in 9000-9999"))
}

/// Polls `check` until it yields a value or `timeout` passes.
pub async fn wait_for<T>(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A data-plane node's runtime: its own id (so parallel tests never share
/// containers), config dir, desired-state channel and reconciler.
pub struct Node {
    pub id: u64,
    pub dir: tempfile::TempDir,
    pub desired: watch::Sender<Option<DesiredState>>,
    pub shutdown: watch::Sender<bool>,
    pub handle: Option<ReconcilerHandle>,
    pub resync: Duration,
    /// `--nftables` of the reconciler (re)started next.
    pub nftables: NftablesUse,
    generation: u64,
}

impl Node {
    /// A self-signed certificate for `vpn.test` in the node's dir: the files
    /// an inbound serves, and the certificate path a client trusts.
    pub fn self_signed_tls(&self) -> (TlsFiles, PathBuf) {
        let files = vpn_runtime::tls::write_self_signed(&self.dir.path().join("tls"), "vpn.test").expect("certificate");
        let cert = files.cert_path.clone();
        (files, cert)
    }

    pub fn config(&self) -> RuntimeConfig {
        let mut config = RuntimeConfig::new(self.id, IMAGE, self.dir.path().join("engines"));
        config.resync = self.resync;
        config.nftables = self.nftables;
        config
    }

    /// A node whose reconciler is running (with no desired state yet).
    pub async fn start(resync: Duration) -> Node {
        let mut node = Node::unstarted(resync);
        node.restart().await;
        node
    }

    pub fn unstarted(resync: Duration) -> Node {
        let (desired, _) = watch::channel(None);
        let (shutdown, _) = watch::channel(false);
        Node {
            id: 1_000_000 + u64::from(rand::random::<u32>()),
            dir: tempfile::tempdir().expect("tempdir"),
            desired,
            shutdown,
            handle: None,
            resync,
            nftables: NftablesUse::Auto,
            generation: 0,
        }
    }

    /// Starts a (new) reconciler on the same id, dir and desired state.
    pub async fn restart(&mut self) {
        let _ = self.shutdown.send_replace(false);
        let handle = Reconciler::start(self.config(), self.desired.subscribe(), self.shutdown.subscribe())
            .await
            .expect("reconciler starts");
        self.handle = Some(handle);
    }

    /// Signals shutdown and waits for the loop to end (what vpnd does on exit).
    pub async fn stop(&mut self) {
        self.shutdown.send_replace(true);
        if let Some(handle) = self.handle.take() {
            tokio::time::timeout(Duration::from_secs(10), handle.stopped()).await.expect("loop stops within 10 s");
        }
    }

    pub fn handle(&self) -> &ReconcilerHandle {
        self.handle.as_ref().expect("reconciler running")
    }

    /// Publishes a desired state; returns its generation.
    pub fn set(&mut self, inbounds: Vec<InboundSpec>, users: Vec<EngineUser>) -> u64 {
        self.generation += 1;
        let state = DesiredState { generation: self.generation, node_id: self.id, inbounds, users };
        self.desired.send_replace(Some(state));
        self.generation
    }

    pub async fn wait_applied(&self, generation: u64) -> ApplyStatus {
        let mut status = self.handle().status.clone();
        let waited = tokio::time::timeout(Duration::from_secs(60), async {
            status.wait_for(|s| s.applied_generation >= generation).await.map(|s| s.clone())
        });
        match waited.await {
            Ok(Ok(s)) => s,
            _ => panic!("generation {generation} not applied: {:?}", self.handle().status.borrow()),
        }
    }

    pub async fn wait_error(&self) -> String {
        let mut status = self.handle().status.clone();
        let waited = tokio::time::timeout(Duration::from_secs(60), async {
            status.wait_for(|s| s.last_error.is_some()).await.map(|s| s.last_error.clone().unwrap_or_default())
        });
        match waited.await {
            Ok(Ok(error)) => error,
            _ => panic!("no error reported: {:?}", self.handle().status.borrow()),
        }
    }

    /// This node's containers as `(id, name, running)`, from the docker CLI (independent of the crate).
    pub fn containers(&self) -> Vec<(String, String, bool)> {
        let out = Command::new("docker")
            .args(["ps", "-a", "--no-trunc", "--format", "{{.ID}} {{.Names}} {{.State}}"])
            .args(["--filter", &format!("label=vpn.owner-node={}", self.id)])
            .output()
            .expect("docker ps");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let mut parts = l.split_whitespace();
                Some((parts.next()?.to_string(), parts.next()?.to_string(), parts.next()? == "running"))
            })
            .collect()
    }

    /// The id of this node's running container named for `protocol`: its
    /// one engine, or its newest generation.
    pub fn container_id(&self, protocol: &str) -> Option<String> {
        let name = format!("vpn-{}-{protocol}", self.id);
        let newest = self.generations(protocol).into_iter().rfind(|(_, _, running)| *running);
        let single = self.containers().into_iter().find(|(_, n, running)| *n == name && *running);
        single.map(|(id, _, _)| id).or(newest.map(|(_, id, _)| id))
    }

    /// This node's generations of `protocol` as `(generation, id, running)`, oldest first.
    pub fn generations(&self, protocol: &str) -> Vec<(u64, String, bool)> {
        let prefix = format!("vpn-{}-{protocol}-g", self.id);
        let mut out: Vec<(u64, String, bool)> = self
            .containers()
            .into_iter()
            .filter_map(|(id, name, running)| Some((name.strip_prefix(&prefix)?.parse().ok()?, id, running)))
            .collect();
        out.sort();
        out
    }

    /// The public ports this node's nftables table redirects, to the engine ports.
    pub fn routes(&self) -> Vec<(u16, u16)> {
        let table = format!("vpnd_{}", self.id);
        let out = Command::new("nft").args(["list", "chain", "inet", &table, "prerouting"]).output().expect("nft");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let public = l.split("dport ").nth(1)?.split_whitespace().next()?.parse().ok()?;
                let engine = l.split("redirect to :").nth(1)?.trim().parse().ok()?;
                Some((public, engine))
            })
            .collect()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
        let ids: Vec<String> = self.containers().into_iter().map(|(id, _, _)| id).collect();
        if !ids.is_empty() {
            let _ = Command::new("docker").args(["rm", "-f"]).args(&ids).output();
        }
        let _ = Command::new("nft").args(["delete", "table", "inet", &format!("vpnd_{}", self.id)]).output();
    }
}

/// Another host, as far as this one's firewall can tell: a network namespace
/// of the test's own with a veth link to this host (addresses in
/// 10.251.0.0/16, picked per process). Removed (with its link) on drop.
pub struct OtherHost {
    ns: String,
    /// This host's address on the link, as the other host reaches it.
    pub host_ip: Ipv4Addr,
}

impl OtherHost {
    pub fn create() -> OtherHost {
        let pid = std::process::id();
        let ns = format!("vpn-peer-{pid}");
        let host_if = format!("vp{pid}h");
        let net = ((pid % 64) * 4) as u8;
        let host_ip = Ipv4Addr::new(10, 251, (pid / 64 % 250) as u8, net + 1);
        let peer_ip = Ipv4Addr::new(10, 251, (pid / 64 % 250) as u8, net + 2);
        let run = |args: &[&str]| {
            let out = Command::new("ip").args(args).output().expect("the ip command (iproute2)");
            assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        };
        let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        run(&["netns", "add", &ns]);
        let peer = OtherHost { ns: ns.clone(), host_ip };
        run(&["link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", &ns]);
        run(&["addr", "add", &format!("{host_ip}/30"), "dev", &host_if]);
        run(&["link", "set", &host_if, "up"]);
        run(&["-n", &ns, "addr", "add", &format!("{peer_ip}/30"), "dev", "eth0"]);
        run(&["-n", &ns, "link", "set", "eth0", "up"]);
        run(&["-n", &ns, "link", "set", "lo", "up"]);
        peer
    }

    /// Whether a TCP connection from the other host to this one's `port` is accepted within `timeout`.
    pub fn connects(&self, port: u16, timeout: Duration) -> bool {
        let script = format!("exec 3<>/dev/tcp/{}/{port}", self.host_ip);
        let secs = timeout.as_secs().max(1).to_string();
        Command::new("ip")
            .args(["netns", "exec", &self.ns, "timeout", &secs, "bash", "-c", &script])
            .output()
            .is_ok_and(|o| o.status.success())
    }
}

impl Drop for OtherHost {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
    }
}
