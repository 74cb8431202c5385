//! The login settings (`--ldap-*`, `--oidc-*`, `--session-ttl`): parsed and
//! validated before anything starts, every error naming its flag.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::parse_lifetime;
use crate::error::Error;
use crate::login::ldap::{LdapConfig, UserDn};
use crate::login::oidc::OidcConfig;
use crate::login::LoginConfig;

/// The login flags; the `--config` file takes the same keys.
#[derive(Debug, Default, Clone, clap::Args, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct LoginArgs {
    /// LDAP logins (`vpnctl login --ldap USER`) against this server: ldaps://HOST:636, or
    /// ldap://HOST:389 (StartTLS unless --ldap-insecure).
    #[arg(long, value_name = "URL")]
    pub ldap_url: Option<String>,
    /// A user's DN, {user} standing for the name, e.g. "uid={user},ou=people,dc=example,dc=com".
    /// Or find it by a search: --ldap-bind-dn, --ldap-bind-password-file, --ldap-user-base.
    #[arg(long, value_name = "TEMPLATE")]
    pub ldap_user_dn_template: Option<String>,
    /// The service account that searches for users (and groups).
    #[arg(long, value_name = "DN")]
    pub ldap_bind_dn: Option<String>,
    /// A file (mode 0600) holding the service account's password.
    #[arg(long, value_name = "FILE")]
    pub ldap_bind_password_file: Option<PathBuf>,
    /// Where users are searched.
    #[arg(long, value_name = "DN")]
    pub ldap_user_base: Option<String>,
    /// The search for a user, {user} standing for the (escaped) name. Default: (uid={user}).
    #[arg(long, value_name = "FILTER")]
    pub ldap_user_filter: Option<String>,
    /// Where groups are searched; without it, LDAP users have no groups.
    #[arg(long, value_name = "DN")]
    pub ldap_group_base: Option<String>,
    /// The search for a user's groups, {dn} standing for the user's DN. Default: (member={dn}).
    #[arg(long, value_name = "FILTER")]
    pub ldap_group_filter: Option<String>,
    /// The attribute that names a group (the group `ldap:<value>` in bindings). Default: cn.
    #[arg(long, value_name = "NAME")]
    pub ldap_group_attribute: Option<String>,
    /// Allow ldap:// without StartTLS: passwords cross the network in the clear.
    #[arg(long)]
    #[serde(default)]
    pub ldap_insecure: bool,
    /// PEM certificates of the CA(s) the LDAP server's certificate must chain to, instead of the
    /// system's roots (a directory with a certificate from an internal CA).
    #[arg(long, value_name = "FILE")]
    pub ldap_ca_file: Option<PathBuf>,
    /// OIDC logins: the provider's issuer URL (https; its discovery document and keys are
    /// fetched from it).
    #[arg(long, value_name = "URL")]
    pub oidc_issuer: Option<String>,
    /// The audience ID tokens must name: the client id registered at the provider.
    #[arg(long, value_name = "ID")]
    pub oidc_audience: Option<String>,
    /// The claim listing the user's groups (the groups `oidc:<group>` in bindings). Default: groups.
    #[arg(long, value_name = "CLAIM")]
    pub oidc_groups_claim: Option<String>,
    /// The claim naming the user (the principal `oidc:<value>`). Default: email.
    #[arg(long, value_name = "CLAIM")]
    pub oidc_username_claim: Option<String>,
    /// Clock difference tolerated on an ID token's exp and nbf, e.g. 30s (the default).
    #[arg(long, value_name = "DURATION")]
    pub oidc_leeway: Option<String>,
    /// Allow an http:// issuer: its keys could be swapped on the way.
    #[arg(long)]
    #[serde(default)]
    pub oidc_insecure: bool,
    /// How long a login session lasts, e.g. 12h (the default), 30m.
    #[arg(long, value_name = "DURATION")]
    pub session_ttl: Option<String>,
}

