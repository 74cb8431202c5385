//! Pure builders from this node's settings, its secrets and the replicated
//! state: the offer it registers (public parameters only) and the
//! [`DesiredState`] its reconciler applies.

use vpn_runtime::desired::{
    DesiredState, EngineUser, InboundSpec, Protocol as EngineProtocol, RealitySettings, TlsFiles,
};
use vpn_storage::model::{DataplaneNode, InboundRecord, Protocol};
use vpn_storage::state::State;
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

/// The record this node registers: what clients need, never a private key.
pub fn offer(id: NodeId, config: &DataplaneConfig, secrets: &Secrets) -> DataplaneNode {
    let inbounds = config
        .inbounds
        .iter()
        .map(|i| {
            let mut record = InboundRecord::new(i.protocol, i.port);
            match i.protocol {
                Protocol::Shadowsocks2022 => {
                    record.ss2022_server_key = secrets.ss2022_server_keys.get(&i.port).cloned()
                }
                Protocol::VlessTls => {
                    if let Some(tls) = &secrets.tls {
                        record.tls_server_name = Some(tls.server_name.clone());
                        record.tls_cert_sha256 = Some(tls.cert_sha256.clone());
                        record.tls_self_signed = tls.self_signed;
                    }
                }
                Protocol::VlessReality => {
                    record.reality_public_key = secrets.reality.as_ref().map(|k| k.public_key.clone());
                    record.reality_short_id = secrets.reality.as_ref().map(|k| k.short_id.clone());
                    record.reality_server_name = config.reality.as_ref().map(|r| r.server_name.clone());
                }
            }
            record
        })
        .collect();
    let mut node = DataplaneNode::new(id, config.public_host.clone(), inbounds);
    node.labels = config.labels.clone();
    node.capacity = config.capacity;
    node
}

/// What node `id` should serve in `state`: its inbounds and the users placed
/// on it, at the state's generation. `None` until the node is registered in
/// `state`: before that this copy of the state says nothing about it.
pub fn desired(state: &State, id: NodeId, inbounds: &[InboundSpec]) -> Option<DesiredState> {
    state.dataplane_nodes.contains_key(&id).then(|| DesiredState {
        generation: state.generation,
        node_id: id,
        inbounds: inbounds.to_vec(),
        users: state
            .users_on(id)
            .map(|u| EngineUser {
                name: u.name.clone(),
                vless_uuid: u.credentials.vless_uuid,
                ss2022_key: u.credentials.ss2022_key.clone(),
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use vpn_storage::command::{apply, Command, LimitsChange, Move};
    use vpn_storage::model::{User, UserStatus};

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
        let json = serde_json::to_string(&offer).expect("json");
        assert!(!json.contains("PRIVATE") && !json.contains("key.pem"), "a secret leaked: {json}");
        assert_eq!(offer.inbounds[0].ss2022_server_key.as_deref(), Some("c2VydmVyLWtleS0xNmJ5dA=="));
        assert_eq!(offer.inbounds[1].tls_cert_sha256, Some("ab".repeat(32)));
        assert!(offer.inbounds[1].tls_self_signed);
        assert_eq!(offer.inbounds[2].reality_public_key.as_deref(), Some("PUBLIC"));
        assert_eq!(offer.inbounds[2].reality_server_name.as_deref(), Some("www.example.org"));
        assert_eq!((offer.capacity, offer.labels.len()), (100, 1));
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

    #[test]
    fn a_node_serves_the_active_users_placed_on_it() {
        let mut state = State::default();
        let specs = inbound_specs(&config(), &secrets());
        for name in ["carol", "alice", "bob", "dave"] {
            apply(&mut state, &Command::CreateUser(User::new(name.into(), 0)));
        }
        let disable = LimitsChange::default();
        apply(
            &mut state,
            &Command::UpdateUser { name: "bob".into(), status: Some(UserStatus::Disabled), limits: disable, at_ms: 0 },
        );
        assert_eq!(desired(&state, 7, &specs), None, "nothing is known for an unregistered node");

        apply(&mut state, &Command::RegisterDataplaneNode(offer(7, &config(), &secrets())));
        apply(&mut state, &Command::RegisterDataplaneNode(offer(8, &config(), &secrets())));
        let place = |user: &str, node| Move { user: user.into(), add: vec![node], remove: vec![] };
        apply(
            &mut state,
            &Command::Place(vec![place("alice", 7), place("bob", 7), place("carol", 7), place("dave", 8)]),
        );
        let d = desired(&state, 7, &specs).expect("registered");
        let names: Vec<&str> = d.users.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["alice", "carol"], "active users placed here, sorted by name");
        assert_eq!((d.generation, d.node_id, d.inbounds.len()), (state.generation, 7, 3));
    }
}
