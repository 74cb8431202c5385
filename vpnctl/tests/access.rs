//! What the access-control commands send and print, and that the API token rides on every
//! call, against the fake `vpn.v1.Access` server of `support` (TLS on port 0).

mod support;

use clap::Parser;
use serde_json::{json, Value};
use support::{seen, serve, Call, Fake, Served};
use tonic::Code;
use vpn_proto::v1::*;
use vpnctl::{Cli, CliError, Format, Output};

const SECRET: &str = "vpnt1.s3cr3t-f00d";

/// Runs `vpnctl --endpoints <addr> --ca-cert <ca> <args>` (a bare endpoint: TLS); returns the
/// JSON and the table it would print.
async fn vpnctl(served: &Served, args: &[&str]) -> Result<(Value, String), CliError> {
    let argv = ["vpnctl", "--endpoints", &served.addr, "--ca-cert", &served.ca_cert].into_iter();
    let cli = Cli::try_parse_from(argv.chain(args.iter().copied())).expect("valid command line");
    let output = vpnctl::execute(cli).await?;
    let table = output.render(Format::Table);
    match output {
        Output::Document(document) => Ok((document.json, table)),
        Output::Raw(text) => panic!("expected a document, got {text}"),
    }
}

fn calls(fake: &Fake) -> Vec<Call> {
    fake.calls.lock().map(|calls| calls.clone()).unwrap_or_default()
}

#[tokio::test]
async fn every_call_and_every_retry_carries_the_bearer_token() {
    let served = serve(Fake { unavailable_first: 2, ..Default::default() }).await;
    let (json, table) = vpnctl(&served, &["--token", SECRET, "whoami"]).await.expect("whoami");
    let expected = json!({
        "principal": "token:ci",
        "authenticated_by": "token",
        "groups": [],
        "roles": ["viewer"],
        "permissions": ["users.read", "nodes.read"],
    });
    assert_eq!(json, expected);
    assert!(table.starts_with("Principal:         token:ci\n"), "{table}");
    let bearer = Some(format!("Bearer {SECRET}"));
    assert_eq!(seen(&served.fake), [bearer.clone(), bearer.clone(), bearer], "two retries and the answer");

    let served = serve(Fake::default()).await;
    vpnctl(&served, &["whoami"]).await.expect("whoami without a token");
    assert_eq!(seen(&served.fake), [None], "no token, no header");
}

#[tokio::test]
async fn refusals_exit_5_and_6_say_what_to_do_and_never_quote_the_token() {
    for (code, exit, hint) in [(Code::Unauthenticated, 5, "--token"), (Code::PermissionDenied, 6, "`vpnctl whoami`")] {
        let served = serve(Fake { refuse: Some(code), ..Default::default() }).await;
        let err = vpnctl(&served, &["--token", SECRET, "whoami"]).await.expect_err("refused");
        assert_eq!(err.exit_code(), exit, "{code:?}");
        let shown = format!("{err} {err:?}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(shown.contains("credential \"Bearer <token>\" refused") && shown.contains(hint), "{shown}");
    }
}

#[tokio::test]
async fn token_commands_send_what_was_given_and_create_prints_the_secret_alone() {
    let served = serve(Fake::default()).await;
    let args = ["--token", SECRET, "token", "create", "--name", "ci", "--role", "operator", "--ttl", "30d"];
    let (json, table) = vpnctl(&served, &args).await.expect("create");
    assert_eq!(table, "vpnt1.new-secret\n");
    let expected =
        json!({"name": "ci", "role": "operator", "token": "vpnt1.new-secret", "expires_at": "2026-04-09T12:00:00Z"});
    assert_eq!(json, expected);
    vpnctl(&served, &["token", "create", "--name", "bot", "--role", "viewer"])
        .await
        .expect("create with the default ttl");
    let (json, _) = vpnctl(&served, &["token", "list"]).await.expect("list");
    assert_eq!(json["tokens"][0]["created_by"], "admin");
    let (json, table) = vpnctl(&served, &["token", "revoke", "billing-bot"]).await.expect("revoke");
    assert_eq!(json["name"], "billing-bot");
    assert!(table.starts_with("revoked API token 'billing-bot'"), "{table}");
    let err = vpnctl(&served, &["token", "revoke", "nope"]).await.expect_err("unknown token");
    assert_eq!(err.exit_code(), 3);
    assert!(err.to_string().contains("`vpnctl token list`"), "{err}");
    let create = |name: &str, role: &str, ttl_seconds| {
        Call::CreateToken(CreateApiTokenRequest { name: name.into(), role: role.into(), ttl_seconds })
    };
    assert_eq!(
        calls(&served.fake),
        [
            create("ci", "operator", 30 * 86_400),
            create("bot", "viewer", 0),
            Call::RevokeToken("billing-bot".into()),
            Call::RevokeToken("nope".into())
        ]
    );
}

