//! One node (`--initial-members 1=<addr>`): time from process spawn to
//! `/readyz` = 200 after a SIGTERM restart, with 0 and with 10,000 users on
//! disk, and its resident memory (VmRSS) when idle.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde_json::{json, Value};
use tonic::transport::ClientTlsConfig;
use tonic::Request;
use vpn_proto::v1::users_client::UsersClient;
use vpn_proto::v1::ListUsersRequest;

use crate::load::{run_level, Level};
use crate::report::warn_errors;
use crate::vpnd::{channel_with, VpndCluster};
use crate::writers::VpndWriter;
use crate::{median, ms};

#[derive(Clone, Debug)]
pub struct SingleConfig {
    pub users: u64,
    pub restarts: usize,
    /// Idle time before RSS is read.
    pub settle: Duration,
    pub create_concurrency: usize,
    pub request_timeout: Duration,
    /// Mutual TLS instead of `--insecure`.
    pub tls: bool,
}

const READY_DEADLINE: Duration = Duration::from_secs(60);
const STOP_DEADLINE: Duration = Duration::from_secs(15);

pub async fn run(bin: &Path, work_dir: &Path, log_dir: &Path, cfg: &SingleConfig, run_id: &str) -> Result<Value> {
    let empty = measure(bin, work_dir, log_dir, cfg, 0, run_id).await?;
    let full = measure(bin, work_dir, log_dir, cfg, cfg.users, run_id).await?;
    println!("\nsingle node: spawn -> /readyz = 200 after SIGTERM restart (median of {}), idle VmRSS:", cfg.restarts);
    for r in [&empty, &full] {
        println!(
            "  {:>6} users: startup median {:.1} ms (runs {:?}), RSS fresh {} KiB, after load {} KiB, after restart {} KiB",
            r["users"].as_u64().unwrap_or_default(),
            r["startup_median_ms"].as_f64().unwrap_or(f64::NAN),
            r["startup_ms"].as_array().map(|a| a.iter().filter_map(Value::as_f64).map(|v| (v * 10.0).round() / 10.0).collect::<Vec<_>>()).unwrap_or_default(),
            r["rss_kib_fresh"],
            r["rss_kib_after_load"],
            r["rss_kib_after_restart"],
        );
    }
    Ok(json!({ "empty": empty, "with_users": full }))
}

async fn measure(
    bin: &Path,
    work_dir: &Path,
    log_dir: &Path,
    cfg: &SingleConfig,
    users: u64,
    run_id: &str,
) -> Result<Value> {
    let label = format!("single-{users}{}", if cfg.tls { "-tls" } else { "" });
    let mut node = match cfg.tls {
        true => VpndCluster::start_tls(bin, 1, work_dir, log_dir, &label)?,
        false => VpndCluster::start(bin, 1, work_dir, log_dir, &label)?,
    };
    let tls = node.client_tls();
    let first_start = node.wait_ready(0, READY_DEADLINE).await?;
    tokio::time::sleep(cfg.settle).await;
    let rss_fresh = node.proc(0)?.rss_kib()?;
    let endpoint = node.endpoints()[0].clone();

    let mut created = json!(null);
    if users > 0 {
        let writer = Arc::new(VpndWriter::new(vec![channel_with(&endpoint, tls.as_ref()).await?], cfg.request_timeout));
        let level = Level { concurrency: cfg.create_concurrency, duration: Duration::from_secs(600), max_ops: users };
        let r = run_level(writer, &format!("{run_id}-s"), &level).await;
        warn_errors("single-node create", &r);
        if r.ok != users {
            eprintln!("loadgen: only {} of {users} users were created", r.ok);
        }
        created = r.to_json();
        tokio::time::sleep(cfg.settle).await;
    }
    let rss_after_load = node.proc(0)?.rss_kib()?;
    let expected = count_users(&endpoint, tls.as_ref()).await?;

    let (mut startup, mut stops, mut exit_codes) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..cfg.restarts {
        let t = Instant::now();
        let status = node.terminate(0, STOP_DEADLINE).await?;
        stops.push(ms(t.elapsed()));
        exit_codes.push(status.code());
        node.spawn(0)?;
        startup.push(ms(node.wait_ready(0, READY_DEADLINE).await?));
    }
    let after_restart = count_users(&endpoint, tls.as_ref()).await?;
    if after_restart != expected {
        bail!("{label}: {expected} users before the restarts, {after_restart} after");
    }
    tokio::time::sleep(cfg.settle).await;
    let rss_after_restart = node.proc(0)?.rss_kib()?;
    node.stop_all().await;
    Ok(json!({
        "tls": cfg.tls,
        "users": users,
        "users_listed_after_restarts": after_restart,
        "create": created,
        "first_start_to_ready_ms": ms(first_start),
        "startup_ms": startup,
        "startup_median_ms": median(&startup),
        "sigterm_to_exit_ms": stops,
        "exit_codes": exit_codes,
        "rss_kib_fresh": rss_fresh,
        "rss_kib_after_load": rss_after_load,
        "rss_kib_after_restart": rss_after_restart,
        "settle_ms": ms(cfg.settle),
    }))
}

/// All users, paged through ListUsers (linearizable).
async fn count_users(endpoint: &str, tls: Option<&ClientTlsConfig>) -> Result<u64> {
    let mut client = UsersClient::new(channel_with(endpoint, tls).await?);
    let (mut total, mut token) = (0u64, String::new());
    // Bounded: 1,000 pages of 1,000 is far more than any run creates.
    for _ in 0..1000 {
        let mut req = Request::new(ListUsersRequest { page_size: 1000, page_token: token, consistency: 0 });
        req.set_timeout(Duration::from_secs(10));
        let page = client.list_users(req).await?.into_inner();
        total += page.users.len() as u64;
        if page.next_page_token.is_empty() {
            return Ok(total);
        }
        token = page.next_page_token;
    }
    bail!("more than 1,000 pages of users at {endpoint}")
}
