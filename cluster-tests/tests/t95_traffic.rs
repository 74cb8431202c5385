//! End to end on the machine's real Docker engine: users made with `vpnctl`
//! move real traffic through real sing-box engines, with real sing-box
//! clients configured from nothing but the users' own `vpnctl user links`.
//!
//! (a) every link of a user on every data-plane node moves 1 MiB intact;
//! (b) a Shadowsocks-2022 download survives adding and deleting other users;
//! (c) disabling a user refuses her new connections within 1 s and ends her
//!     live VLESS session within 5 s, while another user's session on the same
//!     engine runs to completion; enabling her lets her in again;
//! (d) under mutual TLS, data-plane-only nodes joined by token hold only the
//!     credentials of the users placed on them (files and process memory are
//!     searched) and no CA key, renew their certificates (`node list` shows
//!     the new expiry), and a node restarted while every control-plane node
//!     is down serves its users from the assignment it kept.

use std::time::{Duration, Instant};

use cluster_tests::cluster::http_get;
use cluster_tests::dataplane::{DataplaneCluster, ENGINES_UP};
use cluster_tests::docker;
use cluster_tests::eventually;
use cluster_tests::secrecy;
use cluster_tests::traffic::{fetch_via_socks, fetch_via_socks_within, Download, HttpSource, SingBoxClient};

const VLESS: &str = "vless-tls";
const SS: &str = "shadowsocks-2022";
const MIB: usize = 1 << 20;
/// A long session: `/slow/` sends ~256 KiB/s, so this runs ~15 s.
const LONG: usize = 4 << 20;
/// One probe of a new connection: a small fetch, refused or not within this.
const PROBE: Duration = Duration::from_millis(500);
/// Bound on a change reaching the engines (the targets are 1 s and 5 s).
const CHANGE: Duration = Duration::from_secs(10);

/// A new connection of `client`'s user: `Ok` when served whole.
async fn probe(client: &SingBoxClient, source: &HttpSource) -> Result<usize, String> {
    fetch_via_socks_within(client.proxy, source.addr, "/1024", 1024, PROBE).await
}

/// Probes new connections until one is refused; returns the time from
/// `since` to the end of that refused probe (so it over-estimates), then
/// checks that the next one is refused too.
async fn refused_after(what: &str, client: &SingBoxClient, source: &HttpSource, since: Instant) -> Duration {
    let at = eventually(what, CHANGE, || async {
        match probe(client, source).await {
            Ok(_) => Err("still served".to_owned()),
            Err(e) => Ok((since.elapsed(), e)),
        }
    })
    .await;
    eprintln!("{what}: {:?} ({})", at.0, at.1);
    assert!(probe(client, source).await.is_err(), "{what}: served again right after a refusal");
    at.0
}

/// Waits until `client`'s user is served; returns the time from `since`.
async fn served_after(what: &str, client: &SingBoxClient, source: &HttpSource, since: Instant) -> Duration {
    eventually(what, CHANGE, || async { probe(client, source).await.map(|_| since.elapsed()) }).await
}

