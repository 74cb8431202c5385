//! The `Access` service: roles and their bindings, API tokens, the audit log.
//!
//! Nobody grants more than they hold: a role created, a role bound and an
//! API token made must carry only permissions the caller has (Kubernetes'
//! rule against escalation), checked by the leader against its own state.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};
use vpn_proto::v1::access_client::AccessClient;
use vpn_proto::v1::access_server::Access;
use vpn_proto::v1::{
    ApiTokenInfo, ApiTokenSecret, AuditRecord, BindRoleRequest, CreateApiTokenRequest, CreateRoleRequest,
    DeleteRoleRequest, GetRoleRequest, ListApiTokensRequest, ListApiTokensResponse, ListAuditRequest,
    ListAuditResponse, ListRolesRequest, ListRolesResponse, LoginOptionsRequest, LoginOptionsResponse, LoginRequest,
    LoginResponse, RevokeApiTokenRequest, RevokeSessionsRequest, RevokeSessionsResponse, Role, WhoAmIRequest,
    WhoAmIResponse,
};
use vpn_storage::access::{self as model, AccessCommand, ApiToken, Permission, Permissions, RoleView, Subject};
use vpn_storage::command::{Command, CommandResponse};

use super::{convert, forward, read_barrier};
use crate::auth::identity::new_api_token;
use crate::auth::Granted;
use crate::error::Error;
use crate::login::{session, LoginError};
use crate::node::{Node, Route};

/// An API token's lifetime when none is asked for, and the longest allowed.
const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(90 * 86_400);
const MAX_TOKEN_TTL: Duration = Duration::from_secs(3 * 365 * 86_400);
/// Longest principal or group name a binding takes.
const MAX_SUBJECT_LEN: usize = 256;

pub struct AccessApi {
    pub node: Arc<Node>,
}

fn granted<T>(req: &Request<T>) -> Result<Granted, Error> {
    req.extensions()
        .get::<Granted>()
        .cloned()
        .ok_or_else(|| Error::Unauthenticated("no principal: give an API token or a client certificate".into()))
}

/// Names of roles and tokens: what a client certificate's name may be.
fn check_name(field: &'static str, name: &str) -> Result<(), Error> {
    vpn_pki::principal::check_client_name(name).map_err(|e| Error::InvalidArgument { field, detail: e.to_string() })
}

fn permissions(field: &'static str, raw: &[String]) -> Result<BTreeSet<Permission>, Error> {
    raw.iter().map(|p| p.parse::<Permission>().map_err(|detail| Error::InvalidArgument { field, detail })).collect()
}

/// Refuses a grant of anything the caller does not hold itself.
fn no_escalation(caller: &Granted, grants: Permissions, what: &str) -> Result<(), Error> {
    let missing = caller.permissions.missing(grants).list();
    if missing.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = missing.iter().map(|p| p.as_str()).collect();
    Err(Error::PermissionDenied(format!(
        "{} may not {what}: it would grant {} which {} does not hold itself",
        caller.identity.principal,
        names.join(", "),
        caller.identity.principal
    )))
}

fn role(view: RoleView) -> Role {
    Role {
        name: view.name,
        builtin: view.builtin,
        permissions: view.permissions.iter().map(|p| p.as_str().to_owned()).collect(),
        users: view.bindings.users.into_iter().collect(),
        groups: view.bindings.groups.into_iter().collect(),
    }
}

fn token_info(t: &ApiToken) -> ApiTokenInfo {
    ApiTokenInfo {
        name: t.name.clone(),
        role: t.role.clone(),
        created_at: convert::rfc3339(t.created_at_ms),
        expires_at: convert::rfc3339(t.expires_at_ms),
        created_by: t.created_by.clone(),
    }
}

fn subject(r: &BindRoleRequest) -> Result<Subject, Error> {
    let bad = |detail: String| Error::InvalidArgument { field: "user", detail };
    let subject = match (r.user.is_empty(), r.group.is_empty()) {
        (false, true) => Subject::User(r.user.clone()),
        (true, false) => Subject::Group(r.group.clone()),
        _ => return Err(bad("give exactly one of user and group".into())),
    };
    let (Subject::User(name) | Subject::Group(name)) = &subject;
    check_subject("user", name)?;
    Ok(subject)
}

/// A principal or group as bindings and revocations name it.
fn check_subject(field: &'static str, name: &str) -> Result<(), Error> {
    if name.len() > MAX_SUBJECT_LEN || name.chars().any(char::is_control) {
        let detail = format!("a name of at most {MAX_SUBJECT_LEN} bytes without control characters");
        return Err(Error::InvalidArgument { field, detail });
    }
    Ok(())
}

