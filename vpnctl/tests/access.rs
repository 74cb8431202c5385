//! What the access-control commands send and print, and that the API token rides on every
//! call, against a fake `vpn.v1.Access` server on port 0 that speaks TLS (a token is sent only
//! over TLS) with a CA made by `vpn_pki`. (The real server is covered by cluster-tests.)

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use serde_json::{json, Value};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tonic::{Code, Request, Response, Status};
use vpn_proto::v1::access_server::{Access, AccessServer};
use vpn_proto::v1::*;
use vpnctl::{Cli, CliError, Format, Output};

const SECRET: &str = "vpnt1.s3cr3t-f00d";

/// A request the fake received that changes something.
#[derive(Debug, Clone, PartialEq)]
enum Call {
    CreateToken(CreateApiTokenRequest),
    RevokeToken(String),
    CreateRole(CreateRoleRequest),
    Bind(BindRoleRequest),
    Unbind(BindRoleRequest),
}

#[derive(Default)]
struct Fake {
    /// The `authorization` metadata of every call, retries included.
    seen: Mutex<Vec<Option<String>>>,
    /// Answer this many calls UNAVAILABLE first, as a node without a leader does.
    unavailable_first: usize,
    /// Refuse `WhoAmI` with this code, quoting the credential back.
    refuse: Option<Code>,
    calls: Mutex<Vec<Call>>,
    /// How many audit records the log holds; served two per page.
    audit_records: usize,
    page_sizes: Mutex<Vec<u32>>,
    answered: AtomicUsize,
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
    /// Pages of two records, newest first, whatever the page size asked for.
    async fn login(&self, _req: Request<LoginRequest>) -> Result<Response<LoginResponse>, Status> {
        Err(Status::unimplemented("the fake serves no logins"))
    }
    async fn login_options(
        &self,
        _req: Request<LoginOptionsRequest>,
    ) -> Result<Response<LoginOptionsResponse>, Status> {
        Err(Status::unimplemented("the fake serves no logins"))
    }
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
struct Served {
    addr: String,
    ca_cert: String,
    fake: Arc<Fake>,
    _dir: tempfile::TempDir,
}

async fn serve(fake: Fake) -> Served {
    let ca = vpn_pki::Ca::generate("access test CA").expect("CA");
    let hosts = ["127.0.0.1".to_owned()];
    let issued =
        ca.issue_node(1, vpn_pki::Role::ControlPlane, &hosts, Duration::from_secs(3600)).expect("node certificate");
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_cert = dir.path().join("ca.crt");
    std::fs::write(&ca_cert, ca.cert_pem()).expect("write ca.crt");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr").to_string();
    let fake = Arc::new(fake);
    let tls = ServerTlsConfig::new().identity(Identity::from_pem(&issued.cert_pem, &issued.key_pem));
    let server = Server::builder()
        .tls_config(tls)
        .expect("server TLS")
        .add_service(AccessServer::from_arc(fake.clone()))
        .serve_with_incoming(TcpListenerStream::new(listener));
    tokio::spawn(server);
    Served { addr, ca_cert: ca_cert.display().to_string(), fake, _dir: dir }
}

/// Runs `vpnctl --endpoints <addr> --ca-cert <ca> <args>` (a bare endpoint: TLS); returns the
/// JSON and the table it would print.
async fn vpnctl(served: &Served, args: &[&str]) -> Result<(Value, String), CliError> {
    let argv = ["vpnctl", "--endpoints", &served.addr, "--ca-cert", &served.ca_cert].into_iter();
    let cli = Cli::try_parse_from(argv.chain(args.iter().copied())).expect("valid command line");
    let output = vpnctl::execute(cli).await?;
    let table = output.render(Format::Table);
    match output {
        Output::Document(document) => Ok((document.json, table)),
        Output::Raw(text) => panic!("expected a document, got {text}"),
    }
}

fn seen(fake: &Fake) -> Vec<Option<String>> {
    fake.seen.lock().map(|seen| seen.clone()).unwrap_or_default()
}

fn calls(fake: &Fake) -> Vec<Call> {
    fake.calls.lock().map(|calls| calls.clone()).unwrap_or_default()
}

#[tokio::test]
async fn every_call_and_every_retry_carries_the_bearer_token() {
    let served = serve(Fake { unavailable_first: 2, ..Default::default() }).await;
    let (json, table) = vpnctl(&served, &["--token", SECRET, "whoami"]).await.expect("whoami");
    let expected = json!({
        "principal": "token:ci",
        "authenticated_by": "token",
        "groups": [],
        "roles": ["viewer"],
        "permissions": ["users.read", "nodes.read"],
    });
    assert_eq!(json, expected);
    assert!(table.starts_with("Principal:         token:ci\n"), "{table}");
    let bearer = Some(format!("Bearer {SECRET}"));
    assert_eq!(seen(&served.fake), [bearer.clone(), bearer.clone(), bearer], "two retries and the answer");

    let served = serve(Fake::default()).await;
    vpnctl(&served, &["whoami"]).await.expect("whoami without a token");
    assert_eq!(seen(&served.fake), [None], "no token, no header");
}

#[tokio::test]
async fn refusals_exit_5_and_6_say_what_to_do_and_never_quote_the_token() {
    for (code, exit, hint) in [(Code::Unauthenticated, 5, "--token"), (Code::PermissionDenied, 6, "`vpnctl whoami`")] {
        let served = serve(Fake { refuse: Some(code), ..Default::default() }).await;
        let err = vpnctl(&served, &["--token", SECRET, "whoami"]).await.expect_err("refused");
        assert_eq!(err.exit_code(), exit, "{code:?}");
        let shown = format!("{err} {err:?}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(shown.contains("credential \"Bearer <token>\" refused") && shown.contains(hint), "{shown}");
    }
}

