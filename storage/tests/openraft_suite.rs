//! openraft's own storage test suite against the sled store.

use openraft::testing::{StoreBuilder, Suite};
use tempfile::TempDir;
use vpn_storage::types::{StorageError, TypeConfig};
use vpn_storage::{LogStore, StateMachineStore};

/// Opens a fresh data dir per test; the `TempDir` guard deletes it afterwards.
struct TempStore;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for TempStore {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError> {
        let dir = tempfile::tempdir().map_err(|e| openraft::StorageIOError::write(&e))?;
        let (log, sm) = vpn_storage::open(dir.path()).map_err(|e| openraft::StorageIOError::write(&e))?;
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite() {
    if let Err(e) = Suite::test_all(TempStore) {
        panic!("openraft storage suite failed: {e}");
    }
}
