//! `dataplane_failover`: time from a data-plane node's death (its vpnd and
//! its engines, as a host failure) to its users being served elsewhere, at
//! the default settings, on the real Docker engine with real sing-box
//! clients built from the users' subscriptions.
//!
//! Each round: 3 voters, 3 data-plane nodes (Shadowsocks-2022), `--users`
//! users placed on 2 nodes each; the node holding most users is killed.
//! Reported per round: kill -> node marked down (detection, bounded below by
//! `down_after`, the baseline of this run), kill -> every user placed off it,
//! kill -> a client built from a moved user's refreshed subscription moves
//! data through the new node. Needs `bash ops/images/build-sing-box.sh` and
//! `cargo build --release -p cluster-tests --bins -p vpn-benches`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use clap::Parser;
use cluster_tests::dataplane::DataplaneCluster;
use cluster_tests::traffic::{fetch_via_socks_within, outbound_from_link, HttpSource, SingBoxClient};

const SS: &str = "shadowsocks-2022";
/// vpnd's default `--down-after-ms`.
const DOWN_AFTER: Duration = Duration::from_secs(5);
const GIVE_UP: Duration = Duration::from_secs(60);

#[derive(Parser)]
#[command(name = "dataplane_failover", about = "data-plane node death -> users served elsewhere")]
struct Cli {
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    #[arg(long, default_value_t = 20)]
    users: usize,
}

struct Round {
    down: Duration,
    moved: Duration,
    served: Duration,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    let cli = Cli::parse();
    let source = HttpSource::start().await;
    let mut rounds = Vec::new();
    for i in 0..cli.rounds {
        let r = round(&source, cli.users).await;
        println!(
            "round {}: marked down {:.2} s, all users placed off it {:.2} s, served elsewhere {:.2} s",
            i + 1,
            r.down.as_secs_f64(),
            r.moved.as_secs_f64(),
            r.served.as_secs_f64()
        );
        rounds.push(r);
    }
    let median = |f: fn(&Round) -> Duration| {
        let mut v: Vec<Duration> = rounds.iter().map(f).collect();
        v.sort();
        v[v.len() / 2]
    };
    let (down, moved, served) = (median(|r| r.down), median(|r| r.moved), median(|r| r.served));
    let max_served = rounds.iter().map(|r| r.served).max().unwrap_or_default();
    println!(
        "median of {} rounds: marked down {:.2} s, placed off {:.2} s, served elsewhere {:.2} s (max {:.2} s); \
         baseline down_after {:.1} s: served/down_after = {:.2}x",
        rounds.len(),
        down.as_secs_f64(),
        moved.as_secs_f64(),
        served.as_secs_f64(),
        max_served.as_secs_f64(),
        DOWN_AFTER.as_secs_f64(),
        served.as_secs_f64() / DOWN_AFTER.as_secs_f64()
    );
}

async fn round(source: &HttpSource, users: usize) -> Round {
    let mut dp = DataplaneCluster::start(3).await;
    let nodes = [dp.add_node(&[SS]), dp.add_node(&[SS]), dp.add_node(&[SS])];
    let names: Vec<String> = (0..users).map(|i| format!("f{i:03}")).collect();
    for name in &names {
        dp.ok(&["user", "add", name]).await;
    }
    let placements = cluster_tests::eventually("every user placed twice", GIVE_UP, || async {
        let mut all = BTreeMap::new();
        for name in &names {
            let p = dp.placements(name).await;
            if p.len() != 2 {
                return Err(format!("{name}: {p:?}"));
            }
            all.insert(name.clone(), p);
        }
        Ok(all)
    })
    .await;
    let mut load: BTreeMap<u64, usize> = BTreeMap::new();
    placements.values().flatten().for_each(|id| *load.entry(*id).or_default() += 1);
    for (id, n) in &load {
        dp.caught_up(*id, *n as u64).await;
    }
    let victim = load.iter().max_by_key(|(id, n)| (**n, **id)).map(|(id, _)| *id).expect("a loaded node");
    let moved_user = placements.iter().find(|(_, p)| p.contains(&victim)).map(|(n, _)| n.clone()).expect("a user");

    let killed = Instant::now();
    dp.kill_node(victim);
    let (mut down, mut moved, mut served) = (None, None, None);
    while down.is_none() || moved.is_none() || served.is_none() {
        assert!(
            killed.elapsed() < GIVE_UP,
            "no failover of node {victim} within {GIVE_UP:?}: down {down:?}, moved {moved:?}, served {served:?}; \
             {moved_user}'s links: {:?}\n{}",
            dp.subscription_links(&moved_user).await,
            nodes.iter().map(|n| dp.diagnose(n.id)).collect::<Vec<_>>().join("\n")
        );
        if down.is_none() {
            let node = dp.ok(&["-o", "json", "node", "show", &victim.to_string()]).await.json();
            if node["status"] == "down" {
                down = Some(killed.elapsed());
            }
        }
        if moved.is_none() {
            let list = dp.ok(&["-o", "json", "user", "list"]).await.json();
            let on_victim = list["users"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|u| u["placements"].as_array().into_iter().flatten().any(|p| p.as_u64() == Some(victim)));
            if !on_victim {
                moved = Some(killed.elapsed());
            }
        }
        if served.is_none() {
            let links = dp.subscription_links(&moved_user).await;
            let fresh = links.iter().find(|l| {
                let id = dp.node_of_link(&nodes, l);
                id != victim && !placements[&moved_user].contains(&id)
            });
            if let Some(url) = fresh {
                let client = SingBoxClient::start(outbound_from_link(url, None)).await;
                let probe =
                    fetch_via_socks_within(client.proxy, source.addr, "/1024", 1024, Duration::from_millis(500));
                if probe.await.is_ok() {
                    served = Some(killed.elapsed());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Round { down: down.unwrap_or_default(), moved: moved.unwrap_or_default(), served: served.unwrap_or_default() }
}
