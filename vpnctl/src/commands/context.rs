//! `vpnctl context list | use NAME`: named endpoints and credentials (the
//! file's format and place: `vpn_pki::contexts`). `vpnd --dev` adds one.
//! A context may hold an API token or a login session (`vpnctl login`); it is
//! never printed, and it is used only from a file nobody else can read.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde_json::json;
use vpn_pki::contexts::{default_path, Context, Contexts};

use crate::cli::ContextCommand;
use crate::error::CliError;
use crate::output::{table, Document};

pub fn run(command: ContextCommand) -> Result<Document, CliError> {
    let path = default_path().ok_or_else(no_home)?;
    let mut contexts = load(&path)?;
    match command {
        ContextCommand::List => {
            let current = contexts.current_context.clone().unwrap_or_default();
            let header = ["CURRENT", "NAME", "ENDPOINTS", "CERTIFICATE", "TOKEN"].map(String::from).to_vec();
            let mut rows = vec![header];
            let mut listed = Vec::new();
            for (name, c) in &contexts.contexts {
                let cert = c.cert.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "-".into());
                let mark = if *name == current { "*" } else { "" };
                // Whether there is one, never the secret.
                let token = if c.token.is_some() { "yes" } else { "-" };
                rows.push(vec![mark.into(), name.clone(), c.endpoints.join(","), cert, token.into()]);
                listed.push(json!({
                    "name": name,
                    "current": *name == current,
                    "endpoints": c.endpoints,
                    "ca_cert": c.ca_cert,
                    "cert": c.cert,
                    "key": c.key,
                    "has_token": c.token.is_some(),
                }));
            }
            Ok(Document { json: json!({ "contexts": listed }), table: table(&rows) })
        }
        ContextCommand::Use { name } => {
            if !contexts.contexts.contains_key(&name) {
                let known: Vec<&str> = contexts.contexts.keys().map(String::as_str).collect();
                return Err(CliError::NotFound(format!(
                    "no context {name:?} in {}: known are {known:?} (see `vpnctl context list`)",
                    path.display()
                )));
            }
            contexts.current_context = Some(name.clone());
            save(&contexts, &path)?;
            Ok(Document { json: json!({ "current_context": name }), table: format!("using context {name:?}") })
        }
    }
}

/// The context in use, if any (none when no file exists).
pub fn current() -> Result<Option<Context>, CliError> {
    let Some(path) = default_path() else { return Ok(None) };
    let contexts = load(&path)?;
    let Some((_, context)) = contexts.current() else { return Ok(None) };
    if context.token.is_some() {
        private(&path)?;
    }
    Ok(Some(context.clone()))
}

/// Refuses a token others could have read (as ssh refuses such a key): it is
/// no longer a secret, and the fix is one command.
fn private(path: &Path) -> Result<(), CliError> {
    let mode = std::fs::metadata(path).map(|m| m.permissions().mode() & 0o777);
    match mode {
        Ok(mode) if mode & 0o077 != 0 => Err(CliError::InvalidInput(format!(
            "{path} holds an API token but others may read it (mode {mode:o}): run `chmod 600 {path}`, \
             and revoke the token if someone else could have copied it",
            path = path.display()
        ))),
        Ok(_) => Ok(()),
        Err(e) => Err(CliError::InvalidInput(format!("cannot read {}: {e}", path.display()))),
    }
}

/// The contexts in `path` (none when it does not exist).
pub(crate) fn load(path: &Path) -> Result<Contexts, CliError> {
    Contexts::load(path).map_err(|e| CliError::InvalidInput(e.to_string()))
}

/// Writes `contexts` to `path`, 0600.
pub(crate) fn save(contexts: &Contexts, path: &Path) -> Result<(), CliError> {
    contexts.save(path).map_err(|e| CliError::InvalidInput(e.to_string()))
}

pub(crate) fn no_home() -> CliError {
    CliError::InvalidInput("no place for contexts: set VPNCTL_CONFIG or HOME".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_used_only_from_a_private_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.toml");
        std::fs::write(&path, "token = 'x'").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert!(private(&path).is_ok());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        let err = private(&path).err();
        assert_eq!(err.as_ref().map(CliError::exit_code), Some(2));
        let text = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(text.contains("(mode 640): run `chmod 600 "), "{text}");
    }
}
