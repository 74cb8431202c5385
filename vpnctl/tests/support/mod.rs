//! A fake `vpn.v1.Access` server on port 0 for the access-control and login tests: it speaks
//! TLS (tokens and passwords go only over TLS) with a CA made by `vpn_pki`, records what it is
//! sent, and logs in one LDAP user and one OIDC ID token. (The real server is covered by
//! cluster-tests.)
// Each test binary that includes this module uses a part of it.
#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tonic::{Code, Request, Response, Status};
use vpn_proto::v1::access_server::{Access, AccessServer};
use vpn_proto::v1::*;

/// The one LDAP user the fake logs in, with its password.
pub const LDAP_USER: &str = "alice";
pub const PASSWORD: &str = "pw-0f-alice";
/// The one ID token the fake takes, and the sessions the logins give.
pub const ID_TOKEN: &str = "eyJ.id-token-of-carol.sig";
pub const LDAP_SESSION: &str = "vpnst1.alice-session";
pub const OIDC_SESSION: &str = "vpnst1.carol-session";
pub const EXPIRES_AT: &str = "2030-01-01T00:00:00Z";

/// A request the fake received that changes something.
#[derive(Debug, Clone, PartialEq)]
pub enum Call {
    CreateToken(CreateApiTokenRequest),
    RevokeToken(String),
    CreateRole(CreateRoleRequest),
    Bind(BindRoleRequest),
    Unbind(BindRoleRequest),
    RevokeSessions(RevokeSessionsRequest),
}

#[derive(Default)]
pub struct Fake {
    /// The `authorization` metadata of every call, retries included.
    pub seen: Mutex<Vec<Option<String>>>,
    /// Answer this many calls UNAVAILABLE first, as a node without a leader does.
    pub unavailable_first: usize,
    /// Refuse `WhoAmI` with this code, quoting the credential back.
    pub refuse: Option<Code>,
    pub calls: Mutex<Vec<Call>>,
    /// How many audit records the log holds; served two per page.
    pub audit_records: usize,
    pub page_sizes: Mutex<Vec<u32>>,
    pub answered: AtomicUsize,
    /// The logins offered (`LoginOptions`); a login of another kind is FAILED_PRECONDITION.
    pub options: LoginOptionsResponse,
    /// Every login asked for.
    pub logins: Mutex<Vec<LoginRequest>>,
}

impl Fake {
    fn check<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let header = request.metadata().get("authorization").and_then(|v| v.to_str().ok()).map(String::from);
        if let Ok(mut seen) = self.seen.lock() {
            seen.push(header);
        }
        if self.answered.fetch_add(1, Ordering::SeqCst) < self.unavailable_first {
            return Err(Status::unavailable("no leader elected yet"));
        }
        Ok(())
    }

    fn record(&self, call: Call) {
        if let Ok(mut calls) = self.calls.lock() {
            calls.push(call);
        }
    }
}

fn role(name: &str, users: &[&str]) -> Role {
    Role {
        name: name.into(),
        builtin: name == "viewer",
        permissions: vec!["users.read".into(), "nodes.read".into()],
        users: users.iter().map(|u| u.to_string()).collect(),
        groups: Vec::new(),
    }
}

fn info(name: &str) -> ApiTokenInfo {
    ApiTokenInfo {
        name: name.into(),
        role: "viewer".into(),
        created_at: "2026-03-01T12:00:00Z".into(),
        expires_at: "2026-05-30T12:00:00Z".into(),
        created_by: "admin".into(),
    }
}

