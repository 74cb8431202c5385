//! Throughput and latency of `vpnd` against etcd, level by level, in one run:
//! at each concurrency `vpnd` runs first, then etcd, so both see the disk in
//! the same state (its fsync cost drifts over hours).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use serde_json::{json, Value};

use crate::load::{run_level, Level, LevelResult};
use crate::report;
use crate::writers::{connect_all, EtcdWriter, VpndWriter};
use crate::{etcd, vpnd};

#[derive(Clone, Debug)]
pub struct CompareConfig {
    pub concurrency: Vec<usize>,
    pub duration: Duration,
    pub max_ops: u64,
    pub warmup_ops: u64,
    /// Spread writers over every member instead of sending to the leader.
    pub spread: bool,
    /// Send writes to a follower (with `spread`, to every follower), which
    /// forwards them to the leader, instead of to the leader itself.
    pub through_follower: bool,
    pub request_timeout: Duration,
}

/// The endpoints writes go to: the leader's alone, or all members (`spread`);
/// with `through_follower`, the first follower alone, or all followers.
pub fn targets(endpoints: &[String], leader: usize, cfg: &CompareConfig) -> Result<Vec<String>> {
    let members = endpoints.iter().enumerate();
    let picked: Vec<String> = match (cfg.through_follower, cfg.spread) {
        (false, false) => vec![endpoints[leader].clone()],
        (false, true) => endpoints.to_vec(),
        (true, spread) => {
            let followers = members.filter(|(i, _)| *i != leader).map(|(_, e)| e.clone());
            followers.take(if spread { usize::MAX } else { 1 }).collect()
        }
    };
    if picked.is_empty() {
        bail!("--through-follower: a cluster of {} member(s) has no follower", endpoints.len());
    }
    Ok(picked)
}

/// Runs every level against both systems (etcd only when given) and prints
/// the table; returns the JSON section.
pub async fn run(cfg: &CompareConfig, ours: &[String], theirs: Option<&[String]>, run_id: &str) -> Result<Value> {
    let before = vpnd::wait_leader(ours, Duration::from_secs(10)).await?;
    let ours_targets = targets(ours, before.index, cfg)?;
    let ours_w = Arc::new(VpndWriter::new(connect_all(&ours_targets).await?, cfg.request_timeout));
    let etcd_w = match theirs {
        Some(eps) => {
            let leader = etcd::find_leader(eps).await?;
            let t = targets(eps, leader, cfg)?;
            Some((Arc::new(EtcdWriter::new(connect_all(&t).await?, cfg.request_timeout)), t))
        }
        None => None,
    };

    let warmup = Level { concurrency: 4, duration: Duration::from_secs(10), max_ops: cfg.warmup_ops };
    let w = run_level(ours_w.clone(), &format!("{run_id}-v-warm"), &warmup).await;
    report::warn_errors("vpnd warm-up", &w);
    if let Some((ew, _)) = &etcd_w {
        let w = run_level(ew.clone(), &format!("{run_id}-e-warm"), &warmup).await;
        report::warn_errors("etcd warm-up", &w);
    }

    let mut rows: Vec<(LevelResult, Option<LevelResult>)> = Vec::new();
    report::compare_header();
    for &c in &cfg.concurrency {
        let level = Level { concurrency: c, duration: cfg.duration, max_ops: cfg.max_ops };
        let o = run_level(ours_w.clone(), &format!("{run_id}-v"), &level).await;
        let e = match &etcd_w {
            Some((ew, _)) => Some(run_level(ew.clone(), &format!("{run_id}-e"), &level).await),
            None => None,
        };
        report::compare_row(&o, e.as_ref());
        rows.push((o, e));
    }
    for (o, e) in &rows {
        report::warn_errors("vpnd", o);
        if let Some(e) = e {
            report::warn_errors("etcd", e);
        }
    }
    let after = vpnd::wait_leader(ours, Duration::from_secs(10)).await?;

    let levels: Vec<Value> = rows
        .iter()
        .map(|(o, e)| {
            json!({
                "concurrency": o.concurrency,
                "vpnd": o.to_json(),
                "etcd": e.as_ref().map(LevelResult::to_json),
                "ratio_throughput_vpnd_over_etcd": e.as_ref().map(|e| o.throughput_ratio(e)),
                "ratio_p99_vpnd_over_etcd": e.as_ref().map(|e| o.p99_ratio(e)),
            })
        })
        .collect();
    Ok(json!({
        "targets_vpnd": ours_targets,
        "targets_etcd": etcd_w.as_ref().map(|(_, t)| t.clone()),
        "spread": cfg.spread,
        "through_follower": cfg.through_follower,
        "duration_s": cfg.duration.as_secs_f64(),
        "max_ops": cfg.max_ops,
        "vpnd_leader_before": before.id,
        "vpnd_term_before": before.term,
        "vpnd_leader_after": after.id,
        "vpnd_term_after": after.term,
        "levels": levels,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(spread: bool, through_follower: bool) -> CompareConfig {
        CompareConfig {
            concurrency: vec![1],
            duration: Duration::from_secs(1),
            max_ops: 1,
            warmup_ops: 0,
            spread,
            through_follower,
            request_timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn targets_follow_the_route() {
        let eps: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let pick = |spread, follower| targets(&eps, 1, &cfg(spread, follower)).expect("targets");
        assert_eq!(pick(false, false), ["b"]);
        assert_eq!(pick(true, false), ["a", "b", "c"]);
        assert_eq!(pick(false, true), ["a"]);
        assert_eq!(pick(true, true), ["a", "c"]);
        assert!(targets(&eps[..1], 0, &cfg(false, true)).is_err());
    }
}
