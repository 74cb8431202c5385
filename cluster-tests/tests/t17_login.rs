//! Logins against real identity servers, started by the test: OpenLDAP's
//! slapd and the OIDC provider glewlwyd (`ops/identity`). A login gives a
//! session every node accepts; groups map to roles through bindings; a
//! wrong password, a locked account, an expired or tampered ID token are
//! refused; a key rotated at the provider is picked up without a restart.

use std::time::Duration;

use cluster_tests::cluster::CONVERGE;
use cluster_tests::identity::IdentityServer;
use cluster_tests::mtls::{anonymous, bearer, code_of, mtls_cluster};
use cluster_tests::{eventually, Cluster};
use tonic::transport::Channel;
use tonic::{Code, Request, Status};
use vpn_proto::v1::access_client::AccessClient;
use vpn_proto::v1::users_client::UsersClient;
use vpn_proto::v1::*;

async fn login(ch: Channel, req: LoginRequest) -> Result<LoginResponse, Status> {
    let mut req = Request::new(req);
    req.set_timeout(Duration::from_secs(15));
    AccessClient::new(ch).login(req).await.map(tonic::Response::into_inner)
}

fn ldap(user: &str, password: &str) -> LoginRequest {
    LoginRequest {
        ldap: Some(LdapLogin { user: user.into(), password: password.into() }),
        oidc_id_token: String::new(),
    }
}

fn oidc(token: &str) -> LoginRequest {
    LoginRequest { ldap: None, oidc_id_token: token.into() }
}

async fn bind_group(cluster: &Cluster, leader: u64, role: &str, group: &str) {
    let bind = BindRoleRequest { role: role.into(), user: String::new(), group: group.into() };
    AccessClient::new(cluster.channel(leader)).bind_role(bind).await.expect("bind");
}

async fn create_user(ch: Channel, token: &str, name: &str) -> Code {
    code_of(
        UsersClient::new(ch)
            .create_user(bearer(CreateUserRequest { name: name.into(), ..Default::default() }, token))
            .await,
    )
}

/// The session key is made by the leader soon after it is elected.
async fn first_login(ch: Channel, req: LoginRequest) -> LoginResponse {
    eventually("a first login", CONVERGE, || {
        let (ch, req) = (ch.clone(), req.clone());
        async move { login(ch, req).await.map_err(|s| format!("{:?}: {}", s.code(), s.message())) }
    })
    .await
}

