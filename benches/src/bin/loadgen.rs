//! `loadgen`: the load generator and the cluster measurements of issue 2.
//! `loadgen all` starts a local 3-node `vpnd` cluster and a 3-member etcd,
//! compares write throughput and latency, then measures failover, startup
//! and idle RSS; it prints tables and writes everything to `--out` as JSON.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use serde_json::{json, Value};
use vpn_benches::compare::{self, CompareConfig};
use vpn_benches::compare_auth;
use vpn_benches::compare_tls::{self, Dial};
use vpn_benches::criterion_summary;
use vpn_benches::etcd::EtcdCluster;
use vpn_benches::etcd_auth;
use vpn_benches::failover::{self, FailoverConfig};
use vpn_benches::fleet::{self, FleetConfig};
use vpn_benches::report::log_problems;
use vpn_benches::single::{self, SingleConfig};
use vpn_benches::vpnd::VpndCluster;

#[derive(Parser)]
#[command(name = "loadgen", about = "Load generator and cluster measurements for vpnd (compared with etcd)")]
struct Cli {
    /// The vpnd binary to spawn.
    #[arg(long, default_value = "target/release/vpnd", global = true)]
    vpnd: PathBuf,
    /// The etcd binary to spawn (Debian's etcd-server).
    #[arg(long, default_value = "/usr/bin/etcd", global = true)]
    etcd: PathBuf,
    /// Where temp data dirs go (default: the system temp dir). Use a real disk, not tmpfs.
    #[arg(long, global = true)]
    work_dir: Option<PathBuf>,
    /// Where the spawned processes' logs go (kept after the run).
    #[arg(long, default_value = "target/loadgen-logs", global = true)]
    log_dir: PathBuf,
    /// The JSON results file.
    #[arg(long, default_value = "target/loadgen.json", global = true)]
    out: PathBuf,
    /// Mutual TLS on every spawned cluster (a CA made for the run) instead of
    /// `--insecure`. `throughput` then runs etcd with client and peer TLS and
    /// vpnd a second time with `--insecure` on the same load, for TLS's
    /// overhead (or, with `throughput --auth`, principals and roles on both
    /// sides); it spawns its own clusters (no --endpoints / --etcd-endpoints).
    #[arg(long, global = true)]
    tls: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Throughput vs etcd, failover, startup and RSS (each on fresh processes).
    All {
        #[command(flatten)]
        t: ThroughputOpts,
        #[command(flatten)]
        f: FailoverOpts,
        #[command(flatten)]
        s: SingleOpts,
    },
    /// Committed writes/s and p50/p99 per concurrency, vpnd vs etcd.
    Throughput(ThroughputOpts),
    /// kill -9 of the leader under a writer: time to the next acknowledged write.
    Failover(FailoverOpts),
    /// One node: spawn -> /readyz after SIGTERM restarts, with 0 and N users; idle RSS.
    SingleNode(SingleOpts),
    /// What a refusal (ALREADY_EXISTS) costs next to a create and a linearizable read, one cluster, c=1.
    Refusals {
        /// Operations of each kind.
        #[arg(long, default_value_t = 2000)]
        ops: usize,
    },
    /// Simulated data-plane agents (the real agent protocol, each with its own
    /// certificate) against 3 vpnd members: assignments, propagation, failover,
    /// and the control plane's CPU, RSS and network per agent. Always mutual
    /// TLS, with or without --tls.
    Fleet(FleetOpts),
    /// Criterion's saved results (after `cargo bench`) as ratios to their baselines.
    CriterionSummary {
        #[arg(long, default_value = "target/criterion")]
        dir: PathBuf,
    },
}

