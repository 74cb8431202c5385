//! Who may do what, over real processes on `vpnctl pki` certificates: each
//! built-in role, through an API token sent to a follower (so writes are
//! forwarded and authorized again by the leader), gets exactly what the
//! table gives; a refused call changes nothing and writes no audit record;
//! nobody grants more than they hold; a revoked token stops working on every
//! node; and the audit log records a scripted session on every node,
//! through a leader's crash.

use std::collections::BTreeMap;

use cluster_tests::cluster::{tls_channel, CONVERGE};
use cluster_tests::mtls::{anonymous, bearer, code_of, mtls_cluster};
use cluster_tests::{eventually, Cluster};
use prost::Message;
use tonic::transport::{Channel, ClientTlsConfig};
use tonic::Code;
use vpn_proto::internal::agent_client::AgentClient;
use vpn_proto::internal::RegisterRequest;
use vpn_proto::v1::access_client::AccessClient;
use vpn_proto::v1::cluster_client::ClusterClient;
use vpn_proto::v1::nodes_client::NodesClient;
use vpn_proto::v1::users_client::UsersClient;
use vpn_proto::v1::*;

/// The permission each public RPC needs, written out here apart from the
/// server's table ("" for any principal; `None` for the node-only ones).
const NEEDS: &[(&str, Option<&str>)] = &[
    ("Users/CreateUser", Some("users.write")),
    ("Users/GetUser", Some("users.read")),
    ("Users/ListUsers", Some("users.read")),
    ("Users/UpdateUser", Some("users.write")),
    ("Users/DeleteUser", Some("users.write")),
    ("Users/GetUserLinks", Some("users.secrets")),
    ("Users/ResetTraffic", Some("users.write")),
    ("Users/RotateToken", Some("users.write")),
    ("Cluster/Status", Some("nodes.read")),
    ("Cluster/AddMember", Some("members.write")),
    ("Cluster/RemoveMember", Some("members.write")),
    ("Cluster/CreateJoinToken", Some("members.write")),
    ("Cluster/ListJoinTokens", Some("nodes.read")),
    ("Cluster/RevokeJoinToken", Some("members.write")),
    ("Cluster/Join", None),
    ("Cluster/RenewCertificate", None),
    ("Nodes/ListNodes", Some("nodes.read")),
    ("Nodes/GetNode", Some("nodes.read")),
    ("Nodes/CordonNode", Some("nodes.write")),
    ("Nodes/UncordonNode", Some("nodes.write")),
    ("Nodes/DrainNode", Some("nodes.write")),
    ("Access/WhoAmI", Some("")),
    ("Access/ListRoles", Some("roles.write")),
    ("Access/GetRole", Some("roles.write")),
    ("Access/CreateRole", Some("roles.write")),
    ("Access/DeleteRole", Some("roles.write")),
    ("Access/BindRole", Some("roles.write")),
    ("Access/UnbindRole", Some("roles.write")),
    ("Access/CreateApiToken", Some("tokens.write")),
    ("Access/ListApiTokens", Some("tokens.write")),
    ("Access/RevokeApiToken", Some("tokens.write")),
    ("Access/RevokeSessions", Some("tokens.write")),
    ("Access/ListAudit", Some("audit.read")),
    ("Access/Login", Some("")),
    ("Access/LoginOptions", Some("")),
];

/// What each built-in role holds, as the contract states it.
fn holds(role: &str, permission: &str) -> bool {
    match role {
        "admin" => true,
        "operator" => ["users.read", "users.write", "users.secrets", "nodes.read", "nodes.write"].contains(&permission),
        "viewer" => ["users.read", "nodes.read"].contains(&permission),
        "auditor" => permission == "audit.read",
        other => panic!("no role {other}"),
    }
}

