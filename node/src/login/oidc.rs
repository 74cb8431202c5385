//! OIDC logins: an ID token the provider issued for the cluster's audience,
//! checked here — signature (RS256 or ES256, with the provider's published
//! keys), `iss`, `aud`, `exp` and `nbf` with a small leeway — becomes the
//! principal `oidc:<username claim>` with the groups of the groups claim.
//!
//! The discovery document and the key set are fetched on first use and
//! cached; a token signed with a key id the cache does not hold makes the
//! node fetch the key set again (a key rotation at the provider needs no
//! restart), at most once every [`REFRESH_EVERY`] so forged key ids cannot
//! make it hammer the provider.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::Value;
use tokio::sync::Mutex;

use super::{fetch, LoginError};
use crate::auth::identity::{AuthMethod, Identity};

const REFRESH_EVERY: Duration = Duration::from_secs(5);
/// Longest ID token read.
const MAX_TOKEN: usize = 16 * 1024;

/// `--oidc-*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcConfig {
    pub issuer: String,
    pub audience: String,
    pub groups_claim: String,
    pub username_claim: String,
    /// Clock difference tolerated on `exp` and `nbf`.
    pub leeway: Duration,
    /// `--oidc-insecure`: an `http://` issuer.
    pub allow_http: bool,
}

/// A public key of the provider's key set.
enum Key {
    Rsa(ring::signature::RsaPublicKeyComponents<Vec<u8>>),
    /// An uncompressed P-256 point.
    P256(Vec<u8>),
}

#[derive(Default)]
struct Cache {
    jwks_uri: Option<String>,
    keys: HashMap<String, Arc<Key>>,
    fetched: Option<Instant>,
}

pub struct Oidc {
    config: OidcConfig,
    roots: Arc<rustls::RootCertStore>,
    cache: Mutex<Cache>,
}

impl Oidc {
    pub fn new(config: OidcConfig) -> Self {
        let mut roots = rustls::RootCertStore::empty();
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        Oidc { config, roots: Arc::new(roots), cache: Mutex::default() }
    }

    pub fn config(&self) -> &OidcConfig {
        &self.config
    }

