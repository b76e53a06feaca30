//! The usage-store contract against the SQLite backend.

use meter_sqlite::Durability;
use meter_store::contract::Harness;
use meter_store::{SqliteStore, UsageStore};
use std::sync::Arc;

struct Sqlite(tempfile::TempDir);

#[async_trait::async_trait]
impl Harness for Sqlite {
    async fn open(&self) -> Arc<dyn UsageStore> {
        Arc::new(SqliteStore::open(&self.0.path().join("usage.db"), Durability::Normal).unwrap())
    }
}

fn sqlite() -> Sqlite {
    Sqlite(tempfile::tempdir().unwrap())
}

meter_store::store_contract!(sqlite());
