//! Mutual TLS on every gRPC connection: a cluster made from `vpnctl pki`
//! certificates serves writes through any node, every caller without the
//! right certificate is refused with nothing changed, bad files stop vpnd
//! before it starts, and `vpnd --dev` is secure and one command.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cluster_tests::cli::vpnctl;
use cluster_tests::cluster::{channel, tls_channel, CONVERGE};
use cluster_tests::mtls::{code_of, mtls_cluster, Pki};
use cluster_tests::process::own_binary;
use cluster_tests::{eventually, Cluster};
use tonic::transport::ClientTlsConfig;
use tonic::Code;
use vpn_proto::internal::agent_client::AgentClient;
use vpn_proto::internal::raft_client::RaftClient;
use vpn_proto::internal::{
    HeartbeatRequest, RaftPayload, RegisterRequest, TimeoutNowRequest, TrafficReport, UserUsage, WatchAssignmentRequest,
};
use vpn_proto::v1::cluster_client::ClusterClient;
use vpn_proto::v1::users_client::UsersClient;
use vpn_proto::v1::{AddMemberRequest, CreateUserRequest, ListUsersRequest, StatusRequest};
use vpn_storage::command::Command as RaftCommand;

async fn state(cluster: &Cluster, leader: u64) -> (Vec<(String, String)>, Vec<u64>) {
    let mut users = cluster.users(leader);
    let page = users.list_users(ListUsersRequest { page_size: 1000, ..Default::default() }).await.expect("list");
    // Each user's name, id and bytes used: a forged traffic report would move the last.
    let users = page.into_inner().users.into_iter().map(|u| (u.name, format!("{} {}", u.id, u.used_bytes))).collect();
    let status = cluster.status(leader).await.expect("status");
    (users, status.members.iter().map(|m| m.id).collect())
}