impl AccessApi {
    /// Proposes an access change here (the leader) and expects `CommandResponse::Role` or `ApiToken`.
    async fn write(&self, cmd: AccessCommand) -> Result<CommandResponse, Error> {
        match self.node.propose(Command::Access(cmd)).await? {
            CommandResponse::Refused(r) => Err(r.into()),
            other => Ok(other),
        }
    }

    async fn write_role(&self, cmd: AccessCommand) -> Result<Response<Role>, Status> {
        match self.write(cmd).await? {
            CommandResponse::Role(view) => Ok(Response::new(role(view))),
            other => Err(Error::Internal(format!("unexpected apply result {other:?}")).into()),
        }
    }

    fn route<T>(&self, req: &Request<T>) -> Result<Option<AccessClient<tonic::transport::Channel>>, Status> {
        Ok(match self.node.route_write(forward::was_forwarded(req))? {
            Route::Leader(ch) => Some(AccessClient::new(ch)),
            Route::Local => None,
        })
    }
}

#[tonic::async_trait]
impl Access for AccessApi {
    async fn who_am_i(&self, req: Request<WhoAmIRequest>) -> Result<Response<WhoAmIResponse>, Status> {
        let caller = granted(&req)?;
        let roles = self.node.state.read(|s| caller.identity.roles(s));
        Ok(Response::new(WhoAmIResponse {
            principal: caller.identity.principal.clone(),
            authenticated_by: caller.identity.method.as_str().to_owned(),
            groups: caller.identity.groups.clone(),
            roles,
            permissions: caller.permissions.list().iter().map(|p| p.as_str().to_owned()).collect(),
        }))
    }

