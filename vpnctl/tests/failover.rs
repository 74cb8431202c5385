//! The client's failover, retry, leader hints and paging, against fake gRPC servers on port 0.
//! (Behaviour against a real cluster is covered by cluster-tests.)

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use clap::Parser;
use serde_json::Value;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;
use tonic::{Code, Request, Response, Status};
use vpn_proto::v1::cluster_server::{Cluster, ClusterServer};
use vpn_proto::v1::users_server::{Users, UsersServer};
use vpn_proto::v1::*;
use vpnctl::{Cli, CliError, Output};

/// A node that answers UNAVAILABLE (optionally naming a leader) for its first calls, then
/// either a status naming itself or a fixed error.
#[derive(Default)]
struct FakeNode {
    node_id: u64,
    unavailable_first: usize,
    leader_hint: Option<String>,
    error: Option<Code>,
    calls: Arc<AtomicUsize>,
    users: usize,
    page_sizes: Arc<Mutex<Vec<u32>>>,
}

impl FakeNode {
    fn check(&self) -> Result<(), Status> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        if call < self.unavailable_first {
            let mut status = Status::unavailable("not the leader");
            if let Some(addr) = &self.leader_hint {
                let value = addr.parse().map_err(|_| Status::internal("bad hint"))?;
                status.metadata_mut().insert("x-vpn-leader-addr", value);
            }
            return Err(status);
        }
        match self.error {
            Some(code) => Err(Status::new(code, "fake refusal")),
            None => Ok(()),
        }
    }

    fn status(&self) -> Result<Response<ClusterStatus>, Status> {
        self.check()?;
        Ok(Response::new(ClusterStatus {
            node_id: self.node_id,
            leader_id: Some(self.node_id),
            term: 3,
            ..Default::default()
        }))
    }
}

#[tonic::async_trait]
impl Cluster for FakeNode {
    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<ClusterStatus>, Status> {
        FakeNode::status(self)
    }
    async fn add_member(&self, _: Request<AddMemberRequest>) -> Result<Response<ClusterStatus>, Status> {
        FakeNode::status(self)
    }
    async fn remove_member(&self, _: Request<RemoveMemberRequest>) -> Result<Response<ClusterStatus>, Status> {
        FakeNode::status(self)
    }
    async fn create_join_token(&self, _: Request<CreateJoinTokenRequest>) -> Result<Response<JoinTokenSecret>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn list_join_tokens(
        &self,
        _: Request<ListJoinTokensRequest>,
    ) -> Result<Response<ListJoinTokensResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn revoke_join_token(&self, _: Request<RevokeJoinTokenRequest>) -> Result<Response<JoinTokenInfo>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn join(&self, _: Request<JoinRequest>) -> Result<Response<JoinResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn renew_certificate(&self, _: Request<RenewCertificateRequest>) -> Result<Response<JoinResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
}

#[tonic::async_trait]
impl Users for FakeNode {
    async fn create_user(&self, _: Request<CreateUserRequest>) -> Result<Response<User>, Status> {
        self.check()?;
        Err(Status::unimplemented("fake"))
    }
    async fn get_user(&self, _: Request<GetUserRequest>) -> Result<Response<User>, Status> {
        self.check()?;
        Err(Status::unimplemented("fake"))
    }
    /// Pages of two users whatever the page size asked for, to exercise the paging loop.
    async fn list_users(&self, request: Request<ListUsersRequest>) -> Result<Response<ListUsersResponse>, Status> {
        self.check()?;
        let request = request.into_inner();
        if let Ok(mut sizes) = self.page_sizes.lock() {
            sizes.push(request.page_size);
        }
        let start: usize = request.page_token.parse().unwrap_or(0);
        let end = (start + 2).min(self.users);
        let users = (start..end)
            .map(|i| User { name: format!("user{i}"), status: UserStatus::Active as i32, ..Default::default() })
            .collect();
        let next_page_token = if end < self.users { end.to_string() } else { String::new() };
        Ok(Response::new(ListUsersResponse { users, next_page_token }))
    }
    async fn update_user(&self, _: Request<UpdateUserRequest>) -> Result<Response<User>, Status> {
        self.check()?;
        Err(Status::unimplemented("fake"))
    }
    async fn delete_user(&self, _: Request<DeleteUserRequest>) -> Result<Response<DeleteUserResponse>, Status> {
        self.check()?;
        Err(Status::unimplemented("fake"))
    }
    async fn reset_traffic(&self, _: Request<ResetTrafficRequest>) -> Result<Response<User>, Status> {
        self.check()?;
        Err(Status::unimplemented("fake"))
    }
    async fn rotate_token(&self, _: Request<RotateTokenRequest>) -> Result<Response<User>, Status> {
        self.check()?;
        Err(Status::unimplemented("fake"))
    }
    async fn get_user_links(
        &self,
        req: Request<GetUserLinksRequest>,
    ) -> Result<Response<GetUserLinksResponse>, Status> {
        self.check()?;
        let url = format!("vless://u@h:443#{}", req.into_inner().name);
        Ok(Response::new(GetUserLinksResponse {
            links: vec![UserLink { node_id: self.node_id, protocol: "vless-tls".into(), url }],
        }))
    }
}

