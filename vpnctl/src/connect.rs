//! Where and how a command reaches the cluster: flags and `VPNCTL_*` variables first, then a
//! context, then `127.0.0.1:7000` in plaintext; and the [`Client`] made from that.

use std::path::{Path, PathBuf};
use std::time::Duration;

use vpn_pki::contexts::{ApiToken, Context};

use crate::client::{Client, TlsFiles};
use crate::commands::context;
use crate::endpoint;
use crate::error::CliError;

/// The endpoint when neither a flag nor a context names one.
const DEFAULT_ENDPOINT: &str = "127.0.0.1:7000";

/// What the command line says about reaching the cluster (flags and `VPNCTL_*` variables),
/// before any context is read.
#[derive(Debug, Clone, Copy, Default)]
pub struct Given<'a> {
    /// `--endpoints`, when given and not empty.
    pub endpoints: Option<&'a [String]>,
    pub ca_cert: Option<&'a Path>,
    /// `--cert` and `--key` (clap makes each require the other).
    pub pair: Option<(&'a Path, &'a Path)>,
}

/// The settings a command connects with, each taken from the flags or else the context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reach {
    pub endpoints: Vec<String>,
    pub ca_cert: Option<PathBuf>,
    pub pair: Option<(PathBuf, PathBuf)>,
}

impl Given<'_> {
    /// Each setting from the flags, else from `context`, else the default endpoint.
    pub fn over(&self, context: &Context) -> Reach {
        let endpoints = match self.endpoints {
            Some(given) => given.to_vec(),
            None if !context.endpoints.is_empty() => context.endpoints.clone(),
            None => vec![DEFAULT_ENDPOINT.to_owned()],
        };
        let pair = match self.pair {
            Some((cert, key)) => Some((cert.to_path_buf(), key.to_path_buf())),
            None => context.cert.clone().zip(context.key.clone()),
        };
        Reach { endpoints, ca_cert: self.ca_cert.map(Path::to_path_buf).or(context.ca_cert.clone()), pair }
    }
}

impl Reach {
    /// A client for these settings. With TLS settings, or when the caller sends a secret (a
    /// token, a password: `secret`), a bare host:port speaks TLS (system roots, or --ca-cert).
    pub fn client(&self, timeout: Duration, secret: bool) -> Result<Client, CliError> {
        let read = |flag: &str, path: &Path| {
            std::fs::read(path)
                .map_err(|err| CliError::InvalidInput(format!("cannot read {flag} {}: {err}", path.display())))
        };
        let tls = TlsFiles {
            ca_pem: self.ca_cert.as_deref().map(|p| read("--ca-cert", p)).transpose()?,
            identity: match &self.pair {
                Some((cert, key)) => Some((read("--cert", cert)?, read("--key", key)?)),
                None => None,
            },
        };
        let bare_tls = tls.ca_pem.is_some() || tls.identity.is_some() || secret;
        let endpoints = endpoint::parse_endpoints(&self.endpoints, bare_tls)?;
        Ok(Client::new(endpoints, timeout, tls))
    }
}

/// The client of the commands that call the cluster with a credential. Each setting falls back
/// on its own, so `--token` with a context uses the context's endpoints and CA (and presents
/// its certificate too, if it has one).
pub fn client(given: Given<'_>, timeout: Duration, token: Option<&ApiToken>) -> Result<Client, CliError> {
    // Endpoints given explicitly name another cluster than the context's,
    // whose credentials would then be wrong: the context applies only alone.
    let context = if given.endpoints.is_some() { Context::default() } else { context::current()?.unwrap_or_default() };
    let token = token.or(context.token.as_ref());
    let client = given.over(&context).client(timeout, token.is_some())?;
    match token {
        Some(token) => client.with_token(token),
        None => Ok(client),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::EXIT_BAD_INPUT;

    #[test]
    fn a_token_makes_bare_endpoints_speak_tls_and_refuses_http() {
        let token = ApiToken::from("s3cr3t".to_owned());
        let connect = |endpoint: &str| {
            let endpoints = [endpoint.to_owned()];
            let given = Given { endpoints: Some(&endpoints), ..Given::default() };
            client(given, Duration::from_secs(1), Some(&token)).map(|_| ())
        };
        // `with_token` refuses plaintext, so Ok means the bare endpoint became TLS.
        assert!(connect("127.0.0.1:7000").is_ok());
        assert!(connect("https://127.0.0.1:7000").is_ok());
        let err = connect("http://127.0.0.1:7000").err();
        assert_eq!(err.as_ref().map(CliError::exit_code), Some(EXIT_BAD_INPUT));
        assert!(!err.map(|e| e.to_string()).unwrap_or_default().contains("s3cr3t"));
    }

    #[test]
    fn each_setting_falls_back_on_the_context_alone() {
        let context = Context {
            endpoints: vec!["a:1".into()],
            ca_cert: Some("/ctx/ca.crt".into()),
            cert: Some("/ctx/me.crt".into()),
            key: Some("/ctx/me.key".into()),
            token: None,
        };
        let endpoints = ["b:2".to_owned()];
        let given = Given { endpoints: Some(&endpoints), ca_cert: Some(Path::new("ca.crt")), pair: None };
        let reach = given.over(&context);
        assert_eq!(reach.endpoints, ["b:2"]);
        assert_eq!(reach.ca_cert.as_deref(), Some(Path::new("ca.crt")));
        assert_eq!(reach.pair, Some(("/ctx/me.crt".into(), "/ctx/me.key".into())));
        assert_eq!(Given::default().over(&Context::default()).endpoints, [DEFAULT_ENDPOINT]);
    }
}
