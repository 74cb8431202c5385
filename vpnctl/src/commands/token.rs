//! `vpnctl token create | list | revoke`: API tokens, the credential of programs and
//! operators without a client certificate (`vpnctl --token`, `VPNCTL_TOKEN`). The cluster keeps
//! only a hash, so `create` is the one time the secret is printed.

use serde_json::{json, Value};
use time::OffsetDateTime;
use vpn_proto::v1::{ApiTokenInfo, ApiTokenSecret, CreateApiTokenRequest, ListApiTokensRequest, RevokeApiTokenRequest};

use crate::cli::TokenCommand;
use crate::client::Client;
use crate::error::CliError;
use crate::human;
use crate::output::{table, Document};

/// Runs one `token` subcommand.
pub async fn run(command: TokenCommand, client: &mut Client) -> Result<Document, CliError> {
    match command {
        TokenCommand::Create { name, role, ttl } => {
            // 0 asks for the server's default lifetime.
            let req = CreateApiTokenRequest { name: name.clone(), role, ttl_seconds: ttl.map_or(0, |t| t.as_secs()) };
            let secret =
                client.access(req, |mut c, req| async move { c.create_api_token(req).await }).await.map_err(|err| {
                    match err {
                        CliError::AlreadyExists(_) => CliError::AlreadyExists(format!(
                            "an API token named '{name}' exists already; pick another name (`vpnctl token list` \
                             shows them)"
                        )),
                        other => other,
                    }
                })?;
            Ok(created(&secret))
        }
        TokenCommand::List => {
            let reply = client
                .access(ListApiTokensRequest {}, |mut c, req| async move { c.list_api_tokens(req).await })
                .await?;
            let listed: Vec<Value> = reply.tokens.iter().map(info_json).collect();
            let table = tokens_table(&reply.tokens, OffsetDateTime::now_utc());
            Ok(Document { json: json!({ "tokens": listed }), table })
        }
        TokenCommand::Revoke { name } => {
            let req = RevokeApiTokenRequest { name: name.clone() };
            let info =
                client.access(req, |mut c, req| async move { c.revoke_api_token(req).await }).await.map_err(|err| {
                    match err {
                        CliError::NotFound(_) => {
                            CliError::NotFound(format!("no API token named '{name}'; `vpnctl token list` lists them"))
                        }
                        other => other,
                    }
                })?;
            let table = format!("revoked API token '{name}': requests carrying it now fail as unauthenticated");
            Ok(Document { json: info_json(&info), table })
        }
    }
}

/// The secret alone in table mode, so `export VPNCTL_TOKEN=$(vpnctl token create ...)` works.
fn created(secret: &ApiTokenSecret) -> Document {
    let json = json!({
        "name": secret.name,
        "role": secret.role,
        "token": secret.token,
        "expires_at": secret.expires_at,
    });
    Document { json, table: secret.token.clone() }
}

/// A token as `list` and `revoke` print it: everything but the secret, which the cluster
/// does not have.
fn info_json(t: &ApiTokenInfo) -> Value {
    json!({
        "name": t.name,
        "role": t.role,
        "created_at": t.created_at,
        "expires_at": t.expires_at,
        "created_by": t.created_by,
    })
}

/// `token list` for people: expiry relative (how long it still works), creation absolute.
fn tokens_table(tokens: &[ApiTokenInfo], now: OffsetDateTime) -> String {
    if tokens.is_empty() {
        return "no API tokens yet; make one with `vpnctl token create --name NAME --role ROLE`".into();
    }
    let header = ["NAME", "ROLE", "EXPIRES", "CREATED-BY", "CREATED"].map(String::from).to_vec();
    let rows = tokens.iter().map(|t| {
        let expires =
            if t.expires_at.is_empty() { "never".into() } else { human::relative_rfc3339(&t.expires_at, now) };
        let by = if t.created_by.is_empty() { "-".into() } else { t.created_by.clone() };
        vec![t.name.clone(), t.role.clone(), expires, by, t.created_at.clone()]
    });
    table(&std::iter::once(header).chain(rows).collect::<Vec<_>>())
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;
    use crate::output::{Format, Output};

    const NOW: OffsetDateTime = datetime!(2026-03-10 12:00 UTC);

    fn bot() -> ApiTokenInfo {
        ApiTokenInfo {
            name: "billing-bot".into(),
            role: "viewer".into(),
            created_at: "2026-03-01T12:00:00Z".into(),
            expires_at: "2026-05-30T12:00:00Z".into(),
            created_by: "admin".into(),
        }
    }

    #[test]
    fn create_prints_the_secret_alone_and_json_has_the_contract_fields() {
        let secret = ApiTokenSecret {
            name: "ci".into(),
            role: "operator".into(),
            token: "vpnt1.c2VjcmV0".into(),
            expires_at: "2026-04-09T12:00:00Z".into(),
        };
        let doc = created(&secret);
        let expected =
            json!({"name": "ci", "role": "operator", "token": "vpnt1.c2VjcmV0", "expires_at": "2026-04-09T12:00:00Z"});
        assert_eq!(doc.json, expected);
        assert_eq!(Output::Document(doc).render(Format::Table), "vpnt1.c2VjcmV0\n");
    }

    #[test]
    fn list_json_has_the_contract_shape() {
        let expected = json!({
            "name": "billing-bot",
            "role": "viewer",
            "created_at": "2026-03-01T12:00:00Z",
            "expires_at": "2026-05-30T12:00:00Z",
            "created_by": "admin",
        });
        assert_eq!(info_json(&bot()), expected);
    }

    #[test]
    fn list_table_shows_how_long_tokens_still_work() {
        let ci = ApiTokenInfo {
            name: "ci".into(),
            expires_at: "2026-03-10T15:00:00Z".into(),
            created_by: String::new(),
            ..bot()
        };
        assert_eq!(
            tokens_table(&[bot(), ci], NOW),
            "NAME         ROLE    EXPIRES     CREATED-BY  CREATED\n\
             billing-bot  viewer  in 81 days  admin       2026-03-01T12:00:00Z\n\
             ci           viewer  in 3 hours  -           2026-03-01T12:00:00Z"
        );
        assert!(tokens_table(&[], NOW).starts_with("no API tokens yet"));
    }
}
