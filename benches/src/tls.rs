//! Certificates for a measured cluster under mutual TLS (`loadgen throughput
//! --tls`): a throwaway CA made with `vpn-pki`, one certificate per member
//! naming [`HOST`] (the address members and clients dial), and a client
//! certificate for the load generator. The same material serves `vpnd` and
//! etcd: `vpn-pki` issues node certificates with both the serverAuth and the
//! clientAuth EKU and IP SANs, which is what etcd's peer TLS wants.
//! The CA stays in memory for the run, so `loadgen fleet` can issue each of
//! its simulated data-plane agents an identity of its own
//! ([`TestPki::dataplane_identity`]) and `throughput --auth` a client
//! certificate that is not `admin` ([`TestPki::client_identity`]), never
//! written to disk.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};
use vpn_pki::files::{private_dir, write_private, write_public};
use vpn_pki::{Ca, Role};

/// The host every member listens on and is dialled at.
pub const HOST: &str = "127.0.0.1";

/// Long enough for any run, short enough that a leaked key is soon worthless.
const LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// One member's certificate and key files.
#[derive(Clone, Debug)]
pub struct MemberFiles {
    pub cert: PathBuf,
    /// Mode 0600.
    pub key: PathBuf,
}

/// A CA, `n` member certificates and a client certificate, written under one
/// private directory (0700; keys 0600). Removed with the directory it is in.
pub struct TestPki {
    pub ca_file: PathBuf,
    pub members: Vec<MemberFiles>,
    client: ClientTlsConfig,
    ca: Ca,
}

/// What a simulated data-plane node presents: its own certificate (role
/// dataplane, URI SAN `urn:vpn:node:<id>:dataplane`), trusting this CA only.
pub struct DataplaneIdentity {
    pub tls: ClientTlsConfig,
    /// When the certificate expires (ms since the epoch), as `Register` reports it.
    pub not_after_ms: i64,
}

impl TestPki {
    /// Makes the CA named `name` and writes everything under `dir` (created
    /// here; it must not hold these files already). Member `i` gets node id `i + 1`.
    pub fn create(dir: &Path, name: &str, members: usize) -> Result<Self> {
        let ca = Ca::generate(name).context("make a CA")?;
        private_dir(dir)?;
        let ca_file = dir.join("ca.crt");
        write_public(&ca_file, ca.cert_pem().as_bytes())?;
        let hosts = [HOST.to_owned()];
        let mut files = Vec::with_capacity(members);
        for i in 0..members {
            let id = i as u64 + 1;
            let issued = ca.issue_node(id, Role::ControlPlane, &hosts, LIFETIME).context("issue a node certificate")?;
            let cert = dir.join(format!("node{id}.crt"));
            let key = dir.join(format!("node{id}.key"));
            write_public(&cert, issued.cert_pem.as_bytes())?;
            write_private(&key, issued.key_pem.as_bytes())?;
            files.push(MemberFiles { cert, key });
        }
        let admin = ca.issue_client("admin", LIFETIME).context("issue the client certificate")?;
        let client = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca.cert_pem()))
            .identity(Identity::from_pem(&admin.cert_pem, &admin.key_pem));
        Ok(Self { ca_file, members: files, client, ca })
    }

    /// Issues data-plane node `id` a certificate, in memory only.
    pub fn dataplane_identity(&self, id: u64) -> Result<DataplaneIdentity> {
        let issued = self
            .ca
            .issue_node(id, Role::DataPlane, &[HOST.to_owned()], LIFETIME)
            .with_context(|| format!("issue data-plane node {id} a certificate"))?;
        let tls = self.anonymous_tls().identity(Identity::from_pem(&issued.cert_pem, &issued.key_pem));
        // Within a second or so of the certificate's own notAfter: enough for a report.
        let not_after = SystemTime::now().duration_since(UNIX_EPOCH)? + LIFETIME;
        Ok(DataplaneIdentity { tls, not_after_ms: i64::try_from(not_after.as_millis())? })
    }

    /// What a client presents and trusts: the admin certificate, this CA only.
    pub fn client_tls(&self) -> ClientTlsConfig {
        self.client.clone()
    }

    /// A client certificate for `name`, in memory only, trusting this CA only.
    pub fn client_identity(&self, name: &str) -> Result<ClientTlsConfig> {
        let issued =
            self.ca.issue_client(name, LIFETIME).with_context(|| format!("issue client {name} a certificate"))?;
        Ok(self.anonymous_tls().identity(Identity::from_pem(&issued.cert_pem, &issued.key_pem)))
    }

    /// Trusts this CA and presents no certificate: a client that proves who
    /// it is another way (an API token).
    pub fn anonymous_tls(&self) -> ClientTlsConfig {
        ClientTlsConfig::new().ca_certificate(Certificate::from_pem(self.ca.cert_pem()))
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).expect("stat").permissions().mode() & 0o777
    }

    #[test]
    fn keys_are_private_and_members_are_control_plane_nodes() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("pki");
        let pki = TestPki::create(&dir, "test", 3).expect("pki");
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(pki.members.len(), 3);
        // That they name HOST is checked by every TLS run: clients verify it.
        for (i, m) in pki.members.iter().enumerate() {
            assert_eq!(mode(&m.key), 0o600, "{}", m.key.display());
            let (_, der) = vpn_pki::files::read_pem(&m.cert, "CERTIFICATE").expect("cert");
            let info = vpn_pki::CertInfo::from_der(&der).expect("parse");
            assert_eq!(info.principal, vpn_pki::Principal::Node { id: i as u64 + 1, role: Role::ControlPlane });
        }
        let agent = pki.dataplane_identity(1001).expect("data-plane identity");
        assert!(agent.not_after_ms > 0);
        pki.client_identity("loader").expect("a client identity");
        assert!(pki.client_identity("Not A Name").is_err(), "client names are checked");
        assert_eq!(std::fs::read_dir(&dir).expect("dir").count(), 7, "nothing of the agent's or client's is written");
    }
}
