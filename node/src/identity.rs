//! The identity of a data dir: which node id it belongs to, a random
//! incarnation made when the dir was created, and the cluster it belongs to.
//! Peers remember the incarnation, so a wiped node cannot come back under its
//! old id and vote a second time; the cluster id keeps two clusters that
//! share an address from exchanging Raft messages.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::Error;

const FILE: &str = "identity.json";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub node_id: u64,
    pub incarnation: Uuid,
    /// Absent in dirs made before cluster ids existed, and until `--join` succeeds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<ClusterId>,
}

/// Which cluster a data dir belongs to. Like etcd's, it is derived from the
/// initial member list, so every initial member computes the same id without
/// talking to the others; a node that joins later learns it from the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClusterId(u64);

impl ClusterId {
    /// FNV-1a over `id=addr` lines in id order: stable across builds and
    /// platforms (not a secret, only a tag).
    pub fn from_initial_members(members: &BTreeMap<u64, String>) -> Self {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for (id, addr) in members {
            for byte in format!("{id}={addr}\n").bytes() {
                hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
            }
        }
        Self(hash)
    }
}

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl FromStr for ClusterId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match u64::from_str_radix(s, 16) {
            Ok(v) if s.len() == 16 => Ok(Self(v)),
            _ => Err(format!("{s:?} is not a cluster id (16 hex digits)")),
        }
    }
}

impl Serialize for ClusterId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ClusterId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?.parse().map_err(serde::de::Error::custom)
    }
}

/// This node's cluster id, shared by the Raft service (which checks it) and
/// every client of other nodes' Raft service (which present it). Set once:
/// at startup, or when `--join` succeeds.
#[derive(Clone, Default)]
pub struct ClusterCell(Arc<OnceLock<ClusterId>>);

impl ClusterCell {
    pub fn new(id: Option<ClusterId>) -> Self {
        let cell = Self::default();
        if let Some(id) = id {
            let _fresh = cell.0.set(id);
        }
        cell
    }

    pub fn get(&self) -> Option<ClusterId> {
        self.0.get().copied()
    }
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
                let identity = Identity { node_id, incarnation: Uuid::new_v4(), cluster_id: None };
                write_durably(dir, &path, &identity).map_err(|e| {
                    data_err(format!("cannot write {FILE}: {e}: make the dir writable or choose another --data-dir"))
                })?;
                Ok(identity)
            }
            Err(e) => Err(data_err(format!("cannot read {FILE}: {e}: check permissions or choose another --data-dir"))),
        }
    }
}

/// Records that this dir belongs to cluster `id`, in its identity file and
/// in `cell`. A dir that already names a cluster keeps it: it never changes
/// clusters.
pub fn record_cluster(dir: &Path, identity: Identity, cell: &ClusterCell, id: ClusterId) -> Result<(), Error> {
    let id = match identity.cluster_id {
        Some(known) => known,
        None => {
            let updated = Identity { cluster_id: Some(id), ..identity };
            write_durably(dir, &dir.join(FILE), &updated).map_err(|e| Error::DataDir {
                path: dir.to_owned(),
                detail: format!("cannot record the cluster id in {FILE}: {e}: make the dir writable"),
            })?;
            id
        }
    };
    let _already_set = cell.0.set(id);
    Ok(())
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
    fn every_initial_member_derives_the_same_cluster_id_and_another_list_another() {
        let list = |members: &[(u64, &str)]| -> BTreeMap<u64, String> {
            members.iter().map(|(id, addr)| (*id, (*addr).to_owned())).collect()
        };
        let a = ClusterId::from_initial_members(&list(&[(1, "10.0.0.1:7000"), (2, "10.0.0.2:7000")]));
        let same = ClusterId::from_initial_members(&list(&[(2, "10.0.0.2:7000"), (1, "10.0.0.1:7000")]));
        let other_addr = ClusterId::from_initial_members(&list(&[(1, "10.0.0.1:7000"), (2, "10.0.0.3:7000")]));
        assert_eq!(a, same);
        assert_ne!(a, other_addr);
        assert_eq!(a.to_string().parse::<ClusterId>(), Ok(a));
        assert!("not-hex".parse::<ClusterId>().is_err());
        assert!("abc".parse::<ClusterId>().is_err(), "too short");
    }

    #[test]
    fn the_cluster_id_is_recorded_once_and_survives_a_reload() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("node");
        let fresh = Identity::load_or_create(&data, 2).expect("create");
        assert_eq!(fresh.cluster_id, None, "a dir made before its cluster is known");
        let (first, second) = ("00000000000000aa".parse().expect("id"), "00000000000000bb".parse().expect("id"));
        let cell = ClusterCell::default();
        record_cluster(&data, fresh, &cell, first).expect("record");
        let loaded = Identity::load_or_create(&data, 2).expect("load");
        assert_eq!(loaded.cluster_id, Some(first));
        assert_eq!(cell.get(), Some(first));

        // A dir never changes clusters.
        let cell = ClusterCell::new(loaded.cluster_id);
        record_cluster(&data, loaded, &cell, second).expect("record again");
        assert_eq!(Identity::load_or_create(&data, 2).expect("load").cluster_id, Some(first));
        assert_eq!(cell.get(), Some(first));
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
