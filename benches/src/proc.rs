//! Child processes the benchmarks start: each is killed (SIGKILL) when its
//! [`Proc`] is dropped, so an error or a panic leaves nothing running.

use std::fs::{File, OpenOptions};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use rustix::process::{kill_process, Pid, Signal};
use tokio::process::{Child, Command};

/// A running child; its stdout and stderr go to `log`.
pub struct Proc {
    pub name: String,
    pub log: PathBuf,
    pub started: Instant,
    child: Child,
}

impl Proc {
    /// Spawns `program args`, appending its output to `log`.
    pub fn spawn(name: &str, program: &Path, args: &[String], log: &Path) -> Result<Self> {
        let out = open_log(log)?;
        let err = out.try_clone().with_context(|| format!("log file {}", log.display()))?;
        let started = Instant::now();
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {} ({name})", program.display()))?;
        Ok(Self { name: name.to_owned(), log: log.to_owned(), started, child })
    }

    pub fn pid(&self) -> Result<u32> {
        self.child.id().ok_or_else(|| anyhow!("{} has already exited", self.name))
    }

    /// Fails with the log's tail when the process has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited with {status}; last log lines:\n{}", self.name, log_tail(&self.log, 20));
        }
        Ok(())
    }

    /// kill -9, then reap.
    pub async fn kill9(&mut self) -> Result<()> {
        self.child.start_kill().with_context(|| format!("kill -9 {}", self.name))?;
        self.child.wait().await?;
        Ok(())
    }

    /// SIGTERM, then wait up to `deadline` for the exit (SIGKILL after that).
    pub async fn terminate(&mut self, deadline: Duration) -> Result<ExitStatus> {
        let pid = Pid::from_raw(self.pid()? as i32).ok_or_else(|| anyhow!("bad pid"))?;
        kill_process(pid, Signal::TERM).with_context(|| format!("SIGTERM {}", self.name))?;
        match tokio::time::timeout(deadline, self.child.wait()).await {
            Ok(status) => Ok(status?),
            Err(_) => {
                self.kill9().await?;
                bail!("{} did not exit within {deadline:?} of SIGTERM (killed)", self.name)
            }
        }
    }

    /// Resident memory (VmRSS) in KiB.
    pub fn rss_kib(&self) -> Result<u64> {
        rss_kib(self.pid()?)
    }
}

fn open_log(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open log file {}", path.display()))
}

/// The last `n` lines of a log file (or why it could not be read).
pub fn log_tail(path: &Path, n: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// VmRSS of `pid` from /proc, in KiB.
pub fn rss_kib(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow!("no VmRSS in {path}"))
}

/// `n` distinct free loopback ports: bound to 127.0.0.1:0 together, then released.
pub fn free_ports(n: usize) -> Result<Vec<SocketAddr>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()
        .context("bind 127.0.0.1:0")?;
    Ok(listeners.iter().map(TcpListener::local_addr).collect::<std::io::Result<Vec<_>>>()?)
}
