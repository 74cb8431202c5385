//! `vpnctl pki init | node-cert | client-cert`: the cluster's CA and the
//! certificates it issues, made offline on the operator's machine (as
//! CockroachDB's `cockroach cert` and Consul's `consul tls` do). Nothing here
//! talks to a node. Private keys are written 0600 and never over an existing file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;
use vpn_pki::files::{private_dir, write_private, write_public};
use vpn_pki::{Ca, Issued, PkiError, Role};

use crate::cli::PkiCommand;
use crate::error::CliError;
use crate::output::Document;

/// The principal of the first client certificate `pki init` makes.
pub const ADMIN: &str = "admin";

pub fn run(command: PkiCommand) -> Result<Document, CliError> {
    let written = match command {
        PkiCommand::Init { out } => init(&out)?,
        PkiCommand::NodeCert { ca, id, host, role, days, out } => {
            let ca_dir = ca;
            let ca = load_ca(&ca_dir)?;
            let issued = ca.issue_node(id, role.parse::<Role>().map_err(bad)?, &host, lifetime(days)).map_err(bad)?;
            write_issued(&out, "node", &issued, &ca)?
        }
        PkiCommand::ClientCert { ca, name, days, out } => {
            let ca = load_ca(&ca)?;
            let issued = ca.issue_client(&name, lifetime(days)).map_err(bad)?;
            write_issued(&out, &name, &issued, &ca)?
        }
    };
    let table = written.iter().map(|p| format!("wrote {}", p.display())).collect::<Vec<_>>().join("\n");
    let files: Vec<String> = written.iter().map(|p| p.display().to_string()).collect();
    Ok(Document { json: json!({ "files": files }), table })
}

fn init(out: &Path) -> Result<Vec<PathBuf>, CliError> {
    private_dir(out).map_err(bad)?;
    let ca = Ca::generate("vpn cluster CA").map_err(other)?;
    let (cert, key) = (out.join("ca.crt"), out.join("ca.key"));
    // The key first: a directory that already holds a CA stops here, untouched.
    write_private(&key, ca.key_pem().as_bytes()).map_err(bad)?;
    write_public(&cert, ca.cert_pem().as_bytes()).map_err(bad)?;
    let admin = ca.issue_client(ADMIN, vpn_pki::ca::CLIENT_LIFETIME).map_err(other)?;
    let mut written = vec![cert, key];
    written.extend(write_pair(out, ADMIN, &admin)?);
    Ok(written)
}

fn load_ca(dir: &Path) -> Result<Ca, CliError> {
    Ca::load(&dir.join("ca.crt"), &dir.join("ca.key")).map_err(|e| {
        CliError::InvalidInput(format!("--ca {}: {e} (the directory `vpnctl pki init --out` wrote)", dir.display()))
    })
}

/// `<name>.crt`, `<name>.key` and the CA's certificate, into `out`.
fn write_issued(out: &Path, name: &str, issued: &Issued, ca: &Ca) -> Result<Vec<PathBuf>, CliError> {
    private_dir(out).map_err(bad)?;
    let mut written = write_pair(out, name, issued)?;
    let ca_cert = out.join("ca.crt");
    match std::fs::read_to_string(&ca_cert) {
        Ok(existing) if existing == ca.cert_pem() => {}
        _ => {
            write_public(&ca_cert, ca.cert_pem().as_bytes()).map_err(bad)?;
            written.push(ca_cert);
        }
    }
    Ok(written)
}

fn write_pair(out: &Path, name: &str, issued: &Issued) -> Result<Vec<PathBuf>, CliError> {
    let (cert, key) = (out.join(format!("{name}.crt")), out.join(format!("{name}.key")));
    write_private(&key, issued.key_pem.as_bytes()).map_err(bad)?;
    write_public(&cert, issued.cert_pem.as_bytes()).map_err(bad)?;
    Ok(vec![cert, key])
}

fn lifetime(days: u32) -> Duration {
    Duration::from_secs(u64::from(days) * 24 * 3600)
}

fn bad(e: PkiError) -> CliError {
    CliError::InvalidInput(e.to_string())
}

fn other(e: PkiError) -> CliError {
    CliError::Server { code: tonic::Code::Internal, message: e.to_string() }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).expect("meta").permissions().mode() & 0o777
    }

    #[test]
    fn init_then_node_and_client_certificates_from_the_same_ca() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_dir = dir.path().join("ca");
        run(PkiCommand::Init { out: ca_dir.clone() }).expect("init");
        assert_eq!(mode(&ca_dir.join("ca.key")), 0o600);
        assert_eq!(mode(&ca_dir.join("admin.key")), 0o600);
        let ca = Ca::load(&ca_dir.join("ca.crt"), &ca_dir.join("ca.key")).expect("ca");
        let (_, admin) = vpn_pki::files::read_pem(&ca_dir.join("admin.crt"), "CERTIFICATE").expect("admin");
        assert_eq!(ca.verify(&admin).expect("admin verifies").principal.to_string(), "client admin");

        let node_dir = dir.path().join("n2");
        let node = PkiCommand::NodeCert {
            ca: ca_dir.clone(),
            id: 2,
            host: vec!["10.0.0.2".into(), "n2.example.com".into()],
            role: "controlplane".into(),
            days: 90,
            out: node_dir.clone(),
        };
        run(node).expect("node-cert");
        let (_, der) = vpn_pki::files::read_pem(&node_dir.join("node.crt"), "CERTIFICATE").expect("node");
        assert_eq!(ca.verify(&der).expect("node verifies").principal.to_string(), "node 2 (controlplane)");
        assert_eq!(std::fs::read(node_dir.join("ca.crt")).expect("ca copy"), ca.cert_pem().as_bytes());
        assert_eq!(mode(&node_dir.join("node.key")), 0o600);

        let again = run(PkiCommand::Init { out: ca_dir.clone() }).expect_err("a CA is never overwritten");
        assert!(again.to_string().contains("already exists"), "{again}");
        assert_eq!(Ca::load(&ca_dir.join("ca.crt"), &ca_dir.join("ca.key")).expect("ca").digest(), ca.digest());
    }

    #[test]
    fn bad_input_names_the_flag_and_writes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = PkiCommand::ClientCert {
            ca: dir.path().join("nope"),
            name: "alice".into(),
            days: 30,
            out: dir.path().join("alice"),
        };
        let err = run(missing).expect_err("no CA");
        assert!(matches!(&err, CliError::InvalidInput(m) if m.starts_with("--ca ")), "{err}");
        assert!(!dir.path().join("alice").exists());

        run(PkiCommand::Init { out: dir.path().join("ca") }).expect("init");
        let bad_role = PkiCommand::NodeCert {
            ca: dir.path().join("ca"),
            id: 4,
            host: vec![],
            role: "boss".into(),
            days: 90,
            out: dir.path().join("n4"),
        };
        let err = run(bad_role).expect_err("bad role");
        assert!(matches!(&err, CliError::InvalidInput(m) if m.starts_with("role:")), "{err}");
        assert!(!dir.path().join("n4").exists());
    }
}
