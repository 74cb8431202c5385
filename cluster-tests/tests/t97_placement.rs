//! Health-aware placement on the machine's real Docker engine, with real
//! sing-box clients built from the users' own subscriptions:
//!
//! - a data-plane node dies (its vpnd and its engines): within 10 s at the
//!   default settings its users are placed elsewhere, the subscription lists
//!   only live nodes, and a client built from it moves data;
//! - draining a node while a user downloads through another of her nodes:
//!   the download is unaffected, and she is never without a placement;
//! - killing the leader moves no user: the new leader gives every node a
//!   full grace period.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use cluster_tests::dataplane::{DataplaneCluster, DataplaneNode};
use cluster_tests::docker;
use cluster_tests::eventually;
use cluster_tests::traffic::{
    fetch_via_socks, fetch_via_socks_within, outbound_from_link, Download, HttpSource, SingBoxClient,
};

const SS: &str = "shadowsocks-2022";
const MIB: usize = 1 << 20;
/// A long session: `/slow/` sends ~256 KiB/s, so this runs ~16 s.
const LONG: usize = 4 << 20;
/// The failover target at default settings.
const FAILOVER_TARGET: Duration = Duration::from_secs(10);

/// A client for one `ss://` link of a subscription.
async fn client(url: &str) -> SingBoxClient {
    SingBoxClient::start(outbound_from_link(url, None)).await
}

