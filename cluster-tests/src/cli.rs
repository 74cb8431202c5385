//! Runs the real `vpnctl` as a process against a test cluster.

use std::process::Command;

use serde_json::Value;

use crate::process::own_binary;

/// One finished `vpnctl` run.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Stdout as the one JSON document `-o json` promises (panics otherwise).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("not one JSON document ({e}): {}", self.stdout))
    }
}

/// `vpnctl --endpoints <endpoints> <args>`, ignoring any VPNCTL_ENDPOINTS of the caller.
pub fn vpnctl(endpoints: &str, args: &[&str]) -> Run {
    let out = Command::new(own_binary("cluster-vpnctl"))
        .arg("--endpoints")
        .arg(endpoints)
        .args(args)
        .env_remove("VPNCTL_ENDPOINTS")
        .output()
        .expect("run vpnctl");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}
