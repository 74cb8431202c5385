//! The per-request cost of authentication and authorization (issue 13):
//! what `vpn_node::auth` checks before a handler sees a public call, here
//! for `Users/CreateUser` (it needs `users.write`), against a `State` that
//! holds 100 other API tokens and 100 other certificate principals bound
//! over 20 roles. Group `auth_per_request`:
//! - `rule_create_user`: the path's rule (`table::rule`) alone;
//! - `token_operator`: the rule, the API token checked (`token_identity`:
//!   the record by name, SHA-256 of the secret, compared) and its role's
//!   permissions (`Identity::permissions`);
//! - `certificate_operator`: the rule, the client certificate's principal
//!   read from its DER (`CertInfo::from_der`, as the layer does on every
//!   call) and the permissions of its bindings;
//! - `forwarded_relay`: what a write through a follower adds: the identity
//!   written to the relay header there, read back and re-authorized on the
//!   leader.
//!
//! Baselines, same group and run: the rule of a path that needs no
//! credential (`grpc.health.v1.Health/Check`: the layer's cost without
//! authentication) and the client's encode of the CreateUser request itself.
//! The TLS handshake and the layer's bookkeeping (the caller's address as
//! text, the audit scope) are not here: the first is once per connection,
//! the second does not depend on the principal.

use std::collections::BTreeSet;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use prost::Message as _;
use vpn_node::auth::identity::{new_api_token, token_identity, AuthMethod, Identity};
use vpn_node::auth::table::{self, Rule};
use vpn_pki::{CertInfo, Principal};
use vpn_proto::v1::CreateUserRequest;
use vpn_storage::access::{AccessCommand, ApiToken, Permission, Permissions, Subject, BUILTIN_ROLES};
use vpn_storage::command::{apply, Command};
use vpn_storage::state::State;

const PATH: &str = "/vpn.v1.Users/CreateUser";
/// Tokens and bound principals besides the measured ones.
const OTHERS: usize = 100;
const CUSTOM_ROLES: usize = 16;
/// A fixed clock: every token is valid at it.
const NOW_MS: i64 = 1_800_000_000_000;
const SOURCE: &str = "127.0.0.1:40000";

fn token(name: &str, role: &str) -> (ApiToken, String) {
    let (text, secret_sha256) = new_api_token(name);
    let token = ApiToken {
        name: name.to_owned(),
        role: role.to_owned(),
        secret_sha256,
        created_at_ms: NOW_MS,
        expires_at_ms: NOW_MS + 86_400_000,
        created_by: "admin".to_owned(),
    };
    (token, text)
}

/// The roles, tokens and bindings; the measured token (`loadgen`) and
/// certificate principal (`loader`) hold `operator`, as in `loadgen --auth`.
/// Returns the state and the measured token's text.
fn state() -> (State, String) {
    let mut state = State::default();
    let mut access = |cmd| apply(&mut state, &Command::Access(cmd));
    let mut roles: Vec<String> = BUILTIN_ROLES.iter().map(|(name, _)| (*name).to_owned()).collect();
    for r in 0..CUSTOM_ROLES {
        let name = format!("custom-{r:02}");
        let permissions = BTreeSet::from([Permission::UsersRead, Permission::NodesRead]);
        access(AccessCommand::CreateRole { name: name.clone(), permissions });
        roles.push(name);
    }
    for i in 0..OTHERS {
        let role = &roles[i % roles.len()];
        access(AccessCommand::CreateApiToken(token(&format!("bot-{i:03}"), role).0));
        access(AccessCommand::Bind { role: role.clone(), subject: Subject::User(format!("user-{i:03}")) });
    }
    let (measured, text) = token("loadgen", "operator");
    access(AccessCommand::CreateApiToken(measured));
    access(AccessCommand::Bind { role: "operator".to_owned(), subject: Subject::User("loader".to_owned()) });
    (state, text)
}

/// The certificate `loadgen --auth`'s cert writer presents (DER).
fn loader_certificate() -> Vec<u8> {
    let ca = vpn_pki::Ca::generate("bench").expect("a CA");
    let issued = ca.issue_client("loader", std::time::Duration::from_secs(86_400)).expect("a client certificate");
    vpn_pki::files::pem_to_der(&issued.cert_pem, "CERTIFICATE").expect("PEM")
}

/// Whether the call may go on: the layer's last step.
fn allowed(rule: Option<Rule>, permissions: Permissions) -> bool {
    match rule {
        Some(Rule::Public(Some(need))) => permissions.contains(need),
        _ => false,
    }
}

/// The principal a client certificate names, as the layer builds it.
fn certificate_identity(der: &[u8]) -> Option<Identity> {
    match CertInfo::from_der(der).ok()?.principal {
        Principal::Client { name } => Some(Identity {
            principal: name,
            method: AuthMethod::Certificate,
            groups: Vec::new(),
            source: SOURCE.into(),
        }),
        Principal::Node { .. } => None,
    }
}

fn per_request(c: &mut Criterion) {
    let (state, bearer) = state();
    let der = loader_certificate();
    let relayed = token_identity(&bearer, &state, NOW_MS, SOURCE.into()).expect("the measured token is valid");
    // Each bench checks once that it measures a call that is let through.
    let cert_who = certificate_identity(&der).expect("a client certificate");
    assert!(allowed(table::rule(PATH), cert_who.permissions(&state, NOW_MS).expect("permissions")));
    assert!(allowed(table::rule(PATH), relayed.permissions(&state, NOW_MS).expect("permissions")));

    let mut g = c.benchmark_group("auth_per_request");
    g.bench_function("rule_create_user", |b| b.iter(|| table::rule(black_box(PATH))));
    g.bench_function("token_operator", |b| {
        b.iter(|| {
            let rule = table::rule(black_box(PATH));
            let who = token_identity(black_box(&bearer), &state, NOW_MS, SOURCE.into()).expect("valid");
            allowed(rule, who.permissions(&state, NOW_MS).expect("live"))
        })
    });
    g.bench_function("certificate_operator", |b| {
        b.iter(|| {
            let rule = table::rule(black_box(PATH));
            let who = certificate_identity(black_box(&der)).expect("a client certificate");
            allowed(rule, who.permissions(&state, NOW_MS).expect("permissions"))
        })
    });
    g.bench_function("forwarded_relay", |b| {
        b.iter(|| {
            let header = black_box(&relayed).to_header();
            let who = Identity::from_header(black_box(&header)).expect("the header it wrote");
            allowed(table::rule(PATH), who.permissions(&state, NOW_MS).expect("live"))
        })
    });
    g.bench_function("baseline_rule_health_check", |b| {
        b.iter(|| table::rule(black_box("/grpc.health.v1.Health/Check")))
    });
    let request = CreateUserRequest { name: "lgd0c1f-vk-c1-000123".into(), ..Default::default() };
    g.bench_function("baseline_create_user_request_encode", |b| b.iter(|| black_box(&request).encode_to_vec()));
    g.finish();
}

criterion_group!(benches, per_request);
criterion_main!(benches);
