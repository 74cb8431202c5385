//! Data-plane flags through the real command line and file parsing.

use clap::Parser as _;

use super::*;
use crate::config::{Args, Bootstrap, Config};

fn config(extra: &[&str]) -> Result<Config, String> {
    let mut argv = vec![
        "vpnd",
        "--id",
        "4",
        "--listen",
        "127.0.0.1:7000",
        "--http",
        "127.0.0.1:7080",
        "--data-dir",
        "/tmp/x",
        "--insecure",
    ];
    argv.extend_from_slice(extra);
    Config::from_args(Args::parse_from(argv)).map_err(|e| e.to_string())
}

fn dataplane(extra: &[&str]) -> Result<DataplaneConfig, String> {
    let mut argv = vec!["--dataplane", "--public-host", "vpn4.example.com"];
    argv.extend_from_slice(extra);
    config(&argv).map(|c| c.dataplane.expect("a data-plane config"))
}

#[track_caller]
fn refused(extra: &[&str], flag: &str, words: &str) {
    match dataplane(extra) {
        Ok(c) => panic!("accepted {extra:?}: {c:?}"),
        Err(e) => assert!(e.starts_with(flag) && e.contains(words), "{extra:?}: {e}"),
    }
}

#[test]
fn a_full_data_plane_node_is_parsed_with_defaults() {
    let c = dataplane(&[
        "--inbound",
        "vless-tls=443",
        "--inbound",
        "shadowsocks-2022=8388",
        "--inbound",
        "vless-reality=8443",
        "--reality-server-name",
        "www.example.org",
        "--labels",
        "region=eu,tier=gold",
        "--capacity",
        "500",
    ])
    .expect("valid");
    assert_eq!(c.public_host, "vpn4.example.com");
    assert_eq!(
        c.inbounds,
        vec![
            InboundConfig { protocol: Protocol::VlessTls, port: 443 },
            InboundConfig { protocol: Protocol::Shadowsocks2022, port: 8388 },
            InboundConfig { protocol: Protocol::VlessReality, port: 8443 },
        ]
    );
    assert_eq!(c.engine_image, DEFAULT_ENGINE_IMAGE);
    assert_eq!(c.tls, Some(TlsConfig { server_name: "vpn4.example.com".into(), files: None }));
    let reality = c.reality.expect("reality");
    assert_eq!((reality.handshake_host.as_str(), reality.handshake_port), ("www.example.org", 443));
    assert_eq!(c.labels.get("tier").map(String::as_str), Some("gold"));
    assert_eq!(c.capacity, 500);
    assert_eq!(c.resync, Duration::from_secs(10));
    assert_eq!((c.engine_drain, c.engine_max_generations), (Duration::from_secs(3600), 8));
    assert_eq!(c.nftables, vpn_runtime::NftablesUse::Auto);
}

#[test]
fn bad_inbounds_name_the_flag_and_the_problem() {
    refused(&[], "--inbound", "at least one");
    refused(&["--inbound", "wireguard=51820"], "--inbound", "unknown protocol");
    refused(&["--inbound", "vless-tls"], "--inbound", "<protocol>=<port>");
    refused(&["--inbound", "vless-tls=0"], "--inbound", "1-65535");
    refused(&["--inbound", "vless-tls=70000"], "--inbound", "1-65535");
    refused(
        &["--inbound", "vless-tls=443", "--inbound", "shadowsocks-2022=443"],
        "--inbound",
        "port 443 is given twice",
    );
    refused(&["--inbound", "vless-tls=443", "--inbound", "vless-tls=8443"], "--inbound", "one inbound per protocol");
    refused(&["--inbound", "vless-tls=7080"], "--inbound", "--http port");
}

#[test]
fn tls_and_reality_flags_are_checked() {
    let tls = ["--inbound", "vless-tls=443"];
    refused(&[&tls[..], &["--tls-cert", "c.pem"]].concat(), "--tls-key", "required");
    refused(&[&tls[..], &["--tls-key", "k.pem"]].concat(), "--tls-cert", "required");
    refused(&["--inbound", "shadowsocks-2022=8388", "--tls-cert", "c.pem"], "--tls-cert", "vless-tls");
    refused(&["--inbound", "vless-reality=443"], "--reality-server-name", "required");
    refused(&[&tls[..], &["--reality-server-name", "a.example"]].concat(), "--reality-server-name", "vless-reality");
    refused(
        &["--inbound", "vless-reality=443", "--reality-server-name", "a.example", "--reality-handshake", "a.example"],
        "--reality-handshake",
        "host:port",
    );
    let c = dataplane(
        &[&tls[..], &["--tls-cert", "c.pem", "--tls-key", "k.pem", "--tls-server-name", "Vpn.Example.COM"]].concat(),
    )
    .expect("valid");
    assert_eq!(
        c.tls,
        Some(TlsConfig { server_name: "vpn.example.com".into(), files: Some(("c.pem".into(), "k.pem".into())) })
    );
}