#[tokio::test]
async fn token_commands_send_what_was_given_and_create_prints_the_secret_alone() {
    let served = serve(Fake::default()).await;
    let args = ["--token", SECRET, "token", "create", "--name", "ci", "--role", "operator", "--ttl", "30d"];
    let (json, table) = vpnctl(&served, &args).await.expect("create");
    assert_eq!(table, "vpnt1.new-secret\n");
    let expected =
        json!({"name": "ci", "role": "operator", "token": "vpnt1.new-secret", "expires_at": "2026-04-09T12:00:00Z"});
    assert_eq!(json, expected);
    vpnctl(&served, &["token", "create", "--name", "bot", "--role", "viewer"])
        .await
        .expect("create with the default ttl");
    let (json, _) = vpnctl(&served, &["token", "list"]).await.expect("list");
    assert_eq!(json["tokens"][0]["created_by"], "admin");
    let (json, table) = vpnctl(&served, &["token", "revoke", "billing-bot"]).await.expect("revoke");
    assert_eq!(json["name"], "billing-bot");
    assert!(table.starts_with("revoked API token 'billing-bot'"), "{table}");
    let err = vpnctl(&served, &["token", "revoke", "nope"]).await.expect_err("unknown token");
    assert_eq!(err.exit_code(), 3);
    assert!(err.to_string().contains("`vpnctl token list`"), "{err}");
    let create = |name: &str, role: &str, ttl_seconds| {
        Call::CreateToken(CreateApiTokenRequest { name: name.into(), role: role.into(), ttl_seconds })
    };
    assert_eq!(
        calls(&served.fake),
        [
            create("ci", "operator", 30 * 86_400),
            create("bot", "viewer", 0),
            Call::RevokeToken("billing-bot".into()),
            Call::RevokeToken("nope".into())
        ]
    );
}

#[tokio::test]
async fn role_commands_send_what_was_given() {
    let served = serve(Fake::default()).await;
    let args = ["role", "create", "support", "--permissions", "users.read,users.secrets,users.read"];
    let (json, _) = vpnctl(&served, &args).await.expect("create");
    assert_eq!(json["permissions"], json!(["users.read", "users.secrets"]));
    let (json, table) = vpnctl(&served, &["role", "bind", "viewer", "--user", "token:ci"]).await.expect("bind");
    assert_eq!(json["users"], json!(["token:ci"]));
    assert!(table.starts_with("bound user 'token:ci' to role 'viewer'\n"), "{table}");
    vpnctl(&served, &["role", "unbind", "viewer", "--group", "ldap:ops"]).await.expect("unbind");
    let (json, _) = vpnctl(&served, &["role", "list"]).await.expect("list");
    assert_eq!(
        json["roles"][0],
        json!({"name": "viewer", "builtin": true, "permissions": ["users.read", "nodes.read"], "users": ["alice"], "groups": []})
    );
    let (json, _) = vpnctl(&served, &["role", "show", "viewer"]).await.expect("show");
    assert_eq!(json["name"], "viewer");
    let err = vpnctl(&served, &["role", "show", "nope"]).await.expect_err("unknown role");
    assert_eq!(err.exit_code(), 3);
    assert!(err.to_string().starts_with("role 'nope' does not exist"), "{err}");
    let binding =
        |user: &str, group: &str| BindRoleRequest { role: "viewer".into(), user: user.into(), group: group.into() };
    assert_eq!(
        calls(&served.fake),
        [
            Call::CreateRole(CreateRoleRequest {
                name: "support".into(),
                permissions: vec!["users.read".into(), "users.secrets".into()]
            }),
            Call::Bind(binding("token:ci", "")),
            Call::Unbind(binding("", "ldap:ops")),
        ]
    );
}

#[tokio::test]
async fn audit_list_follows_the_pages_up_to_the_limit() {
    let served = serve(Fake { audit_records: 5, ..Default::default() }).await;
    let (json, _) = vpnctl(&served, &["audit", "list"]).await.expect("all");
    let seqs: Vec<u64> =
        json["records"].as_array().map(|r| r.iter().filter_map(|r| r["seq"].as_u64()).collect()).unwrap_or_default();
    assert_eq!(seqs, [5, 4, 3, 2, 1]);
    let sizes = |fake: &Fake| fake.page_sizes.lock().map(|s| s.clone()).unwrap_or_default();
    assert_eq!(sizes(&served.fake), [1000, 1000, 1000]);

    let served = serve(Fake { audit_records: 5, ..Default::default() }).await;
    let (json, table) = vpnctl(&served, &["audit", "list", "--limit", "3", "--since", "1h"]).await.expect("limited");
    assert_eq!(json["records"].as_array().map(Vec::len), Some(3), "cut at --limit though the page had more");
    assert_eq!(table.lines().count(), 4, "a header and three rows: {table}");
    assert_eq!(sizes(&served.fake), [3, 1], "asks only for what is still missing");
}
