//! [`Ca`]: the cluster's certificate authority. It is made once (`vpnctl pki
//! init`, or by `vpnd --dev`), and whoever holds its key issues node and
//! client certificates.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType, SerialNumber,
};
use rustls_pki_types::{CertificateDer, UnixTime};
use time::OffsetDateTime;

use crate::files::read_pem;
use crate::{digest, CertInfo, PkiError, Principal, Role};

/// How long a CA certificate is valid.
pub const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// A node certificate's default lifetime; nodes renew at 2/3 of it.
pub const NODE_LIFETIME: Duration = Duration::from_secs(90 * 24 * 3600);
/// A client certificate's default lifetime.
pub const CLIENT_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
/// Validity starts this long before "now", for clocks a little behind ours
/// (at most a tenth of the lifetime, so a short-lived certificate's renewal
/// point, 2/3 of its validity, stays after its issue).
const BACKDATE: Duration = Duration::from_secs(3600);

pub struct Ca {
    cert_pem: String,
    cert_der: Vec<u8>,
    key: KeyPair,
}

/// Names the CA by its digest; the key stays out.
impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").field("digest", &self.digest()).finish_non_exhaustive()
    }
}

/// A certificate and the private key made for it.
pub struct Issued {
    pub cert_pem: String,
    /// Secret: write it with [`crate::files::write_private`] only.
    pub key_pem: String,
}

impl Ca {
    /// A new CA, its key made here.
    pub fn generate(common_name: &str) -> Result<Ca, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = params_valid_for(CA_LIFETIME)?;
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key)?;
        Ok(Ca { cert_pem: cert.pem(), cert_der: cert.der().to_vec(), key })
    }

    /// The CA in `cert_path` with its key in `key_path`; refuses a key that
    /// is not the certificate's, or a certificate that is not a CA.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Ca, PkiError> {
        let (cert_pem, cert_der) = read_pem(cert_path, "CERTIFICATE")?;
        let (key_pem, _) = read_pem(key_path, "PRIVATE KEY")?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| PkiError::File {
            path: key_path.display().to_string(),
            detail: format!("not a usable private key: {e}"),
        })?;
        let (_, cert) = x509_parser::parse_x509_certificate(&cert_der).map_err(|e| PkiError::File {
            path: cert_path.display().to_string(),
            detail: format!("not an X.509 certificate: {e}"),
        })?;
        if !cert.is_ca() {
            return Err(PkiError::File {
                path: cert_path.display().to_string(),
                detail: "is not a CA certificate: give the ca.crt that `vpnctl pki init` wrote".into(),
            });
        }
        if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(PkiError::File {
                path: key_path.display().to_string(),
                detail: format!("is not the key of the CA certificate {}", cert_path.display()),
            });
        }
        Ok(Ca { cert_pem, cert_der, key })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Secret: write it with [`crate::files::write_private`] only.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// SHA-256 of the CA certificate (see [`crate::digest`]).
    pub fn digest(&self) -> String {
        digest(&self.cert_der)
    }

    /// A certificate for node `id` in `role`, also valid for `hosts` (names or IPs).
    pub fn issue_node(&self, id: u64, role: Role, hosts: &[String], lifetime: Duration) -> Result<Issued, PkiError> {
        if id == 0 {
            return Err(PkiError::invalid("id", "0 is reserved: use a positive node id"));
        }
        let key = KeyPair::generate()?;
        let cert_pem = self.sign(&key, &Principal::Node { id, role }, hosts, lifetime)?;
        Ok(Issued { cert_pem, key_pem: key.serialize_pem() })
    }

    /// A client certificate for `name` (an operator or a program).
    pub fn issue_client(&self, name: &str, lifetime: Duration) -> Result<Issued, PkiError> {
        crate::principal::check_client_name(name)?;
        let key = KeyPair::generate()?;
        let cert_pem = self.sign(&key, &Principal::Client { name: name.to_owned() }, &[], lifetime)?;
        Ok(Issued { cert_pem, key_pem: key.serialize_pem() })
    }

    /// Checks that `der` was issued by this CA and is valid now; what it names.
    pub fn verify(&self, der: &[u8]) -> Result<CertInfo, PkiError> {
        verify_issued(&self.cert_der, der)
    }

    /// Signs a node's CSR (PEM) for `id` in `role`: only the CSR's key and its
    /// DNS/IP names are taken from it, everything else is the CA's choice.
    pub fn sign_node_csr(&self, csr_pem: &str, id: u64, role: Role, lifetime: Duration) -> Result<String, PkiError> {
        let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| PkiError::invalid("csr_pem", format!("not a valid signed PKCS#10 request: {e}")))?;
        let hosts: Vec<String> = csr
            .params
            .subject_alt_names
            .iter()
            .filter_map(|san| match san {
                SanType::DnsName(name) => Some(name.to_string()),
                SanType::IpAddress(ip) => Some(ip.to_string()),
                _ => None,
            })
            .collect();
        self.sign(&csr.public_key, &Principal::Node { id, role }, &hosts, lifetime)
    }

    fn sign(
        &self,
        key: &impl rcgen::PublicKeyData,
        principal: &Principal,
        hosts: &[String],
        lifetime: Duration,
    ) -> Result<String, PkiError> {
        let mut params = params_valid_for(lifetime)?;
        params.distinguished_name.push(DnType::CommonName, principal.uri());
        let uri = principal.uri().try_into().map_err(|_| PkiError::invalid("identity", principal.uri()))?;
        params.subject_alt_names.push(SanType::URI(uri));
        for host in hosts {
            params.subject_alt_names.push(match host.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) if is_dns_name(host) => SanType::DnsName(
                    host.clone()
                        .try_into()
                        .map_err(|_| PkiError::invalid("host", format!("{host:?} is not a DNS name or an IP")))?,
                ),
                Err(_) => return Err(PkiError::invalid("host", format!("{host:?} is not a DNS name or an IP"))),
            });
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = match principal {
            Principal::Node { .. } => vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
            Principal::Client { .. } => vec![ExtendedKeyUsagePurpose::ClientAuth],
        };
        params.use_authority_key_identifier_extension = true;
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, &self.key)?;
        Ok(params.signed_by(key, &issuer)?.pem())
    }
}

