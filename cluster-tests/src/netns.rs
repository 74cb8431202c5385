//! Network namespaces for fault tests whose names start with `netns_`.
//!
//! A [`Lab`] gives each node a namespace of its own, and the test's clients
//! one more; each has a veth pair to a bridge in a hub namespace, with its
//! address (10.77.0.x/24) inside the namespace only, so nothing of the test
//! shows on the host's interfaces (but for the host link below). Faults are iptables DROP rules inside a
//! node's namespace: peers lose each other while clients still reach both.
//!
//! A lab made [`Lab::with_host_link`] is also reached from the host: one
//! more veth pair joins the host to the bridge, with 10.77.k.254/24 on the
//! host's end, where k (1-250) is the lab's own: the host end's name
//! (`vpnlabh<k>`) claims it, so labs that run at once never share a route.
//! Processes that need the host's network (a data-plane node, whose engine
//! containers use host networking) then reach the lab's nodes like its
//! clients do, and no fault rule stands between them.
//!
//! Everything is made with `ip` and `iptables` and removed when the lab is
//! dropped, also when the test fails; a lab left by a killed test run is
//! removed by the next one (namespace names carry the owning process id).
//! It needs root. Under CI (CI=true) a machine that cannot make namespaces
//! fails the test; elsewhere the test skips, saying why.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use crate::lock;

const PREFIX: &str = "vpnlab";
/// The last octet of the clients' address.
const CLIENT: u8 = 250;

pub struct Lab {
    name: String,
    /// Grows while the lab is in use ([`Lab::add_node`]).
    nodes: Mutex<BTreeMap<u64, Ipv4Addr>>,
    /// The third octet of the lab's addresses: 0 unless it links to the host.
    subnet: u8,
    /// Namespaces made so far, removed on drop.
    made: Mutex<Vec<String>>,
}

impl Lab {
    /// A lab with nodes `1..=nodes` and a client namespace; `None` (after
    /// saying why) when this machine cannot make one and CI is not set.
    pub fn new(test: &str, nodes: u64) -> Option<Lab> {
        Self::make(test, nodes, false)
    }

    /// As [`Lab::new`], with a link from the host into the lab (see the
    /// module's doc).
    pub fn with_host_link(test: &str, nodes: u64) -> Option<Lab> {
        Self::make(test, nodes, true)
    }