/// The real vpnctl with its contexts in `config`, `stdin` fed to it: exit code, stdout, stderr.
fn vpnctl_with(config: &std::path::Path, args: &[&str], stdin: &str) -> (i32, String, String) {
    use std::io::Write;
    let mut child = std::process::Command::new(cluster_tests::process::own_binary("cluster-vpnctl"))
        .args(args)
        .env("VPNCTL_CONFIG", config)
        .env_remove("VPNCTL_ENDPOINTS")
        .env_remove("VPNCTL_TOKEN")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("vpnctl");
    child.stdin.take().expect("stdin").write_all(stdin.as_bytes()).expect("write stdin");
    let out = child.wait_with_output().expect("vpnctl output");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

#[tokio::test(flavor = "multi_thread")]
async fn login_ldap_users_get_their_groups_roles_and_a_session_every_node_accepts() {
    let dirs = tempfile::tempdir().expect("tempdir");
    // StartTLS, trusting only the server's own CA (`--ldap-ca-file`).
    let (server, ca_file) = IdentityServer::ldap_tls(&dirs.path().join("ldap"));
    let password_file = dirs.path().join("service.pass");
    std::fs::write(&password_file, "service-pass\n").expect("write");
    std::fs::set_permissions(&password_file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod");
    let url = server.url();
    let file = password_file.display().to_string();
    let ca_file = ca_file.display().to_string();
    let flags = [
        "--ldap-url",
        &url,
        "--ldap-ca-file",
        &ca_file,
        "--ldap-bind-dn",
        "cn=vpn-service,ou=services,dc=vpn,dc=test",
        "--ldap-bind-password-file",
        &file,
        "--ldap-user-base",
        "ou=people,dc=vpn,dc=test",
        "--ldap-group-base",
        "ou=groups,dc=vpn,dc=test",
    ];
    let (cluster, pki, leader) = mtls_cluster(false, &flags).await;
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    bind_group(&cluster, leader, "operator", "ldap:vpn-admins").await;
    bind_group(&cluster, leader, "viewer", "ldap:vpn-operators").await;

    let alice = first_login(anonymous(&cluster, &pki, follower), ldap("alice", "alice-pass")).await;
    assert_eq!(alice.principal, "ldap:alice");
    assert_eq!(alice.groups, ["ldap:vpn-admins"]);
    assert_eq!(create_user(anonymous(&cluster, &pki, follower), &alice.token, "from-alice").await, Code::Ok);
    let alice_sub_token = cluster
        .users(leader)
        .get_user(GetUserRequest { name: "from-alice".into(), consistency: 0 })
        .await
        .expect("get")
        .into_inner()
        .subscription_token;
    for id in 1..=3 {
        let mut access = AccessClient::new(anonymous(&cluster, &pki, id));
        let me = access.who_am_i(bearer(WhoAmIRequest {}, &alice.token)).await.expect("whoami").into_inner();
        assert_eq!(
            (me.authenticated_by.as_str(), me.roles.as_slice()),
            ("ldap", ["operator".to_owned()].as_slice()),
            "node {id}"
        );
    }

    let bob = login(anonymous(&cluster, &pki, leader), ldap("bob", "bob-pass")).await.expect("bob");
    assert_eq!(bob.groups, ["ldap:vpn-operators"]);
    assert_eq!(create_user(anonymous(&cluster, &pki, follower), &bob.token, "from-bob").await, Code::PermissionDenied);
    let listed = UsersClient::new(anonymous(&cluster, &pki, follower))
        .list_users(bearer(ListUsersRequest::default(), &bob.token))
        .await;
    assert_eq!(listed.expect("a viewer lists").into_inner().users.len(), 1);

    // Every bad login is UNAUTHENTICATED, the same way.
    for (user, password, what) in [
        ("alice", "wrong", "a wrong password"),
        ("carol", "carol-pass", "a locked account"),
        ("alice", "", "an empty password (an anonymous bind in LDAP)"),
        ("nobody", "x", "an unknown user"),
        ("*", "alice-pass", "a filter wildcard as the name"),
        ("alice)(uid=*", "alice-pass", "a filter injection"),
    ] {
        let refused = login(anonymous(&cluster, &pki, follower), ldap(user, password)).await.expect_err(what);
        assert_eq!(refused.code(), Code::Unauthenticated, "{what}: {}", refused.message());
    }
    let forged = format!("{}x", alice.token);
    assert_eq!(create_user(anonymous(&cluster, &pki, leader), &forged, "forged").await, Code::Unauthenticated);

    // The same through the real vpnctl: the password on stdin, the session
    // kept in the context it writes, used by the next commands.
    let config = dirs.path().join("vpnctl.toml");
    let endpoint = cluster.node(follower).grpc.to_string();
    let ca = pki.dir.join("ca.crt").display().to_string();
    let cli = |args: &[&str], stdin: &str| {
        let with_endpoint = ["--endpoints", endpoint.as_str(), "--ca-cert", ca.as_str()];
        let all: Vec<&str> = with_endpoint.iter().chain(args).copied().collect();
        vpnctl_with(&config, &all, stdin)
    };
    // After the login, the context alone says where and as whom.
    let context = |args: &[&str]| vpnctl_with(&config, args, "");
    let (code, _, err) = cli(&["login", "--ldap", "alice"], "wrong\n");
    assert_eq!(code, 5, "a wrong password: {err}");
    let (code, out, err) = cli(&["login", "--ldap", "bob"], "bob-pass\n");
    assert_eq!(code, 0, "login: {err}");
    assert!(out.contains("ldap:bob"), "{out}");
    let (code, out, err) = context(&["-o", "json", "user", "list"]);
    assert_eq!(code, 0, "a viewer lists with the context's session: {err}");
    assert!(out.contains("from-alice") && !out.contains(&alice_sub_token), "{out}");
    let (code, _, err) = context(&["user", "add", "from-bob-cli"]);
    assert_eq!(code, 6, "a viewer adds no user: {err}");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&config).expect("context").permissions());
    assert_eq!(mode & 0o077, 0, "the context holding the session is private");

    let audit = AccessClient::new(cluster.channel(leader))
        .list_audit(ListAuditRequest { method: "CreateUser".into(), ..Default::default() })
        .await
        .expect("audit")
        .into_inner()
        .records;
    let by: Vec<(&str, &str)> = audit.iter().map(|r| (r.principal.as_str(), r.authenticated_by.as_str())).collect();
    assert_eq!(by, [("ldap:alice", "ldap")], "one change, by alice's session");
    // Revoking bob's sessions ends them on every node; alice's stay; a new login works.
    let revoke = |principal: &str, all| RevokeSessionsRequest { principal: principal.into(), all };
    AccessClient::new(cluster.channel(follower)).revoke_sessions(revoke("ldap:bob", false)).await.expect("revoke");
    let who = |id: u64, token: String| {
        let mut access = AccessClient::new(anonymous(&cluster, &pki, id));
        async move { access.who_am_i(bearer(WhoAmIRequest {}, &token)).await.map(|r| r.into_inner().principal) }
    };
    let ended = |token: String| async move {
        for id in 1..=3 {
            match who(id, token.clone()).await {
                Err(s) if s.code() == Code::Unauthenticated && s.message().contains("revoked") => {}
                other => return Err(format!("node {id}: {other:?}")),
            }
        }
        Ok(())
    };
    eventually("bob's session refused on every node", CONVERGE, || ended(bob.token.clone())).await;
    for id in 1..=3 {
        assert_eq!(who(id, alice.token.clone()).await.expect("alice's session stays"), "ldap:alice", "node {id}");
    }
    let again = first_login(anonymous(&cluster, &pki, leader), ldap("bob", "bob-pass")).await;
    assert_eq!(who(follower, again.token).await.expect("a new login"), "ldap:bob");
    // Everyone's: a new session key.
    AccessClient::new(cluster.channel(leader)).revoke_sessions(revoke("", true)).await.expect("revoke all");
    let old_key = |token: String| async move {
        for id in 1..=3 {
            if who(id, token.clone()).await.map_err(|s| s.code()) != Err(Code::Unauthenticated) {
                return Err(format!("node {id} still takes it"));
            }
        }
        Ok(())
    };
    eventually("alice's session refused on every node", CONVERGE, || old_key(alice.token.clone())).await;
    let fresh = first_login(anonymous(&cluster, &pki, leader), ldap("alice", "alice-pass")).await;
    assert_eq!(who(leader, fresh.token).await.expect("a login under the new key"), "ldap:alice");

    let log = server.log();
    assert!(log.contains("TLS established"), "every bind went over StartTLS; slapd's log:\n{log}");
    drop(server);
}

