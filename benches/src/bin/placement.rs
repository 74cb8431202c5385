//! `placement`: the scheduler at scale, without containers. A local 3-node
//! `vpnd` cluster (release), `--nodes` simulated data-plane agents
//! (`cluster_tests::sim`: the real wire protocol, an engine double that
//! applies at once) and `--users` users. Measures the time until everyone is
//! placed on 2 nodes, one node's failover (silent -> marked down -> all its
//! users placed elsewhere), the leader's RSS and its plan times, and prints
//! one table. The processes' data and logs live in a temp dir removed at exit.
//!
//! By default the nodes register first and users are placed as they are
//! created; `--users-first` registers the nodes after the users, so the
//! scheduler places everyone at once (`--max-moves-per-sec` per plan; vpnd's
//! own default is 2000, this binary's 20000).
//!
//!     cargo build --release -p vpn-node
//!     cargo run --release -p vpn-benches --bin placement -- --users 100000 --nodes 50
//!     cargo run --release -p vpn-benches --bin placement -- --users-first --max-moves-per-sec 2000

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use cluster_tests::sim::{check_placements, create_users, Fleet, Histogram, Scrape};
use vpn_benches::report::log_problems;
use vpn_benches::vpnd::{wait_leader, VpndCluster};
use vpn_proto::v1::nodes_client::NodesClient;
use vpn_proto::v1::{GetNodeRequest, ReadConsistency};

/// vpnd's default; the scenario's expectations follow it.
const REPLICAS: u64 = 2;
/// Most minus fewest placements per node once converged.
const MAX_SPREAD: u64 = 2;
/// Scrapes walk every user on the leader: pace them.
const POLL: Duration = Duration::from_millis(100);
/// Placed users sit still this long before the failover: steady-state plans.
const SETTLE: Duration = Duration::from_secs(5);

#[derive(Parser)]
#[command(name = "placement", about = "Placement and failover of many users on simulated data-plane nodes")]
struct Cli {
    #[arg(long, default_value_t = 100_000)]
    users: usize,
    /// Simulated data-plane nodes.
    #[arg(long, default_value_t = 50)]
    nodes: usize,
    /// Users per node at most (0: no limit).
    #[arg(long, default_value_t = 0)]
    capacity: u32,
    /// vpnd's --max-moves-per-sec: the most moves one plan makes (vpnd's default: 2000).
    #[arg(long, default_value_t = 20_000)]
    max_moves_per_sec: usize,
    /// Create the users before the nodes register (all in one entry): the
    /// scheduler then places everyone at once, as many as
    /// --max-moves-per-sec per plan. By default the nodes come first and
    /// users are placed as they are created.
    #[arg(long)]
    users_first: bool,
    /// CreateUser calls in flight (to the leader).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Longest wait for placement, and for the failover.
    #[arg(long, default_value_t = 600)]
    deadline_secs: u64,
    /// The vpnd binary to spawn.
    #[arg(long, default_value = "target/release/vpnd")]
    vpnd: PathBuf,
    /// Where the temp data dir goes (default: the system temp dir).
    #[arg(long)]
    work_dir: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    if cli.nodes < REPLICAS as usize + 1 {
        bail!("--nodes: give at least {} (a failover needs a spare node)", REPLICAS + 1);
    }
    tokio::select! {
        r = run(&cli) => r,
        _ = tokio::signal::ctrl_c() => bail!("interrupted; spawned processes were killed"),
    }
}

