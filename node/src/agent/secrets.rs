//! The data-plane node's own secrets, made on its first start and kept in
//! `<data-dir>/dataplane/` (mode 0600, never replicated): the TLS key (with a
//! self-signed certificate unless the operator gives one), the Reality x25519
//! private key and short id, and a Shadowsocks-2022 server key per inbound.
//! Only their public halves enter the replicated state. Existing secrets are
//! never replaced: client links depend on them.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use vpn_runtime::keys;
use vpn_storage::model::Protocol;

use crate::config::dataplane::{DataplaneConfig, TlsConfig};
use crate::error::Error;

const SECRETS: &str = "secrets.json";
const TLS_DIR: &str = "tls";

/// What `secrets.json` holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Stored {
    reality_private_key: Option<String>,
    reality_short_id: Option<String>,
    /// Per Shadowsocks-2022 inbound port.
    ss2022_server_keys: BTreeMap<u16, String>,
    /// The name the self-signed certificate in `tls/` was made for.
    self_signed_for: Option<String>,
}

/// The TLS material of the vless-tls inbound.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsMaterial {
    /// Absolute paths: the engine reads them.
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub server_name: String,
    /// SHA-256 of the leaf certificate (DER), lowercase hex.
    pub cert_sha256: String,
    pub self_signed: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RealityKeys {
    pub private_key: String,
    pub public_key: String,
    pub short_id: String,
}

/// The secrets the configured inbounds need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Secrets {
    pub tls: Option<TlsMaterial>,
    pub reality: Option<RealityKeys>,
    pub ss2022_server_keys: BTreeMap<u16, String>,
}

impl Secrets {
    /// Loads the secrets from `dir`, making the ones the configured inbounds
    /// still lack.
    pub fn load_or_create(dir: &Path, config: &DataplaneConfig) -> Result<Self, Error> {
        let dir = std::path::absolute(dir).map_err(|e| disk(dir, e))?;
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir).map_err(|e| disk(&dir, e))?;
        let path = dir.join(SECRETS);
        let mut stored: Stored = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| Error::DataDir {
                path: path.clone(),
                detail: format!("is corrupt ({e}): restore it from a backup; removing it makes new keys, and clients need new links"),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Stored::default(),
            Err(e) => return Err(disk(&path, e)),
        };
        let before = stored.clone();
        let mut secrets = Secrets { tls: None, reality: None, ss2022_server_keys: BTreeMap::new() };
        for inbound in &config.inbounds {
            match inbound.protocol {
                Protocol::Shadowsocks2022 => {
                    let key = stored.ss2022_server_keys.entry(inbound.port).or_insert_with(keys::generate_ss2022_key);
                    secrets.ss2022_server_keys.insert(inbound.port, key.clone());
                }
                Protocol::VlessReality => secrets.reality = Some(reality(&mut stored, &path)?),
                Protocol::VlessTls => {
                    let tls =
                        config.tls.as_ref().ok_or_else(|| Error::Internal("vless-tls without TLS settings".into()))?;
                    secrets.tls = Some(tls_material(&dir, tls, &mut stored)?);
                }
            }
        }
        if stored != before {
            let json =
                serde_json::to_vec_pretty(&stored).map_err(|e| Error::Internal(format!("encoding secrets: {e}")))?;
            write_private(&path, &json)?;
        }
        Ok(secrets)
    }
}

fn reality(stored: &mut Stored, path: &Path) -> Result<RealityKeys, Error> {
    let private_key =
        stored.reality_private_key.get_or_insert_with(|| keys::generate_reality_keypair().private_key).clone();
    let public_key = keys::reality_public_key(&private_key).map_err(|e| Error::DataDir {
        path: path.to_owned(),
        detail: format!("holds a bad Reality key ({e}): restore it from a backup"),
    })?;
    let short_id = stored.reality_short_id.get_or_insert_with(keys::generate_short_id).clone();
    Ok(RealityKeys { private_key, public_key, short_id })
}

