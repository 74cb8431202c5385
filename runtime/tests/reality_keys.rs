//! (f) Our x25519 Reality keys against sing-box itself: the public key we
//! derive from a private key is the one `sing-box generate reality-keypair`
//! pairs with it, i.e. what a client puts in its link. (The rendered Reality
//! config is checked against the documented schema in the unit tests of
//! `engine::singbox::render`; this sing-box build has no uTLS to run it.)

mod common;

use std::process::Command;

use common::{sing_box_bin, sing_box_ready};
use vpn_runtime::keys::{generate_reality_keypair, reality_public_key};

fn field<'a>(out: &'a str, name: &str) -> &'a str {
    out.lines().find_map(|l| l.strip_prefix(name)).map(str::trim).unwrap_or_else(|| panic!("no {name} in {out}"))
}

#[test]
fn reality_public_keys_match_sing_box_generate() {
    if !sing_box_ready() {
        return;
    }
    for _ in 0..10 {
        let out = Command::new(sing_box_bin()).args(["generate", "reality-keypair"]).output().expect("sing-box runs");
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        let (private, public) = (field(&text, "PrivateKey:"), field(&text, "PublicKey:"));
        assert_eq!(reality_public_key(private).expect("sing-box's key decodes"), public);
    }
}

#[test]
fn our_keypairs_have_sing_box_shape() {
    let pair = generate_reality_keypair();
    for key in [&pair.private_key, &pair.public_key] {
        assert_eq!(key.len(), 43, "32 bytes, base64url without padding: {key}");
        assert!(key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'), "{key}");
    }
    assert_eq!(reality_public_key(&pair.private_key).expect("own key"), pair.public_key);
}
