//! `loadgen throughput --tls --auth`: issue 13's comparison, in one run.
//! One `vpnd` cluster under mutual TLS (every public call authorized by its
//! principal's roles, every accepted write audited in its own Raft entry)
//! and one etcd under TLS with `auth enable` ([`crate::etcd_auth`]). At each
//! concurrency four writers take turns, each on its own connections:
//! - token: an API token of role `operator`, made through the real
//!   `Access/CreateApiToken` and sent as `authorization: Bearer` over a TLS
//!   channel that presents no client certificate;
//! - cert: the client certificate `loader` (not `admin`), bound to
//!   `operator` with `Access/BindRole`;
//! - admin: the `admin` certificate, the writer of `--tls` alone, so
//!   token / admin and cert / admin are what each principal costs over it;
//! - etcd: a user whose role may write the run's keys, with its token.
//!
//! Each `vpnd` principal is checked with `WhoAmI` before the load, so the
//! figures are those of the principal the report names.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use tonic::transport::ClientTlsConfig;
use vpn_proto::v1::access_client::AccessClient;
use vpn_proto::v1::{BindRoleRequest, CreateApiTokenRequest, WhoAmIRequest, WhoAmIResponse};

use crate::compare::{targets, CompareConfig};
use crate::compare_tls::Dial;
use crate::load::{run_level, Level, LevelResult};
use crate::vpnd::{self, VpndCluster};
use crate::writers::{connect_all_with, Credential, EtcdWriter, VpndWriter};
use crate::{etcd, etcd_auth, report};

/// The API token's name: its principal is `token:loadgen`.
pub const TOKEN_NAME: &str = "loadgen";
/// The client certificate principal bound to [`ROLE`].
pub const CERT_USER: &str = "loader";
/// The built-in role both principals get: it holds `users.write`, not `admin`'s rights.
pub const ROLE: &str = "operator";

/// How each `vpnd` writer proves who it is.
struct Principals {
    token: Credential,
    /// Trusts the CA, presents no certificate: the token's channel.
    anonymous: ClientTlsConfig,
    cert: ClientTlsConfig,
    admin: ClientTlsConfig,
}

/// What one concurrency level measured on each writer.
struct Row {
    token: LevelResult,
    cert: LevelResult,
    admin: LevelResult,
    etcd: Option<LevelResult>,
}

