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

#[tokio::test]
async fn events_older_than_the_window_at_commit_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let day = 86_400_000_000;
    let log = SqliteLog::open_with_lateness(&dir.path().join("events.db"), 4, Durability::Normal, day).unwrap();
    let mut old = meter_eventlog::contract::event("acme", "old", 1);
    old.time_us = meter_schemas::period::now_us() - 2 * day;
    let mut fresh = meter_eventlog::contract::event("acme", "fresh", 2);
    fresh.time_us = meter_schemas::period::now_us();
    let err = log.append(&[fresh.clone(), old]).await.unwrap_err();
    assert!(matches!(&err, meter_eventlog::Error::TooLate(i) if *i == vec![1]), "{err}");
    assert!(matches!(log.append(&[fresh]).await.unwrap()[0], meter_eventlog::Outcome::Appended(_)));
}
