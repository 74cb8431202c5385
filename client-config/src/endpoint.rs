//! One place that decides what a client needs to reach a user on one inbound,
//! so the link and every subscription format agree on which inbounds are
//! usable and with what parameters.

use std::collections::HashSet;

use vpn_storage::model::{DataplaneNode, InboundRecord, Protocol, User};

/// A user's way in through one inbound of one node, with every parameter
/// its protocol needs present.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Endpoint<'a> {
    /// What a client shows; unique within one subscription.
    pub name: String,
    /// Host name or IP address (an IPv6 address without brackets).
    pub host: &'a str,
    pub port: u16,
    pub kind: Kind<'a>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Kind<'a> {
    /// Shadowsocks-2022; `password` is `<server key>:<user key>`.
    Shadowsocks {
        password: String,
    },
    VlessTls {
        uuid: String,
        server_name: &'a str,
        /// SHA-256 (hex) of a certificate the node made itself; `None` for a
        /// certificate a CA vouches for.
        pinned_cert_sha256: Option<&'a str>,
    },
    VlessReality {
        uuid: String,
        server_name: &'a str,
        public_key: &'a str,
        short_id: &'a str,
    },
}

/// The name a client shows for `user` on a `protocol` inbound of `node`.
pub(crate) fn display_name(user: &User, node: &DataplaneNode, protocol: Protocol) -> String {
    format!("{}-node{}-{protocol}", user.name, node.id)
}

impl<'a> Endpoint<'a> {
    /// `None` when the inbound's record lacks a public parameter its protocol
    /// needs (the node has not registered it yet): such an inbound is left out.
    pub(crate) fn resolve(user: &User, node: &'a DataplaneNode, inbound: &'a InboundRecord) -> Option<Self> {
        let uuid = user.credentials.vless_uuid.to_string();
        let kind = match inbound.protocol {
            Protocol::Shadowsocks2022 => {
                let server_key = inbound.ss2022_server_key.as_deref()?;
                Kind::Shadowsocks { password: format!("{server_key}:{}", user.credentials.ss2022_key) }
            }
            Protocol::VlessTls => Kind::VlessTls {
                uuid,
                server_name: inbound.tls_server_name.as_deref()?,
                pinned_cert_sha256: if inbound.tls_self_signed {
                    Some(inbound.tls_cert_sha256.as_deref()?)
                } else {
                    None
                },
            },
            Protocol::VlessReality => Kind::VlessReality {
                uuid,
                server_name: inbound.reality_server_name.as_deref()?,
                public_key: inbound.reality_public_key.as_deref()?,
                short_id: inbound.reality_short_id.as_deref()?,
            },
        };
        Some(Endpoint {
            name: display_name(user, node, inbound.protocol),
            host: &node.public_host,
            port: inbound.port,
            kind,
        })
    }
}

/// Every usable endpoint of `user` on `nodes`, in node then inbound order,
/// with names made unique: clients key proxies by name, and a node may serve
/// one protocol on two ports.
pub(crate) fn endpoints<'a>(user: &User, nodes: &[&'a DataplaneNode]) -> Vec<Endpoint<'a>> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for node in nodes {
        for inbound in &node.inbounds {
            let Some(mut endpoint) = Endpoint::resolve(user, node, inbound) else { continue };
            if seen.contains(&endpoint.name) {
                let base = format!("{}-{}", endpoint.name, endpoint.port);
                endpoint.name = base.clone();
                let mut n = 2;
                while seen.contains(&endpoint.name) {
                    endpoint.name = format!("{base}-{n}");
                    n += 1;
                }
            }
            seen.insert(endpoint.name.clone());
            out.push(endpoint);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{alice, node, ss_inbound};

    #[test]
    fn names_stay_unique_when_a_node_repeats_a_protocol() {
        let mut n = node(1, "h", vec![ss_inbound(8388), ss_inbound(8389), ss_inbound(8388)]);
        n.inbounds.push(InboundRecord::new(Protocol::VlessTls, 443)); // no SNI yet: left out
        let names: Vec<_> = endpoints(&alice(), &[&n]).into_iter().map(|e| e.name).collect();
        assert_eq!(
            names,
            ["alice-node1-shadowsocks-2022", "alice-node1-shadowsocks-2022-8389", "alice-node1-shadowsocks-2022-8388"]
        );
    }
}
