//! Who may do what, replicated: custom roles, the bindings of principals
//! and groups to roles, API tokens (a hash of each secret, never the
//! secret), and the audit log, whose records are written by the same
//! entry as the change they describe (see [`crate::command::Command::Audited`]).
//!
//! The built-in roles are code, not state: every replica of every version
//! agrees on them, and nobody can edit `admin` away. Their bindings are
//! state, with one fixed binding: the client-certificate principal `admin`
//! (what `vpnctl pki init` issues) is always bound to `admin`, so whoever
//! holds the CA key can recover from losing every other admin credential by
//! issuing a new `admin` certificate (Kubernetes' `system:masters`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::command::{CommandResponse, Refusal};
use crate::state::State;

/// One right in the fixed list roles draw on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Permission {
    #[serde(rename = "users.read")]
    UsersRead,
    #[serde(rename = "users.write")]
    UsersWrite,
    /// Users' credentials and subscription tokens: without it they are redacted.
    #[serde(rename = "users.secrets")]
    UsersSecrets,
    #[serde(rename = "nodes.read")]
    NodesRead,
    #[serde(rename = "nodes.write")]
    NodesWrite,
    /// Members, join tokens.
    #[serde(rename = "members.write")]
    MembersWrite,
    /// API tokens.
    #[serde(rename = "tokens.write")]
    TokensWrite,
    /// Custom roles and every binding.
    #[serde(rename = "roles.write")]
    RolesWrite,
    #[serde(rename = "audit.read")]
    AuditRead,
}

impl Permission {
    pub const ALL: [Permission; 9] = [
        Permission::UsersRead,
        Permission::UsersWrite,
        Permission::UsersSecrets,
        Permission::NodesRead,
        Permission::NodesWrite,
        Permission::MembersWrite,
        Permission::TokensWrite,
        Permission::RolesWrite,
        Permission::AuditRead,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Permission::UsersRead => "users.read",
            Permission::UsersWrite => "users.write",
            Permission::UsersSecrets => "users.secrets",
            Permission::NodesRead => "nodes.read",
            Permission::NodesWrite => "nodes.write",
            Permission::MembersWrite => "members.write",
            Permission::TokensWrite => "tokens.write",
            Permission::RolesWrite => "roles.write",
            Permission::AuditRead => "audit.read",
        }
    }

    fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Permission {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Permission::ALL.into_iter().find(|p| p.as_str() == s).ok_or_else(|| {
            let all: Vec<&str> = Permission::ALL.iter().map(|p| p.as_str()).collect();
            format!("{s:?} is not a permission: use {}", all.join(", "))
        })
    }
}

/// A set of permissions, as one word: checking a call is one AND.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Permissions(u16);

impl Permissions {
    pub const NONE: Permissions = Permissions(0);

    pub fn of(list: &[Permission]) -> Self {
        Permissions(list.iter().fold(0, |bits, p| bits | p.bit()))
    }

    pub fn all() -> Self {
        Self::of(&Permission::ALL)
    }

    pub fn contains(self, p: Permission) -> bool {
        self.0 & p.bit() != 0
    }

    pub fn union(self, other: Permissions) -> Self {
        Permissions(self.0 | other.0)
    }

    /// What `other` holds that this set does not.
    pub fn missing(self, other: Permissions) -> Permissions {
        Permissions(other.0 & !self.0)
    }

    pub fn list(self) -> Vec<Permission> {
        Permission::ALL.into_iter().filter(|p| self.contains(*p)).collect()
    }
}

/// The principal that is always an admin (see the module's docs).
pub const BREAK_GLASS: &str = "admin";

/// The roles every cluster has, with what each may do.
pub const BUILTIN_ROLES: [(&str, &[Permission]); 4] = [
    ("admin", &Permission::ALL),
    (
        "operator",
        &[
            Permission::UsersRead,
            Permission::UsersWrite,
            Permission::UsersSecrets,
            Permission::NodesRead,
            Permission::NodesWrite,
        ],
    ),
    ("viewer", &[Permission::UsersRead, Permission::NodesRead]),
    ("auditor", &[Permission::AuditRead]),
];

fn builtin(name: &str) -> Option<Permissions> {
    BUILTIN_ROLES.iter().find(|(n, _)| *n == name).map(|(_, p)| Permissions::of(p))
}

/// Who is bound to one role.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bindings {
    #[serde(default)]
    pub users: BTreeSet<String>,
    #[serde(default)]
    pub groups: BTreeSet<String>,
}

