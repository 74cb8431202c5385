//! PEM files in, private files out. Errors name the file and say what to do.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use rustls_pki_types::pem::{PemObject, SectionKind};

use crate::PkiError;

/// The first PEM block labelled `label` in `path` (a key's label only has
/// to end with it, so "EC PRIVATE KEY" passes for "PRIVATE KEY"), as text and as DER.
pub fn read_pem(path: &Path, label: &str) -> Result<(String, Vec<u8>), PkiError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| PkiError::File { path: path.display().to_string(), detail: format!("cannot be read: {e}") })?;
    let der = pem_to_der(&text, label)
        .map_err(|detail| PkiError::File { path: path.display().to_string(), detail: detail.to_string() })?;
    Ok((text, der))
}

/// The first PEM block labelled `label` in `text`, as DER. Blocks are read
/// as rustls reads them (rustls-pki-types), which knows the labels TLS uses
/// (certificates, keys, CSRs, CRLs) and skips others.
pub fn pem_to_der(text: &str, label: &str) -> Result<Vec<u8>, &'static str> {
    let found = <(SectionKind, Vec<u8>)>::pem_slice_iter(text.as_bytes())
        .find_map(|block| block.ok().filter(|(kind, _)| section_label(*kind).ends_with(label)));
    match found {
        Some((_, der)) => Ok(der),
        None if label == "CERTIFICATE" => Err("holds no PEM certificate (-----BEGIN CERTIFICATE-----)"),
        None => Err("holds no PEM private key (-----BEGIN PRIVATE KEY-----)"),
    }
}

/// What follows `-----BEGIN ` for a kind of PEM block.
fn section_label(kind: SectionKind) -> &'static str {
    match kind {
        SectionKind::Certificate => "CERTIFICATE",
        SectionKind::PublicKey => "PUBLIC KEY",
        SectionKind::RsaPrivateKey => "RSA PRIVATE KEY",
        SectionKind::PrivateKey => "PRIVATE KEY",
        SectionKind::EcPrivateKey => "EC PRIVATE KEY",
        SectionKind::Crl => "X509 CRL",
        SectionKind::Csr => "CERTIFICATE REQUEST",
        SectionKind::EchConfigList => "ECHCONFIG",
        _ => "",
    }
}

/// Writes a new file readable by its owner only (0600). Never replaces an
/// existing file: losing a CA key to a typo is not recoverable.
pub fn write_private(path: &Path, contents: &[u8]) -> Result<(), PkiError> {
    write_new(path, contents, 0o600)
}

/// Writes a new file anyone may read (0644): certificates, which are public.
pub fn write_public(path: &Path, contents: &[u8]) -> Result<(), PkiError> {
    write_new(path, contents, 0o644)
}

fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), PkiError> {
    let fail = |detail: String| PkiError::File { path: path.display().to_string(), detail };
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            fail("already exists: remove it first, or write to another directory".into())
        } else {
            fail(format!("cannot be created: {e}"))
        }
    })?;
    // The umask may have narrowed the mode; never widened it.
    file.set_permissions(std::fs::Permissions::from_mode(mode)).map_err(|e| fail(e.to_string()))?;
    file.write_all(contents).and_then(|()| file.sync_all()).map_err(|e| fail(format!("cannot be written: {e}")))
}

/// Creates `dir` (and its parents) readable by its owner only, or narrows an
/// existing one to 0700.
pub fn private_dir(dir: &Path) -> Result<(), PkiError> {
    let fail = |detail: String| PkiError::File { path: dir.display().to_string(), detail };
    std::fs::create_dir_all(dir).map_err(|e| fail(format!("cannot be created: {e}")))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(|e| fail(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_files_are_0600_and_never_overwritten() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ca.key");
        write_private(&path, b"secret").expect("write");
        assert_eq!(std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777, 0o600);
        let again = write_private(&path, b"other").expect_err("exists");
        assert!(again.to_string().contains("already exists"), "{again}");
        assert_eq!(std::fs::read(&path).expect("read"), b"secret");
    }

    #[test]
    fn a_file_without_the_pem_block_is_named_with_what_it_lacks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("node.crt");
        write_public(&path, b"not pem at all").expect("write");
        let err = read_pem(&path, "CERTIFICATE").expect_err("no pem");
        assert!(err.to_string().contains("node.crt") && err.to_string().contains("no PEM certificate"), "{err}");
        let missing = read_pem(&dir.path().join("absent.crt"), "CERTIFICATE").expect_err("missing");
        assert!(missing.to_string().contains("absent.crt: cannot be read"), "{missing}");
    }
}
