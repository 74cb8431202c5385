//! A self-signed certificate for VLESS over TLS when the operator gives none.
//! The key is made on the node and never leaves it.

use std::path::Path;

use crate::{RuntimeError, TlsFiles};

/// A certificate and its private key, both PEM.
#[derive(Clone, Debug)]
pub struct SelfSigned {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A self-signed ECDSA P-256 certificate whose subject alternative name is `server_name`.
pub fn self_signed(server_name: &str) -> Result<SelfSigned, RuntimeError> {
    let certified = rcgen::generate_simple_self_signed(vec![server_name.to_string()])?;
    Ok(SelfSigned { cert_pem: certified.cert.pem(), key_pem: certified.signing_key.serialize_pem() })
}

/// Writes a fresh self-signed pair as `cert.pem` and `key.pem` (mode 0600) into `dir`.
pub fn write_self_signed(dir: &Path, server_name: &str) -> Result<TlsFiles, RuntimeError> {
    let pair = self_signed(server_name)?;
    std::fs::create_dir_all(dir).map_err(|e| RuntimeError::io("create", dir, e))?;
    let files = TlsFiles {
        cert_path: dir.join("cert.pem"),
        key_path: dir.join("key.pem"),
        server_name: server_name.to_string(),
    };
    crate::fsutil::write_atomic(&files.cert_path, pair.cert_pem.as_bytes(), false)?;
    crate::fsutil::write_atomic(&files.key_path, pair.key_pem.as_bytes(), true)?;
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_pem_pair_with_a_private_key_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = write_self_signed(dir.path(), "vpn.example.test").expect("cert");
        let cert = std::fs::read_to_string(&files.cert_path).expect("cert file");
        let key = std::fs::read_to_string(&files.key_path).expect("key file");
        assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(key.contains("PRIVATE KEY-----"));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&files.key_path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
