//! The ledger's contract against the SQLite backend.

use meter_billing::ledger::{LedgerStore, SqliteLedger};
use std::sync::Arc;

fn store() -> Arc<dyn LedgerStore> {
    // Each test keeps its directory for as long as the process runs.
    let dir = Box::leak(Box::new(tempfile::tempdir().unwrap()));
    Arc::new(SqliteLedger::open(&dir.path().join("billing.db")).unwrap())
}

meter_billing::ledger_contract!(store());

/// A ledger whose closes were recorded before the invoice table existed gets it filled at open.
#[tokio::test]
async fn closes_recorded_before_the_invoice_table_fill_it_at_open() {
    use meter_billing::Ledger;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("billing.db");
    let close = meter_billing::ledger::contract::a_close("2026-10", &[]);
    let inv = meter_billing::ledger::contract::invoice("acme", "2026-10", 2);
    Ledger::open(&path).unwrap();
    // As an older meter left it: the close whole in one value, no invoice table rows.
    let body = serde_json::to_string(&meter_billing::Close { invoices: vec![inv.clone()], ..close }).unwrap();
    let c = meter_sqlite::rusqlite::Connection::open(&path).unwrap();
    c.execute("INSERT INTO closes (period, closed_us, body) VALUES ('2026-10', 7, ?1)", [body]).unwrap();
    c.execute_batch("DELETE FROM invoices; DELETE FROM invoices_filled;").unwrap();
    drop(c);
    let ledger = Ledger::open(&path).unwrap();
    assert_eq!(ledger.invoices_of("acme").await.unwrap(), [inv]);
}
