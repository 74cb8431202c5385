//! The command line, as clap derive definitions.
//!
//! Global options are `global = true` so they work after the subcommand too
//! (`vpnctl user list -o json`), which is where operators tend to add them. Access control
//! (`token`, `role`, `audit`) is defined in `cli/access.rs`, `login` and `logout` in
//! `cli/login.rs`.

mod access;
mod login;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use clap_complete::Shell;
use time::OffsetDateTime;
use vpn_pki::contexts::ApiToken;

use crate::output::Format;
use crate::parse::{self, Expiry, Reset};

pub use access::{AuditCommand, AuditListArgs, BindArgs, RoleCommand, SessionCommand, Subject, TokenCommand};
pub use login::{LoginArgs, LogoutArgs};

const LONG_ABOUT: &str = "\
Admin CLI for the clustered VPN control plane.

Any node answers: give several with --endpoints (or VPNCTL_ENDPOINTS) and vpnctl tries them in \
order, moving on when one is down and retrying with backoff until --timeout. Nodes forward \
writes to the leader themselves.

Examples:
  export VPNCTL_ENDPOINTS=10.0.0.1:7000,10.0.0.2:7000,10.0.0.3:7000
  vpnctl cluster status
  vpnctl user add alice            # prints alice's credentials
  vpnctl user add bob --expires 30d --data-limit 50GiB --reset monthly
  vpnctl user list -o json | jq -r '.users[] | select(.status == \"expired\") | .name'
  vpnctl user enable bob --expires 2027-01-31   # serve an expired user again
  vpnctl member add 4 10.0.0.4:7000 --voter
  vpnctl node list
  vpnctl node drain 4              # move its users elsewhere before maintenance
  vpnctl user qr alice             # scan a link with the phone's client
  vpnctl token create --name ci --role operator --ttl 30d   # a credential for a script
  VPNCTL_TOKEN=... vpnctl whoami   # who the cluster takes you for, and what you may do
  vpnctl login --ldap alice        # a session for the next commands (or: login --oidc)
  vpnctl role bind viewer --user alice
  vpnctl audit list --since 1h

Credentials: a client certificate (--cert/--key) or an API token (--token), with the cluster's \
CA (--ca-cert); or a context holding them (`vpnctl context use`), where `vpnctl login` keeps \
its session.

Exit codes: 0 ok, 1 other error, 2 bad input, 3 not found / already exists, \
4 cluster unavailable, 5 unauthenticated, 6 permission denied.";

/// `vpnctl [--endpoints <url,...>] [-o table|json] <command>`
#[derive(Debug, Parser)]
#[command(name = "vpnctl", version, about = "Admin CLI for the clustered VPN control plane")]
#[command(long_about = LONG_ABOUT, propagate_version = true)]
pub struct Cli {
    /// Nodes to talk to, comma-separated: host:port or http(s)://host:port. Any node works.
    /// (Default: the current context's, else 127.0.0.1:7000.) With TLS settings or a token, a
    /// bare host:port speaks TLS; http:// forces plaintext.
    #[arg(long, env = "VPNCTL_ENDPOINTS", value_delimiter = ',', value_name = "URL,...", global = true)]
    pub endpoints: Option<Vec<String>>,

    /// Output format; json prints exactly one document on stdout, for scripts.
    #[arg(short, long, value_enum, default_value_t = Format::Table, global = true)]
    pub output: Format,

    /// How long one request may take, retries included (e.g. 500ms, 10s, 2m).
    #[arg(long, default_value = "10s", value_parser = parse::timeout, global = true)]
    pub timeout: Duration,

    /// PEM file with the cluster's CA (`vpnctl pki init`'s ca.crt): nodes must present
    /// certificates it issued. (Default: the current context's.)
    #[arg(long, env = "VPNCTL_CA_CERT", value_name = "FILE", global = true)]
    pub ca_cert: Option<PathBuf>,

    /// PEM file with this client's certificate (`vpnctl pki client-cert`), with --key.
    #[arg(long, env = "VPNCTL_CERT", value_name = "FILE", global = true, requires = "key")]
    pub cert: Option<PathBuf>,

    /// PEM file with the private key of --cert.
    #[arg(long, env = "VPNCTL_KEY", value_name = "FILE", global = true, requires = "cert")]
    pub key: Option<PathBuf>,

