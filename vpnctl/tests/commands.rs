//! What the user-limit and node-maintenance commands send and print, against a fake server on
//! port 0 that records every request. (The real server's behaviour is covered by cluster-tests.)

use std::sync::{Arc, Mutex};

use clap::Parser;
use serde_json::{json, Value};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;
use tonic::{Request, Response, Status};
use vpn_proto::v1::nodes_server::{Nodes, NodesServer};
use vpn_proto::v1::users_server::{Users, UsersServer};
use vpn_proto::v1::*;
use vpnctl::{Cli, CliError, Format, Output};

/// A request the fake received.
#[derive(Debug, Clone, PartialEq)]
enum Call {
    Create(CreateUserRequest),
    Update(UpdateUserRequest),
    ResetTraffic(String),
    RotateToken(String),
    Cordon(u64),
    Uncordon(u64),
    Drain(u64),
}

#[derive(Default)]
struct Fake {
    calls: Mutex<Vec<Call>>,
    /// Refuse to enable users, as the server does for one still past its expiry.
    refuse_enable: bool,
}

impl Fake {
    fn record(&self, call: Call) {
        if let Ok(mut calls) = self.calls.lock() {
            calls.push(call);
        }
    }
}

/// The user the fake answers with: limits set, placed on two nodes.
fn user(name: &str) -> User {
    User {
        id: "u-1".into(),
        name: name.into(),
        status: UserStatus::Active as i32,
        created_at: "2026-01-01T00:00:00Z".into(),
        expires_at: "2027-01-31T00:00:00Z".into(),
        data_limit_bytes: 50 << 30,
        used_bytes: 1 << 30,
        reset: "monthly".into(),
        period_started_at: "2026-03-01T00:00:00Z".into(),
        placements: vec![1, 4],
        subscription_token: "tok".into(),
        subscription_url: "http://10.0.0.1:8080/sub/tok".into(),
        ..Default::default()
    }
}

fn node(id: u64, status: &str) -> Node {
    Node { id, public_host: format!("vpn{id}.example.com"), status: status.into(), users: 120, ..Default::default() }
}

#[tonic::async_trait]
impl Users for Fake {
    async fn create_user(&self, req: Request<CreateUserRequest>) -> Result<Response<User>, Status> {
        let req = req.into_inner();
        self.record(Call::Create(req.clone()));
        Ok(Response::new(user(&req.name)))
    }
    async fn get_user(&self, req: Request<GetUserRequest>) -> Result<Response<User>, Status> {
        Ok(Response::new(user(&req.into_inner().name)))
    }
    async fn list_users(&self, _: Request<ListUsersRequest>) -> Result<Response<ListUsersResponse>, Status> {
        Ok(Response::new(ListUsersResponse { users: vec![user("alice")], next_page_token: String::new() }))
    }
    async fn update_user(&self, req: Request<UpdateUserRequest>) -> Result<Response<User>, Status> {
        let req = req.into_inner();
        self.record(Call::Update(req.clone()));
        if self.refuse_enable && req.status == Some(UserStatus::Active as i32) {
            return Err(Status::failed_precondition("user bob expired at 2026-01-01T00:00:00Z"));
        }
        Ok(Response::new(User { status: req.status.unwrap_or(UserStatus::Active as i32), ..user(&req.name) }))
    }
    async fn delete_user(&self, _: Request<DeleteUserRequest>) -> Result<Response<DeleteUserResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn get_user_links(&self, _: Request<GetUserLinksRequest>) -> Result<Response<GetUserLinksResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn reset_traffic(&self, req: Request<ResetTrafficRequest>) -> Result<Response<User>, Status> {
        let name = req.into_inner().name;
        self.record(Call::ResetTraffic(name.clone()));
        Ok(Response::new(User { used_bytes: 0, ..user(&name) }))
    }
    async fn rotate_token(&self, req: Request<RotateTokenRequest>) -> Result<Response<User>, Status> {
        let name = req.into_inner().name;
        self.record(Call::RotateToken(name.clone()));
        Ok(Response::new(User { subscription_url: "http://10.0.0.1:8080/sub/new".into(), ..user(&name) }))
    }
}

