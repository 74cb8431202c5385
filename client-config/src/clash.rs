//! The Clash/Mihomo configuration: `proxies` (one per endpoint), a `select`
//! group "proxy" (led by a `url-test` group "auto" when there is a choice),
//! `MATCH,proxy`, and the local mixed port 7890.
//!
//! Written by hand: the shape is small and fixed, and every string value is
//! double-quoted with escapes (see [`quote`]), so no name, password or short
//! id (`01234567` would be an octal number unquoted) can change its meaning.

use crate::endpoint::{Endpoint, Kind};
use crate::links::{REALITY_FINGERPRINT, SS2022_METHOD, VISION};

/// The local proxy port Clash clients listen on by convention.
const MIXED_PORT: u16 = 7890;
const TEST_URL: &str = "https://www.gstatic.com/generate_204";
/// Seconds between latency tests of the "auto" group.
const TEST_INTERVAL_S: u32 = 300;

/// The configuration. With no endpoints the "proxy" group holds only
/// `REJECT`: a subscription with no server must not send traffic out directly.
pub(crate) fn config(endpoints: &[Endpoint<'_>]) -> String {
    let mut lines = vec![
        format!("mixed-port: {MIXED_PORT}"),
        "allow-lan: false".into(),
        "mode: rule".into(),
        "log-level: warning".into(),
    ];
    if endpoints.is_empty() {
        lines.push("proxies: []".into());
    } else {
        lines.push("proxies:".into());
        for e in endpoints {
            proxy(&mut lines, e);
        }
    }

    let names: Vec<&str> = endpoints.iter().map(|e| e.name.as_str()).collect();
    let mut choices = names.clone();
    match names.len() {
        0 => choices.push("REJECT"),
        1 => {}
        _ => choices.insert(0, "auto"),
    }
    lines.push("proxy-groups:".into());
    group(&mut lines, "proxy", "select", &choices);
    if names.len() > 1 {
        group(&mut lines, "auto", "url-test", &names);
        lines.push(format!("    url: {}", quote(TEST_URL)));
        lines.push(format!("    interval: {TEST_INTERVAL_S}"));
    }
    lines.push("rules:".into());
    lines.push(format!("  - {}", quote("MATCH,proxy")));
    lines.push(String::new());
    lines.join("\n")
}

fn proxy(lines: &mut Vec<String>, e: &Endpoint<'_>) {
    let mut fields: Vec<(&str, String)> = vec![("name", quote(&e.name))];
    match &e.kind {
        Kind::Shadowsocks { password } => fields.extend([
            ("type", "ss".into()),
            ("server", quote(e.host)),
            ("port", e.port.to_string()),
            ("cipher", quote(SS2022_METHOD)),
            ("password", quote(password)),
        ]),
        Kind::VlessTls { uuid, server_name, pinned_cert_sha256 } => {
            fields.extend(vless(e, uuid, server_name));
            if let Some(pin) = pinned_cert_sha256 {
                // Mihomo checks `fingerprint` (SHA-256 of the certificate) in
                // place of the CA chain; `skip-cert-verify` lets clients that
                // do not know the field accept the self-signed certificate.
                fields.extend([("skip-cert-verify", "true".into()), ("fingerprint", quote(pin))]);
            }
        }
        Kind::VlessReality { uuid, server_name, public_key, short_id } => {
            fields.extend(vless(e, uuid, server_name));
            fields.extend([
                ("client-fingerprint", quote(REALITY_FINGERPRINT)),
                ("reality-opts", format!("{{public-key: {}, short-id: {}}}", quote(public_key), quote(short_id))),
            ]);
        }
    }
    fields.push(("udp", "true".into()));
    for (i, (key, value)) in fields.iter().enumerate() {
        let lead = if i == 0 { "  - " } else { "    " };
        lines.push(format!("{lead}{key}: {value}"));
    }
}

fn vless(e: &Endpoint<'_>, uuid: &str, server_name: &str) -> [(&'static str, String); 8] {
    [
        ("type", "vless".into()),
        ("server", quote(e.host)),
        ("port", e.port.to_string()),
        ("uuid", quote(uuid)),
        ("network", "tcp".into()),
        ("tls", "true".into()),
        ("flow", quote(VISION)),
        ("servername", quote(server_name)),
    ]
}

