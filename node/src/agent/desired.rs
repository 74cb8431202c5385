//! Pure builders from this node's settings and its secrets: the offer it
//! registers (public parameters only) and the inbounds its engines serve.

use vpn_proto::internal::{OfferedInbound, RegisterRequest};
use vpn_runtime::desired::{InboundSpec, Protocol as EngineProtocol, RealitySettings, TlsFiles};
use vpn_storage::model::Protocol;
use vpn_storage::types::NodeId;

use super::secrets::Secrets;
use crate::config::DataplaneConfig;

fn engine_protocol(p: Protocol) -> EngineProtocol {
    match p {
        Protocol::Shadowsocks2022 => EngineProtocol::Shadowsocks2022,
        Protocol::VlessTls => EngineProtocol::VlessTls,
        Protocol::VlessReality => EngineProtocol::VlessReality,
    }
}

/// What the engines serve, with the private halves of the secrets.
pub fn inbound_specs(config: &DataplaneConfig, secrets: &Secrets) -> Vec<InboundSpec> {
    config
        .inbounds
        .iter()
        .map(|i| InboundSpec {
            protocol: engine_protocol(i.protocol),
            listen_port: i.port,
            ss2022_server_key: match i.protocol {
                Protocol::Shadowsocks2022 => secrets.ss2022_server_keys.get(&i.port).cloned(),
                _ => None,
            },
            tls: secrets.tls.as_ref().filter(|_| i.protocol == Protocol::VlessTls).map(|t| TlsFiles {
                cert_path: t.cert_path.clone(),
                key_path: t.key_path.clone(),
                server_name: t.server_name.clone(),
            }),
            reality: match (i.protocol, &secrets.reality, &config.reality) {
                (Protocol::VlessReality, Some(keys), Some(r)) => Some(RealitySettings {
                    private_key: keys.private_key.clone(),
                    short_id: keys.short_id.clone(),
                    server_name: r.server_name.clone(),
                    handshake_server: r.handshake_host.clone(),
                    handshake_port: r.handshake_port,
                }),
                _ => None,
            },
        })
        .collect()
}

/// The offer this node registers: what clients need, never a private key.
/// The caller fills in the data dir's incarnation and the certificate's expiry.
pub fn offer(id: NodeId, config: &DataplaneConfig, secrets: &Secrets) -> RegisterRequest {
    let inbounds = config
        .inbounds
        .iter()
        .map(|i| {
            let mut offered = OfferedInbound {
                protocol: i.protocol.as_str().to_owned(),
                port: u32::from(i.port),
                ..Default::default()
            };
            match i.protocol {
                Protocol::Shadowsocks2022 => {
                    offered.ss2022_server_key = secrets.ss2022_server_keys.get(&i.port).cloned().unwrap_or_default()
                }
                Protocol::VlessTls => {
                    if let Some(tls) = &secrets.tls {
                        offered.tls_server_name = tls.server_name.clone();
                        offered.tls_cert_sha256 = tls.cert_sha256.clone();
                        offered.tls_self_signed = tls.self_signed;
                    }
                }
                Protocol::VlessReality => {
                    if let Some(keys) = &secrets.reality {
                        offered.reality_public_key = keys.public_key.clone();
                        offered.reality_short_id = keys.short_id.clone();
                    }
                    if let Some(r) = &config.reality {
                        offered.reality_server_name = r.server_name.clone();
                    }
                }
            }
            offered
        })
        .collect();
    RegisterRequest {
        node_id: id,
        public_host: config.public_host.clone(),
        inbounds,
        labels: config.labels.clone().into_iter().collect(),
        capacity: config.capacity,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::*;
    use crate::agent::secrets::{RealityKeys, TlsMaterial};
    use crate::config::dataplane::{InboundConfig, RealityConfig};

    fn config() -> DataplaneConfig {
        DataplaneConfig {
            public_host: "vpn.example.com".into(),
            inbounds: vec![
                InboundConfig { protocol: Protocol::Shadowsocks2022, port: 8388 },
                InboundConfig { protocol: Protocol::VlessTls, port: 443 },
                InboundConfig { protocol: Protocol::VlessReality, port: 8443 },
            ],
            engine_image: "img".into(),
            labels: BTreeMap::from([("region".into(), "eu".into())]),
            capacity: 100,
            tls: None,
            reality: Some(RealityConfig {
                server_name: "www.example.org".into(),
                handshake_host: "www.example.org".into(),
                handshake_port: 443,
            }),
            resync: Duration::from_secs(10),
            docker_host: None,
            engine_drain: std::time::Duration::from_secs(3600),
            engine_max_generations: 8,
            nftables: vpn_runtime::NftablesUse::Auto,
        }
    }

    fn secrets() -> Secrets {
        Secrets {
            tls: Some(TlsMaterial {
                cert_path: "/d/tls/cert.pem".into(),
                key_path: "/d/tls/key.pem".into(),
                server_name: "vpn.example.com".into(),
                cert_sha256: "ab".repeat(32),
                self_signed: true,
            }),
            reality: Some(RealityKeys {
                private_key: "PRIVATE".into(),
                public_key: "PUBLIC".into(),
                short_id: "0123456789abcdef".into(),
            }),
            ss2022_server_keys: BTreeMap::from([(8388, "c2VydmVyLWtleS0xNmJ5dA==".into())]),
        }
    }

    #[test]
    fn the_offer_carries_public_parameters_only() {
        let offer = offer(7, &config(), &secrets());
        let debug = format!("{offer:?}");
        assert!(!debug.contains("PRIVATE") && !debug.contains("key.pem"), "a secret leaked: {debug}");
        assert_eq!(offer.inbounds[0].ss2022_server_key, "c2VydmVyLWtleS0xNmJ5dA==");
        assert_eq!(offer.inbounds[1].tls_cert_sha256, "ab".repeat(32));
        assert!(offer.inbounds[1].tls_self_signed);
        assert_eq!(offer.inbounds[2].reality_public_key, "PUBLIC");
        assert_eq!(offer.inbounds[2].reality_server_name, "www.example.org");
        assert_eq!((offer.capacity, offer.labels.len(), offer.node_id), (100, 1, 7));
    }

    #[test]
    fn specs_carry_the_private_halves_each_on_its_own_inbound() {
        let specs = inbound_specs(&config(), &secrets());
        assert_eq!(specs.len(), 3);
        assert!(specs[0].ss2022_server_key.is_some() && specs[0].tls.is_none() && specs[0].reality.is_none());
        assert!(specs[1].tls.is_some() && specs[1].ss2022_server_key.is_none() && specs[1].reality.is_none());
        let reality = specs[2].reality.as_ref().expect("reality");
        assert_eq!((reality.private_key.as_str(), reality.handshake_port), ("PRIVATE", 443));
    }
}
