//! Client links for one user on one data-plane inbound, in the forms the
//! common clients (v2rayN, NekoBox, Clash/Mihomo, Shadowrocket, sing-box
//! front ends) import:
//!
//! - Shadowsocks-2022: SIP002 `ss://method:password@host:port#tag` with the
//!   userinfo percent-encoded in plain form. SIP022 forbids base64url for the
//!   2022 methods, and the plain form is the one every importer reads (older
//!   Clash converters decode the base64 form with the padded alphabet only).
//!   The password is `<server key>:<user key>`.
//! - VLESS (Vision flow) over TLS or Reality: the Xray share-link form. A
//!   certificate the node made itself is pinned with `pcs` (SHA-256 of the
//!   leaf) plus `allowInsecure=1` for clients that cannot pin.

use std::net::Ipv6Addr;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use vpn_storage::model::{DataplaneNode, InboundRecord, User};

use crate::endpoint::{Endpoint, Kind};

/// RFC 3986 unreserved characters stay; everything else is percent-encoded.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// The Shadowsocks-2022 method matching our 16-byte keys.
pub const SS2022_METHOD: &str = "2022-blake3-aes-128-gcm";
pub(crate) const VISION: &str = "xtls-rprx-vision";
/// The uTLS fingerprint Reality clients present.
pub(crate) const REALITY_FINGERPRINT: &str = "chrome";

fn enc(s: &str) -> String {
    utf8_percent_encode(s, COMPONENT).to_string()
}

/// `host:port`, with an IPv6 address in brackets.
fn authority(host: &str, port: u16) -> String {
    match host.parse::<Ipv6Addr>() {
        Ok(ip) => format!("[{ip}]:{port}"),
        Err(_) => format!("{host}:{port}"),
    }
}

/// The link for `user` on `inbound` of `node`; `None` when the inbound's
/// record lacks a public parameter its protocol needs.
pub fn link(user: &User, node: &DataplaneNode, inbound: &InboundRecord) -> Option<String> {
    Endpoint::resolve(user, node, inbound).map(|e| endpoint_link(&e))
}

