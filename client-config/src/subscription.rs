//! A user's subscription over the nodes that hold them, in the format the
//! client asked for, with the headers every client family reads.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use vpn_storage::model::{DataplaneNode, User};

use crate::endpoint::endpoints;
use crate::format::Format;
use crate::{clash, links, singbox};

/// How often (hours) clients should fetch the subscription again: often
/// enough to follow a node change within a day, rarely enough to stay quiet.
pub const UPDATE_INTERVAL_HOURS: u32 = 12;

/// A rendered subscription, ready for an HTTP response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscription {
    pub content_type: &'static str,
    pub body: String,
    /// Lowercase names; every value is visible ASCII, valid in an HTTP header.
    pub headers: Vec<(&'static str, String)>,
}

/// The subscription of `user` in `format`. `nodes`: the healthy data-plane
/// nodes holding the user (the caller filters). Inbounds whose public
/// parameters are not registered yet are left out; no nodes gives a valid
/// document that carries no traffic.
pub fn render(user: &User, nodes: &[&DataplaneNode], format: Format) -> Subscription {
    let endpoints = endpoints(user, nodes);
    let body = match format {
        Format::Base64 => {
            let links: Vec<String> = endpoints.iter().map(links::endpoint_link).collect();
            STANDARD.encode(links.join("\n"))
        }
        Format::SingBox => singbox::config(&endpoints),
        Format::Clash => clash::config(&endpoints),
    };
    Subscription { content_type: format.content_type(), body, headers: headers(user, format) }
}

/// `subscription-userinfo` (usage and expiry, read by Clash, sing-box apps,
/// v2rayN, Shadowrocket alike), the refresh interval, a title, and a file name.
fn headers(user: &User, format: Format) -> Vec<(&'static str, String)> {
    let expire = if user.limits.expires_at_ms > 0 { user.limits.expires_at_ms / 1000 } else { 0 };
    vec![
        (
            "subscription-userinfo",
            format!("upload=0; download={}; total={}; expire={expire}", user.used_bytes, user.limits.data_limit_bytes),
        ),
        ("profile-update-interval", UPDATE_INTERVAL_HOURS.to_string()),
        // base64 keeps any name a valid header value; the clients decode it.
        ("profile-title", format!("base64:{}", STANDARD.encode(&user.name))),
        ("content-disposition", format!("attachment; filename=\"{}.{}\"", file_stem(&user.name), format.extension())),
    ]
}

/// The user name reduced to characters safe in a quoted header parameter
/// and in a file name on every OS.
fn file_stem(name: &str) -> String {
    let stem: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' }).collect();
    if stem.trim_matches('.').is_empty() {
        "subscription".into()
    } else {
        stem
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{alice, node, reality_inbound, ss_inbound, tls_inbound};

    fn header<'a>(sub: &'a Subscription, name: &str) -> &'a str {
        sub.headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str()).unwrap_or_else(|| panic!("no {name}"))
    }

    #[test]
    fn headers_carry_usage_limit_expiry_title_and_file_name() {
        let mut user = alice();
        user.used_bytes = 1_234_567;
        user.limits.data_limit_bytes = 50 << 30;
        user.limits.expires_at_ms = 1_767_225_600_999;
        let n = node(1, "h", vec![ss_inbound(8388)]);
        for (format, file) in
            [(Format::Base64, "alice.txt"), (Format::SingBox, "alice.json"), (Format::Clash, "alice.yaml")]
        {
            let sub = render(&user, &[&n], format);
            assert_eq!(
                header(&sub, "subscription-userinfo"),
                "upload=0; download=1234567; total=53687091200; expire=1767225600"
            );
            assert_eq!(header(&sub, "profile-update-interval"), "12");
            assert_eq!(header(&sub, "profile-title"), "base64:YWxpY2U=");
            assert_eq!(header(&sub, "content-disposition"), format!("attachment; filename=\"{file}\""));
            assert_eq!(sub.content_type, format.content_type());
        }
    }

    #[test]
    fn no_limit_and_no_expiry_are_zero() {
        let sub = render(&alice(), &[], Format::Base64);
        assert_eq!(header(&sub, "subscription-userinfo"), "upload=0; download=0; total=0; expire=0");
    }

    #[test]
    fn header_values_stay_ascii_whatever_the_name() {
        let mut user = alice();
        user.name = "Zoë \"quoted\"\\ name\n;x=1".into();
        let sub = render(&user, &[], Format::Clash);
        for (name, value) in &sub.headers {
            assert!(value.bytes().all(|b| (0x20..0x7f).contains(&b)), "{name}: {value:?}");
        }
        assert_eq!(header(&sub, "content-disposition"), "attachment; filename=\"Zo___quoted___name__x_1.yaml\"");
        let title = header(&sub, "profile-title").strip_prefix("base64:").expect("prefix");
        assert_eq!(STANDARD.decode(title).expect("base64"), user.name.as_bytes());
        user.name = "..".into();
        let sub = render(&user, &[], Format::Base64);
        assert_eq!(header(&sub, "content-disposition"), "attachment; filename=\"subscription.txt\"");
    }

    #[test]
    fn base64_is_the_padded_links_one_per_line() {
        let a = node(1, "a.example.com", vec![ss_inbound(8388), tls_inbound(443, true)]);
        let b = node(2, "2001:db8::2", vec![reality_inbound(8443)]);
        let sub = render(&alice(), &[&a, &b], Format::Base64);
        let text = String::from_utf8(STANDARD.decode(&sub.body).expect("standard base64")).expect("utf8");
        let want: Vec<String> = [(&a, &a.inbounds[0]), (&a, &a.inbounds[1]), (&b, &b.inbounds[0])]
            .into_iter()
            .map(|(n, i)| links::link(&alice(), n, i).expect("link"))
            .collect();
        assert_eq!(text, want.join("\n"));
        assert!(text.lines().nth(2).is_some_and(|l| l.contains("@[2001:db8::2]:8443")), "{text}");
        assert_eq!(render(&alice(), &[], Format::Base64).body, "");
    }
}