impl LoginArgs {
    /// These flags, each missing one taken from `file`.
    pub fn or(self, file: LoginArgs) -> LoginArgs {
        LoginArgs {
            ldap_url: self.ldap_url.or(file.ldap_url),
            ldap_user_dn_template: self.ldap_user_dn_template.or(file.ldap_user_dn_template),
            ldap_bind_dn: self.ldap_bind_dn.or(file.ldap_bind_dn),
            ldap_bind_password_file: self.ldap_bind_password_file.or(file.ldap_bind_password_file),
            ldap_user_base: self.ldap_user_base.or(file.ldap_user_base),
            ldap_user_filter: self.ldap_user_filter.or(file.ldap_user_filter),
            ldap_group_base: self.ldap_group_base.or(file.ldap_group_base),
            ldap_group_filter: self.ldap_group_filter.or(file.ldap_group_filter),
            ldap_group_attribute: self.ldap_group_attribute.or(file.ldap_group_attribute),
            ldap_insecure: self.ldap_insecure || file.ldap_insecure,
            ldap_ca_file: self.ldap_ca_file.or(file.ldap_ca_file),
            oidc_issuer: self.oidc_issuer.or(file.oidc_issuer),
            oidc_audience: self.oidc_audience.or(file.oidc_audience),
            oidc_groups_claim: self.oidc_groups_claim.or(file.oidc_groups_claim),
            oidc_username_claim: self.oidc_username_claim.or(file.oidc_username_claim),
            oidc_leeway: self.oidc_leeway.or(file.oidc_leeway),
            oidc_insecure: self.oidc_insecure || file.oidc_insecure,
            session_ttl: self.session_ttl.or(file.session_ttl),
        }
    }
}

pub fn parse(a: LoginArgs) -> Result<LoginConfig, Error> {
    let mut config = LoginConfig::default();
    if let Some(raw) = &a.session_ttl {
        config.session_ttl = parse_lifetime(raw).ok_or_else(|| {
            Error::invalid("--session-ttl", &format!("{raw:?} is not a duration: use e.g. 12h or 30m"))
        })?;
    }
    config.ldap = a.ldap_url.clone().map(|url| ldap(url, &a)).transpose()?;
    if config.ldap.is_none() {
        let stray = [
            ("--ldap-user-dn-template", a.ldap_user_dn_template.is_some()),
            ("--ldap-bind-dn", a.ldap_bind_dn.is_some()),
            ("--ldap-ca-file", a.ldap_ca_file.is_some()),
        ];
        if let Some((flag, _)) = stray.iter().find(|(_, given)| *given) {
            return Err(Error::invalid(flag, "goes with --ldap-url, which is missing"));
        }
    }
    config.oidc = match (a.oidc_issuer.clone(), a.oidc_audience.clone()) {
        (Some(issuer), Some(audience)) => Some(oidc(issuer, audience, &a)?),
        (None, None) => None,
        (Some(_), None) => return Err(Error::invalid("--oidc-audience", "is missing: it goes with --oidc-issuer")),
        (None, Some(_)) => return Err(Error::invalid("--oidc-issuer", "is missing: it goes with --oidc-audience")),
    };
    Ok(config)
}

