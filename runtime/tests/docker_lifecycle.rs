//! Engine containers against the world: removed or stopped behind the
//! reconciler's back, outliving it, adopted by a new one, replaced when their
//! static config changes, and kept when a change is refused.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::client::Client;
use common::http::HttpServer;
use common::{docker_ready, free_port, ss_inbound, user, vless_inbound, wait_for, Node};
use vpn_runtime::{keys, tls, InboundSpec, Protocol};

fn docker(args: &[&str]) {
    let out = Command::new("docker").args(args).output().expect("docker CLI");
    assert!(out.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// (d) Removed or stopped behind the reconciler's back: back within one resync, users included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_engine_removed_or_stopped_behind_our_back_is_back_within_one_resync() {
    if !docker_ready() {
        return;
    }
    let resync = Duration::from_secs(3);
    let http = HttpServer::start().await;
    let mut node = Node::start(resync).await;
    let (port, key, alice) = (free_port(), keys::generate_ss2022_key(), user("alice"));
    let g = node.set(vec![ss_inbound(port, &key)], vec![alice.clone()]);
    node.wait_applied(g).await;
    let client = Client::ss2022(port, &key, &alice.ss2022_key).await;

    for (how, args) in [("removed", ["rm", "-f"]), ("stopped", ["stop", "-t1"])] {
        let old = node.container_id("shadowsocks-2022").expect("engine running");
        docker(&[args[0], args[1], &old]);
        let gone = Instant::now();
        // One resync plus the time a recreation takes.
        let back = wait_for("the engine to come back", resync + Duration::from_secs(5), async || {
            node.container_id("shadowsocks-2022").filter(|id| *id != old)
        })
        .await;
        wait_for("alice to be served again", Duration::from_secs(5), async || {
            client.get(http.port, "/bytes/1024", Duration::from_millis(500)).await.ok()
        })
        .await;
        eprintln!(
            "engine {how} behind our back: back as {} after {:?} (resync {resync:?})",
            &back[..12],
            gone.elapsed()
        );
        assert!(gone.elapsed() < resync + Duration::from_secs(5));
    }
    client.fetch_1mib(http.port).await.expect("alice moves 1 MiB after the recoveries");
    assert_eq!(node.containers().len(), 1, "nothing left over: {:?}", node.containers());
}

/// (e) The reconciler (vpnd) exits: engines keep serving; a new one adopts them unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_engines_outlive_the_reconciler_and_are_adopted_unchanged() {
    if !docker_ready() {
        return;
    }
    let http = HttpServer::start().await;
    let mut node = Node::start(Duration::from_secs(10)).await;
    let (files, cert) = node.self_signed_tls();
    let (ss_port, vless_port, key, alice) = (free_port(), free_port(), keys::generate_ss2022_key(), user("alice"));
    let vless = vless_inbound(vless_port, files);
    let inbounds = vec![ss_inbound(ss_port, &key), vless];
    let g = node.set(inbounds.clone(), vec![alice.clone()]);
    node.wait_applied(g).await;
    let ids = (node.container_id("shadowsocks-2022"), node.container_id("vless-tls"));
    assert!(ids.0.is_some() && ids.1.is_some(), "{:?}", node.containers());

    node.stop().await;
    let ss_client = Client::ss2022(ss_port, &key, &alice.ss2022_key).await;
    let vless_client = Client::vless_tls(vless_port, &alice.vless_uuid.to_string(), &cert, "vpn.test").await;
    ss_client.fetch_1mib(http.port).await.expect("ss2022 serves with no reconciler");
    vless_client.fetch_1mib(http.port).await.expect("vless serves with no reconciler");

    let restarted = Instant::now();
    node.restart().await;
    node.wait_applied(g).await;
    eprintln!("new reconciler adopted both engines in {:?}", restarted.elapsed());
    assert_eq!((node.container_id("shadowsocks-2022"), node.container_id("vless-tls")), ids, "same containers");
    let metrics = node.handle().metrics.clone();
    for p in [Protocol::Shadowsocks2022, Protocol::VlessTls] {
        assert_eq!(metrics.generations_started(p), 0, "{p:?}: a new generation");
    }
    ss_client.fetch_1mib(http.port).await.expect("ss2022 serves after adoption");
    vless_client.fetch_1mib(http.port).await.expect("vless serves after adoption");
}

/// A static change (the port) replaces the engine; a change sing-box refuses
/// leaves the working engine alone; an inbound no longer desired is removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_config_changes_replace_refused_changes_keep_undesired_engines_go() {
    if !docker_ready() {
        return;
    }
    let http = HttpServer::start().await;
    let mut node = Node::start(Duration::from_secs(10)).await;
    let (key, alice) = (keys::generate_ss2022_key(), user("alice"));
    let g = node.set(vec![ss_inbound(free_port(), &key)], vec![alice.clone()]);
    node.wait_applied(g).await;
    let first = node.container_id("shadowsocks-2022").expect("engine");

    let new_port = free_port();
    let g = node.set(vec![ss_inbound(new_port, &key)], vec![alice.clone()]);
    node.wait_applied(g).await;
    let second = node.container_id("shadowsocks-2022").expect("engine");
    assert_ne!(first, second, "a new port needs a new container");
    let client = Client::ss2022(new_port, &key, &alice.ss2022_key).await;
    // Under a loaded CI a first connection right after the switch was once cut ("early eof";
    // see the session 7 note): wait to be served, then move the bytes.
    wait_for("alice served on the new port", Duration::from_secs(10), async || {
        client.get(http.port, "/bytes/1024", Duration::from_secs(2)).await.ok()
    })
    .await;
    client.fetch_1mib(http.port).await.expect("served on the new port");

    // A certificate sing-box cannot load passes our checks, but the engine will not start.
    let tls_dir = node.dir.path().join("bad-tls");
    let mut files = tls::write_self_signed(&tls_dir, "vpn.test").expect("certificate");
    std::fs::write(&files.cert_path, "not a certificate").expect("write");
    files.key_path = tls_dir.join("key.pem");
    let vless = InboundSpec {
        protocol: Protocol::VlessTls,
        listen_port: free_port(),
        ss2022_server_key: None,
        tls: Some(files),
        reality: None,
    };
    node.set(vec![ss_inbound(new_port, &key), vless], vec![alice.clone()]);
    let error = node.wait_error().await;
    eprintln!("refused change: {error}");
    assert!(error.contains(&format!("vpn-{}-vless-tls-g1 did not become ready", node.id)), "{error}");
    assert!(error.contains("certificate"), "sing-box's own words say why: {error}");
    assert_eq!(node.container_id("shadowsocks-2022"), Some(second.clone()), "the working engine is untouched");
    let names: Vec<String> = node.containers().into_iter().map(|(_, name, _)| name).collect();
    assert!(names.iter().all(|n| !n.contains("vless")), "nothing half-applied: {names:?}");

    let g = node.set(vec![], vec![alice]);
    node.wait_applied(g).await;
    assert!(node.containers().is_empty(), "undesired engine removed: {:?}", node.containers());
    // Nothing of the node is left in the kernel: no redirect, no count, no mark.
    wait_for("the node's nftables table to go", Duration::from_secs(10), async || {
        let table = format!("vpnd_{}", node.id);
        let listed = Command::new("nft").args(["list", "table", "inet", &table]).output().expect("nft");
        (!listed.status.success()).then_some(())
    })
    .await;
    let marks = std::fs::read_to_string(node.dir.path().join("engines/marks.json")).expect("marks.json");
    assert!(!marks.contains("alice"), "alice's mark is freed: {marks}");
}
