//! Transport security of the gRPC port: mutual TLS with certificates of the
//! cluster's CA (`vpnctl pki`), or plaintext only when `--insecure` says so.
//!
//! The files are read and checked before anything starts: the certificate
//! must come from the trusted CA, name this node's `--id`, and match its key;
//! the key must be readable by its owner only. Each problem names the flag.
//! They are parsed once, by what TLS itself runs (rustls, webpki, ring): the
//! key loaded for the check is the one the server signs with.
//! `--dev` makes its own CA and certificates in `<data-dir>/pki` instead.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use std::sync::{Arc, PoisonError, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};
use vpn_pki::files::{private_dir, read_pem, write_private};
use vpn_pki::{CertInfo, Principal, Role};

use crate::error::Error;

/// How the gRPC port is secured.
#[derive(Clone, Debug)]
pub enum Security {
    /// `--insecure`: plaintext, and any caller may do anything.
    Insecure,
    /// Mutual TLS with these (checked) files, loaded from `Files`.
    Mtls(Material, Files),
    /// `--dev`: a CA and certificates made in the data dir on first start.
    Dev,
    /// `--join-token`: a certificate fetched by CSR on first start, kept in
    /// the data dir (see `join`).
    JoinToken(vpn_pki::join_token::JoinToken),
}

/// The operator's certificate files (`--trusted-ca-file`, `--cert-file`,
/// `--key-file`): vpnd reloads them when they are replaced.
#[derive(Clone, Debug)]
pub struct Files {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Files {
    /// The files, checked as at start.
    pub fn load(&self, id: u64) -> Result<Material, Error> {
        Material::load(&self.ca, &self.cert, &self.key, id)
    }

    /// The files' modification times and sizes: a replacement changes them.
    pub fn stamp(&self) -> Vec<Option<(std::time::SystemTime, u64)>> {
        [&self.ca, &self.cert, &self.key]
            .iter()
            .map(|path| std::fs::metadata(path).ok().and_then(|m| Some((m.modified().ok()?, m.len()))))
            .collect()
    }
}

/// This node's certificate, its key and the CA it trusts, as PEM.
#[derive(Clone)]
pub struct Material {
    pub ca_pem: String,
    pub cert_pem: String,
    key_pem: String,
    /// The trusted CA's certificate (the first in its file), DER.
    ca_der: Vec<u8>,
    /// The certificate chain and the loaded key, as the server presents them.
    certified: Arc<CertifiedKey>,
    /// What this node's own certificate names, and when it expires.
    pub info: CertInfo,
}

impl std::fmt::Debug for Material {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Material").field("info", &self.info).finish_non_exhaustive()
    }
}

