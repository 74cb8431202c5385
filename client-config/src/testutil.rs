//! Fixtures shared by the unit tests: one user, nodes, and an inbound of
//! each protocol with all its public parameters.

use vpn_storage::model::{Credentials, DataplaneNode, InboundRecord, Protocol, User};

pub const SERVER_KEY: &str = "c2VydmVyLWtleS0xNmJ5dA==";
pub const CERT_SHA256: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";
pub const REALITY_KEY: &str = "jNXHt1yRo0vDuchQlIP6Z0ZvjT3KtzVI-T4E7RoLJS0";

pub fn alice() -> User {
    let mut user = User::new("alice".into(), 0);
    user.credentials = Credentials {
        vless_uuid: "0b6f0e6e-4c1e-4b8a-9d3e-2f1a7c5d9e10".parse().expect("uuid"),
        // Base64 with every character that needs escaping in a URL.
        ss2022_key: "ab+/cd+/ef+/gh+/ij+/kw==".into(),
    };
    user
}

pub fn node(id: u64, host: &str, inbounds: Vec<InboundRecord>) -> DataplaneNode {
    DataplaneNode::new(id, host.into(), inbounds)
}

pub fn ss_inbound(port: u16) -> InboundRecord {
    let mut inbound = InboundRecord::new(Protocol::Shadowsocks2022, port);
    inbound.ss2022_server_key = Some(SERVER_KEY.into());
    inbound
}

pub fn tls_inbound(port: u16, self_signed: bool) -> InboundRecord {
    let mut inbound = InboundRecord::new(Protocol::VlessTls, port);
    inbound.tls_server_name = Some("vpn.example.com".into());
    inbound.tls_cert_sha256 = Some(CERT_SHA256.into());
    inbound.tls_self_signed = self_signed;
    inbound
}

pub fn reality_inbound(port: u16) -> InboundRecord {
    let mut inbound = InboundRecord::new(Protocol::VlessReality, port);
    inbound.reality_public_key = Some(REALITY_KEY.into());
    inbound.reality_short_id = Some("0123abcd".into());
    inbound.reality_server_name = Some("www.example.org".into());
    inbound
}
