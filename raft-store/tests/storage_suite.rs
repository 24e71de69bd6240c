//! openraft's own storage test suite, run against the RocksDB store.

use openraft::testing::{StoreBuilder, Suite};
use raft_store::raft::{StorageError, TypeConfig};
use raft_store::storage::{LogStore, StateMachineStore, Store};

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, (tempfile::TempDir, Store)> for Builder {
    async fn build(
        &self,
    ) -> Result<((tempfile::TempDir, Store), LogStore, StateMachineStore), StorageError> {
        // A fresh database per sub-test; group 7 so prefixes are exercised.
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path()).expect("store opens");
        let (log, sm) = store.group(7).expect("group opens");
        Ok(((dir, store), log, sm))
    }
}

#[test]
fn openraft_storage_suite() {
    if let Err(e) = Suite::test_all(Builder) {
        panic!("openraft storage suite failed: {e}");
    }
}