/// The operator's certificate, or our self-signed one (made again only when
/// the server name changed or its files are gone).
fn tls_material(dir: &Path, tls: &TlsConfig, stored: &mut Stored) -> Result<TlsMaterial, Error> {
    let (cert_path, key_path, self_signed) = match &tls.files {
        Some((cert, key)) => {
            let abs = |flag: &'static str, p: &Path| {
                std::path::absolute(p).map_err(|e| Error::invalid(flag, &format!("{}: {e}", p.display())))
            };
            (abs("--tls-cert", cert)?, abs("--tls-key", key)?, false)
        }
        None => {
            let tls_dir = dir.join(TLS_DIR);
            let (cert, key) = (tls_dir.join("cert.pem"), tls_dir.join("key.pem"));
            let current = stored.self_signed_for.as_deref() == Some(tls.server_name.as_str());
            if !(current && cert.exists() && key.exists()) {
                let pair = vpn_runtime::tls::self_signed(&tls.server_name)
                    .map_err(|e| Error::Internal(format!("making a self-signed certificate: {e}")))?;
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&tls_dir)
                    .map_err(|e| disk(&tls_dir, e))?;
                write_private(&key, pair.key_pem.as_bytes())?;
                write_private(&cert, pair.cert_pem.as_bytes())?;
                stored.self_signed_for = Some(tls.server_name.clone());
                tracing::info!(server_name = %tls.server_name, "made a self-signed TLS certificate");
            }
            (cert, key, true)
        }
    };
    let cert_flag = if self_signed { None } else { Some("--tls-cert") };
    let pem = std::fs::read_to_string(&cert_path).map_err(|e| file_error(cert_flag, &cert_path, &e.to_string()))?;
    let der = first_certificate(&pem).ok_or_else(|| file_error(cert_flag, &cert_path, "holds no PEM certificate"))?;
    let key_flag = if self_signed { None } else { Some("--tls-key") };
    let key_pem = std::fs::read_to_string(&key_path).map_err(|e| file_error(key_flag, &key_path, &e.to_string()))?;
    if !key_pem.contains("PRIVATE KEY-----") {
        return Err(file_error(key_flag, &key_path, "holds no PEM private key"));
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, &der);
    let cert_sha256 = hex::encode(digest);
    Ok(TlsMaterial { cert_path, key_path, server_name: tls.server_name.clone(), cert_sha256, self_signed })
}

/// The DER bytes of the first certificate in a PEM bundle (the leaf).
fn first_certificate(pem: &str) -> Option<Vec<u8>> {
    let body = pem.split("-----BEGIN CERTIFICATE-----").nth(1)?.split("-----END CERTIFICATE-----").next()?;
    let b64: String = body.chars().filter(|c| !c.is_whitespace()).collect();
    base64::engine::general_purpose::STANDARD.decode(b64).ok().filter(|der| !der.is_empty())
}

/// Replaces `path` with `contents`, mode 0600: a temp file, fsync, rename,
/// fsync of the directory, so a crash leaves the old file or the new one.
pub(super) fn write_private(path: &Path, contents: &[u8]) -> Result<(), Error> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        match path.parent() {
            Some(dir) => std::fs::File::open(dir)?.sync_all(),
            None => Ok(()),
        }
    };
    write().map_err(|e| disk(path, e))
}

fn disk(path: &Path, e: std::io::Error) -> Error {
    Error::DataDir {
        path: path.to_owned(),
        detail: format!("{e}: make it writable by vpnd or choose another --data-dir"),
    }
}

