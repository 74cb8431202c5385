//! This node's nftables table: it hands a public port from one engine
//! generation to the next without touching a live session, and counts every
//! user's bytes in the kernel.
//!
//! **Handoff.** A proxy engine learns its users only from its config file,
//! and sing-box cuts every session when it reloads. So a change of the user
//! set starts a *new* engine process (a generation) listening on a port of
//! its own, and the public port is redirected to whichever generation is
//! current (`redirect` in the prerouting and output NAT hooks, TCP and UDP,
//! only for packets to this host's own addresses, so the engines' outgoing
//! connections to the same port elsewhere are not caught). NAT is decided by
//! conntrack on a connection's first packet, so pointing the rule at the next
//! generation moves only *new* connections; every established one keeps its
//! binding to the generation that accepted it, which serves it until it ends.
//! The rules are rewritten in one `nft -f` transaction: a connection is never
//! redirected to nothing.
//!
//! Why nftables and not the other way checked on this kind of machine
//! (`pidfd_getfd` on the old engine's listening socket, then `shutdown`):
//! that needs ptrace rights over the engine (root, or CAP_SYS_PTRACE), two
//! engines share the port while both accept (a new user's connection may land
//! on the old one), and connections in the old accept queue are reset. The
//! switch here is atomic and needs only CAP_NET_ADMIN, which the accounting
//! below needs anyway.
//!
//! **Guard.** A generation listens on all addresses (a redirected packet is
//! addressed to the interface it came in on), so its own port is open from
//! outside too. The `guard` chain drops packets to a generation's port that
//! arrive from another host without having been redirected there (`ct
//! status dnat`): the generations are reachable only through the public
//! port. Loopback stays open (vpnd's own readiness check, local tools).
//!
//! **Accounting.** Each user's upstream sockets carry the user's mark (see
//! [`crate::marks`]). The `account_out` chain counts packets leaving with a
//! mark of this node (and stamps the mark on the connection); `account_in`
//! counts the replies by the connection's mark. The counts live in two
//! dynamic sets keyed by `mark . IP version . transport`, each element with
//! its own counter, so a user's count survives generation handoffs, engine
//! crashes and vpnd restarts. The sets are declared, never flushed: a rewrite
//! of the rules keeps every count.
//!
//! The kernel keeps the table when vpnd exits or crashes, so the engines keep
//! serving; the next vpnd reads it back. One table per node (`vpnd_<node
//! id>`), so nodes sharing a host keep apart; it is deleted when the node
//! serves no inbound.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;

use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::marks::PREFIX_MASK;
use crate::RuntimeError;

/// Elements per counting set: up to 4 per user (IPv4/IPv6 x TCP/UDP).
const SET_SIZE: u32 = 262_144;

/// What the table is to hold besides the counts.
#[derive(Clone, Copy, Debug)]
pub struct Rules<'a> {
    /// Public port -> engine port of the generation that takes new connections.
    pub routes: &'a BTreeMap<u16, u16>,
    /// The port of every generation alive (guarded against direct access).
    pub engine_ports: &'a BTreeSet<u16>,
    /// The mark prefix of this node's users.
    pub prefix: u32,
}

/// The nftables table of one node.
#[derive(Clone, Debug)]
pub struct NodeTable {
    table: String,
}

/// What the kernel counted for one user mark, one IP version and transport.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Counted {
    /// Bytes and packets of whole IP packets, both directions.
    pub bytes: u64,
    pub packets: u64,
    /// Per-packet header bytes to subtract for the payload: IP (20 or 40) + TCP (32 with timestamps) or UDP (8).
    pub header: u64,
}

impl Counted {
    /// The bytes the user's connections carried, without IP and transport
    /// headers: what the far end sent and received. A GSO/GRO super-packet
    /// is counted once with one header, so it comes out exact too.
    fn payload(&self) -> u64 {
        self.bytes.saturating_sub(self.packets.saturating_mul(self.header))
    }
}

impl NodeTable {
    pub fn new(node_id: u64) -> Self {
        NodeTable { table: format!("vpnd_{node_id}") }
    }

    pub fn name(&self) -> &str {
        &self.table
    }

    /// Public port -> engine port, as the kernel has them now; `None` without the table.
    pub async fn routes(&self) -> Result<Option<BTreeMap<u16, u16>>, RuntimeError> {
        match nft(&["-j", "list", "chain", "inet", &self.table, "prerouting"], None).await {
            Ok(json) => parse_routes(&json).map(Some).map_err(|detail| nft_error("read", detail)),
            Err(e) if e.contains("No such file or directory") => Ok(None),
            Err(e) => Err(nft_error("read", e)),
        }
    }

