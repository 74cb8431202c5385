//! Bad input is refused with the contract's codes, names the field, and
//! changes nothing; bad flags and data dirs stop vpnd with a clear message.

use std::process::Command;
use std::time::Duration;

use cluster_tests::process::own_binary;
use cluster_tests::Cluster;
use vpn_proto::v1::{
    AddMemberRequest, CreateUserRequest, DeleteUserRequest, GetUserRequest, ListUsersRequest, RemoveMemberRequest,
    UpdateUserRequest,
};

async fn user_count(cluster: &Cluster) -> usize {
    let req = ListUsersRequest { page_size: 1000, page_token: String::new(), consistency: 0 };
    cluster.users(1).list_users(req).await.expect("list").into_inner().users.len()
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_get_the_right_code_and_change_nothing() {
    let cluster = Cluster::start(3, &[]).await;
    cluster
        .users(2)
        .create_user(CreateUserRequest { name: "alice".into(), ..Default::default() })
        .await
        .expect("create");
    let before = user_count(&cluster).await;

    for (name, why) in
        [("", "empty"), ("Alice", "uppercase"), ("-x", "bad start"), ("a b", "space"), (&"x".repeat(65), "65 chars")]
    {
        for node in 1..=3 {
            let err = cluster
                .users(node)
                .create_user(CreateUserRequest { name: name.into(), ..Default::default() })
                .await
                .expect_err(why);
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{why}: {err}");
            assert!(err.message().starts_with("name:"), "{why}: the message must name the field: {}", err.message());
        }
    }
    let err = cluster
        .users(3)
        .create_user(CreateUserRequest { name: "alice".into(), ..Default::default() })
        .await
        .expect_err("duplicate");
    assert_eq!(err.code(), tonic::Code::AlreadyExists, "{err}");
    let err =
        cluster.users(1).get_user(GetUserRequest { name: "nobody".into(), consistency: 0 }).await.expect_err("missing");
    assert_eq!(err.code(), tonic::Code::NotFound, "{err}");
    let err = cluster.users(2).delete_user(DeleteUserRequest { name: "nobody".into() }).await.expect_err("missing");
    assert_eq!(err.code(), tonic::Code::NotFound, "{err}");
    let err = cluster
        .users(2)
        .update_user(UpdateUserRequest { name: "alice".into(), status: Some(42), ..Default::default() })
        .await
        .expect_err("bad status");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().starts_with("status:"), "{}", err.message());
    let err = cluster
        .users(1)
        .get_user(GetUserRequest { name: "alice".into(), consistency: 7 })
        .await
        .expect_err("bad consistency");
    assert!(err.message().starts_with("consistency:"), "{}", err.message());
    let err = cluster
        .users(1)
        .list_users(ListUsersRequest { page_size: 10, page_token: "NOT A NAME".into(), consistency: 0 })
        .await
        .expect_err("bad token");
    assert!(err.message().starts_with("page_token:"), "{}", err.message());

    let err =
        cluster.cluster_client(2).remove_member(RemoveMemberRequest { id: 99 }).await.expect_err("unknown member");
    assert_eq!(err.code(), tonic::Code::NotFound, "{err}");
    for (req, field) in [
        (AddMemberRequest { id: 0, addr: "127.0.0.1:1".into(), voter: false, incarnation: String::new() }, "id:"),
        (AddMemberRequest { id: 9, addr: "nonsense".into(), voter: false, incarnation: String::new() }, "addr:"),
        (AddMemberRequest { id: 9, addr: "127.0.0.1:1".into(), voter: false, incarnation: "x".into() }, "incarnation:"),
    ] {
        let err = cluster.cluster_client(1).add_member(req).await.expect_err(field);
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
        assert!(err.message().starts_with(field), "{}", err.message());
    }
    let err = cluster
        .cluster_client(1)
        .add_member(AddMemberRequest { id: 1, addr: "127.0.0.1:1".into(), voter: true, incarnation: String::new() })
        .await
        .expect_err("existing id at another address");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err}");

    // The public API's message size limit (vpn_node::limits::PUBLIC_MESSAGE,
    // 64 KiB): just under it a request is read (and this one refused for its
    // field); just over it, it is not read at all.
    const LIMIT: usize = 64 * 1024;
    let sized = |name_len: usize| CreateUserRequest { name: "x".repeat(name_len), ..Default::default() };
    let under = cluster.users(1).create_user(sized(LIMIT - 16)).await.expect_err("a long name");
    assert_eq!(under.code(), tonic::Code::InvalidArgument, "{under}");
    let over = cluster.users(1).create_user(sized(LIMIT)).await.expect_err("over the limit");
    assert_eq!(over.code(), tonic::Code::OutOfRange, "{over}");
    assert!(over.message().contains("too large"), "{}", over.message());

    assert_eq!(user_count(&cluster).await, before, "a refused request changed the users");
    let status = cluster.status(1).await.expect("status");
    assert_eq!(status.members.len(), 3, "a refused request changed the membership");
}

