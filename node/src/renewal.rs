//! Node certificates that live in `<data-dir>/pki` (made by `--dev`, or got
//! with a join token) renew themselves at 2/3 of their validity, with a new
//! key each time: the node asks over its authenticated channel
//! (`Cluster/RenewCertificate`, answered by a node holding the CA key), or
//! signs itself when it holds the CA key. The new certificate is written,
//! served to new connections and presented to peers at once, with no
//! restart. Files given with `--cert-file` are the operator's to renew:
//! [`Reload`] takes them in when they are replaced, with the same checks as
//! at start, also with no restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use vpn_pki::{CertInfo, Principal};
use vpn_proto::v1::cluster_client::ClusterClient;
use vpn_proto::v1::RenewCertificateRequest;

use crate::peers::Peers;
use crate::tls::{Files, Material, ServerTls};

/// Wait after a failed attempt, doubled up to the longest.
const FIRST_RETRY: Duration = Duration::from_secs(2);
const LONGEST_RETRY: Duration = Duration::from_secs(60);
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The current control-plane voters' addresses, asked first.
pub type Voters = Box<dyn Fn() -> Vec<String> + Send + Sync>;

/// Where a renewing node finds its files and whom it asks.
pub struct Renewal {
    pub id: u64,
    pub peers: Arc<Peers>,
    /// The gRPC port's acceptor, which serves the new certificate at once;
    /// `None` on a data-plane-only node (it serves no gRPC).
    pub server: Option<Arc<ServerTls>>,
    /// The CA key, when this node holds it (it then signs for itself), and
    /// the lifetime of what it signs.
    pub signer: Option<(Arc<vpn_pki::Ca>, Duration)>,
    pub voters: Voters,
    /// Told each new certificate's expiry (seconds since the epoch).
    pub renewed: watch::Sender<Option<i64>>,
    pub data_dir: PathBuf,
    /// The names the certificate is for.
    pub hosts: Vec<String>,
    /// Members to ask besides the current membership (`--join` seeds).
    pub seeds: Vec<String>,
}

impl Renewal {
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let dir = self.data_dir.join("pki");
        let mut retry = FIRST_RETRY;
        loop {
            let wait = match load(&dir, self.id) {
                Ok(current) => until_due(&current.info),
                Err(e) => {
                    tracing::warn!("certificate renewal: cannot read {}: {e}", dir.display());
                    LONGEST_RETRY
                }
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = stop.changed() => return,
            }
            match self.renew(&dir).await {
                Ok(material) => {
                    retry = FIRST_RETRY;
                    match present(&material, self.server.as_deref(), &self.peers, &self.renewed) {
                        Ok(()) => {
                            tracing::info!(not_after = material.info.not_after, "renewed this node's certificate")
                        }
                        Err(e) => tracing::error!("certificate renewal: the new certificate cannot be served: {e}"),
                    }
                }
                Err(e) => {
                    tracing::warn!("certificate renewal failed: {e}; retrying in {retry:?}");
                    tokio::select! {
                        () = tokio::time::sleep(retry) => {}
                        _ = stop.changed() => return,
                    }
                    retry = (retry * 2).min(LONGEST_RETRY);
                }
            }
        }
    }

    async fn renew(&self, dir: &Path) -> Result<Material, String> {
        let current = load(dir, self.id)?;
        let Principal::Node { id, role } = current.info.principal else {
            return Err("this node's certificate names no node".into());
        };
        let (key_pem, csr_pem) = vpn_pki::make_csr(&self.hosts).map_err(|e| e.to_string())?;
        let cert_pem = match &self.signer {
            Some((ca, lifetime)) => ca.sign_node_csr(&csr_pem, id, role, *lifetime).map_err(|e| e.to_string())?,
            None => self.ask(&csr_pem).await?,
        };
        replace_files(dir, &key_pem, &cert_pem)?;
        load(dir, id)
    }

    /// A signature from the first member (or seed) that gives one.
    async fn ask(&self, csr_pem: &str) -> Result<String, String> {
        let mut tried = Vec::new();
        for addr in (self.voters)().iter().chain(&self.seeds) {
            let channel = match self.peers.channel(addr) {
                Ok(channel) => channel,
                Err(e) => {
                    tried.push(format!("{addr}: {e}"));
                    continue;
                }
            };
            let mut req = tonic::Request::new(RenewCertificateRequest { csr_pem: csr_pem.to_owned() });
            req.set_timeout(CALL_TIMEOUT);
            match ClusterClient::new(channel).renew_certificate(req).await {
                Ok(reply) => return Ok(reply.into_inner().cert_pem),
                Err(status) => tried.push(format!("{addr}: {}", status.message())),
            }
        }
        Err(format!("no member signed: {}", tried.join("; ")))
    }
}