#[tokio::test]
async fn role_commands_send_what_was_given() {
    let served = serve(Fake::default()).await;
    let args = ["role", "create", "support", "--permissions", "users.read,users.secrets,users.read"];
    let (json, _) = vpnctl(&served, &args).await.expect("create");
    assert_eq!(json["permissions"], json!(["users.read", "users.secrets"]));
    let (json, table) = vpnctl(&served, &["role", "bind", "viewer", "--user", "token:ci"]).await.expect("bind");
    assert_eq!(json["users"], json!(["token:ci"]));
    assert!(table.starts_with("bound user 'token:ci' to role 'viewer'\n"), "{table}");
    vpnctl(&served, &["role", "unbind", "viewer", "--group", "ldap:ops"]).await.expect("unbind");
    let (json, _) = vpnctl(&served, &["role", "list"]).await.expect("list");
    assert_eq!(
        json["roles"][0],
        json!({"name": "viewer", "builtin": true, "permissions": ["users.read", "nodes.read"], "users": ["alice"], "groups": []})
    );
    let (json, _) = vpnctl(&served, &["role", "show", "viewer"]).await.expect("show");
    assert_eq!(json["name"], "viewer");
    let err = vpnctl(&served, &["role", "show", "nope"]).await.expect_err("unknown role");
    assert_eq!(err.exit_code(), 3);
    assert!(err.to_string().starts_with("role 'nope' does not exist"), "{err}");
    let binding =
        |user: &str, group: &str| BindRoleRequest { role: "viewer".into(), user: user.into(), group: group.into() };
    assert_eq!(
        calls(&served.fake),
        [
            Call::CreateRole(CreateRoleRequest {
                name: "support".into(),
                permissions: vec!["users.read".into(), "users.secrets".into()]
            }),
            Call::Bind(binding("token:ci", "")),
            Call::Unbind(binding("", "ldap:ops")),
        ]
    );
}

#[tokio::test]
async fn session_revoke_names_one_principal_or_all() {
    let served = serve(Fake::default()).await;
    let (json, table) = vpnctl(&served, &["session", "revoke", "--user", "ldap:bob"]).await.expect("one");
    assert_eq!(json, json!({"principal": "ldap:bob", "all": false}));
    assert!(table.starts_with("revoked every session of ldap:bob"), "{table}");
    let (json, _) = vpnctl(&served, &["session", "revoke", "--all"]).await.expect("all");
    assert_eq!(json["all"], true);
    let request = |principal: &str, all| RevokeSessionsRequest { principal: principal.into(), all };
    assert_eq!(
        calls(&served.fake),
        [Call::RevokeSessions(request("ldap:bob", false)), Call::RevokeSessions(request("", true))]
    );
    for args in [&["session", "revoke"][..], &["session", "revoke", "--user", "ldap:bob", "--all"]] {
        let argv = ["vpnctl"].into_iter().chain(args.iter().copied());
        assert!(Cli::try_parse_from(argv).is_err(), "{args:?}: exactly one of --user and --all");
    }
}

#[tokio::test]
async fn audit_list_follows_the_pages_up_to_the_limit() {
    let served = serve(Fake { audit_records: 5, ..Default::default() }).await;
    let (json, _) = vpnctl(&served, &["audit", "list"]).await.expect("all");
    let seqs: Vec<u64> =
        json["records"].as_array().map(|r| r.iter().filter_map(|r| r["seq"].as_u64()).collect()).unwrap_or_default();
    assert_eq!(seqs, [5, 4, 3, 2, 1]);
    let sizes = |fake: &Fake| fake.page_sizes.lock().map(|s| s.clone()).unwrap_or_default();
    assert_eq!(sizes(&served.fake), [1000, 1000, 1000]);

    let served = serve(Fake { audit_records: 5, ..Default::default() }).await;
    let (json, table) = vpnctl(&served, &["audit", "list", "--limit", "3", "--since", "1h"]).await.expect("limited");
    assert_eq!(json["records"].as_array().map(Vec::len), Some(3), "cut at --limit though the page had more");
    assert_eq!(table.lines().count(), 4, "a header and three rows: {table}");
    assert_eq!(sizes(&served.fake), [3, 1], "asks only for what is still missing");
}