    /// Makes the table hold exactly `rules`, keeping every count it has; `None` deletes the table.
    pub async fn write(&self, state: Option<Rules<'_>>) -> Result<(), RuntimeError> {
        nft(&["-f", "-"], Some(&script(&self.table, state))).await.map(drop).map_err(|e| nft_error("write", e))
    }

    /// The payload bytes (both directions) the kernel counted per mark of this node (marks under `prefix`).
    pub async fn payload_bytes(&self, prefix: u32) -> Result<BTreeMap<u32, u64>, RuntimeError> {
        let mut out: BTreeMap<u32, u64> = BTreeMap::new();
        for set in ["up", "down"] {
            let json = match nft(&["-j", "list", "set", "inet", &self.table, set], None).await {
                Ok(json) => json,
                Err(e) if e.contains("No such file or directory") => return Ok(BTreeMap::new()),
                Err(e) => return Err(nft_error("read", e)),
            };
            for (mark, counted) in parse_counts(&json).map_err(|d| nft_error("read", d))? {
                if mark & PREFIX_MASK == prefix {
                    *out.entry(mark).or_default() += counted.payload();
                }
            }
        }
        Ok(out)
    }

    /// Deletes every count of `marks` (after their last reading).
    pub async fn forget(&self, marks: &[u32]) -> Result<(), RuntimeError> {
        if marks.is_empty() {
            return Ok(());
        }
        let mut s = String::new();
        for set in ["up", "down"] {
            for mark in marks {
                for family in ["ipv4", "ipv6"] {
                    for proto in ["tcp", "udp"] {
                        // `destroy` would ignore missing ones, but nft 1.0.6 lacks it: add, then delete.
                        s += &format!(
                            "add element inet {t} {set} {{ {mark:#x} . {family} . {proto} }}\n",
                            t = self.table
                        );
                        s += &format!(
                            "delete element inet {t} {set} {{ {mark:#x} . {family} . {proto} }}\n",
                            t = self.table
                        );
                    }
                }
            }
        }
        nft(&["-f", "-"], Some(&s)).await.map(drop).map_err(|e| nft_error("write", e))
    }
}

/// Whether nftables works here: the `nft` command runs and may read the
/// ruleset (it needs CAP_NET_ADMIN, as every change does).
pub async fn probe() -> Result<(), RuntimeError> {
    nft(&["list", "tables"], None).await.map(drop).map_err(|e| nft_error("read", e))
}

/// The mark prefixes other nodes' tables on this host count (so a new node picks another).
pub async fn taken_prefixes() -> Result<BTreeSet<u32>, RuntimeError> {
    let json = nft(&["-j", "list", "ruleset"], None).await.map_err(|e| nft_error("read", e))?;
    let doc: Value = serde_json::from_str(&json).map_err(|e| nft_error("read", format!("unreadable `nft -j`: {e}")))?;
    let mut taken = BTreeSet::new();
    for item in doc["nftables"].as_array().into_iter().flatten() {
        let rule = &item["rule"];
        if rule["chain"] != "account_out" || !rule["table"].as_str().is_some_and(|t| t.starts_with("vpnd_")) {
            continue;
        }
        for e in rule["expr"].as_array().into_iter().flatten() {
            let m = &e["match"];
            if m["left"]["&"].is_array() {
                if let Some(p) = m["right"].as_u64().and_then(|p| u32::try_from(p).ok()) {
                    taken.insert(p);
                }
            }
        }
    }
    Ok(taken)
}

