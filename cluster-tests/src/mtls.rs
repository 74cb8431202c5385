//! Clusters on certificates from the real `vpnctl pki`, for the tests of
//! mutual TLS and of who may do what.

use std::path::{Path, PathBuf};

use std::time::Duration;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic::{Code, Request};

use crate::cli::vpnctl;
use crate::cluster::tls_channel;
use crate::Cluster;

/// `msg` with `token` as its bearer credential (an API token or a login session).
pub fn bearer<T>(msg: T, token: &str) -> Request<T> {
    let mut req = Request::new(msg);
    req.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("ascii"));
    req.set_timeout(Duration::from_secs(10));
    req
}

/// A TLS channel to node `id` that presents no certificate: a bearer token is the credential.
pub fn anonymous(cluster: &Cluster, pki: &Pki, id: u64) -> Channel {
    tls_channel(cluster.node(id).grpc, ClientTlsConfig::new().ca_certificate(pki.ca()))
}

/// Certificates made with the real `vpnctl pki`, in `dir`.
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    pub fn init(root: &Path) -> Self {
        let dir = root.join("ca");
        let run = vpnctl("127.0.0.1:1", &["pki", "init", "--out", dir.to_str().expect("utf8")]);
        assert_eq!(run.code, 0, "pki init: {}", run.stderr);
        Self { dir }
    }

    /// `pki node-cert` for node `id` in `role` at `host`; the directory it wrote.
    pub fn node(&self, id: u64, role: &str, host: &str) -> PathBuf {
        let out = self.dir.with_file_name(format!("node-{id}-{role}"));
        let (ca, out_s, id_s) = (self.dir.to_str().expect("utf8"), out.to_str().expect("utf8"), id.to_string());
        let args = ["pki", "node-cert", "--ca", ca, "--id", &id_s, "--host", host, "--role", role, "--out", out_s];
        let run = vpnctl("127.0.0.1:1", &args);
        assert_eq!(run.code, 0, "pki node-cert: {}", run.stderr);
        out
    }

    pub fn ca(&self) -> Certificate {
        Certificate::from_pem(std::fs::read(self.dir.join("ca.crt")).expect("ca.crt"))
    }

    /// The TLS settings of a client presenting `<dir>/<name>.crt`.
    pub fn client(&self, dir: &Path, name: &str) -> ClientTlsConfig {
        let read = |ext: &str| std::fs::read(dir.join(format!("{name}.{ext}"))).expect("certificate file");
        ClientTlsConfig::new().ca_certificate(self.ca()).identity(Identity::from_pem(read("crt"), read("key")))
    }

    pub fn flags(&self, node_dir: &Path) -> Vec<String> {
        let path = |p: PathBuf| p.display().to_string();
        vec![
            "--trusted-ca-file".into(),
            path(self.dir.join("ca.crt")),
            "--cert-file".into(),
            path(node_dir.join("node.crt")),
            "--key-file".into(),
            path(node_dir.join("node.key")),
        ]
    }
}

/// Three voters on `vpnctl pki` certificates, started, with a leader agreed;
/// with `signs`, each holds the CA key (it signs for nodes joining by token);
/// `extra` flags go to every voter. The test's own clients use `admin`.
pub async fn mtls_cluster(signs: bool, extra: &[&str]) -> (Cluster, Pki, u64) {
    let mut cluster = Cluster::new(3, &[]);
    let pki = Pki::init(cluster.root.path());
    let host = cluster.ip.to_string();
    for id in 1..=3 {
        let mut flags = pki.flags(&pki.node(id, "controlplane", &host));
        if signs {
            flags.extend(["--ca-key-file".into(), pki.dir.join("ca.key").display().to_string()]);
        }
        flags.extend(extra.iter().map(|f| (*f).to_owned()));
        cluster.node_mut(id).extra = flags;
    }
    cluster.client_tls = Some(pki.client(&pki.dir, "admin"));
    for p in cluster.nodes.values_mut() {
        p.start();
    }
    let leader = cluster.wait_leader().await;
    (cluster, pki, leader)
}

/// The code of a call's result (OK for an answer).
pub fn code_of<T>(result: Result<T, tonic::Status>) -> Code {
    match result {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}
