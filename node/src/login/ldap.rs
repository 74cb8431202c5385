//! LDAP logins: a bind as the user proves the password, then a group search
//! gives the groups. The user's DN comes from a template
//! (`--ldap-user-dn-template "uid={user},ou=people,dc=example,dc=com"`) or
//! from a search with a service account (`--ldap-bind-dn`,
//! `--ldap-bind-password-file`, `--ldap-user-base`, `--ldap-user-filter`).
//! The user name is escaped for both (no filter or DN injection), and an
//! empty password is refused here: LDAP takes a simple bind with one as an
//! anonymous bind that succeeds. `ldap://` uses StartTLS unless
//! `--ldap-insecure`; `ldaps://` is TLS from the start. The server's
//! certificate must chain to the system's roots, or to `--ldap-ca-file`'s.

use std::sync::Arc;
use std::time::Duration;

use ldap3::{dn_escape, ldap_escape, Ldap, LdapConnAsync, LdapConnSettings, Scope, SearchEntry};

use super::LoginError;
use crate::auth::identity::{AuthMethod, Identity};

const TIMEOUT: Duration = Duration::from_secs(10);
/// Most groups kept from one search.
const MAX_GROUPS: usize = 256;

/// How a user's DN is found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserDn {
    /// `{user}` replaced by the escaped user name.
    Template(String),
    /// A subtree search under `base` for `filter` (`{user}` replaced), as a service account.
    Search { bind_dn: String, bind_password: String, base: String, filter: String },
}

/// `--ldap-*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LdapConfig {
    pub url: String,
    pub user_dn: UserDn,
    /// Where groups are searched; `None`: no groups.
    pub group_base: Option<String>,
    /// `{dn}` replaced by the user's escaped DN, `{user}` by the name.
    pub group_filter: String,
    /// The attribute that names a group.
    pub group_attribute: String,
    /// `--ldap-insecure`: `ldap://` without StartTLS.
    pub plaintext: bool,
    /// `--ldap-ca-file`: the roots the server's certificate must chain to;
    /// `None`: the system's.
    pub ca_certs: Option<Vec<rustls::pki_types::CertificateDer<'static>>>,
}

pub struct LdapLogin {
    config: LdapConfig,
    /// `--ldap-ca-file`'s roots; `None`: ldap3's TLS (the system's roots).
    roots: Option<Arc<rustls::RootCertStore>>,
}

impl LdapLogin {
    pub fn new(config: LdapConfig) -> Self {
        let roots = config.ca_certs.as_ref().map(|certs| {
            let mut roots = rustls::RootCertStore::empty();
            roots.add_parsable_certificates(certs.iter().cloned());
            Arc::new(roots)
        });
        LdapLogin { config, roots }
    }

    /// TLS that trusts `--ldap-ca-file` only, when it was given.
    fn tls(&self) -> Result<Option<Arc<rustls::ClientConfig>>, LoginError> {
        let Some(roots) = &self.roots else { return Ok(None) };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| LoginError::Unavailable(format!("TLS for the LDAP server: {e}")))?
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        Ok(Some(Arc::new(tls)))
    }

    /// The identity `user` proves with `password`.
    pub async fn login(&self, user: &str, password: &str) -> Result<Identity, LoginError> {
        let refused = || LoginError::Refused("wrong user name or password, or the account is disabled".into());
        if user.is_empty() || user.len() > 256 || user.chars().any(char::is_control) {
            return Err(LoginError::Refused("user: 1-256 characters, no control characters".into()));
        }
        if password.is_empty() {
            return Err(refused());
        }
        let unavailable = |e: ldap3::LdapError| LoginError::Unavailable(format!("the LDAP server: {e}"));
        let starttls = self.config.url.starts_with("ldap://") && !self.config.plaintext;
        let mut settings = LdapConnSettings::new().set_conn_timeout(TIMEOUT).set_starttls(starttls);
        if let Some(tls) = self.tls()? {
            settings = settings.set_config(tls);
        }
        let (conn, mut ldap) = LdapConnAsync::with_settings(settings, &self.config.url).await.map_err(unavailable)?;
        ldap3::drive!(conn);
        let result = self.login_on(&mut ldap, user, password).await;
        let _ = ldap.unbind().await;
        result
    }

    async fn login_on(&self, ldap: &mut Ldap, user: &str, password: &str) -> Result<Identity, LoginError> {
        let refused = || LoginError::Refused("wrong user name or password, or the account is disabled".into());
        let unavailable = |e: ldap3::LdapError| LoginError::Unavailable(format!("the LDAP server: {e}"));
        let dn = match &self.config.user_dn {
            UserDn::Template(template) => template.replace("{user}", &dn_escape(user)),
            UserDn::Search { bind_dn, bind_password, base, filter } => {
                let bound =
                    ldap.with_timeout(TIMEOUT).simple_bind(bind_dn, bind_password).await.map_err(unavailable)?;
                bound
                    .success()
                    .map_err(|e| LoginError::Unavailable(format!("the LDAP service account cannot bind: {e}")))?;
                let filter = filter.replace("{user}", &ldap_escape(user));
                let found = ldap.with_timeout(TIMEOUT).search(base, Scope::Subtree, &filter, vec!["1.1"]).await;
                let (entries, _) = found.map_err(unavailable)?.success().map_err(unavailable)?;
                match entries.as_slice() {
                    [one] => SearchEntry::construct(one.clone()).dn,
                    _ => return Err(refused()),
                }
            }
        };
        let bound = ldap.with_timeout(TIMEOUT).simple_bind(&dn, password).await.map_err(unavailable)?;
        if bound.rc != 0 {
            return Err(refused());
        }
        let mut groups = Vec::new();
        if let Some(base) = &self.config.group_base {
            // Groups are read as the service account when there is one
            // (directories often let users read little).
            if let UserDn::Search { bind_dn, bind_password, .. } = &self.config.user_dn {
                let bound =
                    ldap.with_timeout(TIMEOUT).simple_bind(bind_dn, bind_password).await.map_err(unavailable)?;
                bound
                    .success()
                    .map_err(|e| LoginError::Unavailable(format!("the LDAP service account cannot bind: {e}")))?;
            }
            let filter =
                self.config.group_filter.replace("{dn}", &ldap_escape(&dn)).replace("{user}", &ldap_escape(user));
            let attribute = self.config.group_attribute.as_str();
            let found = ldap.with_timeout(TIMEOUT).search(base, Scope::Subtree, &filter, vec![attribute]).await;
            let (entries, _) = found.map_err(unavailable)?.success().map_err(unavailable)?;
            for entry in entries.into_iter().take(MAX_GROUPS) {
                let entry = SearchEntry::construct(entry);
                groups.extend(entry.attrs.get(attribute).into_iter().flatten().map(|g| format!("ldap:{g}")));
            }
        }
        Ok(Identity { principal: format!("ldap:{user}"), method: AuthMethod::Ldap, groups, source: String::new() })
    }
}
