//! Turns replies into the two output formats: aligned text for people, JSON for scripts.
//!
//! Commands build both forms of a [`Document`] and [`Output::render`] picks one, so the JSON
//! shape (a contract scripts rely on) is testable without a server. Users are rendered in
//! `output/user.rs`; nodes and links next to their commands.

mod user;

use std::io::{ErrorKind, Write};

use serde_json::{json, Value};
use vpn_proto::v1::{ClusterStatus, MemberRole};

use crate::error::CliError;

pub use user::{limits_table, status_name, user_json, user_table, users_table};

/// The `-o` choices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns for people.
    Table,
    /// One JSON document, for scripts.
    Json,
}

/// A command's result in both formats.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// What `-o json` prints.
    pub json: Value,
    /// What `-o table` prints (no trailing newline needed).
    pub table: String,
}

/// What a command produced.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// A result that has a table and a JSON form.
    Document(Document),
    /// Text printed as is whatever `-o` says (completion scripts).
    Raw(String),
}

impl Output {
    /// The text to print for `format`, ending in a newline.
    pub fn render(&self, format: Format) -> String {
        let mut text = match (self, format) {
            (Output::Raw(text), _) => text.clone(),
            (Output::Document(doc), Format::Table) => doc.table.clone(),
            (Output::Document(doc), Format::Json) => {
                serde_json::to_string_pretty(&doc.json).unwrap_or_else(|_| doc.json.to_string())
            }
        };
        if !text.ends_with('\n') {
            text.push('\n');
        }
        text
    }

    /// Writes to stdout; a reader that went away (`| head`) is not an error.
    pub fn print(&self, format: Format) -> Result<(), CliError> {
        let mut stdout = std::io::stdout().lock();
        let written = stdout.write_all(self.render(format).as_bytes()).and_then(|()| stdout.flush());
        match written {
            Err(err) if err.kind() != ErrorKind::BrokenPipe => Err(CliError::Output(err)),
            _ => Ok(()),
        }
    }
}

fn role_name(role: MemberRole) -> &'static str {
    match role {
        MemberRole::Voter => "voter",
        MemberRole::Learner => "learner",
        MemberRole::Unspecified => "unspecified",
    }
}

/// The `cluster status` document (also what member add/remove print).
pub fn status_json(status: &ClusterStatus) -> Value {
    let members: Vec<Value> =
        status.members.iter().map(|m| json!({ "id": m.id, "addr": m.addr, "role": role_name(m.role()) })).collect();
    json!({
        "leader_id": status.leader_id,
        "term": status.term,
        "members": members,
        "node_id": status.node_id,
        "commit_index": status.commit_index,
        "applied_index": status.applied_index,
        "cluster_id": status.cluster_id,
        "tls": status.tls,
    })
}

/// `cluster status` for people: a summary, then one row per member.
pub fn status_table(status: &ClusterStatus) -> String {
    let leader = match status.leader_id {
        Some(id) => format!("node {id} (term {})", status.term),
        None => format!("none in term {}; writes fail until one is elected", status.term),
    };
    let answered = format!(
        "node {}, commit index {}, applied index {}",
        status.node_id, status.commit_index, status.applied_index
    );
    let mut rows = vec![vec!["ID".into(), "ADDRESS".into(), "ROLE".into()]];
    for member in &status.members {
        let mut role = role_name(member.role()).to_string();
        if status.leader_id == Some(member.id) {
            role.push_str(", leader");
        }
        rows.push(vec![member.id.to_string(), member.addr.clone(), role]);
    }
    let cluster = if status.cluster_id.is_empty() { "unknown".to_owned() } else { status.cluster_id.clone() };
    let transport = if status.tls { "mutual TLS" } else { "PLAINTEXT, no authentication (vpnd --insecure)" };
    let summary = fields(&[
        ("Cluster", cluster),
        ("Leader", leader),
        ("Answered by", answered),
        ("Transport", transport.to_owned()),
    ]);
    format!("{summary}\n\n{}", table(&rows))
}

/// Left-aligned columns two spaces apart; the last column is not padded.
pub fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|col| {
            let cells = rows.iter().filter_map(|row| row.get(col));
            cells.map(|cell| cell.chars().count()).max().unwrap_or(0)
        })
        .collect();
    let lines: Vec<String> = rows
        .iter()
        .map(|row| {
            let cells = row.iter().zip(&widths);
            let padded: Vec<String> = cells.map(|(cell, w)| format!("{cell:<w$}")).collect();
            padded.join("  ").trim_end().to_string()
        })
        .collect();
    lines.join("\n")
}

/// `Key:  value` lines with the values aligned.
pub fn fields(pairs: &[(&str, String)]) -> String {
    let width = pairs.iter().map(|(key, _)| key.len() + 1).max().unwrap_or(0);
    let lines: Vec<String> =
        pairs.iter().map(|(key, value)| format!("{:<width$}  {value}", format!("{key}:"))).collect();
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use vpn_proto::v1::Member;

    use super::*;

    fn three_nodes(leader: Option<u64>) -> ClusterStatus {
        let member = |id: u64, role: MemberRole| Member { id, addr: format!("10.0.0.{id}:7000"), role: role as i32 };
        ClusterStatus {
            leader_id: leader,
            term: 7,
            members: vec![member(1, MemberRole::Voter), member(2, MemberRole::Voter), member(13, MemberRole::Learner)],
            node_id: 1,
            commit_index: 42,
            applied_index: 41,
            cluster_id: "5d3c7e1b00a4f2c9".into(),
            tls: true,
        }
    }

    #[test]
    fn status_json_has_the_contract_shape() {
        let expected = json!({
            "leader_id": 2,
            "term": 7,
            "members": [
                {"id": 1, "addr": "10.0.0.1:7000", "role": "voter"},
                {"id": 2, "addr": "10.0.0.2:7000", "role": "voter"},
                {"id": 13, "addr": "10.0.0.13:7000", "role": "learner"},
            ],
            "node_id": 1,
            "commit_index": 42,
            "applied_index": 41,
            "cluster_id": "5d3c7e1b00a4f2c9",
            "tls": true,
        });
        assert_eq!(status_json(&three_nodes(Some(2))), expected);
        assert_eq!(status_json(&three_nodes(None))["leader_id"], Value::Null);
    }

    #[test]
    fn json_output_is_one_document() {
        let doc = Output::Document(Document { json: json!({"users": [{"name": "alice"}]}), table: String::new() });
        let text = doc.render(Format::Json);
        let parsed: Result<Value, _> = serde_json::from_str(&text);
        assert_eq!(parsed.ok().map(|v| v["users"][0]["name"].clone()), Some(json!("alice")));
        assert!(text.ends_with("}\n"));
    }

    #[test]
    fn status_table_aligns_columns_and_marks_the_leader() {
        let text = status_table(&three_nodes(Some(2)));
        let expected = "\
Cluster:      5d3c7e1b00a4f2c9
Leader:       node 2 (term 7)
Answered by:  node 1, commit index 42, applied index 41
Transport:    mutual TLS

ID  ADDRESS         ROLE
1   10.0.0.1:7000   voter
2   10.0.0.2:7000   voter, leader
13  10.0.0.13:7000  learner";
        assert_eq!(text, expected);
        assert!(status_table(&three_nodes(None)).contains("Leader:       none in term 7"));
    }
}
