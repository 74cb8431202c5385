//! Login sessions: what a successful LDAP or OIDC login gets. A session is a
//! token every node checks by itself with the cluster's session key
//! (HMAC-SHA256 over the claims; the key is replicated state), so no node
//! keeps session state and a session works on every node until it expires.
//! The groups are those of the login: a group removed at the provider
//! counts until the session ends (`--session-ttl`, 12 hours by default).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use tonic::Status;
use vpn_storage::state::State;

use crate::auth::identity::{AuthMethod, Identity};

/// What a session token starts with: `vpnst1.<claims>.<mac>`, both base64url.
pub const PREFIX: &str = "vpnst1.";
/// Longest token a node reads (claims with many groups stay well below).
const MAX_TOKEN: usize = 16 * 1024;

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    principal: String,
    method: AuthMethod,
    groups: Vec<String>,
    /// Milliseconds since the Unix epoch.
    expires_at_ms: i64,
    /// The principal's revocation count at the login (`Access::session_epochs`).
    #[serde(default)]
    epoch: u64,
}

fn key(hex: &str) -> Option<ring::hmac::Key> {
    let bytes = hex::decode(hex).ok().filter(|b| b.len() == 32)?;
    Some(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &bytes))
}

/// A fresh session key (256 random bits, hex): the leader's first one, and
/// each rotation.
pub fn new_key() -> String {
    let key: [u8; 32] = rand::random();
    hex::encode(key)
}

/// A session token for `identity` (its source is not kept), valid until
/// `expires_at_ms` or until its principal's sessions are revoked.
pub fn issue(state: &State, identity: &Identity, expires_at_ms: i64) -> Option<String> {
    let key = key(state.access.session_key.as_deref()?)?;
    let claims = Claims {
        principal: identity.principal.clone(),
        method: identity.method,
        groups: identity.groups.clone(),
        expires_at_ms,
        epoch: state.access.session_epoch(&identity.principal),
    };
    let claims = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).ok()?);
    let mac = URL_SAFE_NO_PAD.encode(ring::hmac::sign(&key, claims.as_bytes()));
    Some(format!("{PREFIX}{claims}.{mac}"))
}

/// The identity a session token proves, at `now_ms`. Every way it fails
/// gets one answer but expiry, which tells the holder to log in again.
pub fn identity(token: &str, state: &State, now_ms: i64, source: String) -> Result<Identity, Status> {
    let refused = || Status::unauthenticated("the session token is not valid here: log in again (vpnctl login)");
    if token.len() > MAX_TOKEN {
        return Err(refused());
    }
    let (claims, mac) = token.strip_prefix(PREFIX).and_then(|t| t.split_once('.')).ok_or_else(refused)?;
    let key = state.access.session_key.as_deref().and_then(key).ok_or_else(refused)?;
    let mac = URL_SAFE_NO_PAD.decode(mac).map_err(|_| refused())?;
    ring::hmac::verify(&key, claims.as_bytes(), &mac).map_err(|_| refused())?;
    let claims: Claims =
        URL_SAFE_NO_PAD.decode(claims).ok().and_then(|json| serde_json::from_slice(&json).ok()).ok_or_else(refused)?;
    if claims.expires_at_ms <= now_ms {
        return Err(Status::unauthenticated(format!(
            "the session of {} has expired: log in again (vpnctl login)",
            claims.principal
        )));
    }
    if !matches!(claims.method, AuthMethod::Ldap | AuthMethod::Oidc) {
        return Err(refused());
    }
    if claims.epoch < state.access.session_epoch(&claims.principal) {
        return Err(Status::unauthenticated(format!(
            "the sessions of {} were revoked: log in again (vpnctl login)",
            claims.principal
        )));
    }
    Ok(Identity { principal: claims.principal, method: claims.method, groups: claims.groups, source })
}

#[cfg(test)]
mod tests {
    use vpn_storage::access::AccessCommand;
    use vpn_storage::command::{apply, Command};

    use super::*;

    const KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    fn state(key: &str) -> State {
        let mut state = State::default();
        apply(&mut state, &Command::Access(AccessCommand::SetSessionKey { hex: key.into() }));
        state
    }

    fn bob() -> Identity {
        Identity {
            principal: "ldap:bob".into(),
            method: AuthMethod::Ldap,
            groups: vec!["ldap:vpn-operators".into()],
            source: "10.0.0.1:1".into(),
        }
    }

    #[test]
    fn a_session_proves_its_login_on_every_node_until_it_expires() {
        let token = issue(&state(KEY), &bob(), 1_000).expect("token");
        let who = identity(&token, &state(KEY), 999, "10.0.0.2:2".into()).expect("valid");
        assert_eq!(
            (who.principal.as_str(), who.groups.as_slice()),
            ("ldap:bob", ["ldap:vpn-operators".to_owned()].as_slice())
        );
        assert_eq!(who.source, "10.0.0.2:2", "the caller's address, not the login's");
        let expired = identity(&token, &state(KEY), 1_000, String::new()).expect_err("expired");
        assert!(expired.message().contains("expired"), "{}", expired.message());
    }

    #[test]
    fn a_forged_or_foreign_session_is_refused() {
        let token = issue(&state(KEY), &bob(), 1_000).expect("token");
        let other = "ff".repeat(32);
        assert!(identity(&token, &state(&other), 0, String::new()).is_err(), "another cluster's key");
        assert!(identity(&token, &State::default(), 0, String::new()).is_err(), "no key yet");
        // Claims edited to name the admin keep the old MAC.
        let (_, mac) = token.rsplit_once('.').expect("mac");
        let mut admin = bob();
        admin.principal = "admin".into();
        let forged_claims = issue(&state(&other), &admin, 1_000).expect("token");
        let (claims, _) = forged_claims.rsplit_once('.').expect("claims");
        assert!(identity(&format!("{claims}.{mac}"), &state(KEY), 0, String::new()).is_err());
        assert!(identity("vpnst1.x.y", &state(KEY), 0, String::new()).is_err());
        assert!(identity(&"a".repeat(MAX_TOKEN + 1), &state(KEY), 0, String::new()).is_err());
    }

    #[test]
    fn revoking_a_principals_sessions_ends_those_issued_before_and_a_new_key_ends_all() {
        let mut state = state(KEY);
        let before = issue(&state, &bob(), 1_000).expect("token");
        let mut alice = bob();
        alice.principal = "ldap:alice".into();
        let alices = issue(&state, &alice, 1_000).expect("token");
        let revoke = AccessCommand::RevokeSessions { principal: "ldap:bob".into() };
        apply(&mut state, &Command::Access(revoke));
        let refused = identity(&before, &state, 0, String::new()).expect_err("revoked");
        assert!(refused.message().contains("revoked"), "{}", refused.message());
        assert!(identity(&alices, &state, 0, String::new()).is_ok(), "another principal's session stays");
        let after = issue(&state, &bob(), 1_000).expect("token");
        assert!(identity(&after, &state, 0, String::new()).is_ok(), "a login after the revocation");

        apply(&mut state, &Command::Access(AccessCommand::RotateSessionKey { hex: "ee".repeat(32) }));
        for token in [&after, &alices] {
            assert!(identity(token, &state, 0, String::new()).is_err(), "a session signed with the old key");
        }
        assert!(identity(&issue(&state, &alice, 1_000).expect("token"), &state, 0, String::new()).is_ok());
    }
}
