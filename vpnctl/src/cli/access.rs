//! The command line of access control (`vpn.v1.Access`): API tokens, roles and who holds
//! them, and the audit log. Permissions are checked against the server's fixed list here, so
//! a typo fails with exit 2 before any network call.

use std::time::Duration;

use clap::builder::PossibleValuesParser;
use clap::{Args, Subcommand};

use crate::parse;

/// Every permission a role can hold: the server's fixed list (`vpn.v1.Role.permissions`).
pub const PERMISSIONS: [&str; 9] = [
    "users.read",
    "users.write",
    "users.secrets",
    "nodes.read",
    "nodes.write",
    "members.write",
    "tokens.write",
    "roles.write",
    "audit.read",
];

const TOKEN_CREATE_ABOUT: &str = "\
Make an API token for a program or an operator, and print the secret alone.

The cluster keeps only a hash of it: the secret is shown this once. It acts as the principal \
token:NAME with the role's permissions until it expires or is revoked. Give it to vpnctl as \
VPNCTL_TOKEN (a --token flag shows in `ps`) or as `token` in a context; other gRPC clients \
send `authorization: Bearer <token>`. Tokens go only over TLS.

Examples:
  vpnctl token create --name billing-bot --role viewer --ttl 30d
  export VPNCTL_TOKEN=$(vpnctl token create --name ci --role operator)";

const ROLE_CREATE_ABOUT: &str = "\
Make a custom role from the fixed list of permissions.

The built-in roles cover most needs: admin (everything), operator (users.* and nodes.*), \
viewer (users.read, nodes.read) and auditor (audit.read). A custom role grants exactly what a \
program needs; give it to principals or groups with `role bind`.

Permissions: users.read (list and show users, credentials redacted), users.write (add, change, \
delete users), users.secrets (credentials and links), nodes.read (cluster status, nodes), \
nodes.write (cordon, uncordon, drain), members.write (members, join tokens), tokens.write (API \
tokens, login sessions), roles.write (roles and bindings), audit.read (the audit log).

Examples:
  vpnctl role create support --permissions users.read,users.secrets
  vpnctl role bind support --group ldap:helpdesk";

const ROLE_BIND_ABOUT: &str = "\
Give a role to a principal (--user) or a group (--group).

Principals are named as the cluster prints them (`vpnctl whoami`, `audit list`): a client \
certificate by its name (alice), an API token as token:NAME, an LDAP user as ldap:USER, an OIDC \
user as oidc:NAME; groups as ldap:GROUP or oidc:GROUP. A principal may hold several roles.

Examples:
  vpnctl role bind operator --user alice
  vpnctl role bind viewer --group ldap:support";

const AUDIT_LIST_ABOUT: &str = "\
The audit log, newest first: every change, who made it (and how they authenticated), from \
where, on what, and whether it applied. Records are written in the same Raft entry as the \
change, so the log and the state always agree.

Examples:
  vpnctl audit list --since 1h
  vpnctl audit list --principal token:billing-bot --limit 20
  vpnctl audit list --method DeleteUser -o json | jq -r '.records[].target'";

/// `vpnctl token ...`
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make an API token; prints the secret alone (shown once: the cluster keeps only its hash).
    #[command(long_about = TOKEN_CREATE_ABOUT)]
    Create {
        /// The token's name (unique); it acts as the principal token:NAME.
        #[arg(long)]
        name: String,
        /// The role it acts with (`vpnctl role list`), e.g. viewer or operator.
        #[arg(long)]
        role: String,
        /// How long it is valid (e.g. 90m, 12h, 30d); 0 or absent: the server's default, 90 days.
        #[arg(long, value_name = "DURATION", value_parser = parse::duration)]
        ttl: Option<Duration>,
    },
    /// The API tokens, with role, expiry and creator (never their secrets).
    List,
    /// Revoke a token at once: requests carrying it fail from now on.
    Revoke {
        /// The token's name, as `token list` shows it.
        name: String,
    },
}

