//! (g) Bad input: each a clear error that names the fix, and nothing left half-applied.

mod common;

use std::net::{Ipv4Addr, TcpListener};
use std::process::Command;
use std::time::Duration;

use common::{docker_ready, free_port, ss_inbound, user, vless_inbound, Node, IMAGE};
use tokio::sync::watch;
use vpn_runtime::{keys, Reconciler, RuntimeConfig};

async fn start_error(config: RuntimeConfig) -> String {
    let (_desired, desired_rx) = watch::channel(None);
    let (_shutdown, shutdown_rx) = watch::channel(false);
    match Reconciler::start(config, desired_rx, shutdown_rx).await {
        Ok(_) => panic!("start should fail"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_inbound_port_in_use_is_a_clear_error_and_creates_nothing() {
    if !docker_ready() {
        return;
    }
    // A claimed port below the ephemeral range: one the kernel handed out
    // could carry a parallel test's outgoing connection once let go (it did
    // once), and the inbound would then never apply.
    let port = free_port();
    let taken = TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).expect("bind the claimed port");
    let mut node = Node::start(Duration::from_secs(10)).await;
    let (files, _) = node.self_signed_tls();
    let vless = vless_inbound(port, files);
    let inbounds = vec![ss_inbound(free_port(), &keys::generate_ss2022_key()), vless];
    node.set(inbounds.clone(), vec![user("alice")]);
    let error = node.wait_error().await;
    eprintln!("port in use: {error}");
    assert!(error.contains(&format!("port {port}/tcp")) && error.contains("already in use"), "{error}");
    assert!(error.contains("--inbound vless-tls=<port>"), "names the fix: {error}");
    // The other inbound is not held back; the failed one left nothing behind.
    let names: Vec<String> = node.containers().into_iter().map(|(_, name, _)| name).collect();
    assert_eq!(names, vec![format!("vpn-{}-shadowsocks-2022-g1", node.id)], "only the good inbound runs");

    // Once the port is free the same desired state applies.
    drop(taken);
    let g = node.set(inbounds, vec![user("alice")]);
    node.wait_applied(g).await;
    assert!(node.container_id("vless-tls").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_unreachable_socket_is_a_clear_error() {
    let node = Node::unstarted(Duration::from_secs(10));
    for host in ["unix:///nonexistent/docker.sock", &format!("tcp://127.0.0.1:{}", free_port())] {
        let mut config = node.config();
        config.docker_host = Some(host.to_string());
        let error = start_error(config).await;
        eprintln!("unreachable Docker: {error}");
        assert!(error.contains(&format!("cannot reach Docker at {host}")), "{error}");
        assert!(error.contains("start the Docker daemon") && error.contains("DOCKER_HOST"), "names the fix: {error}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_missing_image_is_a_clear_error_naming_the_build_script() {
    if !docker_ready() {
        return;
    }
    // At start: fail fast.
    let mut node = Node::unstarted(Duration::from_secs(10));
    let mut config = node.config();
    config.engine_image = "vpn-local/no-such-engine:0".into();
    let error = start_error(config).await;
    eprintln!("missing image at start: {error}");
    assert!(error.contains("ops/images/build-sing-box.sh vpn-local/no-such-engine:0"), "{error}");

    // Gone after start (someone pruned it): the reconcile fails the same way, creating nothing.
    let tag = format!("vpn-local/sing-box-tmp:{}", node.id);
    let docker = |args: &[&str]| Command::new("docker").args(args).output().expect("docker CLI");
    assert!(docker(&["tag", IMAGE, &tag]).status.success());
    let mut config = node.config();
    config.engine_image = tag.clone();
    let (desired_rx, shutdown_rx) = (node.desired.subscribe(), node.shutdown.subscribe());
    node.handle = Some(Reconciler::start(config, desired_rx, shutdown_rx).await.expect("image present at start"));
    assert!(docker(&["rmi", &tag]).status.success());
    node.set(vec![ss_inbound(free_port(), &keys::generate_ss2022_key())], vec![user("alice")]);
    let error = node.wait_error().await;
    eprintln!("missing image at reconcile: {error}");
    assert!(error.contains(&format!("ops/images/build-sing-box.sh {tag}")), "{error}");
    assert!(node.containers().is_empty(), "no container left behind: {:?}", node.containers());
}