/// Calls `rpc` with a request that changes nothing even when allowed (a
/// bad name, an unknown id, a read), as the holder of `token`.
async fn call(ch: Channel, token: &str, rpc: &str) -> Code {
    let bad = || "Bad Name".to_owned();
    let (mut users, mut cluster) = (UsersClient::new(ch.clone()), ClusterClient::new(ch.clone()));
    let (mut nodes, mut access) = (NodesClient::new(ch.clone()), AccessClient::new(ch));
    macro_rules! r {
        ($msg:expr) => {
            bearer($msg, token)
        };
    }
    match rpc {
        "Users/CreateUser" => {
            code_of(users.create_user(r!(CreateUserRequest { name: bad(), ..Default::default() })).await)
        }
        "Users/GetUser" => {
            code_of(users.get_user(r!(GetUserRequest { name: "alice".into(), ..Default::default() })).await)
        }
        "Users/ListUsers" => code_of(users.list_users(r!(ListUsersRequest::default())).await),
        "Users/UpdateUser" => {
            code_of(users.update_user(r!(UpdateUserRequest { name: "alice".into(), ..Default::default() })).await)
        }
        "Users/DeleteUser" => code_of(users.delete_user(r!(DeleteUserRequest { name: bad() })).await),
        "Users/GetUserLinks" => {
            code_of(users.get_user_links(r!(GetUserLinksRequest { name: "alice".into(), ..Default::default() })).await)
        }
        "Users/ResetTraffic" => code_of(users.reset_traffic(r!(ResetTrafficRequest { name: bad() })).await),
        "Users/RotateToken" => code_of(users.rotate_token(r!(RotateTokenRequest { name: bad() })).await),
        "Cluster/Status" => code_of(cluster.status(r!(StatusRequest {})).await),
        "Cluster/AddMember" => code_of(cluster.add_member(r!(AddMemberRequest::default())).await),
        "Cluster/RemoveMember" => code_of(cluster.remove_member(r!(RemoveMemberRequest { id: 777 })).await),
        "Cluster/CreateJoinToken" => code_of(
            cluster.create_join_token(r!(CreateJoinTokenRequest { role: "bogus".into(), ..Default::default() })).await,
        ),
        "Cluster/ListJoinTokens" => code_of(cluster.list_join_tokens(r!(ListJoinTokensRequest {})).await),
        "Cluster/RevokeJoinToken" => {
            code_of(cluster.revoke_join_token(r!(RevokeJoinTokenRequest { id: "nope".into() })).await)
        }
        "Cluster/Join" => code_of(cluster.join(r!(JoinRequest::default())).await),
        "Cluster/RenewCertificate" => code_of(cluster.renew_certificate(r!(RenewCertificateRequest::default())).await),
        "Nodes/ListNodes" => code_of(nodes.list_nodes(r!(ListNodesRequest::default())).await),
        "Nodes/GetNode" => code_of(nodes.get_node(r!(GetNodeRequest { id: 777, ..Default::default() })).await),
        "Nodes/CordonNode" => code_of(nodes.cordon_node(r!(NodeRequest { id: 777 })).await),
        "Nodes/UncordonNode" => code_of(nodes.uncordon_node(r!(NodeRequest { id: 777 })).await),
        "Nodes/DrainNode" => code_of(nodes.drain_node(r!(NodeRequest { id: 777 })).await),
        "Access/WhoAmI" => code_of(access.who_am_i(r!(WhoAmIRequest {})).await),
        "Access/ListRoles" => code_of(access.list_roles(r!(ListRolesRequest {})).await),
        "Access/GetRole" => code_of(access.get_role(r!(GetRoleRequest { name: "viewer".into() })).await),
        "Access/CreateRole" => {
            code_of(access.create_role(r!(CreateRoleRequest { name: bad(), permissions: vec![] })).await)
        }
        "Access/DeleteRole" => code_of(access.delete_role(r!(DeleteRoleRequest { name: bad() })).await),
        "Access/BindRole" => {
            code_of(access.bind_role(r!(BindRoleRequest { role: "viewer".into(), ..Default::default() })).await)
        }
        "Access/UnbindRole" => {
            code_of(access.unbind_role(r!(BindRoleRequest { role: "viewer".into(), ..Default::default() })).await)
        }
        "Access/CreateApiToken" => {
            code_of(access.create_api_token(r!(CreateApiTokenRequest { name: bad(), ..Default::default() })).await)
        }
        "Access/ListApiTokens" => code_of(access.list_api_tokens(r!(ListApiTokensRequest {})).await),
        "Access/RevokeApiToken" => code_of(access.revoke_api_token(r!(RevokeApiTokenRequest { name: bad() })).await),
        // Neither a principal nor all: INVALID_ARGUMENT where allowed.
        "Access/RevokeSessions" => code_of(access.revoke_sessions(r!(RevokeSessionsRequest::default())).await),
        "Access/ListAudit" => code_of(access.list_audit(r!(ListAuditRequest::default())).await),
        "Access/Login" => code_of(access.login(r!(LoginRequest::default())).await),
        "Access/LoginOptions" => code_of(access.login_options(r!(LoginOptionsRequest {})).await),
        other => panic!("the test has no call for {other}: add it to NEEDS and here"),
    }
}