/// `vpnctl session ...`
#[derive(Debug, Subcommand)]
pub enum SessionCommand {
    /// End login sessions on every node at once: every session one person holds now (they may
    /// log in again), or everyone's (the cluster's session key is replaced).
    #[command(group(clap::ArgGroup::new("whose").required(true).args(["user", "all"])))]
    Revoke {
        /// The principal whose sessions end, as printed: ldap:USER or oidc:NAME.
        #[arg(long, value_name = "PRINCIPAL")]
        user: Option<String>,
        /// End every session of everyone.
        #[arg(long)]
        all: bool,
    },
}

/// `vpnctl role ...`
#[derive(Debug, Subcommand)]
pub enum RoleCommand {
    /// The roles, with their permissions and the principals and groups bound to them.
    List,
    /// One role: its permissions, principals and groups.
    Show {
        /// The role's name, as `role list` shows it.
        name: String,
    },
    /// Make a custom role from permissions (the built-in roles cannot be changed).
    #[command(long_about = ROLE_CREATE_ABOUT)]
    Create {
        /// The new role's name.
        name: String,
        /// Its permissions, comma-separated.
        #[arg(
            long,
            required = true,
            value_delimiter = ',',
            value_name = "PERMISSION,...",
            value_parser = PossibleValuesParser::new(PERMISSIONS)
        )]
        permissions: Vec<String>,
    },
    /// Delete a custom role and its bindings (built-in roles stay).
    Delete {
        /// The role's name.
        name: String,
    },
    /// Give a role to a principal or a group.
    #[command(long_about = ROLE_BIND_ABOUT)]
    Bind(BindArgs),
    /// Take a role from a principal or a group.
    Unbind(BindArgs),
}

/// `role bind` and `role unbind`: a role and exactly one principal or group.
#[derive(Debug, Args)]
pub struct BindArgs {
    /// The role's name, as `role list` shows it.
    pub role: String,
    #[command(flatten)]
    pub subject: Subject,
}

/// Who a binding is for: exactly one of them, so a bare `role bind viewer` is a usage error.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct Subject {
    /// A principal: a certificate's name (alice), token:NAME, ldap:USER or oidc:NAME.
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,
    /// A group: ldap:GROUP or oidc:GROUP.
    #[arg(long, value_name = "NAME")]
    pub group: Option<String>,
}

/// `vpnctl audit ...`
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// The audit log, newest first: who changed what, when, from where, and whether it applied.
    #[command(long_about = AUDIT_LIST_ABOUT)]
    List(AuditListArgs),
}

/// `vpnctl audit list`: filters the server applies, and a cap on what is fetched.
#[derive(Debug, Args)]
pub struct AuditListArgs {
    /// Only records of the last DURATION (e.g. 90m, 12h, 7d). Default: all that are kept.
    #[arg(long, value_name = "DURATION", value_parser = parse::lifetime)]
    pub since: Option<Duration>,
    /// Only this principal's records, as printed (alice, token:billing-bot, ldap:bob).
    #[arg(long, value_name = "NAME")]
    pub principal: Option<String>,
    /// Only this method's records, e.g. CreateUser or BindRole.
    #[arg(long, value_name = "NAME")]
    pub method: Option<String>,
    /// At most N records, the newest. Default: all.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: Option<u32>,
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn parse(args: &[&str]) -> Result<Command, clap::Error> {
        Cli::try_parse_from(std::iter::once(&"vpnctl").chain(args)).map(|cli| cli.command)
    }

    fn usage_error(args: &[&str]) -> (i32, String) {
        match parse(args) {
            Ok(command) => panic!("{args:?} parsed as {command:?}"),
            Err(err) => (err.exit_code(), err.to_string()),
        }
    }

    #[test]
    fn token_commands_parse() {
        let create = parse(&["token", "create", "--name", "ci", "--role", "operator", "--ttl", "30d"]);
        let Ok(Command::Token(TokenCommand::Create { name, role, ttl })) = create else {
            panic!("token create parses: {create:?}");
        };
        assert_eq!((name.as_str(), role.as_str(), ttl), ("ci", "operator", Some(Duration::from_secs(30 * 86_400))));
        let create = parse(&["token", "create", "--name", "ci", "--role", "viewer"]);
        assert!(matches!(create, Ok(Command::Token(TokenCommand::Create { ttl: None, .. }))), "{create:?}");
        let revoke = parse(&["token", "revoke", "ci"]);
        assert!(matches!(&revoke, Ok(Command::Token(TokenCommand::Revoke { name })) if name == "ci"), "{revoke:?}");
        assert!(matches!(parse(&["token", "list"]), Ok(Command::Token(TokenCommand::List))));
        let (code, text) = usage_error(&["token", "create", "--name", "ci", "--role", "viewer", "--ttl", "2w"]);
        assert_eq!(code, 2);
        assert!(text.contains("--ttl") && text.contains("unknown unit 'w'"), "{text}");
        assert_eq!(usage_error(&["token", "create", "--name", "ci"]).0, 2, "--role is required");
    }