fn group(lines: &mut Vec<String>, name: &str, kind: &str, members: &[&str]) {
    lines.push(format!("  - name: {}", quote(name)));
    lines.push(format!("    type: {kind}"));
    lines.push("    proxies:".into());
    lines.extend(members.iter().map(|m| format!("      - {}", quote(m))));
}

/// A YAML double-quoted scalar. Besides `"` and `\`, escapes what YAML does
/// not allow raw (C0/C1 controls, DEL, U+FEFF, U+FFFE/F) and what YAML 1.1
/// parsers such as Mihomo's treat as line breaks (U+0085, U+2028, U+2029),
/// which would otherwise be folded into spaces.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            ' '..='~' | '\u{A0}'..='\u{2027}' | '\u{202A}'..='\u{D7FF}' | '\u{E000}'..='\u{FEFE}' => out.push(c),
            '\u{FF00}'..='\u{FFFD}' | '\u{10000}'.. => out.push(c),
            _ => out.push_str(&format!("\\u{:04X}", u32::from(c))),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};
    use vpn_storage::model::{DataplaneNode, User};

    use super::*;
    use crate::testutil::{
        alice, node, reality_inbound, ss_inbound, tls_inbound, CERT_SHA256, REALITY_KEY, SERVER_KEY,
    };
    use crate::{render, Format};

    /// Parsed by a YAML parser, as a client would, into JSON values.
    fn parse(user: &User, nodes: &[&DataplaneNode]) -> Value {
        let body = render(user, nodes, Format::Clash).body;
        serde_norway::from_str(&body).unwrap_or_else(|e| panic!("{e}:\n{body}"))
    }

    fn by_name<'a>(config: &'a Value, list: &str, name: &str) -> &'a Value {
        let items = config[list].as_array().unwrap_or_else(|| panic!("no {list} in {config:#}"));
        items.iter().find(|p| p["name"] == name).unwrap_or_else(|| panic!("no {name} in {list}: {config:#}"))
    }

    #[test]
    fn every_protocol_becomes_a_proxy_with_its_credentials() {
        let a = node(1, "a.example.com", vec![ss_inbound(8388), tls_inbound(443, true)]);
        let b = node(2, "2001:db8::2", vec![reality_inbound(8443), tls_inbound(8444, false)]);
        let config = parse(&alice(), &[&a, &b]);
        assert_eq!(config["mixed-port"], 7890);

        let ss = by_name(&config, "proxies", "alice-node1-shadowsocks-2022");
        let want_ss = json!({
            "name": "alice-node1-shadowsocks-2022", "type": "ss", "server": "a.example.com", "port": 8388,
            "cipher": "2022-blake3-aes-128-gcm", "password": format!("{SERVER_KEY}:ab+/cd+/ef+/gh+/ij+/kw=="),
            "udp": true,
        });
        assert_eq!(ss, &want_ss);

        let vless = json!({
            "type": "vless", "uuid": "0b6f0e6e-4c1e-4b8a-9d3e-2f1a7c5d9e10", "network": "tcp", "tls": true,
            "flow": "xtls-rprx-vision", "udp": true,
        });
        let with = |extra: Value| {
            let mut v = vless.clone();
            if let (Some(v), Value::Object(extra)) = (v.as_object_mut(), extra) {
                v.extend(extra);
            }
            v
        };
        assert_eq!(
            by_name(&config, "proxies", "alice-node1-vless-tls"),
            &with(json!({"name": "alice-node1-vless-tls", "server": "a.example.com", "port": 443,
                "servername": "vpn.example.com", "skip-cert-verify": true, "fingerprint": CERT_SHA256}))
        );
        assert_eq!(
            by_name(&config, "proxies", "alice-node2-vless-tls"),
            &with(json!({"name": "alice-node2-vless-tls", "server": "2001:db8::2", "port": 8444,
                "servername": "vpn.example.com"})),
            "a CA certificate is verified"
        );
        assert_eq!(
            by_name(&config, "proxies", "alice-node2-vless-reality"),
            &with(json!({"name": "alice-node2-vless-reality", "server": "2001:db8::2", "port": 8443,
                "servername": "www.example.org", "client-fingerprint": "chrome",
                "reality-opts": {"public-key": REALITY_KEY, "short-id": "0123abcd"}}))
        );
    }

    #[test]
    fn groups_and_rules() {
        let a = node(1, "h", vec![ss_inbound(8388), tls_inbound(443, true)]);
        let config = parse(&alice(), &[&a]);
        let names = ["alice-node1-shadowsocks-2022", "alice-node1-vless-tls"];
        let proxy = by_name(&config, "proxy-groups", "proxy");
        assert_eq!(proxy["type"], "select");
        assert_eq!(proxy["proxies"], json!(["auto", names[0], names[1]]));
        let auto = by_name(&config, "proxy-groups", "auto");
        assert_eq!(auto["type"], "url-test");
        assert_eq!(auto["proxies"], json!(names));
        assert_eq!(auto["url"], "https://www.gstatic.com/generate_204");
        assert_eq!(config["rules"], json!(["MATCH,proxy"]));

        let single = parse(&alice(), &[&node(1, "h", vec![ss_inbound(8388)])]);
        assert_eq!(single["proxy-groups"], json!([{"name": "proxy", "type": "select", "proxies": [names[0]]}]));
    }

    #[test]
    fn no_nodes_rejects_everything() {
        let config = parse(&alice(), &[]);
        assert_eq!(config["proxies"], json!([]));
        assert_eq!(config["proxy-groups"], json!([{"name": "proxy", "type": "select", "proxies": ["REJECT"]}]));
        assert_eq!(config["rules"], json!(["MATCH,proxy"]));
    }

    #[test]
    fn special_characters_survive_a_yaml_parser() {
        let mut user = alice();
        user.name =
            "- a\"b\\c: {d} [e] #f 'g' &h *i !j %k @l `m |n >o ~ null\ttab\nline\u{85}\u{2028}\u{7f}\u{feff}ü😀".into();
        user.credentials.ss2022_key = "01234567".into();
        let mut inbound = reality_inbound(8443);
        inbound.reality_short_id = Some("01234567".into());
        let config = parse(&user, &[&node(7, "h", vec![ss_inbound(1), inbound])]);
        let ss = by_name(&config, "proxies", &format!("{}-node7-shadowsocks-2022", user.name));
        assert_eq!(ss["password"], format!("{SERVER_KEY}:01234567"));
        let reality = by_name(&config, "proxies", &format!("{}-node7-vless-reality", user.name));
        assert_eq!(reality["reality-opts"]["short-id"], "01234567", "a hex short id stays a string");
        assert_eq!(by_name(&config, "proxy-groups", "auto")["proxies"][0], ss["name"]);
    }

    #[test]
    fn quote_escapes_only_what_yaml_needs() {
        assert_eq!(quote("plain é 😀"), "\"plain é 😀\"");
        assert_eq!(quote("a\"b\\c\nd\te"), r#""a\"b\\c\nd\te""#);
        assert_eq!(
            quote("\u{0}\u{1b}\u{7f}\u{85}\u{2028}\u{2029}\u{feff}\u{fffe}"),
            r#""\u0000\u001B\u007F\u0085\u2028\u2029\uFEFF\uFFFE""#
        );
    }
}
