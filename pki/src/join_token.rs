//! Join tokens, SwarmKit's model: `vpnj1-<CA digest>-<id>-<secret>`. The
//! digest (SHA-256 of the CA certificate, 64 hex) lets a new node check the
//! cluster it reaches before it sends anything; the id (16 hex) names the
//! token in lists and revocations; the secret (32 hex, 128 bits) proves the
//! token, and the cluster keeps only its SHA-256.

use crate::PkiError;

const PREFIX: &str = "vpnj1";

/// A token taken apart. Its `Debug` leaves the secret out.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub ca_digest: String,
    pub id: String,
    pub secret: String,
}

impl JoinToken {
    /// A new token for the CA with `ca_digest`.
    pub fn generate(ca_digest: &str) -> Result<Self, PkiError> {
        Ok(Self { ca_digest: ca_digest.to_owned(), id: random_hex(8)?, secret: random_hex(16)? })
    }

    /// Reads a token; the error says what is malformed, never the secret.
    pub fn parse(token: &str) -> Result<Self, PkiError> {
        let bad = |what: &str| {
            PkiError::invalid(
                "join token",
                format!("{what}: expected vpnj1-<64 hex>-<16 hex>-<32 hex>, as `vpnctl join-token create` prints"),
            )
        };
        let parts: Vec<&str> = token.trim().split('-').collect();
        let [prefix, digest, id, secret] = parts.as_slice() else { return Err(bad("not four parts")) };
        let hex =
            |s: &str, len: usize| s.len() == len && s.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase());
        if *prefix != PREFIX {
            return Err(bad("unknown version"));
        }
        if !hex(digest, 64) {
            return Err(bad("the CA digest is malformed"));
        }
        if !hex(id, 16) || !hex(secret, 32) {
            return Err(bad("the id or secret is malformed"));
        }
        Ok(Self { ca_digest: (*digest).to_owned(), id: (*id).to_owned(), secret: (*secret).to_owned() })
    }

    /// SHA-256 of the secret, hex: what the cluster stores and compares.
    pub fn secret_sha256(&self) -> String {
        crate::digest(self.secret.as_bytes())
    }
}

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinToken").field("ca_digest", &self.ca_digest).field("id", &self.id).finish_non_exhaustive()
    }
}

impl std::fmt::Display for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{PREFIX}-{}-{}-{}", self.ca_digest, self.id, self.secret)
    }
}

fn random_hex(bytes: usize) -> Result<String, PkiError> {
    let mut buf = vec![0u8; bytes];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut buf)
        .map_err(|_| PkiError::Issue("no randomness for a join token".into()))?;
    Ok(hex::encode(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_round_trips_and_malformed_ones_are_named() {
        let token = JoinToken::generate(&"ab".repeat(32)).expect("token");
        assert_eq!(JoinToken::parse(&token.to_string()).expect("parses"), token);
        assert_ne!(token.secret_sha256(), token.secret);
        let text = token.to_string();
        let short_digest = text.replacen(&"ab".repeat(32), "abcd", 1);
        let err = JoinToken::parse(&short_digest).expect_err("bad digest");
        assert!(err.to_string().contains("CA digest is malformed"), "{err}");
        assert!(!err.to_string().contains(&token.secret), "the secret stays out of errors");
        assert!(JoinToken::parse("hello").is_err());
        assert!(JoinToken::parse(&text.replace("vpnj1", "vpnj9")).is_err());
    }
}