/// Every RPC of the public services, from the protos themselves.
fn public_rpcs() -> Vec<String> {
    let set = prost_types::FileDescriptorSet::decode(vpn_proto::FILE_DESCRIPTOR_SET).expect("descriptors");
    let public = set.file.iter().filter(|f| f.package() == "vpn.v1");
    public
        .flat_map(|f| f.service.iter().flat_map(|s| s.method.iter().map(move |m| format!("{}/{}", s.name(), m.name()))))
        .collect()
}

async fn admin_access(cluster: &Cluster, id: u64) -> AccessClient<Channel> {
    AccessClient::new(cluster.channel(id))
}

async fn create_token(cluster: &Cluster, id: u64, name: &str, role: &str) -> String {
    let req = CreateApiTokenRequest { name: name.into(), role: role.into(), ttl_seconds: 0 };
    let made = admin_access(cluster, id).await.create_api_token(req).await.expect("create token");
    made.into_inner().token
}

/// Everything a refused call could have changed, as the leader sees it.
async fn snapshot(cluster: &Cluster, leader: u64) -> String {
    let ch = cluster.channel(leader);
    let users = UsersClient::new(ch.clone()).list_users(ListUsersRequest::default()).await.expect("users").into_inner();
    let roles = AccessClient::new(ch.clone()).list_roles(ListRolesRequest {}).await.expect("roles").into_inner();
    let tokens =
        AccessClient::new(ch.clone()).list_api_tokens(ListApiTokensRequest {}).await.expect("tokens").into_inner();
    let joins =
        ClusterClient::new(ch.clone()).list_join_tokens(ListJoinTokensRequest {}).await.expect("joins").into_inner();
    let audit = AccessClient::new(ch).list_audit(ListAuditRequest::default()).await.expect("audit").into_inner();
    format!("{users:?}\n{roles:?}\n{tokens:?}\n{joins:?}\n{audit:?}")
}

