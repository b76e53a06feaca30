//! The key table's contract against the SQLite backend.

use meter_auth::{KeyTable, SqliteKeys};
use std::sync::Arc;

fn table() -> Arc<dyn KeyTable> {
    // Each test keeps its directory for as long as the process runs.
    let dir = Box::leak(Box::new(tempfile::tempdir().unwrap()));
    Arc::new(SqliteKeys::open(&dir.path().join("keys.db")).unwrap())
}

meter_auth::keys_contract!(table());