/// Serves `node` on a fresh port and returns its `host:port`.
async fn serve(node: FakeNode) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr").to_string();
    let node = Arc::new(node);
    let server = Server::builder()
        .add_service(ClusterServer::from_arc(node.clone()))
        .add_service(UsersServer::from_arc(node))
        .serve_with_incoming(TcpListenerStream::new(listener));
    tokio::spawn(server);
    addr
}

/// A `host:port` where nothing listens.
fn dead_endpoint() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("local addr").to_string()
}

async fn vpnctl(args: &[&str]) -> Result<Value, CliError> {
    let cli = Cli::try_parse_from(std::iter::once("vpnctl").chain(args.iter().copied())).expect("valid command line");
    match vpnctl::execute(cli).await? {
        Output::Document(document) => Ok(document.json),
        Output::Raw(text) => panic!("expected a document, got {text}"),
    }
}

#[tokio::test]
async fn skips_a_dead_endpoint() {
    let live = serve(FakeNode { node_id: 7, ..Default::default() }).await;
    let endpoints = format!("{},http://{live}", dead_endpoint());
    let json = vpnctl(&["--endpoints", &endpoints, "cluster", "status"]).await;
    assert_eq!(json.ok().map(|j| j["node_id"].clone()), Some(7.into()));
}

#[tokio::test]
async fn follows_the_leader_hint_to_a_node_not_in_the_list() {
    let leader = serve(FakeNode { node_id: 2, ..Default::default() }).await;
    let follower =
        serve(FakeNode { node_id: 1, unavailable_first: usize::MAX, leader_hint: Some(leader), ..Default::default() })
            .await;
    let json = vpnctl(&["--endpoints", &follower, "cluster", "status"]).await;
    assert_eq!(json.ok().map(|j| j["node_id"].clone()), Some(2.into()));
}

#[tokio::test]
async fn retries_unavailable_with_backoff_until_it_answers() {
    let calls = Arc::new(AtomicUsize::new(0));
    let node = serve(FakeNode { node_id: 1, unavailable_first: 3, calls: calls.clone(), ..Default::default() }).await;
    let json = vpnctl(&["--endpoints", &node, "cluster", "status"]).await;
    assert_eq!(json.ok().map(|j| j["term"].clone()), Some(3.into()));
    assert_eq!(calls.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn gives_up_after_the_timeout_with_exit_4() {
    let node = serve(FakeNode { unavailable_first: usize::MAX, ..Default::default() }).await;
    // Long enough for the first answer even on a loaded machine.
    let args = ["--endpoints", &node, "--timeout", "2s", "cluster", "status"];
    let err = vpnctl(&args).await.expect_err("unavailable");
    assert_eq!(err.exit_code(), 4);
    let message = err.to_string();
    assert!(message.contains(&format!("tried {node}: not the leader")), "{message}");
}

#[tokio::test]
async fn other_errors_are_not_retried_and_keep_their_exit_code() {
    for (code, exit) in [
        (Code::NotFound, 3),
        (Code::AlreadyExists, 3),
        (Code::InvalidArgument, 2),
        (Code::FailedPrecondition, 1),
        (Code::DeadlineExceeded, 4),
    ] {
        let calls = Arc::new(AtomicUsize::new(0));
        let node = serve(FakeNode { error: Some(code), calls: calls.clone(), ..Default::default() }).await;
        let err = vpnctl(&["--endpoints", &node, "member", "remove", "9"]).await.err();
        assert_eq!(err.map(|e| e.exit_code()), Some(exit), "{code:?}");
        assert_eq!(calls.load(Ordering::SeqCst), 1, "{code:?}");
    }
}

#[tokio::test]
async fn user_list_fetches_every_page() {
    let page_sizes = Arc::new(Mutex::new(Vec::new()));
    let node = serve(FakeNode { users: 5, page_sizes: page_sizes.clone(), ..Default::default() }).await;
    let json = vpnctl(&["--endpoints", &node, "user", "list"]).await;
    let names: Vec<Value> = json.ok().and_then(|j| j["users"].as_array().cloned()).unwrap_or_default();
    let names: Vec<&str> = names.iter().filter_map(|u| u["name"].as_str()).collect();
    assert_eq!(names, ["user0", "user1", "user2", "user3", "user4"]);
    let sizes = page_sizes.lock().map(|s| s.clone()).unwrap_or_default();
    assert_eq!(sizes, [1000, 1000, 1000]);
}

#[tokio::test]
async fn a_bad_user_name_fails_before_any_call() {
    let calls = Arc::new(AtomicUsize::new(0));
    let node = serve(FakeNode { calls: calls.clone(), ..Default::default() }).await;
    let err = vpnctl(&["--endpoints", &node, "user", "show", "Bob"]).await.err();
    assert_eq!(err.map(|e| e.exit_code()), Some(2));
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn user_links_print_the_servers_links() {
    let live = serve(FakeNode { node_id: 5, unavailable_first: 1, ..Default::default() }).await;
    for command in ["links", "qr"] {
        let json =
            vpnctl(&["--endpoints", &live, "-o", "json", "user", command, "alice"]).await.map_err(|e| e.to_string());
        let expected =
            serde_json::json!({"links": [{"node_id": 5, "protocol": "vless-tls", "url": "vless://u@h:443#alice"}]});
        assert_eq!(json, Ok(expected), "user {command}");
    }
}
