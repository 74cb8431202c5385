//! sing-box 1.14 configuration: one document per engine generation of one
//! protocol inbound. Pure: the tests compare the output with the checked
//! templates in `shared/reference/sing-box` and sing-box's documented schema.
//!
//! Every user's sessions go through a rule `auth_user: [name] -> u-<name>`,
//! where `u-<name>` is a selector over the user's own `direct` outbound
//! `d-<name>` and `deny`:
//! - `d-<name>` sets the user's socket mark (`routing_mark`, see
//!   [`crate::marks`]), so the kernel counts the user's bytes;
//! - the clash API lists a session's outbound chain (`chains` holds
//!   `u-<name>`), so a user's sessions can be found and closed, and switching
//!   the selector to `deny` refuses the user's new sessions live, without
//!   the reload that would cut everyone.
//!
//! A generation listens on a port of its own; the public port reaches it
//! through [`crate::nftables`].

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::engine::ApiAccess;
use crate::{EngineUser, InboundSpec, Protocol, RuntimeError};

/// Where the config dir is mounted in the container.
pub const CONTAINER_DIR: &str = "/etc/sing-box";
/// The main config file in the config dir.
pub const CONFIG_FILE: &str = "config.json";
/// TLS material, copied into the config dir so one read-only mount carries everything.
pub const TLS_CERT: &str = "tls/cert.pem";
pub const TLS_KEY: &str = "tls/key.pem";
/// Outbound a refused user's selector points at.
pub const DENY: &str = "deny";
/// The only method the contract offers (16-byte keys).
pub const SS_METHOD: &str = "2022-blake3-aes-128-gcm";

/// The per-user selector a VLESS user's sessions are routed through.
pub fn user_outbound(name: &str) -> String {
    format!("u-{name}")
}

/// The user's own `direct` outbound, which marks the user's sockets.
pub fn user_direct(name: &str) -> String {
    format!("d-{name}")
}

/// The user whose selector `tag` is (the inverse of [`user_outbound`]).
pub fn outbound_user(tag: &str) -> Option<&str> {
    tag.strip_prefix("u-").filter(|name| !name.is_empty())
}

pub fn inbound_tag(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Shadowsocks2022 => "ss-in",
        Protocol::VlessTls => "vless-tls-in",
        Protocol::VlessReality => "vless-reality-in",
    }
}

/// An engine API port: [`CLASH`] or [`EVENTS`].
pub(crate) fn api_port(api: &ApiAccess, index: usize) -> Result<u16, RuntimeError> {
    api.ports.get(index).copied().ok_or_else(|| RuntimeError::EngineApi {
        api: "engine API",
        addr: format!("port #{index}"),
        reason: format!("not allocated (have {:?}); the container's vpn.api-ports label is damaged", api.ports),
    })
}
/// The clash API (sessions, closing them, the per-user selectors).
pub(crate) const CLASH: usize = 0;
/// The gRPC `api` service (connection events, for accounting without nftables).
pub(crate) const EVENTS: usize = 1;

/// The whole config document for `inbound` serving `users` on `listen_port`,
/// each user's sockets marked with `marks[name]`.
pub fn config(
    inbound: &InboundSpec,
    listen_port: u16,
    users: &[EngineUser],
    marks: &BTreeMap<String, u32>,
    api: &ApiAccess,
) -> Result<Value, RuntimeError> {
    let tag = inbound_tag(inbound.protocol);
    // On the public port itself (no nftables to redirect it), the next
    // generation starts beside the current one: both bind the port.
    let shared_port = listen_port == inbound.listen_port;
    let missing = |what: &str| RuntimeError::invalid(inbound.protocol.as_str(), format!("{what} missing"));
    let mark = |name: &str| {
        marks.get(name).copied().ok_or_else(|| RuntimeError::invalid(format!("user {name}"), "has no socket mark"))
    };
    let inbound_doc = match inbound.protocol {
        Protocol::Shadowsocks2022 => {
            let key = inbound.ss2022_server_key.as_deref().ok_or_else(|| missing("ss2022_server_key"))?;
            let users: Vec<Value> = users.iter().map(|u| json!({"name": u.name, "password": u.ss2022_key})).collect();
            json!({
                "type": "shadowsocks", "tag": tag, "listen": "0.0.0.0", "listen_port": listen_port,
                "reuse_addr": shared_port, "method": SS_METHOD, "password": key, "users": users,
            })
        }
        Protocol::VlessTls | Protocol::VlessReality => {
            let tls = match inbound.protocol {
                Protocol::VlessReality => {
                    let r = inbound.reality.as_ref().ok_or_else(|| missing("reality"))?;
                    json!({
                        "enabled": true,
                        "server_name": r.server_name,
                        "reality": {
                            "enabled": true,
                            "handshake": {"server": r.handshake_server, "server_port": r.handshake_port},
                            "private_key": r.private_key,
                            "short_id": [r.short_id],
                        },
                    })
                }
                _ => {
                    let t = inbound.tls.as_ref().ok_or_else(|| missing("tls"))?;
                    json!({
                        "enabled": true,
                        "server_name": t.server_name,
                        "certificate_path": format!("{CONTAINER_DIR}/{TLS_CERT}"),
                        "key_path": format!("{CONTAINER_DIR}/{TLS_KEY}"),
                    })
                }
            };
            let users: Vec<Value> = users
                .iter()
                .map(|u| json!({"name": u.name, "uuid": u.vless_uuid.to_string(), "flow": "xtls-rprx-vision"}))
                .collect();
            json!({
                "type": "vless", "tag": tag, "listen": "0.0.0.0", "listen_port": listen_port,
                "reuse_addr": shared_port, "users": users, "tls": tls,
            })
        }
    };
    let mut outbounds = vec![json!({"type": "block", "tag": DENY})];
    for u in users {
        outbounds.push(json!({"type": "direct", "tag": user_direct(&u.name), "routing_mark": mark(&u.name)?}));
        outbounds.push(json!({
            "type": "selector", "tag": user_outbound(&u.name), "outbounds": [user_direct(&u.name), DENY],
            "default": user_direct(&u.name), "interrupt_exist_connections": false,
        }));
    }
    let rules: Vec<Value> =
        users.iter().map(|u| json!({"auth_user": [u.name], "outbound": user_outbound(&u.name)})).collect();
    Ok(json!({
        "log": {"level": "warn", "timestamp": true},
        "inbounds": [inbound_doc],
        "outbounds": outbounds,
        // Sessions no user rule claims go nowhere (and are no one's bytes).
        "route": {"rules": rules, "final": DENY},
        "services": [{
            "type": "api", "tag": "api", "listen": "127.0.0.1", "listen_port": api_port(api, EVENTS)?,
            "secret": api.secret,
        }],
        "experimental": {"clash_api": {
            "external_controller": format!("127.0.0.1:{}", api_port(api, CLASH)?),
            "secret": api.secret,
        }},
    }))
}

/// The users (name -> credential: VLESS UUID or Shadowsocks key) a config document serves.
pub fn users_in(config: &Value) -> BTreeMap<String, String> {
    config["inbounds"][0]["users"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|u| {
            let credential = u["uuid"].as_str().or(u["password"].as_str())?;
            Some((u["name"].as_str()?.to_string(), credential.to_string()))
        })
        .collect()
}

#[cfg(test)]
#[path = "render_tests.rs"]
mod tests;