#[derive(Args, Clone)]
struct ThroughputOpts {
    /// A running vpnd cluster (host:port,...) instead of spawning one.
    #[arg(long, value_delimiter = ',')]
    endpoints: Vec<String>,
    /// A running etcd cluster (host:port,...) instead of spawning one.
    #[arg(long, value_delimiter = ',')]
    etcd_endpoints: Vec<String>,
    /// Skip the etcd baseline.
    #[arg(long)]
    no_etcd: bool,
    /// Concurrency levels.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    concurrency: Vec<usize>,
    /// Time bound of each level (e.g. 10s, 500ms, 1m).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Count bound of each level.
    #[arg(long, default_value_t = 100_000)]
    max_ops: u64,
    /// Unmeasured writes before the first level, per system.
    #[arg(long, default_value_t = 200)]
    warmup_ops: u64,
    /// Send writes to every member round-robin instead of to the leader.
    #[arg(long)]
    spread: bool,
    /// Send writes to a follower, which forwards them to its leader (with
    /// --spread: to every follower round-robin). Applies to both systems, so
    /// each pays the same extra hop.
    #[arg(long)]
    through_follower: bool,
    /// Per-request deadline.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    request_timeout: Duration,
    /// With --tls: authorization on both sides instead of the --insecure
    /// comparison. One vpnd cluster takes writes from an API token of role
    /// operator (no client certificate), from a client certificate `loader`
    /// bound to operator, and from the `admin` certificate (the baseline);
    /// etcd runs TLS plus `auth enable`, its writer a user with a role that
    /// may write the run's keys.
    #[arg(long)]
    auth: bool,
    /// Exit with an error when a ratio of the results falls below a floor at
    /// any level, e.g. `--floor ratio_throughput_vpnd_over_etcd=0.4` or
    /// `--floor ratio_throughput_vpnd_token_over_etcd_auth=0.5` (repeatable;
    /// the results file is written first). CI's perf check.
    #[arg(long = "floor", value_parser = parse_floor)]
    floors: Vec<(String, f64)>,
}

fn parse_floor(s: &str) -> Result<(String, f64), String> {
    let (name, value) =
        s.split_once('=').ok_or_else(|| format!("{s:?}: want NAME=VALUE, e.g. ratio_throughput_vpnd_over_etcd=0.4"))?;
    let value: f64 = value.parse().map_err(|_| format!("{s:?}: {value:?} is not a number"))?;
    if !name.starts_with("ratio_") || !value.is_finite() || value <= 0.0 {
        return Err(format!("{s:?}: want a ratio of the results (ratio_...) and a floor above 0"));
    }
    Ok((name.to_owned(), value))
}

/// Checks every level of a throughput section against `floors`; prints each comparison.
fn check_floors(section: &Value, floors: &[(String, f64)]) -> Result<()> {
    let mut below = Vec::new();
    for level in section["levels"].as_array().into_iter().flatten() {
        let c = &level["concurrency"];
        for (name, floor) in floors {
            let value = level[name.as_str()].as_f64().ok_or_else(|| {
                anyhow!("--floor {name}: not in the results at c={c} (etcd ratios need etcd, tls ones --tls, auth ones --tls --auth)")
            })?;
            let verdict = if value >= *floor { "ok" } else { "BELOW THE FLOOR" };
            println!("perf check: {name} at c={c}: {value:.3} (floor {floor}) {verdict}");
            if value < *floor {
                below.push(format!("{name} at c={c}: {value:.3} < {floor}"));
            }
        }
    }
    if !below.is_empty() {
        bail!("performance regression (more than 2x below the recorded baseline): {}", below.join("; "));
    }
    Ok(())
}

#[derive(Args, Clone)]
struct FailoverOpts {
    /// How many times the leader is killed (and restarted).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Per-request deadline of the failover writer.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    failover_request_timeout: Duration,
    /// Pause after a failed write before the next endpoint is tried.
    #[arg(long, default_value = "5ms", value_parser = parse_duration)]
    retry_pause: Duration,
}

#[derive(Args, Clone)]
struct SingleOpts {
    /// Users created before the restarts.
    #[arg(long, default_value_t = 10_000)]
    users: u64,
    /// SIGTERM restarts per case.
    #[arg(long, default_value_t = 5)]
    restarts: usize,
    /// Idle time before VmRSS is read.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    settle: Duration,
}

#[derive(Args, Clone)]
struct FleetOpts {
    /// Simulated data-plane agents.
    #[arg(long, default_value_t = 1000)]
    agents: usize,
    /// Users created (c=--create-concurrency) before the steady window.
    #[arg(long, default_value_t = 100_000)]
    users: u64,
    /// Each agent's heartbeat interval (vpnd runs its defaults: 1 s heartbeats, down after 5 s).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    heartbeat: Duration,
    /// The replica count vpnd's scheduler uses (its default); for the checks.
    #[arg(long, default_value_t = 2)]
    replicas: usize,
    #[arg(long, default_value_t = 64)]
    create_concurrency: usize,
    /// Agents connecting and registering at once at the start.
    #[arg(long, default_value_t = 100)]
    connect_concurrency: usize,
    /// Window with agents and no users.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    idle_window: Duration,
    /// Window with every user placed, heartbeats only.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    steady_window: Duration,
    /// Users created one at a time for the propagation times.
    #[arg(long, default_value_t = 200)]
    probe_users: usize,
    /// Longest wait for one probe user to reach its agents.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    probe_timeout: Duration,
    /// Longest wait for registration and for placement of every user.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    settle_timeout: Duration,
    /// Longest wait for a failover.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    failover_timeout: Duration,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a duration like 10s, 500ms or 2m"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("{s:?}: unknown unit {unit:?}; use ms, s or m")),
    }
}

