//! A data-plane node against the machine's real Docker engine: it is no Raft
//! member, its agent registers its inbounds, its engines catch up with its
//! assignment, `vpnctl node list` shows it and `vpnctl user links` gives links
//! a URL parser reads back with the right keys; a node without nftables says
//! so. (Traffic through the engines is the end-to-end tests' job.)

use std::time::Duration;

use cluster_tests::cli::{vpnctl, Run};
use cluster_tests::dataplane::{node_caught_up, DataplaneCluster, ENGINES_UP};
use cluster_tests::docker::{self, Engines, ENGINE_IMAGE};
use cluster_tests::net::free_port;
use cluster_tests::process::send_signal;
use cluster_tests::{eventually, Cluster};
use url::Url;

fn ok(run: Run, what: &str) -> Run {
    assert_eq!(run.code, 0, "{what}: {}", run.stderr);
    run
}

fn query(url: &Url, key: &str) -> Option<String> {
    url.query_pairs().find(|(k, _)| k == key).map(|(_, v)| v.into_owned())
}

/// Without nftables a node serves, but user changes cut sessions and the
/// engines' events count the traffic: `node show` and the metrics say so.
#[tokio::test(flavor = "multi_thread")]
async fn docker_a_node_without_nftables_says_so_in_node_show_and_its_metrics() {
    if !docker::available("docker_a_node_without_nftables_says_so_in_node_show_and_its_metrics") {
        return;
    }
    let mut cluster = Cluster::start(3, &[]).await;
    let id = docker::unique_node_id();
    let _engines = Engines { owner: id };
    let ss = format!("shadowsocks-2022={}", free_port());
    let flags = ["--dataplane", "--public-host", "127.0.0.1", "--inbound", &ss, "--engine-image", ENGINE_IMAGE];
    cluster.add_joining_node(id, &[&flags[..], &["--nftables", "off"]].concat()).start();
    let eps = cluster.endpoints();
    ok(vpnctl(&eps, &["user", "add", "alice"]), "add alice");
    let node = node_caught_up(&eps, &[], id, 1).await;
    let accounting = node["accounting"].as_str().unwrap_or_default();
    assert!(accounting.starts_with("engine events (no nftables: --nftables off)"), "{node}");
    let shown = ok(vpnctl(&eps, &["node", "show", &id.to_string()]), "node show").stdout;
    assert!(shown.contains("Accounting:") && shown.contains("cutting live sessions"), "{shown}");
    let (_, metrics) = cluster_tests::cluster::http_get(cluster.node(id).http, "/metrics").await.expect("metrics");
    assert!(metrics.contains("vpn_runtime_accounting_source{source=\"engine-stream\"} 1"), "{metrics}");
    let table = std::process::Command::new("nft").args(["list", "table", "inet", &format!("vpnd_{id}")]).output();
    assert!(table.is_ok_and(|o| !o.status.success()), "no nftables table");
}

