//! One `vpnd` process under test.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Path of a binary of this package. Cargo builds a package's binaries
/// before its integration tests, next to their `deps/` directory; a bench
/// binary finds them beside itself (`cargo build -p cluster-tests --bins`).
pub fn own_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("executable path");
    let beside = exe.parent().map(|dir| dir.join(name));
    let above_deps = exe.parent().and_then(|deps| deps.parent()).map(|dir| dir.join(name));
    let found = [beside, above_deps].into_iter().flatten().find(|p| p.exists());
    found.unwrap_or_else(|| panic!("{name} is missing: run the tests through cargo, which builds it"))
}

pub struct NodeProcess {
    pub id: u64,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub data_dir: PathBuf,
    /// Flags that find the cluster (`--initial-members ...` or `--join ...`).
    pub bootstrap: Vec<String>,
    /// Further flags (e.g. Raft timings).
    pub extra: Vec<String>,
    /// The network namespace it runs in (see `netns`), if not the host's.
    pub netns: Option<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl NodeProcess {
    /// Whether this is a control-plane node (it serves gRPC); a data-plane-only
    /// node (`--dataplane --join` without `--voter`) is not.
    pub fn is_control_plane(&self) -> bool {
        let has = |flag: &str| self.extra.iter().any(|f| f == flag);
        !(has("--dataplane") && self.bootstrap.first().is_some_and(|b| b == "--join") && !has("--voter"))
    }

    pub fn new(id: u64, grpc: SocketAddr, http: SocketAddr, root: &std::path::Path) -> Self {
        Self {
            id,
            grpc,
            http,
            data_dir: root.join(format!("node-{id}")),
            bootstrap: Vec::new(),
            extra: Vec::new(),
            netns: None,
            log: root.join(format!("node-{id}.log")),
            child: None,
        }
    }

    pub fn args(&self) -> Vec<String> {
        let mut args = vec![
            "--id".into(),
            self.id.to_string(),
            "--listen".into(),
            self.grpc.to_string(),
            "--http".into(),
            self.http.to_string(),
            "--data-dir".into(),
            self.data_dir.display().to_string(),
        ];
        args.extend(self.bootstrap.iter().cloned());
        args.extend(self.extra.iter().cloned());
        args
    }

    /// Starts the process; its output goes to a log file next to the data dir.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "node {} already running", self.id);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("open node log");
        let mut command = match &self.netns {
            // `ip netns exec` enters the namespace and execs vpnd: same pid.
            Some(ns) => {
                let mut ip = Command::new("ip");
                ip.args(["netns", "exec", ns]).arg(own_binary("cluster-vpnd"));
                ip
            }
            None => Command::new(own_binary("cluster-vpnd")),
        };
        let child = command
            .args(self.args())
            .env("RUST_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log)
            .spawn()
            .expect("spawn vpnd");
        self.child = Some(child);
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// How the process ended, if it was started and has exited on its own.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// kill -9: no chance to flush, hand off or say goodbye.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits for exit (at most `timeout`, then kill -9 and panic).
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        if let Some(child) = &self.child {
            send_signal(child.id(), "TERM");
        }
        self.wait_exit(timeout)
    }

    /// Waits for the process to exit (at most `timeout`, then kill -9 and panic).
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("node is running");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().expect("wait vpnd") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("node {} still ran {timeout:?} later; log:\n{}", self.id, self.log_tail());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The last lines the node logged, for failure messages, after any
    /// panic it reported earlier (with the line that follows it).
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let panics = lines
            .iter()
            .enumerate()
            .filter(|(_, l)| l.contains("panicked at"))
            .flat_map(|(i, _)| lines[i..(i + 2).min(lines.len())].iter().copied());
        let tail = lines[lines.len().saturating_sub(40)..].iter().copied();
        panics.chain(tail).collect::<Vec<_>>().join("\n")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Sends a signal through the `kill` command (the workspace forbids unsafe code).
pub fn send_signal(pid: u32, signal: &str) {
    let status = Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status();
    assert!(status.is_ok_and(|s| s.success()), "kill -{signal} {pid} failed");
}
