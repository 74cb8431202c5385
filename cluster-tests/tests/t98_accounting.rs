//! User lifecycle and traffic accounting on the machine's real Docker
//! engine, with real sing-box clients:
//!
//! - a user with a small data limit downloads past it: the usage the cluster
//!   recorded matches the bytes the origin server moved, new connections are
//!   refused within 1 s of the limit being recorded, live sessions are cut
//!   soon after;
//! - expiry likewise, for a live VLESS and a live Shadowsocks session;
//! - short connections over both protocols, running through an engine
//!   generation handoff and a kill -9 of the node's vpnd and of the leader:
//!   the recorded usage ends within 1% of the bytes the origin moved, nothing
//!   lost or counted twice.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster_tests::dataplane::DataplaneCluster;
use cluster_tests::docker;
use cluster_tests::eventually;
use cluster_tests::traffic::{fetch_via_socks, fetch_via_socks_within, Download, HttpSource, SingBoxClient};

const VLESS: &str = "vless-tls";
const SS: &str = "shadowsocks-2022";
const MIB: usize = 1 << 20;
/// ~32 s at the slow path's ~256 KiB/s: outlives any limit in these tests.
const LONG: usize = 8 << 20;
const PROBE: Duration = Duration::from_millis(500);
/// One fast fetch. One cut when its user is limited may leave up to this much
/// in the origin's send buffer, counted by the origin but never sent.
const FETCH: usize = 256 << 10;
/// How soon after the status was recorded a live session must have ended
/// (the target is 1 s from the change reaching the node; slack for CI).
const CUT_WITHIN: Duration = Duration::from_secs(2);

async fn probe(client: &SingBoxClient, source: &HttpSource) -> Result<usize, String> {
    fetch_via_socks_within(client.proxy, source.addr, "/1024", 1024, PROBE).await
}

/// Polls `user show` until the user's status is `status`; returns when it was seen.
async fn status_becomes(dp: &DataplaneCluster, name: &str, status: &str, within: Duration) -> Instant {
    eventually(&format!("{name} to be {status}"), within, || async {
        let user = dp.user(name).await;
        if user["status"] == status {
            Ok(Instant::now())
        } else {
            Err(format!("{user}"))
        }
    })
    .await
}

/// Checks the refusal and cut targets from `recorded`: every new connection
/// of each client refused within 1 s, every live session ended soon after.
async fn refused_and_cut(
    what: &str,
    clients: &[&SingBoxClient],
    source: &HttpSource,
    lives: Vec<(&str, Download)>,
    recorded: Instant,
    diagnose: impl Fn() -> String,
) {
    for (i, client) in clients.iter().enumerate() {
        let refused = eventually(&format!("{what}: client {i} refused"), Duration::from_secs(10), || async {
            match probe(client, source).await {
                Ok(_) => Err("still served".to_owned()),
                Err(_) => Ok(recorded.elapsed()),
            }
        })
        .await;
        eprintln!("{what}: client {i}'s new connections refused {refused:?} after the status was recorded");
        assert!(refused <= Duration::from_secs(1) + PROBE, "{what}: refused only after {refused:?}\n{}", diagnose());
    }
    for (protocol, live) in lives {
        let (result, ended) = live.end(Duration::from_secs(30)).await;
        let cut = ended.saturating_duration_since(recorded);
        eprintln!("{what}: the live {protocol} session ended {cut:?} after the status was recorded ({result:?})");
        assert!(result.is_err(), "{what}: the live {protocol} session ran to completion");
        assert!(cut <= CUT_WITHIN, "{what}: the live {protocol} session ran {cut:?} past the change\n{}", diagnose());
    }
}