#[tokio::test(flavor = "multi_thread")]
async fn docker_node_list_and_user_links() {
    if !docker::available("docker_node_list_and_user_links") {
        return;
    }
    let mut cluster = Cluster::start(3, &[]).await;
    let id = docker::unique_node_id();
    let engines = Engines { owner: id };
    let (tls_port, ss_port) = (free_port(), free_port());
    let (tls, ss) = (format!("vless-tls={tls_port}"), format!("shadowsocks-2022={ss_port}"));
    let flags = ["--dataplane", "--public-host", "127.0.0.1", "--inbound", &tls, "--inbound", &ss];
    let extra =
        [&flags[..], &["--engine-image", ENGINE_IMAGE, "--tls-server-name", "vpn.test", "--labels", "region=test"]];
    cluster.add_joining_node(id, &extra.concat()).start();
    let eps = cluster.endpoints();
    ok(vpnctl(&eps, &["user", "add", "alice"]), "add alice");

    let node = node_caught_up(&eps, &[], id, 1).await;
    assert_eq!(node["public_host"], "127.0.0.1");
    assert_eq!(node["status"], "ready");
    assert_eq!(node["labels"]["region"], "test");
    let inbounds: Vec<(String, u64)> = node["inbounds"]
        .as_array()
        .expect("inbounds")
        .iter()
        .map(|i| (i["protocol"].as_str().unwrap_or_default().to_owned(), i["port"].as_u64().unwrap_or_default()))
        .collect();
    assert_eq!(inbounds, [("vless-tls".into(), u64::from(tls_port)), ("shadowsocks-2022".into(), u64::from(ss_port))]);
    assert_eq!(node["accounting"], "kernel (nftables)", "{node}");
    let status = ok(vpnctl(&eps, &["-o", "json", "cluster", "status"]), "cluster status").json();
    let member = status["members"].as_array().and_then(|m| m.iter().find(|m| m["id"] == id));
    assert_eq!(member, None, "a data-plane node is no Raft member: {status}");
    // One engine per inbound once the generations from before the user's placement drained.
    eventually("one engine container per inbound", Duration::from_secs(30), || async {
        let running = engines.running();
        if running.len() == 2 {
            Ok(())
        } else {
            Err(format!("{} containers", running.len()))
        }
    })
    .await;

    // Every link parses back, with alice's own keys and the node's public parameters.
    let alice = ok(vpnctl(&eps, &["-o", "json", "user", "show", "alice"]), "show alice").json();
    let links = ok(vpnctl(&eps, &["-o", "json", "user", "links", "alice"]), "links").json()["links"].clone();
    let links = links.as_array().expect("links array");
    assert_eq!(links.len(), 2, "one link per node and inbound: {links:?}");
    for link in links {
        assert_eq!(link["node_id"], id);
        let url = Url::parse(link["url"].as_str().expect("url")).expect("a parseable link");
        assert_eq!(url.host_str(), Some("127.0.0.1"));
        match link["protocol"].as_str() {
            Some("shadowsocks-2022") => {
                assert_eq!(
                    (url.scheme(), url.username(), url.port()),
                    ("ss", "2022-blake3-aes-128-gcm", Some(ss_port))
                );
                let password = percent_decode(url.password().expect("password"));
                let (server_key, user_key) = password.split_once(':').expect("<server key>:<user key>");
                assert_eq!(user_key, alice["credentials"]["ss2022_key"]);
                assert_eq!(server_key.len(), 24, "16 bytes of base64: {server_key}");
            }
            Some("vless-tls") => {
                assert_eq!((url.scheme(), url.port()), ("vless", Some(tls_port)));
                assert_eq!(url.username(), alice["credentials"]["vless_uuid"]);
                assert_eq!(query(&url, "sni").as_deref(), Some("vpn.test"));
                assert_eq!(query(&url, "security").as_deref(), Some("tls"));
                assert_eq!(query(&url, "flow").as_deref(), Some("xtls-rprx-vision"));
                assert_eq!(query(&url, "pcs").map(|p| p.len()), Some(64), "the self-signed certificate is pinned");
            }
            other => panic!("unexpected protocol {other:?}"),
        }
    }
    let qr = vpnctl(&eps, &["user", "qr", "alice"]);
    assert_eq!(qr.code, 0, "{}", qr.stderr);
    assert!(qr.stdout.contains('█') && qr.stdout.contains("vless://"), "{}", qr.stdout);

    // A disabled user has no links, and the node stops serving it.
    ok(vpnctl(&eps, &["user", "add", "bob"]), "add bob");
    ok(vpnctl(&eps, &["user", "disable", "alice"]), "disable");
    let refused = vpnctl(&eps, &["user", "links", "alice"]);
    assert_eq!(refused.code, 1, "{}", refused.stdout);
    assert!(refused.stderr.contains("disabled"), "{}", refused.stderr);
    node_caught_up(&eps, &[], id, 1).await;
    let applied = cluster.metric(id, "vpn_dataplane_applied_generation").await.expect("metric");
    let desired = cluster.metric(id, "vpn_dataplane_desired_generation").await.expect("metric");
    assert!(applied >= 1.0 && applied == desired, "applied {applied}, desired {desired}");

    // vpnd exiting never stops the engines; restarted while every voter is
    // down, the node serves its last state again (no leader needed).
    let before = engines.running();
    let exit = cluster.node_mut(id).terminate(Duration::from_secs(20));
    assert!(exit.success(), "{exit:?}");
    let containers = engines.running();
    // One generation per inbound, plus previous ones still in their drain.
    assert!(containers.len() >= 2 && containers == before, "the engines outlive vpnd: {before:?} -> {containers:?}");
    for voter in 1..=3 {
        cluster.node_mut(voter).kill9();
    }
    cluster.node_mut(id).start();
    eventually("the restarted node serves its last state", ENGINES_UP, || async {
        let now = cluster.metric(id, "vpn_dataplane_applied_generation").await?;
        let users = cluster.metric(id, "vpn_runtime_engine_users").await?;
        if now == desired && users == 1.0 {
            Ok(())
        } else {
            Err(format!("applied {now}, engine users {users}"))
        }
    })
    .await;
    let adopted = engines.running();
    assert!(
        !adopted.is_empty() && adopted.iter().all(|c| containers.contains(c)),
        "adopted, not recreated: {containers:?} -> {adopted:?}"
    );
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned()
}