struct Ctx {
    vpnd: PathBuf,
    etcd: PathBuf,
    work_dir: PathBuf,
    log_dir: PathBuf,
    run_id: String,
    tls: bool,
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let run_id =
        format!("lg{:x}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs() % 0xffff_ffff);
    let log_dir = cli.log_dir.join(&run_id);
    std::fs::create_dir_all(&log_dir).with_context(|| format!("log dir {}", log_dir.display()))?;
    let ctx = Ctx {
        vpnd: cli.vpnd.clone(),
        etcd: cli.etcd.clone(),
        work_dir: cli.work_dir.clone().unwrap_or_else(std::env::temp_dir),
        log_dir,
        run_id,
        tls: cli.tls,
    };
    println!("loadgen {}: logs in {}", ctx.run_id, ctx.log_dir.display());
    // Ctrl-C drops the running measurement, and with it every child process.
    let results = tokio::select! {
        r = run(&cli.cmd, &ctx) => r?,
        _ = tokio::signal::ctrl_c() => bail!("interrupted; spawned processes were killed"),
    };
    let doc = json!({
        "run_id": ctx.run_id,
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "machine": machine(&ctx.etcd),
        "log_dir": ctx.log_dir.display().to_string(),
        "node_log_problems": node_log_problems(&ctx.log_dir),
        "results": results,
    });
    if let Some(parent) = cli.out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&cli.out, serde_json::to_string_pretty(&doc)?)
        .with_context(|| format!("write {}", cli.out.display()))?;
    println!("\nresults: {}", cli.out.display());
    if let Cmd::Throughput(t) | Cmd::All { t, .. } = &cli.cmd {
        check_floors(&doc["results"]["throughput"], &t.floors)?;
    }
    Ok(())
}

async fn run(cmd: &Cmd, ctx: &Ctx) -> Result<Value> {
    Ok(match cmd {
        Cmd::All { t, f, s } => json!({
            "throughput": throughput(t, ctx).await?,
            "failover": failover_cmd(f, ctx).await?,
            "single_node": single_cmd(s, ctx).await?,
        }),
        Cmd::Throughput(t) => json!({ "throughput": throughput(t, ctx).await? }),
        Cmd::Failover(f) => json!({ "failover": failover_cmd(f, ctx).await? }),
        Cmd::SingleNode(s) => json!({ "single_node": single_cmd(s, ctx).await? }),
        Cmd::Refusals { ops } => json!({ "refusals": refusals_cmd(*ops, ctx).await? }),
        Cmd::Fleet(o) => json!({ "fleet": fleet_cmd(o, ctx).await? }),
        Cmd::CriterionSummary { dir } => json!({ "criterion": criterion_summary::summarize(dir)? }),
    })
}

async fn fleet_cmd(o: &FleetOpts, ctx: &Ctx) -> Result<Value> {
    let cfg = FleetConfig {
        agents: o.agents,
        users: o.users,
        heartbeat: o.heartbeat,
        replicas: o.replicas,
        create_concurrency: o.create_concurrency,
        connect_concurrency: o.connect_concurrency,
        idle_window: o.idle_window,
        steady_window: o.steady_window,
        probe_users: o.probe_users,
        probe_timeout: o.probe_timeout,
        settle_timeout: o.settle_timeout,
        failover_timeout: o.failover_timeout,
    };
    fleet::run(&ctx.vpnd, &ctx.work_dir, &ctx.log_dir, &cfg).await
}