/// A problem with a certificate or key file, naming the flag when the operator gave it.
fn file_error(flag: Option<&'static str>, path: &Path, detail: &str) -> Error {
    match flag {
        Some(flag) => Error::invalid(flag, &format!("{}: {detail}", path.display())),
        None => Error::DataDir { path: path.to_owned(), detail: format!("{detail}: remove it to make a new one") },
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::time::Duration;

    use super::*;
    use crate::config::dataplane::{InboundConfig, RealityConfig};

    fn config(tls: Option<TlsConfig>) -> DataplaneConfig {
        DataplaneConfig {
            public_host: "vpn.example.com".into(),
            inbounds: vec![
                InboundConfig { protocol: Protocol::VlessTls, port: 443 },
                InboundConfig { protocol: Protocol::Shadowsocks2022, port: 8388 },
                InboundConfig { protocol: Protocol::VlessReality, port: 8443 },
            ],
            engine_image: "img".into(),
            labels: BTreeMap::new(),
            capacity: 0,
            tls: tls.or(Some(TlsConfig { server_name: "vpn.example.com".into(), files: None })),
            reality: Some(RealityConfig {
                server_name: "www.example.org".into(),
                handshake_host: "www.example.org".into(),
                handshake_port: 443,
            }),
            resync: Duration::from_secs(10),
            docker_host: None,
            engine_drain: std::time::Duration::from_secs(3600),
            engine_max_generations: 8,
            nftables: vpn_runtime::NftablesUse::Auto,
        }
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).expect("metadata").permissions().mode() & 0o777
    }

    #[test]
    fn secrets_are_made_once_private_and_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dp = dir.path().join("dataplane");
        let first = Secrets::load_or_create(&dp, &config(None)).expect("create");
        let again = Secrets::load_or_create(&dp, &config(None)).expect("load");
        assert_eq!(first, again, "a restart keeps every secret");

        let tls = first.tls.as_ref().expect("tls");
        assert!(tls.self_signed && tls.cert_path.is_absolute());
        assert_eq!(tls.cert_sha256.len(), 64);
        let reality = first.reality.as_ref().expect("reality");
        assert_eq!(keys::reality_public_key(&reality.private_key).ok().as_ref(), Some(&reality.public_key));
        assert_eq!(first.ss2022_server_keys.len(), 1);
        for file in [dp.join(SECRETS), tls.cert_path.clone(), tls.key_path.clone()] {
            assert_eq!(mode(&file), 0o600, "{}", file.display());
        }
        assert_eq!(mode(&dp), 0o700);

        // A new server name makes a new certificate and keeps the other keys.
        let mut renamed = config(None);
        renamed.tls = Some(TlsConfig { server_name: "other.example.com".into(), files: None });
        let third = Secrets::load_or_create(&dp, &renamed).expect("rename");
        assert_ne!(third.tls.as_ref().map(|t| &t.cert_sha256), Some(&tls.cert_sha256));
        assert_eq!((third.reality, third.ss2022_server_keys), (first.reality, first.ss2022_server_keys));
    }

    #[test]
    fn operator_files_are_used_and_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pair = vpn_runtime::tls::self_signed("vpn.example.com").expect("pair");
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&cert, &pair.cert_pem).expect("write");
        std::fs::write(&key, &pair.key_pem).expect("write");
        let files =
            |c: &Path, k: &Path| TlsConfig { server_name: "vpn.example.com".into(), files: Some((c.into(), k.into())) };
        let secrets =
            Secrets::load_or_create(&dir.path().join("dp"), &config(Some(files(&cert, &key)))).expect("valid");
        let tls = secrets.tls.expect("tls");
        assert!(!tls.self_signed);
        assert_eq!(tls.cert_path, cert);
        let e =
            Secrets::load_or_create(&dir.path().join("dp"), &config(Some(files(&key, &key)))).expect_err("key as cert");
        assert!(e.to_string().starts_with("--tls-cert"), "{e}");
        let e =
            Secrets::load_or_create(&dir.path().join("dp"), &config(Some(files(&cert, &dir.path().join("missing")))))
                .expect_err("missing key");
        assert!(e.to_string().starts_with("--tls-key"), "{e}");
    }

    #[test]
    fn a_corrupt_secrets_file_is_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(SECRETS), b"{nope").expect("write");
        let e = Secrets::load_or_create(dir.path(), &config(None)).expect_err("corrupt");
        assert!(e.to_string().contains("corrupt"), "{e}");
    }
}
