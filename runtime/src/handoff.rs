//! Hands a public port from one engine generation to the next, through
//! nftables, without touching a live session.
//!
//! A VLESS engine learns its users only from its config file, and sing-box
//! cuts every session when it reloads. So a change of the user set starts a
//! *new* engine process (a generation) listening on a port of its own, and
//! the public port is redirected to whichever generation is current:
//!
//! ```text
//! table inet vpnd_<node> {
//!   chain prerouting { type nat hook prerouting priority dstnat;   # clients from elsewhere
//!     fib daddr type local tcp dport 443 redirect to :41237 }
//!   chain output { type nat hook output priority -100;             # clients on this host
//!     fib daddr type local tcp dport 443 redirect to :41237 }
//! }
//! ```
//!
//! NAT is decided by conntrack on a connection's first packet, so pointing
//! the rule at the next generation moves only *new* connections; every
//! established one keeps its binding to the generation that accepted it, which
//! serves it until it ends. The rules are rewritten in one `nft -f`
//! transaction: a connection is never redirected to nothing. `fib daddr type
//! local` keeps the engines' own outgoing connections to port 443 elsewhere
//! from being caught. The kernel keeps the rules when vpnd exits or crashes,
//! so the engines keep serving; the next vpnd reads them back.
//!
//! Why nftables and not the other way checked on this kind of machine
//! (`pidfd_getfd` on the old engine's listening socket, then `shutdown`):
//! that needs ptrace rights over the engine (root, or CAP_SYS_PTRACE), two
//! engines share the port while both accept (a new user's connection may land
//! on the old one), and connections in the old accept queue are reset. The
//! switch here is atomic, needs only CAP_NET_ADMIN, and the same table is
//! where per-user accounting and cut rules belong.
//!
//! One table per node (`vpnd_<node id>`), so nodes sharing a host (tests) keep
//! apart; it is deleted when the node routes no port.

use std::collections::BTreeMap;
use std::process::Stdio;

use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::RuntimeError;

/// The nftables table of one node.
#[derive(Clone, Debug)]
pub struct PortRoutes {
    table: String,
}

impl PortRoutes {
    pub fn new(node_id: u64) -> Self {
        PortRoutes { table: format!("vpnd_{node_id}") }
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    /// Public port -> engine port, as the kernel has them now (empty without the table).
    pub async fn read(&self) -> Result<BTreeMap<u16, u16>, RuntimeError> {
        let out = nft(&["-j", "list", "table", "inet", &self.table], None).await;
        match out {
            Ok(json) => parse_routes(&json).map_err(|detail| nft_error("read", detail)),
            Err(e) if e.contains("No such file or directory") => Ok(BTreeMap::new()),
            Err(e) => Err(nft_error("read", e)),
        }
    }

    /// Replaces every route of this node at once; no routes deletes the table.
    pub async fn write(&self, routes: &BTreeMap<u16, u16>) -> Result<(), RuntimeError> {
        nft(&["-f", "-"], Some(&script(&self.table, routes))).await.map(drop).map_err(|e| nft_error("write", e))
    }
}

/// The transaction that makes the table hold exactly `routes`.
fn script(table: &str, routes: &BTreeMap<u16, u16>) -> String {
    // Declaring the table first makes the delete or flush valid whether or not it exists.
    let mut s = format!("table inet {table}\n");
    if routes.is_empty() {
        s += &format!("delete table inet {table}\n");
        return s;
    }
    s += &format!(
        "table inet {table} {{\n\
         \tchain prerouting {{ type nat hook prerouting priority dstnat; policy accept; }}\n\
         \tchain output {{ type nat hook output priority -100; policy accept; }}\n}}\n"
    );
    for chain in ["prerouting", "output"] {
        s += &format!("flush chain inet {table} {chain}\n");
        for (public, engine) in routes {
            s += &format!(
                "add rule inet {table} {chain} fib daddr type local tcp dport {public} redirect to :{engine}\n"
            );
        }
    }
    s
}

/// The routes in `nft -j list table` output: the prerouting chain's redirects.
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
    fn the_script_replaces_every_route_in_one_transaction() {
        let s = script("vpnd_7", &BTreeMap::from([(443, 41237)]));
        assert!(s.starts_with("table inet vpnd_7\n"), "{s}");
        for chain in ["prerouting", "output"] {
            assert!(s.contains(&format!("flush chain inet vpnd_7 {chain}\n")), "{s}");
            assert!(
                s.contains(&format!(
                    "add rule inet vpnd_7 {chain} fib daddr type local tcp dport 443 redirect to :41237\n"
                )),
                "{s}"
            );
        }
        assert_eq!(script("vpnd_7", &BTreeMap::new()), "table inet vpnd_7\ndelete table inet vpnd_7\n");
    }

    #[test]
    fn routes_are_read_back_from_nft_json() {
        // Shortened output of `nft -j list table` for the table the script above makes.
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
          {"table": {"family": "inet", "name": "vpnd_7", "handle": 3}},
          {"rule": {"family": "inet", "table": "vpnd_7", "chain": "prerouting", "handle": 3, "expr": [
            {"match": {"op": "==", "left": {"fib": {"result": "type", "flags": ["daddr"]}}, "right": "local"}},
            {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 443}},
            {"redirect": {"port": 41237}}]}},
          {"rule": {"family": "inet", "table": "vpnd_7", "chain": "output", "handle": 4, "expr": [
            {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 80}},
            {"redirect": {"port": 1}}]}}]}"#;
        assert_eq!(parse_routes(json), Ok(BTreeMap::from([(443, 41237)])));
        assert!(parse_routes("not json").is_err());
        let out_of_range = json.replace("41237", "70000");
        assert!(parse_routes(&out_of_range).expect_err("bad port").contains("70000"));
    }
}
