//! `propagation`: how fast user changes reach the data plane, on the real
//! Docker engine with real sing-box clients (see `vpn_benches::propagation`
//! and `vpn_benches::reconcile_scale`). Needs the engine image and the client
//! binary: `bash ops/images/build-sing-box.sh vpn-local/sing-box:1.14.4`.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde_json::json;
use vpn_benches::propagation::{self, Fixture};
use vpn_benches::reconcile_scale;

#[derive(Parser)]
#[command(name = "propagation", about = "CreateUser ack -> first connection through a real engine; reconcile at scale")]
struct Cli {
    /// The vpnd binary to spawn.
    #[arg(long, default_value = "target/release/vpnd")]
    vpnd: PathBuf,
    /// The engine image (built locally by ops/images/build-sing-box.sh).
    #[arg(long, default_value = cluster_tests::docker::ENGINE_IMAGE)]
    engine_image: String,
    /// Users measured one by one (each over Shadowsocks-2022 and VLESS-TLS at once).
    #[arg(long, default_value_t = 100)]
    users: usize,
    /// Fetches through a running client of a served user, per protocol.
    #[arg(long, default_value_t = 100)]
    bare_fetches: usize,
    /// Users of the scale measurements; 0 skips them.
    #[arg(long, default_value_t = 10_000)]
    bulk_users: u64,
    /// Concurrent CreateUser calls of the bulk creation.
    #[arg(long, default_value_t = 64)]
    create_concurrency: usize,
    /// Propagation samples once the node holds the bulk users.
    #[arg(long, default_value_t = 10)]
    hot_users: usize,
    /// Repetitions of the render-only measurement.
    #[arg(long, default_value_t = 10)]
    render_reps: usize,
    /// Where temp data dirs go (default: the system temp dir).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Where the spawned processes' logs go (kept after the run).
    #[arg(long, default_value = "target/loadgen-logs")]
    log_dir: PathBuf,
    /// The JSON results file.
    #[arg(long, default_value = "target/bench-results/propagation.json")]
    out: PathBuf,
}

fn check_engine(image: &str) -> Result<()> {
    let ok = Command::new("docker").args(["image", "inspect", image]).output().is_ok_and(|o| o.status.success());
    if !ok {
        bail!("Docker or the engine image {image} is missing: start Docker and run `bash ops/images/build-sing-box.sh {image}`");
    }
    let _ = cluster_tests::traffic::sing_box_binary();
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    check_engine(&cli.engine_image)?;
    let work_dir = cli.work_dir.clone().unwrap_or_else(std::env::temp_dir);
    let run_id = format!("{}", std::process::id());
    let log_dir = cli.log_dir.join(&run_id);
    std::fs::create_dir_all(&log_dir).with_context(|| format!("log dir {}", log_dir.display()))?;
    eprintln!("propagation: logs in {}", log_dir.display());

    let render_small = reconcile_scale::render_only(cli.users, cli.render_reps)?;
    let render_bulk = match cli.bulk_users {
        0 => json!(null),
        n => reconcile_scale::render_only(n as usize, cli.render_reps)?,
    };

    let mut fx = Fixture::start(&cli.vpnd, &cli.engine_image, &work_dir, &log_dir).await?;
    let first = fx.add_dataplane_node()?;
    let up = fx.wait_applied(first, propagation::ENGINES_UP).await?;
    eprintln!("propagation: data-plane node up, engines applied in {:.1} s", up.as_secs_f64());
    let result = async {
        let served = "served";
        let mut users = fx.users();
        users.create_user(vpn_proto::v1::CreateUserRequest { name: served.into(), ..Default::default() }).await?;
        fx.first_fetch(served, first, propagation::SS).await?;
        fx.first_fetch(served, first, propagation::VLESS).await?;
        let bare = propagation::bare_fetches(&fx, first, served, cli.bare_fetches).await?;
        let small = propagation::measure(&fx, first, served, "p", cli.users).await?;
        let (bulk, hot, join) = if cli.bulk_users > 0 {
            let bulk = reconcile_scale::bulk(&mut fx, first, cli.bulk_users, cli.create_concurrency).await?;
            let hot = propagation::measure(&fx, first, served, "h", cli.hot_users).await?;
            let join = reconcile_scale::join(&mut fx).await?;
            (bulk, hot, join)
        } else {
            (json!(null), json!(null), json!(null))
        };
        anyhow::Ok(json!({
            "bare_fetch_through_running_client": bare,
            "propagation": small,
            "bulk": bulk,
            "propagation_at_bulk_size": hot,
            "join_with_bulk_users": join,
        }))
    }
    .await;
    fx.stop().await;
    let mut doc = result?;
    doc["render_only"] = json!({"small": render_small, "bulk": render_bulk});
    doc["probe_every_ms"] = json!(propagation::PROBE_EVERY.as_millis());
    doc["engine_image"] = json!(cli.engine_image);
    let text = serde_json::to_string_pretty(&doc)?;
    if let Some(dir) = cli.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&cli.out, &text).with_context(|| format!("write {}", cli.out.display()))?;
    println!("{text}");
    Ok(())
}