    #[test]
    fn role_create_takes_only_known_permissions() {
        let create = parse(&["role", "create", "support", "--permissions", "users.read,users.secrets"]);
        let Ok(Command::Role(RoleCommand::Create { name, permissions })) = create else {
            panic!("role create parses: {create:?}");
        };
        assert_eq!((name.as_str(), permissions), ("support", vec!["users.read".into(), "users.secrets".into()]));
        let (code, text) = usage_error(&["role", "create", "support", "--permissions", "users.read,users.delete"]);
        assert_eq!(code, 2);
        assert!(text.contains("'users.delete'") && text.contains("--permissions"), "{text}");
        for permission in PERMISSIONS {
            assert!(text.contains(permission), "the valid ones are listed: {permission}: {text}");
        }
        assert_eq!(usage_error(&["role", "create", "support"]).0, 2, "--permissions is required");
    }

    #[test]
    fn bind_takes_exactly_one_of_user_and_group() {
        let bind = parse(&["role", "bind", "viewer", "--user", "token:ci"]);
        let Ok(Command::Role(RoleCommand::Bind(args))) = bind else { panic!("role bind parses: {bind:?}") };
        assert_eq!(
            (args.role.as_str(), args.subject.user.as_deref(), args.subject.group),
            ("viewer", Some("token:ci"), None)
        );
        let unbind = parse(&["role", "unbind", "viewer", "--group", "ldap:ops"]);
        let Ok(Command::Role(RoleCommand::Unbind(args))) = unbind else { panic!("role unbind parses: {unbind:?}") };
        assert_eq!((args.subject.user, args.subject.group.as_deref()), (None, Some("ldap:ops")));
        for command in ["bind", "unbind"] {
            let (code, text) = usage_error(&["role", command, "viewer", "--user", "a", "--group", "ldap:b"]);
            assert_eq!(code, 2, "{text}");
            assert!(text.contains("cannot be used with"), "{text}");
            let (code, text) = usage_error(&["role", command, "viewer"]);
            assert_eq!(code, 2, "{text}");
            assert!(text.contains("--user") && text.contains("--group"), "{text}");
        }
    }

    #[test]
    fn role_list_show_delete_parse() {
        assert!(matches!(parse(&["role", "list"]), Ok(Command::Role(RoleCommand::List))));
        assert!(
            matches!(parse(&["role", "show", "admin"]), Ok(Command::Role(RoleCommand::Show { name })) if name == "admin")
        );
        assert!(
            matches!(parse(&["role", "delete", "x"]), Ok(Command::Role(RoleCommand::Delete { name })) if name == "x")
        );
    }

    #[test]
    fn audit_list_filters_parse_and_bad_values_exit_2() {
        let args =
            ["audit", "list", "--since", "1h", "--principal", "token:ci", "--method", "CreateUser", "--limit", "5"];
        let Ok(Command::Audit(AuditCommand::List(list))) = parse(&args) else { panic!("audit list parses") };
        assert_eq!(list.since, Some(Duration::from_secs(3600)));
        assert_eq!(
            (list.principal.as_deref(), list.method.as_deref(), list.limit),
            (Some("token:ci"), Some("CreateUser"), Some(5))
        );
        for (bad, flag) in
            [(["--since", "0"], "--since"), (["--since", "soon"], "--since"), (["--limit", "0"], "--limit")]
        {
            let (code, text) = usage_error(&[&["audit", "list"][..], &bad].concat());
            assert_eq!(code, 2, "{bad:?}");
            assert!(text.contains(flag), "{bad:?}: {text}");
        }
    }

    #[test]
    fn whoami_parses() {
        assert!(matches!(parse(&["whoami", "-o", "json"]), Ok(Command::Whoami)));
    }
}
