//! Finds (or creates) the log's directory, `<data dir>/raft-log`, and imports
//! the log of a data dir written by a version that kept it in sled (trees
//! `log` and `raft_meta`, JSON values).
//!
//! sled records that the directory exists (`raft_log_dir`): a data dir whose
//! log directory has gone missing is reported, never silently started with
//! an empty log and a forgotten vote.

use std::fs;
use std::path::{Path, PathBuf};

use crate::durable::{get_json, DurableDb};
use crate::error::OpenError;
use crate::types::{Entry, LogId, Vote};
use crate::wal::{self, Replayed};

const MARKER: &[u8] = b"raft_log_dir";
const LEGACY_TREES: [&str; 2] = ["log", "raft_meta"];

pub(crate) fn open(
    db: &DurableDb,
    data_dir: &Path,
    snapshot: Option<crate::types::LogId>,
) -> Result<(PathBuf, Replayed), OpenError> {
    let dir = data_dir.join("raft-log");
    let marked = db.db().get(MARKER).map_err(|e| OpenError::corrupt(db.path(), e))?.is_some();
    if !dir.exists() {
        if marked {
            return Err(OpenError::corrupt(
                &dir,
                "the raft log directory is missing although this data dir had one (its vote and log are lost)",
            ));
        }
        create(db, data_dir, &dir)?;
    }
    if !marked {
        mark(db)?;
    }
    drop_legacy_trees(db)?;
    Ok((dir.clone(), wal::replay(&dir, crate::log_store::DECODED_AT_OPEN, snapshot)?))
}

/// Builds the directory aside with one segment (holding an imported legacy
/// log, if any) and renames it into place, so it appears whole or not at all.
fn create(db: &DurableDb, data_dir: &Path, dir: &Path) -> Result<(), OpenError> {
    let initial = legacy_log(db)?;
    let aside = data_dir.join("raft-log.new");
    let io = |e| OpenError::from_io(data_dir, e);
    if aside.exists() {
        fs::remove_dir_all(&aside).map_err(io)?;
    }
    fs::create_dir(&aside).map_err(io)?;
    wal::create_segment(&aside, 1, &initial).map_err(io)?;
    fs::rename(&aside, dir).map_err(io)?;
    wal::sync_dir(data_dir).map_err(io)
}

fn mark(db: &DurableDb) -> Result<(), OpenError> {
    let marked = db.db().insert(MARKER, &b"1"[..]).map(|_| ()).map_err(std::io::Error::from).and_then(|()| db.sync());
    marked.map_err(|e| OpenError::from_io(db.path(), e))
}

/// The frames of a log kept in sled by an earlier version; empty if none.
fn legacy_log(db: &DurableDb) -> Result<Vec<u8>, OpenError> {
    let corrupt = |what: &str, e: &dyn std::fmt::Display| OpenError::corrupt(db.path(), format!("{what}: {e}"));
    let names = db.db().tree_names();
    if !LEGACY_TREES.iter().any(|t| names.iter().any(|n| n == t.as_bytes())) {
        return Ok(Vec::new());
    }
    let meta = db.db().open_tree("raft_meta").map_err(|e| corrupt("raft_meta", &e))?;
    let vote: Option<Vote> = get_json(&meta, b"vote").map_err(|e| corrupt("vote", &e))?;
    let committed: Option<LogId> = get_json(&meta, b"committed").map_err(|e| corrupt("committed", &e))?;
    let purged: Option<LogId> = get_json(&meta, b"last_purged").map_err(|e| corrupt("last purged log id", &e))?;
    let mut frames = Vec::new();
    wal::put_state(&mut frames, vote.as_ref(), committed.as_ref(), purged.as_ref());
    let log = db.db().open_tree("log").map_err(|e| corrupt("log", &e))?;
    for item in log.iter().values() {
        let bytes = item.map_err(|e| corrupt("log", &e))?;
        let entry: Entry = crate::durable::decode(&bytes).map_err(|e| corrupt("log entry", &e))?;
        wal::put_entry(&mut frames, &entry).map_err(|e| corrupt("log entry", &e))?;
    }
    if !frames.is_empty() {
        tracing::info!(path = %db.path().display(), "imported the raft log from sled into raft-log/");
    }
    Ok(frames)
}

fn drop_legacy_trees(db: &DurableDb) -> Result<(), OpenError> {
    for tree in LEGACY_TREES {
        if db.db().tree_names().iter().any(|n| n == tree.as_bytes()) {
            db.db().drop_tree(tree).map_err(|e| OpenError::from_io(db.path(), e.into()))?;
        }
    }
    Ok(())
}
