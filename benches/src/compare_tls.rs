//! `loadgen throughput --tls`: `vpnd` under mutual TLS against etcd under
//! mutual TLS, and against `vpnd`'s own `--insecure` baseline, in one run.
//! Three clusters run side by side; at each concurrency the insecure `vpnd`
//! runs first, then the TLS `vpnd`, then etcd, so all three see the disk in
//! the same state (as in [`crate::compare`]). The ratio TLS / insecure is
//! what mutual TLS costs `vpnd`; TLS `vpnd` / TLS etcd is the target.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use serde_json::{json, Value};
use tonic::transport::ClientTlsConfig;

use crate::compare::{targets, CompareConfig};
use crate::load::{run_level, Level, LevelResult};
use crate::report;
use crate::writers::{connect_all_with, EtcdWriter, VpndWriter};
use crate::{etcd, vpnd};

/// A running cluster: its endpoints and, under TLS, the client's settings.
#[derive(Clone, Copy)]
pub struct Dial<'a> {
    pub endpoints: &'a [String],
    pub tls: Option<&'a ClientTlsConfig>,
}

/// What one concurrency level measured on each cluster.
struct Row {
    insecure: LevelResult,
    tls: LevelResult,
    etcd: Option<LevelResult>,
}

/// Runs every level on the three clusters (etcd only when given), prints
/// the table and returns the JSON section.
pub async fn run(
    cfg: &CompareConfig,
    insecure: Dial<'_>,
    tls: Dial<'_>,
    etcd_tls: Option<Dial<'_>>,
    run_id: &str,
) -> Result<Value> {
    let leader_wait = Duration::from_secs(10);
    let ins_before = vpnd::wait_leader_with(insecure.endpoints, insecure.tls, leader_wait).await?;
    let tls_before = vpnd::wait_leader_with(tls.endpoints, tls.tls, leader_wait).await?;
    let ins_targets = targets(insecure.endpoints, ins_before.index, cfg)?;
    let tls_targets = targets(tls.endpoints, tls_before.index, cfg)?;
    let timeout = cfg.request_timeout;
    let ins_w = Arc::new(VpndWriter::new(connect_all_with(&ins_targets, insecure.tls).await?, timeout));
    let tls_w = Arc::new(VpndWriter::new(connect_all_with(&tls_targets, tls.tls).await?, timeout));
    let etcd_w = match etcd_tls {
        Some(e) => {
            let leader = etcd::find_leader_with(e.endpoints, e.tls).await?;
            let t = targets(e.endpoints, leader, cfg)?;
            Some((Arc::new(EtcdWriter::new(connect_all_with(&t, e.tls).await?, timeout)), t))
        }
        None => None,
    };

    let warmup = Level { concurrency: 4, duration: Duration::from_secs(10), max_ops: cfg.warmup_ops };
    report::warn_errors(
        "vpnd insecure warm-up",
        &run_level(ins_w.clone(), &format!("{run_id}-vi-warm"), &warmup).await,
    );
    report::warn_errors("vpnd TLS warm-up", &run_level(tls_w.clone(), &format!("{run_id}-vt-warm"), &warmup).await);
    if let Some((ew, _)) = &etcd_w {
        report::warn_errors("etcd TLS warm-up", &run_level(ew.clone(), &format!("{run_id}-e-warm"), &warmup).await);
    }

    let mut rows = Vec::new();
    report::tls_header();
    for &c in &cfg.concurrency {
        let level = Level { concurrency: c, duration: cfg.duration, max_ops: cfg.max_ops };
        let insecure = run_level(ins_w.clone(), &format!("{run_id}-vi"), &level).await;
        let tls = run_level(tls_w.clone(), &format!("{run_id}-vt"), &level).await;
        let etcd = match &etcd_w {
            Some((ew, _)) => Some(run_level(ew.clone(), &format!("{run_id}-e"), &level).await),
            None => None,
        };
        report::tls_row(&tls, etcd.as_ref(), &insecure);
        rows.push(Row { insecure, tls, etcd });
    }
    for r in &rows {
        report::warn_errors("vpnd insecure", &r.insecure);
        report::warn_errors("vpnd TLS", &r.tls);
        if let Some(e) = &r.etcd {
            report::warn_errors("etcd TLS", e);
        }
    }
    let ins_after = vpnd::wait_leader_with(insecure.endpoints, insecure.tls, leader_wait).await?;
    let tls_after = vpnd::wait_leader_with(tls.endpoints, tls.tls, leader_wait).await?;

    let levels: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "concurrency": r.tls.concurrency,
                "vpnd_tls": r.tls.to_json(),
                "vpnd_insecure": r.insecure.to_json(),
                "etcd_tls": r.etcd.as_ref().map(LevelResult::to_json),
                "ratio_throughput_vpnd_tls_over_etcd_tls": r.etcd.as_ref().map(|e| r.tls.throughput_ratio(e)),
                "ratio_p99_vpnd_tls_over_etcd_tls": r.etcd.as_ref().map(|e| r.tls.p99_ratio(e)),
                "ratio_throughput_vpnd_tls_over_insecure": r.tls.throughput_ratio(&r.insecure),
                "ratio_p99_vpnd_tls_over_insecure": r.tls.p99_ratio(&r.insecure),
            })
        })
        .collect();
    Ok(json!({
        "tls": true,
        "targets_vpnd_tls": tls_targets,
        "targets_vpnd_insecure": ins_targets,
        "targets_etcd_tls": etcd_w.as_ref().map(|(_, t)| t.clone()),
        "spread": cfg.spread,
        "through_follower": cfg.through_follower,
        "duration_s": cfg.duration.as_secs_f64(),
        "max_ops": cfg.max_ops,
        "vpnd_tls_leader_before": tls_before.id,
        "vpnd_tls_term_before": tls_before.term,
        "vpnd_tls_leader_after": tls_after.id,
        "vpnd_tls_term_after": tls_after.term,
        "vpnd_insecure_leader_before": ins_before.id,
        "vpnd_insecure_term_before": ins_before.term,
        "vpnd_insecure_leader_after": ins_after.id,
        "vpnd_insecure_term_after": ins_after.term,
        "levels": levels,
    }))
}