fn ldap(url: String, a: &LoginArgs) -> Result<LdapConfig, Error> {
    let plaintext_ok = url.starts_with("ldaps://") || url.starts_with("ldap://");
    if !plaintext_ok {
        return Err(Error::invalid("--ldap-url", &format!("{url:?}: use ldaps://HOST:636 or ldap://HOST:389")));
    }
    let user_dn =
        match (&a.ldap_user_dn_template, &a.ldap_bind_dn) {
            (Some(template), None) if template.contains("{user}") => UserDn::Template(template.clone()),
            (Some(_), None) => return Err(Error::invalid("--ldap-user-dn-template", "has no {user}")),
            (None, Some(bind_dn)) => {
                let file = a.ldap_bind_password_file.as_ref().ok_or(Error::MissingFlag("--ldap-bind-password-file"))?;
                let base = a.ldap_user_base.clone().ok_or(Error::MissingFlag("--ldap-user-base"))?;
                let filter = a.ldap_user_filter.clone().unwrap_or_else(|| "(uid={user})".into());
                if !filter.contains("{user}") {
                    return Err(Error::invalid("--ldap-user-filter", "has no {user}"));
                }
                UserDn::Search { bind_dn: bind_dn.clone(), bind_password: password(file)?, base, filter }
            }
            (None, None) => return Err(Error::invalid(
                "--ldap-url",
                "needs --ldap-user-dn-template, or --ldap-bind-dn with --ldap-bind-password-file and --ldap-user-base",
            )),
            (Some(_), Some(_)) => {
                return Err(Error::invalid("--ldap-user-dn-template", "give it or --ldap-bind-dn, not both"))
            }
        };
    let ca_certs = a.ldap_ca_file.as_deref().map(|file| ca_certs(file, &url, a.ldap_insecure)).transpose()?;
    Ok(LdapConfig {
        url,
        user_dn,
        group_base: a.ldap_group_base.clone(),
        group_filter: a.ldap_group_filter.clone().unwrap_or_else(|| "(member={dn})".into()),
        group_attribute: a.ldap_group_attribute.clone().unwrap_or_else(|| "cn".into()),
        plaintext: a.ldap_insecure,
        ca_certs,
    })
}

/// `--ldap-ca-file`: one or more PEM certificates, for a connection that uses TLS.
fn ca_certs(
    path: &std::path::Path,
    url: &str,
    plaintext: bool,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, Error> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let flag = "--ldap-ca-file";
    if plaintext && url.starts_with("ldap://") {
        return Err(Error::invalid(flag, "is for TLS, which --ldap-insecure turns off on ldap://: drop one of them"));
    }
    let pem = std::fs::read(path).map_err(|e| Error::invalid(flag, &format!("{}: {e}", path.display())))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| Error::invalid(flag, &format!("{}: not PEM certificates: {e}", path.display())))?;
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs.iter().cloned());
    if added == 0 {
        return Err(Error::invalid(flag, &format!("{} holds no CA certificate (BEGIN CERTIFICATE)", path.display())));
    }
    Ok(certs)
}

/// The service account's password: the file's first line, from a file only its owner reads.
fn password(path: &std::path::Path) -> Result<String, Error> {
    use std::os::unix::fs::PermissionsExt;
    let flag = "--ldap-bind-password-file";
    let meta = std::fs::metadata(path).map_err(|e| Error::invalid(flag, &format!("{}: {e}", path.display())))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(Error::invalid(flag, &format!("{} is readable by others: chmod 600 it", path.display())));
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::invalid(flag, &format!("{}: {e}", path.display())))?;
    let line = text.lines().next().unwrap_or_default().to_owned();
    if line.is_empty() {
        return Err(Error::invalid(flag, &format!("{} is empty", path.display())));
    }
    Ok(line)
}

fn oidc(issuer: String, audience: String, a: &LoginArgs) -> Result<OidcConfig, Error> {
    match url::Url::parse(&issuer) {
        Ok(u) if u.scheme() == "https" || (u.scheme() == "http" && a.oidc_insecure) => {}
        Ok(u) if u.scheme() == "http" => {
            return Err(Error::invalid(
                "--oidc-issuer",
                "is http://: its keys could be swapped on the way; use https (or --oidc-insecure)",
            ))
        }
        _ => return Err(Error::invalid("--oidc-issuer", &format!("{issuer:?} is not an https:// URL"))),
    }
    let leeway = match &a.oidc_leeway {
        None => Duration::from_secs(30),
        Some(raw) if raw.trim() == "0s" || raw.trim() == "0" => Duration::ZERO,
        Some(raw) => parse_seconds(raw).ok_or_else(|| {
            Error::invalid("--oidc-leeway", &format!("{raw:?} is not a duration: use e.g. 30s or 2m"))
        })?,
    };
    Ok(OidcConfig {
        issuer,
        audience,
        groups_claim: a.oidc_groups_claim.clone().unwrap_or_else(|| "groups".into()),
        username_claim: a.oidc_username_claim.clone().unwrap_or_else(|| "email".into()),
        leeway,
        allow_http: a.oidc_insecure,
    })
}

