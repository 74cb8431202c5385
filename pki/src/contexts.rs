//! vpnctl's contexts, like a kubeconfig: named sets of endpoints and the
//! files of the credentials to reach them with, and the one in use. The file
//! is `$VPNCTL_CONFIG`, else `$XDG_CONFIG_HOME/vpnctl/config.toml`, else
//! `~/.config/vpnctl/config.toml`; it is written 0600, since a context may
//! hold an API token or a login session. `vpnd --dev` adds its own context
//! here; nothing ever replaces a context it did not write. `vpnctl login`
//! stores its session in the context it names (making it if need be) and
//! `vpnctl logout` takes it out again.
//!
//! ```toml
//! current-context = "dev"
//! [contexts.dev]
//! endpoints = ["127.0.0.1:7000"]
//! ca-cert = "/home/me/vpn-data/pki/ca.crt"
//! cert = "/home/me/vpn-data/pki/admin.crt"
//! key = "/home/me/vpn-data/pki/admin.key"
//!
//! [contexts.prod-bot]
//! endpoints = ["vpn1.example.com:7000", "vpn2.example.com:7000"]
//! ca-cert = "/etc/vpn/ca.crt"
//! token = "..."   # `vpnctl token create` printed it; no certificate needed
//!
//! [contexts.default]
//! endpoints = ["vpn1.example.com:7000"]
//! ca-cert = "/etc/vpn/ca.crt"
//! token = "vpnst1...."   # `vpnctl login --ldap alice` stored it; it expires
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::PkiError;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Contexts {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_context: Option<String>,
    #[serde(default)]
    pub contexts: BTreeMap<String, Context>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Context {
    pub endpoints: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// An API token or a login session sent instead of (or besides) a client
    /// certificate; absent in files written before tokens existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<ApiToken>,
}

/// An API token (`vpnctl token create`) or a login session (`vpnctl login`):
/// a bearer secret either way. Its `Debug` hides it, so a context or a command
/// line can be debug-printed without leaking it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ApiToken(String);

impl ApiToken {
    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for ApiToken {
    fn from(token: String) -> Self {
        Self(token)
    }
}

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiToken(<redacted>)")
    }
}

/// Where the contexts live (see the module doc); `None` without a home.
pub fn default_path() -> Option<PathBuf> {
    let var = |name| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    var("VPNCTL_CONFIG")
        .or_else(|| var("XDG_CONFIG_HOME").map(|d| d.join("vpnctl/config.toml")))
        .or_else(|| var("HOME").map(|h| h.join(".config/vpnctl/config.toml")))
}

