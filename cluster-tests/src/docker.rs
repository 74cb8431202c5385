//! Docker for tests whose names start with `docker_`: whether they can run,
//! and cleanup of the engine containers a test's data-plane nodes leave
//! behind (vpnd never stops them itself). Under CI (CI=true) a missing Docker
//! daemon or engine image fails the test; elsewhere it skips, saying why.

use std::process::{Command, Stdio};

/// The engine image tests run, built by `ops/images/build-sing-box.sh`.
pub const ENGINE_IMAGE: &str = "vpn-local/sing-box:1.14.4";
/// The label the runtime puts on every container of a node.
const OWNER_LABEL: &str = "vpn.owner-node";

fn docker(args: &[&str]) -> Option<String> {
    let out = Command::new("docker").args(args).stdin(Stdio::null()).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether a `docker_*` test can run here; panics under CI when it cannot.
pub fn available(test: &str) -> bool {
    let missing = if docker(&["info", "--format", "{{.ServerVersion}}"]).is_none() {
        "a Docker daemon: start Docker".to_owned()
    } else if docker(&["image", "inspect", ENGINE_IMAGE]).is_none() {
        format!("the engine image {ENGINE_IMAGE}: build it with `bash ops/images/build-sing-box.sh {ENGINE_IMAGE}`")
    } else {
        return true;
    };
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{test} needs {missing} (CI=true: not skipped)");
    eprintln!("skipping {test}: it needs {missing} (under CI=true this fails)");
    false
}

/// Removes every container of data-plane node `owner` when dropped, so a
/// failed test leaves nothing running.
pub struct Engines {
    pub owner: u64,
}

impl Engines {
    /// Ids of the node's running containers.
    pub fn running(&self) -> Vec<String> {
        self.ps("-q")
    }

    /// Removes the node's containers and its nftables table now (a node's host dying with it).
    pub fn remove_all(&self) {
        let ids = self.ps("-aq");
        if !ids.is_empty() {
            let mut args = vec!["rm", "-f"];
            args.extend(ids.iter().map(String::as_str));
            let _ = docker(&args);
        }
        let table = format!("vpnd_{}", self.owner);
        let _ = std::process::Command::new("nft").args(["delete", "table", "inet", &table]).output();
    }

    /// Whether the node's nftables table (routes, per-user counts) exists.
    pub fn has_table(&self) -> bool {
        let table = format!("vpnd_{}", self.owner);
        std::process::Command::new("nft")
            .args(["list", "table", "inet", &table])
            .output()
            .is_ok_and(|o| o.status.success())
    }

    fn ps(&self, flags: &str) -> Vec<String> {
        let filter = format!("label={OWNER_LABEL}={}", self.owner);
        docker(&["ps", flags, "--filter", &filter]).unwrap_or_default().split_whitespace().map(String::from).collect()
    }
}

impl Drop for Engines {
    fn drop(&mut self) {
        self.remove_all();
    }
}

/// A node id no other test (or leftover container) uses: container names and
/// labels carry the node id, and engines share the host's network.
pub fn unique_node_id() -> u64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    1_000_000 + u64::from(std::process::id() % 1000) * 1_000_000 + u64::from(nanos % 1_000_000)
}
