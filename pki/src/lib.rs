//! The cluster's certificate authority, and who a certificate names.
//!
//! Every certificate the CA issues names exactly one principal in a URI
//! subject alternative name, which is what the cluster authorizes by (a host
//! name proves nothing about a role):
//! - `urn:vpn:node:<id>:controlplane` / `urn:vpn:node:<id>:dataplane`: node
//!   `<id>` in that role; also DNS/IP names of its hosts, for clients that
//!   check the server they dial.
//! - `urn:vpn:client:<name>`: an operator or a program (`admin` from `pki init`).
//!
//! Keys are ECDSA P-256, made where they are used. Certificates are PEM.
//!
//! Layout:
//! - [`principal`]: [`Principal`], [`Role`], reading them from a certificate.
//! - [`ca`]: [`Ca`]: make or load a CA, issue node and client certificates.
//! - [`files`]: reading PEM files and writing private ones (0600, never over another).
//! - `der`: a certificate's validity and raw public key, which webpki reads but keeps to itself.
//! - [`join_token`]: `vpnj1-<CA digest>-<id>-<secret>`, made, read, hashed.
//! - [`contexts`]: vpnctl's named endpoints-and-credentials (`vpnd --dev` adds its own).

pub mod ca;
pub mod contexts;
mod der;
pub mod files;
pub mod join_token;
pub mod principal;

pub use ca::{key_matches, make_csr, verify_issued, Ca, Issued};
pub use principal::{CertInfo, Principal, Role};

/// Everything that can go wrong here; each names the file or the value at fault.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {detail}")]
    File { path: String, detail: String },
    #[error("{what}: {detail}")]
    Invalid { what: String, detail: String },
    #[error("making a certificate failed: {0}")]
    Issue(String),
}

impl PkiError {
    fn invalid(what: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::Invalid { what: what.into(), detail: detail.into() }
    }
}

impl From<rcgen::Error> for PkiError {
    fn from(e: rcgen::Error) -> Self {
        Self::Issue(e.to_string())
    }
}

/// SHA-256 of a certificate's DER bytes, lower-case hex: how a join token pins the CA.
pub fn digest(der: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, der))
}