    fn make(test: &str, nodes: u64, host_link: bool) -> Option<Lab> {
        if let Err(why) = run("ip", &["netns", "list"]).and_then(|_| run("iptables", &["--version"])) {
            return skip(test, &format!("the `ip` and `iptables` commands: {why}"));
        }
        remove_abandoned_labs();
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!("{PREFIX}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let mut lab = Lab { name, nodes: Mutex::default(), subnet: 0, made: Mutex::default() };
        match lab.build(nodes, host_link) {
            Ok(()) => Some(lab),
            Err(why) => {
                drop(lab);
                skip(test, &format!("network namespaces (run as root): {why}"))
            }
        }
    }

    fn build(&mut self, nodes: u64, host_link: bool) -> Result<(), String> {
        let hub = self.ns("hub");
        self.add_ns(&hub)?;
        run("ip", &["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        run("ip", &["-n", &hub, "link", "set", "br0", "up"])?;
        if host_link {
            self.subnet = self.link_host()?;
        }
        *lock(&self.nodes) = (1..=nodes).map(|id| (id, self.address(id as u8))).collect();
        let members: Vec<(String, Ipv4Addr, String)> = self
            .node_ids()
            .into_iter()
            .map(|id| (self.node_ns(id), self.node_ip(id), format!("p{id}")))
            .chain([(self.client_ns(), self.address(CLIENT), "pc".to_owned())])
            .collect();
        for (ns, ip, port) in &members {
            self.attach(ns, *ip, port)?;
        }
        Ok(())
    }

    /// Makes namespace `ns` with address `ip` on the bridge (through hub port `port`).
    fn attach(&self, ns: &str, ip: Ipv4Addr, port: &str) -> Result<(), String> {
        let hub = self.ns("hub");
        self.add_ns(ns)?;
        run("ip", &["-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", port, "netns", &hub])?;
        run("ip", &["-n", &hub, "link", "set", port, "master", "br0", "up"])?;
        run("ip", &["-n", ns, "addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
        run("ip", &["-n", ns, "link", "set", "eth0", "up"])?;
        run("ip", &["-n", ns, "link", "set", "lo", "up"])?;
        Ok(())
    }

    /// Joins the host to the bridge through a veth pair whose host end,
    /// `vpnlabh<k>`, gets 10.77.k.254/24 for the first k no other lab holds
    /// (creating the link is the claim: names are unique on the host). The
    /// pair goes when the hub namespace is deleted.
    fn link_host(&self) -> Result<u8, String> {
        let hub = self.ns("hub");
        let start = std::process::id() % 250;
        for k in (0..250).map(|i| ((start + i) % 250 + 1) as u8) {
            let host_end = format!("{PREFIX}h{k}");
            match run("ip", &["link", "add", &host_end, "type", "veth", "peer", "name", "host", "netns", &hub]) {
                Ok(_) => {}
                Err(e) if e.contains("exists") => continue,
                Err(e) => return Err(e),
            }
            run("ip", &["addr", "add", &format!("10.77.{k}.254/24"), "dev", &host_end])?;
            run("ip", &["link", "set", &host_end, "up"])?;
            run("ip", &["-n", &hub, "link", "set", "host", "master", "br0", "up"])?;
            return Ok(k);
        }
        Err("every 10.77.k.0/24 (k 1-250) is held by another lab".into())
    }

    /// The lab's address ending in `host`: 10.77.<subnet>.<host>.
    fn address(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.subnet, host)
    }

    fn add_ns(&self, ns: &str) -> Result<(), String> {
        run("ip", &["netns", "add", ns])?;
        lock(&self.made).push(ns.to_owned());
        Ok(())
    }

    /// Adds node `id` (a namespace of its own on the bridge) to a lab in use:
    /// a node about to join the cluster.
    pub fn add_node(&self, id: u64) {
        assert!((1..250).contains(&id) && !lock(&self.nodes).contains_key(&id), "node {id}: taken or out of range");
        let ip = self.address(id as u8);
        self.attach(&self.node_ns(id), ip, &format!("p{id}"))
            .unwrap_or_else(|e| panic!("adding node {id} to the lab: {e}"));
        lock(&self.nodes).insert(id, ip);
    }

    fn ns(&self, what: &str) -> String {
        format!("{}-{what}", self.name)
    }

    pub fn node_ns(&self, id: u64) -> String {
        self.ns(&format!("n{id}"))
    }

    pub fn client_ns(&self) -> String {
        self.ns("c")
    }

    pub fn node_ip(&self, id: u64) -> Ipv4Addr {
        *lock(&self.nodes).get(&id).unwrap_or_else(|| panic!("no node {id} in the lab"))
    }

    pub fn node_ids(&self) -> Vec<u64> {
        lock(&self.nodes).keys().copied().collect()
    }

    /// Cuts node `id` off from every other node, both ways; clients still reach it.
    pub fn isolate(&self, id: u64) {
        for other in self.node_ids().into_iter().filter(|o| *o != id) {
            self.cut(id, other);
        }
    }

    /// Drops all traffic between nodes `a` and `b` (rules in `a`'s namespace).
    pub fn cut(&self, a: u64, b: u64) {
        let ns = self.node_ns(a);
        let peer = self.node_ip(b).to_string();
        for rule in [["INPUT", "-s"], ["OUTPUT", "-d"]] {
            let args = ["netns", "exec", &ns, "iptables", "-w", "-A", rule[0], rule[1], &peer, "-j", "DROP"];
            run("ip", &args).unwrap_or_else(|e| panic!("cutting node {a} from node {b}: {e}"));
        }
    }

    /// Removes every fault rule from every node.
    pub fn heal(&self) {
        for id in self.node_ids() {
            let ns = self.node_ns(id);
            run("ip", &["netns", "exec", &ns, "iptables", "-w", "-F"])
                .unwrap_or_else(|e| panic!("healing node {id}: {e}"));
        }
    }

    /// Runs `test` to completion on a thread inside the client namespace, on
    /// a runtime of that thread alone: every socket it opens is the client's.
    pub fn run_as_client<F>(&self, test: F) -> F::Output
    where
        F: Future + Send,
        F::Output: Send,
    {
        let ns = self.client_ns();
        std::thread::scope(|scope| {
            let client = scope.spawn(move || {
                let path = format!("/run/netns/{ns}");
                let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
                rustix::thread::move_into_link_name_space(
                    std::os::fd::AsFd::as_fd(&file),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )
                .unwrap_or_else(|e| panic!("entering the client namespace {ns}: {e}"));
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
                runtime.block_on(test)
            });
            client.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in lock(&self.made).iter().rev() {
            if let Err(e) = run("ip", &["netns", "del", ns]) {
                eprintln!("lab cleanup: {e}");
            }
        }
    }
}

fn skip<T>(test: &str, missing: &str) -> Option<T> {
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{test} needs {missing} (CI=true: not skipped)");
    eprintln!("skipping {test}: it needs {missing} (under CI=true this fails)");
    None
}

/// Deletes namespaces of labs whose test process is gone (killed before its drop ran).
fn remove_abandoned_labs() {
    let Ok(list) = run("ip", &["netns", "list"]) else { return };
    for ns in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let owner = ns.strip_prefix(PREFIX).and_then(|rest| rest.split('-').nth(1)).and_then(|p| p.parse::<u32>().ok());
        if owner.is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists()) {
            let _ = run("ip", &["netns", "del", ns]);
        }
    }
}

/// Runs a command; its stdout, or an error naming it with its stderr.
fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("`{program}` could not run: {e}"))?;
    if !out.status.success() {
        return Err(format!("`{program} {}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