async fn throughput(t: &ThroughputOpts, ctx: &Ctx) -> Result<Value> {
    let cfg = CompareConfig {
        concurrency: t.concurrency.clone(),
        duration: t.duration,
        max_ops: t.max_ops,
        warmup_ops: t.warmup_ops,
        spread: t.spread,
        through_follower: t.through_follower,
        request_timeout: t.request_timeout,
    };
    if cfg.concurrency.is_empty() || cfg.concurrency.contains(&0) {
        bail!("--concurrency: give positive levels, e.g. 1,16,64");
    }
    if t.auth && !ctx.tls {
        bail!("--auth needs --tls: vpnd checks tokens and certificates only under TLS (--insecure lets every call through)");
    }
    if ctx.tls {
        if !t.endpoints.is_empty() || !t.etcd_endpoints.is_empty() {
            bail!("--tls spawns its own clusters; drop --endpoints / --etcd-endpoints");
        }
        if t.auth {
            return throughput_auth(&cfg, t.no_etcd, ctx).await;
        }
        return throughput_tls(&cfg, t.no_etcd, ctx).await;
    }
    let mut ours_cluster = None;
    let ours = if t.endpoints.is_empty() {
        let mut c = VpndCluster::start(&ctx.vpnd, 3, &ctx.work_dir, &ctx.log_dir, "throughput")?;
        c.wait_all_ready(Duration::from_secs(60)).await?;
        let eps = c.endpoints();
        ours_cluster = Some(c);
        eps
    } else {
        t.endpoints.clone()
    };
    let mut etcd_cluster = None;
    let theirs = if t.no_etcd {
        None
    } else if t.etcd_endpoints.is_empty() {
        let c = EtcdCluster::start(&ctx.etcd, 3, &ctx.work_dir, &ctx.log_dir).await?;
        let eps = c.endpoints();
        etcd_cluster = Some(c);
        Some(eps)
    } else {
        Some(t.etcd_endpoints.clone())
    };
    // Idle RSS of the freshly started members, before any load.
    let rss_ours = match &ours_cluster {
        Some(c) => Some((0..3).map(|i| c.proc(i).and_then(|p| p.rss_kib())).collect::<Result<Vec<_>>>()?),
        None => None,
    };
    let rss_etcd = etcd_cluster.as_ref().map(EtcdCluster::rss_kib).transpose()?;
    let mut section = compare::run(&cfg, &ours, theirs.as_deref(), &ctx.run_id).await?;
    section["idle_rss_kib_vpnd_members"] = json!(rss_ours);
    section["idle_rss_kib_etcd_members"] = json!(rss_etcd);
    if let Some(mut c) = ours_cluster {
        for i in 0..3 {
            c.proc(i).map_err(|e| anyhow!("after the load: {e}"))?;
        }
        c.stop_all().await;
    }
    if let Some(mut c) = etcd_cluster {
        c.stop_all().await;
    }
    Ok(section)
}

/// `throughput --tls`: a TLS vpnd cluster, an --insecure one and (unless
/// --no-etcd) a TLS etcd, all spawned here and measured level by level.
async fn throughput_tls(cfg: &CompareConfig, no_etcd: bool, ctx: &Ctx) -> Result<Value> {
    let ready = Duration::from_secs(60);
    let mut insecure = VpndCluster::start(&ctx.vpnd, 3, &ctx.work_dir, &ctx.log_dir, "throughput")?;
    insecure.wait_all_ready(ready).await?;
    let mut tls = VpndCluster::start_tls(&ctx.vpnd, 3, &ctx.work_dir, &ctx.log_dir, "throughput-tls")?;
    tls.wait_all_ready(ready).await?;
    let mut etcd = match no_etcd {
        true => None,
        false => Some(EtcdCluster::start_tls(&ctx.etcd, 3, &ctx.work_dir, &ctx.log_dir).await?),
    };
    let vpnd_rss = |c: &VpndCluster| (0..3).map(|i| c.proc(i).and_then(|p| p.rss_kib())).collect::<Result<Vec<_>>>();
    let (rss_insecure, rss_tls) = (vpnd_rss(&insecure)?, vpnd_rss(&tls)?);
    let rss_etcd = etcd.as_ref().map(EtcdCluster::rss_kib).transpose()?;

    let (ins_eps, tls_eps) = (insecure.endpoints(), tls.endpoints());
    let (tls_client, etcd_client) = (tls.client_tls(), etcd.as_ref().and_then(EtcdCluster::client_tls));
    let etcd_eps = etcd.as_ref().map(EtcdCluster::endpoints);
    let etcd_dial = etcd_eps.as_deref().map(|endpoints| Dial { endpoints, tls: etcd_client.as_ref() });
    let mut section = compare_tls::run(
        cfg,
        Dial { endpoints: &ins_eps, tls: None },
        Dial { endpoints: &tls_eps, tls: tls_client.as_ref() },
        etcd_dial,
        &ctx.run_id,
    )
    .await?;
    section["idle_rss_kib_vpnd_insecure_members"] = json!(rss_insecure);
    section["idle_rss_kib_vpnd_tls_members"] = json!(rss_tls);
    section["idle_rss_kib_etcd_tls_members"] = json!(rss_etcd);
    for c in [&insecure, &tls] {
        for i in 0..3 {
            c.proc(i).map_err(|e| anyhow!("after the load: {e}"))?;
        }
    }
    insecure.stop_all().await;
    tls.stop_all().await;
    if let Some(c) = &mut etcd {
        c.stop_all().await;
    }
    Ok(section)
}

