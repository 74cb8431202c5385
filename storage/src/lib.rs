//! Durable Raft storage for the VPN control plane: openraft's v2 log storage
//! in append-only segment files, and the state machine in sled.
//!
//! Durability: every log write is followed by `fdatasync` before appended
//! entries are acknowledged to openraft; concurrent proposals share one entry,
//! and so one sync (group commit, in [`Proposer`]). sled's `flush()` does not reach the disk (it uses
//! `sync_file_range`), so where the state machine needs a durability point it
//! is a `flush()` followed by `fdatasync` on sled's data file.
//!
//! Layout:
//! - [`types`]: the openraft type configuration.
//! - [`model`]: users, credentials, member identities, data-plane nodes, name validation.
//! - [`command`]: replicated commands and the pure `apply`.
//! - [`trust`]: join tokens and the node ids ever issued a certificate.
//! - [`access`]: roles, bindings, API tokens and the audit log.
//! - [`state`]: the applied state (what a snapshot carries).
//! - [`proposer`]: [`Proposer`], concurrent writes batched into shared log entries.
//! - [`wire`]: the binary encoding of the bulky Raft RPCs (used by `vpn-node`).
//! - `log_store`: [`LogStore`], the Raft log, vote and committed index (in memory and on disk).
//! - `wal`: the log's segment files: frames, batches, records, replay, torn writes
//!   and corruption told apart (tests in `wal_tests`).
//! - `wal_writer`: writes and fdatasyncs the log, one operation per sync.
//! - `log_dir`: finds or creates `raft-log/`; imports a log kept in sled by earlier versions.
//! - `codec`: binary encoding of log ids, votes and entries.
//! - `state_machine`: [`StateMachineStore`], the applied state persisted in sled, snapshots.
//! - `sm_writer`: the thread that writes applied changes to sled, many applies per batch;
//!   [`Persistence`], whether the applied state reached sled.
//! - `snapshot_file`: the current snapshot as one atomically replaced file.
//! - `durable`: the sled handle with real `fdatasync`.
//! - `store_id`: catches a db that sled opened empty although it held data.
//! - `error`: [`OpenError`], what can go wrong when opening a data dir.
//! - [`disk_faults`]: torn writes and frame ends, for the tests that damage a log.
//! - `fuzz` (tests): fuzz targets of the log segments, the Raft RPCs' binary
//!   encoding and the snapshot file (`ops/scripts/fuzz.sh`).

pub mod access;
mod codec;
pub mod command;
pub mod disk_faults;
mod durable;
mod error;
#[cfg(test)]
mod fuzz;
mod log_dir;
mod log_store;
pub mod model;
pub mod proposer;
mod sm_writer;
mod snapshot_file;
pub mod state;
mod state_machine;
mod store_id;
pub mod trust;
pub mod types;
mod wal;
mod wal_writer;
pub mod wire;

pub use error::OpenError;
pub use log_store::LogStore;
pub use proposer::{ProposeError, Proposer};
pub use sm_writer::Persistence;
pub use state_machine::{StateMachineStore, StateReader};

use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

/// Opens (or creates) the Raft storage under `dir`. A corrupt or unreadable
/// store is reported, never silently reset.
pub fn open(dir: &Path) -> Result<(LogStore, StateMachineStore), OpenError> {
    let started = Instant::now();
    let db = durable::DurableDb::open(dir)?;
    let sled_opened = Instant::now();
    // The snapshot first: it covers a gap the log may hold (see `wal::replay`).
    let snapshot = snapshot_file::SnapshotFile::open(&dir.join("snapshots"))?;
    let covered = snapshot.1.as_ref().and_then(|(meta, _)| meta.last_log_id);
    // The log's replay and the state's load read different files (and sled
    // trees) and are each a good part of a start: side by side.
    let (log, sm) = std::thread::scope(|scope| {
        let log = scope.spawn(|| {
            let (log_dir, replayed) = log_dir::open(&db, dir, covered)?;
            let log = LogStore::open(&log_dir, replayed)?;
            Ok::<_, OpenError>((log, sled_opened.elapsed()))
        });
        let sm = StateMachineStore::open(db.clone(), snapshot).map(|sm| (sm, sled_opened.elapsed()));
        let log =
            log.join().unwrap_or_else(|_| Err(OpenError::from_io(dir, io::Error::other("the log's replay panicked"))));
        (log, sm)
    });
    let ((log, log_took), (sm, state_took)) = (log?, sm?);
    let (users, audit_records) = sm.reader().read(|s| (s.users.len(), s.audit.records.len()));
    // What a slow start spent its time on.
    tracing::info!(
        users,
        audit_records,
        sled_ms = ms(sled_opened - started),
        log_ms = ms(log_took),
        state_ms = ms(state_took),
        total_ms = ms(started.elapsed()),
        "storage opened"
    );
    Ok((log, sm))
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 10_000.0).round() / 10.0
}
