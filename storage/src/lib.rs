//! Durable Raft storage for the VPN control plane: openraft's v2 log storage
//! and state machine, both on one sled database.
//!
//! Durability: sled's `flush()` does not reach the disk (it uses
//! `sync_file_range`), so every durability point is a `flush()` followed by
//! `fdatasync` on sled's data file. Appended entries are acknowledged to
//! openraft only after that, and appends that arrive while a sync runs share
//! the next one (group commit).
//!
//! Layout:
//! - [`types`]: the openraft type configuration.
//! - [`model`]: users, credentials, member identities, data-plane nodes, name validation.
//! - [`command`]: replicated commands and the pure `apply`.
//! - [`state`]: the applied state (what a snapshot carries).
//! - `log_store`: [`LogStore`], the Raft log, vote and committed index.
//! - `state_machine`: [`StateMachineStore`], the applied state persisted in sled, snapshots.
//! - `snapshot_file`: the current snapshot as one atomically replaced file.
//! - `durable`: the sled handle with real `fdatasync`, and the group-commit flusher.
//! - `store_id`: catches a db that sled opened empty although it held data.
//! - `error`: [`OpenError`], what can go wrong when opening a data dir.

pub mod command;
mod durable;
mod error;
mod log_store;
pub mod model;
mod snapshot_file;
pub mod state;
mod state_machine;
mod store_id;
pub mod types;

pub use error::OpenError;
pub use log_store::LogStore;
pub use state_machine::{StateMachineStore, StateReader};

use std::path::Path;

/// Opens (or creates) the Raft storage under `dir`. A corrupt or unreadable
/// store is reported, never silently reset.
pub fn open(dir: &Path) -> Result<(LogStore, StateMachineStore), OpenError> {
    let db = durable::DurableDb::open(dir)?;
    let log = LogStore::open(db.clone())?;
    let sm = StateMachineStore::open(db, dir)?;
    Ok((log, sm))
}
