//! Getting a certificate with a join token (`vpnd --join ... --join-token`),
//! SwarmKit's model. The node:
//! 1. reads the CA from a seed's TLS handshake, sending nothing else, and
//!    keeps it only if its SHA-256 is the token's digest (else it is another
//!    cluster, or someone in between);
//! 2. makes its private key, and sends a CSR with the token over TLS checked
//!    against that CA (`Cluster/Join`);
//! 3. keeps the certificate it gets, its key and the CA in `<data-dir>/pki`
//!    (key 0600), so later starts need no token.

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use base64::Engine;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
use vpn_pki::files::{private_dir, write_private};
use vpn_pki::join_token::JoinToken;
use vpn_proto::v1::cluster_client::ClusterClient;
use vpn_proto::v1::JoinRequest;

use crate::error::Error;
use crate::tls::Material;

const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// This node's material: from `<data_dir>/pki` when it joined before, else
/// fetched through the first seed that answers.
pub async fn material(
    data_dir: &Path,
    id: u64,
    seeds: &[String],
    token: &JoinToken,
    hosts: &[String],
) -> Result<Material, Error> {
    let dir = data_dir.join("pki");
    if dir.join("node.crt").exists() {
        return Material::load_dir(&dir, id);
    }
    let mut tried = Vec::new();
    for seed in seeds {
        match join_through(seed, id, token, hosts, &dir).await {
            Ok(material) => return Ok(material),
            Err(e) => tried.push(format!("{seed}: {e}")),
        }
    }
    Err(Error::Join { seeds: seeds.join(","), detail: format!("no certificate: {}", tried.join("; ")) })
}

async fn join_through(
    seed: &str,
    id: u64,
    token: &JoinToken,
    hosts: &[String],
    dir: &Path,
) -> Result<Material, String> {
    let ca_pem = pinned_ca(seed, &token.ca_digest).await?;
    let (key_pem, csr_pem) = vpn_pki::make_csr(hosts).map_err(|e| e.to_string())?;
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&ca_pem));
    let channel = Endpoint::from_shared(format!("https://{seed}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(STEP_TIMEOUT)
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    let mut req = tonic::Request::new(JoinRequest { token: token.to_string(), node_id: id, csr_pem });
    req.set_timeout(STEP_TIMEOUT);
    let reply = ClusterClient::new(channel).join(req).await.map_err(|s| s.message().to_owned())?.into_inner();
    let fail = |e: vpn_pki::PkiError| e.to_string();
    private_dir(dir).map_err(fail)?;
    write_private(&dir.join("ca.crt"), ca_pem.as_bytes()).map_err(fail)?;
    write_private(&dir.join("node.key"), key_pem.as_bytes()).map_err(fail)?;
    write_private(&dir.join("node.crt"), reply.cert_pem.as_bytes()).map_err(fail)?;
    tracing::info!(role = %reply.role, dir = %dir.display(), "joined with a token: certificate issued");
    Material::load_dir(dir, id).map_err(|e| e.to_string())
}

/// The CA certificate (PEM) in `seed`'s TLS chain whose SHA-256 is `digest`.
/// Nothing but a ClientHello is sent before it is checked.
async fn pinned_ca(seed: &str, digest: &str) -> Result<String, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let capture = Arc::new(CaptureChain { provider: provider.clone(), chain: Mutex::default() });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(capture.clone())
        .with_no_client_auth();
    let host = seed.rsplit_once(':').map_or(seed, |(host, _)| host).trim_matches(|c| c == '[' || c == ']');
    let name = ServerName::try_from(host.to_owned()).map_err(|e| format!("{host:?}: {e}"))?;
    let tcp = tokio::time::timeout(STEP_TIMEOUT, tokio::net::TcpStream::connect(seed))
        .await
        .map_err(|_| "no answer".to_owned())?
        .map_err(|e| format!("cannot connect: {e}"))?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    tokio::time::timeout(STEP_TIMEOUT, connector.connect(name, tcp))
        .await
        .map_err(|_| "no TLS handshake".to_owned())?
        .map_err(|e| format!("TLS handshake: {e}"))?;
    let chain = capture.chain.lock().unwrap_or_else(PoisonError::into_inner).clone();
    let ca = chain.iter().find(|cert| vpn_pki::digest(cert) == digest).ok_or_else(|| {
        "the cluster presents no CA with the token's digest: the token is for another cluster, or someone is in between"
            .to_owned()
    })?;
    let body = base64::engine::general_purpose::STANDARD.encode(ca.as_ref());
    let lines: Vec<&str> = body.as_bytes().chunks(64).filter_map(|c| std::str::from_utf8(c).ok()).collect();
    Ok(format!("-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n", lines.join("\n")))
}

/// Accepts any server chain and keeps it, for the one handshake whose only
/// purpose is to read the CA that [`pinned_ca`] then checks by digest.
/// Signatures are still checked, so the server holds the key it shows.
#[derive(Debug)]
struct CaptureChain {
    provider: Arc<rustls::crypto::CryptoProvider>,
    chain: Mutex<Vec<CertificateDer<'static>>>,
}

impl ServerCertVerifier for CaptureChain {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let chain = std::iter::once(end_entity).chain(intermediates).map(|c| c.clone().into_owned()).collect();
        *self.chain.lock().unwrap_or_else(PoisonError::into_inner) = chain;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}
