//! `handoff`: a data-plane node's cost under a churn of VLESS user changes
//! with live sessions on it, on the real Docker engine (see
//! `vpn_benches::handoff`). Needs the engine image and the client binary:
//! `bash ops/images/build-sing-box.sh vpn-local/sing-box:1.14.4`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use vpn_benches::handoff::{self, Config};
use vpn_benches::propagation::{self, Fixture};

#[derive(Parser)]
#[command(name = "handoff", about = "VLESS user churn with live sessions: generations, memory, CPU, drops, accounting")]
struct Cli {
    /// The vpnd binary to spawn.
    #[arg(long, default_value = "target/release/vpnd")]
    vpnd: PathBuf,
    /// The engine image (built locally by ops/images/build-sing-box.sh).
    #[arg(long, default_value = cluster_tests::docker::ENGINE_IMAGE)]
    engine_image: String,
    /// VLESS user changes (alternately an add and a delete of an earlier add).
    #[arg(long, default_value_t = 100)]
    changes: usize,
    /// Seconds the changes are spread over.
    #[arg(long, default_value_t = 600)]
    over_secs: u64,
    /// Live paced VLESS sessions held through the run.
    #[arg(long, default_value_t = 50)]
    sessions: usize,
    /// Users the sessions belong to.
    #[arg(long, default_value_t = 10)]
    session_users: usize,
    /// Where temp data dirs go (default: the system temp dir).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Where the spawned processes' logs go (kept after the run).
    #[arg(long, default_value = "target/loadgen-logs")]
    log_dir: PathBuf,
    /// The JSON results file.
    #[arg(long, default_value = "target/bench-results/handoff.json")]
    out: PathBuf,
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    if cli.changes == 0 || cli.sessions == 0 || cli.session_users == 0 || cli.over_secs == 0 {
        bail!("--changes, --over-secs, --sessions and --session-users must be at least 1");
    }
    let ok = std::process::Command::new("docker")
        .args(["image", "inspect", &cli.engine_image])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        bail!("Docker or the engine image {} is missing: run `bash ops/images/build-sing-box.sh`", cli.engine_image);
    }
    let work_dir = cli.work_dir.clone().unwrap_or_else(std::env::temp_dir);
    let log_dir = cli.log_dir.join(format!("handoff-{}", std::process::id()));
    std::fs::create_dir_all(&log_dir).with_context(|| format!("log dir {}", log_dir.display()))?;
    eprintln!("handoff: logs in {}", log_dir.display());

    let mut fx = Fixture::start(&cli.vpnd, &cli.engine_image, &work_dir, &log_dir).await?;
    let node = fx.add_dataplane_node()?;
    fx.wait_applied(node, propagation::ENGINES_UP).await?;
    let cfg = Config {
        changes: cli.changes,
        over: Duration::from_secs(cli.over_secs),
        sessions: cli.sessions,
        session_users: cli.session_users,
    };
    let result = handoff::run(&fx, node, &cfg).await;
    fx.stop().await;
    let text = serde_json::to_string_pretty(&result?)?;
    if let Some(dir) = cli.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&cli.out, &text).with_context(|| format!("write {}", cli.out.display()))?;
    println!("{text}");
    Ok(())
}