/// A new private key and a CSR for it naming `hosts`: the key (PEM, secret)
/// never leaves the node that made it; the CSR goes to the cluster.
pub fn make_csr(hosts: &[String]) -> Result<(String, String), PkiError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    for host in hosts {
        params.subject_alt_names.push(match host.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) if is_dns_name(host) => SanType::DnsName(
                host.clone().try_into().map_err(|_| PkiError::invalid("host", format!("{host:?} is not usable")))?,
            ),
            Err(_) => return Err(PkiError::invalid("host", format!("{host:?} is not a DNS name or an IP"))),
        });
    }
    let csr = params.serialize_request(&key)?.pem()?;
    Ok((key.serialize_pem(), csr))
}

/// Checks that `der` was issued by the CA certificate `ca_der` and is valid
/// now; what it names. This is the check TLS makes of a client certificate
/// on every connection (webpki, with rustls' signature algorithms), made here
/// on files, before a node starts with them.
pub fn verify_issued(ca_der: &[u8], der: &[u8]) -> Result<CertInfo, PkiError> {
    let ca_der = CertificateDer::from(ca_der);
    let anchor = webpki::anchor_from_trusted_cert(&ca_der)
        .map_err(|e| PkiError::invalid("CA certificate", format!("not an X.509 certificate: {e}")))?;
    let der = CertificateDer::from(der);
    let cert = crate::principal::parse(&der)?;
    // Every certificate the CA issues can authenticate a TLS client: nodes
    // present theirs to each other, clients to the nodes.
    let usage = webpki::KeyUsage::client_auth();
    let now = UnixTime::now();
    match cert.verify_for_usage(webpki::ALL_VERIFICATION_ALGS, &[anchor], &[], now, usage, None, None) {
        Ok(_) => CertInfo::read(&cert),
        Err(e) => Err(refusal(e, &cert)),
    }
}