    /// The identity an ID token proves at `now` (seconds since the epoch).
    pub async fn verify(&self, token: &str, now: i64) -> Result<Identity, LoginError> {
        let refused = |why: &str| LoginError::Refused(format!("the ID token is not valid: {why}"));
        if token.len() > MAX_TOKEN {
            return Err(refused("too long"));
        }
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(refused("not a JWT (header.payload.signature)"));
        };
        let header = decode_json(header).ok_or_else(|| refused("unreadable header"))?;
        let alg = header["alg"].as_str().unwrap_or_default();
        if alg != "RS256" && alg != "ES256" {
            return Err(refused(&format!("algorithm {alg:?}: RS256 or ES256 only")));
        }
        let kid = header["kid"].as_str().unwrap_or_default().to_owned();
        let key = self.key(&kid).await?.ok_or_else(|| refused(&format!("no key {kid:?} in the provider's key set")))?;
        let signed = &token[..header_len(token)];
        let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| refused("unreadable signature"))?;
        let verified = match (&*key, alg) {
            (Key::Rsa(rsa), "RS256") => {
                rsa.verify(&ring::signature::RSA_PKCS1_2048_8192_SHA256, signed.as_bytes(), &signature)
            }
            (Key::P256(point), "ES256") => {
                ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_FIXED, point)
                    .verify(signed.as_bytes(), &signature)
            }
            _ => return Err(refused(&format!("key {kid:?} is not a key for {alg}"))),
        };
        verified.map_err(|_| refused("bad signature"))?;
        let claims = decode_json(payload).ok_or_else(|| refused("unreadable claims"))?;
        self.check_claims(&claims, now).map_err(|why| refused(&why))?;
        let name = claims[&self.config.username_claim]
            .as_str()
            .filter(|n| !n.is_empty() && n.len() <= 256 && !n.chars().any(char::is_control))
            .ok_or_else(|| refused(&format!("no usable {:?} claim", self.config.username_claim)))?;
        let groups = match &claims[&self.config.groups_claim] {
            Value::Array(list) => list.iter().filter_map(Value::as_str).map(|g| format!("oidc:{g}")).collect(),
            Value::String(one) => vec![format!("oidc:{one}")],
            _ => Vec::new(),
        };
        Ok(Identity { principal: format!("oidc:{name}"), method: AuthMethod::Oidc, groups, source: String::new() })
    }

    fn check_claims(&self, claims: &Value, now: i64) -> Result<(), String> {
        let leeway = i64::try_from(self.config.leeway.as_secs()).unwrap_or(i64::MAX);
        if claims["iss"].as_str() != Some(self.config.issuer.as_str()) {
            return Err(format!("issuer {} is not {}", claims["iss"], self.config.issuer));
        }
        let audience = &self.config.audience;
        let for_us = match &claims["aud"] {
            Value::String(aud) => aud == audience,
            Value::Array(list) => list.iter().any(|a| a.as_str() == Some(audience)),
            _ => false,
        };
        if !for_us {
            return Err(format!("audience {} does not name {audience}", claims["aud"]));
        }
        let exp = claims["exp"].as_i64().ok_or("no exp claim")?;
        if exp.saturating_add(leeway) <= now {
            return Err("expired: log in at the provider again".into());
        }
        if let Some(nbf) = claims["nbf"].as_i64() {
            if nbf.saturating_sub(leeway) > now {
                return Err("not valid yet (nbf)".into());
            }
        }
        Ok(())
    }

    /// The key `kid`, fetching the key set when it is not cached (at most
    /// once every `REFRESH_EVERY`).
    async fn key(&self, kid: &str) -> Result<Option<Arc<Key>>, LoginError> {
        let mut cache = self.cache.lock().await;
        if let Some(key) = cache.keys.get(kid) {
            return Ok(Some(key.clone()));
        }
        if cache.fetched.is_some_and(|at| at.elapsed() < REFRESH_EVERY) {
            return Ok(None);
        }
        cache.fetched = Some(Instant::now());
        let unavailable = |e: String| LoginError::Unavailable(format!("the OIDC provider: {e}"));
        let jwks_uri = match cache.jwks_uri.clone() {
            Some(uri) => uri,
            None => {
                let issuer = self.config.issuer.trim_end_matches('/');
                let discovery = format!("{issuer}/.well-known/openid-configuration");
                let doc = fetch::json(&discovery, self.config.allow_http, &self.roots).await.map_err(unavailable)?;
                if doc["issuer"].as_str() != Some(self.config.issuer.as_str()) {
                    return Err(unavailable(format!("its discovery document names issuer {}", doc["issuer"])));
                }
                let uri = doc["jwks_uri"].as_str().ok_or_else(|| unavailable("no jwks_uri".into()))?.to_owned();
                cache.jwks_uri = Some(uri.clone());
                uri
            }
        };
        let set = fetch::json(&jwks_uri, self.config.allow_http, &self.roots).await.map_err(unavailable)?;
        cache.keys = parse_keys(&set);
        tracing::info!(keys = cache.keys.len(), "fetched the OIDC provider's keys");
        Ok(cache.keys.get(kid).cloned())
    }
}

/// The RSA and P-256 signing keys of a JWKS, by key id.
fn parse_keys(set: &Value) -> HashMap<String, Arc<Key>> {
    let mut keys = HashMap::new();
    for jwk in set["keys"].as_array().into_iter().flatten() {
        if jwk["use"].as_str().is_some_and(|u| u != "sig") {
            continue;
        }
        let field = |name: &str| jwk[name].as_str().and_then(|v| URL_SAFE_NO_PAD.decode(v).ok());
        let key = match jwk["kty"].as_str() {
            Some("RSA") => {
                field("n").zip(field("e")).map(|(n, e)| Key::Rsa(ring::signature::RsaPublicKeyComponents { n, e }))
            }
            Some("EC") if jwk["crv"].as_str() == Some("P-256") => field("x").zip(field("y")).map(|(x, y)| {
                let mut point = vec![4u8];
                point.extend(x);
                point.extend(y);
                Key::P256(point)
            }),
            _ => None,
        };
        if let Some(key) = key {
            keys.insert(jwk["kid"].as_str().unwrap_or_default().to_owned(), Arc::new(key));
        }
    }
    keys
}

fn decode_json(part: &str) -> Option<Value> {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).ok()?).ok()
}

