//! Random bytes, and mutations of valid requests, sent over the wire to every
//! public RPC the protos declare and to every HTTP route of a real node: it
//! never panics (it keeps answering and logs no panic), answers the HTTP
//! routes without a server error, and a call it refuses changes nothing.
//! Cases: `FUZZ_CASES` (default 1,000); a longer run:
//! `FUZZ_CASES=100000 cargo nextest run -p cluster-tests --test t71_wire_fuzz`.

use std::str::FromStr;
use std::time::Duration;

use cluster_tests::Cluster;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use prost::bytes::{Buf, BufMut};
use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;
use tonic::Status;
use vpn_fuzzkit::{mutate, mutations};
use vpn_proto::v1::access_client::AccessClient;
use vpn_proto::v1::cluster_client::ClusterClient;
use vpn_proto::v1::users_client::UsersClient;
use vpn_proto::v1::*;

/// A codec that sends and returns raw message bytes.
#[derive(Default, Clone)]
struct Raw;

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;

    fn encoder(&mut self) -> Raw {
        Raw
    }

    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let n = buf.remaining();
        Ok(Some(buf.copy_to_bytes(n).to_vec()))
    }
}

/// Every public RPC, with a valid request to mutate.
fn rpcs() -> Vec<(String, Vec<u8>)> {
    let set = prost_types::FileDescriptorSet::decode(vpn_proto::FILE_DESCRIPTOR_SET).expect("descriptors");
    let sample = |method: &str| -> Vec<u8> {
        match method {
            "CreateUser" => CreateUserRequest {
                name: "fuzz-user".into(),
                expires_at: "30d".into(),
                data_limit_bytes: 1 << 30,
                reset: "monthly".into(),
                placement_constraint: [("region".to_owned(), "eu".to_owned())].into(),
            }
            .encode_to_vec(),
            "UpdateUser" => {
                UpdateUserRequest { name: "alice".into(), status: Some(2), ..Default::default() }.encode_to_vec()
            }
            "GetUser" | "DeleteUser" | "ResetTraffic" | "RotateToken" | "GetUserLinks" => {
                GetUserRequest { name: "alice".into(), consistency: 0 }.encode_to_vec()
            }
            "ListUsers" | "ListAudit" => ListUsersRequest { page_size: 10, ..Default::default() }.encode_to_vec(),
            // Id 0: a valid one would add a learner that never catches up.
            "AddMember" => AddMemberRequest { id: 0, addr: "127.0.0.1:1".into(), ..Default::default() }.encode_to_vec(),
            "CreateJoinToken" => {
                CreateJoinTokenRequest { role: "dataplane".into(), ttl_seconds: 60, uses: 1 }.encode_to_vec()
            }
            "CreateRole" => {
                CreateRoleRequest { name: "fuzz".into(), permissions: vec!["users.read".into()] }.encode_to_vec()
            }
            "BindRole" | "UnbindRole" => {
                BindRoleRequest { role: "viewer".into(), user: "x".into(), group: String::new() }.encode_to_vec()
            }
            "CreateApiToken" => {
                CreateApiTokenRequest { name: "fuzz".into(), role: "viewer".into(), ttl_seconds: 60 }.encode_to_vec()
            }
            "Login" => LoginRequest {
                ldap: Some(LdapLogin { user: "a".into(), password: "b".into() }),
                oidc_id_token: String::new(),
            }
            .encode_to_vec(),
            _ => NodeRequest { id: 1 }.encode_to_vec(),
        }
    };
    let public = set.file.iter().filter(|f| f.package() == "vpn.v1");
    public
        .flat_map(|f| f.service.iter().map(move |s| (f.package().to_owned(), s)))
        .flat_map(|(package, s)| {
            s.method.iter().map(move |m| (format!("/{package}.{}/{}", s.name(), m.name()), sample(m.name())))
        })
        .collect()
}

#[derive(Debug, Clone)]
enum Input {
    /// A valid request of RPC `rpc`, mutated.
    Mutated { rpc: usize, mutations: Vec<vpn_fuzzkit::Mutation> },
    /// Random bytes to RPC `rpc`.
    Random { rpc: usize, bytes: Vec<u8> },
    /// A GET of an HTTP path.
    Http(String),
}