/// Sets the principals up, runs every level (etcd only when given), prints
/// the table and returns the JSON section.
pub async fn run(
    cfg: &CompareConfig,
    cluster: &VpndCluster,
    etcd_tls: Option<Dial<'_>>,
    run_id: &str,
) -> Result<Value> {
    let endpoints = cluster.endpoints();
    let pki = cluster.pki().context("--auth needs a vpnd cluster under TLS")?;
    let admin = pki.client_tls();
    let leader_wait = Duration::from_secs(10);
    let before = vpnd::wait_leader_with(&endpoints, Some(&admin), leader_wait).await?;
    let vpnd_targets = targets(&endpoints, before.index, cfg)?;

    let principals = Principals {
        token: create_token(&endpoints[before.index], &admin).await?,
        anonymous: pki.anonymous_tls(),
        cert: pki.client_identity(CERT_USER)?,
        admin,
    };
    bind_cert_user(&endpoints[before.index], &principals.admin).await?;
    // The writes go to a member that checks them against its own copy of the roles.
    vpnd::wait_caught_up(&endpoints, Some(&principals.admin), leader_wait).await?;
    let target = &vpnd_targets[0];
    let seen = json!({
        "token": check(target, &principals.anonymous, Some(&principals.token), &format!("token:{TOKEN_NAME}")).await?,
        "cert": check(target, &principals.cert, None, CERT_USER).await?,
        "admin": whoami(target, &principals.admin, None).await.map(|w| principal_json(&w))?,
    });

    let timeout = cfg.request_timeout;
    let p = &principals;
    let token_channels = connect_all_with(&vpnd_targets, Some(&p.anonymous)).await?;
    let token_w = Arc::new(VpndWriter::new(token_channels, timeout).with_credential(p.token.clone()));
    let cert_w = Arc::new(VpndWriter::new(connect_all_with(&vpnd_targets, Some(&p.cert)).await?, timeout));
    let admin_w = Arc::new(VpndWriter::new(connect_all_with(&vpnd_targets, Some(&p.admin)).await?, timeout));
    // Every key of etcd's writer starts with this, and its role may write only those.
    let etcd_prefix = format!("{run_id}-ea");
    let etcd_w = match etcd_tls {
        Some(e) => {
            // Before auth is on: Maintenance.Status then needs no credential.
            let leader = etcd::find_leader_with(e.endpoints, e.tls).await?;
            let t = targets(e.endpoints, leader, cfg)?;
            let credential = etcd_auth::enable(&e.endpoints[leader], e.tls, &etcd_prefix).await?;
            let writer = EtcdWriter::new(connect_all_with(&t, e.tls).await?, timeout).with_credential(credential);
            Some((Arc::new(writer), t))
        }
        None => None,
    };

    let warmup = Level { concurrency: 4, duration: Duration::from_secs(10), max_ops: cfg.warmup_ops };
    report::warn_errors("vpnd token warm-up", &run_level(token_w.clone(), &format!("{run_id}-vk-warm"), &warmup).await);
    report::warn_errors("vpnd cert warm-up", &run_level(cert_w.clone(), &format!("{run_id}-vc-warm"), &warmup).await);
    report::warn_errors("vpnd admin warm-up", &run_level(admin_w.clone(), &format!("{run_id}-va-warm"), &warmup).await);
    if let Some((ew, _)) = &etcd_w {
        report::warn_errors("etcd auth warm-up", &run_level(ew.clone(), &format!("{etcd_prefix}-warm"), &warmup).await);
    }

    let mut rows = Vec::new();
    report::auth_header();
    for &c in &cfg.concurrency {
        let level = Level { concurrency: c, duration: cfg.duration, max_ops: cfg.max_ops };
        let token = run_level(token_w.clone(), &format!("{run_id}-vk"), &level).await;
        let cert = run_level(cert_w.clone(), &format!("{run_id}-vc"), &level).await;
        let admin = run_level(admin_w.clone(), &format!("{run_id}-va"), &level).await;
        let etcd = match &etcd_w {
            Some((ew, _)) => Some(run_level(ew.clone(), &etcd_prefix, &level).await),
            None => None,
        };
        report::auth_row(&token, &cert, &admin, etcd.as_ref());
        rows.push(Row { token, cert, admin, etcd });
    }
    for r in &rows {
        report::warn_errors("vpnd token", &r.token);
        report::warn_errors("vpnd cert", &r.cert);
        report::warn_errors("vpnd admin", &r.admin);
        if let Some(e) = &r.etcd {
            report::warn_errors("etcd auth", e);
        }
    }
    let after = vpnd::wait_leader_with(&endpoints, Some(&principals.admin), leader_wait).await?;

    Ok(json!({
        "tls": true,
        "auth": true,
        "principals_vpnd": seen,
        "etcd_auth": etcd_w.as_ref().map(|_| json!({
            "user": etcd_auth::USER,
            "role": etcd_auth::ROLE,
            "permission": "readwrite",
            "key_prefix": etcd_prefix,
            "token": "simple",
            "server_flags": etcd_auth::server_flags(),
        })),
        "targets_vpnd": vpnd_targets,
        "targets_etcd_auth": etcd_w.as_ref().map(|(_, t)| t.clone()),
        "spread": cfg.spread,
        "through_follower": cfg.through_follower,
        "duration_s": cfg.duration.as_secs_f64(),
        "max_ops": cfg.max_ops,
        "vpnd_leader_before": before.id,
        "vpnd_term_before": before.term,
        "vpnd_leader_after": after.id,
        "vpnd_term_after": after.term,
        "levels": rows.iter().map(level_json).collect::<Vec<_>>(),
    }))
}

