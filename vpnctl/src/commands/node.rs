//! `vpnctl node list|show|cordon|uncordon|drain`: the data-plane nodes, what they offer, how
//! far their engines have caught up (applied vs desired generation), and taking them out of
//! scheduling for maintenance.

use std::future::Future;

use serde_json::{json, Value};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};
use vpn_proto::v1::nodes_client::NodesClient;
use vpn_proto::v1::{GetNodeRequest, ListNodesRequest, Node, NodeRequest};

use crate::cli::NodeCommand;
use crate::client::Client;
use crate::error::CliError;
use crate::output::{fields, table, Document};

/// Runs one `node` subcommand.
pub async fn run(command: NodeCommand, client: &mut Client) -> Result<Document, CliError> {
    match command {
        NodeCommand::List => {
            let reply = client.nodes(ListNodesRequest::default(), |mut c, req| async move { c.list_nodes(req).await });
            let nodes = reply.await?.nodes;
            Ok(Document {
                json: json!({ "nodes": nodes.iter().map(node_json).collect::<Vec<_>>() }),
                table: nodes_table(&nodes),
            })
        }
        NodeCommand::Show(arg) => {
            let id = arg.id;
            let req = GetNodeRequest { id, ..Default::default() };
            let node = client.nodes(req, |mut c, req| async move { c.get_node(req).await }).await;
            let node = node.map_err(|err| no_such_node(err, id))?;
            Ok(Document { json: node_json(&node), table: node_table(&node) })
        }
        NodeCommand::Cordon(arg) => {
            let node = change(client, arg.id, |mut c, req| async move { c.cordon_node(req).await }).await?;
            Ok(Document { json: node_json(&node), table: cordoned_line(&node) })
        }
        NodeCommand::Uncordon(arg) => {
            let node = change(client, arg.id, |mut c, req| async move { c.uncordon_node(req).await }).await?;
            Ok(Document { json: node_json(&node), table: uncordoned_line(&node) })
        }
        NodeCommand::Drain(arg) => {
            let node = change(client, arg.id, |mut c, req| async move { c.drain_node(req).await }).await?;
            Ok(Document { json: node_json(&node), table: draining_line(&node) })
        }
    }
}

/// One of the maintenance calls, which all take a node id and return the node afterwards.
async fn change<F, Fut>(client: &mut Client, id: u64, rpc: F) -> Result<Node, CliError>
where
    F: Fn(NodesClient<Channel>, Request<NodeRequest>) -> Fut,
    Fut: Future<Output = Result<Response<Node>, Status>>,
{
    client.nodes(NodeRequest { id }, rpc).await.map_err(|err| no_such_node(err, id))
}

/// Replaces the server's NOT_FOUND text with one that says what to do.
fn no_such_node(err: CliError, id: u64) -> CliError {
    match err {
        CliError::NotFound(_) => {
            CliError::NotFound(format!("node {id} is not a data-plane node; `vpnctl node list` lists them"))
        }
        other => other,
    }
}

/// "its 120 users" or "its 1 user", and the verb that goes with it.
fn its_users(node: &Node, plural: &'static str, singular: &'static str) -> String {
    match node.users {
        1 => format!("its 1 user {singular}"),
        n => format!("its {n} users {plural}"),
    }
}

/// What `node cordon` prints: the effect, and the two ways on from here.
fn cordoned_line(node: &Node) -> String {
    let id = node.id;
    if node.users == 0 {
        return format!("node {id} cordoned: it gets no new users; `vpnctl node uncordon {id}` ends the cordon");
    }
    format!(
        "node {id} cordoned: it gets no new users, {}; `vpnctl node drain {id}` moves them, \
         `vpnctl node uncordon {id}` ends the cordon",
        its_users(node, "stay", "stays")
    )
}

/// What `node uncordon` prints; the server's status shows whether the node is healthy too.
fn uncordoned_line(node: &Node) -> String {
    format!(
        "node {} uncordoned (status {}): it takes new users again; users moved off it are not moved back",
        node.id, node.status
    )
}