    /// An API token (`vpnctl token create`), sent with every request; no client certificate
    /// is needed then. Only over TLS. Prefer VPNCTL_TOKEN: a flag shows in `ps`. (Default: the
    /// current context's.)
    // Never echoed: the value is hidden from --help, and it cannot fail to parse (clap would
    // quote it); hyphen values are taken so no "did you mean" tip repeats it either.
    #[arg(
        long,
        env = "VPNCTL_TOKEN",
        value_name = "TOKEN",
        global = true,
        hide_env_values = true,
        allow_hyphen_values = true
    )]
    pub token: Option<ApiToken>,

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
    /// Tokens new nodes join with (`vpnd --join HOST:PORT --join-token TOKEN`).
    #[command(subcommand, name = "join-token")]
    JoinToken(JoinTokenCommand),
    /// API tokens: credentials for programs and operators without a client certificate.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Roles (sets of permissions) and who holds them: principals and groups.
    #[command(subcommand)]
    Role(RoleCommand),
    /// Login sessions: end one person's, or everyone's, on every node.
    #[command(subcommand)]
    Session(SessionCommand),
    /// The audit log: who changed what, when, and whether it applied.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Who the cluster takes you for: principal, how authenticated, groups, roles, permissions.
    Whoami,
    /// Log in with an LDAP password or at the OIDC provider; the session goes into a context.
    #[command(long_about = login::LOGIN_ABOUT)]
    Login(LoginArgs),
    /// Take the session (or token) out of a context.
    Logout(LogoutArgs),
    /// List the contexts (named endpoints and credentials) or pick the one in use.
    #[command(subcommand)]
    Context(ContextCommand),
    /// Make the cluster's CA and issue node and client certificates (offline, no node needed).
    #[command(subcommand)]
    Pki(PkiCommand),
    /// Print a shell completion script, e.g. `vpnctl completions bash > /etc/bash_completion.d/vpnctl`.
    Completions {
        /// The shell to generate for.
        shell: Shell,
    },
}

/// The role a join token gives the nodes that join with it.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum JoinRole {
    /// A Raft member (replicates, may vote).
    Controlplane,
    /// Serves users only.
    Dataplane,
}

impl JoinRole {
    pub fn as_str(self) -> &'static str {
        match self {
            JoinRole::Controlplane => "controlplane",
            JoinRole::Dataplane => "dataplane",
        }
    }
}

/// `vpnctl join-token ...`
#[derive(Debug, Subcommand)]
pub enum JoinTokenCommand {
    /// Make a token; prints it alone (the cluster keeps only its hash: it is shown once).
    Create {
        /// The role of the nodes that join with it.
        #[arg(long, value_enum)]
        role: JoinRole,
        /// How long it is valid (e.g. 10m, 1h, 2d; at most 30d).
        #[arg(long, default_value = "1h", value_parser = parse::lifetime)]
        ttl: Duration,
        /// How many nodes may join with it.
        #[arg(long, default_value_t = 1)]
        uses: u32,
    },
    /// The tokens, with their role, expiry and uses left (never their secrets).
    List,
    /// Revoke a token at once (by the id `list` shows).
    Revoke {
        /// The token's id.
        id: String,
    },
}

/// `vpnctl context ...` (the file: $VPNCTL_CONFIG, else ~/.config/vpnctl/config.toml).
#[derive(Debug, Subcommand)]
pub enum ContextCommand {
    /// The contexts, and which one is in use.
    List,
    /// Use this context from now on (flags and VPNCTL_* variables still win).
    Use {
        /// The context's name, as `context list` shows it.
        name: String,
    },
}

