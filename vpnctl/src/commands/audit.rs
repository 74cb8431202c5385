//! `vpnctl audit list`: the audit log, newest first, fetched page by page until the log or
//! `--limit` ends. The filters are the server's; vpnctl only passes them on.

use serde_json::{json, Value};
use tonic::Code;
use vpn_proto::v1::{AuditRecord, ListAuditRequest};

use crate::cli::{AuditCommand, AuditListArgs};
use crate::client::Client;
use crate::error::CliError;
use crate::output::{table, Document};

/// The largest page the server allows; fewer round trips for a long log.
const PAGE_SIZE: u32 = 1000;

/// Runs one `audit` subcommand.
pub async fn run(command: AuditCommand, client: &mut Client) -> Result<Document, CliError> {
    match command {
        AuditCommand::List(args) => list(client, &args).await,
    }
}

async fn list(client: &mut Client, args: &AuditListArgs) -> Result<Document, CliError> {
    let limit = args.limit.map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX));
    let mut records: Vec<AuditRecord> = Vec::new();
    let mut page_token = String::new();
    while records.len() < limit {
        // No more than --limit still needs: a short list costs one small page.
        let wanted = u32::try_from(limit - records.len()).unwrap_or(PAGE_SIZE).min(PAGE_SIZE);
        let req = request(args, wanted, &page_token);
        let page = client.access(req, |mut c, req| async move { c.list_audit(req).await }).await?;
        records.extend(page.records);
        if page.next_page_token.is_empty() {
            break;
        }
        // A server that hands back the token it was given would make us loop forever.
        if page.next_page_token == page_token {
            return Err(CliError::Server {
                code: Code::Internal,
                message: "ListAudit returned the same page token twice (a server bug)".into(),
            });
        }
        page_token = page.next_page_token;
    }
    records.truncate(limit);
    Ok(Document {
        json: json!({ "records": records.iter().map(record_json).collect::<Vec<_>>() }),
        table: records_table(&records, filtered(args)),
    })
}

/// One page's request: the filters, unset ones at the API's "everything".
fn request(args: &AuditListArgs, page_size: u32, page_token: &str) -> ListAuditRequest {
    ListAuditRequest {
        since_seconds: args.since.map_or(0, |since| since.as_secs()),
        principal: args.principal.clone().unwrap_or_default(),
        method: args.method.clone().unwrap_or_default(),
        page_size,
        page_token: page_token.to_owned(),
        ..Default::default()
    }
}

fn filtered(args: &AuditListArgs) -> bool {
    args.since.is_some() || args.principal.is_some() || args.method.is_some()
}

/// A record as scripts see it: the API's fields as they are.
fn record_json(r: &AuditRecord) -> Value {
    json!({
        "time": r.time,
        "principal": r.principal,
        "authenticated_by": r.authenticated_by,
        "source": r.source,
        "method": r.method,
        "target": r.target,
        "summary": r.summary,
        "outcome": r.outcome,
        "seq": r.seq,
    })
}

/// `audit list` for people: when (absolute, to match with logs), who, what, on what, result.
fn records_table(records: &[AuditRecord], filtered: bool) -> String {
    if records.is_empty() {
        return if filtered { "no audit records match these filters".into() } else { "no audit records yet".into() };
    }
    let header = ["TIME", "PRINCIPAL", "METHOD", "TARGET", "OUTCOME"].map(String::from).to_vec();
    let rows = records
        .iter()
        .map(|r| vec![r.time.clone(), r.principal.clone(), r.method.clone(), r.target.clone(), r.outcome.clone()]);
    table(&std::iter::once(header).chain(rows).collect::<Vec<_>>())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn record() -> AuditRecord {
        AuditRecord {
            time: "2026-03-10T11:58:00Z".into(),
            principal: "token:billing-bot".into(),
            authenticated_by: "token".into(),
            source: "10.0.0.7:51234".into(),
            method: "CreateUser".into(),
            target: "user alice".into(),
            summary: "name=alice data_limit=50GiB".into(),
            outcome: "ok".into(),
            seq: 42,
        }
    }

    fn args() -> AuditListArgs {
        AuditListArgs { since: None, principal: None, method: None, limit: None }
    }

    #[test]
    fn record_json_has_the_contract_shape() {
        let expected = json!({
            "time": "2026-03-10T11:58:00Z",
            "principal": "token:billing-bot",
            "authenticated_by": "token",
            "source": "10.0.0.7:51234",
            "method": "CreateUser",
            "target": "user alice",
            "summary": "name=alice data_limit=50GiB",
            "outcome": "ok",
            "seq": 42,
        });
        assert_eq!(record_json(&record()), expected);
    }

    #[test]
    fn requests_carry_the_filters_and_the_page() {
        let filters = AuditListArgs {
            since: Some(Duration::from_secs(3600)),
            principal: Some("alice".into()),
            method: Some("DeleteUser".into()),
            limit: Some(5),
        };
        let expected = ListAuditRequest {
            since_seconds: 3600,
            principal: "alice".into(),
            method: "DeleteUser".into(),
            page_size: 5,
            page_token: "p2".into(),
            ..Default::default()
        };
        assert_eq!(request(&filters, 5, "p2"), expected);
        assert_eq!(request(&args(), PAGE_SIZE, ""), ListAuditRequest { page_size: 1000, ..Default::default() });
    }

    #[test]
    fn table_has_one_row_per_record() {
        let refused = AuditRecord {
            principal: "alice".into(),
            method: "DeleteRole".into(),
            target: "role admin".into(),
            outcome: "refused: built-in roles stay".into(),
            ..record()
        };
        assert_eq!(
            records_table(&[record(), refused], false),
            "TIME                  PRINCIPAL          METHOD      TARGET      OUTCOME\n\
             2026-03-10T11:58:00Z  token:billing-bot  CreateUser  user alice  ok\n\
             2026-03-10T11:58:00Z  alice              DeleteRole  role admin  refused: built-in roles stay"
        );
        assert_eq!(records_table(&[], false), "no audit records yet");
        assert_eq!(records_table(&[], filtered(&AuditListArgs { limit: Some(1), ..args() })), "no audit records yet");
        let since = AuditListArgs { since: Some(Duration::from_secs(60)), ..args() };
        assert_eq!(records_table(&[], filtered(&since)), "no audit records match these filters");
    }
}