    async fn list_roles(&self, _req: Request<ListRolesRequest>) -> Result<Response<ListRolesResponse>, Status> {
        read_barrier(&self.node, 0).await?;
        let mut roles: Vec<Role> = self
            .node
            .state
            .read(|s| s.access.roles().iter().filter_map(|(name, _, _)| s.access.view(name)).map(role).collect());
        roles.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Response::new(ListRolesResponse { roles }))
    }

    async fn get_role(&self, req: Request<GetRoleRequest>) -> Result<Response<Role>, Status> {
        let name = req.into_inner().name;
        check_name("name", &name)?;
        read_barrier(&self.node, 0).await?;
        let view = self.node.state.read(|s| s.access.view(&name));
        let view = view.ok_or_else(|| Error::NotFound(format!("role {name:?} not found: see `vpnctl role list`")))?;
        Ok(Response::new(role(view)))
    }

    async fn create_role(&self, req: Request<CreateRoleRequest>) -> Result<Response<Role>, Status> {
        check_name("name", &req.get_ref().name)?;
        let wanted = permissions("permissions", &req.get_ref().permissions)?;
        if let Some(mut leader) = self.route(&req)? {
            return forward::relayed(
                leader.create_role(forward::to_leader(&self.node, "CreateRole", req.into_inner())).await,
            );
        }
        let grants = Permissions::of(&wanted.iter().copied().collect::<Vec<_>>());
        no_escalation(&granted(&req)?, grants, "create this role")?;
        self.write_role(AccessCommand::CreateRole { name: req.into_inner().name, permissions: wanted }).await
    }

    async fn delete_role(&self, req: Request<DeleteRoleRequest>) -> Result<Response<Role>, Status> {
        check_name("name", &req.get_ref().name)?;
        if let Some(mut leader) = self.route(&req)? {
            return forward::relayed(
                leader.delete_role(forward::to_leader(&self.node, "DeleteRole", req.into_inner())).await,
            );
        }
        self.write_role(AccessCommand::DeleteRole { name: req.into_inner().name }).await
    }

    async fn bind_role(&self, req: Request<BindRoleRequest>) -> Result<Response<Role>, Status> {
        check_name("role", &req.get_ref().role)?;
        let subject = subject(req.get_ref())?;
        if let Some(mut leader) = self.route(&req)? {
            return forward::relayed(
                leader.bind_role(forward::to_leader(&self.node, "BindRole", req.into_inner())).await,
            );
        }
        let name = req.get_ref().role.clone();
        if let Some(grants) = self.node.state.read(|s| s.access.role(&name)) {
            no_escalation(&granted(&req)?, grants, &format!("bind role {name}"))?;
        }
        self.write_role(AccessCommand::Bind { role: name, subject }).await
    }

    async fn unbind_role(&self, req: Request<BindRoleRequest>) -> Result<Response<Role>, Status> {
        check_name("role", &req.get_ref().role)?;
        let subject = subject(req.get_ref())?;
        if let Some(mut leader) = self.route(&req)? {
            return forward::relayed(
                leader.unbind_role(forward::to_leader(&self.node, "UnbindRole", req.into_inner())).await,
            );
        }
        self.write_role(AccessCommand::Unbind { role: req.into_inner().role, subject }).await
    }

    async fn create_api_token(&self, req: Request<CreateApiTokenRequest>) -> Result<Response<ApiTokenSecret>, Status> {
        let r = req.get_ref();
        check_name("name", &r.name)?;
        check_name("role", &r.role)?;
        let ttl = match r.ttl_seconds {
            0 => DEFAULT_TOKEN_TTL,
            s if Duration::from_secs(s) > MAX_TOKEN_TTL => {
                let detail =
                    format!("{s} s is over the longest lifetime of a token, {} days", MAX_TOKEN_TTL.as_secs() / 86_400);
                return Err(Error::InvalidArgument { field: "ttl_seconds", detail }.into());
            }
            s => Duration::from_secs(s),
        };
        if let Some(mut leader) = self.route(&req)? {
            let fwd = forward::to_leader(&self.node, "CreateApiToken", req.into_inner());
            return forward::relayed(leader.create_api_token(fwd).await);
        }
        let caller = granted(&req)?;
        let r = req.into_inner();
        if let Some(grants) = self.node.state.read(|s| s.access.role(&r.role)) {
            no_escalation(&caller, grants, &format!("make a token with role {}", r.role))?;
        }
        let (text, secret_sha256) = new_api_token(&r.name);
        let now = convert::now_ms();
        let token = ApiToken {
            name: r.name,
            role: r.role,
            secret_sha256,
            created_at_ms: now,
            expires_at_ms: now.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)),
            created_by: caller.identity.principal,
        };
        match self.write(AccessCommand::CreateApiToken(token)).await? {
            CommandResponse::ApiToken(t) => Ok(Response::new(ApiTokenSecret {
                expires_at: convert::rfc3339(t.expires_at_ms),
                name: t.name,
                role: t.role,
                token: text,
            })),
            other => Err(Error::Internal(format!("unexpected apply result {other:?}")).into()),
        }
    }

    async fn list_api_tokens(
        &self,
        _req: Request<ListApiTokensRequest>,
    ) -> Result<Response<ListApiTokensResponse>, Status> {
        read_barrier(&self.node, 0).await?;
        let tokens = self.node.state.read(|s| s.access.api_tokens.values().map(token_info).collect());
        Ok(Response::new(ListApiTokensResponse { tokens }))
    }

    async fn revoke_api_token(&self, req: Request<RevokeApiTokenRequest>) -> Result<Response<ApiTokenInfo>, Status> {
        check_name("name", &req.get_ref().name)?;
        if let Some(mut leader) = self.route(&req)? {
            let fwd = forward::to_leader(&self.node, "RevokeApiToken", req.into_inner());
            return forward::relayed(leader.revoke_api_token(fwd).await);
        }
        match self.write(AccessCommand::RevokeApiToken { name: req.into_inner().name }).await? {
            CommandResponse::ApiToken(t) => Ok(Response::new(token_info(&t))),
            other => Err(Error::Internal(format!("unexpected apply result {other:?}")).into()),
        }
    }

    async fn revoke_sessions(
        &self,
        req: Request<RevokeSessionsRequest>,
    ) -> Result<Response<RevokeSessionsResponse>, Status> {
        let r = req.get_ref();
        match (r.principal.is_empty(), r.all) {
            (false, false) => check_subject("principal", &r.principal)?,
            (true, true) => {}
            _ => {
                let detail = "give exactly one of principal and all".into();
                return Err(Error::InvalidArgument { field: "principal", detail }.into());
            }
        }
        if let Some(mut leader) = self.route(&req)? {
            let fwd = forward::to_leader(&self.node, "RevokeSessions", req.into_inner());
            return forward::relayed(leader.revoke_sessions(fwd).await);
        }
        let r = req.into_inner();
        let cmd = if r.all {
            AccessCommand::RotateSessionKey { hex: session::new_key() }
        } else {
            AccessCommand::RevokeSessions { principal: r.principal.clone() }
        };
        self.write(cmd).await?;
        tracing::warn!(principal = %r.principal, all = r.all, "login sessions revoked");
        Ok(Response::new(RevokeSessionsResponse { principal: r.principal, all: r.all }))
    }

    async fn login(&self, req: Request<LoginRequest>) -> Result<Response<LoginResponse>, Status> {
        let r = req.into_inner();
        let logins = &self.node.logins;
        let (result, method) = match (r.ldap, r.oidc_id_token.is_empty()) {
            (Some(ldap), true) => {
                let provider = logins.ldap.as_ref().ok_or_else(|| {
                    Error::FailedPrecondition("this cluster has no LDAP login: start vpnd with --ldap-url".into())
                })?;
                (provider.login(&ldap.user, &ldap.password).await, "ldap")
            }
            (None, false) => {
                let provider = logins.oidc.as_ref().ok_or_else(|| {
                    Error::FailedPrecondition("this cluster has no OIDC login: start vpnd with --oidc-issuer".into())
                })?;
                (provider.verify(&r.oidc_id_token, convert::now_ms() / 1000).await, "oidc")
            }
            _ => {
                let detail = "give exactly one of ldap and oidc_id_token".into();
                return Err(Error::InvalidArgument { field: "ldap", detail }.into());
            }
        };
        let identity = result.map_err(|e| {
            let labels = crate::metrics::AuthRefusalLabels { caller: method.to_owned(), rule: "login" };
            self.node.metrics.auth_refusals.get_or_create(&labels).inc();
            match e {
                LoginError::Refused(why) => Error::Unauthenticated(why),
                LoginError::Unavailable(why) => Error::unavailable(why),
            }
        })?;
        let expires_at_ms =
            convert::now_ms().saturating_add(i64::try_from(logins.session_ttl.as_millis()).unwrap_or(i64::MAX));
        let token = self.node.state.read(|s| session::issue(s, &identity, expires_at_ms)).ok_or_else(|| {
            Error::unavailable("the cluster has not made its session key yet (its leader does): retry in a moment")
        })?;
        tracing::info!(principal = %identity.principal, "login");
        Ok(Response::new(LoginResponse {
            token,
            principal: identity.principal,
            groups: identity.groups,
            expires_at: convert::rfc3339(expires_at_ms),
        }))
    }

    async fn login_options(
        &self,
        _req: Request<LoginOptionsRequest>,
    ) -> Result<Response<LoginOptionsResponse>, Status> {
        let logins = &self.node.logins;
        let oidc = logins.oidc.as_ref().map(|o| o.config());
        Ok(Response::new(LoginOptionsResponse {
            ldap: logins.ldap.is_some(),
            oidc_issuer: oidc.map(|c| c.issuer.clone()).unwrap_or_default(),
            oidc_client_id: oidc.map(|c| c.audience.clone()).unwrap_or_default(),
        }))
    }

    async fn list_audit(&self, req: Request<ListAuditRequest>) -> Result<Response<ListAuditResponse>, Status> {
        let r = req.into_inner();
        let page = AuditPage::of(&r, convert::now_ms())?;
        read_barrier(&self.node, r.consistency).await?;
        let state = &self.node.state;
        let (records, next_page_token) = page.read(|seq| state.read(|s| s.audit.before(seq, RECORDS_PER_READ)));
        Ok(Response::new(ListAuditResponse { records, next_page_token }))
    }
}

