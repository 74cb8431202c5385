//! End to end on the machine's real Docker engine: users made with `vpnctl`
//! move real traffic through real sing-box engines, with real sing-box
//! clients configured from nothing but the users' own `vpnctl user links`.
//!
//! (a) every link of a user on every data-plane node moves 1 MiB intact;
//! (b) while 20 users are added and 5 deleted over 30 s, a paced download
//!     through a user's VLESS link and one through her Shadowsocks-2022 link
//!     both finish intact; each new user's VLESS link is served within about
//!     a second of the acknowledgement; the deleted users are refused at once;
//!     the previous VLESS generations go when their sessions end, none cut;
//! (c) disabling a user refuses her new connections within 1 s and ends her
//!     live VLESS session within 1 s, while another user's session on the same
//!     engine runs to completion; enabling her lets her in again;
//! (d) under mutual TLS, data-plane-only nodes joined by token hold only the
//!     credentials of the users placed on them (files and process memory are
//!     searched) and no CA key, renew their certificates (`node list` shows
//!     the new expiry), and a node restarted while every control-plane node
//!     is down serves its users from the assignment it kept;
//! (e) through control-plane faults one after another (SIGSTOP and kill -9 of
//!     the leader, then of every voter at once), a user's new connections
//!     over both protocols are served throughout and her session that spans
//!     them all ends intact; a change after them still reaches the engines.

use std::time::{Duration, Instant};

use cluster_tests::cluster::http_get;
use cluster_tests::dataplane::{DataplaneCluster, ENGINES_UP};
use cluster_tests::docker;
use cluster_tests::process;
use cluster_tests::secrecy;
use cluster_tests::traffic::{fetch_via_socks, fetch_via_socks_within, Download, HttpSource, Prober, SingBoxClient};
use cluster_tests::{eventually, within};

const VLESS: &str = "vless-tls";
const SS: &str = "shadowsocks-2022";
const MIB: usize = 1 << 20;
/// A long session: `/slow/` sends ~256 KiB/s, so this runs ~15 s.
const LONG: usize = 4 << 20;
/// One probe of a new connection: a small fetch, refused or not within this.
const PROBE: Duration = Duration::from_millis(500);
/// Bound on a change reaching the engines (the target is 1 s).
const CHANGE: Duration = Duration::from_secs(10);
/// Users added and removed while a download runs, and over how long.
const ADDED: usize = 20;
const REMOVED: usize = 5;
const CHANGES_OVER: Duration = Duration::from_secs(30);
/// A download that outlives the changes: its last chunk waits for them
/// (`/held/`), the rest comes at `/slow/`'s pace (~40 s).
const HANDOFF: usize = 10 << 20;

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

/// Waits until `client`'s user is served by node `id`; returns the time from `since`.
async fn served_after(
    what: &str,
    (dp, id): (&DataplaneCluster, u64),
    client: &SingBoxClient,
    source: &HttpSource,
    since: Instant,
) -> Duration {
    let served = within(what, CHANGE, || async { probe(client, source).await.map(|_| since.elapsed()) }).await;
    served.unwrap_or_else(|e| panic!("{e}\n{}", dp.diagnose(id)))
}

