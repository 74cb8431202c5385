//! The identity of a data dir: which node id it belongs to, and a random
//! incarnation made when the dir was created. Peers remember the incarnation,
//! so a wiped node cannot come back under its old id and vote a second time.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::Error;

const FILE: &str = "identity.json";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub node_id: u64,
    pub incarnation: Uuid,
}

impl Identity {
    /// Loads the identity of `dir`, or creates the dir and a fresh identity
    /// when the dir holds no state yet.
    pub fn load_or_create(dir: &Path, node_id: u64) -> Result<Self, Error> {
        let path = dir.join(FILE);
        let data_err = |detail: String| Error::DataDir { path: dir.to_owned(), detail };
        match std::fs::read(&path) {
            Ok(bytes) => {
                let found: Identity = serde_json::from_slice(&bytes).map_err(|e| {
                    data_err(format!("{FILE} is corrupt ({e}): restore the dir from a backup, or remove member {node_id} and re-add this node with a new --id and an empty --data-dir"))
                })?;
                if found.node_id != node_id {
                    return Err(data_err(format!(
                        "belongs to node {}, not --id {node_id}: start with --id {} or use another --data-dir",
                        found.node_id, found.node_id
                    )));
                }
                Ok(found)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if dir.join("raft").exists() {
                    return Err(data_err(format!(
                        "holds Raft state but no {FILE}: the dir is damaged; restore it from a backup or start this node under a new --id with an empty dir"
                    )));
                }
                let identity = Identity { node_id, incarnation: Uuid::new_v4() };
                write_durably(dir, &path, &identity).map_err(|e| {
                    data_err(format!("cannot write {FILE}: {e}: make the dir writable or choose another --data-dir"))
                })?;
                Ok(identity)
            }
            Err(e) => Err(data_err(format!("cannot read {FILE}: {e}: check permissions or choose another --data-dir"))),
        }
    }
}

/// Writes to a temp file, syncs it, renames it into place and syncs the dir,
/// so a crash leaves either no identity or a complete one.
fn write_durably(dir: &Path, path: &PathBuf, identity: &Identity) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!("{FILE}.tmp"));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(&serde_json::to_vec_pretty(identity).map_err(std::io::Error::other)?)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_created_once_and_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("node");
        let first = Identity::load_or_create(&data, 3).expect("create");
        assert_eq!(Identity::load_or_create(&data, 3).expect("load"), first);
        let e = Identity::load_or_create(&data, 4).expect_err("other id");
        assert!(e.to_string().contains("--id 3"), "{e}");
        std::fs::write(data.join(FILE), b"{garbage").expect("write");
        assert!(Identity::load_or_create(&data, 3).expect_err("corrupt").to_string().contains("corrupt"));
    }

    #[test]
    fn unwritable_dir_is_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("plain-file");
        std::fs::write(&file, b"x").expect("write");
        let e = Identity::load_or_create(&file.join("sub"), 1).expect_err("not a dir");
        assert!(e.to_string().contains("--data-dir"), "{e}");
    }
}