#[tonic::async_trait]
impl Nodes for Fake {
    async fn list_nodes(&self, _: Request<ListNodesRequest>) -> Result<Response<ListNodesResponse>, Status> {
        Ok(Response::new(ListNodesResponse { nodes: vec![node(1, "ready")] }))
    }
    async fn get_node(&self, req: Request<GetNodeRequest>) -> Result<Response<Node>, Status> {
        match req.into_inner().id {
            4 => Ok(Response::new(node(4, "ready"))),
            id => Err(Status::not_found(format!("no node {id}"))),
        }
    }
    async fn cordon_node(&self, req: Request<NodeRequest>) -> Result<Response<Node>, Status> {
        let id = req.into_inner().id;
        self.record(Call::Cordon(id));
        Ok(Response::new(node(id, "cordoned")))
    }
    async fn uncordon_node(&self, req: Request<NodeRequest>) -> Result<Response<Node>, Status> {
        let id = req.into_inner().id;
        self.record(Call::Uncordon(id));
        Ok(Response::new(node(id, "ready")))
    }
    async fn drain_node(&self, req: Request<NodeRequest>) -> Result<Response<Node>, Status> {
        let id = req.into_inner().id;
        self.record(Call::Drain(id));
        Ok(Response::new(node(id, "draining")))
    }
}

/// Serves `fake` on a fresh port; returns its `host:port` and the fake, to read its calls.
async fn serve(fake: Fake) -> (String, Arc<Fake>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr").to_string();
    let fake = Arc::new(fake);
    let server = Server::builder()
        .add_service(UsersServer::from_arc(fake.clone()))
        .add_service(NodesServer::from_arc(fake.clone()))
        .serve_with_incoming(TcpListenerStream::new(listener));
    tokio::spawn(server);
    (addr, fake)
}

/// Runs `vpnctl --endpoints <addr> <args>`; returns the JSON and the table it would print.
async fn vpnctl(addr: &str, args: &[&str]) -> Result<(Value, String), CliError> {
    let argv = ["vpnctl", "--endpoints", addr].into_iter().chain(args.iter().copied());
    let cli = Cli::try_parse_from(argv).expect("valid command line");
    let output = vpnctl::execute(cli).await?;
    let table = output.render(Format::Table);
    match output {
        Output::Document(document) => Ok((document.json, table)),
        Output::Raw(text) => panic!("expected a document, got {text}"),
    }
}

fn calls(fake: &Fake) -> Vec<Call> {
    fake.calls.lock().map(|calls| calls.clone()).unwrap_or_default()
}

#[tokio::test]
async fn user_add_sends_its_limits_in_rfc3339_and_bytes() {
    let (addr, fake) = serve(Fake::default()).await;
    let args = ["user", "add", "bob", "--expires", "2099-01-31", "--data-limit", "50GiB", "--reset", "monthly"];
    let (json, table) = vpnctl(&addr, &[&args[..], &["--constraint", "region=eu"]].concat()).await.expect("add");
    let expected = CreateUserRequest {
        name: "bob".into(),
        expires_at: "2099-01-31T00:00:00Z".into(),
        data_limit_bytes: 50 << 30,
        reset: "monthly".into(),
        placement_constraint: [("region".to_owned(), "eu".to_owned())].into(),
    };
    assert_eq!(calls(&fake), [Call::Create(expected)]);
    assert_eq!(json["subscription_url"], "http://10.0.0.1:8080/sub/tok");
    assert!(table.contains("1 GiB of 50 GiB (2%)"), "{table}");
}

#[tokio::test]
async fn user_show_json_has_the_contract_fields() {
    let (addr, _) = serve(Fake::default()).await;
    let (json, _) = vpnctl(&addr, &["user", "show", "alice"]).await.expect("show");
    for (key, value) in [
        ("subscription_url", json!("http://10.0.0.1:8080/sub/tok")),
        ("used_bytes", json!(1u64 << 30)),
        ("data_limit_bytes", json!(50u64 << 30)),
        ("expires_at", json!("2027-01-31T00:00:00Z")),
        ("placements", json!([1, 4])),
        ("reset", json!("monthly")),
        ("period_started_at", json!("2026-03-01T00:00:00Z")),
    ] {
        assert_eq!(json[key], value, "{key}");
    }
}