impl Material {
    /// Reads and checks `--trusted-ca-file`, `--cert-file` and `--key-file` for node `id`.
    pub fn load(ca: &Path, cert: &Path, key: &Path, id: u64) -> Result<Self, Error> {
        let flag = |flag: &'static str, e: vpn_pki::PkiError| Error::InvalidFlag { flag, detail: e.to_string() };
        let (ca_pem, ca_der) = read_pem(ca, "CERTIFICATE").map_err(|e| flag("--trusted-ca-file", e))?;
        let (cert_pem, cert_der) = read_pem(cert, "CERTIFICATE").map_err(|e| flag("--cert-file", e))?;
        refuse_shared_key(key)?;
        let (key_pem, _) = read_pem(key, "PRIVATE KEY").map_err(|e| flag("--key-file", e))?;
        let info = vpn_pki::verify_issued(&ca_der, &cert_der).map_err(|e| Error::InvalidFlag {
            flag: "--cert-file",
            detail: format!("{}: {e} (the CA in {})", cert.display(), ca.display()),
        })?;
        match info.principal {
            Principal::Node { id: named, .. } if named == id => {}
            ref other => {
                return Err(Error::InvalidFlag {
                    flag: "--cert-file",
                    detail: format!(
                        "{} names {other}, but this is node {id}: issue one with `vpnctl pki node-cert --id {id}`",
                        cert.display()
                    ),
                })
            }
        }
        let certified = certified_key(&cert_pem, &ca_pem, &key_pem)?;
        match certified.keys_match() {
            Ok(()) => {}
            Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
                return Err(Error::InvalidFlag {
                    flag: "--key-file",
                    detail: format!("{} is not the key of {}", key.display(), cert.display()),
                })
            }
            Err(e) => return Err(Error::InvalidFlag { flag: "--key-file", detail: unusable_key(e) }),
        }
        Ok(Self { ca_pem, cert_pem, key_pem, ca_der, certified: Arc::new(certified), info })
    }

    /// The client side, for calls to other nodes: presents this node's certificate.
    pub fn client(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
    }

    /// `--dev`'s material: made in `<data_dir>/pki` on first start (a CA, this
    /// node's certificate for `hosts`, and an `admin` client certificate for
    /// vpnctl), read back on later starts.
    pub fn dev(data_dir: &Path, id: u64, hosts: &[String]) -> Result<Self, Error> {
        let dir = data_dir.join("pki");
        let fail = |e: vpn_pki::PkiError| Error::DataDir { path: dir.clone(), detail: e.to_string() };
        if !dir.join("node.crt").exists() {
            private_dir(&dir).map_err(fail)?;
            let ca = vpn_pki::Ca::generate("vpn dev CA").map_err(fail)?;
            let node = ca.issue_node(id, Role::ControlPlane, hosts, vpn_pki::ca::NODE_LIFETIME).map_err(fail)?;
            let admin = ca.issue_client("admin", vpn_pki::ca::CLIENT_LIFETIME).map_err(fail)?;
            write_private(&dir.join("ca.key"), ca.key_pem().as_bytes()).map_err(fail)?;
            write_private(&dir.join("ca.crt"), ca.cert_pem().as_bytes()).map_err(fail)?;
            write_private(&dir.join("admin.key"), admin.key_pem.as_bytes()).map_err(fail)?;
            write_private(&dir.join("admin.crt"), admin.cert_pem.as_bytes()).map_err(fail)?;
            write_private(&dir.join("node.key"), node.key_pem.as_bytes()).map_err(fail)?;
            write_private(&dir.join("node.crt"), node.cert_pem.as_bytes()).map_err(fail)?;
        }
        Self::load_dir(&dir, id)
    }

    /// The material a node keeps in its data dir (`<dir>` = `<data-dir>/pki`:
    /// `ca.crt`, `node.crt`, `node.key`), made by `--dev` or got with a join token.
    pub fn load_dir(dir: &Path, id: u64) -> Result<Self, Error> {
        Self::load(&dir.join("ca.crt"), &dir.join("node.crt"), &dir.join("node.key"), id)
    }

    /// SHA-256 of the trusted CA's certificate: what join tokens pin.
    pub fn ca_digest(&self) -> String {
        vpn_pki::digest(&self.ca_der)
    }
}

/// This node's certificate (with the CA's, so a client sees the whole chain,
/// which a joining node pins by digest) and its key, loaded for rustls.
fn certified_key(cert_pem: &str, ca_pem: &str, key_pem: &str) -> Result<CertifiedKey, Error> {
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| Error::InvalidFlag { flag: "--key-file", detail: unusable_key(e) })?;
    // PKCS#8, as `vpnctl pki` and `--dev` write keys (and as vpnd has always required).
    if !matches!(key, PrivateKeyDer::Pkcs8(_)) {
        return Err(Error::InvalidFlag { flag: "--key-file", detail: unusable_key("not PKCS#8 (BEGIN PRIVATE KEY)") });
    }
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| Error::InvalidFlag { flag: "--key-file", detail: unusable_key(e) })?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .chain(CertificateDer::pem_slice_iter(ca_pem.as_bytes()))
        .collect::<Result<_, _>>()
        .map_err(|e| Error::InvalidFlag { flag: "--cert-file", detail: format!("TLS cannot use it: {e}") })?;
    Ok(CertifiedKey::new(chain, signing))
}

fn unusable_key(e: impl std::fmt::Display) -> String {
    format!("key: not a usable private key: {e}")
}

/// The gRPC port's server side of mutual TLS. Client certificates are
/// checked against the CA; a client without one still gets through the
/// handshake (health probes need none, a joining node has none yet, and
/// [`crate::auth`] refuses it everything else). The node's own certificate
/// can be replaced while it runs ([`ServerTls::replace`]): renewal.
pub struct ServerTls {
    config: Arc<rustls::ServerConfig>,
    current: Arc<CurrentCert>,
}