fn input(rpcs: usize) -> impl Strategy<Value = Input> {
    let path = prop_oneof![
        Just("/livez".to_owned()),
        "/readyz(\\?verbose)?",
        Just("/metrics".to_owned()),
        "/sub/[A-Za-z0-9_%.-]{0,80}(\\?format=[a-z-]{0,12})?",
        "/[ -~]{0,40}".prop_map(|p| p.replace([' ', '#'], "")),
    ];
    prop_oneof![
        4 => (0..rpcs, mutations()).prop_map(|(rpc, mutations)| Input::Mutated { rpc, mutations }),
        2 => (0..rpcs, vpn_fuzzkit::bytes(256)).prop_map(|(rpc, bytes)| Input::Random { rpc, bytes }),
        1 => path.prop_map(Input::Http),
    ]
}

/// Everything a call could change, read from the node.
async fn state(ch: &Channel) -> String {
    let (mut users, mut access) = (UsersClient::new(ch.clone()), AccessClient::new(ch.clone()));
    let mut cluster = ClusterClient::new(ch.clone());
    let users =
        users.list_users(ListUsersRequest { page_size: 1000, ..Default::default() }).await.map(|r| r.into_inner());
    let roles = access.list_roles(ListRolesRequest {}).await.map(|r| r.into_inner());
    let tokens = access.list_api_tokens(ListApiTokensRequest {}).await.map(|r| r.into_inner());
    let joins = cluster.list_join_tokens(ListJoinTokensRequest {}).await.map(|r| r.into_inner());
    let members = cluster.status(StatusRequest {}).await.map(|m| m.into_inner().members);
    format!("{users:?}\n{roles:?}\n{tokens:?}\n{joins:?}\n{members:?}")
}

#[test]
fn fuzz_wire_every_public_rpc_and_http_route() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let _context = runtime.enter();
    let cluster = runtime.block_on(Cluster::start(1, &[]));
    let (ch, http) = (cluster.channel(1), cluster.node(1).http);
    runtime
        .block_on(
            UsersClient::new(ch.clone()).create_user(CreateUserRequest { name: "alice".into(), ..Default::default() }),
        )
        .expect("alice");
    let rpcs = rpcs();
    assert!(rpcs.len() >= 30, "{rpcs:?}");
    vpn_fuzzkit::run("wire_public", file!(), input(rpcs.len()), |input| {
        runtime.block_on(async {
            match input {
                Input::Http(path) => {
                    let (code, body) =
                        cluster_tests::cluster::http_get(http, &path).await.map_err(TestCaseError::fail)?;
                    prop_assert!(code < 500 || code == 503, "GET {path}: {code} {body}");
                }
                Input::Mutated { rpc, mutations } => call(&ch, &rpcs[rpc].0, mutate(&rpcs[rpc].1, &mutations)).await?,
                Input::Random { rpc, bytes } => call(&ch, &rpcs[rpc].0, bytes).await?,
            }
            Ok(())
        })
    });
    let log = cluster.node(1).log_text();
    assert!(!log.contains("panicked"), "the node panicked:\n{log}");
    runtime.block_on(async {
        let (code, _) = cluster_tests::cluster::http_get(http, "/livez").await.expect("alive");
        assert_eq!(code, 200);
    });
}

/// One raw call; when it is refused, the state must be as before it.
async fn call(ch: &Channel, path: &str, body: Vec<u8>) -> Result<(), TestCaseError> {
    let before = state(ch).await;
    let mut grpc = tonic::client::Grpc::new(ch.clone());
    grpc.ready().await.map_err(|e| TestCaseError::fail(format!("the node stopped answering: {e}")))?;
    let mut req = tonic::Request::new(body);
    req.set_timeout(Duration::from_secs(10));
    let path = tonic::codegen::http::uri::PathAndQuery::from_str(path).expect("path");
    match grpc.unary(req, path.clone(), Raw).await {
        Ok(_) => Ok(()),
        // A call that timed out or lost its leader may or may not have taken effect.
        Err(status) if matches!(status.code(), tonic::Code::DeadlineExceeded | tonic::Code::Unavailable) => Ok(()),
        // (tonic answers an undecodable message with INTERNAL.)
        Err(status) => {
            prop_assert_eq!(state(ch).await, before, "{} refused ({:?}) yet changed the state", path, status.code());
            Ok(())
        }
    }
}