fn level_json(r: &Row) -> Value {
    let e = r.etcd.as_ref();
    json!({
        "concurrency": r.token.concurrency,
        "vpnd_token": r.token.to_json(),
        "vpnd_cert": r.cert.to_json(),
        "vpnd_admin": r.admin.to_json(),
        "etcd_auth": e.map(LevelResult::to_json),
        "ratio_throughput_vpnd_token_over_etcd_auth": e.map(|e| r.token.throughput_ratio(e)),
        "ratio_p99_vpnd_token_over_etcd_auth": e.map(|e| r.token.p99_ratio(e)),
        "ratio_throughput_vpnd_cert_over_etcd_auth": e.map(|e| r.cert.throughput_ratio(e)),
        "ratio_p99_vpnd_cert_over_etcd_auth": e.map(|e| r.cert.p99_ratio(e)),
        "ratio_throughput_vpnd_token_over_admin": r.token.throughput_ratio(&r.admin),
        "ratio_p99_vpnd_token_over_admin": r.token.p99_ratio(&r.admin),
        "ratio_throughput_vpnd_cert_over_admin": r.cert.throughput_ratio(&r.admin),
        "ratio_p99_vpnd_cert_over_admin": r.cert.p99_ratio(&r.admin),
    })
}

/// Makes the writer's API token through `Access/CreateApiToken`, as the admin.
async fn create_token(endpoint: &str, admin: &ClientTlsConfig) -> Result<Credential> {
    let mut access = AccessClient::new(vpnd::channel_with(endpoint, Some(admin)).await?);
    let req = CreateApiTokenRequest { name: TOKEN_NAME.into(), role: ROLE.into(), ttl_seconds: 0 };
    let made = access
        .create_api_token(request(req))
        .await
        .map_err(|s| anyhow!("Access/CreateApiToken {TOKEN_NAME}: {:?}: {}", s.code(), s.message()))?;
    Credential::bearer(&made.into_inner().token).context("the API token vpnd made")
}

/// Binds [`CERT_USER`] to [`ROLE`] through `Access/BindRole`, as the admin.
async fn bind_cert_user(endpoint: &str, admin: &ClientTlsConfig) -> Result<()> {
    let mut access = AccessClient::new(vpnd::channel_with(endpoint, Some(admin)).await?);
    let req = BindRoleRequest { role: ROLE.into(), user: CERT_USER.into(), group: String::new() };
    access
        .bind_role(request(req))
        .await
        .map_err(|s| anyhow!("Access/BindRole {ROLE} --user {CERT_USER}: {:?}: {}", s.code(), s.message()))?;
    Ok(())
}

fn request<T>(msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.set_timeout(Duration::from_secs(5));
    req
}

/// `Access/WhoAmI` as the writer would call: over `tls`, with `credential` if any.
async fn whoami(endpoint: &str, tls: &ClientTlsConfig, credential: Option<&Credential>) -> Result<WhoAmIResponse> {
    let mut access = AccessClient::new(vpnd::channel_with(endpoint, Some(tls)).await?);
    let mut req = request(WhoAmIRequest {});
    if let Some(c) = credential {
        c.attach(&mut req);
    }
    let who = access.who_am_i(req).await.map_err(|s| anyhow!("Access/WhoAmI on {endpoint}: {}", s.message()))?;
    Ok(who.into_inner())
}

/// Fails unless the writer is `principal` and holds [`ROLE`] and nothing more.
async fn check(
    endpoint: &str,
    tls: &ClientTlsConfig,
    credential: Option<&Credential>,
    principal: &str,
) -> Result<Value> {
    let who = whoami(endpoint, tls, credential).await?;
    if who.principal != principal || who.roles != [ROLE] {
        bail!(
            "{endpoint} sees the writer as {:?} with roles {:?}, not as {principal:?} with role {ROLE}",
            who.principal,
            who.roles
        );
    }
    Ok(principal_json(&who))
}

fn principal_json(who: &WhoAmIResponse) -> Value {
    json!({ "principal": who.principal, "authenticated_by": who.authenticated_by, "roles": who.roles })
}