/// What a binding names: a principal as printed, or a group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Subject {
    User(String),
    Group(String),
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::User(name) => write!(f, "user {name}"),
            Subject::Group(name) => write!(f, "group {name}"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiToken {
    pub name: String,
    pub role: String,
    /// SHA-256 of the secret, hex: the secret itself is never stored.
    pub secret_sha256: String,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
    /// The principal that created it, as printed.
    pub created_by: String,
}

/// Roles, bindings and API tokens: small, kept whole under one key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Access {
    /// Custom roles by name, with their permissions.
    #[serde(default)]
    pub roles: BTreeMap<String, BTreeSet<Permission>>,
    /// By role name (built-in or custom).
    #[serde(default)]
    pub bindings: BTreeMap<String, Bindings>,
    /// By token name.
    #[serde(default)]
    pub api_tokens: BTreeMap<String, ApiToken>,
    /// The key (hex, 256 bits) every node signs and checks login sessions
    /// with; made once by a leader. Whoever reads it can mint sessions, as
    /// whoever reads a data dir can read every user's credentials.
    #[serde(default)]
    pub session_key: Option<String>,
    /// Per principal, how many times its sessions were revoked: a session
    /// carries the count at its login and is refused once it is behind
    /// (no clock is compared, so a skewed node cannot keep a session alive).
    #[serde(default)]
    pub session_epochs: BTreeMap<String, u64>,
}

impl Default for Access {
    /// A fresh cluster: the admin certificate of `vpnctl pki init` is an admin.
    fn default() -> Self {
        let admin = Bindings { users: BTreeSet::from(["admin".to_owned()]), groups: BTreeSet::new() };
        Access {
            roles: BTreeMap::new(),
            bindings: BTreeMap::from([("admin".to_owned(), admin)]),
            api_tokens: BTreeMap::new(),
            session_key: None,
            session_epochs: BTreeMap::new(),
        }
    }
}

impl Access {
    /// A role's permissions, built-in or custom; `None` when there is no such role.
    pub fn role(&self, name: &str) -> Option<Permissions> {
        builtin(name)
            .or_else(|| self.roles.get(name).map(|ps| Permissions::of(&ps.iter().copied().collect::<Vec<_>>())))
    }

    /// Every role name, built-in first then custom, each with its permissions.
    pub fn roles(&self) -> Vec<(String, bool, Permissions)> {
        let builtins = BUILTIN_ROLES.iter().map(|(n, p)| ((*n).to_owned(), true, Permissions::of(p)));
        let custom = self.roles.keys().filter_map(|n| Some((n.clone(), false, self.role(n)?)));
        builtins.chain(custom).collect()
    }

    /// The roles bound to `user` or to one of `groups`.
    pub fn roles_of(&self, user: &str, groups: &[String]) -> Vec<String> {
        self.bindings
            .iter()
            .filter(|(_, b)| b.users.contains(user) || groups.iter().any(|g| b.groups.contains(g)))
            .map(|(role, _)| role.clone())
            .collect()
    }

    /// The union of the permissions of every role bound to `user` or its groups.
    pub fn permissions_of(&self, user: &str, groups: &[String]) -> Permissions {
        self.roles_of(user, groups).iter().filter_map(|r| self.role(r)).fold(Permissions::NONE, Permissions::union)
    }
}

/// The access commands (see `Command`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AccessCommand {
    CreateRole {
        name: String,
        permissions: BTreeSet<Permission>,
    },
    /// Deletes a custom role and its bindings.
    DeleteRole {
        name: String,
    },
    Bind {
        role: String,
        subject: Subject,
    },
    Unbind {
        role: String,
        subject: Subject,
    },
    CreateApiToken(ApiToken),
    RevokeApiToken {
        name: String,
    },
    /// Sets the session key if there is none yet (the first one stays).
    SetSessionKey {
        hex: String,
    },
    /// Ends every session `principal` holds now, on every node.
    RevokeSessions {
        principal: String,
    },
    /// Replaces the session key: every session of everyone ends.
    RotateSessionKey {
        hex: String,
    },
}

/// A role as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleView {
    pub name: String,
    pub builtin: bool,
    pub permissions: Vec<Permission>,
    pub bindings: Bindings,
}

impl Access {
    /// How many times `principal`'s sessions were revoked.
    pub fn session_epoch(&self, principal: &str) -> u64 {
        self.session_epochs.get(principal).copied().unwrap_or_default()
    }

    pub fn view(&self, name: &str) -> Option<RoleView> {
        let permissions = self.role(name)?;
        Some(RoleView {
            name: name.to_owned(),
            builtin: builtin(name).is_some(),
            permissions: permissions.list(),
            bindings: self.bindings.get(name).cloned().unwrap_or_default(),
        })
    }
}

