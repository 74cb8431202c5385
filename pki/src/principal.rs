//! Who a certificate names: the one `urn:vpn:` URI in its subject
//! alternative names, and when it expires.

use std::fmt;

use rustls_pki_types::CertificateDer;
use webpki::EndEntityCert;

use crate::PkiError;

const NODE: &str = "urn:vpn:node:";
const CLIENT: &str = "urn:vpn:client:";

/// What a node may do in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// A Raft voter or learner of the control plane: replicates, forwards writes.
    ControlPlane,
    /// Serves users only: registers and heartbeats as itself, nothing else.
    DataPlane,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::ControlPlane => "controlplane",
            Role::DataPlane => "dataplane",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = PkiError;

    fn from_str(s: &str) -> Result<Self, PkiError> {
        match s {
            "controlplane" => Ok(Role::ControlPlane),
            "dataplane" => Ok(Role::DataPlane),
            other => Err(PkiError::invalid("role", format!("{other:?}: use controlplane or dataplane"))),
        }
    }
}

/// Who presents a certificate.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Principal {
    Node { id: u64, role: Role },
    Client { name: String },
}

impl Principal {
    /// The URI SAN that names this principal in a certificate.
    pub fn uri(&self) -> String {
        match self {
            Principal::Node { id, role } => format!("{NODE}{id}:{}", role.as_str()),
            Principal::Client { name } => format!("{CLIENT}{name}"),
        }
    }

    fn from_uri(uri: &str) -> Option<Result<Self, PkiError>> {
        if let Some(rest) = uri.strip_prefix(NODE) {
            let parsed =
                rest.split_once(':').and_then(|(id, role)| Some((id.parse::<u64>().ok()?, role.parse().ok()?)));
            return Some(match parsed {
                Some((id, role)) if id > 0 => Ok(Principal::Node { id, role }),
                _ => Err(PkiError::invalid("certificate", format!("{uri:?} is not a node identity"))),
            });
        }
        let name = uri.strip_prefix(CLIENT)?;
        Some(match check_client_name(name) {
            Ok(()) => Ok(Principal::Client { name: name.to_owned() }),
            Err(e) => Err(e),
        })
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Principal::Node { id, role } => write!(f, "node {id} ({})", role.as_str()),
            Principal::Client { name } => write!(f, "client {name}"),
        }
    }
}

/// A client name: 1-64 of `[a-z0-9._-]`, starting with a letter or digit.
pub fn check_client_name(name: &str) -> Result<(), PkiError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(PkiError::invalid(
            "name",
            format!("{name:?}: use 1-64 of a-z, 0-9, '.', '_', '-', starting with a letter or digit"),
        ))
    }
}

/// What the cluster reads from a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub principal: Principal,
    /// Seconds since the Unix epoch.
    pub not_before: i64,
    /// Seconds since the Unix epoch.
    pub not_after: i64,
}

impl CertInfo {
    /// Reads the one principal a certificate (DER) names.
    pub fn from_der(der: &[u8]) -> Result<Self, PkiError> {
        let der = CertificateDer::from(der);
        Self::read(&parse(&der)?)
    }

    /// What `cert` names, and when it is valid.
    pub(crate) fn read(cert: &EndEntityCert<'_>) -> Result<Self, PkiError> {
        let mut found = cert.valid_uri_names().filter_map(Principal::from_uri);
        let principal = match (found.next(), found.next()) {
            (Some(one), None) => one?,
            (None, _) => {
                return Err(PkiError::invalid(
                    "certificate",
                    "names no node or client identity (urn:vpn:...): issue it with `vpnctl pki`",
                ))
            }
            (Some(_), Some(_)) => return Err(PkiError::invalid("certificate", "names more than one identity")),
        };
        let (not_before, not_after) = crate::der::validity(cert.der().as_ref())
            .ok_or_else(|| PkiError::invalid("certificate", "unreadable validity period"))?;
        Ok(CertInfo { principal, not_before, not_after })
    }
}

/// `der` parsed as rustls parses a peer's certificate.
pub(crate) fn parse<'a>(der: &'a CertificateDer<'a>) -> Result<EndEntityCert<'a>, PkiError> {
    EndEntityCert::try_from(der).map_err(|e| PkiError::invalid("certificate", format!("not an X.509 certificate: {e}")))
}