#[tonic::async_trait]
impl Access for Fake {
    async fn who_am_i(&self, req: Request<WhoAmIRequest>) -> Result<Response<WhoAmIResponse>, Status> {
        self.check(&req)?;
        if let Some(code) = self.refuse {
            let credential = req.metadata().get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("none");
            return Err(Status::new(code, format!("credential {credential:?} refused")));
        }
        Ok(Response::new(WhoAmIResponse {
            principal: "token:ci".into(),
            authenticated_by: "token".into(),
            groups: Vec::new(),
            roles: vec!["viewer".into()],
            permissions: vec!["users.read".into(), "nodes.read".into()],
        }))
    }
    async fn list_roles(&self, req: Request<ListRolesRequest>) -> Result<Response<ListRolesResponse>, Status> {
        self.check(&req)?;
        Ok(Response::new(ListRolesResponse { roles: vec![role("viewer", &["alice"])] }))
    }
    async fn get_role(&self, req: Request<GetRoleRequest>) -> Result<Response<Role>, Status> {
        self.check(&req)?;
        match req.into_inner().name.as_str() {
            "viewer" => Ok(Response::new(role("viewer", &[]))),
            name => Err(Status::not_found(format!("no role {name}"))),
        }
    }
    async fn create_role(&self, req: Request<CreateRoleRequest>) -> Result<Response<Role>, Status> {
        self.check(&req)?;
        let req = req.into_inner();
        self.record(Call::CreateRole(req.clone()));
        Ok(Response::new(Role { name: req.name, permissions: req.permissions, ..Default::default() }))
    }
    async fn delete_role(&self, req: Request<DeleteRoleRequest>) -> Result<Response<Role>, Status> {
        self.check(&req)?;
        Err(Status::unimplemented("fake"))
    }
    async fn bind_role(&self, req: Request<BindRoleRequest>) -> Result<Response<Role>, Status> {
        self.check(&req)?;
        let req = req.into_inner();
        self.record(Call::Bind(req.clone()));
        Ok(Response::new(role(&req.role, &[&req.user])))
    }
    async fn unbind_role(&self, req: Request<BindRoleRequest>) -> Result<Response<Role>, Status> {
        self.check(&req)?;
        let req = req.into_inner();
        self.record(Call::Unbind(req.clone()));
        Ok(Response::new(role(&req.role, &[])))
    }
    async fn revoke_sessions(
        &self,
        req: Request<RevokeSessionsRequest>,
    ) -> Result<Response<RevokeSessionsResponse>, Status> {
        self.check(&req)?;
        let req = req.into_inner();
        self.record(Call::RevokeSessions(req.clone()));
        Ok(Response::new(RevokeSessionsResponse { principal: req.principal, all: req.all }))
    }
    async fn create_api_token(&self, req: Request<CreateApiTokenRequest>) -> Result<Response<ApiTokenSecret>, Status> {
        self.check(&req)?;
        let req = req.into_inner();
        self.record(Call::CreateToken(req.clone()));
        Ok(Response::new(ApiTokenSecret {
            name: req.name,
            role: req.role,
            token: "vpnt1.new-secret".into(),
            expires_at: "2026-04-09T12:00:00Z".into(),
        }))
    }
    async fn list_api_tokens(
        &self,
        req: Request<ListApiTokensRequest>,
    ) -> Result<Response<ListApiTokensResponse>, Status> {
        self.check(&req)?;
        Ok(Response::new(ListApiTokensResponse { tokens: vec![info("billing-bot")] }))
    }
    async fn revoke_api_token(&self, req: Request<RevokeApiTokenRequest>) -> Result<Response<ApiTokenInfo>, Status> {
        self.check(&req)?;
        let name = req.into_inner().name;
        self.record(Call::RevokeToken(name.clone()));
        match name.as_str() {
            "billing-bot" => Ok(Response::new(info(&name))),
            _ => Err(Status::not_found("no such token")),
        }
    }
    /// alice with her password, or the one ID token; as the server words its refusals.
    async fn login(&self, req: Request<LoginRequest>) -> Result<Response<LoginResponse>, Status> {
        self.check(&req)?;
        let req = req.into_inner();
        if let Ok(mut logins) = self.logins.lock() {
            logins.push(req.clone());
        }
        let (token, principal, group) = match (req.ldap, req.oidc_id_token.as_str()) {
            (Some(_), _) if !self.options.ldap => {
                return Err(Status::failed_precondition("this cluster has no LDAP login: start vpnd with --ldap-url"))
            }
            (Some(ldap), "") if ldap.user == LDAP_USER && ldap.password == PASSWORD => {
                (LDAP_SESSION, "ldap:alice", "ldap:ops")
            }
            (Some(_), "") => {
                return Err(Status::unauthenticated("wrong user name or password, or the account is disabled"))
            }
            (None, ID_TOKEN) => (OIDC_SESSION, "oidc:carol@example.com", "oidc:admins"),
            (None, _) => return Err(Status::unauthenticated("the ID token is not valid: bad signature")),
            (Some(_), _) => return Err(Status::invalid_argument("give exactly one of ldap and oidc_id_token")),
        };
        Ok(Response::new(LoginResponse {
            token: token.into(),
            principal: principal.into(),
            groups: vec![group.into()],
            expires_at: EXPIRES_AT.into(),
        }))
    }
    async fn login_options(&self, req: Request<LoginOptionsRequest>) -> Result<Response<LoginOptionsResponse>, Status> {
        self.check(&req)?;
        Ok(Response::new(self.options.clone()))
    }
    /// Pages of two records, newest first, whatever the page size asked for.
    async fn list_audit(&self, req: Request<ListAuditRequest>) -> Result<Response<ListAuditResponse>, Status> {
        self.check(&req)?;
        let req = req.into_inner();
        if let Ok(mut sizes) = self.page_sizes.lock() {
            sizes.push(req.page_size);
        }
        let start: usize = req.page_token.parse().unwrap_or(0);
        let end = (start + 2).min(self.audit_records);
        let records = (start..end)
            .map(|i| AuditRecord {
                seq: (self.audit_records - i) as u64,
                method: "CreateUser".into(),
                outcome: "ok".into(),
                ..Default::default()
            })
            .collect();
        let next_page_token = if end < self.audit_records { end.to_string() } else { String::new() };
        Ok(Response::new(ListAuditResponse { records, next_page_token }))
    }
}