pub(crate) fn endpoint_link(e: &Endpoint<'_>) -> String {
    let at = authority(e.host, e.port);
    let tag = enc(&e.name);
    match &e.kind {
        Kind::Shadowsocks { password } => format!("ss://{SS2022_METHOD}:{}@{at}#{tag}", enc(password)),
        Kind::VlessTls { uuid, server_name, pinned_cert_sha256 } => {
            let mut query = format!("encryption=none&flow={VISION}&security=tls&sni={}&type=tcp", enc(server_name));
            if let Some(pin) = pinned_cert_sha256 {
                query.push_str(&format!("&allowInsecure=1&pcs={}", enc(pin)));
            }
            format!("vless://{uuid}@{at}?{query}#{tag}")
        }
        Kind::VlessReality { uuid, server_name, public_key, short_id } => format!(
            "vless://{uuid}@{at}?encryption=none&flow={VISION}&security=reality&sni={}&fp={REALITY_FINGERPRINT}\
             &pbk={}&sid={}&type=tcp#{tag}",
            enc(server_name),
            enc(public_key),
            enc(short_id)
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use url::Url;
    use vpn_storage::model::Protocol;

    use super::*;
    use crate::testutil::alice;

    fn node(host: &str, inbound: InboundRecord) -> DataplaneNode {
        crate::testutil::node(3, host, vec![inbound])
    }

    fn parse(link: &str) -> (Url, HashMap<String, String>) {
        let url = Url::parse(link).unwrap_or_else(|e| panic!("{link}: {e}"));
        let query = url.query_pairs().into_owned().collect();
        (url, query)
    }

    fn decode(s: &str) -> String {
        percent_encoding::percent_decode_str(s).decode_utf8().expect("utf8").into_owned()
    }

    #[test]
    fn shadowsocks_2022_round_trips_through_a_url_parser() {
        let mut inbound = InboundRecord::new(Protocol::Shadowsocks2022, 8388);
        inbound.ss2022_server_key = Some("c2VydmVyLWtleS0xNmJ5dA==".into());
        let n = node("vpn.example.com", inbound.clone());
        let link = link(&alice(), &n, &inbound).expect("link");
        let (url, _) = parse(&link);
        assert_eq!(url.scheme(), "ss");
        assert_eq!(url.username(), SS2022_METHOD);
        assert_eq!(
            decode(url.password().expect("password")),
            "c2VydmVyLWtleS0xNmJ5dA==:ab+/cd+/ef+/gh+/ij+/kw==",
            "password is <server key>:<user key>"
        );
        assert_eq!(url.host_str(), Some("vpn.example.com"));
        assert_eq!(url.port(), Some(8388));
        assert_eq!(url.fragment(), Some("alice-node3-shadowsocks-2022"));
        let userinfo = &link["ss://".len()..link.find('@').expect("@")];
        assert!(!userinfo.contains(['+', '/', '=']), "base64 characters are percent-encoded: {link}");
    }

    #[test]
    fn vless_tls_self_signed_carries_the_pin() {
        let mut inbound = InboundRecord::new(Protocol::VlessTls, 443);
        inbound.tls_server_name = Some("vpn.example.com".into());
        inbound.tls_cert_sha256 = Some("ab".repeat(32));
        inbound.tls_self_signed = true;
        let n = node("203.0.113.7", inbound.clone());
        let link = link(&alice(), &n, &inbound).expect("link");
        let (url, q) = parse(&link);
        assert_eq!(url.scheme(), "vless");
        assert_eq!(url.username(), "0b6f0e6e-4c1e-4b8a-9d3e-2f1a7c5d9e10");
        assert_eq!(url.host_str(), Some("203.0.113.7"));
        assert_eq!(url.port(), Some(443));
        for (key, value) in [
            ("encryption", "none"),
            ("flow", "xtls-rprx-vision"),
            ("security", "tls"),
            ("sni", "vpn.example.com"),
            ("type", "tcp"),
            ("allowInsecure", "1"),
            ("pcs", &"ab".repeat(32)),
        ] {
            assert_eq!(q.get(key).map(String::as_str), Some(value), "{key} in {link}");
        }

        let mut ca_signed = inbound;
        ca_signed.tls_self_signed = false;
        let (_, q) = parse(&super::link(&alice(), &n, &ca_signed).expect("link"));
        assert!(!q.contains_key("allowInsecure") && !q.contains_key("pcs"), "a CA certificate is checked normally");
    }

    #[test]
    fn vless_reality_names_key_short_id_and_fingerprint() {
        let mut inbound = InboundRecord::new(Protocol::VlessReality, 8443);
        inbound.reality_public_key = Some("jNXHt1yRo0vDuchQlIP6Z0ZvjT3KtzVI-T4E7RoLJS0".into());
        inbound.reality_short_id = Some("0123abcd".into());
        inbound.reality_server_name = Some("www.example.org".into());
        let n = node("2001:db8::1", inbound.clone());
        let link = link(&alice(), &n, &inbound).expect("link");
        let (url, q) = parse(&link);
        assert_eq!(url.host_str(), Some("[2001:db8::1]"));
        assert_eq!(url.port(), Some(8443));
        for (key, value) in [
            ("security", "reality"),
            ("pbk", "jNXHt1yRo0vDuchQlIP6Z0ZvjT3KtzVI-T4E7RoLJS0"),
            ("sid", "0123abcd"),
            ("sni", "www.example.org"),
            ("fp", "chrome"),
            ("flow", "xtls-rprx-vision"),
        ] {
            assert_eq!(q.get(key).map(String::as_str), Some(value), "{key} in {link}");
        }
    }

    #[test]
    fn an_inbound_missing_its_parameters_has_no_link() {
        for protocol in Protocol::ALL {
            let inbound = InboundRecord::new(protocol, 1);
            assert_eq!(link(&alice(), &node("h", inbound.clone()), &inbound), None, "{protocol}");
        }
    }

    #[test]
    fn a_self_signed_certificate_without_its_pin_has_no_link() {
        let mut inbound = InboundRecord::new(Protocol::VlessTls, 443);
        inbound.tls_server_name = Some("vpn.example.com".into());
        inbound.tls_self_signed = true;
        assert_eq!(link(&alice(), &node("h", inbound.clone()), &inbound), None);
    }
}