#[tokio::test(flavor = "multi_thread")]
async fn mtls_cluster_serves_writes_through_any_node_and_refuses_every_outsider() {
    let (cluster, pki, leader) = mtls_cluster(false, &[]).await;
    let host = cluster.ip.to_string();
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");

    // An operator with the admin certificate writes through a follower.
    let creds = |extra: &[&str]| -> Vec<String> {
        let dir = pki.dir.display().to_string();
        let mut args: Vec<String> =
            vec!["--ca-cert".into(), format!("{dir}/ca.crt"), "--cert".into(), format!("{dir}/admin.crt")];
        args.extend(["--key".into(), format!("{dir}/admin.key")]);
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        args
    };
    let endpoint = cluster.node(follower).grpc.to_string();
    let args = creds(&["user", "add", "alice"]);
    let run = vpnctl(&endpoint, &args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(run.code, 0, "user add through node {follower}: {}", run.stderr);
    let args = creds(&["-o", "json", "cluster", "status"]);
    let status = vpnctl(&endpoint, &args.iter().map(String::as_str).collect::<Vec<_>>()).json();
    assert_eq!(status["tls"], true);
    let before = state(&cluster, leader).await;
    assert_eq!(before.0.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), ["alice"]);

    let addr = cluster.node(leader).grpc;
    let create = |tls: Option<ClientTlsConfig>| async move {
        let ch = match tls {
            Some(tls) => tls_channel(addr, tls),
            None => channel(addr),
        };
        let mut req = tonic::Request::new(CreateUserRequest { name: "mallory".into(), ..Default::default() });
        req.set_timeout(Duration::from_secs(5));
        UsersClient::new(ch).create_user(req).await
    };
    // Plaintext, no certificate, another CA's certificate: nothing gets in.
    assert_ne!(code_of(create(None).await), Code::Ok, "plaintext to a TLS port");
    let anonymous = ClientTlsConfig::new().ca_certificate(pki.ca());
    assert_eq!(code_of(create(Some(anonymous)).await), Code::Unauthenticated);
    let only_ca = ["--ca-cert", &format!("{}/ca.crt", pki.dir.display()), "user", "add", "mallory"].map(str::to_owned);
    let run = vpnctl(&endpoint, &only_ca.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(run.code, 5, "vpnctl without a certificate: {}", run.stderr);
    let other_root = tempfile::tempdir().expect("tempdir");
    let other = Pki::init(other_root.path());
    assert_ne!(code_of(create(Some(other.client(&other.dir, "admin"))).await), Code::Ok, "another CA");

    // A data-plane node's certificate: no Raft, no public API, no joining,
    // and in the agent protocol nothing about another node: no registering,
    // watching, heartbeating or reporting traffic as node 8.
    let edge = pki.client(&pki.node(9, "dataplane", &host), "node");
    assert_eq!(code_of(create(Some(edge.clone())).await), Code::PermissionDenied);
    let list = UsersClient::new(tls_channel(addr, edge.clone())).list_users(ListUsersRequest::default()).await;
    assert_eq!(code_of(list), Code::PermissionDenied, "a data-plane node reads no user");
    let mut agent = AgentClient::new(tls_channel(addr, edge.clone()));
    let watch = agent.watch_assignment(WatchAssignmentRequest { node_id: 8 }).await;
    assert_eq!(watch.err().map(|s| s.code()), Some(Code::PermissionDenied), "another node's assignment");
    let incarnation = "00000000-0000-4000-8000-000000000008".to_owned();
    let as_8 = HeartbeatRequest { node_id: 8, incarnation, ..Default::default() };
    assert_eq!(code_of(agent.heartbeat(as_8.clone()).await), Code::PermissionDenied, "a heartbeat as node 8");
    let alice_id = before.0[0].1.split(' ').next().unwrap_or_default().to_owned();
    let usage = vec![UserUsage { name: "alice".into(), user_id: alice_id, bytes: 1 << 30 }];
    let traffic = HeartbeatRequest { traffic: vec![TrafficReport { seq: u64::MAX, usage }], ..as_8 };
    assert_eq!(code_of(agent.heartbeat(traffic).await), Code::PermissionDenied, "node 8's traffic");
    let register = RegisterRequest { node_id: 8, public_host: host.clone(), ..Default::default() };
    assert_eq!(code_of(agent.register(register).await), Code::PermissionDenied, "registering node 8");
    let raft = |tls: ClientTlsConfig| RaftClient::new(tls_channel(addr, tls));
    let vote = RaftPayload { json: b"{}".to_vec() };
    assert_eq!(code_of(raft(edge.clone()).vote(vote.clone()).await), Code::PermissionDenied);
    let beat = HeartbeatRequest { node_id: follower, ..Default::default() };
    assert_eq!(code_of(raft(edge.clone()).heartbeat(beat).await), Code::PermissionDenied);
    let mut members = ClusterClient::new(tls_channel(addr, edge.clone()));
    let voter = AddMemberRequest { id: 9, addr: format!("{host}:1"), voter: true, ..Default::default() };
    assert_eq!(code_of(members.add_member(voter).await), Code::PermissionDenied);
    let someone_else = AddMemberRequest { id: 10, addr: format!("{host}:1"), ..Default::default() };
    assert_eq!(code_of(members.add_member(someone_else).await), Code::PermissionDenied);

    // A control-plane certificate used under another node's id, a client
    // certificate on the Raft service, a raw command, a transfer from a
    // node that does not lead.
    let node2 = pki.client(&pki.dir.with_file_name("node-2-controlplane"), "node");
    let mut claims_3 = tonic::Request::new(vote.clone());
    claims_3.metadata_mut().insert("x-vpn-from", "3".parse().expect("ascii"));
    assert_eq!(code_of(raft(node2.clone()).vote(claims_3).await), Code::PermissionDenied);
    let admin = pki.client(&pki.dir, "admin");
    assert_eq!(code_of(raft(admin).vote(vote.clone()).await), Code::PermissionDenied);
    let raw = serde_json::to_vec(&RaftCommand::DeleteUser { name: "alice".into() }).expect("json");
    assert_eq!(code_of(raft(node2.clone()).propose(RaftPayload { json: raw }).await), Code::PermissionDenied);
    let not_leader = pki.client(&pki.dir.with_file_name(format!("node-{follower}-controlplane")), "node");
    assert_eq!(code_of(raft(not_leader).timeout_now(TimeoutNowRequest {}).await), Code::PermissionDenied);

    assert_eq!(state(&cluster, leader).await, before, "a refused call changed the state");
    assert_eq!(cluster.status(leader).await.expect("status").leader_id, Some(leader), "no election was forced");
    let refused = cluster.metric(leader, "vpn_auth_refusals_total").await.expect("metric");
    assert!(refused >= 1.0, "refusals are counted: {refused}");
    let status = ClusterClient::new(cluster.channel(follower)).status(StatusRequest {}).await.expect("status");
    assert!(status.into_inner().tls);

    // Nothing in any node's data dir is readable by another local user.
    for p in cluster.nodes.values() {
        let mut pending = vec![p.data_dir.clone()];
        while let Some(path) = pending.pop() {
            let meta = std::fs::symlink_metadata(&path).expect("meta");
            let mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions());
            assert_eq!(mode & 0o077, 0, "{} is mode {:o}", path.display(), mode & 0o777);
            if meta.is_dir() {
                pending.extend(std::fs::read_dir(&path).expect("dir").map(|e| e.expect("entry").path()));
            }
        }
    }
}

