//! Our own checks of a desired state before anything is applied. sing-box
//! `check` accepts things that break clients later (a malformed UUID, a key of
//! the wrong length), and a config that names a user twice fails at runtime,
//! so the whole state is refused, naming the field, and the running engines
//! keep their last good state.

use std::collections::BTreeSet;

use crate::keys::{decode_x25519, is_ss2022_key};
use crate::{DesiredState, InboundSpec, Protocol, RuntimeError};

/// Checks everything the engines will be given; `node_id` is the node this runtime serves.
pub fn validate(desired: &DesiredState, node_id: u64) -> Result<(), RuntimeError> {
    if desired.node_id != node_id {
        return Err(RuntimeError::invalid("node_id", format!("{} is not this node ({node_id})", desired.node_id)));
    }
    let mut protocols = BTreeSet::new();
    let mut ports = BTreeSet::new();
    for (i, inbound) in desired.inbounds.iter().enumerate() {
        let field = format!("inbounds[{i}] ({})", inbound.protocol.as_str());
        if !protocols.insert(inbound.protocol) {
            return Err(RuntimeError::invalid(field, "a second inbound of this protocol (one engine per protocol)"));
        }
        if inbound.listen_port == 0 {
            return Err(RuntimeError::invalid(field, "listen_port 0"));
        }
        if !ports.insert(inbound.listen_port) {
            return Err(RuntimeError::invalid(field, format!("port {} used by another inbound", inbound.listen_port)));
        }
        validate_inbound(inbound).map_err(|reason| RuntimeError::invalid(field, reason))?;
    }
    let ss2022 = protocols.contains(&Protocol::Shadowsocks2022);
    let mut names = BTreeSet::new();
    let mut uuids = BTreeSet::new();
    for (i, user) in desired.users.iter().enumerate() {
        let field = format!("users[{i}] ({:?})", user.name);
        if !valid_user_name(&user.name) {
            return Err(RuntimeError::invalid(field, "name must be 1-64 of [a-z0-9._-], starting with [a-z0-9]"));
        }
        if !names.insert(user.name.as_str()) {
            return Err(RuntimeError::invalid(field, "duplicate name"));
        }
        if user.vless_uuid.is_nil() || !uuids.insert(user.vless_uuid) {
            return Err(RuntimeError::invalid(field, format!("vless_uuid {} is nil or not unique", user.vless_uuid)));
        }
        if ss2022 && !is_ss2022_key(&user.ss2022_key) {
            return Err(RuntimeError::invalid(field, "ss2022_key must be 16 bytes, standard base64"));
        }
    }
    Ok(())
}

fn validate_inbound(inbound: &InboundSpec) -> Result<(), String> {
    match inbound.protocol {
        Protocol::Shadowsocks2022 => match &inbound.ss2022_server_key {
            Some(key) if is_ss2022_key(key) => Ok(()),
            Some(_) => Err("ss2022_server_key must be 16 bytes, standard base64".into()),
            None => Err("ss2022_server_key missing".into()),
        },
        Protocol::VlessTls => {
            let tls = inbound.tls.as_ref().ok_or("tls files missing")?;
            check_host("tls.server_name", &tls.server_name)?;
            for (what, path) in [("tls.cert_path", &tls.cert_path), ("tls.key_path", &tls.key_path)] {
                if !path.is_absolute() {
                    return Err(format!("{what} {} must be absolute", path.display()));
                }
            }
            Ok(())
        }
        Protocol::VlessReality => {
            let reality = inbound.reality.as_ref().ok_or("reality settings missing")?;
            decode_x25519(&reality.private_key).map_err(|e| e.to_string())?;
            let sid = &reality.short_id;
            if sid.len() > 16 || sid.len() % 2 != 0 || !sid.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!("reality.short_id {sid:?} must be 0-16 hex digits, even length"));
            }
            check_host("reality.server_name", &reality.server_name)?;
            check_host("reality.handshake_server", &reality.handshake_server)?;
            if reality.handshake_port == 0 {
                return Err("reality.handshake_port 0".into());
            }
            Ok(())
        }
    }
}

/// The contract's user names: 1-64 chars of `[a-z0-9._-]`, starting with a letter or digit.
/// They become outbound tags and URL path segments, so nothing else may pass.
pub(crate) fn valid_user_name(name: &str) -> bool {
    let ok_char = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-');
    (1..=64).contains(&name.len())
        && name.bytes().all(ok_char)
        && name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
}

/// A DNS name or IP literal: letters, digits, `.`, `-`, `:` (IPv6), at most 253 chars.
fn check_host(field: &str, host: &str) -> Result<(), String> {
    let ok = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':');
    if host.is_empty() || host.len() > 253 || !host.bytes().all(ok) {
        return Err(format!("{field} {host:?} is not a host name"));
    }
    Ok(())
}

#[cfg(test)]
#[path = "validate_tests.rs"]
mod tests;
