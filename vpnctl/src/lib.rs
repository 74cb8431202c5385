//! `vpnctl`, the admin CLI of the clustered VPN control plane: a thin gRPC client.
//!
//! Any node answers; the client fails over between `--endpoints` and retries with backoff, and
//! the nodes forward writes to the leader. Errors end the process with a code scripts can
//! branch on: 0 ok, 1 other, 2 bad input, 3 not found / already exists, 4 cluster unavailable,
//! 5 unauthenticated, 6 permission denied.
//!
//! Layout:
//! - [`cli`]: the command line (clap derive); access control's in `cli/access.rs`.
//! - [`parse`]: flag values (`--expires`, `--data-limit`, `--constraint`, `--timeout`, the
//!   durations of `--ttl` and `--since`), checked before any network call.
//! - [`endpoint`]: parsing `host:port` and `http(s)://host:port`.
//! - [`client`]: failover, retry with backoff, leader hints; the API token on every request.
//! - [`output`]: table and JSON rendering.
//! - [`human`]: sizes and relative times for tables (`1.2 GiB of 50 GiB (2.4%)`, `in 30 days`).
//! - [`commands`]: one module per command group (`cluster`, `member`, `user` with `user_limits`
//!   and `user_links`, `node`, `pki` (offline: the CA and its certificates), `join-token`,
//!   access control: `token` (API tokens), `role`, `audit`, `whoami`; `context`, `completions`).
//! - [`qr`]: terminal QR codes for `user qr`.
//! - [`error`]: [`CliError`] and its exit codes.
//!
//! Other crates (cluster tests) call [`execute`] to get a command's result without a process,
//! or [`main_with_args`] to run it as the binary would.

pub mod cli;
pub mod client;
pub mod commands;
pub mod endpoint;
pub mod error;
pub mod human;
pub mod output;
pub mod parse;
pub mod qr;

use std::ffi::OsString;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use vpn_pki::contexts::ApiToken;

pub use cli::{Cli, Command};
pub use error::CliError;
pub use output::{Document, Format, Output};

use client::Client;
use client::TlsFiles;
use commands::{audit, cluster, completions, context, join_token, member, node, pki, role, token, user, whoami};
use error::{EXIT_BAD_INPUT, EXIT_OTHER};

/// Runs one parsed command and returns its result unprinted.
pub async fn execute(cli: Cli) -> Result<Output, CliError> {
    let Cli { endpoints, timeout, ca_cert, cert, key, token: api_token, command, .. } = cli;
    let pair = cert.as_deref().zip(key.as_deref());
    let connect = || client(endpoints.as_deref(), timeout, ca_cert.as_deref(), pair, api_token.as_ref());
    let document = match command {
        Command::Completions { shell } => return Ok(completions::run(shell)),
        Command::Pki(command) => pki::run(command)?,
        Command::Context(command) => context::run(command)?,
        Command::Cluster(command) => cluster::run(command, &mut connect()?).await?,
        Command::Member(command) => member::run(command, &mut connect()?).await?,
        Command::User(command) => user::run(command, &mut connect()?).await?,
        Command::Node(command) => node::run(command, &mut connect()?).await?,
        Command::JoinToken(command) => join_token::run(command, &mut connect()?).await?,
        Command::Token(command) => token::run(command, &mut connect()?).await?,
        Command::Role(command) => role::run(command, &mut connect()?).await?,
        Command::Audit(command) => audit::run(command, &mut connect()?).await?,
        Command::Whoami => whoami::run(&mut connect()?).await?,
    };
    Ok(Output::Document(document))
}

/// Runs one parsed command and prints its result on stdout in the chosen format.
pub async fn run(cli: Cli) -> Result<(), CliError> {
    let format = cli.output;
    execute(cli).await?.print(format)
}