pub fn apply(state: &mut State, cmd: &AccessCommand) -> CommandResponse {
    let access = &mut state.access;
    let role_view = |access: &Access, name: &str| match access.view(name) {
        Some(view) => CommandResponse::Role(view),
        None => CommandResponse::Refused(Refusal::RoleNotFound(name.to_owned())),
    };
    match cmd {
        AccessCommand::CreateRole { name, permissions } => {
            if access.role(name).is_some() {
                return CommandResponse::Refused(Refusal::RoleExists(name.clone()));
            }
            access.roles.insert(name.clone(), permissions.clone());
            role_view(access, name)
        }
        AccessCommand::DeleteRole { name } => {
            if builtin(name).is_some() {
                return CommandResponse::Refused(Refusal::BuiltinRole(name.clone()));
            }
            let Some(view) = access.view(name) else {
                return CommandResponse::Refused(Refusal::RoleNotFound(name.clone()));
            };
            let tokens: Vec<String> =
                access.api_tokens.values().filter(|t| t.role == *name).map(|t| t.name.clone()).collect();
            if !tokens.is_empty() {
                return CommandResponse::Refused(Refusal::RoleInUse { role: name.clone(), tokens });
            }
            access.roles.remove(name);
            access.bindings.remove(name);
            CommandResponse::Role(view)
        }
        AccessCommand::Bind { role, subject } => {
            if access.role(role).is_none() {
                return CommandResponse::Refused(Refusal::RoleNotFound(role.clone()));
            }
            let bindings = access.bindings.entry(role.clone()).or_default();
            match subject {
                Subject::User(name) => bindings.users.insert(name.clone()),
                Subject::Group(name) => bindings.groups.insert(name.clone()),
            };
            role_view(access, role)
        }
        AccessCommand::Unbind { role, subject } => {
            if *role == BREAK_GLASS && *subject == Subject::User(BREAK_GLASS.to_owned()) {
                return CommandResponse::Refused(Refusal::BreakGlass);
            }
            let removed = access.bindings.get_mut(role).is_some_and(|b| match subject {
                Subject::User(name) => b.users.remove(name),
                Subject::Group(name) => b.groups.remove(name),
            });
            if !removed {
                return CommandResponse::Refused(Refusal::NotBound {
                    role: role.clone(),
                    subject: subject.to_string(),
                });
            }
            if access.bindings.get(role).is_some_and(|b| b.users.is_empty() && b.groups.is_empty()) {
                access.bindings.remove(role);
            }
            role_view(access, role)
        }
        AccessCommand::CreateApiToken(token) => {
            if access.api_tokens.contains_key(&token.name) {
                return CommandResponse::Refused(Refusal::ApiTokenExists(token.name.clone()));
            }
            if access.role(&token.role).is_none() {
                return CommandResponse::Refused(Refusal::RoleNotFound(token.role.clone()));
            }
            access.api_tokens.insert(token.name.clone(), token.clone());
            CommandResponse::ApiToken(token.clone())
        }
        AccessCommand::RevokeApiToken { name } => match access.api_tokens.remove(name) {
            Some(token) => CommandResponse::ApiToken(token),
            None => CommandResponse::Refused(Refusal::ApiTokenNotFound(name.clone())),
        },
        AccessCommand::SetSessionKey { hex } => {
            access.session_key.get_or_insert_with(|| hex.clone());
            CommandResponse::None
        }
        AccessCommand::RevokeSessions { principal } => {
            *access.session_epochs.entry(principal.clone()).or_default() += 1;
            CommandResponse::None
        }
        AccessCommand::RotateSessionKey { hex } => {
            access.session_key = Some(hex.clone());
            CommandResponse::None
        }
    }
}

/// Who made a change and how, as the node that authorized it saw it: what
/// the proposer puts beside the change in the same entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditContext {
    pub principal: String,
    /// certificate, token, ldap, oidc, or none (--insecure).
    pub authenticated_by: String,
    pub source: String,
    pub method: String,
    pub target: String,
    /// What was asked, without secrets.
    pub summary: String,
    /// The proposer's clock.
    pub at_ms: i64,
    /// Records older than `at_ms - retention_ms`, and beyond the newest
    /// `max_records`, are dropped as this one is written.
    pub retention_ms: i64,
    pub max_records: u64,
}