/// Why webpki refused `cert`, in the words vpnctl and vpnd use.
fn refusal(e: webpki::Error, cert: &webpki::EndEntityCert<'_>) -> PkiError {
    match e {
        webpki::Error::CertExpired { .. } | webpki::Error::CertNotValidYet { .. } => {
            PkiError::invalid("certificate", "has expired or is not valid yet")
        }
        webpki::Error::UnknownIssuer
        | webpki::Error::InvalidSignatureForPublicKey
        | webpki::Error::UnsupportedSignatureAlgorithmContext(_)
        | webpki::Error::UnsupportedSignatureAlgorithmForPublicKeyContext(_) => {
            PkiError::invalid("certificate", "was not issued by this cluster's CA")
        }
        // What TLS refuses beyond issue and validity (a CA certificate as a
        // node's, a usage other than client authentication): a certificate
        // that names no identity is still said to be that first.
        other => match CertInfo::read(cert) {
            Err(identity) => identity,
            Ok(_) => PkiError::invalid("certificate", format!("cannot be used with this cluster's CA: {other}")),
        },
    }
}

/// Whether the private key `key_pem` belongs to the certificate `cert_der`.
pub fn key_matches(cert_der: &[u8], key_pem: &str) -> Result<bool, PkiError> {
    let key =
        KeyPair::from_pem(key_pem).map_err(|e| PkiError::invalid("key", format!("not a usable private key: {e}")))?;
    let cert_der = CertificateDer::from(cert_der);
    let spki = crate::principal::parse(&cert_der)?.subject_public_key_info();
    let bits = crate::der::public_key_bits(spki.as_ref())
        .ok_or_else(|| PkiError::invalid("certificate", "unreadable public key"))?;
    Ok(bits == key.public_key_raw())
}

