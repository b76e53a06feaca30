//! The ledger's contract against the SQLite backend.

use meter_billing::ledger::{LedgerStore, SqliteLedger};
use std::sync::Arc;

fn store() -> Arc<dyn LedgerStore> {
    // Each test keeps its directory for as long as the process runs.
    let dir = Box::leak(Box::new(tempfile::tempdir().unwrap()));
    Arc::new(SqliteLedger::open(&dir.path().join("billing.db")).unwrap())
}

meter_billing::ledger_contract!(store());
