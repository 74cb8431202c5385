//! `vpnctl context list | use NAME`: named endpoints and credentials (the
//! file's format and place: `vpn_pki::contexts`). `vpnd --dev` adds one.

use serde_json::json;
use vpn_pki::contexts::{default_path, Context, Contexts};

use crate::cli::ContextCommand;
use crate::error::CliError;
use crate::output::{table, Document};

pub fn run(command: ContextCommand) -> Result<Document, CliError> {
    let path = default_path().ok_or_else(no_home)?;
    let mut contexts = Contexts::load(&path).map_err(|e| CliError::InvalidInput(e.to_string()))?;
    match command {
        ContextCommand::List => {
            let current = contexts.current_context.clone().unwrap_or_default();
            let mut rows = vec![vec!["CURRENT".into(), "NAME".into(), "ENDPOINTS".into(), "CERTIFICATE".into()]];
            let mut listed = Vec::new();
            for (name, c) in &contexts.contexts {
                let cert = c.cert.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "-".into());
                let mark = if *name == current { "*" } else { "" };
                rows.push(vec![mark.into(), name.clone(), c.endpoints.join(","), cert]);
                listed.push(json!({
                    "name": name,
                    "current": *name == current,
                    "endpoints": c.endpoints,
                    "ca_cert": c.ca_cert,
                    "cert": c.cert,
                    "key": c.key,
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
            contexts.save(&path).map_err(|e| CliError::InvalidInput(e.to_string()))?;
            Ok(Document { json: json!({ "current_context": name }), table: format!("using context {name:?}") })
        }
    }
}

/// The context in use, if any (none when no file exists).
pub fn current() -> Result<Option<Context>, CliError> {
    let Some(path) = default_path() else { return Ok(None) };
    let contexts = Contexts::load(&path).map_err(|e| CliError::InvalidInput(e.to_string()))?;
    Ok(contexts.current().map(|(_, c)| c.clone()))
}

fn no_home() -> CliError {
    CliError::InvalidInput("no place for contexts: set VPNCTL_CONFIG or HOME".into())
}
