//! Who is calling: the principal behind a public RPC, from an API token, a
//! client certificate, or the report of the control-plane node that
//! forwarded the call; and what that principal may do, read from the
//! replicated roles and bindings.

use base64::Engine;
use serde::{Deserialize, Serialize};
use tonic::Status;
use vpn_storage::access::{ApiToken, Permissions};
use vpn_storage::state::State;

/// How a principal proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMethod {
    Certificate,
    Token,
    /// A session from an LDAP login.
    Ldap,
    /// A session from an OIDC login.
    Oidc,
    /// No authentication: the node runs `--insecure`.
    None,
}

impl AuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::Certificate => "certificate",
            AuthMethod::Token => "token",
            AuthMethod::Ldap => "ldap",
            AuthMethod::Oidc => "oidc",
            AuthMethod::None => "none",
        }
    }
}

/// A principal as the cluster prints it, with its groups and where it
/// called from. What a forwarding node relays to the leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// "alice" (a client certificate), "token:NAME", "ldap:USER", "oidc:NAME", "insecure".
    pub principal: String,
    pub method: AuthMethod,
    #[serde(default)]
    pub groups: Vec<String>,
    /// The caller's address as the node that took the call saw it.
    pub source: String,
}

/// The header a forwarding control-plane node puts its caller's identity
/// in (base64url of JSON: names may be any text). Believed only from a
/// control-plane certificate.
pub const IDENTITY_HEADER: &str = "x-vpn-identity";

impl Identity {
    pub fn to_header(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
    }

    pub fn from_header(value: &str) -> Result<Self, String> {
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(value)
            .map_err(|e| format!("{IDENTITY_HEADER} is not base64url: {e}"))?;
        serde_json::from_slice(&json).map_err(|e| format!("{IDENTITY_HEADER} is not an identity: {e}"))
    }

    /// What the principal may do by `state`, at `now_ms`. A token is read
    /// again here (a forwarded call's leader checks it has not been revoked
    /// or expired meanwhile); its secret was checked where the call came in.
    pub fn permissions(&self, state: &State, now_ms: i64) -> Result<Permissions, Status> {
        match self.method {
            AuthMethod::None => Ok(Permissions::all()),
            AuthMethod::Token => {
                let token = self.principal.strip_prefix(TOKEN_PRINCIPAL).and_then(|n| state.access.api_tokens.get(n));
                let token = live(token, now_ms)?;
                Ok(state.access.role(&token.role).unwrap_or(Permissions::NONE))
            }
            AuthMethod::Certificate | AuthMethod::Ldap | AuthMethod::Oidc => {
                Ok(state.access.permissions_of(&self.principal, &self.groups))
            }
        }
    }

    /// The roles the principal holds by `state`.
    pub fn roles(&self, state: &State) -> Vec<String> {
        match self.method {
            AuthMethod::None => vec!["admin".to_owned()],
            AuthMethod::Token => self
                .principal
                .strip_prefix(TOKEN_PRINCIPAL)
                .and_then(|n| state.access.api_tokens.get(n))
                .map(|t| vec![t.role.clone()])
                .unwrap_or_default(),
            AuthMethod::Certificate | AuthMethod::Ldap | AuthMethod::Oidc => {
                state.access.roles_of(&self.principal, &self.groups)
            }
        }
    }
}

/// What an API token's principal is printed as: `token:NAME`.
pub const TOKEN_PRINCIPAL: &str = "token:";

/// The text of an API token: `vpnat1.NAME.SECRET`, the secret 64 hex digits
/// (256 random bits). The name is the public half: it finds the record in
/// one lookup, and the secret's hash is then compared.
const TOKEN_PREFIX: &str = "vpnat1.";

/// A new token for `name`: its text (shown once) and the SHA-256 of its secret (kept).
pub fn new_api_token(name: &str) -> (String, String) {
    let secret: [u8; 32] = rand::random();
    let secret = hex::encode(secret);
    (format!("{TOKEN_PREFIX}{name}.{secret}"), vpn_pki::digest(secret.as_bytes()))
}

/// The identity an `authorization: Bearer` credential proves at `now_ms`:
/// a login session or an API token.
pub fn bearer_identity(bearer: &str, state: &State, now_ms: i64, source: String) -> Result<Identity, Status> {
    if bearer.starts_with(crate::login::session::PREFIX) {
        crate::login::session::identity(bearer, state, now_ms, source)
    } else {
        token_identity(bearer, state, now_ms, source)
    }
}

