//! Traffic counters of real engines on the machine's Docker, with real
//! sing-box clients: a Shadowsocks-2022 user's counter grows by the bytes it
//! moved and no one else's does; a VLESS session is counted for its user
//! while it runs; sources the reconciler ends (a removed user, a refused
//! user's closed session) keep their final reading.

mod common;

use std::time::Duration;

use common::client::{split_body, Client, Download};
use common::http::{is_pattern, HttpServer};
use common::{docker_ready, free_port, ss_inbound, user, vless_inbound, wait_for, Node};
use vpn_runtime::{keys, Counter};

/// Request line and headers both ways, plus slack: what a fetch adds to its body.
const OVERHEAD: u64 = 4 * 1024;

async fn counters(node: &Node) -> Vec<Counter> {
    node.handle().counters().await.expect("counters readable")
}

fn bytes_of(counters: &[Counter], user: &str) -> u64 {
    counters.iter().filter(|c| c.user == user).map(|c| c.bytes).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_ss2022_counts_each_users_bytes_and_keeps_a_removed_users_last_count() {
    if !docker_ready() {
        return;
    }
    let http = HttpServer::start().await;
    let mut node = Node::start(Duration::from_secs(10)).await;
    let port = free_port();
    let inbound = ss_inbound(port, &keys::generate_ss2022_key());
    let key = inbound.ss2022_server_key.clone().unwrap_or_default();
    let (alice, bob) = (user("alice"), user("bob"));
    let g = node.set(vec![inbound.clone()], vec![alice.clone(), bob.clone()]);
    node.wait_applied(g).await;
    let id = node.container_id("shadowsocks-2022").expect("engine running");

    let before = counters(&node).await;
    let mut sources: Vec<(&str, &str)> = before.iter().map(|c| (c.source.as_str(), c.user.as_str())).collect();
    sources.sort();
    assert_eq!(sources.len(), 2, "one source per user: {before:?}");
    for (source, user) in &sources {
        assert!(source.starts_with(&id[..12]) && source.ends_with(&format!("/ss/{user}")), "{source}");
    }
    let (alice0, bob0) = (bytes_of(&before, "alice"), bytes_of(&before, "bob"));

    let n: u64 = 3 << 20;
    let client = Client::ss2022(port, &key, &alice.ss2022_key).await;
    let body = client.get(http.port, &format!("/bytes/{n}"), Duration::from_secs(30)).await.expect("alice's fetch");
    assert!(body.len() as u64 == n && is_pattern(&body), "alice's fetch is intact");
    // The counter is bumped as bytes pass; the last ones may trail the client's read a little.
    let after = wait_for("alice's counter to take the fetch in", Duration::from_secs(5), async || {
        let now = counters(&node).await;
        (bytes_of(&now, "alice") >= alice0 + n).then_some(now)
    })
    .await;
    let counted = bytes_of(&after, "alice") - alice0;
    eprintln!("ss2022: moved {n} bytes of body, alice's counter grew by {counted} (+{} bytes)", counted - n);
    assert!(counted <= n + OVERHEAD, "grew by {counted}, moved {n}");
    assert_eq!(bytes_of(&after, "bob"), bob0, "bob moved nothing");

    // A read does not clear the counts (no `clear=true`).
    assert_eq!(bytes_of(&counters(&node).await, "alice"), alice0 + counted);

    // Removing alice ends her source in the engine; its final reading stays listed.
    let g = node.set(vec![inbound.clone()], vec![bob.clone()]);
    node.wait_applied(g).await;
    let removed = counters(&node).await;
    let alice_now: Vec<&Counter> = removed.iter().filter(|c| c.user == "alice").collect();
    assert_eq!(alice_now.len(), 1, "{removed:?}");
    assert_eq!(alice_now[0].bytes, alice0 + counted, "alice's final reading");
    assert!(after.iter().any(|c| c.source == alice_now[0].source), "same source as before the removal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_vless_tls_sessions_count_for_their_user_until_the_end() {
    if !docker_ready() {
        return;
    }
    let http = HttpServer::start().await;
    let mut node = Node::start(Duration::from_secs(10)).await;
    let (files, cert) = node.self_signed_tls();
    let port = free_port();
    let inbound = vless_inbound(port, files);
    let (alice, bob) = (user("alice"), user("bob"));
    let g = node.set(vec![inbound.clone()], vec![alice.clone(), bob.clone()]);
    node.wait_applied(g).await;
    let id = node.container_id("vless-tls").expect("engine running");
    assert!(counters(&node).await.is_empty(), "no sessions, no sources");

    // A whole fetch while reads run: the session is counted for alice, then it ends and its source goes.
    let client = Client::vless_tls(port, &alice.vless_uuid.to_string(), &cert, "vpn.test").await;
    let bob_client = Client::vless_tls(port, &bob.vless_uuid.to_string(), &cert, "vpn.test").await;
    let n: u64 = 2 << 20;
    let download = Download::spawn(client.request(http.port, &format!("/slow/{n}")).await.expect("request"));
    let mut last_seen = 0;
    let mut source = None;
    while !download.is_finished() {
        let now = counters(&node).await;
        assert_eq!(bytes_of(&now, "bob"), 0, "bob moved nothing: {now:?}");
        if let Some(c) = now.iter().find(|c| c.user == "alice") {
            assert!(c.source.starts_with(&id[..12]) && c.source.contains("/conn/"), "{}", c.source);
            assert!(c.bytes >= last_seen, "a session's count never goes down");
            last_seen = c.bytes;
            source = Some(c.source.clone());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (all, _) = download.end(Duration::from_secs(5)).await;
    let body = split_body(&all).expect("alice's download is whole");
    assert_eq!(body.len() as u64, n);
    let source = source.expect("alice's session was listed while it ran");
    eprintln!(
        "vless: moved {n} bytes of body; last read of the session while it ran: {last_seen} (not seen: {})",
        n.saturating_sub(last_seen)
    );
    assert!(last_seen <= n + OVERHEAD);
    wait_for("the ended session to leave the list", Duration::from_secs(5), async || {
        (!counters(&node).await.iter().any(|c| c.source == source)).then_some(())
    })
    .await;

    // A short session that starts and ends between two reads: measured (the granularity), not asserted.
    let seen_before: Vec<String> = counters(&node).await.into_iter().map(|c| c.source).collect();
    client.fetch_1mib(http.port).await.expect("alice moves 1 MiB intact");
    let new_sources: u64 =
        counters(&node).await.iter().filter(|c| !seen_before.contains(&c.source)).map(|c| c.bytes).sum();
    eprintln!("vless: a 1 MiB session between two reads: {new_sources} bytes of it listed at the next read");

    // A long session of bob's, then bob is disabled: the engine closes it, the final reading stays.
    let long = Download::spawn(bob_client.request(http.port, &format!("/slow/{}", 40 << 20)).await.expect("request"));
    wait_for("bob's session to move 512 KiB", Duration::from_secs(10), async || {
        (long.received() > 512 << 10).then_some(())
    })
    .await;
    let received_then = long.received() as u64;
    let live = counters(&node).await;
    let bob_live = live.iter().find(|c| c.user == "bob").expect("bob's session listed").clone();
    eprintln!("vless: bob's session counted {} bytes; his client had {received_then} just before", bob_live.bytes);
    assert!(bob_live.bytes >= received_then, "the count covers what the client got");
    // More bytes pass before the refusal: the final reading is taken at the refusal, not earlier.
    wait_for("bob's session to move 256 KiB more", Duration::from_secs(10), async || {
        (long.received() as u64 > bob_live.bytes + (256 << 10)).then_some(())
    })
    .await;
    let g = node.set(vec![inbound.clone()], vec![alice.clone()]);
    let (got, _) = long.end(Duration::from_secs(10)).await;
    node.wait_applied(g).await;
    let after = counters(&node).await;
    let bob_final = after.iter().find(|c| c.source == bob_live.source).expect("bob's final reading stays listed");
    assert_eq!(bob_final.user, "bob");
    assert!(bob_final.bytes > bob_live.bytes + (256 << 10), "final {} vs live {}", bob_final.bytes, bob_live.bytes);
    eprintln!(
        "vless: bob's client got {} bytes before the refusal closed his session; final reading {} bytes",
        got.len(),
        bob_final.bytes
    );
}