/// The transaction that makes the table hold exactly `state`'s routes,
/// guard and accounting rules (the counting sets and their counts are
/// kept), or deletes it.
fn script(table: &str, state: Option<Rules<'_>>) -> String {
    // Declaring the table first makes the delete or flush valid whether or not it exists.
    let mut s = format!("table inet {table}\n");
    let Some(Rules { routes, engine_ports, prefix }) = state else {
        s += &format!("delete table inet {table}\n");
        return s;
    };
    let set = format!("type mark . nf_proto . inet_proto; flags dynamic; counter; size {SET_SIZE};");
    s += &format!(
        "table inet {table} {{\n\
         \tset up {{ {set} }}\n\
         \tset down {{ {set} }}\n\
         \tset engines {{ type inet_service; }}\n\
         \tchain prerouting {{ type nat hook prerouting priority dstnat; policy accept; }}\n\
         \tchain output {{ type nat hook output priority -100; policy accept; }}\n\
         \tchain guard {{ type filter hook input priority -10; policy accept; }}\n\
         \tchain account_out {{ type filter hook output priority 0; policy accept; }}\n\
         \tchain account_in {{ type filter hook input priority 0; policy accept; }}\n}}\n"
    );
    for chain in ["prerouting", "output"] {
        s += &format!("flush chain inet {table} {chain}\n");
        for (public, engine) in routes {
            s += &format!(
                "add rule inet {table} {chain} fib daddr type local meta l4proto {{ tcp, udp }} th dport {public} \
                 redirect to :{engine}\n"
            );
        }
    }
    s += &format!("flush set inet {table} engines\n");
    if !engine_ports.is_empty() {
        let ports: Vec<String> = engine_ports.iter().map(u16::to_string).collect();
        s += &format!("add element inet {table} engines {{ {} }}\n", ports.join(", "));
    }
    s += &format!(
        "flush chain inet {table} guard\n\
         add rule inet {table} guard meta l4proto {{ tcp, udp }} th dport @engines iifname != \"lo\" \
         ct status & dnat == 0 drop\n"
    );
    let mine = format!("& {PREFIX_MASK:#x} == {prefix:#x}");
    s += &format!(
        "flush chain inet {table} account_out\n\
         add rule inet {table} account_out meta mark {mine} ct direction original \
         update @up {{ meta mark . meta nfproto . meta l4proto }} ct mark set meta mark\n\
         flush chain inet {table} account_in\n\
         add rule inet {table} account_in ct mark {mine} ct direction reply \
         update @down {{ ct mark . meta nfproto . meta l4proto }}\n"
    );
    s
}

/// The routes in `nft -j list chain ... prerouting` output.
fn parse_routes(json: &str) -> Result<BTreeMap<u16, u16>, String> {
    let doc: Value = serde_json::from_str(json).map_err(|e| format!("unreadable `nft -j` output: {e}"))?;
    let mut routes = BTreeMap::new();
    for item in doc["nftables"].as_array().into_iter().flatten() {
        let rule = &item["rule"];
        if rule["chain"] != "prerouting" {
            continue;
        }
        let exprs = rule["expr"].as_array().map(Vec::as_slice).unwrap_or_default();
        let public = exprs.iter().find_map(|e| {
            let m = &e["match"];
            (m["left"]["payload"]["field"] == "dport").then(|| m["right"].as_u64()).flatten()
        });
        let engine = exprs.iter().find_map(|e| e["redirect"]["port"].as_u64());
        if let (Some(public), Some(engine)) = (public, engine) {
            let port = |p: u64| u16::try_from(p).map_err(|_| format!("port {p} out of range"));
            routes.insert(port(public)?, port(engine)?);
        }
    }
    Ok(routes)
}

/// The elements of one counting set: (mark, counts).
fn parse_counts(json: &str) -> Result<Vec<(u32, Counted)>, String> {
    let doc: Value = serde_json::from_str(json).map_err(|e| format!("unreadable `nft -j` output: {e}"))?;
    let mut out = Vec::new();
    for item in doc["nftables"].as_array().into_iter().flatten() {
        for elem in item["set"]["elem"].as_array().into_iter().flatten() {
            let elem = &elem["elem"];
            let key = elem["val"]["concat"].as_array().map(Vec::as_slice).unwrap_or_default();
            let (Some(mark), Some(family), Some(proto)) = (
                key.first().and_then(Value::as_u64),
                key.get(1).and_then(Value::as_str),
                key.get(2).and_then(Value::as_str),
            ) else {
                continue;
            };
            let mark = u32::try_from(mark).map_err(|_| format!("mark {mark} out of range"))?;
            let ip = match family {
                "ipv4" => 20,
                "ipv6" => 40,
                _ => continue,
            };
            let transport = match proto {
                // Linux sends TCP timestamps by default (12 option bytes on every segment).
                "tcp" => 32,
                "udp" => 8,
                // ICMP errors about a user's packets carry no payload of theirs.
                _ => continue,
            };
            let counter = &elem["counter"];
            let counted = Counted {
                bytes: counter["bytes"].as_u64().unwrap_or(0),
                packets: counter["packets"].as_u64().unwrap_or(0),
                header: ip + transport,
            };
            out.push((mark, counted));
        }
    }
    Ok(out)
}

