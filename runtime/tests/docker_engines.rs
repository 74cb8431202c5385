//! Real engines on the machine's Docker, real sing-box clients: users move
//! 1 MiB intact over Shadowsocks-2022 and VLESS over TLS, user changes apply
//! live without disturbing other sessions, and a removed VLESS user's
//! running session is closed while another user's continues; another host
//! reaches a generation only through the public port.

mod common;

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

use common::client::{split_body, Client, Download};
use common::http::{is_pattern, HttpServer};
use common::{docker_ready, free_port, ss_inbound, user, vless_inbound, wait_for, Node, OtherHost};
use vpn_runtime::{keys, EngineUser, Protocol};

const SHORT: Duration = Duration::from_secs(2);
/// Bound on a session getting going: a loaded CI machine can take seconds.
const TO_START: Duration = Duration::from_secs(20);

/// A generation listens on all addresses, but another host reaches it only
/// through the public port: its own port is guarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_another_host_reaches_a_generation_only_through_the_public_port() {
    if !docker_ready() {
        return;
    }
    let mut node = Node::start(Duration::from_secs(10)).await;
    let port = free_port();
    let inbound = ss_inbound(port, &keys::generate_ss2022_key());
    let g = node.set(vec![inbound.clone()], vec![user("alice")]);
    node.wait_applied(g).await;
    let routes = node.routes();
    let engine_port = routes.iter().find(|(public, _)| *public == port).map(|(_, e)| *e).expect("routed");
    let other = OtherHost::create();
    assert!(
        other.connects(port, Duration::from_secs(10)),
        "the public port {port} takes connections from another host"
    );
    assert!(
        !other.connects(engine_port, Duration::from_secs(3)),
        "the generation's own port {engine_port} is closed to another host"
    );
    let local =
        std::net::TcpStream::connect_timeout(&(Ipv4Addr::LOCALHOST, engine_port).into(), Duration::from_secs(5));
    assert!(local.is_ok(), "loopback still reaches it (vpnd's readiness check)");

    // The next generation is guarded too, and the first one's port is let go once it is gone.
    let g = node.set(vec![inbound.clone()], vec![user("alice"), user("bob")]);
    node.wait_applied(g).await;
    let next = wait_for("the next generation to take over", Duration::from_secs(30), async || {
        node.routes().iter().find(|(p, e)| *p == port && *e != engine_port).map(|(_, e)| *e)
    })
    .await;
    assert!(other.connects(port, Duration::from_secs(10)), "the public port still takes connections");
    assert!(!other.connects(next, Duration::from_secs(3)), "the next generation's port {next} is closed too");
    let table = format!("vpnd_{}", node.id);
    wait_for("the first generation to go, and its port to be let go", Duration::from_secs(30), async || {
        let out = Command::new("nft").args(["list", "set", "inet", &table, "engines"]).output().ok()?;
        let set = String::from_utf8_lossy(&out.stdout).into_owned();
        let guarded = set.contains(&next.to_string()) && !set.contains(&engine_port.to_string());
        (guarded && node.generations("shadowsocks-2022").len() == 1).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_ss2022_users_move_1mib_and_user_changes_spare_running_sessions() {
    if !docker_ready() {
        return;
    }
    let http = HttpServer::start().await;
    let mut node = Node::start(Duration::from_secs(10)).await;
    let port = free_port();
    let inbound = ss_inbound(port, &keys::generate_ss2022_key());
    let key = inbound.ss2022_server_key.clone().unwrap_or_default();
    let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));
    let started = Instant::now();
    let g = node.set(vec![inbound.clone()], vec![alice.clone(), bob.clone()]);
    node.wait_applied(g).await;
    eprintln!("ss2022: engine created and 2 users added in {:?}", started.elapsed());
    let id = node.container_id("shadowsocks-2022").expect("engine running");

    let alice_client = Client::ss2022(port, &key, &alice.ss2022_key).await;
    let bob_client = Client::ss2022(port, &key, &bob.ss2022_key).await;
    let carol_client = Client::ss2022(port, &key, &carol.ss2022_key).await;
    // Under a loaded CI a first connection right after the first generation took over was once
    // cut ("early eof"; see the session 7 note): wait to be served, then move the bytes.
    for client in [&alice_client, &bob_client] {
        wait_for("the user to be served", Duration::from_secs(10), async || {
            client.get(http.port, "/bytes/1024", Duration::from_secs(2)).await.ok()
        })
        .await;
    }
    alice_client.fetch_1mib(http.port).await.expect("alice moves 1 MiB intact");
    bob_client.fetch_1mib(http.port).await.expect("bob moves 1 MiB intact");
    assert!(carol_client.get(http.port, "/bytes/1024", SHORT).await.is_err(), "carol is not a user yet");

    // While alice and bob download (~2.6 s), carol is added and bob removed.
    let len = 2 << 20;
    let download = Download::spawn(alice_client.request(http.port, &format!("/slow/{len}")).await.expect("request"));
    let bob_dl = Download::spawn(bob_client.request(http.port, &format!("/slow/{len}")).await.expect("request"));
    wait_for("both downloads to start", TO_START, async || {
        (download.received() > 0 && bob_dl.received() > 0).then_some(())
    })
    .await;
    let changed = Instant::now();
    let g = node.set(vec![inbound.clone()], vec![alice.clone(), carol.clone()]);
    let (_, bob_end) = bob_dl.end(Duration::from_secs(5)).await;
    let cut = bob_end.duration_since(changed);
    eprintln!("ss2022: bob removed -> his live session ended after {cut:?}");
    assert!(cut < Duration::from_secs(1), "bob's live session ends within 1 s, took {cut:?}");
    wait_for("carol's first connection", Duration::from_secs(5), async || {
        carol_client.get(http.port, "/bytes/1024", Duration::from_millis(300)).await.ok()
    })
    .await;
    eprintln!("ss2022: desired change -> carol's first connection served: {:?}", changed.elapsed());
    node.wait_applied(g).await;
    let applied = changed.elapsed();
    eprintln!("ss2022: desired change -> applied (carol added, bob removed): {applied:?}");
    // A new generation's container start: ~0.5 s on a quiet machine, up to
    // 1.5 s seen under the suite's load on 2 cores; the bound leaves room.
    assert!(applied < Duration::from_secs(5), "applied within 5 s, took {applied:?}");
    assert!(bob_client.get(http.port, "/bytes/1024", SHORT).await.is_err(), "bob's new sessions are refused");
    assert!(!download.is_finished(), "the changes overlapped alice's download");

    let (all, _) = download.end(Duration::from_secs(30)).await;
    let body = split_body(&all).expect("alice's download finished whole");
    assert!(body.len() == len && is_pattern(&body), "alice's download through the handoff is intact");
    carol_client.fetch_1mib(http.port).await.expect("carol moves 1 MiB intact");

    assert_ne!(node.container_id("shadowsocks-2022"), Some(id), "a new generation serves the new user set");
    wait_for("the previous generation to go after its last session", Duration::from_secs(30), async || {
        (node.generations("shadowsocks-2022").len() == 1).then_some(())
    })
    .await;
    let metrics = &node.handle().metrics;
    assert_eq!(metrics.generations_started(Protocol::Shadowsocks2022), 2);
    assert_eq!(metrics.sessions_dropped(Protocol::Shadowsocks2022), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_vless_tls_users_move_1mib_and_a_removed_users_sessions_end() {
    if !docker_ready() {
        return;
    }
    let http = HttpServer::start().await;
    let mut node = Node::start(Duration::from_secs(10)).await;
    let (files, cert) = node.self_signed_tls();
    let port = free_port();
    let inbound = vless_inbound(port, files);
    let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));
    let g = node.set(vec![inbound.clone()], vec![alice.clone(), bob.clone()]);
    node.wait_applied(g).await;
    let id = node.container_id("vless-tls").expect("engine running");

    let client = async |u: &EngineUser| Client::vless_tls(port, &u.vless_uuid.to_string(), &cert, "vpn.test").await;
    let (alice_client, bob_client, carol_client) = (client(&alice).await, client(&bob).await, client(&carol).await);
    alice_client.fetch_1mib(http.port).await.expect("alice moves 1 MiB intact");
    bob_client.fetch_1mib(http.port).await.expect("bob moves 1 MiB intact");

    // Both hold a long session (~26 s); then bob is disabled.
    let path = format!("/slow/{}", 20 << 20);
    let alice_dl = Download::spawn(alice_client.request(http.port, &path).await.expect("request"));
    let bob_dl = Download::spawn(bob_client.request(http.port, &path).await.expect("request"));
    wait_for("both downloads to start", TO_START, async || {
        (alice_dl.received() > 0 && bob_dl.received() > 0).then_some(())
    })
    .await;
    let disabled = Instant::now();
    let g = node.set(vec![inbound.clone()], vec![alice.clone()]);
    wait_for("bob's new sessions to be refused", SHORT, async || {
        bob_client.get(http.port, "/bytes/1024", Duration::from_millis(500)).await.is_err().then_some(())
    })
    .await;
    let refused = disabled.elapsed();
    let (_, bob_end) = bob_dl.end(Duration::from_secs(5)).await;
    let closed = bob_end.duration_since(disabled);
    eprintln!("vless: disable -> new sessions refused {refused:?}, live session closed {closed:?}");
    // Measured with probes of up to 500 ms each, so it over-estimates; slack for the suite's load.
    assert!(refused < Duration::from_secs(3), "refused within 3 s, took {refused:?}");
    assert!(closed < Duration::from_secs(1), "bob's session ended within 1 s, took {closed:?}");
    let before = alice_dl.received();
    wait_for("alice's session to keep moving", TO_START, async || (alice_dl.received() > before).then_some(())).await;
    assert!(!alice_dl.is_finished(), "alice's session continues");
    node.wait_applied(g).await;
    let metrics = node.handle().metrics.clone();
    assert!(metrics.sessions_closed(Protocol::VlessTls) >= 1);
    // The next generation leaves bob out of its config; the first one serves alice's session on.
    assert_ne!(node.container_id("vless-tls"), Some(id.clone()), "a generation without bob");

    // Enabled again: served at once (by the next generation), alice still untouched.
    let enabled = Instant::now();
    let g = node.set(vec![inbound.clone()], vec![alice.clone(), bob.clone()]);
    wait_for("bob to be served again", SHORT, async || bob_client.get(http.port, "/bytes/1024", SHORT).await.ok())
        .await;
    eprintln!("vless: enable -> bob served again in {:?}", enabled.elapsed());
    node.wait_applied(g).await;
    assert!(!alice_dl.is_finished(), "alice's session still continues");

    // A new user starts the next generation, which takes the new connections;
    // alice's session stays on the previous one until it ends.
    let added = Instant::now();
    let g = node.set(vec![inbound.clone()], vec![alice.clone(), bob.clone(), carol.clone()]);
    wait_for("carol to be served", Duration::from_secs(5), async || {
        carol_client.get(http.port, "/bytes/1024", Duration::from_millis(500)).await.ok()
    })
    .await;
    eprintln!("vless: add -> carol served in {:?} (a new generation, then the route)", added.elapsed());
    node.wait_applied(g).await;
    carol_client.fetch_1mib(http.port).await.expect("carol moves 1 MiB intact");
    let generations = node.generations("vless-tls");
    assert!(generations.iter().any(|(_, gid, _)| *gid == id), "the first one serves alice: {generations:?}");
    let (all, _) = alice_dl.end(Duration::from_secs(60)).await;
    let body = split_body(&all).expect("alice's download finished whole");
    assert!(body.len() == 20 << 20 && is_pattern(&body), "alice's download through the handoff is intact");
    wait_for("the previous generation to go after its last session", Duration::from_secs(30), async || {
        (node.generations("vless-tls").len() == 1).then_some(())
    })
    .await;
    assert_eq!(metrics.sessions_dropped(Protocol::VlessTls), 0);
}