#[derive(Debug)]
struct CurrentCert(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(PoisonError::into_inner).clone())
    }
}

impl ServerTls {
    pub fn new(material: &Material) -> Result<Self, Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(material.ca_pem.as_bytes()) {
            let ca = ca.map_err(|e| Error::InvalidFlag { flag: "--trusted-ca-file", detail: e.to_string() })?;
            roots.add(ca).map_err(|e| Error::InvalidFlag { flag: "--trusted-ca-file", detail: e.to_string() })?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .allow_unauthenticated()
            .build()
            .map_err(|e| Error::InvalidFlag { flag: "--trusted-ca-file", detail: e.to_string() })?;
        let current = Arc::new(CurrentCert(RwLock::new(material.certified.clone())));
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| Error::Internal(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(current.clone());
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Self { config: Arc::new(config), current })
    }

    /// Serves `material`'s certificate to every new connection from now on.
    pub fn replace(&self, material: &Material) -> Result<(), Error> {
        *self.current.0.write().unwrap_or_else(PoisonError::into_inner) = material.certified.clone();
        Ok(())
    }

    /// TLS connections accepted on `listener`, each handshake in a task of
    /// its own (a slow client holds up no one), bounded in time.
    pub fn incoming(
        &self,
        listener: tokio::net::TcpListener,
    ) -> impl futures::Stream<Item = std::io::Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>> {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.config.clone());
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let tcp = match listener.accept().await {
                    Ok((tcp, _)) => tcp,
                    Err(e) => {
                        tracing::warn!("--listen: accept failed: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                // Without TCP_NODELAY small replies wait for delayed ACKs (~40 ms tails).
                let _ = tcp.set_nodelay(true);
                let (acceptor, sender) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
                    if let Ok(Ok(stream)) = handshake {
                        let _ = sender.send(Ok(stream)).await;
                    }
                });
                if tx.is_closed() {
                    return;
                }
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(rx)
    }
}

/// How long a client may take over its TLS handshake.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The HTTP listener's TLS (`--http-tls-cert`, `--http-tls-key`): an
/// operator's certificate for the name clients fetch subscriptions from
/// (e.g. `sub.example.com`), not the cluster CA's. Checked before start.
#[derive(Clone)]
pub struct HttpTls(pub Arc<rustls::ServerConfig>);

impl std::fmt::Debug for HttpTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HttpTls")
    }
}

impl HttpTls {
    pub fn load(cert: &Path, key: &Path) -> Result<Self, Error> {
        let read = |flag: &'static str, path: &Path| {
            std::fs::read(path)
                .map_err(|e| Error::InvalidFlag { flag, detail: format!("{}: cannot be read: {e}", path.display()) })
        };
        let (cert_pem, key_pem) = (read("--http-tls-cert", cert)?, read("--http-tls-key", key)?);
        refuse_shared_key_of("--http-tls-key", key)?;
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(&cert_pem).collect::<Result<_, _>>().map_err(|e| Error::InvalidFlag {
                flag: "--http-tls-cert",
                detail: format!("{}: not PEM certificates: {e}", cert.display()),
            })?;
        if chain.is_empty() {
            let detail = format!("{}: holds no PEM certificate", cert.display());
            return Err(Error::InvalidFlag { flag: "--http-tls-cert", detail });
        }
        let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| Error::InvalidFlag {
            flag: "--http-tls-key",
            detail: format!("{}: not a PEM private key: {e}", key.display()),
        })?;
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Internal(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain, key_der)
            .map_err(|e| Error::InvalidFlag {
                flag: "--http-tls-key",
                detail: format!("{} does not go with {}: {e}", key.display(), cert.display()),
            })?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self(std::sync::Arc::new(config)))
    }
}

/// A private key others can read is a leaked key: refuse to start on it.
fn refuse_shared_key(key: &Path) -> Result<(), Error> {
    refuse_shared_key_of("--key-file", key)
}