/// A metric of node `id` summed over its series (protocols); no series yet is 0.
async fn metric_sum(dp: &DataplaneCluster, id: u64, name: &str) -> f64 {
    let (code, body) = http_get(dp.cluster.node(id).http, "/metrics").await.expect("metrics");
    assert_eq!(code, 200, "{body}");
    body.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits until node `id` (a VLESS and a Shadowsocks inbound) runs one engine per inbound.
async fn one_engine_per_inbound(dp: &DataplaneCluster, id: u64, what: &str) {
    eventually(what, Duration::from_secs(30), || async {
        let engines = dp.engines(id);
        if engines.len() == 2 {
            Ok(())
        } else {
            Err(format!("{} engines on node {id}", engines.len()))
        }
    })
    .await;
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
        // Once the generations from before the user's placement drained.
        one_engine_per_inbound(&dp, node.id, "one engine per inbound").await;
        // The public ports are redirected to the engines, and held by vpnd so
        // no other program takes one (and never sees a connection).
        for (protocol, port) in &node.inbounds {
            let bound = std::net::TcpListener::bind((std::net::Ipv4Addr::UNSPECIFIED, *port));
            assert!(bound.is_err(), "node {}'s {protocol} port {port} was free for another program", node.id);
        }
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
async fn docker_vless_and_ss_downloads_survive_20_adds_and_5_removals_and_new_users_are_served_at_once() {
    if !docker::available(
        "docker_vless_and_ss_downloads_survive_20_adds_and_5_removals_and_new_users_are_served_at_once",
    ) {
        return;
    }
    let source = HttpSource::start().await;
    let mut dp = DataplaneCluster::start(3).await;
    let node = dp.add_node(&[VLESS, SS]);
    dp.ok(&["user", "add", "alice"]).await;
    for i in 0..REMOVED {
        dp.ok(&["user", "add", &format!("gone-{i}")]).await;
    }
    dp.caught_up(node.id, 1 + REMOVED as u64).await;
    let alice_vless = dp.client(&dp.link("alice", node.id, VLESS).await).await;
    let alice_ss = dp.client(&dp.link("alice", node.id, SS).await).await;
    let mut gone = Vec::new();
    for i in 0..REMOVED {
        let name = format!("gone-{i}");
        let clients = (
            dp.client(&dp.link(&name, node.id, VLESS).await).await,
            dp.client(&dp.link(&name, node.id, SS).await).await,
        );
        probe(&clients.0, &source).await.expect("served over VLESS before the deletion");
        probe(&clients.1, &source).await.expect("served over SS before the deletion");
        gone.push((name, clients));
    }
    let generations_before = metric_sum(&dp, node.id, "vpn_runtime_engine_generations_started_total").await;

    // Paced at the source (~256 KiB/s), the last chunk held: both run through every change.
    let path = format!("/held/{HANDOFF}");
    // A first connection through a just-started client was seen to end at once under load.
    eventually("alice served over VLESS", CHANGE, || probe(&alice_vless, &source)).await;
    eventually("alice served over SS", CHANGE, || probe(&alice_ss, &source)).await;
    let vless_dl = Download::start(alice_vless.proxy, source.addr, &path, HANDOFF);
    let ss_dl = Download::start(alice_ss.proxy, source.addr, &path, HANDOFF);
    started("alice's VLESS download to start", &vless_dl).await;
    started("alice's SS download to start", &ss_dl).await;

    // 25 changes spread over 30 s: every fifth a deletion.
    let t0 = tokio::time::Instant::now();
    let mut served = Vec::new();
    for k in 0..ADDED + REMOVED {
        tokio::time::sleep_until(t0 + CHANGES_OVER * k as u32 / (ADDED + REMOVED) as u32).await;
        if k % 5 == 4 {
            let (name, (vless, ss)) = gone.remove(0);
            dp.ok(&["user", "delete", &name]).await;
            let acked = Instant::now();
            let vless_refused =
                refused_after(&format!("{name} deleted -> VLESS refused"), &vless, &source, acked).await;
            let ss_refused = refused_after(&format!("{name} deleted -> SS refused"), &ss, &source, acked).await;
            // The target is 1 s (tens of ms on a quiet machine); slack for the suite's load.
            assert!(vless_refused < Duration::from_secs(3), "{name}: VLESS refused within 1 s, took {vless_refused:?}");
            assert!(
                ss_refused < Duration::from_secs(3),
                "{name}: SS refused within 1 s (+ a probe), took {ss_refused:?}"
            );
        } else {
            let name = format!("new-{k}");
            dp.ok(&["user", "add", &name]).await;
            let acked = Instant::now();
            let client = dp.client(&dp.link(&name, node.id, VLESS).await).await;
            served.push(
                served_after(&format!("{name} added -> VLESS served"), (&dp, node.id), &client, &source, acked).await,
            );
        }
    }
    for (what, download) in [("VLESS", &vless_dl), ("SS", &ss_dl)] {
        assert!(
            !download.is_finished(),
            "alice's {what} download ran through every change; it ended after {} bytes",
            download.received()
        );
    }
    source.release_held();
    let (vless_whole, _) = vless_dl.end(Duration::from_secs(120)).await;
    let (ss_whole, _) = ss_dl.end(Duration::from_secs(120)).await;
    assert_eq!(vless_whole, Ok(HANDOFF), "alice's VLESS download finished intact\n{}", dp.diagnose(node.id));
    assert_eq!(ss_whole, Ok(HANDOFF), "alice's SS download finished intact");

    // From the CreateUser acknowledgement to a new VLESS connection served
    // (including the test's own link lookup and client start). The target is
    // 1 s: met on a quiet machine (median 381-554 ms, benches/RESULTS.md); the
    // bounds here leave room for the suite's load on 2 cores (a fresh-clone CI
    // run saw a median of 1.04 s, everything included).
    served.sort();
    let median = served[served.len() / 2];
    eprintln!("new VLESS users served after their acknowledgement: median {median:?}, all {served:?}");
    assert!(median < Duration::from_secs(3), "median {median:?}: {served:?}");
    assert!(served.iter().all(|d| *d < Duration::from_secs(8)), "{served:?}");
    let generations =
        metric_sum(&dp, node.id, "vpn_runtime_engine_generations_started_total").await - generations_before;
    eprintln!("{} changes made {generations} generations (both inbounds)", ADDED + REMOVED);
    assert!(generations >= 1.0, "the adds started new generations");

    // The previous generations go once their sessions ended.
    one_engine_per_inbound(&dp, node.id, "the previous generations to go").await;
    assert_eq!(metric_sum(&dp, node.id, "vpn_runtime_sessions_dropped_total").await, 0.0, "no session was dropped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn docker_disable_refuses_new_connections_and_ends_the_live_session_within_1s() {
    if !docker::available("docker_disable_refuses_new_connections_and_ends_the_live_session_within_1s") {
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
    // A first connection through a just-started client was seen to end at once under load:
    // both clients are first seen served.
    eventually("alice served", CHANGE, || probe(&alice, &source)).await;
    eventually("bob served", CHANGE, || probe(&bob, &source)).await;
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
    assert!(closed < Duration::from_secs(2), "alice's live session ended within 1 s (+ slack), took {closed:?}");
    assert!(cut.is_err(), "alice's session was cut, not completed: {cut:?}");

    probe(&bob, &source).await.expect("bob's new connections are still served");
    assert!(!bob_dl.is_finished(), "bob's session outlived alice's");
    let (whole, _) = bob_dl.end(Duration::from_secs(60)).await;
    assert_eq!(whole, Ok(LONG), "bob's session ran to completion intact");

    dp.ok(&["user", "enable", "alice"]).await;
    let enabled = served_after("alice enabled -> served again", (&dp, node.id), &alice, &source, Instant::now()).await;
    eprintln!("alice enabled -> served again: {enabled:?}");
    let moved = fetch_via_socks(alice.proxy, source.addr, &format!("/{MIB}"), MIB).await;
    assert_eq!(moved, Ok(MIB), "alice moves 1 MiB intact again");
    assert_eq!(
        metric_sum(&dp, node.id, "vpn_runtime_sessions_dropped_total").await,
        0.0,
        "bob's session was never cut"
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

/// How long each control-plane fault of (e) holds.
const FAULT_HOLD: Duration = Duration::from_secs(4);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn docker_the_data_plane_serves_through_control_plane_pauses_and_crashes() {
    if !docker::available("docker_the_data_plane_serves_through_control_plane_pauses_and_crashes") {
        return;
    }
    let source = HttpSource::start().await;
    let origin = source.addr;
    let mut dp = DataplaneCluster::start(3).await;
    let node = dp.add_node(&[VLESS, SS]);
    dp.ok(&["user", "add", "grace"]).await;
    dp.caught_up(node.id, 1).await;
    let vless = dp.client(&dp.link("grace", node.id, VLESS).await).await;
    let ss = dp.client(&dp.link("grace", node.id, SS).await).await;
    let proxies = [("VLESS", vless.proxy), ("Shadowsocks", ss.proxy)];
    for (protocol, proxy) in proxies {
        eventually(&format!("grace served over {protocol}"), CHANGE, || async move {
            fetch_via_socks_within(proxy, origin, "/4096", 4096, PROBE).await
        })
        .await;
    }
    // Spans every fault: its last chunk waits for the release after them.
    let live = Download::start(vless.proxy, source.addr, &format!("/held/{MIB}"), MIB);

    let prober = Prober::start(proxies.map(|(protocol, proxy)| (protocol.to_owned(), proxy)).to_vec(), origin);

    let voters: Vec<u64> = dp.cluster.control_plane().map(|p| p.id).collect();
    let mut faults = Vec::new();
    // (what, SIGSTOP rather than kill -9, every voter rather than the leader)
    let schedule = [
        ("SIGSTOP of the leader", true, false),
        ("kill -9 of the leader", false, false),
        ("SIGSTOP of every voter", true, true),
        ("kill -9 of every voter", false, true),
    ];
    for (fault, pause, every) in schedule {
        let leader = dp.cluster.wait_leader().await;
        let targets = if every { voters.clone() } else { vec![leader] };
        for id in &targets {
            let process = dp.cluster.node_mut(*id);
            if pause {
                process::send_signal(process.pid().expect("a running voter"), "STOP");
            } else {
                process.kill9();
            }
        }
        tokio::time::sleep(FAULT_HOLD).await;
        for id in &targets {
            let process = dp.cluster.node_mut(*id);
            if pause {
                process::send_signal(process.pid().expect("a paused voter"), "CONT");
            } else {
                process.start();
            }
        }
        faults.push(format!("{fault} (leader was {leader})"));
    }
    dp.cluster.wait_leader().await;
    let (probes, failed) = prober.stop().await;
    assert!(probes >= 40, "only {probes} probes ran through {faults:?}");
    assert!(
        failed.is_empty(),
        "{} of {probes} probes failed through {faults:?}: {failed:?}\n{}",
        failed.len(),
        dp.diagnose(node.id)
    );

    source.release_held();
    let (moved, _) = live.end(Duration::from_secs(30)).await;
    assert_eq!(moved, Ok(MIB), "the session that spanned {faults:?}");
    dp.ok(&["user", "add", "heidi"]).await;
    dp.caught_up(node.id, 2).await;
    let heidi = dp.client(&dp.link("heidi", node.id, SS).await).await;
    eventually("heidi, added after the faults, served", CHANGE, || async {
        fetch_via_socks_within(heidi.proxy, source.addr, "/4096", 4096, PROBE).await
    })
    .await;
    eprintln!("{probes} probes, none failed, through: {faults:?}");
}