#[tokio::test(flavor = "multi_thread")]
async fn login_oidc_id_tokens_become_sessions_and_a_rotated_key_is_picked_up() {
    let dirs = tempfile::tempdir().expect("tempdir");
    let dir = dirs.path().join("oidc");
    let server = IdentityServer::oidc(&dir);
    let issuer = server.issuer();
    let flags = ["--oidc-issuer", &issuer, "--oidc-audience", "vpn-test", "--oidc-insecure", "--oidc-leeway", "0s"];
    let (cluster, pki, leader) = mtls_cluster(false, &flags).await;
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    bind_group(&cluster, leader, "operator", "oidc:vpn-admins").await;

    let options = AccessClient::new(anonymous(&cluster, &pki, follower)).login_options(LoginOptionsRequest {}).await;
    let options = options.expect("options").into_inner();
    assert_eq!(
        (options.oidc_issuer.as_str(), options.oidc_client_id.as_str(), options.ldap),
        (issuer.as_str(), "vpn-test", false)
    );

    let alice_token = server.id_token("oidc", "alice", "alice-pass").expect("alice's ID token");
    let alice = first_login(anonymous(&cluster, &pki, follower), oidc(&alice_token)).await;
    assert!(alice.principal.starts_with("oidc:alice"), "{}", alice.principal);
    assert_eq!(alice.groups, ["oidc:vpn-admins"]);
    assert_eq!(create_user(anonymous(&cluster, &pki, follower), &alice.token, "from-alice").await, Code::Ok);

    let bob_token = server.id_token("oidc", "bob", "bob-pass").expect("bob's ID token");
    let bob = login(anonymous(&cluster, &pki, leader), oidc(&bob_token)).await.expect("bob logs in");
    assert_eq!(
        create_user(anonymous(&cluster, &pki, leader), &bob.token, "from-bob").await,
        Code::PermissionDenied,
        "no role"
    );
    assert!(server.id_token("oidc", "carol", "carol-pass").is_none(), "the provider refuses a disabled account");
    assert!(server.id_token("oidc", "alice", "wrong").is_none(), "and a wrong password");

    // A tampered token, and one that expired (leeway 0 s; they live 1 s).
    let (head, sig) = alice_token.rsplit_once('.').expect("jwt");
    let tampered = format!("{}{}.{sig}", &head[..head.len() - 1], if head.ends_with('A') { "B" } else { "A" });
    let refused = login(anonymous(&cluster, &pki, leader), oidc(&tampered)).await.expect_err("tampered");
    assert_eq!(refused.code(), Code::Unauthenticated);
    let short = server.id_token("oidc-short", "alice", "alice-pass").expect("a short-lived token");
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let expired = login(anonymous(&cluster, &pki, leader), oidc(&short)).await.expect_err("expired");
    assert_eq!(expired.code(), Code::Unauthenticated);
    assert!(expired.message().contains("expired"), "{}", expired.message());

    // The provider rotates its key and drops the old one: new tokens log
    // in without a restart, and the old key's tokens no longer do.
    let (rotated, kid) = server.run(&["rotate", dir.to_str().expect("utf8"), &server.port.to_string(), "--drop-old"]);
    assert!(rotated, "rotate: {kid}");
    let fresh = server.id_token("oidc", "alice", "alice-pass").expect("a token with the new key");
    for id in 1..=3 {
        let ch = anonymous(&cluster, &pki, id);
        let session = first_login(ch.clone(), oidc(&fresh)).await;
        assert_eq!(create_user(ch, &session.token, &format!("after-rotation-{id}")).await, Code::Ok);
    }
    let old = login(anonymous(&cluster, &pki, follower), oidc(&alice_token)).await.expect_err("a dropped key");
    assert_eq!(old.code(), Code::Unauthenticated, "{}", old.message());
    drop(server);
}

