//! Key material the node makes for its inbounds: Reality x25519 keys
//! (base64url without padding, the form sing-box and clients use), the
//! Shadowsocks-2022 server key and Reality short ids.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use x25519_dalek::{PublicKey, StaticSecret};

use crate::RuntimeError;

/// A Reality key pair; the private key stays on the node, the public key is
/// what clients put in their links (`pbk=`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RealityKeypair {
    pub private_key: String,
    pub public_key: String,
}

/// A fresh x25519 key pair, like `sing-box generate reality-keypair`.
pub fn generate_reality_keypair() -> RealityKeypair {
    let secret = StaticSecret::from(rand::random::<[u8; 32]>());
    let public = PublicKey::from(&secret);
    RealityKeypair {
        private_key: URL_SAFE_NO_PAD.encode(secret.to_bytes()),
        public_key: URL_SAFE_NO_PAD.encode(public.as_bytes()),
    }
}

/// The public key clients need for a Reality private key.
pub fn reality_public_key(private_key: &str) -> Result<String, RuntimeError> {
    let secret = StaticSecret::from(decode_x25519(private_key)?);
    Ok(URL_SAFE_NO_PAD.encode(PublicKey::from(&secret).as_bytes()))
}

/// Decodes a base64url (no padding) x25519 key of exactly 32 bytes.
pub(crate) fn decode_x25519(key: &str) -> Result<[u8; 32], RuntimeError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(key)
        .map_err(|e| RuntimeError::invalid("reality.private_key", format!("not base64url without padding: {e}")))?;
    <[u8; 32]>::try_from(bytes.as_slice())
        .map_err(|_| RuntimeError::invalid("reality.private_key", format!("{} bytes, want 32", bytes.len())))
}

/// A Shadowsocks-2022 key for 2022-blake3-aes-128-gcm: 16 random bytes, standard base64.
pub fn generate_ss2022_key() -> String {
    STANDARD.encode(rand::random::<[u8; 16]>())
}

/// True when `key` is standard base64 of exactly 16 bytes.
pub(crate) fn is_ss2022_key(key: &str) -> bool {
    STANDARD.decode(key).is_ok_and(|b| b.len() == 16)
}

/// A Reality short id: 8 random bytes as 16 hex digits.
pub fn generate_short_id() -> String {
    hex::encode(rand::random::<[u8; 8]>())
}

/// A random token for engine APIs (the clash API's bearer secret).
pub(crate) fn random_secret() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex32(s: &str) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("test vector is hex");
        }
        out
    }

    #[test]
    fn public_key_matches_rfc7748_vector() {
        // RFC 7748 section 6.1, Alice's key pair.
        let private = hex32("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a");
        let public = hex32("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a");
        let derived = reality_public_key(&URL_SAFE_NO_PAD.encode(private)).expect("valid key");
        assert_eq!(derived, URL_SAFE_NO_PAD.encode(public));
    }

    /// (f) The pair in sing-box's TLS docs: the inbound's `reality.private_key`
    /// and the outbound's (client's) `reality.public_key`.
    #[test]
    fn the_documented_sing_box_pair_round_trips() {
        let public = reality_public_key("UuMBgl7MXTPx9inmQp2UC7Jcnwc6XYbwDNebonM-FCc").expect("valid key");
        assert_eq!(public, "jNXHt1yRo0vDuchQlIP6Z0ZvjT3KtzVI-T4E7RoLJS0");
    }

    #[test]
    fn generated_pairs_round_trip() {
        for _ in 0..20 {
            let pair = generate_reality_keypair();
            assert_eq!(pair.private_key.len(), 43, "32 bytes base64url without padding");
            assert!(!pair.private_key.contains('='));
            assert_eq!(reality_public_key(&pair.private_key).expect("own key"), pair.public_key);
        }
    }

    #[test]
    fn bad_keys_are_refused_with_the_field_named() {
        for bad in ["", "abc", "not base64 !!", &URL_SAFE_NO_PAD.encode([1u8; 31])] {
            let err = reality_public_key(bad).expect_err(bad).to_string();
            assert!(err.contains("reality.private_key"), "{err}");
        }
    }

    #[test]
    fn ss2022_keys_are_16_bytes() {
        let key = generate_ss2022_key();
        assert!(is_ss2022_key(&key));
        assert!(!is_ss2022_key(&STANDARD.encode([0u8; 32])));
        assert!(!is_ss2022_key("%%%"));
        assert_eq!(generate_short_id().len(), 16);
    }
}