/// Runs `nft` with `args` (and `stdin`); its stdout, or its stderr as the error.
async fn nft(args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    let mut child = Command::new("nft")
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                "the `nft` command is not installed (Debian: apt-get install nftables)".into()
            }
            _ => format!("cannot run `nft`: {e}"),
        })?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).await.map_err(|e| format!("writing to `nft`: {e}"))?;
    }
    let out = child.wait_with_output().await.map_err(|e| format!("waiting for `nft`: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

fn nft_error(action: &'static str, detail: String) -> RuntimeError {
    let hint = if detail.contains("Operation not permitted") {
        "; vpnd needs CAP_NET_ADMIN for this (run it as root, or grant the capability)"
    } else {
        ""
    };
    RuntimeError::Handoff { action, detail: format!("{detail}{hint}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_replaces_routes_and_rules_in_one_transaction_and_keeps_the_counts() {
        let routes = BTreeMap::from([(443, 41237)]);
        let engine_ports = BTreeSet::from([41230, 41237]);
        let s = script("vpnd_7", Some(Rules { routes: &routes, engine_ports: &engine_ports, prefix: 0x8abc_0000 }));
        assert!(s.starts_with("table inet vpnd_7\n"), "{s}");
        for chain in ["prerouting", "output", "guard", "account_out", "account_in"] {
            assert!(s.contains(&format!("flush chain inet vpnd_7 {chain}\n")), "{s}");
        }
        assert!(!s.contains("flush set inet vpnd_7 up") && !s.contains("flush set inet vpnd_7 down"), "{s}");
        assert!(!s.contains("delete"), "counts are kept: {s}");
        assert!(s.contains("th dport 443 redirect to :41237\n"), "{s}");
        assert!(s.contains("flush set inet vpnd_7 engines\nadd element inet vpnd_7 engines { 41230, 41237 }\n"), "{s}");
        assert!(s.contains("th dport @engines iifname != \"lo\" ct status & dnat == 0 drop\n"), "{s}");
        assert!(s.contains("meta mark & 0xffff0000 == 0x8abc0000 ct direction original update @up"), "{s}");
        assert!(s.contains("ct mark & 0xffff0000 == 0x8abc0000 ct direction reply update @down"), "{s}");
        assert_eq!(script("vpnd_7", None), "table inet vpnd_7\ndelete table inet vpnd_7\n");
    }

    #[test]
    fn routes_are_read_back_from_nft_json() {
        // Shortened output of `nft -j list chain` for the rules the script makes.
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
          {"rule": {"family": "inet", "table": "vpnd_7", "chain": "prerouting", "handle": 3, "expr": [
            {"match": {"op": "==", "left": {"fib": {"result": "type", "flags": ["daddr"]}}, "right": "local"}},
            {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": {"set": ["tcp", "udp"]}}},
            {"match": {"op": "==", "left": {"payload": {"protocol": "th", "field": "dport"}}, "right": 443}},
            {"redirect": {"port": 41237}}]}}]}"#;
        assert_eq!(parse_routes(json), Ok(BTreeMap::from([(443, 41237)])));
        assert!(parse_routes("not json").is_err());
        let out_of_range = json.replace("41237", "70000");
        assert!(parse_routes(&out_of_range).expect_err("bad port").contains("70000"));
    }

    #[test]
    fn counts_are_read_per_mark_with_their_header_sizes() {
        let json = r#"{"nftables": [{"set": {"family": "inet", "name": "up", "table": "vpnd_7", "elem": [
            {"elem": {"val": {"concat": [2327576577, "ipv4", "tcp"]}, "counter": {"packets": 5, "bytes": 1268}}},
            {"elem": {"val": {"concat": [2327576577, "ipv4", "udp"]}, "counter": {"packets": 1, "bytes": 128}}},
            {"elem": {"val": {"concat": [2327576577, "ipv6", "tcp"]}, "counter": {"packets": 2, "bytes": 248}}},
            {"elem": {"val": {"concat": [2327576577, "ipv4", "icmp"]}, "counter": {"packets": 1, "bytes": 156}}}]}}]}"#;
        let counts = parse_counts(json).expect("parse");
        let payloads: Vec<(u32, u64)> = counts.iter().map(|(m, c)| (*m, c.payload())).collect();
        // 1268 - 5 x 52 (SYN's options: +8), 128 - 28, 248 - 2 x 72; ICMP is no payload of the user's.
        assert_eq!(payloads, vec![(0x8abc_0001, 1008), (0x8abc_0001, 100), (0x8abc_0001, 104)]);
    }
}