/// What happens to node 1, the control-plane node an edge's agent talks to
/// first (the first of `--join`).
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// kill -9: connections are refused at once.
    Dies,
    /// SIGSTOP: connections stay open and nothing answers (calls time out).
    Hangs,
}

/// An edge's agent talks to one control-plane node at a time. When that
/// node fails, the agent moves to another: its heartbeats keep arriving (the
/// leader never marks it down) and it keeps following its assignment.
async fn an_edge_survives_its_control_plane_node(fault: Fault) -> (DataplaneCluster, u64) {
    let mut dp = DataplaneCluster::start(3).await;
    // Node 1 must not lead: its failure alone should move nothing (a SIGTERM hands leadership over).
    for _ in 0..3 {
        if dp.cluster.wait_leader().await != 1 {
            break;
        }
        let stopped = dp.cluster.node_mut(1).terminate(Duration::from_secs(20));
        assert!(stopped.success(), "{stopped:?}");
        dp.cluster.node_mut(1).start();
    }
    let node = dp.add_node(&["shadowsocks-2022"]);
    dp.ok(&["user", "add", "alice"]).await;
    dp.caught_up(node.id, 1).await;
    let leader = dp.cluster.wait_leader().await;
    assert_ne!(leader, 1, "node 1 still leads");

    match fault {
        Fault::Dies => dp.cluster.node_mut(1).kill9(),
        Fault::Hangs => send_signal(dp.cluster.node(1).pid().expect("node 1 runs"), "STOP"),
    }
    dp.ok(&["user", "add", "bob"]).await;
    let listed = dp.caught_up(node.id, 2).await;
    assert_eq!(listed["status"], "ready", "{fault:?}: {listed}");
    // Longer than the leader's 5 s down-after: a node whose heartbeats stopped would be down by now.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let listed = dp.caught_up(node.id, 2).await;
    assert_eq!(listed["status"], "ready", "{fault:?}: {listed}");
    // Whichever of the others leads (node 1 cannot answer), none marked it down.
    for id in [2, 3] {
        let failovers = dp.cluster.metric(id, "vpn_failovers_total").await.expect("metric");
        assert_eq!(failovers, 0.0, "{fault:?}: node {id} marked node {} down (leader {leader})", node.id);
    }
    (dp, node.id)
}

/// Node 1 dies; then `member remove` empties and stops the edge.
#[tokio::test(flavor = "multi_thread")]
async fn docker_an_edge_moves_to_another_control_plane_node_when_its_node_dies() {
    if !docker::available("docker_an_edge_moves_to_another_control_plane_node_when_its_node_dies") {
        return;
    }
    let (mut dp, id) = an_edge_survives_its_control_plane_node(Fault::Dies).await;

    // Removed by the operator, the node is told so by its assignment stream:
    // it removes its engines (nobody is served by a removed node) and stops.
    assert!(!dp.engines(id).is_empty(), "engines before the removal");
    dp.ok(&["member", "remove", &id.to_string()]).await;
    let exit = dp.cluster.node_mut(id).wait_exit(ENGINES_UP);
    assert!(!exit.success(), "{exit:?}");
    let log = dp.cluster.node(id).log_text();
    assert!(log.contains("was removed from the cluster"), "{}", dp.cluster.node(id).log_tail());
    assert!(log.contains("its engines are removed"), "{}", dp.cluster.node(id).log_tail());
    assert_eq!(dp.engines(id), Vec::<String>::new(), "a removed node's engines are gone");
    let kept = dp.cluster.node(id).data_dir.join("dataplane/assignment.json");
    assert!(!kept.exists(), "{} is still there", kept.display());
    let list = dp.ok(&["-o", "json", "node", "list"]).await.json();
    let ids: Vec<u64> = list["nodes"].as_array().expect("nodes").iter().filter_map(|n| n["id"].as_u64()).collect();
    assert!(!ids.contains(&id), "node {id} is still listed: {list}");
}

/// Node 1 hangs (no connection refused to tell the agent: its calls time out).
#[tokio::test(flavor = "multi_thread")]
async fn docker_an_edge_moves_to_another_control_plane_node_when_its_node_hangs() {
    if !docker::available("docker_an_edge_moves_to_another_control_plane_node_when_its_node_hangs") {
        return;
    }
    let (dp, _) = an_edge_survives_its_control_plane_node(Fault::Hangs).await;
    send_signal(dp.cluster.node(1).pid().expect("node 1 runs"), "CONT");
}