/// One accepted change, with its outcome.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub seq: u64,
    pub at_ms: i64,
    pub principal: String,
    pub authenticated_by: String,
    pub source: String,
    pub method: String,
    pub target: String,
    pub summary: String,
    /// "ok", or "refused: " and why.
    pub outcome: String,
}

/// An audit record as the state keeps it: its JSON, decoded when read. A
/// start loads every kept record (about one per change within retention,
/// as many as the users or more) and only `audit list` and retention look
/// inside one, so a start checks that each is JSON and decodes none. The
/// JSON is the record's, so sled and snapshots hold what they always held.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KeptRecord(Box<serde_json::value::RawValue>);

impl KeptRecord {
    fn new(record: &AuditRecord) -> serde_json::Result<Self> {
        serde_json::value::to_raw_value(record).map(Self)
    }

    /// A record as stored (in sled, by [`KeptRecord::json`]); refused if it
    /// is not JSON.
    pub fn from_json(json: &[u8]) -> serde_json::Result<Self> {
        serde_json::from_slice(json).map(Self)
    }

    pub fn json(&self) -> &[u8] {
        self.0.get().as_bytes()
    }

    pub fn decode(&self) -> serde_json::Result<AuditRecord> {
        serde_json::from_str(self.0.get())
    }

    /// When the record was written, for retention: one field decoded.
    fn at_ms(&self) -> serde_json::Result<i64> {
        #[derive(Deserialize)]
        struct At {
            at_ms: i64,
        }
        serde_json::from_str::<At>(self.0.get()).map(|at| at.at_ms)
    }
}

impl PartialEq for KeptRecord {
    fn eq(&self, other: &Self) -> bool {
        self.0.get() == other.0.get()
    }
}

impl Eq for KeptRecord {}

/// The kept audit records, oldest first, and the next record's number.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditLog {
    #[serde(default)]
    pub records: BTreeMap<u64, KeptRecord>,
    #[serde(default)]
    pub next_seq: u64,
}

