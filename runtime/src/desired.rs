//! What a data-plane node should serve, as the node agent hands it over.
//! Built by `vpn-node` from the replicated state; this crate never sees the
//! Raft store, so the reconciler can be tested on its own.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A protocol inbound the node serves; engine containers in generations (see [`crate::nftables`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Protocol {
    /// Shadowsocks-2022 (2022-blake3-aes-128-gcm), multi-user.
    Shadowsocks2022,
    /// VLESS with the Vision flow over TLS.
    VlessTls,
    /// VLESS with the Vision flow over Reality (needs an engine built with uTLS).
    VlessReality,
}

impl Protocol {
    pub const ALL: [Protocol; 3] = [Protocol::Shadowsocks2022, Protocol::VlessTls, Protocol::VlessReality];

    /// The contract's name: `shadowsocks-2022`, `vless-tls`, `vless-reality`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Shadowsocks2022 => "shadowsocks-2022",
            Protocol::VlessTls => "vless-tls",
            Protocol::VlessReality => "vless-reality",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// Shadowsocks also serves UDP on its port; the VLESS inbounds are TCP only.
    pub fn uses_udp(self) -> bool {
        self == Protocol::Shadowsocks2022
    }
}

/// TLS material on the node's disk (the key never leaves the node).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TlsFiles {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    /// SNI clients use; also the certificate's subject name.
    pub server_name: String,
}

/// Reality server settings; the private key stays on the node.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RealitySettings {
    /// x25519 private key, base64url without padding.
    pub private_key: String,
    /// Hex, 0-16 chars.
    pub short_id: String,
    /// The camouflage site (SNI clients send), e.g. `www.example.com`.
    pub server_name: String,
    /// Where unauthenticated handshakes are forwarded, host and port.
    pub handshake_server: String,
    pub handshake_port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct InboundSpec {
    pub protocol: Protocol,
    pub listen_port: u16,
    /// Shadowsocks-2022 only: the inbound's server key (16 bytes, base64).
    pub ss2022_server_key: Option<String>,
    /// VLESS over TLS only.
    pub tls: Option<TlsFiles>,
    /// VLESS over Reality only.
    pub reality: Option<RealitySettings>,
}

/// One user as an engine needs it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EngineUser {
    pub name: String,
    pub vless_uuid: Uuid,
    /// Shadowsocks-2022 per-user key (16 bytes, base64).
    pub ss2022_key: String,
}

impl EngineUser {
    /// The credential an inbound of `protocol` checks: the user's key for
    /// Shadowsocks-2022, the UUID for VLESS. A change of it is a change of the user.
    pub fn credential(&self, protocol: Protocol) -> String {
        match protocol {
            Protocol::Shadowsocks2022 => self.ss2022_key.clone(),
            Protocol::VlessTls | Protocol::VlessReality => self.vless_uuid.to_string(),
        }
    }
}

/// Everything one node should run. `generation` grows with every change of
/// the replicated state that affects this node; the agent reports the last
/// generation it applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredState {
    pub generation: u64,
    pub node_id: u64,
    pub inbounds: Vec<InboundSpec>,
    /// The users every inbound of this node serves, sorted by name.
    pub users: Vec<EngineUser>,
}
