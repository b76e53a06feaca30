//! The event-log contract against the SQLite backend.

use meter_eventlog::contract::Harness;
use meter_eventlog::{EventLog, SqliteLog};
use meter_sqlite::Durability;
use std::sync::Arc;

struct Sqlite(tempfile::TempDir);

#[async_trait::async_trait]
impl Harness for Sqlite {
    async fn open(&self) -> Arc<dyn EventLog> {
        Arc::new(SqliteLog::open(&self.0.path().join("events.db"), 4, Durability::Normal).unwrap())
    }
}

fn sqlite() -> Sqlite {
    Sqlite(tempfile::tempdir().unwrap())
}

meter_eventlog::eventlog_contract!(sqlite());

#[tokio::test]
async fn a_log_refuses_another_partition_count() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    drop(SqliteLog::open(&path, 4, Durability::Normal).unwrap());
    let err = SqliteLog::open(&path, 8, Durability::Normal).err().unwrap();
    assert!(err.to_string().contains("cannot change"), "{err}");
}
