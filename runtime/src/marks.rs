//! Per-user socket marks: how the kernel tells one user's traffic from another's.
//!
//! Each user gets a `direct` outbound with its own `routing_mark` in every
//! engine generation, so every packet of the user's upstream connections
//! carries `prefix | slot`; [`crate::nftables`] counts bytes per mark. A mark
//! belongs to the user, not to an engine process, so the counts run on
//! through generation handoffs, engine crashes and vpnd restarts.
//!
//! The high 16 bits are this node's prefix, the low 16 a slot per user (up to
//! 65,535 users a node). Nodes sharing a host (tests) need distinct prefixes:
//! the prefix is derived from the node id, moved on past any prefix another
//! node's nftables table claims, and kept in `marks.json` with the slots, so
//! a restarted vpnd finds the same marks (and the kernel's counts under them).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::fsutil::write_atomic;
use crate::RuntimeError;

/// The mark bits that carry the node's prefix.
pub const PREFIX_MASK: u32 = 0xffff_0000;

/// The marks of this node's users, kept in `<config dir>/marks.json` (0600).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marks {
    /// `prefix | slot` is a user's mark.
    pub prefix: u32,
    slots: BTreeMap<String, Slot>,
    /// Numbers assignments, so a mark given to a user again counts as a new source.
    next_assignment: u64,
    #[serde(skip)]
    path: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Slot {
    slot: u16,
    assignment: u64,
}

impl Marks {
    /// Loads the node's marks, or picks a prefix for a new node: one derived
    /// from `node_id`, or the next one that no prefix in `taken` uses.
    pub fn load_or_create(config_dir: &Path, node_id: u64, taken: &BTreeSet<u32>) -> Result<Self, RuntimeError> {
        let path = config_dir.join("marks.json");
        match std::fs::read(&path) {
            Ok(bytes) => {
                let mut marks: Marks = serde_json::from_slice(&bytes).map_err(|e| {
                    RuntimeError::io("read", &path, std::io::Error::other(format!("{e}; delete it to start over")))
                })?;
                marks.path = path;
                Ok(marks)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let prefix = free_prefix(node_id, taken);
                let marks = Marks { prefix, slots: BTreeMap::new(), next_assignment: 1, path };
                marks.save()?;
                Ok(marks)
            }
            Err(e) => Err(RuntimeError::io("read", path, e)),
        }
    }

    pub fn mark(&self, user: &str) -> Option<u32> {
        self.slots.get(user).map(|s| self.prefix | u32::from(s.slot))
    }

    /// Every user's mark.
    pub fn all(&self) -> BTreeMap<String, u32> {
        self.slots.iter().map(|(name, s)| (name.clone(), self.prefix | u32::from(s.slot))).collect()
    }

    /// The user a mark of this node belongs to, and a name for this
    /// assignment of it (`<user>/<n>`): a counting source of its own.
    pub fn owner(&self, mark: u32) -> Option<(&str, String)> {
        if mark & PREFIX_MASK != self.prefix {
            return None;
        }
        let slot = u16::try_from(mark & !PREFIX_MASK).ok()?;
        let (name, s) = self.slots.iter().find(|(_, s)| s.slot == slot)?;
        Some((name.as_str(), format!("{name}/{}", s.assignment)))
    }

    pub fn users(&self) -> impl Iterator<Item = &str> {
        self.slots.keys().map(String::as_str)
    }

    /// Gives every one of `users` a mark (the lowest free slots), saving if any was new.
    pub fn assign<'a>(&mut self, users: impl IntoIterator<Item = &'a str>) -> Result<(), RuntimeError> {
        let mut changed = false;
        for user in users {
            if self.slots.contains_key(user) {
                continue;
            }
            let used: BTreeSet<u16> = self.slots.values().map(|s| s.slot).collect();
            let slot = (1..=u16::MAX).find(|s| !used.contains(s)).ok_or_else(|| {
                RuntimeError::invalid("users", "more than 65,535 users on one node: no socket mark is left")
            })?;
            self.slots.insert(user.to_string(), Slot { slot, assignment: self.next_assignment });
            self.next_assignment += 1;
            changed = true;
        }
        if changed {
            self.save()?;
        }
        Ok(())
    }

    /// Frees the marks of `users` (after their last bytes were read).
    pub fn release(&mut self, users: &[String]) -> Result<(), RuntimeError> {
        let before = self.slots.len();
        self.slots.retain(|name, _| !users.contains(name));
        if self.slots.len() != before {
            self.save()?;
        }
        Ok(())
    }

    fn save(&self) -> Result<(), RuntimeError> {
        let bytes = serde_json::to_vec_pretty(self)
            .map_err(|e| RuntimeError::io("encode", &self.path, std::io::Error::other(e)))?;
        write_atomic(&self.path, &bytes, true)
    }
}

/// A prefix derived from the node id, never 0 (unmarked traffic), moved past taken ones.
fn free_prefix(node_id: u64, taken: &BTreeSet<u32>) -> u32 {
    // FNV-1a over the id's bytes spreads neighbouring ids apart.
    let hash = node_id.to_be_bytes().iter().fold(0x811c_9dc5_u32, |h, b| (h ^ u32::from(*b)).wrapping_mul(0x0100_0193));
    let start = (hash >> 16).max(1);
    (0..=u32::from(u16::MAX))
        .map(|i| ((start + i - 1) % u32::from(u16::MAX) + 1) << 16)
        .find(|p| !taken.contains(p))
        .unwrap_or(start << 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_keep_their_marks_across_a_restart_and_freed_slots_are_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut marks = Marks::load_or_create(dir.path(), 7, &BTreeSet::new()).expect("new");
        marks.assign(["alice", "bob", "carol"]).expect("assign");
        let alice = marks.mark("alice").expect("alice");
        assert_eq!(alice & PREFIX_MASK, marks.prefix);
        assert_eq!(marks.owner(alice), Some(("alice", "alice/1".to_string())));
        assert_eq!(marks.owner(alice ^ PREFIX_MASK), None, "another prefix is another node's");
        marks.release(&["bob".into()]).expect("release");
        marks.assign(["dave"]).expect("assign");
        assert_eq!(marks.mark("dave"), Some(marks.prefix | 2), "bob's slot is reused");
        assert_eq!(marks.owner(marks.prefix | 2), Some(("dave", "dave/4".to_string())), "as a new source");

        let again = Marks::load_or_create(dir.path(), 7, &BTreeSet::new()).expect("load");
        assert_eq!(again, marks);
        assert_eq!(again.mark("alice"), Some(alice));
    }

    #[test]
    fn prefixes_are_nonzero_and_avoid_those_taken() {
        let first = free_prefix(7, &BTreeSet::new());
        assert_ne!(first, 0);
        assert_eq!(first & !PREFIX_MASK, 0);
        let next = free_prefix(7, &BTreeSet::from([first]));
        assert_ne!(next, first);
        assert_ne!(free_prefix(8, &BTreeSet::new()), first, "neighbouring ids get distinct prefixes");
        let dir = tempfile::tempdir().expect("tempdir");
        let marks = Marks::load_or_create(dir.path(), 7, &BTreeSet::from([first])).expect("new");
        assert_eq!(marks.prefix, next);
    }

    #[test]
    fn a_damaged_file_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("marks.json"), "{").expect("write");
        let err = Marks::load_or_create(dir.path(), 7, &BTreeSet::new()).expect_err("damaged").to_string();
        assert!(err.contains("marks.json") && err.contains("delete it"), "{err}");
    }
}
