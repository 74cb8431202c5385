//! `vpnctl node list|show`: the data-plane nodes, what they offer and how far
//! their engines have caught up (applied vs desired generation).

use serde_json::{json, Value};
use vpn_proto::v1::{GetNodeRequest, ListNodesRequest, Node};

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
        NodeCommand::Show { id } => {
            let req = GetNodeRequest { id, ..Default::default() };
            let node =
                client.nodes(req, |mut c, req| async move { c.get_node(req).await }).await.map_err(
                    |err| match err {
                        CliError::NotFound(_) => CliError::NotFound(format!(
                            "node {id} is not a data-plane node; `vpnctl node list` lists them"
                        )),
                        other => other,
                    },
                )?;
            Ok(Document { json: node_json(&node), table: node_table(&node) })
        }
    }
}

/// A node as scripts see it (the contract's fields first).
pub fn node_json(node: &Node) -> Value {
    let inbounds: Vec<Value> =
        node.inbounds.iter().map(|i| json!({ "protocol": i.protocol, "port": i.port })).collect();
    let labels: serde_json::Map<String, Value> =
        sorted_labels(node).into_iter().map(|(k, v)| (k.to_owned(), Value::from(v))).collect();
    json!({
        "id": node.id,
        "public_host": node.public_host,
        "status": node.status,
        "users": node.users,
        "applied_generation": node.applied_generation,
        "desired_generation": node.desired_generation,
        "inbounds": inbounds,
        "labels": labels,
        "capacity": node.capacity,
    })
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

/// `node list` for people, one row per node.
pub fn nodes_table(nodes: &[Node]) -> String {
    if nodes.is_empty() {
        return "no data-plane nodes yet; start vpnd with --dataplane --public-host <host> --inbound <protocol>=<port>"
            .into();
    }
    let header = ["ID", "HOST", "STATUS", "USERS", "APPLIED/DESIRED", "INBOUNDS"].map(String::from).to_vec();
    let rows = nodes.iter().map(|n| {
        vec![
            n.id.to_string(),
            n.public_host.clone(),
            n.status.clone(),
            n.users.to_string(),
            generations(n),
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
        });
        assert_eq!(node_json(&node()), expected);
    }

    #[test]
    fn tables_show_lag_and_inbounds() {
        assert_eq!(
            nodes_table(&[node()]),
            "ID  HOST              STATUS  USERS  APPLIED/DESIRED      INBOUNDS\n\
             4   vpn4.example.com  ready   12     40/42 (catching up)  vless-tls=443,shadowsocks-2022=8388"
        );
        let shown = node_table(&node());
        assert!(shown.contains("Labels:       region=eu,tier=gold"), "{shown}");
        assert!(shown.contains("Capacity:     no limit"), "{shown}");
        assert!(nodes_table(&[]).starts_with("no data-plane nodes yet"));
    }
}