/// A fake serving TLS with a certificate of a fresh CA, whose `ca.crt` lives in `dir`.
pub struct Served {
    pub addr: String,
    pub ca_cert: String,
    pub fake: Arc<Fake>,
    _dir: tempfile::TempDir,
}

pub async fn serve(fake: Fake) -> Served {
    let ca = vpn_pki::Ca::generate("access test CA").expect("CA");
    let hosts = ["127.0.0.1".to_owned()];
    let issued =
        ca.issue_node(1, vpn_pki::Role::ControlPlane, &hosts, Duration::from_secs(3600)).expect("node certificate");
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_cert = dir.path().join("ca.crt");
    std::fs::write(&ca_cert, ca.cert_pem()).expect("write ca.crt");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr").to_string();
    let addr_shown = addr.clone();
    let fake = Arc::new(fake);
    let tls = ServerTlsConfig::new().identity(Identity::from_pem(&issued.cert_pem, &issued.key_pem));
    let server = Server::builder()
        .tls_config(tls)
        .expect("server TLS")
        .add_service(AccessServer::from_arc(fake.clone()))
        .serve_with_incoming(TcpListenerStream::new(listener));
    // The server runs until the test ends; if it ever stops early, say so
    // (a test would otherwise see only "connection refused").
    tokio::spawn(async move {
        let ended = server.await;
        eprintln!("the fake Access server on {addr_shown} stopped: {ended:?}");
    });
    Served { addr, ca_cert: ca_cert.display().to_string(), fake, _dir: dir }
}

/// The `authorization` metadata of every call so far.
pub fn seen(fake: &Fake) -> Vec<Option<String>> {
    fake.seen.lock().map(|seen| seen.clone()).unwrap_or_default()
}
