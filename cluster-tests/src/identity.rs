//! Real identity servers for the login tests, started by the test in its own
//! temp dir on a free loopback port: OpenLDAP's `slapd` and the OIDC
//! provider `glewlwyd` (installed by `ops/scripts/identity-servers.sh`; the
//! scripts and what the directories hold: `ops/identity/README.md`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::net::free_port;

/// One server process; killed when dropped.
pub struct IdentityServer {
    child: Child,
    script: PathBuf,
    pub dir: PathBuf,
    pub port: u16,
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops/identity").join(name)
}

impl IdentityServer {
    /// Starts `ops/identity/<name>` (slapd.sh, oidc.sh) in `dir` and waits
    /// until it answers. Panics with the server's log if it does not.
    fn start(name: &str, dir: &Path) -> Self {
        let script = script(name);
        let port = free_port();
        let port_s = port.to_string();
        let dir_s = dir.to_str().expect("utf8 dir");
        let child = Command::new("bash")
            .arg(&script)
            .args(["run", dir_s, &port_s])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: {e}: run ops/scripts/identity-servers.sh"));
        let server = IdentityServer { child, script, dir: dir.to_owned(), port };
        let ready = server.run(&["wait", dir_s, &port_s, "30"]);
        assert!(
            ready.0,
            "{name} did not answer on port {port} (installed? ops/scripts/identity-servers.sh): {}",
            ready.1
        );
        server
    }

    /// slapd with the directory of `ops/identity/directory.ldif.in`.
    pub fn ldap(dir: &Path) -> Self {
        Self::start("slapd.sh", dir)
    }

    /// [`Self::ldap`], offering StartTLS with a certificate for 127.0.0.1
    /// from a CA of its own; that CA's certificate file back (for
    /// `--ldap-ca-file`): no system root trusts it.
    pub fn ldap_tls(dir: &Path) -> (Self, PathBuf) {
        let ca = vpn_pki::Ca::generate("LDAP test CA").expect("CA");
        let hosts = ["127.0.0.1".to_owned()];
        let lifetime = std::time::Duration::from_secs(3600);
        let issued = ca.issue_node(1, vpn_pki::Role::ControlPlane, &hosts, lifetime).expect("LDAP certificate");
        let tls = dir.join("tls");
        std::fs::create_dir_all(&tls).expect("mkdir tls");
        std::fs::write(tls.join("ca.crt"), ca.cert_pem()).expect("write ca.crt");
        std::fs::write(tls.join("server.crt"), &issued.cert_pem).expect("write server.crt");
        vpn_pki::files::write_private(&tls.join("server.key"), issued.key_pem.as_bytes()).expect("write server.key");
        (Self::start("slapd.sh", dir), tls.join("ca.crt"))
    }

    /// What the server logged so far (slapd: one line per operation).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("slapd.log")).unwrap_or_default()
    }

    /// glewlwyd with the users and clients of `ops/identity/glewlwyd-seed.sql`.
    pub fn oidc(dir: &Path) -> Self {
        Self::start("oidc.sh", dir)
    }

    /// Runs a command of the server's script: whether it succeeded, and its output.
    pub fn run(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new("bash").arg(&self.script).args(args).output().expect("run the identity script");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    }

    pub fn url(&self) -> String {
        format!("ldap://127.0.0.1:{}", self.port)
    }

    pub fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}/api/oidc", self.port)
    }

    /// An ID token for `user` from the provider's `instance` (`oidc`, or
    /// `oidc-short` for one that expires after a second), by the password
    /// grant of the confidential client `vpn-test`; `None` when refused.
    pub fn id_token(&self, instance: &str, user: &str, password: &str) -> Option<String> {
        let url = format!("http://127.0.0.1:{}/api/{instance}/token", self.port);
        let out = Command::new("curl")
            .args(["-s", "-u", "vpn-test:vpn-test-secret", "-d", "grant_type=password", "-d", "scope=openid"])
            .args(["-d", &format!("username={user}"), "-d", &format!("password={password}"), &url])
            .output()
            .expect("curl");
        let answer: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        answer["id_token"].as_str().map(str::to_owned)
    }
}

impl Drop for IdentityServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