/// The identity an `authorization: Bearer` API token proves, checked
/// against `state` at `now_ms`. Every way it fails gets one answer.
pub fn token_identity(bearer: &str, state: &State, now_ms: i64, source: String) -> Result<Identity, Status> {
    let refused = || {
        Status::unauthenticated("the API token is unknown, revoked or expired: ask for another (vpnctl token create)")
    };
    let (name, secret) =
        bearer.strip_prefix(TOKEN_PREFIX).and_then(|rest| rest.rsplit_once('.')).ok_or_else(refused)?;
    let token = live(state.access.api_tokens.get(name), now_ms).map_err(|_| refused())?;
    if !same(vpn_pki::digest(secret.as_bytes()).as_bytes(), token.secret_sha256.as_bytes()) {
        return Err(refused());
    }
    Ok(Identity {
        principal: format!("{TOKEN_PRINCIPAL}{name}"),
        method: AuthMethod::Token,
        groups: Vec::new(),
        source,
    })
}

fn live(token: Option<&ApiToken>, now_ms: i64) -> Result<&ApiToken, Status> {
    match token {
        Some(token) if token.expires_at_ms > now_ms => Ok(token),
        Some(token) => Err(Status::unauthenticated(format!("API token {:?} has expired: ask for another", token.name))),
        None => Err(Status::unauthenticated("the API token is unknown or revoked: ask for another")),
    }
}

/// Compares in time that depends only on the lengths.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use vpn_storage::access::{AccessCommand, Permission};
    use vpn_storage::command::{apply, Command};

    use super::*;

    fn state_with_token(name: &str, role: &str, expires_at_ms: i64) -> (State, String) {
        let mut state = State::default();
        let (text, secret_sha256) = new_api_token(name);
        let token = ApiToken {
            name: name.into(),
            role: role.into(),
            secret_sha256,
            created_at_ms: 0,
            expires_at_ms,
            created_by: "admin".into(),
        };
        apply(&mut state, &Command::Access(AccessCommand::CreateApiToken(token)));
        (state, text)
    }

    #[test]
    fn a_token_proves_its_principal_until_it_expires_or_is_revoked() {
        let (mut state, text) = state_with_token("billing-bot", "operator", 1_000);
        let who = token_identity(&text, &state, 10, "127.0.0.1:5".into()).expect("valid");
        assert_eq!(who.principal, "token:billing-bot");
        let operator = who.permissions(&state, 10).expect("live");
        assert!(operator.contains(Permission::UsersWrite) && !operator.contains(Permission::MembersWrite));
        assert_eq!(who.roles(&state), ["operator"]);

        let expired = token_identity(&text, &state, 1_000, String::new()).expect_err("expired");
        assert_eq!(expired.code(), tonic::Code::Unauthenticated);
        assert!(who.permissions(&state, 1_000).is_err(), "a forwarded call's leader checks expiry too");

        let forged = format!("{}0", &text[..text.len() - 1]);
        let forged = if forged == text { format!("{}1", &text[..text.len() - 1]) } else { forged };
        assert!(token_identity(&forged, &state, 10, String::new()).is_err(), "another secret");
        assert!(token_identity("vpnat1.billing-bot", &state, 10, String::new()).is_err(), "no secret");
        assert!(token_identity("Bearer nonsense", &state, 10, String::new()).is_err());

        apply(&mut state, &Command::Access(AccessCommand::RevokeApiToken { name: "billing-bot".into() }));
        let revoked = token_identity(&text, &state, 10, String::new()).expect_err("revoked");
        assert!(!revoked.message().contains(&text[20..]), "the secret is never echoed");
        assert!(who.permissions(&state, 10).is_err());
    }

    #[test]
    fn an_identity_survives_the_forwarding_header() {
        let who = Identity {
            principal: "ldap:bøb".into(),
            method: AuthMethod::Certificate,
            groups: vec!["ops, eu".into()],
            source: "[::1]:5".into(),
        };
        let header = who.to_header();
        assert!(header.bytes().all(|b| b.is_ascii_graphic()), "{header}");
        assert_eq!(Identity::from_header(&header), Ok(who));
        assert!(Identity::from_header("!!").is_err());
    }
}
