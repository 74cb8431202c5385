//! The command line of `vpnctl login` and `vpnctl logout`: a person's LDAP password or OIDC
//! login exchanged for a session token kept in a context.

use std::path::PathBuf;

use clap::{ArgGroup, Args};

/// `login --help`.
pub const LOGIN_ABOUT: &str = "\
Log in as a person and keep the session in a context, so the next commands need no other \
credential.

--ldap USER asks for the password (without echo on a terminal; a script gives it as the first \
line of stdin). --oidc prints a link and a code to open in a browser at the cluster's OIDC \
provider (the device flow), or sends the ID token of --id-token FILE.

The session is a bearer token valid on every node until it expires (vpnd --session-ttl). It is \
stored in --context NAME, else in the current context, else in a new context `default` made \
from --endpoints and --ca-cert; that context becomes the current one. A login goes only over TLS.

Examples:
  vpnctl --endpoints vpn1.example.com:7000 --ca-cert ca.crt login --ldap alice
  vpnctl login --oidc
  vpnctl login --oidc --id-token token.jwt
  export VPNCTL_TOKEN=$(vpnctl login --ldap ci-user --print-token < password-file)";

/// `vpnctl login`: exactly one of --ldap USER and --oidc.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("method").required(true).args(["ldap", "oidc"])))]
pub struct LoginArgs {
    /// Log in as this LDAP user; the password is read from the terminal (no echo), or as the
    /// first line of stdin when stdin is not a terminal.
    #[arg(long, value_name = "USER")]
    pub ldap: Option<String>,
    /// Log in at the cluster's OIDC provider: in a browser with a code printed here (the device
    /// flow), or with --id-token.
    #[arg(long)]
    pub oidc: bool,
    /// A file holding an ID token the provider issued for the cluster's client id; - reads it
    /// from stdin.
    #[arg(long, value_name = "FILE", conflicts_with = "ldap")]
    pub id_token: Option<PathBuf>,
    /// The scopes the device flow asks for, space-separated: the ID token must carry the
    /// claims the cluster reads (vpnd --oidc-username-claim, --oidc-groups-claim), which some
    /// providers add only for scopes such as "email" or "groups". Default: openid.
    #[arg(long, value_name = "SCOPES", conflicts_with_all = ["ldap", "id_token"])]
    pub oidc_scope: Option<String>,
    /// Allow an OIDC provider at a plain http:// issuer for the device flow: the ID token and
    /// the code could be read on the way (a provider on this host, tests).
    #[arg(long, conflicts_with_all = ["ldap", "id_token"])]
    pub oidc_insecure: bool,
    /// The context that receives the session, made when missing. Default: the current one,
    /// else a new `default`.
    #[arg(long, value_name = "NAME")]
    pub context: Option<String>,
    /// Print the session token alone on stdout instead of storing it, for scripts
    /// (VPNCTL_TOKEN=$(vpnctl login ... --print-token)).
    #[arg(long)]
    pub print_token: bool,
}

/// `vpnctl logout`.
#[derive(Debug, Args)]
pub struct LogoutArgs {
    /// The context to take the session (or token) out of. Default: the current one.
    #[arg(long, value_name = "NAME")]
    pub context: Option<String>,
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn parse(args: &[&str]) -> Result<Command, clap::Error> {
        Cli::try_parse_from(std::iter::once(&"vpnctl").chain(args)).map(|cli| cli.command)
    }

    fn usage_error(args: &[&str]) -> String {
        match parse(args) {
            Ok(command) => panic!("{args:?} parsed as {command:?}"),
            Err(err) => {
                assert_eq!(err.exit_code(), 2, "{args:?}: {err}");
                err.to_string()
            }
        }
    }

    #[test]
    fn login_takes_ldap_or_oidc() {
        let ldap = parse(&["login", "--ldap", "alice", "--context", "prod", "-o", "json"]);
        let Ok(Command::Login(args)) = ldap else { panic!("login --ldap parses: {ldap:?}") };
        assert_eq!((args.ldap.as_deref(), args.oidc, args.context.as_deref()), (Some("alice"), false, Some("prod")));
        assert!(!args.print_token);
        let oidc = parse(&["login", "--oidc", "--id-token", "-", "--print-token"]);
        let Ok(Command::Login(args)) = oidc else { panic!("login --oidc --id-token parses: {oidc:?}") };
        assert_eq!((args.oidc, args.id_token, args.print_token), (true, Some(PathBuf::from("-")), true));
        let device = parse(&["login", "--oidc", "--oidc-insecure", "--oidc-scope", "openid email"]);
        let Ok(Command::Login(args)) = device else { panic!("the device flow parses: {device:?}") };
        assert_eq!((args.oidc_insecure, args.oidc_scope.as_deref()), (true, Some("openid email")));
    }

    #[test]
    fn login_refuses_mixed_or_missing_methods() {
        let text = usage_error(&["login"]);
        assert!(text.contains("--ldap") && text.contains("--oidc"), "{text}");
        assert!(usage_error(&["login", "--ldap", "alice", "--oidc"]).contains("cannot be used with"));
        for (args, flag) in [
            (&["login", "--ldap", "alice", "--id-token", "t"][..], "--id-token"),
            (&["login", "--ldap", "alice", "--oidc-insecure"][..], "--oidc-insecure"),
            (&["login", "--id-token", "t"][..], "--oidc"),
            (&["login", "--oidc", "--id-token", "t", "--oidc-insecure"][..], "--oidc-insecure"),
            (&["login", "--oidc", "--id-token", "t", "--oidc-scope", "openid"][..], "--oidc-scope"),
            (&["login", "--ldap"][..], "--ldap"),
        ] {
            let text = usage_error(args);
            assert!(text.contains(flag), "{args:?}: {text}");
        }
    }

    #[test]
    fn logout_takes_an_optional_context() {
        assert!(matches!(parse(&["logout"]), Ok(Command::Logout(LogoutArgs { context: None }))));
        let named = parse(&["logout", "--context", "prod"]);
        assert!(matches!(&named, Ok(Command::Logout(LogoutArgs { context: Some(c) })) if c == "prod"), "{named:?}");
    }
}
