use serde_json::json;

use super::*;
use crate::testutil::{ss2022, user, vless_reality, vless_tls, SERVER_KEY};

fn api(ports: &[u16]) -> ApiAccess {
    ApiAccess { ports: ports.to_vec(), secret: "s3cret".into() }
}

#[test]
fn ss2022_is_managed_with_ssm_and_clash_apis_on_loopback() {
    let doc = config(&ss2022(8388), 8388, &[user("alice", 1)], &api(&[40001, 40002])).expect("render");
    // The checked template (reference/sing-box/ss2022-managed-server.json), filled in.
    assert_eq!(
        doc,
        json!({
            "log": {"level": "warn", "timestamp": true},
            "inbounds": [{
                "type": "shadowsocks", "tag": "ss-in", "listen": "0.0.0.0", "listen_port": 8388,
                "method": "2022-blake3-aes-128-gcm", "password": SERVER_KEY, "users": [], "managed": true,
            }],
            "services": [{"type": "ssm-api", "listen": "127.0.0.1", "listen_port": 40002, "servers": {"/": "ss-in"}}],
            "experimental": {"clash_api": {"external_controller": "127.0.0.1:40001", "secret": "s3cret"}},
        })
    );
    assert!(users_in(&doc).is_empty(), "users are managed live, never in the file");
}

#[test]
fn ss2022_needs_both_api_ports() {
    let err = config(&ss2022(8388), 8388, &[], &api(&[40001])).expect_err("one port").to_string();
    assert!(err.contains("vpn.api-ports"), "{err}");
}

#[test]
fn vless_tls_routes_each_user_through_its_own_selector() {
    let users = [user("alice", 1), user("bob", 2)];
    let doc = config(&vless_tls(8443), 41001, &users, &api(&[40003])).expect("render");
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
    assert_eq!(doc["outbounds"][0], json!({"type": "direct", "tag": "direct"}));
    assert_eq!(doc["outbounds"][1], json!({"type": "block", "tag": "deny"}));
    assert_eq!(
        doc["outbounds"][3],
        json!({"type": "selector", "tag": "u-bob", "outbounds": ["direct", "deny"], "default": "direct",
               "interrupt_exist_connections": false})
    );
    assert_eq!(doc["route"]["rules"][0], json!({"auth_user": ["alice"], "outbound": "u-alice"}));
    assert_eq!(doc["route"]["final"], "deny");
    assert_eq!(doc["experimental"]["clash_api"]["external_controller"], "127.0.0.1:40003");
    assert_eq!(users_in(&doc).get("bob").map(String::as_str), Some("02020202-0202-0202-0202-020202020202"));
}

#[test]
fn vless_without_users_refuses_everything() {
    let doc = config(&vless_tls(8443), 41001, &[], &api(&[40003])).expect("render");
    assert_eq!(doc["inbounds"][0]["users"], json!([]));
    assert_eq!(doc["route"], json!({"rules": [], "final": "deny"}));
}

/// (f) The Reality inbound follows sing-box's documented schema
/// (configuration/shared/tls.md, "Inbound" with `reality`), field for field.
#[test]
fn reality_matches_the_documented_schema() {
    let doc = config(&vless_reality(443), 41002, &[user("alice", 1)], &api(&[40004])).expect("render");
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
    assert!(config(&inbound, 1, &[], &api(&[1])).is_err());
    let mut inbound = vless_tls(443);
    inbound.tls = None;
    assert!(config(&inbound, 1, &[], &api(&[1])).is_err());
}