/// `vpnctl pki ...`
#[derive(Debug, Subcommand)]
pub enum PkiCommand {
    /// Make a cluster CA (DIR/ca.crt, DIR/ca.key) and a first admin client certificate
    /// (DIR/admin.crt, DIR/admin.key). Keys are 0600; nothing existing is overwritten.
    #[command(long_about = "Make a cluster CA and a first admin client certificate.\n\n\
        Writes DIR/ca.crt, DIR/ca.key (0600), DIR/admin.crt and DIR/admin.key (0600). Keep ca.key \
        offline: whoever holds it can issue any identity, also a new admin certificate if every \
        other admin credential is lost. Then issue each node's certificate with `pki node-cert`.")]
    Init {
        /// The directory to write into (made 0700 when missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Issue a node certificate: DIR2/node.crt, DIR2/node.key (0600) and DIR2/ca.crt.
    NodeCert {
        /// The directory `pki init` wrote (ca.crt and ca.key).
        #[arg(long, value_name = "DIR")]
        ca: PathBuf,
        /// The node's id (its `vpnd --id`); the certificate proves it.
        #[arg(long)]
        id: u64,
        /// Host names or IPs the node is reached at (its --listen/--advertise host), comma-separated.
        #[arg(long, value_delimiter = ',', value_name = "H,...")]
        host: Vec<String>,
        /// controlplane (a Raft member) or dataplane (serves users only).
        #[arg(long, default_value = "controlplane")]
        role: String,
        /// Lifetime in days.
        #[arg(long, default_value_t = 90)]
        days: u32,
        /// The directory to write into (made 0700 when missing).
        #[arg(long, value_name = "DIR2")]
        out: PathBuf,
    },
    /// Issue a client certificate for an operator or a program: DIR3/NAME.crt, NAME.key, ca.crt.
    ClientCert {
        /// The directory `pki init` wrote (ca.crt and ca.key).
        #[arg(long, value_name = "DIR")]
        ca: PathBuf,
        /// The principal the certificate names (1-64 of a-z, 0-9, '.', '_', '-').
        #[arg(long)]
        name: String,
        /// Lifetime in days.
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// The directory to write into (made 0700 when missing).
        #[arg(long, value_name = "DIR3")]
        out: PathBuf,
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
    ///
    /// Without flags the user never expires, has no data limit and may be placed on any node.
    Add(AddArgs),
    /// List all users with their status, usage and expiry.
    List,
    /// Show one user: limits, usage, placements, subscription URL and credentials.
    Show(NameArg),
    /// Delete a user; their access ends on every node.
    Delete(NameArg),
    /// Block a user without deleting them (keeps their credentials and limits).
    Disable(NameArg),
    /// Serve a disabled, expired or limited user again.
    ///
    /// An expired or limited user needs a new limit in the same command (--expires,
    /// --data-limit) while the old one still applies; the server refuses otherwise.
    Enable(EnableArgs),
    /// Change a user's expiry, data limit or reset period without enabling them.
    Limit(LimitArgs),
    /// Start a new accounting period now: used traffic back to zero; a limited user is served again.
    ResetTraffic(NameArg),
    /// Print the user's client links (ss://, vless://), one per node and inbound.
    Links(NameArg),
    /// Print each of the user's links as a QR code for a phone to scan (dark terminal background).
    Qr(NameArg),
    /// Give the user a new subscription URL; the old one stops working.
    RotateToken(NameArg),
}

/// `vpnctl node ...`
#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// List the data-plane nodes with their status, users and generations.
    List,
    /// Show one data-plane node: inbounds, labels, capacity, generations, engine errors.
    Show(NodeArg),
    /// Give the node no new users; those on it stay.
    Cordon(NodeArg),
    /// Put a cordoned or draining node back into normal scheduling (users are not moved back).
    Uncordon(NodeArg),
    /// Move every user off the node, e.g. before maintenance.
    ///
    /// Each user leaves the node only once its new node serves it; `node uncordon` ends the drain.
    Drain(NodeArg),
}

/// The `<id>` argument of the node commands.
#[derive(Debug, Args)]
pub struct NodeArg {
    /// The node's id (its `vpnd --id`), as `vpnctl node list` shows it.
    pub id: u64,
}

/// The `<name>` argument of the user commands.
#[derive(Debug, Args)]
pub struct NameArg {
    /// User name: 1-64 characters of a-z, 0-9, '.', '_', '-', starting with a letter or digit.
    pub name: String,
}

/// `vpnctl user add`.
#[derive(Debug, Args)]
pub struct AddArgs {
    /// User name: 1-64 characters of a-z, 0-9, '.', '_', '-', starting with a letter or digit.
    pub name: String,
    /// When the user stops being served: RFC 3339 (2027-01-31T00:00:00Z), a date (2027-01-31,
    /// midnight UTC) or a duration from now (12h, 30d, 2w). Default: never.
    #[arg(long, value_name = "WHEN", value_parser = parse::expiry)]
    pub expires: Option<OffsetDateTime>,
    /// Traffic allowed per period, up and down together: bytes or a size (500MB, 50GiB, 1.5TB;
    /// KB..TB are powers of 1000, KiB..TiB of 1024). 0 or unlimited: no limit (the default).
    #[arg(long, value_name = "SIZE", value_parser = parse::data_limit)]
    pub data_limit: Option<u64>,
    /// How often the used traffic starts again from zero. Default: none.
    #[arg(long, value_enum, value_name = "PERIOD")]
    pub reset: Option<Reset>,
    /// Place the user only on nodes carrying all these labels (their `vpnd --labels`),
    /// e.g. region=eu,tier=gold.
    #[arg(long, value_name = "K=V,...", value_parser = parse::constraint)]
    pub constraint: Option<HashMap<String, String>>,
}

/// `vpnctl user enable`.
#[derive(Debug, Args)]
pub struct EnableArgs {
    /// User name.
    pub name: String,
    /// A new expiry: RFC 3339, a date (2027-01-31), a duration from now (30d), or never.
    #[arg(long, value_name = "WHEN", value_parser = parse::expiry_or_never)]
    pub expires: Option<Expiry>,
    /// A new data limit per period (50GiB, 1.5TB, bytes); 0 or unlimited: no limit.
    #[arg(long, value_name = "SIZE", value_parser = parse::data_limit)]
    pub data_limit: Option<u64>,
}

/// `vpnctl user limit`.
#[derive(Debug, Args)]
pub struct LimitArgs {
    /// User name.
    pub name: String,
    #[command(flatten)]
    pub change: LimitChange,
}

/// What `user limit` changes: at least one of these, so a bare `user limit alice` is a usage
/// error rather than a write that changes nothing.
#[derive(Debug, Args)]
#[group(required = true, multiple = true)]
pub struct LimitChange {
    /// The new expiry: RFC 3339, a date (2027-01-31), a duration from now (30d), or never.
    #[arg(long, value_name = "WHEN", value_parser = parse::expiry_or_never)]
    pub expires: Option<Expiry>,
    /// The new data limit per period (50GiB, 1.5TB, bytes); 0 or unlimited: no limit.
    #[arg(long, value_name = "SIZE", value_parser = parse::data_limit)]
    pub data_limit: Option<u64>,
    /// The new reset period; the current period keeps its start.
    #[arg(long, value_enum, value_name = "PERIOD")]
    pub reset: Option<Reset>,
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
    fn global_options_work_after_the_subcommand() {
        let cli = Cli::try_parse_from(["vpnctl", "user", "list", "-o", "json", "--endpoints", "a:1,b:2"]);
        let cli = cli.map_err(|e| e.to_string());
        assert_eq!(cli.as_ref().map(|c| c.output), Ok(Format::Json));
        assert_eq!(cli.map(|c| c.endpoints), Ok(Some(vec!["a:1".into(), "b:2".into()])));
    }