/// Runs vpnd with `args` and expects it to stop at once with exit 2 and
/// `expected` in its one error line.
fn refused_to_start(args: &[String], expected: &str) {
    let mut child = Command::new(own_binary("cluster-vpnd"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vpnd");
    let deadline = Instant::now() + CONVERGE;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("vpnd {args:?} did not stop");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr).expect("read");
    assert_eq!(status.code(), Some(2), "{args:?}: {stderr}");
    assert!(stderr.contains(expected), "{args:?}: expected {expected:?} in {stderr}");
}

#[test]
fn mtls_bad_certificate_files_stop_vpnd_with_exit_2_naming_the_flag() {
    let root = tempfile::tempdir().expect("tempdir");
    let pki = Pki::init(root.path());
    let node = pki.node(1, "controlplane", "127.0.0.1");
    let base: Vec<String> = ["--id", "1", "--listen", "127.0.0.1:1", "--http", "127.0.0.1:2", "--data-dir"]
        .iter()
        .map(|s| (*s).to_owned())
        .chain([root.path().join("data").display().to_string()])
        .collect();
    let with = |extra: Vec<String>| base.iter().cloned().chain(extra).collect::<Vec<_>>();
    refused_to_start(&base, "--trusted-ca-file");

    let garbage = root.path().join("garbage.crt");
    std::fs::write(&garbage, "not a certificate").expect("write");
    let mut flags = pki.flags(&node);
    flags[3] = garbage.display().to_string();
    refused_to_start(&with(flags), "--cert-file");

    let shared_key = root.path().join("shared.key");
    std::fs::copy(node.join("node.key"), &shared_key).expect("copy");
    std::fs::set_permissions(&shared_key, std::os::unix::fs::PermissionsExt::from_mode(0o644)).expect("chmod");
    let mut flags = pki.flags(&node);
    flags[5] = shared_key.display().to_string();
    refused_to_start(&with(flags), "chmod 600");

    let other = pki.node(2, "controlplane", "127.0.0.1");
    refused_to_start(&with(pki.flags(&other)), "this is node 1");
    assert!(!root.path().join("data").exists(), "nothing was started, nothing written");
}

#[tokio::test(flavor = "multi_thread")]
async fn mtls_dev_is_one_command_secure_and_vpnctl_needs_no_flags() {
    let root = tempfile::tempdir().expect("tempdir");
    let ip = cluster_tests::net::random_loopback_ip();
    let (grpc, http) = (cluster_tests::net::free_addr(ip), cluster_tests::net::free_addr(ip));
    let config = root.path().join("vpnctl.toml");
    let data = root.path().join("vpn-data");
    // --http serves HTTPS with an operator's certificate for the name clients use.
    let operator = vpn_pki::Ca::generate("operator CA").expect("ca");
    let site = operator.issue_node(99, vpn_pki::Role::ControlPlane, &[ip.to_string()], Duration::from_secs(3600));
    let site = site.expect("certificate");
    let (site_cert, site_key) = (root.path().join("site.crt"), root.path().join("site.key"));
    vpn_pki::files::write_public(&site_cert, site.cert_pem.as_bytes()).expect("write");
    vpn_pki::files::write_private(&site_key, site.key_pem.as_bytes()).expect("write");
    let mut vpnd = Command::new(own_binary("cluster-vpnd"))
        .args(["--dev", "--listen", &grpc.to_string(), "--http", &http.to_string()])
        .arg("--data-dir")
        .arg(&data)
        .arg("--http-tls-cert")
        .arg(&site_cert)
        .arg("--http-tls-key")
        .arg(&site_key)
        .env("VPNCTL_CONFIG", &config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn vpnd --dev");
    let vpnctl = |args: &[&str]| {
        Command::new(own_binary("cluster-vpnctl"))
            .args(args)
            .env("VPNCTL_CONFIG", &config)
            .env_remove("VPNCTL_ENDPOINTS")
            .output()
            .expect("vpnctl")
    };
    let added = eventually("vpnctl user add alice, with no flags", CONVERGE, || async {
        let out = vpnctl(&["user", "add", "alice"]);
        match out.status.code() {
            Some(0) => Ok(()),
            _ => Err(String::from_utf8_lossy(&out.stderr).into_owned()),
        }
    });
    added.await;
    let out = vpnctl(&["-o", "json", "cluster", "status"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(status["tls"], true);
    let mode = |p: PathBuf| std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(p).expect("meta").permissions());
    assert_eq!(mode(data.join("pki/ca.key")) & 0o777, 0o600);
    assert_eq!(mode(config.clone()) & 0o777, 0o600);
    let plaintext = UsersClient::new(channel(grpc))
        .create_user(CreateUserRequest { name: "mallory".into(), ..Default::default() })
        .await;
    assert_ne!(code_of(plaintext), Code::Ok, "the dev port speaks TLS only");
    let (code, body) = https_get(http, operator.cert_pem(), "/readyz?verbose").await;
    assert_eq!(code, 200, "HTTPS /readyz: {body}");
    assert!(body.contains("mutual TLS"), "{body}");
    assert!(cluster_tests::cluster::http_get(http, "/readyz").await.is_err(), "no plaintext HTTP on --http");
    let _ = vpnd.kill();
    let _ = vpnd.wait();
}

/// `vpnctl join-token create` through `endpoint` with the admin certificate; the token.
fn join_token(pki: &Pki, endpoint: &str, extra: &[&str]) -> String {
    let dir = pki.dir.display().to_string();
    let (ca, cert, key) = (format!("{dir}/ca.crt"), format!("{dir}/admin.crt"), format!("{dir}/admin.key"));
    let mut args = vec!["--ca-cert", &ca, "--cert", &cert, "--key", &key, "join-token", "create"];
    args.extend_from_slice(extra);
    let run = vpnctl(endpoint, &args);
    assert_eq!(run.code, 0, "join-token create: {}", run.stderr);
    run.stdout.trim().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn mtls_a_node_joins_with_a_token_and_every_bad_token_is_refused() {
    let (mut cluster, pki, leader) = mtls_cluster(true, &[]).await;
    let endpoint = cluster.node((leader % 3) + 1).grpc.to_string();

    // A control-plane node joins with a token: its key is made on it and stays there.
    let token = join_token(&pki, &endpoint, &["--role", "controlplane", "--ttl", "1h", "--uses", "1"]);
    cluster.add_joining_node(4, &["--join-token", &token]).start();
    cluster_tests::eventually("node 4 joined with its token", CONVERGE, || async {
        let status = cluster.status(leader).await?;
        match status.members.iter().find(|m| m.id == 4) {
            Some(m) if m.role == vpn_proto::v1::MemberRole::Voter as i32 => Ok(()),
            other => Err(format!("node 4 is {other:?}")),
        }
    })
    .await;
    let issued = cluster.node(4).data_dir.join("pki");
    let mode = |p: PathBuf| std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(p).expect("meta").permissions());
    assert_eq!(mode(issued.join("node.key")) & 0o777, 0o600);
    let (_, der) = vpn_pki::files::read_pem(&issued.join("node.crt"), "CERTIFICATE").expect("node.crt");
    let info = vpn_pki::CertInfo::from_der(&der).expect("identity");
    assert_eq!(info.principal, vpn_pki::Principal::Node { id: 4, role: vpn_pki::Role::ControlPlane });

    // It restarts from its own files: the token is used up and not needed.
    cluster.node_mut(4).kill9();
    cluster.node_mut(4).start();
    cluster.wait_leader().await;

    // Joining directly, with no certificate: a used, an expired, a revoked, a
    // foreign token, and a CSR for an id in use are all refused.
    let before = state(&cluster, leader).await;
    let anonymous = ClientTlsConfig::new().ca_certificate(pki.ca());
    let leader_addr = cluster.node(leader).grpc;
    let join = |token: String, node_id: u64| {
        let ch = tls_channel(leader_addr, anonymous.clone());
        async move {
            let (_, csr_pem) = vpn_pki::make_csr(&["127.0.0.1".into()]).expect("csr");
            ClusterClient::new(ch).join(vpn_proto::v1::JoinRequest { token, node_id, csr_pem }).await
        }
    };
    assert_eq!(code_of(join(token.clone(), 6).await), Code::Unauthenticated, "used up");
    let short = join_token(&pki, &endpoint, &["--role", "dataplane", "--ttl", "1s"]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(code_of(join(short, 6).await), Code::Unauthenticated, "expired");
    let revoked = join_token(&pki, &endpoint, &["--role", "dataplane"]);
    let id = vpn_pki::join_token::JoinToken::parse(&revoked).expect("token").id;
    let dir = pki.dir.display().to_string();
    let (ca, cert, key) = (format!("{dir}/ca.crt"), format!("{dir}/admin.crt"), format!("{dir}/admin.key"));
    let run = vpnctl(&endpoint, &["--ca-cert", &ca, "--cert", &cert, "--key", &key, "join-token", "revoke", &id]);
    assert_eq!(run.code, 0, "revoke: {}", run.stderr);
    assert_eq!(code_of(join(revoked, 6).await), Code::Unauthenticated, "revoked");
    let fresh = join_token(&pki, &endpoint, &["--role", "dataplane", "--uses", "2"]);
    assert_eq!(code_of(join(fresh.clone(), 2).await), Code::AlreadyExists, "an id in use");
    assert_eq!(code_of(join(fresh.clone(), 4).await), Code::AlreadyExists, "an id issued by a token");
    let foreign = vpn_pki::join_token::JoinToken {
        ca_digest: "ab".repeat(32),
        ..vpn_pki::join_token::JoinToken::parse(&fresh).expect("token")
    };
    assert_eq!(code_of(join(foreign.to_string(), 7).await), Code::Unauthenticated, "another CA's digest");
    assert_eq!(state(&cluster, leader).await, before, "a refused join changed the state");
    let run =
        vpnctl(&endpoint, &["-o", "json", "--ca-cert", &ca, "--cert", &cert, "--key", &key, "join-token", "list"]);
    let listed = run.json();
    let uses_left =
        listed["join_tokens"].as_array().expect("list").iter().find(|t| t["id"] != id.as_str() && t["uses_left"] == 2);
    assert!(uses_left.is_some(), "refused joins spent no use: {listed}");

    // Tokens and issued ids are replicated state: every node restarted, they are all still there.
    for id in 1..=4 {
        cluster.node_mut(id).kill9();
    }
    for id in 1..=4 {
        cluster.node_mut(id).start();
    }
    cluster.wait_leader().await;
    let list = ["-o", "json", "--ca-cert", &ca, "--cert", &cert, "--key", &key, "join-token", "list"];
    let after = cluster_tests::eventually("join-token list after a restart", CONVERGE, || async {
        let run = vpnctl(&endpoint, &list);
        if run.code == 0 {
            Ok(run.json())
        } else {
            Err(run.stderr)
        }
    })
    .await;
    assert_eq!(after, listed, "join tokens survive a restart of every node");
    assert_eq!(code_of(join(fresh.clone(), 4).await), Code::AlreadyExists, "issued ids survive it too");

    // A malformed token stops vpnd before it starts.
    let args: Vec<String> = ["--id", "9", "--listen", "127.0.0.1:1", "--http", "127.0.0.1:2", "--data-dir"]
        .iter()
        .map(|s| (*s).to_owned())
        .chain([cluster.root.path().join("n9").display().to_string(), "--join".into(), endpoint.clone()])
        .chain(["--join-token".into(), fresh.replacen("vpnj1-", "vpnj1-00", 1)])
        .collect();
    refused_to_start(&args, "--join-token");
}

/// A TLS connection to `addr` trusting only `ca_pem`, with no client certificate.
async fn tls_connect(
    addr: std::net::SocketAddr,
    ca_pem: &str,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from_pem_slice(ca_pem.as_bytes()).expect("ca")).expect("root");
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    connector.connect(name, tcp).await.expect("TLS handshake")
}

/// When the certificate `addr` serves expires.
async fn served_not_after(addr: std::net::SocketAddr, ca_pem: &str) -> i64 {
    let tls = tls_connect(addr, ca_pem).await;
    let certs = tls.get_ref().1.peer_certificates().expect("a server certificate");
    vpn_pki::CertInfo::from_der(&certs[0]).expect("identity").not_after
}

/// GET `path` over HTTPS from `addr`, trusting only `ca_pem`; status and body.
async fn https_get(addr: std::net::SocketAddr, ca_pem: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tls = tls_connect(addr, ca_pem).await;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    tls.write_all(request.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    let _ = tls.read_to_end(&mut raw).await;
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let code = raw.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, raw.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread")]
async fn mtls_a_joined_nodes_certificate_renews_itself_before_it_expires() {
    // Certificates signed for joining nodes live 30 s: renewed at ~20 s.
    let (mut cluster, pki, leader) = mtls_cluster(true, &["--node-cert-lifetime", "30s"]).await;
    let endpoint = cluster.node(leader).grpc.to_string();
    let token = join_token(&pki, &endpoint, &["--role", "controlplane"]);
    cluster.add_joining_node(4, &["--join-token", &token]).start();
    let cert = cluster.node(4).data_dir.join("pki/node.crt");
    let not_after = |path: &Path| -> Result<i64, String> {
        let (_, der) = vpn_pki::files::read_pem(path, "CERTIFICATE").map_err(|e| e.to_string())?;
        Ok(vpn_pki::CertInfo::from_der(&der).map_err(|e| e.to_string())?.not_after)
    };
    let first = eventually("node 4's first certificate", CONVERGE, || async { not_after(&cert) }).await;
    let renewed = eventually("node 4 renews its certificate", Duration::from_secs(60), || async {
        match not_after(&cert) {
            Ok(t) if t > first => Ok(t),
            other => Err(format!("still {other:?}")),
        }
    })
    .await;
    assert!(renewed > first);
    // Past the first certificate's expiry, node 4 still serves and still
    // reaches the leader: a write through it is forwarded over mutual TLS.
    eventually("the first certificate has expired", Duration::from_secs(60), || async {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        if now > first + 2 {
            Ok(())
        } else {
            Err(format!("{} s to go", first + 2 - now))
        }
    })
    .await;
    let ch = cluster.channel(4);
    let mut req = tonic::Request::new(CreateUserRequest { name: "after-renewal".into(), ..Default::default() });
    req.set_timeout(Duration::from_secs(10));
    let created = UsersClient::new(ch).create_user(req).await;
    assert!(
        created.is_ok(),
        "a write through node 4 after its first certificate expired: {created:?}\n{}",
        cluster.node(4).log_tail()
    );
    let log = cluster.node(4).log_text();
    assert!(log.contains("renewed this node's certificate"), "{}", cluster.node(4).log_tail());
}

/// Certificate files the operator replaces are taken in without a restart:
/// a replacement that fails the start checks is refused (the current
/// certificate stays), a good one is served at once and presented to peers.
#[tokio::test(flavor = "multi_thread")]
async fn mtls_replaced_certificate_files_are_taken_in_without_a_restart() {
    let (cluster, pki, leader) = mtls_cluster(false, &[]).await;
    let id = (1..=3).find(|id| *id != leader).expect("a follower");
    let addr = cluster.node(id).grpc;
    let ca_pem = std::fs::read_to_string(pki.dir.join("ca.crt")).expect("ca.crt");
    let first = served_not_after(addr, &ca_pem).await;
    let pid = cluster.node(id).pid();
    let files = pki.dir.with_file_name(format!("node-{id}-controlplane"));

    // Another node's certificate in its place: refused, the current one stays.
    let other = pki.dir.with_file_name(format!("node-{}-controlplane", if id == 1 { 2 } else { 1 }));
    std::fs::copy(other.join("node.crt"), files.join("node.crt")).expect("replace");
    eventually("the wrong certificate is refused", CONVERGE, || async {
        let log = cluster.node(id).log_text();
        log.contains("replaced certificate files are refused").then_some(()).ok_or("not yet".to_owned())
    })
    .await;
    assert_eq!(served_not_after(addr, &ca_pem).await, first, "the refused files changed what is served");

    // A whole set from another CA: consistent, but a new CA needs a restart.
    let other_root = tempfile::tempdir().expect("tempdir");
    let other_ca = Pki::init(other_root.path());
    let foreign = other_ca.node(id, "controlplane", &cluster.ip.to_string());
    // (--trusted-ca-file is the CA file every node was given.)
    std::fs::copy(foreign.join("ca.crt"), pki.dir.join("ca.crt")).expect("replace the CA");
    for file in ["node.key", "node.crt"] {
        std::fs::copy(foreign.join(file), files.join(file)).expect("replace");
    }
    eventually("the other CA is refused", CONVERGE, || async {
        let log = cluster.node(id).log_text();
        log.contains("now holds another CA").then_some(()).ok_or("not yet".to_owned())
    })
    .await;
    assert_eq!(served_not_after(addr, &ca_pem).await, first, "another CA's files changed what is served");
    std::fs::write(pki.dir.join("ca.crt"), &ca_pem).expect("the cluster's CA back");

    // A good replacement (a 30-day certificate for this node): served without a restart.
    let fresh = pki.dir.with_file_name(format!("node-{id}-fresh"));
    let (ca, out, id_s) = (pki.dir.display().to_string(), fresh.display().to_string(), id.to_string());
    let host = cluster.ip.to_string();
    let args = ["pki", "node-cert", "--ca", &ca, "--id", &id_s, "--host", &host, "--days", "30", "--out", &out];
    let run = vpnctl("127.0.0.1:1", &args);
    assert_eq!(run.code, 0, "pki node-cert: {}", run.stderr);
    std::fs::copy(fresh.join("node.key"), files.join("node.key")).expect("key");
    std::fs::copy(fresh.join("node.crt"), files.join("node.crt")).expect("certificate");
    let renewed = eventually("the replacement is served", CONVERGE, || async {
        let now = served_not_after(addr, &ca_pem).await;
        (now < first).then_some(now).ok_or(format!("still {now} (first {first})"))
    })
    .await;
    assert!(first - renewed > 50 * 86_400, "{first} -> {renewed}");
    assert_eq!(cluster.node(id).pid(), pid, "the node was restarted");
    // It presents the new certificate to its peers: a write through it is forwarded.
    let mut req = tonic::Request::new(CreateUserRequest { name: "after-reload".into(), ..Default::default() });
    req.set_timeout(Duration::from_secs(10));
    let created = UsersClient::new(cluster.channel(id)).create_user(req).await;
    assert!(created.is_ok(), "a write through node {id}: {created:?}\n{}", cluster.node(id).log_tail());
}

/// A control-plane node with its own certificate joins through a follower:
/// the follower checks that the node adds only itself and forwards the call
/// with the node's identity; the leader takes it from a member, and the
/// audit log names the node.
#[tokio::test(flavor = "multi_thread")]
async fn mtls_a_control_plane_node_joins_through_a_follower() {
    let (mut cluster, pki, leader) = mtls_cluster(false, &[]).await;
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    let host = cluster.ip.to_string();
    let flags = pki.flags(&pki.node(4, "controlplane", &host));
    let follower_addr = cluster.node(follower).grpc.to_string();
    let node = cluster.add_joining_node(4, &flags.iter().map(String::as_str).collect::<Vec<_>>());
    node.bootstrap = vec!["--join".into(), follower_addr, "--voter".into()];
    node.start();
    eventually("node 4 a voter", CONVERGE, || {
        let status = cluster.status(leader);
        async move {
            let members = status.await?.members;
            match members.iter().find(|m| m.id == 4) {
                Some(m) if m.role == vpn_proto::v1::MemberRole::Voter as i32 => Ok(()),
                other => Err(format!("node 4: {other:?}")),
            }
        }
    })
    .await;
    let records = vpn_proto::v1::access_client::AccessClient::new(cluster.channel(leader))
        .list_audit(vpn_proto::v1::ListAuditRequest { principal: "node:4".into(), ..Default::default() })
        .await
        .expect("audit")
        .into_inner()
        .records;
    assert!(records.iter().any(|r| r.method == "AddMember" && r.target == "member 4"), "{records:#?}");
}