/// The length of `header.payload`, the signed part.
fn header_len(token: &str) -> usize {
    token.rfind('.').unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
    use serde_json::json;

    use super::*;

    fn config() -> OidcConfig {
        OidcConfig {
            issuer: "https://idp.example".into(),
            audience: "vpn".into(),
            groups_claim: "groups".into(),
            username_claim: "email".into(),
            leeway: Duration::from_secs(30),
            allow_http: false,
        }
    }

    /// An ES256 token over `claims` signed by `key`, and an Oidc whose cache holds the key as `kid`.
    fn signed(key: &EcdsaKeyPair, kid: &str, alg: &str, claims: Value) -> String {
        let header = URL_SAFE_NO_PAD.encode(json!({"alg": alg, "kid": kid}).to_string());
        let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
        let signed = format!("{header}.{payload}");
        let sig = key.sign(&SystemRandom::new(), signed.as_bytes()).expect("sign");
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }

    fn keypair() -> EcdsaKeyPair {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("key");
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).expect("key")
    }

    async fn oidc_with(key: &EcdsaKeyPair, kid: &str) -> Oidc {
        let oidc = Oidc::new(config());
        let mut cache = oidc.cache.lock().await;
        cache.keys.insert(kid.into(), Arc::new(Key::P256(key.public_key().as_ref().to_vec())));
        cache.fetched = Some(Instant::now());
        drop(cache);
        oidc
    }

    fn claims(exp: i64) -> Value {
        json!({"iss": "https://idp.example", "aud": ["vpn", "other"], "exp": exp, "email": "carol@example.com", "groups": ["ops"]})
    }

    #[tokio::test]
    async fn a_token_for_our_audience_signed_by_a_known_key_logs_in_with_its_groups() {
        let key = keypair();
        let oidc = oidc_with(&key, "k1").await;
        let who = oidc.verify(&signed(&key, "k1", "ES256", claims(1_000)), 900).await.expect("valid");
        assert_eq!(
            (who.principal.as_str(), who.groups.as_slice()),
            ("oidc:carol@example.com", ["oidc:ops".to_owned()].as_slice())
        );
        assert!(oidc.verify(&signed(&key, "k1", "ES256", claims(1_000)), 1_029).await.is_ok(), "within the leeway");
    }

    #[tokio::test]
    async fn every_bad_token_is_refused() {
        let key = keypair();
        let oidc = oidc_with(&key, "k1").await;
        let refused = |r: Result<Identity, LoginError>| matches!(r, Err(LoginError::Refused(_)));
        assert!(refused(oidc.verify(&signed(&key, "k1", "ES256", claims(1_000)), 1_031).await), "expired");
        let mut wrong_aud = claims(1_000);
        wrong_aud["aud"] = json!("someone-else");
        assert!(refused(oidc.verify(&signed(&key, "k1", "ES256", wrong_aud), 900).await), "audience");
        let mut wrong_iss = claims(1_000);
        wrong_iss["iss"] = json!("https://evil.example");
        assert!(refused(oidc.verify(&signed(&key, "k1", "ES256", wrong_iss), 900).await), "issuer");
        let mut early = claims(1_000);
        early["nbf"] = json!(990);
        assert!(refused(oidc.verify(&signed(&key, "k1", "ES256", early), 900).await), "nbf");
        let other = keypair();
        assert!(refused(oidc.verify(&signed(&other, "k1", "ES256", claims(1_000)), 900).await), "another key");
        assert!(refused(oidc.verify(&signed(&key, "k1", "none", claims(1_000)), 900).await), "alg none");
        assert!(refused(oidc.verify(&signed(&key, "k1", "HS256", claims(1_000)), 900).await), "alg HS256");
        assert!(
            refused(oidc.verify(&signed(&key, "k2", "ES256", claims(1_000)), 900).await),
            "unknown kid, no refetch yet"
        );
        let token = signed(&key, "k1", "ES256", claims(1_000));
        let (head, _) = token.rsplit_once('.').expect("sig");
        assert!(refused(oidc.verify(head, 900).await), "no signature");
        assert!(refused(oidc.verify("garbage", 900).await));
    }

    #[test]
    fn key_sets_keep_rsa_and_p256_signing_keys() {
        let set = json!({"keys": [
            {"kty": "RSA", "kid": "r", "n": "AQAB", "e": "AQAB"},
            {"kty": "EC", "crv": "P-256", "kid": "e", "x": "AQ", "y": "Ag"},
            {"kty": "EC", "crv": "P-384", "kid": "big", "x": "AQ", "y": "Ag"},
            {"kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB"}
        ]});
        let mut kids: Vec<String> = parse_keys(&set).into_keys().collect();
        kids.sort();
        assert_eq!(kids, ["e", "r"]);
    }
}
