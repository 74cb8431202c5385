//! Sample desired states for unit tests.

use std::path::PathBuf;

use uuid::Uuid;

use crate::{DesiredState, EngineUser, InboundSpec, Protocol, RealitySettings, TlsFiles};

pub(crate) const SERVER_KEY: &str = "AAECAwQFBgcICQoLDA0ODw==";

pub(crate) fn user(name: &str, n: u8) -> EngineUser {
    EngineUser {
        name: name.to_string(),
        vless_uuid: Uuid::from_bytes([n; 16]),
        ss2022_key: base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [n; 16]),
    }
}

pub(crate) fn ss2022(port: u16) -> InboundSpec {
    InboundSpec {
        protocol: Protocol::Shadowsocks2022,
        listen_port: port,
        ss2022_server_key: Some(SERVER_KEY.to_string()),
        tls: None,
        reality: None,
    }
}

pub(crate) fn vless_tls(port: u16) -> InboundSpec {
    InboundSpec {
        protocol: Protocol::VlessTls,
        listen_port: port,
        ss2022_server_key: None,
        tls: Some(TlsFiles {
            cert_path: PathBuf::from("/data/tls/cert.pem"),
            key_path: PathBuf::from("/data/tls/key.pem"),
            server_name: "vpn.example.test".to_string(),
        }),
        reality: None,
    }
}

pub(crate) fn vless_reality(port: u16) -> InboundSpec {
    InboundSpec {
        protocol: Protocol::VlessReality,
        listen_port: port,
        ss2022_server_key: None,
        tls: None,
        reality: Some(RealitySettings {
            private_key: "UuMBgl7MXTPx9inmQp2UC7Jcnwc6XYbwDNebonM-FCc".to_string(),
            short_id: "0123456789abcdef".to_string(),
            server_name: "www.example.com".to_string(),
            handshake_server: "www.example.com".to_string(),
            handshake_port: 443,
        }),
    }
}

pub(crate) fn desired(inbounds: Vec<InboundSpec>, users: Vec<EngineUser>) -> DesiredState {
    DesiredState { generation: 1, node_id: 7, inbounds, users }
}