/// Serves `material` to new connections and presents it to peers from now
/// on, and tells whoever registers the certificate's expiry.
fn present(
    material: &Material,
    server: Option<&ServerTls>,
    peers: &Peers,
    renewed: &watch::Sender<Option<i64>>,
) -> Result<(), String> {
    if let Some(server) = server {
        server.replace(material).map_err(|e| e.to_string())?;
    }
    peers.set_tls(material.client());
    renewed.send_replace(Some(material.info.not_after));
    Ok(())
}

/// How often the operator's files are looked at.
const RELOAD_CHECK: Duration = Duration::from_secs(5);

/// Takes in the operator's certificate files (`--trusted-ca-file`,
/// `--cert-file`, `--key-file`) when they are replaced: checked as at start
/// (issued by the CA, naming this node, matching key, key not readable by
/// others), then served and presented at once. A replacement that fails a
/// check is logged, naming the file and why, and the current one stays.
pub struct Reload {
    pub id: u64,
    pub files: Files,
    /// The CA trusted since start (the server's check of clients keeps it).
    pub ca_digest: String,
    pub peers: Arc<Peers>,
    /// `None` on a data-plane-only node (it serves no gRPC).
    pub server: Option<Arc<ServerTls>>,
    pub renewed: watch::Sender<Option<i64>>,
}

impl Reload {
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut seen = self.files.stamp();
        loop {
            tokio::select! {
                () = tokio::time::sleep(RELOAD_CHECK) => {}
                _ = stop.changed() => return,
            }
            let now = self.files.stamp();
            if now == seen {
                continue;
            }
            // Files written one after the other: give the writer a moment, then read all three.
            tokio::time::sleep(Duration::from_millis(200)).await;
            seen = self.files.stamp();
            match self.files.load(self.id) {
                Ok(material) if material.ca_digest() != self.ca_digest => tracing::error!(
                    "{} now holds another CA: changing the CA needs a restart (CA rotation is not supported yet); \
                     keeping the current certificate",
                    self.files.ca.display()
                ),
                Ok(material) => match present(&material, self.server.as_deref(), &self.peers, &self.renewed) {
                    Ok(()) => tracing::info!(
                        not_after = material.info.not_after,
                        "reloaded this node's certificate from {}",
                        self.files.cert.display()
                    ),
                    Err(e) => {
                        tracing::error!("the replaced certificate cannot be served: {e}; keeping the current one")
                    }
                },
                Err(e) => tracing::error!("the replaced certificate files are refused: {e}; keeping the current ones"),
            }
        }
    }
}

fn load(dir: &Path, id: u64) -> Result<Material, String> {
    Material::load_dir(dir, id).map_err(|e| e.to_string())
}

/// How long until `info` is due for renewal: 2/3 of its validity.
fn until_due(info: &CertInfo) -> Duration {
    let validity = (info.not_after - info.not_before).max(0);
    let due = info.not_before + validity * 2 / 3;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    Duration::from_secs(u64::try_from(due - now).unwrap_or(0))
}

/// Puts the new key and certificate in place of the old ones, each by an
/// atomic rename (the key first). A crash between the two renames leaves a
/// key and a certificate that do not match: vpnd then refuses to start and
/// names the files, and `<file>.new` holds the certificate to move in.
fn replace_files(dir: &Path, key_pem: &str, cert_pem: &str) -> Result<(), String> {
    let fail = |e: vpn_pki::PkiError| e.to_string();
    let (key_new, cert_new) = (dir.join("node.key.new"), dir.join("node.crt.new"));
    for stale in [&key_new, &cert_new] {
        let _ = std::fs::remove_file(stale);
    }
    vpn_pki::files::write_private(&key_new, key_pem.as_bytes()).map_err(fail)?;
    vpn_pki::files::write_private(&cert_new, cert_pem.as_bytes()).map_err(fail)?;
    std::fs::rename(&key_new, dir.join("node.key")).map_err(|e| format!("node.key: {e}"))?;
    std::fs::rename(&cert_new, dir.join("node.crt")).map_err(|e| format!("node.crt: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_due_at_two_thirds_of_the_validity() {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let principal = Principal::Node { id: 1, role: vpn_pki::Role::ControlPlane };
        let fresh = CertInfo { principal: principal.clone(), not_before: now, not_after: now + 90 };
        assert!((59..=60).contains(&until_due(&fresh).as_secs()), "{:?}", until_due(&fresh));
        let old = CertInfo { principal, not_before: now - 80, not_after: now + 10 };
        assert_eq!(until_due(&old), Duration::ZERO, "past due: at once");
    }
}