/// How many kept records `audit list` copies out of the state at a time. It
/// decodes and filters them with the state let go: a filter that matches
/// few of 100,000 records decodes them all, and applies must not wait on that.
const RECORDS_PER_READ: usize = 256;

/// One page of the audit log, newest first, with the request's filters.
struct AuditPage {
    /// Records before this seq (the previous page's last).
    before: Option<u64>,
    since_ms: i64,
    principal: String,
    method: String,
    size: usize,
}

impl AuditPage {
    fn of(r: &ListAuditRequest, now_ms: i64) -> Result<Self, Error> {
        let before = match r.page_token.as_str() {
            "" => None,
            token => Some(token.parse::<u64>().map_err(|_| Error::InvalidArgument {
                field: "page_token",
                detail: "not a token this API gave: pass next_page_token as it came".into(),
            })?),
        };
        let since_ms = match r.since_seconds {
            0 => i64::MIN,
            s => now_ms.saturating_sub(i64::try_from(s).unwrap_or(i64::MAX).saturating_mul(1000)),
        };
        let size = crate::limits::page_size(r.page_size);
        Ok(AuditPage { before, since_ms, principal: r.principal.clone(), method: r.method.clone(), size })
    }

    /// Reads the page from `before(seq)`, which gives kept records older
    /// than `seq`, newest first (empty at the log's start).
    fn read(&self, mut before: impl FnMut(u64) -> Vec<(u64, model::KeptRecord)>) -> (Vec<AuditRecord>, String) {
        let mut upto = self.before.unwrap_or(u64::MAX);
        let mut records = Vec::with_capacity(self.size);
        loop {
            let chunk = before(upto);
            let Some((oldest, _)) = chunk.last() else { return (records, String::new()) };
            upto = *oldest;
            // One that does not decode cannot be shown.
            for r in chunk.iter().filter_map(|(_, kept)| kept.decode().ok()).filter(|r| self.matches(r)) {
                if records.len() == self.size {
                    // One more matches: the page is full and another follows.
                    let next = records.last().map(|r: &AuditRecord| r.seq.to_string()).unwrap_or_default();
                    return (records, next);
                }
                records.push(record(r));
            }
        }
    }

