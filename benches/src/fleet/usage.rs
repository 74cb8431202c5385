//! What processes use over a window, read from the kernel: CPU time
//! (utime + stime of `/proc/PID/stat`), resident memory (VmRSS), TCP bytes
//! per process (the `bytes_sent` / `bytes_received` counters of every
//! established socket, from `ss -tinpH`, attributed by the owning pid), the
//! loopback interface's bytes (`/proc/net/dev`), and the whole machine's busy
//! CPU (`/proc/stat`), which shows what else ran during the window.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};

/// CPU ticks (utime + stime) of `pid`.
pub fn cpu_ticks(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    parse_stat_ticks(&stat).ok_or_else(|| anyhow!("{path}: no utime/stime"))
}

/// utime + stime: fields 14 and 15, counted after the command's closing parenthesis.
fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// Clock ticks per second (`getconf CLK_TCK`; 100, Linux's USER_HZ, if that fails).
pub fn clock_ticks() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|t| *t > 0)
        .unwrap_or(100)
}

/// The machine's (busy, total) CPU ticks over all cores, from `/proc/stat`.
pub fn machine_ticks() -> Result<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").context("read /proc/stat")?;
    parse_machine(&stat).ok_or_else(|| anyhow!("/proc/stat: no cpu line"))
}

fn parse_machine(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line.split_whitespace().skip(1).take(8).filter_map(|f| f.parse().ok()).collect();
    if v.len() < 5 {
        return None;
    }
    let total: u64 = v.iter().sum();
    Some((total - v[3] - v[4], total))
}

/// Bytes the loopback interface carried (each packet once) so far.
pub fn loopback_bytes() -> Result<u64> {
    let dev = std::fs::read_to_string("/proc/net/dev").context("read /proc/net/dev")?;
    parse_loopback(&dev).ok_or_else(|| anyhow!("/proc/net/dev: no lo line"))
}

fn parse_loopback(dev: &str) -> Option<u64> {
    let line = dev.lines().find_map(|l| l.trim_start().strip_prefix("lo:"))?;
    line.split_whitespace().next()?.parse().ok()
}

/// Bytes (sent, received) of one process, by the other end of its sockets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Split {
    pub with_peer: (u64, u64),
    pub others: (u64, u64),
}

/// One established TCP socket, named by its two ends.
type SocketKey = (String, String);

/// Every established TCP socket of the given pids with its byte counters.
pub struct Sockets {
    by_pid: HashMap<u32, HashMap<SocketKey, (u64, u64)>>,
}

impl Sockets {
    /// Reads `ss -tinpH state established` now.
    pub fn read(pids: &[u32]) -> Result<Self> {
        let out = std::process::Command::new("ss")
            .args(["-tinpH", "state", "established"])
            .output()
            .context("run ss (iproute2)")?;
        if !out.status.success() {
            bail!("ss: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(Self { by_pid: parse_ss(&String::from_utf8_lossy(&out.stdout), pids) })
    }

    /// Bytes (sent, received) by `pid` since `earlier`: the growth of the
    /// sockets seen both times plus everything of sockets opened since.
    /// Split in two: over sockets whose other end `peer_pid` holds, and the rest.
    pub fn since(&self, earlier: &Sockets, pid: u32, peer_pid: u32) -> Split {
        let empty = HashMap::new();
        let before = earlier.by_pid.get(&pid).unwrap_or(&empty);
        let theirs = self.by_pid.get(&peer_pid).unwrap_or(&empty);
        let mut split = Split::default();
        for (key, (sent, received)) in self.by_pid.get(&pid).unwrap_or(&empty) {
            let (s0, r0) = before.get(key).copied().unwrap_or((0, 0));
            let reversed = (key.1.clone(), key.0.clone());
            let sum = if theirs.contains_key(&reversed) { &mut split.with_peer } else { &mut split.others };
            sum.0 += sent.saturating_sub(s0);
            sum.1 += received.saturating_sub(r0);
        }
        split
    }

    /// How many established sockets `pid` has.
    pub fn count(&self, pid: u32) -> usize {
        self.by_pid.get(&pid).map_or(0, HashMap::len)
    }
}

/// `ss -tinpH state established`: a socket line (Recv-Q Send-Q local peer
/// users:(("name",pid=N,fd=M))) followed by an indented line of counters.
fn parse_ss(text: &str, pids: &[u32]) -> HashMap<u32, HashMap<SocketKey, (u64, u64)>> {
    let mut out: HashMap<u32, HashMap<SocketKey, (u64, u64)>> = HashMap::new();
    let mut current: Option<(u32, SocketKey)> = None;
    for line in text.lines() {
        if !line.starts_with(char::is_whitespace) {
            let tokens: Vec<&str> = line.split_whitespace().collect();
            let pid = line
                .split_once("pid=")
                .and_then(|(_, rest)| rest.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|p| p.parse::<u32>().ok());
            current = match (pid, tokens.get(2), tokens.get(3)) {
                (Some(pid), Some(local), Some(peer)) if pids.contains(&pid) => {
                    Some((pid, ((*local).to_owned(), (*peer).to_owned())))
                }
                _ => None,
            };
            continue;
        }
        let Some((pid, key)) = current.take() else { continue };
        let counter = |name: &str| {
            line.split_whitespace().find_map(|f| f.strip_prefix(name)).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        };
        out.entry(pid).or_default().insert(key, (counter("bytes_sent:"), counter("bytes_received:")));
    }
    out
}

/// The 1-, 5- and 15-minute load averages (`/proc/loadavg`); other work on
/// the machine shows here.
pub fn loadavg() -> Option<[f64; 3]> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let v: Vec<f64> = text.split_whitespace().take(3).filter_map(|f| f.parse().ok()).collect();
    Some([*v.first()?, *v.get(1)?, *v.get(2)?])
}

/// The samples of a Prometheus text page whose metric name is one of `names`
/// (labels kept in the key), e.g. `vpn_proposals_total{outcome="ok"}`.
pub fn metric_samples(page: &str, names: &[&str]) -> BTreeMap<String, f64> {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(key, _)| names.contains(&key.split('{').next().unwrap_or(key)))
        .filter_map(|(key, value)| Some((key.to_owned(), value.parse().ok()?)))
        .collect()
}