/// A short duration in s or m (`parse_lifetime` wants at least 10 s).
fn parse_seconds(raw: &str) -> Option<Duration> {
    let raw = raw.trim();
    let (number, unit) = raw.split_at(raw.find(|c: char| !c.is_ascii_digit())?);
    let number: u64 = number.parse().ok()?;
    match unit {
        "s" => Some(Duration::from_secs(number)),
        "m" => Some(Duration::from_secs(number.checked_mul(60)?)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldap_needs_a_way_to_find_users_and_oidc_needs_https_and_an_audience() {
        let base = LoginArgs { ldap_url: Some("ldaps://ldap.example:636".into()), ..Default::default() };
        let err = parse(base.clone()).expect_err("no user dn");
        assert!(err.to_string().contains("--ldap-url"), "{err}");
        let ok = LoginArgs { ldap_user_dn_template: Some("uid={user},dc=x".into()), ..base.clone() };
        assert!(parse(ok).expect("valid").ldap.is_some());
        let stray = LoginArgs { ldap_user_dn_template: Some("uid={user}".into()), ..Default::default() };
        assert!(parse(stray).expect_err("no url").to_string().contains("--ldap-user-dn-template"));

        let http = LoginArgs {
            oidc_issuer: Some("http://idp".into()),
            oidc_audience: Some("vpn".into()),
            ..Default::default()
        };
        assert!(parse(http.clone()).expect_err("plain http").to_string().contains("--oidc-issuer"));
        assert!(parse(LoginArgs { oidc_insecure: true, ..http }).expect("explicit").oidc.is_some());
        let lone = LoginArgs { oidc_issuer: Some("https://idp".into()), ..Default::default() };
        assert!(parse(lone).expect_err("no audience").to_string().contains("--oidc-audience"));
    }

    #[test]
    fn an_ldap_ca_file_must_hold_certificates_and_go_with_tls() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (good, empty) = (dir.path().join("ca.pem"), dir.path().join("empty.pem"));
        let ca = vpn_pki::Ca::generate("ldap test CA").expect("CA");
        std::fs::write(&good, ca.cert_pem()).expect("write");
        std::fs::write(&empty, "not a certificate\n").expect("write");
        let args = |file: &std::path::Path, insecure: bool| LoginArgs {
            ldap_url: Some("ldap://ldap.example:389".into()),
            ldap_user_dn_template: Some("uid={user},dc=x".into()),
            ldap_ca_file: Some(file.to_owned()),
            ldap_insecure: insecure,
            ..Default::default()
        };
        let ldap = parse(args(&good, false)).expect("valid").ldap.expect("ldap");
        assert_eq!(ldap.ca_certs.map(|c| c.len()), Some(1));
        for (file, insecure, says) in [
            (empty.as_path(), false, "holds no CA certificate"),
            (dir.path().join("missing.pem").as_path(), false, "missing.pem"),
            (good.as_path(), true, "--ldap-insecure"),
        ] {
            let err = parse(args(file, insecure)).expect_err("refused").to_string();
            assert!(err.contains("--ldap-ca-file") && err.contains(says), "{err}");
        }
        let stray = LoginArgs { ldap_ca_file: Some(good), ..Default::default() };
        assert!(parse(stray).expect_err("no url").to_string().contains("--ldap-ca-file"));
    }
}