/// Runs vpnd with `args` and returns its exit code and stderr.
/// vpnd with `args`, plaintext (`--insecure`: these tests are about other flags and the data dir).
fn vpnd(args: &[&str]) -> (i32, String) {
    let out = Command::new(own_binary("cluster-vpnd")).args(args).arg("--insecure").output().expect("run vpnd");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn bad_flags_stop_vpnd_with_a_message_naming_the_flag() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("d");
    let data = data.to_str().expect("utf8");
    let base = ["--id", "1", "--listen", "127.0.0.1:1", "--http", "127.0.0.1:2", "--data-dir", data];
    for (extra, flag) in [
        (vec!["--initial-members", "1:127.0.0.1:1"], "--initial-members"),
        (vec!["--initial-members", "2=127.0.0.1:1"], "--initial-members"),
        (vec!["--initial-members", "1=127.0.0.1:1", "--join", "127.0.0.1:5"], "--join"),
        (vec!["--heartbeat-ms", "0"], "--heartbeat-ms"),
        (vec!["--dataplane", "--inbound", "vless-tls=443"], "--public-host"),
        (vec!["--dataplane", "--public-host", "h.example", "--inbound", "wireguard=51820"], "--inbound"),
        (vec!["--dataplane", "--public-host", "h.example", "--inbound", "vless-tls=0"], "--inbound"),
        (vec!["--inbound", "vless-tls=443"], "--dataplane"),
    ] {
        let args: Vec<&str> = base.iter().copied().chain(extra.iter().copied()).collect();
        let (code, err) = vpnd(&args);
        assert_eq!(code, 2, "{extra:?}: {err}");
        assert!(err.contains(flag), "{extra:?}: {err}");
    }
    let (code, err) = vpnd(&["--listen", "127.0.0.1:1"]);
    assert_eq!(code, 2);
    assert!(err.contains("--id"), "{err}");
    assert!(!std::path::Path::new(data).exists(), "a refused start created the data dir");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unwritable_or_corrupt_data_dir_is_reported_not_reset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let listen = cluster_tests::net::free_addr(std::net::Ipv4Addr::LOCALHOST).to_string();
    let http = cluster_tests::net::free_addr(std::net::Ipv4Addr::LOCALHOST).to_string();
    let members = format!("1={listen}");

    // A plain file where the data dir should be.
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").expect("write");
    let bad = file.join("data");
    let (code, err) = vpnd(&[
        "--id",
        "1",
        "--listen",
        &listen,
        "--http",
        &http,
        "--data-dir",
        bad.to_str().expect("utf8"),
        "--initial-members",
        &members,
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("--data-dir"), "{err}");

    // A data dir whose sled files were overwritten with garbage.
    let data = dir.path().join("node");
    let data_s = data.to_str().expect("utf8");
    let mut node = std::process::Command::new(own_binary("cluster-vpnd"))
        .args(["--id", "1", "--listen", &listen, "--http", &http, "--data-dir", data_s, "--initial-members", &members])
        .arg("--insecure")
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let http_addr = http.parse().expect("addr");
    cluster_tests::eventually("the node is ready", Duration::from_secs(20), || async {
        match cluster_tests::cluster::http_get(http_addr, "/readyz").await? {
            (200, _) => Ok(()),
            (code, body) => Err(format!("{code} {body}")),
        }
    })
    .await;
    let _ = node.kill();
    let _ = node.wait();
    std::fs::write(data.join("raft").join("db"), vec![0xAB; 4096]).expect("corrupt");
    let (code, err) =
        vpnd(&["--id", "1", "--listen", &listen, "--http", &http, "--data-dir", data_s, "--initial-members", &members]);
    assert_ne!(code, 0, "vpnd started on a corrupt data dir: {err}");
    assert!(err.contains("corrupt") || err.contains("cannot open"), "{err}");
}
