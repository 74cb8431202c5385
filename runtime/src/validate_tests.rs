use super::*;
use crate::testutil::{desired, ss2022, user, vless_reality, vless_tls};

fn refused(state: &DesiredState) -> String {
    validate(state, 7).expect_err("should be refused").to_string()
}

#[test]
fn a_complete_state_passes() {
    let state =
        desired(vec![ss2022(8388), vless_tls(8443), vless_reality(443)], vec![user("alice", 1), user("b.o_b-2", 2)]);
    validate(&state, 7).expect("valid");
}

#[test]
fn another_nodes_state_is_refused() {
    validate(&desired(vec![], vec![]), 7).expect("own node");
    let err = validate(&desired(vec![], vec![]), 8).expect_err("wrong node").to_string();
    assert!(err.contains("node_id") && err.contains("not this node"), "{err}");
}

#[test]
fn inbound_rules() {
    let err = refused(&desired(vec![ss2022(8388), ss2022(8389)], vec![]));
    assert!(err.contains("second inbound"), "{err}");
    let err = refused(&desired(vec![ss2022(8388), vless_tls(8388)], vec![]));
    assert!(err.contains("port 8388"), "{err}");
    let err = refused(&desired(vec![ss2022(0)], vec![]));
    assert!(err.contains("listen_port 0"), "{err}");

    let mut bad_key = ss2022(1);
    bad_key.ss2022_server_key = Some("c2hvcnQ=".into());
    assert!(refused(&desired(vec![bad_key], vec![])).contains("ss2022_server_key"));
    let mut no_key = ss2022(1);
    no_key.ss2022_server_key = None;
    assert!(refused(&desired(vec![no_key], vec![])).contains("ss2022_server_key missing"));

    let mut no_tls = vless_tls(1);
    no_tls.tls = None;
    assert!(refused(&desired(vec![no_tls], vec![])).contains("tls files missing"));
    let mut relative = vless_tls(1);
    if let Some(tls) = relative.tls.as_mut() {
        tls.cert_path = "cert.pem".into();
    }
    assert!(refused(&desired(vec![relative], vec![])).contains("absolute"));
    let mut bad_sni = vless_tls(1);
    if let Some(tls) = bad_sni.tls.as_mut() {
        tls.server_name = "bad name/".into();
    }
    assert!(refused(&desired(vec![bad_sni], vec![])).contains("tls.server_name"));
}

#[test]
fn reality_rules() {
    type Mutation = fn(&mut crate::RealitySettings);
    let cases: [(Mutation, &str); 4] = [
        (|r| r.private_key = "short".into(), "reality.private_key"),
        (|r| r.short_id = "abc".into(), "reality.short_id"),
        (|r| r.short_id = "zz".into(), "reality.short_id"),
        (|r| r.handshake_port = 0, "handshake_port"),
    ];
    for (mutate, expected) in cases {
        let mut inbound = vless_reality(443);
        if let Some(reality) = inbound.reality.as_mut() {
            mutate(reality);
        }
        let err = refused(&desired(vec![inbound], vec![]));
        assert!(err.contains(expected), "{err}");
    }
    let mut empty_sid = vless_reality(443);
    if let Some(reality) = empty_sid.reality.as_mut() {
        reality.short_id.clear();
    }
    validate(&desired(vec![empty_sid], vec![]), 7).expect("empty short id is allowed");
}

#[test]
fn user_rules() {
    for name in ["", "Alice", "-bob", "a b", "ünï", &"x".repeat(65)] {
        let err = refused(&desired(vec![], vec![user(name, 1)]));
        assert!(err.contains("name must be"), "{name}: {err}");
    }
    let err = refused(&desired(vec![], vec![user("a", 1), user("a", 2)]));
    assert!(err.contains("duplicate name"), "{err}");
    let err = refused(&desired(vec![], vec![user("a", 1), user("b", 1)]));
    assert!(err.contains("not unique"), "{err}");
    let err = refused(&desired(vec![], vec![user("a", 0)]));
    assert!(err.contains("nil"), "{err}");

    let mut bad_key = user("a", 1);
    bad_key.ss2022_key = "nope".into();
    assert!(refused(&desired(vec![ss2022(1)], vec![bad_key.clone()])).contains("ss2022_key"));
    validate(&desired(vec![vless_tls(1)], vec![bad_key]), 7).expect("ss2022 key unused without that inbound");
}
