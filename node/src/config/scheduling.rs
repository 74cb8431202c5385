//! Settings of the leader's duties (liveness, scheduler, lifecycle) and of the
//! data-plane heartbeat. Every voter should run with the same values: any of
//! them may become the leader.

use std::time::Duration;

use clap::Args as ClapArgs;

use crate::error::Error;

/// The flags; the `--config` file takes the same names in kebab-case.
#[derive(Debug, Default, Clone, ClapArgs)]
pub struct SchedulingArgs {
    /// How many data-plane nodes serve each user (default 2; fewer when fewer are healthy).
    #[arg(long)]
    pub replicas: Option<usize>,
    /// A data-plane node silent this long is marked down and its users move (default 5000).
    #[arg(long)]
    pub down_after_ms: Option<u64>,
    /// How often a data-plane node reports to the leader (default 1000).
    #[arg(long)]
    pub node_heartbeat_ms: Option<u64>,
    /// Most placement moves the scheduler makes per second (default 2000), so a mass failover does not stampede.
    #[arg(long)]
    pub max_moves_per_sec: Option<usize>,
    /// Base of the subscription URLs shown to operators, e.g. https://sub.example.com (default: http://<--http>).
    #[arg(long)]
    pub subscription_base_url: Option<String>,
}

/// Validated settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchedulingConfig {
    pub replicas: usize,
    pub down_after: Duration,
    pub node_heartbeat: Duration,
    pub max_moves_per_sec: usize,
    /// Without a trailing slash.
    pub subscription_base_url: String,
}

impl SchedulingConfig {
    pub fn defaults(http: std::net::SocketAddr) -> Self {
        Self {
            replicas: 2,
            down_after: Duration::from_secs(5),
            node_heartbeat: Duration::from_secs(1),
            max_moves_per_sec: 2000,
            subscription_base_url: format!("http://{http}"),
        }
    }
}

pub fn parse(args: SchedulingArgs, http: std::net::SocketAddr) -> Result<SchedulingConfig, Error> {
    let defaults = SchedulingConfig::defaults(http);
    let replicas = args.replicas.unwrap_or(defaults.replicas);
    if !(1..=16).contains(&replicas) {
        return Err(Error::invalid("--replicas", "must be 1-16 (default 2)"));
    }
    let node_heartbeat = args.node_heartbeat_ms.map_or(defaults.node_heartbeat, Duration::from_millis);
    if !(Duration::from_millis(50)..=Duration::from_secs(60)).contains(&node_heartbeat) {
        return Err(Error::invalid("--node-heartbeat-ms", "must be 50-60000 ms (default 1000)"));
    }
    let down_after = args.down_after_ms.map_or(defaults.down_after, Duration::from_millis);
    if down_after < node_heartbeat * 3 {
        return Err(Error::invalid(
            "--down-after-ms",
            "must be at least 3 node heartbeats (--node-heartbeat-ms), or one lost heartbeat marks a node down",
        ));
    }
    let max_moves_per_sec = args.max_moves_per_sec.unwrap_or(defaults.max_moves_per_sec);
    if max_moves_per_sec == 0 {
        return Err(Error::invalid("--max-moves-per-sec", "must be at least 1 (default 2000)"));
    }
    let subscription_base_url = match args.subscription_base_url {
        None => defaults.subscription_base_url,
        Some(url) => {
            let trimmed = url.trim().trim_end_matches('/');
            if !(trimmed.starts_with("http://") || trimmed.starts_with("https://"))
                || trimmed.contains(char::is_whitespace)
            {
                return Err(Error::invalid(
                    "--subscription-base-url",
                    &format!("{url:?} is not an http(s) URL, e.g. https://sub.example.com"),
                ));
            }
            trimmed.to_owned()
        }
    };
    Ok(SchedulingConfig { replicas, down_after, node_heartbeat, max_moves_per_sec, subscription_base_url })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http() -> std::net::SocketAddr {
        ([127, 0, 0, 1], 7080).into()
    }

    #[test]
    fn defaults_and_bounds() {
        let c = parse(SchedulingArgs::default(), http()).expect("defaults");
        assert_eq!(c, SchedulingConfig::defaults(http()));
        assert_eq!(c.subscription_base_url, "http://127.0.0.1:7080");
        let bad = |args: SchedulingArgs, flag: &str| {
            let e = parse(args, http()).expect_err("refused").to_string();
            assert!(e.contains(flag), "{e}");
        };
        bad(SchedulingArgs { replicas: Some(0), ..Default::default() }, "--replicas");
        bad(SchedulingArgs { down_after_ms: Some(1000), ..Default::default() }, "--down-after-ms");
        bad(SchedulingArgs { node_heartbeat_ms: Some(10), ..Default::default() }, "--node-heartbeat-ms");
        bad(SchedulingArgs { max_moves_per_sec: Some(0), ..Default::default() }, "--max-moves-per-sec");
        bad(
            SchedulingArgs { subscription_base_url: Some("sub.example.com".into()), ..Default::default() },
            "--subscription-base-url",
        );
        let c = parse(
            SchedulingArgs { subscription_base_url: Some("https://sub.example.com/".into()), ..Default::default() },
            http(),
        )
        .expect("url");
        assert_eq!(c.subscription_base_url, "https://sub.example.com");
    }
}