async fn run(cli: &Cli) -> Result<()> {
    let deadline = Duration::from_secs(cli.deadline_secs);
    let flags = vec![
        "--replicas".into(),
        REPLICAS.to_string(),
        "--max-moves-per-sec".into(),
        cli.max_moves_per_sec.to_string(),
    ];
    let work_dir = cli.work_dir.clone().unwrap_or_else(std::env::temp_dir);
    let log_dir = work_dir.join("placement-logs");
    let mut voters = VpndCluster::start_with(&cli.vpnd, 3, &work_dir, &log_dir, "placement", &flags)?;
    voters.wait_all_ready(Duration::from_secs(60)).await?;
    let endpoints = voters.endpoints();
    let leader = wait_leader(&endpoints, Duration::from_secs(30)).await?.index;
    let (http, leader_grpc) = (voters.specs[leader].http, voters.specs[leader].grpc);
    let grpc: Vec<SocketAddr> = voters.specs.iter().map(|s| s.grpc).collect();
    let rss = || voters.proc(leader).ok().and_then(|p| p.rss_kib().ok());
    let rss_idle = rss();

    let users = cli.users as u64;
    // Placement starts with the first user (nodes first) or with the nodes' registration (users first).
    // Users go straight to the leader, as `loadgen` writes by default.
    let (mut fleet, created, placing_from, before) = if cli.users_first {
        let start = Instant::now();
        create_users(&[leader_grpc], "u", cli.users, cli.concurrency).await?;
        let (created, before) = (start.elapsed(), scrape(http).await?);
        let placing_from = Instant::now();
        (Fleet::start_together(&grpc, cli.nodes, cli.capacity).await?, created, placing_from, before)
    } else {
        let fleet = Fleet::start(&grpc, cli.nodes, cli.capacity).await?;
        let (start, before) = (Instant::now(), scrape(http).await?);
        create_users(&[leader_grpc], "u", cli.users, cli.concurrency).await?;
        (fleet, start.elapsed(), start, before)
    };
    let rss_created = rss();
    let ids = fleet.ids();
    let converged = wait("placement to converge", deadline, || async {
        let s = scrape(http).await?;
        s.converged(&ids, users, REPLICAS, MAX_SPREAD).map_err(anyhow::Error::msg).map(|()| s)
    })
    .await?;
    let placed = placing_from.elapsed();
    let everyone: BTreeSet<u64> = ids.iter().copied().collect();
    check_placements(leader_grpc, cli.users, REPLICAS as usize, &everyone).await.map_err(anyhow::Error::msg)?;
    tokio::time::sleep(SETTLE).await;
    let settled = scrape(http).await?;
    let rss_placed = rss();

    let victim = ids[ids.len() / 2];
    let on_victim = settled.placements.get(&victim).copied().unwrap_or(0);
    let silent_since = fleet.stop_heartbeats(victim).context("the victim's heartbeats were never acknowledged")?;
    let nodes = NodesClient::new(cluster_tests::cluster::channel(leader_grpc));
    wait("the silent node to be marked down", deadline, || async {
        let req = GetNodeRequest { id: victim, consistency: ReadConsistency::Local.into() };
        let node = nodes.clone().get_node(req).await?.into_inner();
        if node.status == "down" {
            Ok(())
        } else {
            bail!("node {victim} is {}", node.status)
        }
    })
    .await?;
    let down = silent_since.elapsed();
    let others: Vec<u64> = ids.iter().copied().filter(|id| *id != victim).collect();
    let after = wait("the silent node's users to be placed elsewhere", deadline, || async {
        let s = scrape(http).await?;
        match s.placements.get(&victim).copied().unwrap_or(0) {
            0 => s.placed(&others, users, REPLICAS).map_err(anyhow::Error::msg).map(|()| s),
            left => bail!("{left} placements still on node {victim}"),
        }
    })
    .await?;
    let failed_over = silent_since.elapsed();
    let survivors: BTreeSet<u64> = others.iter().copied().collect();
    check_placements(leader_grpc, cli.users, REPLICAS as usize, &survivors).await.map_err(anyhow::Error::msg)?;
    let leader_now = wait_leader(&endpoints, Duration::from_secs(30)).await?.index;
    let rss_after = rss();
    let log = std::fs::read_to_string(voters.log_path(leader)).unwrap_or_default();
    let plans_with_moves = log.matches("scheduler: placing users").count();
    let (warns, errors, _) = log_problems(&voters.log_path(leader));
    let (acked, failed) = fleet.heartbeats();

    let secs = |d: Duration| format!("{:.2} s", d.as_secs_f64());
    let mib = |kib: Option<u64>| kib.map_or("?".into(), |k| format!("{:.0} MiB", k as f64 / 1024.0));
    let capacity = if cli.capacity == 0 { "no limit".to_owned() } else { cli.capacity.to_string() };
    println!(
        "placement: {} users on {} simulated nodes (replicas {REPLICAS}, capacity {capacity}, \
         --max-moves-per-sec {}), 3 voters, {}",
        cli.users,
        cli.nodes,
        cli.max_moves_per_sec,
        if cli.users_first { "users first" } else { "nodes first" }
    );
    if leader_now != leader {
        println!("  (the leader changed during the run: node {}'s figures are partial)", voters.specs[leader].id);
    }
    let row = |what: &str, value: String| println!("  {what:<35} {value}");
    row(
        "users created",
        format!("{} ({:.0}/s, {} in flight)", secs(created), users as f64 / created.as_secs_f64(), cli.concurrency),
    );
    if cli.users_first {
        row("everyone placed, from registration", secs(placed));
    } else {
        row(
            "everyone placed, from first create",
            format!("{} ({} after the last create)", secs(placed), secs(placed - created)),
        );
    }
    let load = |s: &Scrape, ids: &[u64]| match s.extremes(ids) {
        Some(((lo, l), (hi, h))) => format!("{l}..{h} (node {lo}..node {hi})"),
        None => "-".into(),
    };
    row("placements per node: placed", load(&settled, &ids));
    row("placements per node: failed over", load(&after, &others));
    row(
        "nodes marked down: before / after",
        format!("{} / {} (vpn_failovers_total)", settled.failovers, after.failovers),
    );
    row("failover: node's placements", on_victim.to_string());
    row("failover: silent -> marked down", secs(down));
    row(
        "failover: silent -> all re-placed",
        format!("{} ({} after down)", secs(failed_over), secs(failed_over - down)),
    );
    row("leader RSS: idle / users / placed", format!("{} / {} / {}", mib(rss_idle), mib(rss_created), mib(rss_placed)));
    row("leader RSS: after failover", mib(rss_after));
    row("plan time: while placing", plans(&converged.plan.since(&before.plan)));
    row("plan time: steady (nothing to move)", plans(&settled.plan.since(&converged.plan)));
    row("plan time: failover window", plans(&after.plan.since(&settled.plan)));
    row("plans that moved users", plans_with_moves.to_string());
    row("heartbeats acknowledged / failed", format!("{acked} / {failed}"));
    row("leader log: warnings / errors", format!("{warns} / {errors}"));
    // The first few of each kind, errors first.
    for level in [" ERROR ", " WARN "] {
        for line in log.lines().map(plain).filter(|l| l.contains(level)).take(3) {
            println!("    {}", line.chars().take(300).collect::<String>());
        }
    }
    Ok(())
}

/// A log line without its terminal colours.
fn plain(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            chars.by_ref().find(char::is_ascii_alphabetic);
        } else {
            out.push(c);
        }
    }
    out
}

async fn scrape(http: SocketAddr) -> Result<Scrape> {
    Scrape::fetch(http).await.map_err(anyhow::Error::msg)
}

/// Polls `check` every [`POLL`] until it succeeds, or fails after `deadline`.
async fn wait<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let until = Instant::now() + deadline;
    loop {
        tokio::time::sleep(POLL).await;
        match check().await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= until => return Err(e.context(format!("{what}: not within {deadline:?}"))),
            Err(_) => {}
        }
    }
}

/// `count, mean, p50 <= bound, max <= bound` of a plan-time histogram
/// (Prometheus buckets: the bounds are powers of two from 0.1 ms).
fn plans(h: &Histogram) -> String {
    let ms = |s: Option<f64>| s.map_or("-".into(), |s| format!("{:.1} ms", s * 1000.0));
    format!("{} plans, mean {}, p50 <= {}, max <= {}", h.count, ms(h.mean()), ms(h.bound(0.5)), ms(h.bound(1.0)))
}
