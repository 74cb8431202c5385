//! The audit trail of the public API. The auth layer runs each accepted
//! public call inside a [`CallScope`] (a task-local: the handler runs in
//! the layer's future), and every proposal made in that scope is wrapped
//! with its record (`Command::Audited`), so the record is written by the
//! same Raft entry as the change. A call that is refused never reaches a
//! handler, so it is never proposed; reads propose nothing.

use std::time::Duration;

use vpn_storage::access::{AccessCommand, AuditContext, Subject};
use vpn_storage::command::Command;
use vpn_storage::model::{Limits, ResetPeriod, Schedule, UserStatus};
use vpn_storage::trust::TrustCommand;

use super::identity::Identity;
use crate::api::convert;

/// How long records are kept, and how many at most (`--audit-retention`,
/// `--audit-max-records`): the leader drops older ones as it writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub max_age: Duration,
    pub max_records: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Retention { max_age: Duration::from_secs(90 * 86_400), max_records: 1_000_000 }
    }
}

/// The call a proposal belongs to.
#[derive(Debug, Clone)]
pub struct CallScope {
    pub identity: Identity,
    /// The RPC's method, e.g. "CreateUser".
    pub method: String,
}

tokio::task_local! {
    /// Set by the auth layer around every call it admits: `Some` for a
    /// public call (and a join), `None` for internal traffic.
    pub static SCOPE: Option<CallScope>;
}

/// The public call being served on this task, if any.
pub fn current() -> Option<CallScope> {
    SCOPE.try_with(Clone::clone).ok().flatten()
}

/// `cmd` with its audit record when it is proposed inside a public call.
pub fn wrap(cmd: Command, retention: Retention) -> Command {
    let Some(scope) = current() else { return cmd };
    let (target, summary) = describe(&cmd);
    let audit = AuditContext {
        principal: scope.identity.principal,
        authenticated_by: scope.identity.method.as_str().to_owned(),
        source: scope.identity.source,
        method: scope.method,
        target,
        summary,
        at_ms: convert::now_ms(),
        retention_ms: i64::try_from(retention.max_age.as_millis()).unwrap_or(i64::MAX),
        max_records: retention.max_records,
    };
    Command::Audited { audit, command: Box::new(cmd) }
}

/// What a change acts on and what it asks for, never a secret (no keys,
/// credentials, token texts or their hashes).
fn describe(cmd: &Command) -> (String, String) {
    let user = |name: &str| format!("user {name}");
    match cmd {
        Command::CreateUser(u) => {
            let mut summary = limits(&u.limits);
            if !u.constraint.is_empty() {
                let pairs: Vec<String> = u.constraint.iter().map(|(k, v)| format!("{k}={v}")).collect();
                summary.push(format!("constraint {}", pairs.join(",")));
            }
            (user(&u.name), summary.join(", "))
        }
        Command::UpdateUser { name, status, limits: change, .. } => {
            let mut summary = Vec::new();
            if let Some(status) = status {
                summary.push(format!("status {}", status_name(*status)));
            }
            let changed = Limits {
                expires_at_ms: change.expires_at_ms.unwrap_or_default(),
                data_limit_bytes: change.data_limit_bytes.unwrap_or_default(),
                reset: change.reset.unwrap_or_default(),
            };
            summary.extend(limits(&changed));
            (user(name), summary.join(", "))
        }
        Command::DeleteUser { name } => (user(name), "delete".into()),
        Command::ResetTraffic { name, .. } => (user(name), "new accounting period".into()),
        Command::RotateToken { name, .. } => (user(name), "new subscription token".into()),
        Command::SetNodeSchedule { node, schedule } => {
            let what = match schedule {
                Schedule::Schedulable => "uncordon",
                Schedule::Cordoned => "cordon",
                Schedule::Draining => "drain",
            };
            (format!("node {node}"), what.into())
        }
        Command::RegisterMember(m) => (format!("member {}", m.id), format!("address {}", m.addr)),
        Command::ForgetMember { id } => (format!("member {id}"), "remove".into()),
        Command::Trust(TrustCommand::CreateJoinToken(t)) => (
            format!("join token {}", t.id),
            format!("role {:?}, {} uses, expires {}", t.role, t.uses_left, convert::rfc3339(t.expires_at_ms)),
        ),
        Command::Trust(TrustCommand::RevokeJoinToken { id }) => (format!("join token {id}"), "revoke".into()),
        Command::Trust(TrustCommand::RedeemJoinToken { id, node, .. }) => {
            (format!("node {node}"), format!("join with token {id}"))
        }
        Command::Access(AccessCommand::CreateRole { name, permissions }) => {
            let list: Vec<&str> = permissions.iter().map(|p| p.as_str()).collect();
            (format!("role {name}"), format!("create with {}", list.join(",")))
        }
        Command::Access(AccessCommand::DeleteRole { name }) => (format!("role {name}"), "delete".into()),
        Command::Access(AccessCommand::Bind { role, subject }) => {
            (format!("role {role}"), format!("bind {}", subject_text(subject)))
        }
        Command::Access(AccessCommand::Unbind { role, subject }) => {
            (format!("role {role}"), format!("unbind {}", subject_text(subject)))
        }
        Command::Access(AccessCommand::CreateApiToken(t)) => {
            (format!("API token {}", t.name), format!("role {}, expires {}", t.role, convert::rfc3339(t.expires_at_ms)))
        }
        Command::Access(AccessCommand::RevokeApiToken { name }) => (format!("API token {name}"), "revoke".into()),
        Command::Access(AccessCommand::SetSessionKey { .. }) => ("session key".into(), "made".into()),
        Command::Access(AccessCommand::RevokeSessions { principal }) => {
            (format!("sessions of {principal}"), "revoke".into())
        }
        Command::Access(AccessCommand::RotateSessionKey { .. }) => {
            ("session key".into(), "rotate: every session ends".into())
        }
        Command::Audited { command, .. } => describe(command),
        // The system's own changes; no public call proposes them.
        Command::Reevaluate { .. }
        | Command::Place(_)
        | Command::RegisterDataplaneNode(_)
        | Command::ReportApplied { .. }
        | Command::SetNodeHealth { .. }
        | Command::RecordTraffic { .. }
        | Command::Batch(_) => (String::new(), "internal change".into()),
    }
}