    #[test]
    fn limit_flags_parse_into_the_command() {
        let args = ["vpnctl", "user", "limit", "bob", "--expires", "never", "--data-limit", "1.5GiB"];
        let Ok(Cli { command: Command::User(UserCommand::Limit(limit)), .. }) = Cli::try_parse_from(args) else {
            panic!("user limit parses");
        };
        assert_eq!((limit.change.expires, limit.change.data_limit), (Some(Expiry::Never), Some(1_610_612_736)));
        let args = ["vpnctl", "user", "add", "bob", "--reset", "monthly", "--constraint", "region=eu"];
        let Ok(Cli { command: Command::User(UserCommand::Add(add)), .. }) = Cli::try_parse_from(args) else {
            panic!("user add parses");
        };
        assert_eq!(add.reset, Some(Reset::Monthly));
        assert_eq!(add.constraint.and_then(|c| c.get("region").cloned()).as_deref(), Some("eu"));
    }

    #[test]
    fn bad_flag_values_name_the_flag_and_exit_2() {
        let cases: [&[&str]; 6] = [
            &["user", "add", "bob", "--expires", "soon"],
            &["user", "add", "bob", "--expires", "never"],
            &["user", "add", "bob", "--data-limit", "50G"],
            &["user", "add", "bob", "--reset", "yearly"],
            &["user", "enable", "bob", "--data-limit", "many"],
            &["user", "limit", "bob", "--expires", "2020-01-01"],
        ];
        for args in cases {
            let err = Cli::try_parse_from(std::iter::once(&"vpnctl").chain(args)).err();
            let flag = args[3];
            assert_eq!(err.as_ref().map(|e| e.exit_code()), Some(2), "{args:?}");
            let text = err.map(|e| e.to_string()).unwrap_or_default();
            assert!(text.contains(flag), "{args:?}: {text}");
        }
        let err = Cli::try_parse_from(["vpnctl", "user", "limit", "bob"]).err();
        assert_eq!(err.as_ref().map(|e| e.exit_code()), Some(2));
        assert!(err.map(|e| e.to_string()).unwrap_or_default().contains("--data-limit"));
    }

    #[test]
    fn the_token_is_never_shown_by_help_or_debug() {
        let cli = Cli::try_parse_from(["vpnctl", "--token", "-s3cr3t", "whoami"]);
        let cli = cli.map_err(|e| e.to_string());
        assert_eq!(cli.as_ref().ok().and_then(|c| c.token.as_ref()).map(|t| t.expose()), Some("-s3cr3t"));
        assert!(!format!("{cli:?}").contains("s3cr3t"), "{cli:?}");
        let command = Cli::command();
        let token = command.get_arguments().find(|a| a.get_id() == "token");
        assert!(
            token.is_some_and(|a| a.is_hide_env_values_set() && a.is_global_set()),
            "VPNCTL_TOKEN's value stays out of --help"
        );
    }

    #[test]
    fn usage_errors_exit_2() {
        let err = Cli::try_parse_from(["vpnctl", "member", "add", "x", "a:1"]).err();
        assert_eq!(err.map(|e| e.exit_code()), Some(2));
    }
}