/// `vpnctl login --oidc` runs the device authorization grant against the
/// real provider: the test plays the person who approves the code.
#[tokio::test(flavor = "multi_thread")]
async fn login_oidc_device_flow_through_vpnctl() {
    use std::io::{BufRead, BufReader};
    let dirs = tempfile::tempdir().expect("tempdir");
    let server = IdentityServer::oidc(&dirs.path().join("oidc"));
    let issuer = server.issuer();
    // The device flow's client is the provider's public client.
    let flags = ["--oidc-issuer", &issuer, "--oidc-audience", "vpn-cli", "--oidc-insecure"];
    let (cluster, pki, leader) = mtls_cluster(false, &flags).await;
    bind_group(&cluster, leader, "viewer", "oidc:vpn-admins").await;
    let config = dirs.path().join("vpnctl.toml");
    let endpoint = cluster.node(leader).grpc.to_string();
    let ca = pki.dir.join("ca.crt").display().to_string();
    // (A login before the first leader made the session key answers
    // UNAVAILABLE, which vpnctl retries.)

    let mut child = std::process::Command::new(cluster_tests::process::own_binary("cluster-vpnctl"))
        .args(["--endpoints", &endpoint, "--ca-cert", &ca, "--timeout", "60s", "login", "--oidc", "--oidc-insecure"])
        .env("VPNCTL_CONFIG", &config)
        .env_remove("VPNCTL_ENDPOINTS")
        .env_remove("VPNCTL_TOKEN")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("vpnctl login --oidc");
    let stderr = BufReader::new(child.stderr.take().expect("stderr"));
    let mut told = String::new();
    let mut code = None;
    for line in stderr.lines() {
        let line = line.expect("a line");
        told.push_str(&line);
        told.push('\n');
        if let Some(rest) = line.split("enter the code ").nth(1) {
            code = rest.split([' ', ')']).next().map(str::to_owned);
            break;
        }
    }
    let code = code.unwrap_or_else(|| panic!("vpnctl named no code: {told}"));
    let (approved, out) = server.run(&["approve", &server.port.to_string(), "alice", "alice-pass", &code]);
    assert!(approved, "approve {code}: {out}");
    let finished = child.wait_with_output().expect("vpnctl");
    let stdout = String::from_utf8_lossy(&finished.stdout);
    assert_eq!(finished.status.code(), Some(0), "{told}{stdout}{}", String::from_utf8_lossy(&finished.stderr));
    assert!(stdout.contains("oidc:alice"), "{stdout}");

    let (code, out, err) = vpnctl_with(&config, &["whoami", "-o", "json"], "");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"oidc\"") && out.contains("viewer"), "{out}");
}
