//! The command line, as clap derive definitions.
//!
//! Global options are `global = true` so they work after the subcommand too
//! (`vpnctl user list -o json`), which is where operators tend to add them.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use clap_complete::Shell;

use crate::output::Format;

const LONG_ABOUT: &str = "\
Admin CLI for the clustered VPN control plane.

Any node answers: give several with --endpoints (or VPNCTL_ENDPOINTS) and vpnctl tries them in \
order, moving on when one is down and retrying with backoff until --timeout. Nodes forward \
writes to the leader themselves.

Examples:
  export VPNCTL_ENDPOINTS=10.0.0.1:7000,10.0.0.2:7000,10.0.0.3:7000
  vpnctl cluster status
  vpnctl user add alice            # prints alice's credentials
  vpnctl user list -o json | jq -r '.users[] | select(.status == \"disabled\") | .name'
  vpnctl member add 4 10.0.0.4:7000 --voter
  vpnctl node list
  vpnctl user qr alice             # scan a link with the phone's client

Exit codes: 0 ok, 1 other error, 2 bad input, 3 not found / already exists, \
4 cluster unavailable.";

/// `vpnctl [--endpoints <url,...>] [-o table|json] <command>`
#[derive(Debug, Parser)]
#[command(name = "vpnctl", version, about = "Admin CLI for the clustered VPN control plane")]
#[command(long_about = LONG_ABOUT, propagate_version = true)]
pub struct Cli {
    /// Nodes to talk to, comma-separated: host:port or http(s)://host:port. Any node works.
    #[arg(
        long,
        env = "VPNCTL_ENDPOINTS",
        value_delimiter = ',',
        default_value = "127.0.0.1:7000",
        value_name = "URL,...",
        global = true
    )]
    pub endpoints: Vec<String>,

    /// Output format; json prints exactly one document on stdout, for scripts.
    #[arg(short, long, value_enum, default_value_t = Format::Table, global = true)]
    pub output: Format,

    /// How long one request may take, retries included (e.g. 500ms, 10s, 2m).
    #[arg(long, default_value = "10s", value_parser = parse_duration, global = true)]
    pub timeout: Duration,

    /// PEM file with the CA that signed the nodes' certificates, for https endpoints whose CA
    /// is not in the system store.
    #[arg(long, env = "VPNCTL_CA_CERT", value_name = "FILE", global = true)]
    pub ca_cert: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

/// The top-level command groups.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show the cluster's leader, term and members.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Add or remove control-plane members (Raft nodes).
    #[command(subcommand)]
    Member(MemberCommand),
    /// Create, inspect, disable and delete VPN users; print their client links.
    #[command(subcommand)]
    User(UserCommand),
    /// Inspect the data-plane nodes (the nodes that serve users).
    #[command(subcommand)]
    Node(NodeCommand),
    /// Print a shell completion script, e.g. `vpnctl completions bash > /etc/bash_completion.d/vpnctl`.
    Completions {
        /// The shell to generate for.
        shell: Shell,
    },
}

/// `vpnctl cluster ...`
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Leader, term, members and how far the answering node has applied the log.
    Status,
}

/// `vpnctl member ...`
#[derive(Debug, Subcommand)]
pub enum MemberCommand {
    /// Add a node (already running vpnd) to the cluster; waits until it has caught up.
    #[command(long_about = "Add a node (already running vpnd) to the cluster.\n\nThe node joins as a \
        learner, the call waits until it has caught up with the log, and with --voter it is \
        then promoted to voter. Raise --timeout for a large state. Running it again for the \
        same id and address is harmless.")]
    Add {
        /// The node's id (its `vpnd --id`).
        id: u64,
        /// The node's gRPC address (its `vpnd --listen`), host:port.
        addr: String,
        /// Promote the node to voter once it has caught up (otherwise it stays a learner).
        #[arg(long)]
        voter: bool,
    },
    /// Remove a node from the cluster (stop its vpnd afterwards).
    Remove {
        /// The node's id, as shown by `vpnctl cluster status`.
        id: u64,
    },
}

/// `vpnctl user ...`
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user; prints the generated credentials.
    Add(NameArg),
    /// List all users.
    List,
    /// Show one user, credentials included.
    Show(NameArg),
    /// Delete a user; their access ends on every node.
    Delete(NameArg),
    /// Block a user without deleting them (keeps their credentials).
    Disable(NameArg),
    /// Let a disabled user connect again.
    Enable(NameArg),
    /// Print the user's client links (ss://, vless://), one per node and inbound.
    Links(NameArg),
    /// Print each of the user's links as a QR code for a phone to scan (dark terminal background).
    Qr(NameArg),
}

/// `vpnctl node ...`
#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// List the data-plane nodes with their status, users and generations.
    List,
    /// Show one data-plane node: inbounds, labels, capacity, generations.
    Show {
        /// The node's id (its `vpnd --id`).
        id: u64,
    },
}

/// The `<name>` argument of the user commands.
#[derive(Debug, Args)]
pub struct NameArg {
    /// User name: 1-64 characters of a-z, 0-9, '.', '_', '-', starting with a letter or digit.
    pub name: String,
}

/// Parses `500ms`, `10s`, `2m` or a bare number of seconds.
fn parse_duration(input: &str) -> Result<Duration, String> {
    let input = input.trim();
    let split = input.find(|c: char| !c.is_ascii_digit()).unwrap_or(input.len());
    let (number, unit) = input.split_at(split);
    let number: u64 = number.parse().map_err(|_| format!("'{input}' is not a duration; use e.g. 500ms, 10s or 2m"))?;
    let duration = match unit {
        "ms" => Duration::from_millis(number),
        "" | "s" => Duration::from_secs(number),
        "m" => Duration::from_secs(number.saturating_mul(60)),
        _ => return Err(format!("unknown unit '{unit}'; use ms, s or m")),
    };
    if duration.is_zero() {
        return Err("the timeout must be more than zero".into());
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("1h").is_err());
        assert!(parse_duration("ten").is_err());
    }

    #[test]
    fn global_options_work_after_the_subcommand() {
        let cli = Cli::try_parse_from(["vpnctl", "user", "list", "-o", "json", "--endpoints", "a:1,b:2"]);
        let cli = cli.map_err(|e| e.to_string());
        assert_eq!(cli.as_ref().map(|c| c.output), Ok(Format::Json));
        assert_eq!(cli.map(|c| c.endpoints), Ok(vec!["a:1".into(), "b:2".into()]));
    }

    #[test]
    fn usage_errors_exit_2() {
        let err = Cli::try_parse_from(["vpnctl", "member", "add", "x", "a:1"]).err();
        assert_eq!(err.map(|e| e.exit_code()), Some(2));
    }
}