#[test]
fn other_bad_values_name_their_flag() {
    let tls = ["--inbound", "vless-tls=443"];
    refused(&[&tls[..], &["--labels", "region"]].concat(), "--labels", "key=value");
    refused(&[&tls[..], &["--labels", "a=1,a=2"]].concat(), "--labels", "twice");
    refused(&[&tls[..], &["--resync-secs", "0"]].concat(), "--resync-secs", "1-3600");
    refused(&[&tls[..], &["--engine-image", "a b"]].concat(), "--engine-image", "image name");
    refused(&[&tls[..], &["--engine-drain", "10"]].concat(), "--engine-drain", "90s, 30m, 1h");
    refused(&[&tls[..], &["--engine-drain=1w"]].concat(), "--engine-drain", "not a duration");
    refused(&[&tls[..], &["--engine-max-generations", "1"]].concat(), "--engine-max-generations", "2-64");
    let d =
        dataplane(&[&tls[..], &["--engine-drain", "90s", "--engine-max-generations", "3"]].concat()).expect("valid");
    assert_eq!((d.engine_drain, d.engine_max_generations), (Duration::from_secs(90), 3));
    refused(&[&tls[..], &["--nftables", "maybe"]].concat(), "--nftables", "auto (the default");
    let d = dataplane(&[&tls[..], &["--nftables", "off"]].concat()).expect("valid");
    assert_eq!(d.nftables, vpn_runtime::NftablesUse::Off);
    let e = config(&["--dataplane", "--inbound", "vless-tls=443"]).expect_err("no host");
    assert!(e.starts_with("--public-host") && e.contains("required"), "{e}");
    let e =
        config(&["--dataplane", "--public-host", "not a host!", "--inbound", "vless-tls=443"]).expect_err("bad host");
    assert!(e.starts_with("--public-host"), "{e}");
    let e = config(&["--inbound", "vless-tls=443"]).expect_err("no --dataplane");
    assert!(e.starts_with("--inbound") && e.contains("--dataplane"), "{e}");
    let ip = config(&["--dataplane", "--public-host", "[2001:db8::1]", "--inbound", "shadowsocks-2022=8388"]);
    assert_eq!(ip.map(|c| c.dataplane.map(|d| d.public_host)), Ok(Some("2001:db8::1".to_owned())));
}

#[test]
fn data_plane_nodes_hold_no_replicated_state_unless_voter() {
    let join = ["--join", "127.0.0.1:7001", "--dataplane", "--public-host", "h.example", "--inbound", "vless-tls=443"];
    let edge = config(&join).expect("valid");
    assert_eq!(edge.bootstrap, Bootstrap::Edge { control_plane: vec!["127.0.0.1:7001".into()] });
    let voter = config(&[&join[..], &["--voter"]].concat()).expect("valid");
    assert_eq!(voter.bootstrap, Bootstrap::Join { seeds: vec!["127.0.0.1:7001".into()], voter: true });
    let e = config(&[&join[..], &["--voter", "--learner"]].concat()).expect_err("both");
    assert!(e.starts_with("--voter"), "{e}");
    let e = config(&[&join[..], &["--learner"]].concat()).expect_err("a data-plane learner");
    assert!(e.starts_with("--learner") && e.contains("replicates nothing"), "{e}");
    let plain = config(&["--join", "127.0.0.1:7001"]).expect("valid");
    assert_eq!(plain.bootstrap, Bootstrap::Join { seeds: vec!["127.0.0.1:7001".into()], voter: true });
}

#[test]
fn the_file_sets_data_plane_settings_too() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("vpnd.toml");
    std::fs::write(
        &path,
        "dataplane = true\npublic-host = \"h.example\"\ninbound = [\"vless-tls=443\", \"shadowsocks-2022=8388\"]\n\
         engine-image = \"vpn-local/sing-box:1.14.4\"\nresync-secs = 3\n",
    )
    .expect("write");
    let c = config(&["--config", path.to_str().expect("utf8")]).expect("valid");
    let d = c.dataplane.expect("data plane");
    assert_eq!(d.inbounds.len(), 2);
    assert_eq!(d.engine_image, "vpn-local/sing-box:1.14.4");
    assert_eq!(d.resync, Duration::from_secs(3));
    let c = config(&["--config", path.to_str().expect("utf8"), "--inbound", "vless-tls=8443"]).expect("valid");
    assert_eq!(
        c.dataplane.expect("data plane").inbounds,
        vec![InboundConfig { protocol: Protocol::VlessTls, port: 8443 }]
    );
}
