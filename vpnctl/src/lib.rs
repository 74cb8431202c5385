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
//! - [`connect`]: the settings a command connects with (flags, else the context).
//! - [`client`]: failover, retry with backoff, leader hints; the API token on every request.
//! - [`prompt`]: the LDAP password (no echo on a terminal) and ID token files of `login`.
//! - [`oidc_device`]: `login --oidc`'s device flow (RFC 8628) at the cluster's provider, over
//!   [`fetch`], a small bounded HTTPS client.
//! - [`output`]: table and JSON rendering.
//! - [`human`]: sizes and relative times for tables (`1.2 GiB of 50 GiB (2.4%)`, `in 30 days`).
//! - [`commands`]: one module per command group (`cluster`, `member`, `user` with `user_limits`
//!   and `user_links`, `node`, `pki` (offline: the CA and its certificates), `join-token`,
//!   access control: `token` (API tokens), `role`, `audit`, `whoami`, `login` (and `logout`);
//!   `context`, `completions`).
//! - [`qr`]: terminal QR codes for `user qr`.
//! - [`error`]: [`CliError`] and its exit codes.
//!
//! Other crates (cluster tests) call [`execute`] to get a command's result without a process,
//! or [`main_with_args`] to run it as the binary would.

pub mod cli;
pub mod client;
pub mod commands;
pub mod connect;
pub mod endpoint;
pub mod error;
pub mod fetch;
pub mod human;
pub mod oidc_device;
pub mod output;
pub mod parse;
pub mod prompt;
pub mod qr;

use std::ffi::OsString;
use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

pub use cli::{Cli, Command};
pub use error::CliError;
pub use output::{Document, Format, Output};

use commands::{
    audit, cluster, completions, context, join_token, login, member, node, pki, role, session, token, user, whoami,
};
use connect::Given;
use error::{EXIT_BAD_INPUT, EXIT_OTHER};

/// Runs one parsed command and returns its result unprinted.
pub async fn execute(cli: Cli) -> Result<Output, CliError> {
    let Cli { endpoints, timeout, ca_cert, cert, key, token: api_token, command, .. } = cli;
    let given = Given {
        endpoints: endpoints.as_deref().filter(|e| !e.is_empty()),
        ca_cert: ca_cert.as_deref(),
        pair: cert.as_deref().zip(key.as_deref()),
    };
    let connect = || connect::client(given, timeout, api_token.as_ref());
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
        Command::Session(command) => session::run(command, &mut connect()?).await?,
        Command::Audit(command) => audit::run(command, &mut connect()?).await?,
        Command::Whoami => whoami::run(&mut connect()?).await?,
        // A login needs no credential: it makes one.
        Command::Login(args) => login::login(args, given, timeout).await?,
        Command::Logout(args) => login::logout(args)?,
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
