//! Subscriptions over HTTP on every node, without a data plane: formats by
//! `?format=` and by User-Agent, usage headers, revocation by
//! `user rotate-token`, and nothing revealed for an unknown token.

use std::net::SocketAddr;
use std::time::Duration;

use cluster_tests::cli::vpnctl;
use cluster_tests::{eventually, Cluster};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `GET path` with a User-Agent: status, headers (lowercased) and body.
async fn get(addr: SocketAddr, path: &str, agent: &str) -> (u16, String, String) {
    let io = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: {agent}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await?;
        let mut raw = String::new();
        s.read_to_string(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = tokio::time::timeout(Duration::from_secs(5), io).await.expect("in time").expect("http");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a response");
    let code = head.split(' ').nth(1).and_then(|c| c.parse().ok()).expect("status");
    (code, head.to_lowercase(), body.to_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn every_node_serves_subscriptions_in_the_format_the_app_wants() {
    let cluster = Cluster::start(3, &[]).await;
    let eps = cluster.endpoints();
    let add = vpnctl(&eps, &["-o", "json", "user", "add", "alice", "--data-limit", "1GiB", "--expires", "30d"]);
    assert_eq!(add.code, 0, "{}", add.stderr);
    let token = add.json()["subscription_token"].as_str().expect("a token").to_owned();
    let path = format!("/sub/{token}");

    for id in [1, 2, 3] {
        let http = cluster.node(id).http;
        // A linearizable read through this node: it has applied the user.
        let shown = vpnctl(&cluster.node(id).grpc.to_string(), &["user", "show", "alice"]);
        assert_eq!(shown.code, 0, "{}", shown.stderr);
        let (code, head, body) = get(http, &path, "v2rayN/6.42").await;
        assert_eq!(code, 200, "node {id}: {body}");
        assert!(head.contains("subscription-userinfo: upload=0; download=0; total=1073741824; expire="), "{head}");
        assert!(body.trim().is_empty(), "no data-plane node yet, so no link: {body:?}");

        let (code, head, body) = get(http, &path, "ClashMetaForAndroid/2.11").await;
        assert_eq!(code, 200);
        assert!(head.contains("application/yaml") && body.contains("proxies:"), "{head}\n{body}");
        let (code, head, body) = get(http, &format!("{path}?format=sing-box"), "curl/8").await;
        assert_eq!(code, 200);
        assert!(head.contains("application/json"), "{head}");
        let doc: serde_json::Value = serde_json::from_str(&body).expect("sing-box JSON");
        assert!(doc["outbounds"].is_array(), "{doc}");
        let (code, _, body) = get(http, &format!("{path}?format=word"), "curl/8").await;
        assert_eq!(code, 400);
        assert!(body.contains("sing-box") && body.contains("clash"), "names what is accepted: {body}");
    }

    // An unknown token tells nothing; a rotated one stops working at once.
    let (code, _, body) = get(cluster.node(1).http, "/sub/not-a-token", "v2rayN").await;
    assert_eq!((code, body.trim()), (404, "not found"));
    let rotated = vpnctl(&eps, &["-o", "json", "user", "rotate-token", "alice"]);
    assert_eq!(rotated.code, 0, "{}", rotated.stderr);
    let fresh = rotated.json()["subscription_token"].as_str().expect("a new token").to_owned();
    assert_ne!(fresh, token);
    // Each node answers from its own copy of the state: a follower follows within its replication lag.
    for id in [1, 2, 3] {
        let http = cluster.node(id).http;
        eventually("the old token to be revoked and the new one served", Duration::from_secs(5), || async {
            match (get(http, &path, "v2rayN").await.0, get(http, &format!("/sub/{fresh}"), "v2rayN").await.0) {
                (404, 200) => Ok(()),
                codes => Err(format!("node {id}: old, new -> {codes:?}")),
            }
        })
        .await;
    }
}