    fn matches(&self, r: &model::AuditRecord) -> bool {
        r.at_ms >= self.since_ms
            && (self.principal.is_empty() || r.principal == self.principal)
            && (self.method.is_empty() || r.method == self.method)
    }
}

fn record(r: model::AuditRecord) -> AuditRecord {
    AuditRecord {
        time: convert::rfc3339(r.at_ms),
        principal: r.principal,
        authenticated_by: r.authenticated_by,
        source: r.source,
        method: r.method,
        target: r.target,
        summary: r.summary,
        outcome: r.outcome,
        seq: r.seq,
    }
}

#[cfg(test)]
mod tests {
    use vpn_storage::access::{AuditContext, AuditLog};

    use super::*;

    fn log_of(entries: &[(&str, &str, i64)]) -> AuditLog {
        let mut log = AuditLog::default();
        for (principal, method, at_ms) in entries {
            let ctx = AuditContext {
                principal: (*principal).into(),
                authenticated_by: "certificate".into(),
                source: String::new(),
                method: (*method).into(),
                target: String::new(),
                summary: String::new(),
                at_ms: *at_ms,
                retention_ms: i64::MAX,
                max_records: 1000,
            };
            log.record(&ctx, &CommandResponse::Deleted);
        }
        log
    }

    #[test]
    fn audit_pages_run_newest_first_through_the_filters_to_the_end() {
        let log = log_of(&[
            ("a", "CreateUser", 10),
            ("b", "CreateUser", 20),
            ("a", "DeleteUser", 30),
            ("a", "CreateUser", 40),
        ]);
        let request = |page_token: &str| ListAuditRequest {
            principal: "a".into(),
            page_size: 2,
            page_token: page_token.into(),
            ..Default::default()
        };
        // Every way of cutting the log into reads gives the same pages.
        for per_read in [1, 2, 3, RECORDS_PER_READ] {
            let before = |seq| log.before(seq, per_read);
            let (first, next) = AuditPage::of(&request(""), 100).expect("page").read(before);
            assert_eq!(first.iter().map(|r| r.seq).collect::<Vec<_>>(), [3, 2], "{per_read} per read");
            let (second, last) = AuditPage::of(&request(&next), 100).expect("page").read(before);
            assert_eq!((second.iter().map(|r| r.seq).collect::<Vec<_>>(), last.as_str()), (vec![0], ""));

            let since = ListAuditRequest { since_seconds: 1, method: "CreateUser".into(), ..Default::default() };
            let (recent, next) = AuditPage::of(&since, 1_020).expect("page").read(before);
            assert_eq!(recent.iter().map(|r| r.seq).collect::<Vec<_>>(), [3, 1], "at or after 20 ms");
            assert_eq!(next, "", "nothing older matches");
        }
        let bad = ListAuditRequest { page_token: "x".into(), ..Default::default() };
        assert!(matches!(AuditPage::of(&bad, 0), Err(Error::InvalidArgument { field: "page_token", .. })));
    }

    #[test]
    fn nobody_grants_what_they_do_not_hold() {
        use crate::auth::identity::{AuthMethod, Identity};
        let identity = Identity {
            principal: "ops".into(),
            method: AuthMethod::Certificate,
            groups: vec![],
            source: String::new(),
        };
        let operator = Granted {
            identity,
            permissions: Permissions::of(&[Permission::UsersRead, Permission::UsersWrite, Permission::RolesWrite]),
        };
        assert!(no_escalation(&operator, Permissions::of(&[Permission::UsersRead]), "x").is_ok());
        let refused = no_escalation(&operator, Permissions::all(), "bind role admin").expect_err("escalation");
        assert!(
            matches!(&refused, Error::PermissionDenied(m) if m.contains("members.write") && !m.contains("users.read"))
        );
    }
}
