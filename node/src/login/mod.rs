//! Logins for people: an LDAP password (`ldap`) or an OIDC ID token (`oidc`)
//! exchanged for a short-lived session token (`session`) that every node
//! checks by itself. `fetch` gets the OIDC provider's documents.
//!
//! Principals are named by where they come from (`ldap:alice`,
//! `oidc:alice@example.com`, groups `ldap:ops`, `oidc:ops`), so no provider
//! can produce a name another one or a client certificate holds.

mod fetch;
pub mod ldap;
pub mod oidc;
pub mod session;

use std::time::Duration;

/// Why a login failed: the caller's credential (UNAUTHENTICATED), or the
/// identity provider unreachable or misconfigured (UNAVAILABLE).
#[derive(Debug, PartialEq, Eq)]
pub enum LoginError {
    Refused(String),
    Unavailable(String),
}

/// The logins this node offers.
pub struct Logins {
    pub ldap: Option<ldap::LdapLogin>,
    pub oidc: Option<oidc::Oidc>,
    /// How long a session lasts (`--session-ttl`).
    pub session_ttl: Duration,
}

/// `--ldap-*`, `--oidc-*` and `--session-ttl`, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginConfig {
    pub ldap: Option<ldap::LdapConfig>,
    pub oidc: Option<oidc::OidcConfig>,
    pub session_ttl: Duration,
}

impl Default for LoginConfig {
    fn default() -> Self {
        LoginConfig { ldap: None, oidc: None, session_ttl: Duration::from_secs(12 * 3600) }
    }
}

impl Logins {
    pub fn new(config: LoginConfig) -> Self {
        Logins {
            ldap: config.ldap.map(ldap::LdapLogin::new),
            oidc: config.oidc.map(oidc::Oidc::new),
            session_ttl: config.session_ttl,
        }
    }
}