fn subject_text(subject: &Subject) -> String {
    subject.to_string()
}

fn status_name(status: UserStatus) -> &'static str {
    match status {
        UserStatus::Active => "active",
        UserStatus::Disabled => "disabled",
        UserStatus::Limited => "limited",
        UserStatus::Expired => "expired",
    }
}

fn limits(l: &Limits) -> Vec<String> {
    let mut out = Vec::new();
    if l.expires_at_ms != 0 {
        out.push(format!("expires {}", convert::rfc3339(l.expires_at_ms)));
    }
    if l.data_limit_bytes != 0 {
        out.push(format!("data limit {} bytes", l.data_limit_bytes));
    }
    if l.reset != ResetPeriod::None {
        out.push(format!("reset {:?}", l.reset).to_lowercase());
    }
    out
}

#[cfg(test)]
mod tests {
    use vpn_storage::model::User;

    use super::*;
    use crate::auth::identity::AuthMethod;

    fn scope() -> CallScope {
        let identity = Identity {
            principal: "token:bot".into(),
            method: AuthMethod::Token,
            groups: vec![],
            source: "10.0.0.9:4000".into(),
        };
        CallScope { identity, method: "CreateUser".into() }
    }

    #[tokio::test]
    async fn a_proposal_inside_a_public_call_carries_its_record_and_no_secret() {
        let user = User::new("alice".into(), 0);
        let plain = wrap(Command::CreateUser(user.clone()), Retention::default());
        assert_eq!(plain, Command::CreateUser(user.clone()), "outside a call: the system's own change");

        let wrapped =
            SCOPE.scope(Some(scope()), async { wrap(Command::CreateUser(user.clone()), Retention::default()) }).await;
        let Command::Audited { audit, command } = &wrapped else { panic!("not audited: {wrapped:?}") };
        assert_eq!(**command, Command::CreateUser(user.clone()));
        assert_eq!((audit.principal.as_str(), audit.method.as_str()), ("token:bot", "CreateUser"));
        assert_eq!((audit.target.as_str(), audit.source.as_str()), ("user alice", "10.0.0.9:4000"));
        let record = serde_json::to_string(audit).expect("json");
        assert!(!record.contains(&user.sub_token), "the subscription token stays out of the record: {record}");
    }
}