/// Three Shadowsocks-2022 data-plane nodes and a user "alice" placed on two
/// of them, both serving her: the cluster, the nodes, her placements.
async fn alice_on_two_of_three_nodes() -> (DataplaneCluster, [DataplaneNode; 3], Vec<u64>) {
    let mut dp = DataplaneCluster::start(3).await;
    let nodes = [dp.add_node(&[SS]), dp.add_node(&[SS]), dp.add_node(&[SS])];
    dp.ok(&["user", "add", "alice"]).await;
    let placed = eventually("alice to get two placements", Duration::from_secs(30), || async {
        let p = dp.placements("alice").await;
        if p.len() == 2 {
            Ok(p)
        } else {
            Err(format!("placements {p:?}"))
        }
    })
    .await;
    for id in &placed {
        dp.caught_up(*id, 1).await;
    }
    (dp, nodes, placed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn docker_a_dead_nodes_users_are_served_elsewhere_within_10s_through_the_subscription() {
    if !docker::available("docker_a_dead_nodes_users_are_served_elsewhere_within_10s_through_the_subscription") {
        return;
    }
    let source = HttpSource::start().await;
    let (mut dp, nodes, placed) = alice_on_two_of_three_nodes().await;
    let links = dp.subscription_links("alice").await;
    let listed: BTreeSet<u64> = links.iter().map(|l| dp.node_of_link(&nodes, l)).collect();
    assert_eq!(listed, placed.iter().copied().collect(), "the subscription lists the nodes holding alice");

    let victim = placed[0];
    let killed = Instant::now();
    dp.kill_node(victim);
    // Served elsewhere: the refreshed subscription names a live node, and a
    // client built from it alone moves data through that node.
    let (url, served_in) = eventually("alice to be served by a live node", Duration::from_secs(60), || async {
        let links = dp.subscription_links("alice").await;
        let nodes_listed: Vec<u64> = links.iter().map(|l| dp.node_of_link(&nodes, l)).collect();
        if nodes_listed.contains(&victim) || nodes_listed.len() != 2 {
            return Err(format!("subscription still lists {nodes_listed:?}"));
        }
        let fresh = links.iter().find(|l| !placed.contains(&dp.node_of_link(&nodes, l))).cloned();
        let url = fresh.ok_or(format!("no new node in {nodes_listed:?}"))?;
        let c = client(&url).await;
        fetch_via_socks_within(c.proxy, source.addr, "/1024", 1024, Duration::from_millis(500)).await?;
        Ok((url, killed.elapsed()))
    })
    .await;
    eprintln!("node {victim} killed -> alice served by a new node after {served_in:?}");
    assert!(served_in < FAILOVER_TARGET, "failover took {served_in:?} (target {FAILOVER_TARGET:?})");
    let placements = dp.placements("alice").await;
    assert!(!placements.contains(&victim) && placements.len() == 2, "placements {placements:?}");
    let node = dp.ok(&["-o", "json", "node", "show", &victim.to_string()]).await.json();
    assert_eq!(node["status"], "down", "{node}");

    let c = client(&url).await;
    assert_eq!(fetch_via_socks(c.proxy, source.addr, &format!("/{MIB}"), MIB).await, Ok(MIB));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn docker_draining_a_node_leaves_a_running_download_alone_and_the_user_always_placed() {
    if !docker::available("docker_draining_a_node_leaves_a_running_download_alone_and_the_user_always_placed") {
        return;
    }
    let source = HttpSource::start().await;
    let (dp, nodes, placed) = alice_on_two_of_three_nodes().await;
    let (keep, drained) = (placed[0], placed[1]);
    let spare = nodes.iter().map(|n| n.id).find(|id| !placed.contains(id)).expect("a third node");
    let links = dp.subscription_links("alice").await;
    let keep_link = links.iter().find(|l| dp.node_of_link(&nodes, l) == keep).expect("link on the kept node");
    let c = client(keep_link).await;
    let download = Download::start(c.proxy, source.addr, &format!("/slow/{LONG}"), LONG);

    dp.ok(&["node", "drain", &drained.to_string()]).await;
    let drained_at = Instant::now();
    // Every placement set alice goes through, polled until she is off the node.
    let mut seen: Vec<Vec<u64>> = Vec::new();
    let moved = loop {
        let p = dp.placements("alice").await;
        assert!(!p.is_empty(), "alice had no placement during the drain (history {seen:?})");
        if seen.last() != Some(&p) {
            seen.push(p.clone());
        }
        if !p.contains(&drained) {
            break p;
        }
        assert!(drained_at.elapsed() < Duration::from_secs(60), "alice still on node {drained}: {seen:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    eprintln!("drain of node {drained}: placements went {seen:?} in {:?}", drained_at.elapsed());
    assert_eq!(moved.iter().copied().collect::<BTreeSet<_>>(), BTreeSet::from([keep, spare]));
    assert!(
        seen.iter().any(|p| p.contains(&drained) && p.contains(&spare)),
        "make-before-break: the new placement existed beside the old one ({seen:?})"
    );
    // The new node serves her at once: it applied the placement before the old one went.
    let spare_link = dp.subscription_links("alice").await.into_iter().find(|l| dp.node_of_link(&nodes, l) == spare);
    let spare_client = client(&spare_link.expect("a link on the new node")).await;
    assert_eq!(fetch_via_socks(spare_client.proxy, source.addr, "/1024", 1024).await, Ok(1024));

    let (whole, _) = download.end(Duration::from_secs(60)).await;
    assert_eq!(whole, Ok(LONG), "the download through node {keep} during the drain");
    let node = dp.ok(&["-o", "json", "node", "show", &drained.to_string()]).await.json();
    assert_eq!((node["status"].as_str(), node["users"].as_u64()), (Some("draining"), Some(0)), "{node}");
}

/// Every user's placements, from `vpnctl -o json user list`.
async fn all_placed(dp: &DataplaneCluster) -> Vec<(String, Vec<u64>)> {
    let list = dp.ok(&["-o", "json", "user", "list"]).await.json();
    let users = list["users"].as_array().cloned().unwrap_or_default();
    users
        .iter()
        .map(|u| {
            let p = u["placements"].as_array().cloned().unwrap_or_default();
            (u["name"].as_str().unwrap_or_default().to_owned(), p.iter().filter_map(|v| v.as_u64()).collect())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn docker_killing_the_leader_moves_no_user() {
    if !docker::available("docker_killing_the_leader_moves_no_user") {
        return;
    }
    let mut dp = DataplaneCluster::start(3).await;
    let nodes = [dp.add_node(&[SS]), dp.add_node(&[SS]), dp.add_node(&[SS])];
    for name in ["u1", "u2", "u3", "u4", "u5", "u6"] {
        dp.ok(&["user", "add", name]).await;
    }
    let before = eventually("every user to get two placements", Duration::from_secs(60), || async {
        let p = all_placed(&dp).await;
        if p.len() == 6 && p.iter().all(|(_, n)| n.len() == 2) {
            Ok(p)
        } else {
            Err(format!("{p:?}"))
        }
    })
    .await;
    for n in &nodes {
        let exited = dp.cluster.node_mut(n.id).exited();
        assert!(exited.is_none(), "data-plane node {} exited ({exited:?}):\n{}", n.id, dp.diagnose(n.id));
    }
    let leader = dp.cluster.wait_leader().await;
    dp.cluster.node_mut(leader).kill9();
    let elected = Instant::now();
    let new_leader = dp.cluster.wait_leader().await;
    assert_ne!(new_leader, leader);
    // The new leader's grace period (down_after, 5 s) plus two heartbeats:
    // watch that window and a margin for any move or any node marked down.
    while elected.elapsed() < Duration::from_secs(9) {
        assert_eq!(all_placed(&dp).await, before, "placements changed after the election");
        let list = dp.ok(&["-o", "json", "node", "list"]).await.json();
        for n in list["nodes"].as_array().cloned().unwrap_or_default() {
            assert_eq!(n["status"], "ready", "a node was marked after the election alone: {n}");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let failovers = dp.metric(new_leader, "vpn_failovers_total").await.unwrap_or(0.0);
    assert_eq!(failovers, 0.0, "the new leader marked a node down");
    assert_eq!(nodes.len(), 3);
}