fn is_dns_name(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty() && label.len() <= 63 && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// Parameters valid from a little before now for `lifetime`, with a random serial.
fn params_valid_for(lifetime: Duration) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::default();
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE.min(lifetime / 10);
    params.not_after = now + lifetime;
    let mut serial = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut serial)
        .map_err(|_| PkiError::Issue("no randomness for a serial number".into()))?;
    serial[0] &= 0x7f; // a positive integer
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    Ok(params)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_certificates_name_their_principal_and_verify_against_their_ca_only() {
        let ca = Ca::generate("test CA").expect("ca");
        let node = ca.issue_node(3, Role::ControlPlane, &["n3.example.com".into(), "10.0.0.3".into()], NODE_LIFETIME);
        let node = node.expect("node cert");
        let der = crate::files::pem_to_der(&node.cert_pem, "CERTIFICATE").expect("pem");
        let info = ca.verify(&der).expect("verifies");
        assert_eq!(info.principal, Principal::Node { id: 3, role: Role::ControlPlane });
        let days = (info.not_after - OffsetDateTime::now_utc().unix_timestamp()) / 86_400;
        assert!((89..=90).contains(&days), "{days} days");

        let client = ca.issue_client("alice", CLIENT_LIFETIME).expect("client cert");
        let der = crate::files::pem_to_der(&client.cert_pem, "CERTIFICATE").expect("pem");
        assert_eq!(ca.verify(&der).expect("verifies").principal, Principal::Client { name: "alice".into() });

        let other = Ca::generate("another CA").expect("ca");
        let refused = other.verify(&der).expect_err("another CA's certificate");
        assert!(refused.to_string().contains("not issued by this cluster's CA"), "{refused}");
    }

    #[test]
    fn the_validity_read_is_the_one_x509_parser_reads_and_an_expired_certificate_is_refused() {
        let ca = Ca::generate("test CA").expect("ca");
        let node = ca.issue_node(4, Role::DataPlane, &[], NODE_LIFETIME).expect("node cert");
        let der = crate::files::pem_to_der(&node.cert_pem, "CERTIFICATE").expect("pem");
        let info = ca.verify(&der).expect("verifies");
        let (_, parsed) = x509_parser::parse_x509_certificate(&der).expect("x509");
        assert_eq!(info.not_before, parsed.validity().not_before.timestamp());
        assert_eq!(info.not_after, parsed.validity().not_after.timestamp());

        let mut params = CertificateParams::default();
        let now = OffsetDateTime::now_utc();
        (params.not_before, params.not_after) = (now - time::Duration::days(2), now - time::Duration::days(1));
        params.subject_alt_names.push(SanType::URI("urn:vpn:node:4:dataplane".try_into().expect("uri")));
        let issuer = Issuer::from_ca_cert_pem(ca.cert_pem(), &ca.key).expect("issuer");
        let expired = params.signed_by(&KeyPair::generate().expect("key"), &issuer).expect("signed");
        let refused = ca.verify(expired.der()).expect_err("expired");
        assert_eq!(refused.to_string(), "certificate: has expired or is not valid yet");
        let ca_der = crate::files::pem_to_der(ca.cert_pem(), "CERTIFICATE").expect("pem");
        let refused = ca.verify(&ca_der).expect_err("the CA's own certificate");
        assert!(refused.to_string().contains("names no node or client identity"), "{refused}");
        let garbage = ca.verify(b"not DER").expect_err("garbage");
        assert!(garbage.to_string().starts_with("certificate: not an X.509 certificate"), "{garbage}");
    }

    #[test]
    fn a_csr_is_signed_for_the_id_and_role_the_ca_chooses_with_the_hosts_it_asks_for() {
        let ca = Ca::generate("test CA").expect("ca");
        let (key, csr) = make_csr(&["10.0.0.9".into(), "n9.example.com".into()]).expect("csr");
        let cert = ca.sign_node_csr(&csr, 9, Role::DataPlane, NODE_LIFETIME).expect("signed");
        let der = crate::files::pem_to_der(&cert, "CERTIFICATE").expect("pem");
        assert_eq!(ca.verify(&der).expect("verifies").principal, Principal::Node { id: 9, role: Role::DataPlane });
        assert!(crate::key_matches(&der, &key).expect("key"), "certified the CSR's own key");
        let garbage = ca.sign_node_csr("garbage", 9, Role::DataPlane, NODE_LIFETIME);
        assert!(garbage.is_err_and(|e| e.to_string().starts_with("csr_pem:")));
    }

    #[test]
    fn bad_names_and_ids_are_refused_naming_the_field() {
        let ca = Ca::generate("test CA").expect("ca");
        assert!(ca.issue_client("Alice!", CLIENT_LIFETIME).is_err_and(|e| e.to_string().starts_with("name:")));
        assert!(ca.issue_node(0, Role::DataPlane, &[], NODE_LIFETIME).is_err_and(|e| e.to_string().starts_with("id:")));
        let bad_host = ca.issue_node(1, Role::DataPlane, &["bad host".into()], NODE_LIFETIME);
        assert!(bad_host.is_err_and(|e| e.to_string().starts_with("host:")));
    }

    #[test]
    fn a_ca_loads_back_and_refuses_a_key_of_another() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (Ca::generate("a").expect("ca"), Ca::generate("b").expect("ca"));
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            crate::files::write_private(&path, text.as_bytes()).expect("write");
            path
        };
        let (cert, key, other_key) =
            (write("ca.crt", a.cert_pem()), write("ca.key", &a.key_pem()), write("b.key", &b.key_pem()));
        assert_eq!(Ca::load(&cert, &key).expect("loads").digest(), a.digest());
        let refused = Ca::load(&cert, &other_key).expect_err("another key");
        assert!(refused.to_string().contains("is not the key of the CA certificate"), "{refused}");
        let leaf = a.issue_client("bob", CLIENT_LIFETIME).expect("leaf");
        let leaf_path = write("bob.crt", &leaf.cert_pem);
        let refused = Ca::load(&leaf_path, &key).expect_err("not a CA");
        assert!(refused.to_string().contains("is not a CA certificate"), "{refused}");
    }
}