/// What `node drain` prints: the users still to move and how to watch them go.
fn draining_line(node: &Node) -> String {
    let id = node.id;
    if node.users == 0 {
        return format!(
            "node {id} draining: no users left on it; `vpnctl node uncordon {id}` puts it back into service"
        );
    }
    format!(
        "node {id} draining: {} to other nodes; `vpnctl node show {id}` follows it",
        its_users(node, "move", "moves")
    )
}

/// A node as scripts see it (the contract's fields first).
pub fn node_json(node: &Node) -> Value {
    let inbounds: Vec<Value> =
        node.inbounds.iter().map(|i| json!({ "protocol": i.protocol, "port": i.port })).collect();
    let labels: serde_json::Map<String, Value> =
        sorted_labels(node).into_iter().map(|(k, v)| (k.to_owned(), Value::from(v))).collect();
    let mut json = json!({
        "id": node.id,
        "public_host": node.public_host,
        "status": node.status,
        "users": node.users,
        "applied_generation": node.applied_generation,
        "desired_generation": node.desired_generation,
        "inbounds": inbounds,
        "labels": labels,
        "capacity": node.capacity,
    });
    if !node.engine_error.is_empty() {
        json["engine_error"] = Value::from(node.engine_error.as_str());
    }
    json["cert_expires_at"] = match node.cert_expires_at.as_str() {
        "" => Value::Null,
        at => Value::from(at),
    };
    json["accounting"] = match node.accounting.as_str() {
        "" => Value::Null,
        how => Value::from(how),
    };
    json
}

/// When the node's certificate expires, or why there is none.
fn cert_cell(node: &Node) -> String {
    match node.cert_expires_at.as_str() {
        "" => "none (plaintext)".into(),
        at => at.to_owned(),
    }
}

fn sorted_labels(node: &Node) -> Vec<(&str, &str)> {
    let mut labels: Vec<(&str, &str)> = node.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    labels.sort_unstable();
    labels
}

fn inbounds_text(node: &Node) -> String {
    node.inbounds.iter().map(|i| format!("{}={}", i.protocol, i.port)).collect::<Vec<_>>().join(",")
}

/// `applied/desired`, marked when the node lags behind.
fn generations(node: &Node) -> String {
    let lag = if node.applied_generation < node.desired_generation { " (catching up)" } else { "" };
    format!("{}/{}{lag}", node.applied_generation, node.desired_generation)
}

/// The status, flagged when the engines report an error (`node show` has the text).
fn status_cell(node: &Node) -> String {
    if node.engine_error.is_empty() {
        node.status.clone()
    } else {
        format!("{} (engine error)", node.status)
    }
}

/// `node list` for people, one row per node.
pub fn nodes_table(nodes: &[Node]) -> String {
    if nodes.is_empty() {
        return "no data-plane nodes yet; start vpnd with --dataplane --public-host <host> --inbound <protocol>=<port>"
            .into();
    }
    let header =
        ["ID", "HOST", "STATUS", "USERS", "APPLIED/DESIRED", "CERT EXPIRES", "INBOUNDS"].map(String::from).to_vec();
    let rows = nodes.iter().map(|n| {
        vec![
            n.id.to_string(),
            n.public_host.clone(),
            status_cell(n),
            n.users.to_string(),
            generations(n),
            cert_cell(n),
            inbounds_text(n),
        ]
    });
    table(&std::iter::once(header).chain(rows).collect::<Vec<_>>())
}

/// `node show` for people.
pub fn node_table(node: &Node) -> String {
    let labels = sorted_labels(node).iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",");
    let capacity = if node.capacity == 0 { "no limit".to_owned() } else { format!("{} users", node.capacity) };
    fields(&[
        ("ID", node.id.to_string()),
        ("Public host", node.public_host.clone()),
        ("Status", node.status.clone()),
        ("Users", node.users.to_string()),
        ("Generation", format!("applied {}, desired {}", node.applied_generation, node.desired_generation)),
        ("Inbounds", inbounds_text(node)),
        ("Labels", if labels.is_empty() { "none".into() } else { labels }),
        ("Capacity", capacity),
        ("Engine error", if node.engine_error.is_empty() { "none".into() } else { node.engine_error.clone() }),
        ("Cert expires", cert_cell(node)),
        ("Accounting", if node.accounting.is_empty() { "not reported".into() } else { node.accounting.clone() }),
    ])
}

#[cfg(test)]
mod tests {
    use vpn_proto::v1::Inbound;