/// The user's recorded usage once it stops changing.
async fn settled_usage(dp: &DataplaneCluster, name: &str) -> u64 {
    eventually(&format!("{name}'s usage to settle"), Duration::from_secs(30), || async {
        let a = dp.user(name).await["used_bytes"].as_u64().unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let b = dp.user(name).await["used_bytes"].as_u64().unwrap_or(0);
        if a == b && a > 0 {
            Ok(a)
        } else {
            Err(format!("{a} -> {b}"))
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn docker_a_data_limit_is_enforced_and_the_recorded_usage_matches_the_bytes_moved() {
    if !docker::available("docker_a_data_limit_is_enforced_and_the_recorded_usage_matches_the_bytes_moved") {
        return;
    }
    let source = HttpSource::start().await;
    let mut dp = DataplaneCluster::start(3).await;
    let node = dp.add_node(&[VLESS, SS]);
    dp.ok(&["user", "add", "bob", "--data-limit", "3MiB"]).await;
    dp.caught_up(node.id, 1).await;
    let vless = dp.client(&dp.link("bob", node.id, VLESS).await).await;
    let ss = dp.client(&dp.link("bob", node.id, SS).await).await;

    // A live VLESS session, then fast Shadowsocks downloads past the limit.
    let live = Download::start(vless.proxy, source.addr, &format!("/slow/{LONG}"), LONG);
    eventually("bob's live VLESS session to start", Duration::from_secs(30), || async {
        if live.received() > 0 {
            Ok(())
        } else {
            Err("no byte yet".to_owned())
        }
    })
    .await;
    let mut moved_ss = 0;
    let recorded = loop {
        let user = dp.user("bob").await;
        if user["status"] == "limited" {
            break Instant::now();
        }
        assert!(moved_ss < 20 * MIB, "20 MiB moved and bob is still not limited: {user}");
        if let Ok(n) = fetch_via_socks(ss.proxy, source.addr, &format!("/{FETCH}"), FETCH).await {
            moved_ss += n;
        }
    };
    let recorded = recorded.min(status_becomes(&dp, "bob", "limited", Duration::from_secs(1)).await);
    let live_bytes_at_limit = live.received();
    eprintln!("bob limited after {moved_ss} SS bytes and {live_bytes_at_limit} live VLESS bytes");
    let lives = vec![("VLESS", live)];
    refused_and_cut("data limit", &[&ss, &vless], &source, lives, recorded, || dp.diagnose(node.id)).await;

    // The usage settles once the last reports arrive; it matches what the
    // origin received and sent for bob, up to what a cut fetch left in the
    // origin's send buffer.
    let used = settled_usage(&dp, "bob").await;
    let origin = source.moved();
    eprintln!("bob: recorded {used} bytes; the origin moved {origin}; clients received at least {moved_ss}");
    assert!(used >= 3 * MIB as u64, "recorded {used} < the 3 MiB limit that was reached");
    assert!(used.abs_diff(origin) <= FETCH as u64 + origin / 100, "recorded {used}, origin moved {origin}");

    dp.ok(&["user", "reset-traffic", "bob"]).await;
    let back = Instant::now();
    eventually("bob served again after reset-traffic", Duration::from_secs(10), || probe(&ss, &source)).await;
    eprintln!("reset-traffic -> bob served again after {:?}", back.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn docker_an_expired_user_is_refused_and_her_live_session_cut() {
    if !docker::available("docker_an_expired_user_is_refused_and_her_live_session_cut") {
        return;
    }
    let source = HttpSource::start().await;
    let mut dp = DataplaneCluster::start(3).await;
    let node = dp.add_node(&[VLESS, SS]);
    dp.ok(&["user", "add", "carol"]).await;
    dp.ok(&["user", "add", "dave"]).await;
    dp.caught_up(node.id, 2).await;
    let vless = dp.client(&dp.link("dave", node.id, VLESS).await).await;
    let ss = dp.client(&dp.link("dave", node.id, SS).await).await;
    let carol = dp.client(&dp.link("carol", node.id, VLESS).await).await;
    probe(&ss, &source).await.expect("dave is served before expiry");

    let expires = time::OffsetDateTime::now_utc() + time::Duration::seconds(6);
    let expires = expires.format(&time::format_description::well_known::Rfc3339).expect("rfc3339");
    dp.ok(&["user", "limit", "dave", "--expires", &expires]).await;
    let live = Download::start(vless.proxy, source.addr, &format!("/slow/{LONG}"), LONG);
    let live_ss = Download::start(ss.proxy, source.addr, &format!("/slow/{LONG}"), LONG);
    let carols = Download::start(carol.proxy, source.addr, &format!("/slow/{}", 2 * MIB), 2 * MIB);
    let recorded = status_becomes(&dp, "dave", "expired", Duration::from_secs(20)).await;
    let lives = vec![("VLESS", live), ("Shadowsocks", live_ss)];
    refused_and_cut("expiry", &[&ss, &vless], &source, lives, recorded, || dp.diagnose(node.id)).await;
    let (carol_result, _) = carols.end(Duration::from_secs(30)).await;
    assert_eq!(carol_result, Ok(2 * MIB), "another user's session on the same engine");

    let refused = dp.vpnctl(&["user", "enable", "dave"]).await;
    assert_ne!(refused.code, 0, "enabling an expired user without a new expiry must be refused");
    assert!(refused.stderr.contains("--expires"), "the error says what to do: {}", refused.stderr);
    dp.ok(&["user", "enable", "dave", "--expires", "30d"]).await;
    eventually("dave served again", Duration::from_secs(10), || probe(&ss, &source)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn docker_usage_through_a_handoff_and_kills_of_the_agent_and_the_leader_is_within_1pct_of_the_origin() {
    if !docker::available(
        "docker_usage_through_a_handoff_and_kills_of_the_agent_and_the_leader_is_within_1pct_of_the_origin",
    ) {
        return;
    }
    let source = HttpSource::start().await;
    let mut dp = DataplaneCluster::start(3).await;
    let node = dp.add_node(&[SS, VLESS]);
    dp.ok(&["user", "add", "erin"]).await;
    dp.caught_up(node.id, 1).await;
    let clients =
        [dp.client(&dp.link("erin", node.id, SS).await).await, dp.client(&dp.link("erin", node.id, VLESS).await).await];

    // Connections over both protocols flow throughout (the engines outlive their vpnd), paced at
    // the origin like real ones: unpaced loopback transfers on a starved machine make the kernel
    // drop and the origin resend segments, which the host carries (and bills) twice.
    let progress = Arc::new(AtomicUsize::new(0));
    let traffic: Vec<_> = clients
        .iter()
        .map(|client| {
            let (proxy, target, progress) = (client.proxy, source.addr, progress.clone());
            tokio::spawn(async move {
                for _ in 0..30 {
                    let n = fetch_via_socks(proxy, target, "/slow/262144", 262_144).await.unwrap_or(0);
                    progress.fetch_add(n, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        })
        .collect();
    let flowed = |past: usize| {
        let progress = progress.clone();
        async move {
            eventually("more traffic through the engines", Duration::from_secs(30), || async {
                let now = progress.load(Ordering::Relaxed);
                if now >= past + MIB {
                    Ok(now)
                } else {
                    Err(format!("{now} bytes so far"))
                }
            })
            .await
        }
    };
    // Some usage recorded; a user added (both engines hand over to a new
    // generation); then the agent dies mid-stream; then the leader.
    eventually("erin's first recorded usage", Duration::from_secs(30), || async {
        let used = dp.user("erin").await["used_bytes"].as_u64().unwrap_or(0);
        if used > 0 {
            Ok(())
        } else {
            Err("nothing recorded yet".to_owned())
        }
    })
    .await;
    dp.ok(&["user", "add", "frank"]).await;
    let at = flowed(progress.load(Ordering::Relaxed)).await;
    dp.cluster.node_mut(node.id).kill9();
    let at = flowed(at).await;
    let leader = dp.cluster.wait_leader().await;
    dp.cluster.node_mut(leader).kill9();
    flowed(at).await;
    dp.cluster.node_mut(leader).start();
    dp.cluster.node_mut(node.id).start();
    for task in traffic {
        task.await.expect("traffic task");
    }
    let moved = progress.load(Ordering::Relaxed);
    assert!(moved >= 8 * MIB, "the clients moved {moved} bytes: traffic did not flow through the faults");

    // Every byte the origin received and sent for erin is recorded once.
    let origin = source.moved();
    let recorded = settled_usage(&dp, "erin").await;
    let ratio = recorded as f64 / origin as f64;
    eprintln!("erin: the origin moved {origin} bytes, the cluster recorded {recorded} ({ratio:.5}x); clients received {moved}");
    assert!(
        recorded.abs_diff(origin) <= origin / 100,
        "recorded {recorded}, origin {origin}\n{}",
        dp.diagnose(node.id)
    );
}