/// A process's counters at one instant.
#[derive(Clone, Copy, Debug)]
pub struct ProcSample {
    pub at: Instant,
    pub ticks: u64,
}

impl ProcSample {
    pub fn now(pid: u32) -> Result<Self> {
        Ok(Self { at: Instant::now(), ticks: cpu_ticks(pid)? })
    }

    /// CPU used since `earlier`, in % of one core.
    pub fn cpu_pct_since(&self, earlier: &ProcSample, ticks_per_s: u64) -> f64 {
        let secs = self.at.saturating_duration_since(earlier.at).as_secs_f64().max(1e-9);
        100.0 * self.ticks.saturating_sub(earlier.ticks) as f64 / ticks_per_s.max(1) as f64 / secs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_ticks_skip_a_command_with_spaces_and_parentheses() {
        let stat = "4242 (vpnd (x) y) S 1 2 3 4 5 6 7 8 9 10 250 75 0 0 20 0 9 0 100 2000 300";
        assert_eq!(parse_stat_ticks(stat), Some(325));
        assert_eq!(parse_stat_ticks("1 (short) S 1"), None);
    }

    #[test]
    fn machine_busy_leaves_out_idle_and_iowait() {
        let stat = "cpu  100 5 50 1000 20 1 2 3 0 0\ncpu0 1 2 3 4 5\n";
        assert_eq!(parse_machine(stat), Some((161, 1181)));
    }

    #[test]
    fn metric_samples_keep_labels_and_skip_comments() {
        let page = "# HELP vpn_proposals Writes\n# TYPE vpn_proposals counter\n\
                    vpn_proposals_total{outcome=\"ok\"} 4031\nvpn_proposals_total{outcome=\"refused\"} 2\n\
                    vpn_raft_commit_index 842\nvpn_users{status=\"active\"} 5\n";
        let m = metric_samples(page, &["vpn_proposals_total", "vpn_raft_commit_index"]);
        assert_eq!(m.len(), 3);
        assert_eq!(m["vpn_proposals_total{outcome=\"ok\"}"], 4031.0);
        assert_eq!(m["vpn_raft_commit_index"], 842.0);
    }

    #[test]
    fn loopback_bytes_are_the_first_column_of_lo() {
        let dev = "Inter-|   Receive\n face |bytes packets\n    lo: 123456 789 0 0 0 0 0 0 123456 789 0 0 0 0 0 0\n  eth0: 1 2 3\n";
        assert_eq!(parse_loopback(dev), Some(123_456));
    }

    #[test]
    fn ss_counters_go_to_the_owning_pid() {
        let text = "0 0 127.0.0.1:1000 127.0.0.1:50000 users:((\"vpnd\",pid=11,fd=9))\n\
                    \t bbr wscale:10,10 bytes_sent:1615 bytes_acked:1615 bytes_received:1254 segs_out:9\n\
                    0 0 127.0.0.1:50000 127.0.0.1:1000 users:((\"loadgen\",pid=12,fd=5))\n\
                    \t bbr bytes_sent:1254 bytes_received:1615\n\
                    0 0 127.0.0.1:2000 127.0.0.1:50001 users:((\"other\",pid=13,fd=5))\n\
                    \t bbr bytes_sent:7 bytes_received:7\n\
                    0 0 127.0.0.1:1000 127.0.0.1:50002 users:((\"vpnd\",pid=11,fd=10))\n\
                    \t bbr bytes_received:10\n";
        let before = Sockets { by_pid: parse_ss(text, &[11, 12]) };
        assert_eq!(before.count(11), 2);
        assert_eq!(before.count(13), 0, "not asked for");
        let later =
            text.replace("bytes_sent:1615 bytes_acked:1615 bytes_received:1254", "bytes_sent:2000 bytes_received:1300");
        let after = Sockets { by_pid: parse_ss(&later, &[11, 12]) };
        let split = after.since(&before, 11, 12);
        assert_eq!(split, Split { with_peer: (385, 46), others: (0, 0) });
        let fresh = after.since(&Sockets { by_pid: HashMap::new() }, 11, 12);
        assert_eq!(fresh, Split { with_peer: (2000, 1300), others: (0, 10) });
    }
}