#[tokio::test]
async fn user_limit_changes_limits_without_enabling() {
    let (addr, fake) = serve(Fake::default()).await;
    let args = ["user", "limit", "bob", "--expires", "never", "--data-limit", "unlimited"];
    let (json, table) = vpnctl(&addr, &args).await.expect("limit");
    let expected = UpdateUserRequest {
        name: "bob".into(),
        status: None,
        expires_at: Some("never".into()),
        data_limit_bytes: Some(0),
        reset: None,
    };
    assert_eq!(calls(&fake), [Call::Update(expected)]);
    assert_eq!(json["name"], "bob");
    assert!(table.starts_with("changed the limits of user 'bob'\n"), "{table}");
}

#[tokio::test]
async fn enabling_an_expired_user_says_how_to_give_a_new_limit() {
    let (addr, fake) = serve(Fake { refuse_enable: true, ..Default::default() }).await;
    let err = vpnctl(&addr, &["user", "enable", "bob"]).await.expect_err("refused");
    assert_eq!(err.exit_code(), 1);
    let message = err.to_string();
    assert!(message.starts_with("FAILED_PRECONDITION: user bob expired at"), "{message}");
    assert!(message.contains("`vpnctl user enable bob --expires 30d --data-limit 50GiB`"), "{message}");

    let (addr, fake_ok) = serve(Fake::default()).await;
    vpnctl(&addr, &["user", "enable", "bob", "--data-limit", "100GB"]).await.expect("enable");
    let expected = UpdateUserRequest {
        name: "bob".into(),
        status: Some(UserStatus::Active as i32),
        data_limit_bytes: Some(100_000_000_000),
        ..Default::default()
    };
    assert_eq!(calls(&fake_ok), [Call::Update(expected)]);
    assert_eq!(calls(&fake).len(), 1);
}

#[tokio::test]
async fn reset_traffic_and_rotate_token_call_their_rpcs() {
    let (addr, fake) = serve(Fake::default()).await;
    let (json, _) = vpnctl(&addr, &["user", "reset-traffic", "bob"]).await.expect("reset");
    assert_eq!(json["used_bytes"], 0);
    let (json, table) = vpnctl(&addr, &["user", "rotate-token", "bob"]).await.expect("rotate");
    assert_eq!(json["subscription_url"], "http://10.0.0.1:8080/sub/new");
    assert_eq!(table.lines().last(), Some("http://10.0.0.1:8080/sub/new"));
    assert_eq!(calls(&fake), [Call::ResetTraffic("bob".into()), Call::RotateToken("bob".into())]);
}

#[tokio::test]
async fn node_maintenance_prints_the_node_afterwards() {
    let (addr, fake) = serve(Fake::default()).await;
    let (json, table) = vpnctl(&addr, &["node", "drain", "4"]).await.expect("drain");
    assert_eq!((json["id"].clone(), json["status"].clone()), (json!(4), json!("draining")));
    assert_eq!(table, "node 4 draining: its 120 users move to other nodes; `vpnctl node show 4` follows it\n");
    let (json, _) = vpnctl(&addr, &["node", "cordon", "4"]).await.expect("cordon");
    assert_eq!(json["status"], "cordoned");
    let (json, _) = vpnctl(&addr, &["-o", "json", "node", "uncordon", "4"]).await.expect("uncordon");
    assert_eq!(json["status"], "ready");
    assert_eq!(calls(&fake), [Call::Drain(4), Call::Cordon(4), Call::Uncordon(4)]);

    let err = vpnctl(&addr, &["node", "show", "9"]).await.expect_err("no such node");
    assert_eq!(err.exit_code(), 3);
    assert!(err.to_string().contains("`vpnctl node list`"));
}
