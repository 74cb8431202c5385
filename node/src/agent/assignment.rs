//! The node's last assignment, kept in `<data-dir>/dataplane/assignment.json`
//! (0600, replaced atomically) so that a node restarted while every
//! control-plane node is away serves its users again. It holds the users'
//! engine credentials: what the node serves anyway, and nothing more.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use uuid::Uuid;
use vpn_proto::internal::Assignment;
use vpn_runtime::desired::{DesiredState, EngineUser, InboundSpec};

use super::secrets::write_private;
use crate::error::Error;

const FILE: &str = "assignment.json";
const VERSION: u32 = 1;

/// One assigned user as the engines need it, plus the id traffic reports carry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignedUser {
    pub name: String,
    pub id: Uuid,
    pub vless_uuid: Uuid,
    pub ss2022_key: String,
}

/// What the file holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stored {
    version: u32,
    pub node_id: u64,
    pub generation: u64,
    pub users: Vec<AssignedUser>,
}

impl Stored {
    /// The assignment in the form the agent keeps, checked: a malformed
    /// one (from a confused or hostile peer) is refused whole.
    pub fn from_wire(node_id: u64, wire: &Assignment) -> Result<Self, String> {
        let uuid = |what: &str, name: &str, s: &str| {
            s.parse::<Uuid>().map_err(|_| format!("user {name:?}: {what} {s:?} is not a UUID"))
        };
        let mut users = wire
            .users
            .iter()
            .map(|u| {
                Ok(AssignedUser {
                    name: u.name.clone(),
                    id: uuid("id", &u.name, &u.id)?,
                    vless_uuid: uuid("vless_uuid", &u.name, &u.vless_uuid)?,
                    ss2022_key: u.ss2022_key.clone(),
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        users.sort_by(|a, b| a.name.cmp(&b.name));
        users.dedup_by(|a, b| a.name == b.name);
        Ok(Self { version: VERSION, node_id, generation: wire.generation, users })
    }

    /// What the engines should serve.
    pub fn desired(&self, inbounds: &[InboundSpec]) -> DesiredState {
        DesiredState {
            generation: self.generation,
            node_id: self.node_id,
            inbounds: inbounds.to_vec(),
            users: self
                .users
                .iter()
                .map(|u| EngineUser {
                    name: u.name.clone(),
                    vless_uuid: u.vless_uuid,
                    ss2022_key: u.ss2022_key.clone(),
                })
                .collect(),
        }
    }

    /// User name -> id, for traffic reports.
    pub fn ids(&self) -> HashMap<String, Uuid> {
        self.users.iter().map(|u| (u.name.clone(), u.id)).collect()
    }
}

/// The file in the agent's directory.
pub struct AssignmentFile {
    path: PathBuf,
}

impl AssignmentFile {
    pub fn new(dir: &Path) -> Self {
        Self { path: dir.join(FILE) }
    }

    /// The last assignment of node `node_id`; `None` when there is none yet.
    /// A damaged file, or one of another node, is an error naming it.
    pub fn load(&self, node_id: u64) -> Result<Option<Stored>, Error> {
        let bytes = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.damaged(&e.to_string())),
        };
        let stored: Stored = serde_json::from_slice(&bytes).map_err(|e| self.damaged(&e.to_string()))?;
        if stored.node_id != node_id {
            return Err(self.damaged(&format!("it belongs to node {}, not {node_id}", stored.node_id)));
        }
        Ok(Some(stored))
    }

    /// Replaces the file atomically (mode 0600).
    pub fn save(&self, stored: &Stored) -> Result<(), Error> {
        let bytes = serde_json::to_vec(stored).map_err(|e| Error::Internal(format!("encoding an assignment: {e}")))?;
        write_private(&self.path, &bytes)
    }

    /// Forgets the kept assignment (the node was removed).
    pub fn remove(&self) -> Result<(), String> {
        match std::fs::remove_file(&self.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(format!("{}: {e}", self.path.display())),
            _ => Ok(()),
        }
    }

    fn damaged(&self, detail: &str) -> Error {
        Error::DataDir {
            path: self.path.clone(),
            detail: format!(
                "the last assignment cannot be read ({detail}); remove the file and start vpnd again: the node then \
                 serves nobody until a control-plane node answers"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use vpn_proto::internal::AssignedUser as WireUser;

    use super::*;

    fn wire_user(name: &str) -> WireUser {
        WireUser {
            name: name.into(),
            id: Uuid::new_v4().to_string(),
            vless_uuid: Uuid::new_v4().to_string(),
            ss2022_key: "a2V5LWtleS1rZXkta2V5MQ==".into(),
        }
    }

    #[test]
    fn the_last_assignment_survives_a_restart_in_a_private_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = AssignmentFile::new(dir.path());
        assert_eq!(file.load(7).expect("load"), None, "nothing before the first assignment");
        let wire = Assignment { generation: 12, users: vec![wire_user("bob"), wire_user("alice")] };
        let stored = Stored::from_wire(7, &wire).expect("valid");
        file.save(&stored).expect("save");
        let mode = std::fs::metadata(dir.path().join(FILE)).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "credentials are for this node's user only");
        let loaded = file.load(7).expect("load").expect("saved");
        assert_eq!(loaded, stored);
        let names: Vec<&str> = loaded.users.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["alice", "bob"], "sorted by name, as the engines take them");
        assert_eq!(loaded.desired(&[]).generation, 12);
        let other = file.load(8).expect_err("another node's file");
        assert!(other.to_string().contains("belongs to node 7"), "{other}");
    }

    #[test]
    fn a_malformed_assignment_is_refused_whole() {
        let mut bad = wire_user("carol");
        bad.vless_uuid = "not-a-uuid".into();
        let wire = Assignment { generation: 3, users: vec![wire_user("alice"), bad] };
        let err = Stored::from_wire(7, &wire).expect_err("refused");
        assert!(err.contains("carol") && err.contains("vless_uuid"), "{err}");
    }
}