/// Refuses to start on a private key file (given with `flag`) others can read.
pub fn refuse_shared_key_of(flag: &'static str, key: &Path) -> Result<(), Error> {
    let mode = std::fs::metadata(key)
        .map_err(|e| Error::InvalidFlag { flag, detail: format!("{}: cannot be read: {e}", key.display()) })?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(Error::InvalidFlag {
            flag,
            detail: format!(
                "{} can be read by other users (mode {:o}): run `chmod 600 {}`",
                key.display(),
                mode & 0o777,
                key.display()
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use vpn_pki::ca::NODE_LIFETIME;

    use super::*;

    struct Files {
        dir: tempfile::TempDir,
    }

    impl Files {
        fn new() -> Self {
            Self { dir: tempfile::tempdir().expect("tempdir") }
        }

        fn write(&self, name: &str, text: &str, mode: u32) -> std::path::PathBuf {
            let path = self.dir.path().join(name);
            std::fs::write(&path, text).expect("write");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
            path
        }
    }

    #[test]
    fn a_node_starts_only_on_its_own_certificate_from_the_trusted_ca_with_a_private_key() {
        let files = Files::new();
        let ca = vpn_pki::Ca::generate("ca").expect("ca");
        let node2 = ca.issue_node(2, Role::ControlPlane, &["127.0.0.1".into()], NODE_LIFETIME).expect("cert");
        let ca_file = files.write("ca.crt", ca.cert_pem(), 0o644);
        let cert = files.write("node.crt", &node2.cert_pem, 0o644);
        let key = files.write("node.key", &node2.key_pem, 0o600);
        let loaded = Material::load(&ca_file, &cert, &key, 2).expect("loads");
        assert_eq!(loaded.info.principal, Principal::Node { id: 2, role: Role::ControlPlane });

        let err = Material::load(&ca_file, &cert, &key, 3).expect_err("another id");
        assert!(err.to_string().starts_with("--cert-file:") && err.to_string().contains("node 2"), "{err}");

        let shared = files.write("shared.key", &node2.key_pem, 0o644);
        let err = Material::load(&ca_file, &cert, &shared, 2).expect_err("mode 0644");
        assert!(err.to_string().starts_with("--key-file:") && err.to_string().contains("chmod 600"), "{err}");

        let other = vpn_pki::Ca::generate("other").expect("ca");
        let other_ca = files.write("other.crt", other.cert_pem(), 0o644);
        let err = Material::load(&other_ca, &cert, &key, 2).expect_err("another CA");
        assert!(err.to_string().contains("not issued by this cluster's CA"), "{err}");

        let garbage = files.write("garbage.crt", "hello", 0o644);
        let err = Material::load(&garbage, &cert, &key, 2).expect_err("not PEM");
        assert!(err.to_string().starts_with("--trusted-ca-file:"), "{err}");

        let node3 = ca.issue_node(2, Role::ControlPlane, &[], NODE_LIFETIME).expect("cert");
        let wrong_key = files.write("wrong.key", &node3.key_pem, 0o600);
        let err = Material::load(&ca_file, &cert, &wrong_key, 2).expect_err("key of another cert");
        assert!(err.to_string().starts_with("--key-file:") && err.to_string().contains("is not the key of"), "{err}");

        let sec1 = files.write("sec1.key", &node2.key_pem.replace("PRIVATE KEY", "EC PRIVATE KEY"), 0o600);
        let err = Material::load(&ca_file, &cert, &sec1, 2).expect_err("not PKCS#8");
        assert!(err.to_string().starts_with("--key-file: key: not a usable private key"), "{err}");
    }

    #[test]
    fn dev_material_is_made_once_and_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = Material::dev(dir.path(), 1, &["127.0.0.1".into()]).expect("made");
        let again = Material::dev(dir.path(), 1, &["127.0.0.1".into()]).expect("read back");
        assert_eq!(first.cert_pem, again.cert_pem);
        let mode =
            |name: &str| std::fs::metadata(dir.path().join("pki").join(name)).expect("meta").permissions().mode();
        assert_eq!(mode("ca.key") & 0o777, 0o600);
        assert_eq!(mode("node.key") & 0o777, 0o600);
        assert_eq!(mode("admin.key") & 0o777, 0o600);
        assert_eq!(std::fs::metadata(dir.path().join("pki")).expect("meta").permissions().mode() & 0o777, 0o700);
    }
}