/// `throughput --tls --auth`: a TLS vpnd cluster with its principals and
/// (unless --no-etcd) a TLS etcd with auth enabled, spawned here.
async fn throughput_auth(cfg: &CompareConfig, no_etcd: bool, ctx: &Ctx) -> Result<Value> {
    let mut vpnd = VpndCluster::start_tls(&ctx.vpnd, 3, &ctx.work_dir, &ctx.log_dir, "throughput-auth")?;
    vpnd.wait_all_ready(Duration::from_secs(60)).await?;
    let mut etcd = match no_etcd {
        true => None,
        false => Some(
            EtcdCluster::start_tls_with(&ctx.etcd, 3, &ctx.work_dir, &ctx.log_dir, &etcd_auth::server_flags()).await?,
        ),
    };
    let rss_vpnd = (0..3).map(|i| vpnd.proc(i).and_then(|p| p.rss_kib())).collect::<Result<Vec<_>>>()?;
    let rss_etcd = etcd.as_ref().map(EtcdCluster::rss_kib).transpose()?;

    let etcd_client = etcd.as_ref().and_then(EtcdCluster::client_tls);
    let etcd_eps = etcd.as_ref().map(EtcdCluster::endpoints);
    let etcd_dial = etcd_eps.as_deref().map(|endpoints| Dial { endpoints, tls: etcd_client.as_ref() });
    let mut section = compare_auth::run(cfg, &vpnd, etcd_dial, &ctx.run_id).await?;
    section["idle_rss_kib_vpnd_members"] = json!(rss_vpnd);
    section["idle_rss_kib_etcd_auth_members"] = json!(rss_etcd);
    for i in 0..3 {
        vpnd.proc(i).map_err(|e| anyhow!("after the load: {e}"))?;
    }
    vpnd.stop_all().await;
    if let Some(c) = &mut etcd {
        c.stop_all().await;
    }
    Ok(section)
}

async fn refusals_cmd(ops: usize, ctx: &Ctx) -> Result<Value> {
    let mut c = VpndCluster::start(&ctx.vpnd, 3, &ctx.work_dir, &ctx.log_dir, "refusals")?;
    c.wait_all_ready(Duration::from_secs(60)).await?;
    let r = vpn_benches::refusals::run(&c.endpoints(), ops, &ctx.run_id).await;
    c.stop_all().await;
    r
}

async fn failover_cmd(f: &FailoverOpts, ctx: &Ctx) -> Result<Value> {
    let cfg =
        FailoverConfig { rounds: f.rounds, request_timeout: f.failover_request_timeout, retry_pause: f.retry_pause };
    let mut c = match ctx.tls {
        true => VpndCluster::start_tls(&ctx.vpnd, 3, &ctx.work_dir, &ctx.log_dir, "failover-tls")?,
        false => VpndCluster::start(&ctx.vpnd, 3, &ctx.work_dir, &ctx.log_dir, "failover")?,
    };
    c.wait_all_ready(Duration::from_secs(60)).await?;
    let r = failover::run(&mut c, &cfg, &ctx.run_id).await;
    c.stop_all().await;
    r
}

async fn single_cmd(s: &SingleOpts, ctx: &Ctx) -> Result<Value> {
    let cfg = SingleConfig {
        users: s.users,
        restarts: s.restarts,
        settle: s.settle,
        create_concurrency: 64,
        request_timeout: Duration::from_secs(10),
        tls: ctx.tls,
    };
    single::run(&ctx.vpnd, &ctx.work_dir, &ctx.log_dir, &cfg, &ctx.run_id).await
}

fn machine(etcd: &Path) -> Value {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let mem_kib = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .map(|v| v.trim().trim_end_matches("kB").trim().to_owned());
    let etcd_version = std::process::Command::new(etcd)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_owned));
    json!({
        "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "mem_total_kib": mem_kib,
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
        "etcd_version": etcd_version,
    })
}

/// Warning and error lines in every spawned process's log.
fn node_log_problems(dir: &Path) -> Value {
    let mut out = serde_json::Map::new();
    let Ok(groups) = std::fs::read_dir(dir) else {
        return Value::Null;
    };
    for group in groups.flatten() {
        let Ok(files) = std::fs::read_dir(group.path()) else {
            continue;
        };
        for file in files.flatten() {
            let (warns, errors, samples) = log_problems(&file.path());
            if warns + errors > 0 {
                eprintln!("loadgen: {}: {warns} warnings, {errors} errors", file.path().display());
            }
            out.insert(
                file.path().display().to_string(),
                json!({ "warnings": warns, "errors": errors, "samples": samples }),
            );
        }
    }
    Value::Object(out)
}