impl AuditLog {
    /// Writes the record of a change whose apply answered `response`, then
    /// drops what retention no longer keeps (oldest first).
    pub fn record(&mut self, ctx: &AuditContext, response: &CommandResponse) {
        let outcome = match response {
            CommandResponse::Refused(why) => format!("refused: {why}"),
            _ => "ok".to_owned(),
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        let record = AuditRecord {
            seq,
            at_ms: ctx.at_ms,
            principal: ctx.principal.clone(),
            authenticated_by: ctx.authenticated_by.clone(),
            source: ctx.source.clone(),
            method: ctx.method.clone(),
            target: ctx.target.clone(),
            summary: ctx.summary.clone(),
            outcome,
        };
        match KeptRecord::new(&record) {
            Ok(kept) => {
                self.records.insert(seq, kept);
            }
            // Strings and numbers always encode; should that ever change,
            // every replica skips the same record and says so.
            Err(e) => tracing::error!(seq, "audit record not kept: {e}"),
        }
        let oldest_kept = ctx.at_ms.saturating_sub(ctx.retention_ms);
        let max_records = ctx.max_records.max(1) as usize;
        while let Some((_, oldest)) = self.records.first_key_value() {
            // A record that does not decode has no time to keep it by.
            let at_ms = oldest.at_ms().unwrap_or(i64::MIN);
            if at_ms >= oldest_kept && self.records.len() <= max_records {
                break;
            }
            self.records.pop_first();
        }
    }

    /// Up to `n` kept records before `seq`, newest first: copied out, so a
    /// reader decodes them after it lets go of the state.
    pub fn before(&self, seq: u64, n: usize) -> Vec<(u64, KeptRecord)> {
        self.records.range(..seq).rev().take(n).map(|(seq, r)| (*seq, r.clone())).collect()
    }

    /// The seq of the oldest kept record (`next_seq` when none is kept).
    pub fn first_seq(&self) -> u64 {
        self.records.keys().next().copied().unwrap_or(self.next_seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str) -> Subject {
        Subject::User(name.to_owned())
    }

    #[test]
    fn a_fresh_cluster_makes_the_admin_certificate_an_admin_and_nobody_else_anything() {
        let access = Access::default();
        assert_eq!(access.permissions_of("admin", &[]), Permissions::all());
        assert_eq!(access.permissions_of("alice", &[]), Permissions::NONE);
        assert_eq!(access.permissions_of("token:admin", &[]), Permissions::NONE, "names are as printed");
    }

    #[test]
    fn bindings_to_users_and_groups_add_up() {
        let mut state = State::default();
        let ops = BTreeSet::from([Permission::AuditRead, Permission::NodesRead]);
        apply(&mut state, &AccessCommand::CreateRole { name: "ops".into(), permissions: ops });
        apply(&mut state, &AccessCommand::Bind { role: "viewer".into(), subject: user("ldap:bob") });
        apply(&mut state, &AccessCommand::Bind { role: "ops".into(), subject: Subject::Group("ldap:ops".into()) });
        let bob = state.access.permissions_of("ldap:bob", &["ldap:ops".into()]);
        assert_eq!(bob, Permissions::of(&[Permission::UsersRead, Permission::NodesRead, Permission::AuditRead]));
        assert_eq!(
            state.access.permissions_of("ldap:bob", &[]),
            Permissions::of(&[Permission::UsersRead, Permission::NodesRead])
        );
        assert_eq!(state.access.roles_of("ldap:carol", &["ldap:ops".into()]), ["ops"]);
    }

    #[test]
    fn builtin_roles_cannot_be_made_or_deleted_and_a_role_in_use_by_a_token_stays() {
        let mut state = State::default();
        let create = |name: &str| AccessCommand::CreateRole { name: name.into(), permissions: BTreeSet::new() };
        assert_eq!(apply(&mut state, &create("admin")), CommandResponse::Refused(Refusal::RoleExists("admin".into())));
        let delete = |name: &str| AccessCommand::DeleteRole { name: name.into() };
        assert_eq!(
            apply(&mut state, &delete("viewer")),
            CommandResponse::Refused(Refusal::BuiltinRole("viewer".into()))
        );
        apply(&mut state, &create("bots"));
        let token = ApiToken {
            name: "billing".into(),
            role: "bots".into(),
            secret_sha256: "aa".into(),
            created_at_ms: 0,
            expires_at_ms: 10,
            created_by: "admin".into(),
        };
        assert!(matches!(apply(&mut state, &AccessCommand::CreateApiToken(token)), CommandResponse::ApiToken(_)));
        let refused = apply(&mut state, &delete("bots"));
        assert_eq!(
            refused,
            CommandResponse::Refused(Refusal::RoleInUse { role: "bots".into(), tokens: vec!["billing".into()] })
        );
        apply(&mut state, &AccessCommand::RevokeApiToken { name: "billing".into() });
        assert!(matches!(apply(&mut state, &delete("bots")), CommandResponse::Role(_)));
        assert_eq!(state.access.role("bots"), None);
    }

    #[test]
    fn unbinding_what_is_not_bound_is_refused_and_binding_to_no_role_too() {
        let mut state = State::default();
        let bind = AccessCommand::Bind { role: "nope".into(), subject: user("alice") };
        assert_eq!(apply(&mut state, &bind), CommandResponse::Refused(Refusal::RoleNotFound("nope".into())));
        let unbind = AccessCommand::Unbind { role: "viewer".into(), subject: user("alice") };
        assert!(matches!(apply(&mut state, &unbind), CommandResponse::Refused(Refusal::NotBound { .. })));
        let unbind_admin = AccessCommand::Unbind { role: "admin".into(), subject: user("admin") };
        assert_eq!(apply(&mut state, &unbind_admin), CommandResponse::Refused(Refusal::BreakGlass));
        assert_eq!(state.access.permissions_of("admin", &[]), Permissions::all());
    }

    #[test]
    fn the_audit_log_keeps_what_retention_says_oldest_dropped_first() {
        let mut log = AuditLog::default();
        let ctx = |at_ms: i64| AuditContext {
            principal: "admin".into(),
            authenticated_by: "certificate".into(),
            source: "127.0.0.1:1".into(),
            method: "CreateUser".into(),
            target: "user a".into(),
            summary: String::new(),
            at_ms,
            retention_ms: 100,
            max_records: 3,
        };
        for at in [0, 10, 20] {
            log.record(&ctx(at), &CommandResponse::Deleted);
        }
        assert_eq!(log.records.keys().copied().collect::<Vec<_>>(), [0, 1, 2]);
        log.record(&ctx(30), &CommandResponse::Refused(Refusal::UserNotFound("a".into())));
        assert_eq!(log.records.keys().copied().collect::<Vec<_>>(), [1, 2, 3], "at most 3");
        let record = log.records[&3].decode().expect("decode");
        assert_eq!((record.seq, record.at_ms, record.outcome.as_str()), (3, 30, "refused: user \"a\" not found"));
        log.record(&ctx(125), &CommandResponse::Deleted);
        assert_eq!(log.records.keys().copied().collect::<Vec<_>>(), [3, 4], "older than 100 ms dropped");
        assert_eq!((log.first_seq(), log.next_seq), (3, 5));
    }
}