impl Contexts {
    /// The file's contexts; none when it does not exist.
    pub fn load(path: &Path) -> Result<Self, PkiError> {
        let fail = |detail: String| PkiError::File { path: path.display().to_string(), detail };
        match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text).map_err(|e| fail(format!("is not a vpnctl config: {e}"))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(fail(format!("cannot be read: {e}"))),
        }
    }

    /// Writes the file whole (a temp file renamed over it), 0600.
    pub fn save(&self, path: &Path) -> Result<(), PkiError> {
        let fail = |detail: String| PkiError::File { path: path.display().to_string(), detail };
        let text = toml::to_string(self).map_err(|e| fail(e.to_string()))?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| fail(format!("its directory cannot be made: {e}")))?;
        }
        let tmp = path.with_extension("toml.tmp");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| fail(format!("cannot be written: {e}")))?;
        // `mode` applies only to a file it creates: a temp file left by a crash
        // keeps its old mode, and the file may hold a token.
        file.set_permissions(std::fs::Permissions::from_mode(0o600)).map_err(|e| fail(e.to_string()))?;
        file.write_all(text.as_bytes()).and_then(|()| file.sync_all()).map_err(|e| fail(e.to_string()))?;
        std::fs::rename(&tmp, path).map_err(|e| fail(format!("cannot be replaced: {e}")))
    }

    /// The context in use, with its name.
    pub fn current(&self) -> Option<(&str, &Context)> {
        let name = self.current_context.as_deref()?;
        self.contexts.get(name).map(|c| (name, c))
    }

    /// Adds `context` under `name`, or under `name-2`, `name-3`... when `name`
    /// holds another one; a context with the same key file is the same one
    /// (the same data dir) and is updated. Makes it current when no context
    /// is. Returns the name it got.
    pub fn add_own(&mut self, name: &str, context: Context) -> String {
        let taken_by_other = |n: &str| self.contexts.get(n).is_some_and(|c| c.key != context.key);
        let chosen = (1..)
            .map(|i| if i == 1 { name.to_owned() } else { format!("{name}-{i}") })
            .find(|n| !taken_by_other(n))
            .unwrap_or_else(|| name.to_owned());
        self.contexts.insert(chosen.clone(), context);
        if self.current().is_none() {
            self.current_context = Some(chosen.clone());
        }
        chosen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(key: &str) -> Context {
        Context { endpoints: vec!["127.0.0.1:7000".into()], key: Some(key.into()), ..Context::default() }
    }

    #[test]
    fn a_dev_context_never_replaces_another_and_becomes_current_only_when_none_is() {
        let mut contexts = Contexts::default();
        assert_eq!(contexts.add_own("dev", ctx("/a/admin.key")), "dev");
        assert_eq!(contexts.current_context.as_deref(), Some("dev"));
        assert_eq!(contexts.add_own("dev", ctx("/a/admin.key")), "dev", "the same data dir again");
        assert_eq!(contexts.add_own("dev", ctx("/b/admin.key")), "dev-2", "another data dir");
        assert_eq!(contexts.contexts["dev"].key.as_deref(), Some(Path::new("/a/admin.key")));
        assert_eq!(contexts.current_context.as_deref(), Some("dev"));
    }

    #[test]
    fn contexts_round_trip_through_a_private_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("vpnctl/config.toml");
        let mut contexts = Contexts::load(&path).expect("absent is empty");
        contexts.add_own("dev", ctx("/a/admin.key"));
        contexts.save(&path).expect("save");
        assert_eq!(Contexts::load(&path).expect("load"), contexts);
        assert_eq!(std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777, 0o600);
        std::fs::write(&path, "nonsense = [").expect("write");
        assert!(Contexts::load(&path).is_err_and(|e| e.to_string().contains("is not a vpnctl config")));
    }

    #[test]
    fn a_file_from_before_tokens_still_loads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.toml");
        let old = "current-context = \"dev\"\n[contexts.dev]\nendpoints = [\"127.0.0.1:7000\"]\n\
                   ca-cert = \"/p/ca.crt\"\ncert = \"/p/admin.crt\"\nkey = \"/p/admin.key\"\n";
        std::fs::write(&path, old).expect("write");
        let loaded = Contexts::load(&path).expect("an old file loads");
        let (name, context) = loaded.current().expect("current");
        assert_eq!((name, context.token.as_ref()), ("dev", None));
        assert_eq!(context.key.as_deref(), Some(Path::new("/p/admin.key")));
    }

    #[test]
    fn a_token_is_saved_0600_even_over_a_stale_temp_file_and_never_debug_printed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.toml");
        std::fs::write(path.with_extension("toml.tmp"), "left by a crash").expect("write");
        std::fs::set_permissions(path.with_extension("toml.tmp"), std::fs::Permissions::from_mode(0o644))
            .expect("chmod");
        let token = ApiToken::from("vpnt1-s3cr3t".to_owned());
        let context = Context { token: Some(token.clone()), ..ctx("/a/admin.key") };
        let mut contexts = Contexts::default();
        contexts.add_own("bot", context);
        contexts.save(&path).expect("save");
        assert_eq!(std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777, 0o600);
        assert!(std::fs::read_to_string(&path).expect("read").contains("token = \"vpnt1-s3cr3t\""));
        let loaded = Contexts::load(&path).expect("load");
        assert_eq!(loaded.current().and_then(|(_, c)| c.token.clone()), Some(token));
        assert!(!format!("{loaded:?}").contains("s3cr3t"), "{loaded:?}");
    }
}