/// Engine reloads on node `id` so far (sum over protocols; no series yet is 0).
async fn reloads(dp: &DataplaneCluster, id: u64) -> f64 {
    let (code, body) = http_get(dp.cluster.node(id).http, "/metrics").await.expect("metrics");
    assert_eq!(code, 200, "{body}");
    body.lines()
        .filter(|l| l.starts_with("vpn_runtime_engine_reloads_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn started(what: &str, download: &Download) {
    eventually(what, Duration::from_secs(10), || async {
        if download.received() > 0 {
            Ok(())
        } else if download.is_finished() {
            Err("ended before its first byte".to_owned())
        } else {
            Err("no byte yet".to_owned())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn docker_a_vpnctl_user_moves_1mib_through_every_dataplane_node() {
    if !docker::available("docker_a_vpnctl_user_moves_1mib_through_every_dataplane_node") {
        return;
    }
    let source = HttpSource::start().await;
    let mut dp = DataplaneCluster::start(3).await;
    let nodes = [dp.add_node(&[VLESS, SS]), dp.add_node(&[VLESS, SS])];
    dp.ok(&["user", "add", "alice"]).await;
    for node in &nodes {
        dp.caught_up(node.id, 1).await;
        assert_eq!(dp.engines(node.id).len(), 2, "one engine per inbound on node {}", node.id);
    }

    let links = dp.links("alice").await;
    let mut served: Vec<(u64, String)> = links.iter().map(|l| (l.node_id, l.protocol.clone())).collect();
    served.sort();
    let mut expected: Vec<(u64, String)> =
        nodes.iter().flat_map(|n| [(n.id, VLESS.to_owned()), (n.id, SS.to_owned())]).collect();
    expected.sort();
    assert_eq!(served, expected, "one link per data-plane node and inbound: {links:?}");

    for link in &links {
        let client = dp.client(link).await;
        let at = Instant::now();
        let moved = fetch_via_socks(client.proxy, source.addr, &format!("/{MIB}"), MIB).await;
        assert_eq!(
            moved,
            Ok(MIB),
            "1 MiB through node {} over {}: {}\n{}",
            link.node_id,
            link.protocol,
            link.url,
            dp.diagnose(link.node_id)
        );
        eprintln!("node {} {}: 1 MiB intact in {:?}", link.node_id, link.protocol, at.elapsed());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn docker_ss2022_download_survives_adding_and_removing_other_users() {
    if !docker::available("docker_ss2022_download_survives_adding_and_removing_other_users") {
        return;
    }
    let source = HttpSource::start().await;
    let mut dp = DataplaneCluster::start(3).await;
    let node = dp.add_node(&[SS]);
    dp.ok(&["user", "add", "alice"]).await;
    dp.ok(&["user", "add", "bob"]).await;
    dp.caught_up(node.id, 2).await;
    let engine = dp.engines(node.id);
    let alice = dp.client(&dp.link("alice", node.id, SS).await).await;
    let bob = dp.client(&dp.link("bob", node.id, SS).await).await;
    probe(&bob, &source).await.expect("bob is served before his deletion");

    let download = Download::start(alice.proxy, source.addr, &format!("/slow/{LONG}"), LONG);
    started("alice's download to start", &download).await;
    dp.ok(&["user", "add", "carol"]).await;
    let carol_added = Instant::now();
    let carol = dp.client(&dp.link("carol", node.id, SS).await).await;
    let served = served_after("carol's first connection", &carol, &source, carol_added).await;
    eprintln!("carol added -> her first connection served: {served:?}");
    dp.ok(&["user", "delete", "bob"]).await;
    let refused = refused_after("bob deleted -> his new connections refused", &bob, &source, Instant::now()).await;
    assert!(refused < Duration::from_secs(1), "bob's new connections refused within 1 s, took {refused:?}");
    assert!(!download.is_finished(), "both changes reached the engine while alice's download ran");

    let (whole, _) = download.end(Duration::from_secs(60)).await;
    assert_eq!(whole, Ok(LONG), "alice's download finished intact");
    let moved = fetch_via_socks(carol.proxy, source.addr, &format!("/{MIB}"), MIB).await;
    assert_eq!(moved, Ok(MIB), "carol moves 1 MiB intact");
    assert!(probe(&bob, &source).await.is_err(), "bob stays refused");
    assert_eq!(dp.engines(node.id), engine, "user changes never restart the engine");
    assert_eq!(reloads(&dp, node.id).await, 0.0, "Shadowsocks-2022 users change live, without a reload");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn docker_disable_refuses_new_connections_within_1s_and_ends_live_vless_session_within_5s() {
    if !docker::available("docker_disable_refuses_new_connections_within_1s_and_ends_live_vless_session_within_5s") {
        return;
    }
    let source = HttpSource::start().await;
    let mut dp = DataplaneCluster::start(3).await;
    let node = dp.add_node(&[VLESS]);
    dp.ok(&["user", "add", "alice"]).await;
    dp.ok(&["user", "add", "bob"]).await;
    dp.caught_up(node.id, 2).await;
    let alice = dp.client(&dp.link("alice", node.id, VLESS).await).await;
    let bob = dp.client(&dp.link("bob", node.id, VLESS).await).await;
    probe(&alice, &source).await.expect("alice is served before she is disabled");
    let reloads_before = reloads(&dp, node.id).await;

    let alice_dl = Download::start(alice.proxy, source.addr, &format!("/slow/{LONG}"), LONG);
    let bob_dl = Download::start(bob.proxy, source.addr, &format!("/slow/{LONG}"), LONG);
    started("alice's download to start", &alice_dl).await;
    started("bob's download to start", &bob_dl).await;

    dp.ok(&["user", "disable", "alice"]).await;
    let acked = Instant::now();
    let refused = refused_after("alice disabled -> her new connections refused", &alice, &source, acked).await;
    let (cut, ended) = alice_dl.end(CHANGE).await;
    let closed = ended.duration_since(acked);
    eprintln!("alice disabled -> her live session ended: {closed:?} ({cut:?})");
    assert!(refused < Duration::from_secs(1), "alice's new connections refused within 1 s, took {refused:?}");
    assert!(closed < Duration::from_secs(5), "alice's live session ended within 5 s, took {closed:?}");
    assert!(cut.is_err(), "alice's session was cut, not completed: {cut:?}");

    probe(&bob, &source).await.expect("bob's new connections are still served");
    assert!(!bob_dl.is_finished(), "bob's session outlived alice's");
    let (whole, _) = bob_dl.end(Duration::from_secs(60)).await;
    assert_eq!(whole, Ok(LONG), "bob's session ran to completion intact");

    dp.ok(&["user", "enable", "alice"]).await;
    let enabled = served_after("alice enabled -> served again", &alice, &source, Instant::now()).await;
    eprintln!("alice enabled -> served again: {enabled:?}");
    let moved = fetch_via_socks(alice.proxy, source.addr, &format!("/{MIB}"), MIB).await;
    assert_eq!(moved, Ok(MIB), "alice moves 1 MiB intact again");
    assert_eq!(
        reloads(&dp, node.id).await,
        reloads_before,
        "disable and enable need no reload (a reload would cut bob)"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn docker_mtls_edges_joined_by_token_hold_only_their_users_and_serve_without_the_control_plane() {
    if !docker::available("docker_mtls_edges_joined_by_token_hold_only_their_users_and_serve_without_the_control_plane")
    {
        return;
    }
    let source = HttpSource::start().await;
    // The voters sign 30 s certificates: the edges renew theirs during the test.
    let mut dp = DataplaneCluster::start_mtls_with(3, &["--node-cert-lifetime", "30s"]).await;
    let node = dp.add_node_with(&[VLESS, SS], &["--labels", "region=a"]);
    let other = dp.add_node_with(&[SS], &["--labels", "region=b"]);
    dp.ok(&["user", "add", "alice", "--constraint", "region=a"]).await;
    dp.ok(&["user", "add", "bob", "--constraint", "region=b"]).await;
    let listed = dp.caught_up(node.id, 1).await;
    dp.caught_up(other.id, 1).await;
    let expires = listed["cert_expires_at"].as_str().unwrap_or_default().to_owned();
    assert!(expires.starts_with("20"), "node list shows the certificate's expiry: {listed}");
    let status = dp.ok(&["-o", "json", "cluster", "status"]).await.json();
    assert_eq!(status["tls"], true);

    // The data-plane node made its key itself and holds a data-plane certificate.
    let data_dir = dp.cluster.node(node.id).data_dir.clone();
    let pki = data_dir.join("pki");
    let (_, der) = vpn_pki::files::read_pem(&pki.join("node.crt"), "CERTIFICATE").expect("node.crt");
    let principal = vpn_pki::CertInfo::from_der(&der).expect("identity").principal;
    assert_eq!(principal, vpn_pki::Principal::Node { id: node.id, role: vpn_pki::Role::DataPlane });
    assert!(pki.join("node.key").exists() && !pki.join("ca.key").exists(), "its own key, no CA key");

    let mut links = Vec::new();
    for protocol in [VLESS, SS] {
        let link = dp.link("alice", node.id, protocol).await;
        let client = dp.client(&link).await;
        let moved = fetch_via_socks(client.proxy, source.addr, &format!("/{MIB}"), MIB).await;
        assert_eq!(moved, Ok(MIB), "1 MiB over {protocol} through node {}\n{}", node.id, dp.diagnose(node.id));
        links.push(link);
    }

    // Edge secrecy: the node holds alice's credentials (it serves her), and
    // neither bob's (placed elsewhere), nor any subscription token, nor the CA key.
    let (alice, bob) = (dp.user("alice").await, dp.user("bob").await);
    let secret = |user: &serde_json::Value, field: &str| {
        let value = user["credentials"][field].as_str().unwrap_or_else(|| panic!("{field} in {user}"));
        value.to_owned()
    };
    let token = |user: &serde_json::Value| {
        let url = user["subscription_url"].as_str().unwrap_or_else(|| panic!("subscription_url in {user}"));
        url.rsplit('/').next().unwrap_or_default().to_owned()
    };
    let ca_key = std::fs::read_to_string(dp.cluster.root.path().join("ca").join("ca.key")).expect("the CA key");
    let ca_key_line = ca_key.lines().find(|l| !l.starts_with("-----")).expect("a PEM body").to_owned();
    let foreign = [secret(&bob, "vless_uuid"), secret(&bob, "ss2022_key"), token(&bob), token(&alice), ca_key_line];
    let foreign: Vec<&str> = foreign.iter().map(String::as_str).collect();
    let own = secret(&alice, "ss2022_key");
    let on_disk = secrecy::in_files(&data_dir, &[&own]);
    assert!(!on_disk.is_empty(), "the search finds what the node does hold (alice's key)");
    assert_eq!(secrecy::in_files(&data_dir, &foreign), Vec::new(), "files of node {} hold a secret", node.id);
    let pid = dp.cluster.node(node.id).pid().expect("running");
    assert_eq!(secrecy::in_memory(pid, &[&own]), std::slice::from_ref(&own), "the search finds alice's key in memory");
    assert_eq!(
        secrecy::in_memory(pid, &foreign),
        Vec::<String>::new(),
        "the memory of node {} holds a secret",
        node.id
    );

    // An edge's certificate renews itself, and `node list` shows the new expiry.
    eventually("node list shows the renewed certificate's expiry", Duration::from_secs(90), || async {
        let now = dp.ok(&["-o", "json", "node", "show", &node.id.to_string()]).await.json();
        match now["cert_expires_at"].as_str() {
            Some(later) if later > expires.as_str() => Ok(()),
            other => Err(format!("still {other:?} (first {expires})")),
        }
    })
    .await;

    // Serving without the control plane: every voter is down, the node's
    // host fails (vpnd and its engines gone) and comes back; it makes its
    // engines again from the assignment it kept and serves alice.
    for voter in 1..=3 {
        dp.cluster.node_mut(voter).kill9();
    }
    dp.kill_node(node.id);
    assert!(dp.engines(node.id).is_empty(), "the engines went with the host");
    dp.cluster.node_mut(node.id).start();
    let http = dp.cluster.node(node.id).http;
    eventually("the restarted node is ready on its kept assignment", ENGINES_UP, || async {
        match http_get(http, "/readyz?verbose").await {
            Ok((200, _)) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    for link in &links {
        let client = dp.client(link).await;
        let moved = fetch_via_socks(client.proxy, source.addr, &format!("/{MIB}"), MIB).await;
        assert_eq!(
            moved,
            Ok(MIB),
            "1 MiB over {} with the control plane down\n{}",
            link.protocol,
            dp.diagnose(node.id)
        );
    }
}