    use super::*;

    fn node() -> Node {
        Node {
            id: 4,
            public_host: "vpn4.example.com".into(),
            status: "ready".into(),
            users: 12,
            applied_generation: 40,
            desired_generation: 42,
            inbounds: vec![
                Inbound { protocol: "vless-tls".into(), port: 443 },
                Inbound { protocol: "shadowsocks-2022".into(), port: 8388 },
            ],
            labels: [("tier".to_owned(), "gold".to_owned()), ("region".to_owned(), "eu".to_owned())].into(),
            capacity: 0,
            engine_error: String::new(),
            cert_expires_at: "2027-03-06T04:00:00Z".into(),
            accounting: "kernel (nftables)".into(),
        }
    }

    #[test]
    fn node_json_has_the_contract_shape() {
        let expected = json!({
            "id": 4,
            "public_host": "vpn4.example.com",
            "status": "ready",
            "users": 12,
            "applied_generation": 40,
            "desired_generation": 42,
            "inbounds": [{"protocol": "vless-tls", "port": 443}, {"protocol": "shadowsocks-2022", "port": 8388}],
            "labels": {"region": "eu", "tier": "gold"},
            "capacity": 0,
            "cert_expires_at": "2027-03-06T04:00:00Z",
            "accounting": "kernel (nftables)",
        });
        assert_eq!(node_json(&node()), expected);
    }

    #[test]
    fn tables_show_lag_and_inbounds() {
        assert_eq!(
            nodes_table(&[node()]),
            "ID  HOST              STATUS  USERS  APPLIED/DESIRED      CERT EXPIRES          INBOUNDS\n\
             4   vpn4.example.com  ready   12     40/42 (catching up)  2027-03-06T04:00:00Z  vless-tls=443,shadowsocks-2022=8388"
        );
        let shown = node_table(&node());
        assert!(shown.contains("Labels:        region=eu,tier=gold"), "{shown}");
        assert!(shown.contains("Capacity:      no limit"), "{shown}");
        assert!(nodes_table(&[]).starts_with("no data-plane nodes yet"));
        assert!(shown.contains("Engine error:  none"), "{shown}");
        assert!(shown.contains("Cert expires:  2027-03-06T04:00:00Z"), "{shown}");
        assert!(shown.contains("Accounting:    kernel (nftables)"), "{shown}");
        let older = Node { accounting: String::new(), ..node() };
        assert_eq!(node_json(&older)["accounting"], Value::Null);
        assert!(node_table(&older).contains("Accounting:    not reported"));
        let plaintext = Node { cert_expires_at: String::new(), ..node() };
        assert_eq!(node_json(&plaintext)["cert_expires_at"], Value::Null);
        assert!(node_table(&plaintext).contains("none (plaintext)"));
    }

    #[test]
    fn engine_errors_show_where_there_are_some() {
        let failing = Node { engine_error: "sing-box exited: bind: address in use".into(), ..node() };
        assert_eq!(node_json(&failing)["engine_error"], "sing-box exited: bind: address in use");
        assert_eq!(node_json(&node()).get("engine_error"), None);
        assert!(nodes_table(std::slice::from_ref(&failing)).contains("ready (engine error)"));
        assert!(node_table(&failing).contains("Engine error:  sing-box exited: bind: address in use"));
    }

    #[test]
    fn maintenance_says_what_happened_in_one_line() {
        let draining = Node { status: "draining".into(), users: 120, ..node() };
        assert_eq!(
            draining_line(&draining),
            "node 4 draining: its 120 users move to other nodes; `vpnctl node show 4` follows it"
        );
        let drained = Node { users: 0, ..draining };
        assert!(draining_line(&drained).contains("no users left on it"));
        let one = Node { status: "cordoned".into(), users: 1, ..node() };
        assert!(cordoned_line(&one).starts_with("node 4 cordoned: it gets no new users, its 1 user stays;"));
        assert_eq!(
            uncordoned_line(&node()),
            "node 4 uncordoned (status ready): it takes new users again; users moved off it are not moved back"
        );
        for line in [draining_line(&node()), cordoned_line(&node()), uncordoned_line(&node())] {
            assert!(!line.contains('\n'), "{line}");
        }
    }
}