#[tokio::test(flavor = "multi_thread")]
async fn access_every_role_gets_what_the_table_gives_and_a_refusal_changes_nothing() {
    let (cluster, pki, leader) = mtls_cluster(false, &[]).await;
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    let mut users = cluster.users(leader);
    users.create_user(CreateUserRequest { name: "alice".into(), ..Default::default() }).await.expect("alice");

    let rpcs = public_rpcs();
    let needs: BTreeMap<&str, Option<&str>> = NEEDS.iter().copied().collect();
    let unlisted: Vec<&String> = rpcs.iter().filter(|r| !needs.contains_key(r.as_str())).collect();
    assert!(unlisted.is_empty(), "public RPCs the matrix does not cover: {unlisted:?}");

    let mut tokens = BTreeMap::new();
    for role in ["admin", "operator", "viewer", "auditor"] {
        tokens.insert(role, create_token(&cluster, leader, &format!("{role}-bot"), role).await);
    }
    for (role, token) in &tokens {
        let ch = anonymous(&cluster, &pki, follower);
        // The refused calls first: together they must change nothing at all.
        let before = snapshot(&cluster, leader).await;
        for rpc in &rpcs {
            let Some(need) = needs[rpc.as_str()] else { continue };
            if !need.is_empty() && !holds(role, need) {
                let code = call(ch.clone(), token, rpc).await;
                assert_eq!(code, Code::PermissionDenied, "{role} calling {rpc} (needs {need})");
            }
        }
        assert_eq!(snapshot(&cluster, leader).await, before, "refused calls of {role} changed something");
        for rpc in &rpcs {
            let code = call(ch.clone(), token, rpc).await;
            match needs[rpc.as_str()] {
                Some(need) if need.is_empty() || holds(role, need) => assert!(
                    !matches!(code, Code::PermissionDenied | Code::Unauthenticated),
                    "{role} calling {rpc} (needs {need:?}) got {code:?}"
                ),
                Some(need) => assert_eq!(code, Code::PermissionDenied, "{role} calling {rpc} (needs {need})"),
                // Node-only or token-checked: never granted by a role.
                None => assert_ne!(code, Code::Ok, "{role} calling {rpc}"),
            }
        }
    }

    // A viewer sees users but none of their secrets; an operator sees them.
    let viewer = anonymous(&cluster, &pki, follower);
    let shown = UsersClient::new(viewer.clone())
        .get_user(bearer(GetUserRequest { name: "alice".into(), ..Default::default() }, &tokens["viewer"]))
        .await
        .expect("viewer reads alice")
        .into_inner();
    assert!(shown.credentials.is_none() && shown.subscription_token.is_empty() && shown.subscription_url.is_empty());
    let listed = UsersClient::new(viewer).list_users(bearer(ListUsersRequest::default(), &tokens["viewer"])).await;
    let listed = listed.expect("viewer lists").into_inner().users;
    assert!(listed.iter().all(|u| u.credentials.is_none() && u.subscription_token.is_empty()), "{listed:?}");
    let operator = anonymous(&cluster, &pki, follower);
    let full = UsersClient::new(operator)
        .get_user(bearer(GetUserRequest { name: "alice".into(), ..Default::default() }, &tokens["operator"]))
        .await
        .expect("operator reads alice")
        .into_inner();
    assert!(full.credentials.is_some() && !full.subscription_token.is_empty());

    // Nobody grants more than they hold: a delegate that manages access
    // cannot make an admin token, bind admin, or make a role with more.
    let mut admin = admin_access(&cluster, leader).await;
    let delegate_perms = vec!["roles.write".to_owned(), "tokens.write".to_owned(), "users.read".to_owned()];
    admin.create_role(CreateRoleRequest { name: "delegate".into(), permissions: delegate_perms }).await.expect("role");
    let delegate = create_token(&cluster, leader, "delegate-bot", "delegate").await;
    let mut as_delegate = AccessClient::new(anonymous(&cluster, &pki, follower));
    let admin_token = CreateApiTokenRequest { name: "sneaky".into(), role: "admin".into(), ttl_seconds: 0 };
    let refused = as_delegate.create_api_token(bearer(admin_token, &delegate)).await.expect_err("escalation");
    assert_eq!(refused.code(), Code::PermissionDenied, "{}", refused.message());
    assert!(refused.message().contains("members.write"), "names what it lacks: {}", refused.message());
    let bind = BindRoleRequest { role: "admin".into(), user: "delegate-friend".into(), group: String::new() };
    assert_eq!(code_of(as_delegate.bind_role(bearer(bind, &delegate)).await), Code::PermissionDenied);
    let wider = CreateRoleRequest { name: "wider".into(), permissions: vec!["users.write".into()] };
    assert_eq!(code_of(as_delegate.create_role(bearer(wider, &delegate)).await), Code::PermissionDenied);
    let narrower = CreateRoleRequest { name: "reader".into(), permissions: vec!["users.read".into()] };
    as_delegate.create_role(bearer(narrower, &delegate)).await.expect("a role within its own rights");
    let same = CreateApiTokenRequest { name: "helper".into(), role: "reader".into(), ttl_seconds: 0 };
    as_delegate.create_api_token(bearer(same, &delegate)).await.expect("a token within its own rights");

    // A revoked token stops working on every node.
    admin.revoke_api_token(RevokeApiTokenRequest { name: "viewer-bot".into() }).await.expect("revoke");
    for id in 1..=3 {
        let ch = anonymous(&cluster, &pki, id);
        eventually(&format!("node {id} refuses the revoked token"), CONVERGE, || {
            let ch = ch.clone();
            let token = tokens["viewer"].clone();
            async move {
                match call(ch, &token, "Users/ListUsers").await {
                    Code::Unauthenticated => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            }
        })
        .await;
    }
}

/// The records of `audit list` on node `id`, oldest first, as
/// (principal, method, target, outcome).
async fn audit_on(cluster: &Cluster, id: u64) -> Result<Vec<(String, String, String, String)>, String> {
    let req = ListAuditRequest { page_size: 1000, consistency: ReadConsistency::Local as i32, ..Default::default() };
    let page = admin_access(cluster, id).await.list_audit(req).await.map_err(|s| s.to_string())?.into_inner();
    let mut records: Vec<_> = page.records.into_iter().map(|r| (r.principal, r.method, r.target, r.outcome)).collect();
    records.reverse();
    Ok(records)
}

#[tokio::test(flavor = "multi_thread")]
async fn access_the_audit_log_holds_exactly_the_session_on_every_node_through_a_leader_crash() {
    let (mut cluster, pki, leader) = mtls_cluster(false, &[]).await;
    let host = cluster.ip.to_string();
    let operator = create_token(&cluster, leader, "ops-bot", "operator").await;
    // A data-plane node registers through the agent protocol (no record: it
    // is the system's own traffic), for the operator to drain later.
    let edge = pki.client(&pki.node(9, "dataplane", &host), "node");
    let register = RegisterRequest {
        node_id: 9,
        incarnation: "00000000-0000-4000-8000-000000000009".into(),
        public_host: host.clone(),
        ..Default::default()
    };
    AgentClient::new(tls_channel(cluster.node(leader).grpc, edge)).register(register).await.expect("register node 9");
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    let ca = ClientTlsConfig::new().ca_certificate(pki.ca());
    let addrs: BTreeMap<u64, std::net::SocketAddr> = (1..=3).map(|id| (id, cluster.node(id).grpc)).collect();
    let as_operator = |id: u64| tls_channel(addrs[&id], ca.clone());

    // Reads leave no records.
    let reads_before = audit_on(&cluster, leader).await.expect("audit");
    for rpc in ["Users/ListUsers", "Nodes/ListNodes", "Cluster/Status", "Access/WhoAmI"] {
        assert_eq!(call(as_operator(follower), &operator, rpc).await, Code::Ok, "{rpc}");
    }
    assert_eq!(audit_on(&cluster, leader).await.expect("audit"), reads_before, "a read wrote a record");

    // The session: the admin certificate and the operator's token, through a follower.
    cluster
        .users(follower)
        .create_user(CreateUserRequest { name: "bob".into(), ..Default::default() })
        .await
        .expect("create bob");
    let disable =
        UpdateUserRequest { name: "bob".into(), status: Some(UserStatus::Disabled as i32), ..Default::default() };
    UsersClient::new(as_operator(follower)).update_user(bearer(disable, &operator)).await.expect("disable bob");

    cluster.node_mut(leader).kill9();
    let survivor = (1..=3).find(|id| *id != leader).expect("a survivor");
    eventually("a new leader", CONVERGE, || {
        let status = cluster.status(survivor);
        async move {
            match status.await?.leader_id {
                Some(id) if id != leader => Ok(()),
                other => Err(format!("leader {other:?}")),
            }
        }
    })
    .await;
    let delete = || bearer(DeleteUserRequest { name: "bob".into() }, &operator);
    eventually("bob deleted through a survivor", CONVERGE, || {
        let mut client = UsersClient::new(as_operator(survivor));
        async move { client.delete_user(delete()).await.map(|_| ()).map_err(|s| s.to_string()) }
    })
    .await;
    NodesClient::new(as_operator(survivor))
        .drain_node(bearer(NodeRequest { id: 9 }, &operator))
        .await
        .expect("drain 9");
    let mut admin = admin_access(&cluster, survivor).await;
    admin
        .create_api_token(CreateApiTokenRequest { name: "ci".into(), role: "viewer".into(), ttl_seconds: 3600 })
        .await
        .expect("token ci");
    admin.revoke_api_token(RevokeApiTokenRequest { name: "ci".into() }).await.expect("revoke ci");
    let bind = BindRoleRequest { role: "viewer".into(), user: "carol".into(), group: String::new() };
    admin.bind_role(bind).await.expect("bind carol");
    cluster.node_mut(leader).start();

    let token = |who: &str| format!("token:{who}");
    let expected: Vec<(String, String, String, String)> = [
        ("admin", "CreateApiToken", "API token ops-bot"),
        ("admin", "CreateUser", "user bob"),
        (token("ops-bot").as_str(), "UpdateUser", "user bob"),
        (token("ops-bot").as_str(), "DeleteUser", "user bob"),
        (token("ops-bot").as_str(), "DrainNode", "node 9"),
        ("admin", "CreateApiToken", "API token ci"),
        ("admin", "RevokeApiToken", "API token ci"),
        ("admin", "BindRole", "role viewer"),
    ]
    .iter()
    .map(|(p, m, t)| ((*p).to_owned(), (*m).to_owned(), (*t).to_owned(), "ok".to_owned()))
    .collect();
    for id in 1..=3 {
        eventually(&format!("node {id}'s audit log"), CONVERGE, || {
            let audit = audit_on(&cluster, id);
            let expected = expected.clone();
            async move {
                let records = audit.await?;
                // A retry of the delete after the crash may have been refused as already done.
                let records: Vec<_> = records.into_iter().filter(|r| r.3 == "ok").collect();
                (records == expected).then_some(()).ok_or_else(|| format!("{records:#?}"))
            }
        })
        .await;
    }
    let records = AccessClient::new(cluster.channel(survivor))
        .list_audit(ListAuditRequest { principal: token("ops-bot"), ..Default::default() })
        .await
        .expect("filtered")
        .into_inner()
        .records;
    assert!(records.iter().all(|r| r.authenticated_by == "token" && !r.source.is_empty()), "{records:#?}");
    assert!(records.iter().all(|r| !r.summary.contains(&operator)), "no secret in a record");
}
