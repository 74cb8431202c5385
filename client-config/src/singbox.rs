//! The sing-box client configuration (field names as of sing-box 1.14): one
//! outbound per endpoint, a `selector` "proxy" over them (led by a `urltest`
//! "auto" when there is a choice), a `direct` outbound, and a local `mixed`
//! (SOCKS/HTTP) inbound on 127.0.0.1:2080 routed to "proxy".

use serde_json::{json, Value};

use crate::endpoint::{Endpoint, Kind};
use crate::links::{REALITY_FINGERPRINT, SS2022_METHOD, VISION};

/// The local proxy port desktop sing-box clients listen on by convention.
const MIXED_PORT: u16 = 2080;
const MIXED_TAG: &str = "mixed-in";
const DNS_TAG: &str = "local";

/// The configuration, pretty-printed. With no endpoints every connection is
/// rejected instead of going out directly: a subscription with no server must
/// not look like a working VPN.
pub(crate) fn config(endpoints: &[Endpoint<'_>]) -> String {
    let tags: Vec<&str> = endpoints.iter().map(|e| e.name.as_str()).collect();
    let mut outbounds = Vec::new();
    if !tags.is_empty() {
        let mut choices = tags.clone();
        if tags.len() > 1 {
            choices.insert(0, "auto");
        }
        outbounds.push(json!({"type": "selector", "tag": "proxy", "outbounds": choices, "default": choices[0]}));
        if tags.len() > 1 {
            outbounds.push(json!({"type": "urltest", "tag": "auto", "outbounds": tags}));
        }
    }
    outbounds.extend(endpoints.iter().map(outbound));
    outbounds.push(json!({"type": "direct", "tag": "direct"}));

    let route = if tags.is_empty() {
        json!({"rules": [{"inbound": [MIXED_TAG], "action": "reject"}], "final": "direct"})
    } else {
        json!({"final": "proxy", "default_domain_resolver": DNS_TAG})
    };
    let config = json!({
        "log": {"level": "warn"},
        // Resolves server host names only: the mixed inbound hands target
        // names to the proxy, so browsing does not use this resolver.
        "dns": {"servers": [{"type": "local", "tag": DNS_TAG}]},
        "inbounds": [{"type": "mixed", "tag": MIXED_TAG, "listen": "127.0.0.1", "listen_port": MIXED_PORT}],
        "outbounds": outbounds,
        "route": route,
    });
    format!("{config:#}")
}

fn outbound(e: &Endpoint<'_>) -> Value {
    let mut out = match &e.kind {
        Kind::Shadowsocks { password } => json!({"type": "shadowsocks", "method": SS2022_METHOD, "password": password}),
        Kind::VlessTls { uuid, server_name, pinned_cert_sha256 } => {
            let mut tls = json!({"enabled": true, "server_name": server_name});
            if pinned_cert_sha256.is_some() {
                // sing-box pins only the public key (`certificate_public_key_sha256`,
                // SHA-256 of the SPKI, base64), while the node publishes the hash of
                // the whole certificate, which Clash/Mihomo and share links pin. So a
                // self-signed node is reached unverified here: the credentials still
                // authenticate the client, but the server is not authenticated.
                tls["insecure"] = json!(true);
            }
            json!({"type": "vless", "uuid": uuid, "flow": VISION, "tls": tls})
        }
        Kind::VlessReality { uuid, server_name, public_key, short_id } => json!({
            "type": "vless",
            "uuid": uuid,
            "flow": VISION,
            "tls": {
                "enabled": true,
                "server_name": server_name,
                "utls": {"enabled": true, "fingerprint": REALITY_FINGERPRINT},
                "reality": {"enabled": true, "public_key": public_key, "short_id": short_id},
            },
        }),
    };
    out["tag"] = json!(e.name);
    out["server"] = json!(e.host);
    out["server_port"] = json!(e.port);
    out
}

#[cfg(test)]
mod tests {
    use vpn_storage::model::User;

    use crate::testutil::{
        alice, node, reality_inbound, ss_inbound, tls_inbound, CERT_SHA256, REALITY_KEY, SERVER_KEY,
    };
    use crate::{render, Format};

    use super::*;

    fn parse(user: &User, nodes: &[&vpn_storage::model::DataplaneNode]) -> Value {
        let body = render(user, nodes, Format::SingBox).body;
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
    }

    fn by_tag<'a>(config: &'a Value, tag: &str) -> &'a Value {
        let outbounds = config["outbounds"].as_array().expect("outbounds");
        outbounds.iter().find(|o| o["tag"] == tag).unwrap_or_else(|| panic!("no outbound {tag} in {config:#}"))
    }

    #[test]
    fn every_protocol_becomes_an_outbound_with_its_credentials() {
        let a = node(1, "a.example.com", vec![ss_inbound(8388), tls_inbound(443, true)]);
        let b = node(2, "2001:db8::2", vec![reality_inbound(8443), tls_inbound(8444, false)]);
        let config = parse(&alice(), &[&a, &b]);

        let ss = by_tag(&config, "alice-node1-shadowsocks-2022");
        assert_eq!(ss["type"], "shadowsocks");
        assert_eq!((ss["server"].as_str(), ss["server_port"].as_u64()), (Some("a.example.com"), Some(8388)));
        assert_eq!(ss["method"], "2022-blake3-aes-128-gcm");
        assert_eq!(ss["password"], format!("{SERVER_KEY}:ab+/cd+/ef+/gh+/ij+/kw=="));

        let tls = by_tag(&config, "alice-node1-vless-tls");
        assert_eq!(tls["type"], "vless");
        assert_eq!(tls["uuid"], "0b6f0e6e-4c1e-4b8a-9d3e-2f1a7c5d9e10");
        assert_eq!(tls["flow"], "xtls-rprx-vision");
        assert_eq!(tls["tls"], json!({"enabled": true, "server_name": "vpn.example.com", "insecure": true}));
        assert!(!config.to_string().contains(CERT_SHA256), "sing-box cannot use the certificate hash");

        let ca = by_tag(&config, "alice-node2-vless-tls");
        assert_eq!(
            ca["tls"],
            json!({"enabled": true, "server_name": "vpn.example.com"}),
            "a CA certificate is verified"
        );

        let reality = by_tag(&config, "alice-node2-vless-reality");
        assert_eq!(reality["server"], "2001:db8::2", "an IPv6 server has no brackets");
        assert_eq!(reality["server_port"], 8443);
        assert_eq!(reality["tls"]["server_name"], "www.example.org");
        assert_eq!(reality["tls"]["utls"], json!({"enabled": true, "fingerprint": "chrome"}));
        assert_eq!(
            reality["tls"]["reality"],
            json!({"enabled": true, "public_key": REALITY_KEY, "short_id": "0123abcd"})
        );
    }

    #[test]
    fn groups_inbound_and_route() {
        let a = node(1, "a.example.com", vec![ss_inbound(8388), tls_inbound(443, true)]);
        let config = parse(&alice(), &[&a]);
        let all = json!(["alice-node1-shadowsocks-2022", "alice-node1-vless-tls"]);
        assert_eq!(by_tag(&config, "auto")["type"], "urltest");
        assert_eq!(by_tag(&config, "auto")["outbounds"], all);
        let proxy = by_tag(&config, "proxy");
        assert_eq!(proxy["type"], "selector");
        assert_eq!(proxy["outbounds"], json!(["auto", "alice-node1-shadowsocks-2022", "alice-node1-vless-tls"]));
        assert_eq!(by_tag(&config, "direct")["type"], "direct");
        assert_eq!(
            config["inbounds"],
            json!([{"type": "mixed", "tag": "mixed-in", "listen": "127.0.0.1", "listen_port": 2080}])
        );
        assert_eq!(config["route"]["final"], "proxy");

        let single = parse(&alice(), &[&node(1, "h", vec![ss_inbound(8388)])]);
        assert_eq!(by_tag(&single, "proxy")["outbounds"], json!(["alice-node1-shadowsocks-2022"]));
        assert!(single["outbounds"].as_array().expect("outbounds").iter().all(|o| o["tag"] != "auto"));
    }

    #[test]
    fn no_nodes_rejects_everything() {
        let config = parse(&alice(), &[]);
        assert_eq!(config["outbounds"], json!([{"type": "direct", "tag": "direct"}]));
        assert_eq!(config["route"]["rules"], json!([{"inbound": ["mixed-in"], "action": "reject"}]));
    }

    #[test]
    fn special_characters_in_names_survive() {
        let mut user = alice();
        user.name = "a\"b\\c: {d} #e 'f' \u{2028}ü".into();
        let config = parse(&user, &[&node(7, "h", vec![ss_inbound(1)])]);
        assert_eq!(by_tag(&config, &format!("{}-node7-shadowsocks-2022", user.name))["server_port"], 1);
    }
}