/// The whole program for `args` (the first is the program name): parse, run, report.
/// Must not be called from inside a Tokio runtime; use [`run`] there.
pub fn main_with_args<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(err) => {
            // clap formats usage errors, --help and --version itself (exit 2, 0, 0).
            let _ = err.print();
            return ExitCode::from(u8::try_from(err.exit_code()).unwrap_or(EXIT_BAD_INPUT));
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
    let result = match runtime {
        Ok(runtime) => runtime.block_on(run(cli)),
        Err(err) => {
            report(&format!("cannot start the async runtime: {err}"));
            return ExitCode::from(EXIT_OTHER);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            report(&err.to_string());
            ExitCode::from(&err)
        }
    }
}

/// The binary's entry point.
pub fn main() -> ExitCode {
    main_with_args(std::env::args_os())
}

/// One line on stderr, even if the server's message had line breaks.
fn report(message: &str) {
    let line = message.split_whitespace().collect::<Vec<_>>().join(" ");
    let _ = writeln!(std::io::stderr(), "vpnctl: {line}");
}

/// The client for `cli`: flags and `VPNCTL_*` variables first, then the
/// current context, then `127.0.0.1:7000` in plaintext. Each setting falls
/// back on its own, so `--token` with a context uses the context's endpoints
/// and CA (and presents its certificate too, if it has one).
fn client(
    endpoints: Option<&[String]>,
    timeout: Duration,
    ca_cert: Option<&Path>,
    pair: Option<(&Path, &Path)>,
    token: Option<&ApiToken>,
) -> Result<Client, CliError> {
    // Endpoints given explicitly name another cluster than the context's,
    // whose credentials would then be wrong: the context applies only alone.
    let given = endpoints.filter(|e| !e.is_empty());
    let context = if given.is_some() { Default::default() } else { context::current()?.unwrap_or_default() };
    let endpoints = match given {
        Some(given) => given.to_vec(),
        None if !context.endpoints.is_empty() => context.endpoints.clone(),
        None => vec!["127.0.0.1:7000".to_owned()],
    };
    let ca = ca_cert.map(Path::to_path_buf).or(context.ca_cert);
    let pair = match pair {
        Some((cert, key)) => Some((cert.to_path_buf(), key.to_path_buf())),
        None => context.cert.zip(context.key),
    };
    let read = |flag: &str, path: &Path| {
        std::fs::read(path)
            .map_err(|err| CliError::InvalidInput(format!("cannot read {flag} {}: {err}", path.display())))
    };
    let tls = TlsFiles {
        ca_pem: ca.as_deref().map(|p| read("--ca-cert", p)).transpose()?,
        identity: match &pair {
            Some((cert, key)) => Some((read("--cert", cert)?, read("--key", key)?)),
            None => None,
        },
    };
    let token = token.or(context.token.as_ref());
    // A token is a password: it makes a bare host:port speak TLS too (system roots, or --ca-cert).
    let bare_tls = tls.ca_pem.is_some() || tls.identity.is_some() || token.is_some();
    let endpoints = endpoint::parse_endpoints(&endpoints, bare_tls)?;
    let client = Client::new(endpoints, timeout, tls);
    match token {
        Some(token) => client.with_token(token),
        None => Ok(client),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_makes_bare_endpoints_speak_tls_and_refuses_http() {
        let token = ApiToken::from("s3cr3t".to_owned());
        let connect = |endpoint: &str| {
            let endpoints = [endpoint.to_owned()];
            client(Some(&endpoints), Duration::from_secs(1), None, None, Some(&token)).map(|_| ())
        };
        // `with_token` refuses plaintext, so Ok means the bare endpoint became TLS.
        assert!(connect("127.0.0.1:7000").is_ok());
        assert!(connect("https://127.0.0.1:7000").is_ok());
        let err = connect("http://127.0.0.1:7000").err();
        assert_eq!(err.as_ref().map(CliError::exit_code), Some(EXIT_BAD_INPUT));
        assert!(!err.map(|e| e.to_string()).unwrap_or_default().contains("s3cr3t"));
    }
}
