use std::collections::BTreeMap;

use serde_json::json;

use super::*;
use crate::testutil::{ss2022, user, vless_reality, vless_tls, SERVER_KEY};

fn api(ports: &[u16]) -> ApiAccess {
    ApiAccess { ports: ports.to_vec(), secret: "s3cret".into() }
}

fn marks(names: &[&str]) -> BTreeMap<String, u32> {
    names.iter().enumerate().map(|(i, n)| (n.to_string(), 0x8abc_0001 + i as u32)).collect()
}

#[test]
fn ss2022_serves_its_users_from_the_file_each_through_a_marked_outbound() {
    let doc =
        config(&ss2022(8388), 41000, &[user("alice", 1)], &marks(&["alice"]), &api(&[40001, 40101])).expect("render");
    assert_eq!(
        doc,
        json!({
            "log": {"level": "warn", "timestamp": true},
            "inbounds": [{
                "type": "shadowsocks", "tag": "ss-in", "listen": "0.0.0.0", "listen_port": 41000,
                "reuse_addr": false, "method": "2022-blake3-aes-128-gcm", "password": SERVER_KEY,
                "users": [{"name": "alice", "password": "AQEBAQEBAQEBAQEBAQEBAQ=="}],
            }],
            "outbounds": [
                {"type": "block", "tag": "deny"},
                {"type": "direct", "tag": "d-alice", "routing_mark": 0x8abc_0001_u32},
                {"type": "selector", "tag": "u-alice", "outbounds": ["d-alice", "deny"], "default": "d-alice",
                 "interrupt_exist_connections": false},
            ],
            "route": {"rules": [{"auth_user": ["alice"], "outbound": "u-alice"}], "final": "deny"},
            "services": [{"type": "api", "tag": "api", "listen": "127.0.0.1", "listen_port": 40101, "secret": "s3cret"}],
            "experimental": {"clash_api": {"external_controller": "127.0.0.1:40001", "secret": "s3cret"}},
        })
    );
    assert_eq!(users_in(&doc).get("alice").map(String::as_str), Some("AQEBAQEBAQEBAQEBAQEBAQ=="));
    // On the public port itself (no nftables), the next generation shares it.
    let own = config(&ss2022(8388), 8388, &[], &marks(&[]), &api(&[40001, 40101])).expect("render");
    assert_eq!(own["inbounds"][0]["reuse_addr"], true);
}

#[test]
fn a_user_without_a_mark_or_an_api_port_is_an_error() {
    let err = config(&ss2022(8388), 1, &[user("alice", 1)], &marks(&[]), &api(&[40001, 40101])).expect_err("no mark");
    assert!(err.to_string().contains("user alice"), "{err}");
    let err = config(&ss2022(8388), 1, &[], &marks(&[]), &api(&[])).expect_err("no port").to_string();
    assert!(err.contains("vpn.api-ports"), "{err}");
}

#[test]
fn vless_tls_routes_each_user_through_its_own_selector() {
    let users = [user("alice", 1), user("bob", 2)];
    let doc =
        config(&vless_tls(8443), 41001, &users, &marks(&["alice", "bob"]), &api(&[40003, 40103])).expect("render");
    let inbound = &doc["inbounds"][0];
    assert_eq!(inbound["type"], "vless");
    assert_eq!(inbound["listen_port"], 41001, "a generation listens on its own port");
    assert_eq!(
        inbound["users"][1],
        json!({"name": "bob", "uuid": "02020202-0202-0202-0202-020202020202", "flow": "xtls-rprx-vision"})
    );
    assert_eq!(
        inbound["tls"],
        json!({
            "enabled": true, "server_name": "vpn.example.test",
            "certificate_path": "/etc/sing-box/tls/cert.pem", "key_path": "/etc/sing-box/tls/key.pem",
        })
    );
    assert_eq!(doc["outbounds"][0], json!({"type": "block", "tag": "deny"}));
    assert_eq!(doc["outbounds"][3], json!({"type": "direct", "tag": "d-bob", "routing_mark": 0x8abc_0002_u32}));
    assert_eq!(
        doc["outbounds"][4],
        json!({"type": "selector", "tag": "u-bob", "outbounds": ["d-bob", "deny"], "default": "d-bob",
               "interrupt_exist_connections": false})
    );
    assert_eq!(doc["route"]["rules"][0], json!({"auth_user": ["alice"], "outbound": "u-alice"}));
    assert_eq!(doc["route"]["final"], "deny");
    assert_eq!(doc["experimental"]["clash_api"]["external_controller"], "127.0.0.1:40003");
    assert_eq!(users_in(&doc).get("bob").map(String::as_str), Some("02020202-0202-0202-0202-020202020202"));
}

#[test]
fn vless_without_users_refuses_everything() {
    let doc = config(&vless_tls(8443), 41001, &[], &marks(&[]), &api(&[40003, 40103])).expect("render");
    assert_eq!(doc["inbounds"][0]["users"], json!([]));
    assert_eq!(doc["route"], json!({"rules": [], "final": "deny"}));
}

/// (f) The Reality inbound follows sing-box's documented schema
/// (configuration/shared/tls.md, "Inbound" with `reality`), field for field.
#[test]
fn reality_matches_the_documented_schema() {
    let doc = config(&vless_reality(443), 41002, &[user("alice", 1)], &marks(&["alice"]), &api(&[40004, 40104]))
        .expect("render");
    let inbound = &doc["inbounds"][0];
    assert_eq!(inbound["type"], "vless");
    assert_eq!(inbound["tag"], "vless-reality-in");
    assert_eq!(
        inbound["tls"],
        json!({
            "enabled": true,
            "server_name": "www.example.com",
            "reality": {
                "enabled": true,
                "handshake": {"server": "www.example.com", "server_port": 443},
                "private_key": "UuMBgl7MXTPx9inmQp2UC7Jcnwc6XYbwDNebonM-FCc",
                "short_id": ["0123456789abcdef"],
            },
        })
    );
    assert!(inbound["tls"].get("certificate_path").is_none(), "Reality carries no certificate");
    assert_eq!(inbound["users"][0]["flow"], "xtls-rprx-vision");
}

#[test]
fn a_missing_protocol_block_is_an_error_not_a_panic() {
    let mut inbound = vless_reality(443);
    inbound.reality = None;
    assert!(config(&inbound, 1, &[], &marks(&[]), &api(&[1, 101])).is_err());
    let mut inbound = vless_tls(443);
    inbound.tls = None;
    assert!(config(&inbound, 1, &[], &marks(&[]), &api(&[1, 101])).is_err());
}
