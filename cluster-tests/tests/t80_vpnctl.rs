//! vpnctl against a real cluster: JSON output, exit codes, endpoint failover.

use cluster_tests::cli::vpnctl;
use cluster_tests::Cluster;
use vpn_proto::v1::CreateUserRequest;

#[tokio::test(flavor = "multi_thread")]
async fn user_lifecycle_through_vpnctl() {
    let cluster = Cluster::start(3, &[]).await;
    let eps = cluster.endpoints();

    let add = vpnctl(&eps, &["-o", "json", "user", "add", "alice"]);
    assert_eq!(add.code, 0, "{}", add.stderr);
    let user = add.json();
    assert_eq!(user["name"], "alice");
    assert_eq!(user["status"], "active");
    for field in ["id", "created_at"] {
        assert!(user[field].as_str().is_some_and(|s| !s.is_empty()), "{field} missing: {user}");
    }

    let again = vpnctl(&eps, &["user", "add", "alice"]);
    assert_eq!(again.code, 3, "duplicate: {}", again.stderr);
    assert_eq!(again.stderr.trim().lines().count(), 1, "one line on stderr: {}", again.stderr);
    assert!(again.stderr.contains("alice"), "{}", again.stderr);

    let bad = vpnctl(&eps, &["user", "add", "Alice"]);
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    let missing = vpnctl(&eps, &["user", "show", "nobody"]);
    assert_eq!(missing.code, 3, "{}", missing.stderr);

    let disable = vpnctl(&eps, &["-o", "json", "user", "disable", "alice"]);
    assert_eq!(disable.code, 0, "{}", disable.stderr);
    let show = vpnctl(&eps, &["-o", "json", "user", "show", "alice"]);
    assert_eq!(show.json()["status"], "disabled");
    assert_eq!(vpnctl(&eps, &["user", "enable", "alice"]).code, 0);
    assert_eq!(vpnctl(&eps, &["-o", "json", "user", "show", "alice"]).json()["status"], "active");

    let table = vpnctl(&eps, &["user", "list"]);
    assert_eq!(table.code, 0);
    assert!(table.stdout.contains("alice"), "{}", table.stdout);

    let delete = vpnctl(&eps, &["user", "delete", "alice"]);
    assert_eq!(delete.code, 0, "{}", delete.stderr);
    assert_eq!(vpnctl(&eps, &["user", "show", "alice"]).code, 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn user_list_json_holds_every_page() {
    let cluster = Cluster::start(3, &[]).await;
    let mut users = cluster.users(1);
    for i in 0..1100 {
        users.create_user(CreateUserRequest { name: format!("p{i:04}"), ..Default::default() }).await.expect("create");
    }
    let list = vpnctl(&cluster.endpoints(), &["-o", "json", "user", "list"]);
    assert_eq!(list.code, 0, "{}", list.stderr);
    let names: Vec<String> = list.json()["users"]
        .as_array()
        .expect("users array")
        .iter()
        .map(|u| u["name"].as_str().unwrap_or("").to_owned())
        .collect();
    let expected: Vec<String> = (0..1100).map(|i| format!("p{i:04}")).collect();
    assert_eq!(names, expected);
}

#[tokio::test(flavor = "multi_thread")]
async fn cluster_status_and_member_errors() {
    let cluster = Cluster::start(3, &[]).await;
    let leader = cluster.wait_leader().await;
    let status = vpnctl(&cluster.endpoints(), &["-o", "json", "cluster", "status"]);
    assert_eq!(status.code, 0, "{}", status.stderr);
    let s = status.json();
    assert_eq!(s["leader_id"], leader);
    assert!(s["term"].as_u64().is_some_and(|t| t >= 1));
    let members = s["members"].as_array().expect("members");
    assert_eq!(members.len(), 3);
    for m in members {
        assert_eq!(m["role"], "voter", "{m}");
        assert!(m["addr"].as_str().is_some_and(|a| a.contains(':')));
    }
    let remove = vpnctl(&cluster.endpoints(), &["member", "remove", "99"]);
    assert_eq!(remove.code, 3, "{}", remove.stderr);
    let completions = vpnctl(&cluster.endpoints(), &["completions", "bash"]);
    assert_eq!(completions.code, 0);
    assert!(completions.stdout.contains("vpnctl"));
}

#[tokio::test(flavor = "multi_thread")]
async fn vpnctl_skips_dead_endpoints_and_reports_an_unavailable_cluster() {
    let mut cluster = Cluster::start(3, &[]).await;
    let dead = cluster_tests::net::free_addr(cluster.ip);
    let eps = format!("{dead},{}", cluster.endpoints());
    let add = vpnctl(&eps, &["-o", "json", "user", "add", "carol"]);
    assert_eq!(add.code, 0, "a dead first endpoint must not matter: {}", add.stderr);

    let bad = vpnctl("not a url::", &["user", "list"]);
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    assert!(bad.stderr.contains("--endpoints"), "{}", bad.stderr);

    for id in 1..=3 {
        cluster.node_mut(id).kill9();
    }
    let down = vpnctl(&cluster.endpoints(), &["--timeout", "1s", "user", "list"]);
    assert_eq!(down.code, 4, "{}", down.stderr);
    assert!(down.stderr.contains("unavailable"), "{}", down.stderr);
}
