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

/// A log written before a CloudEvent's `time` left its payload hash holds the hash with the
/// time: a resend of such an event is still a duplicate, a resend with other data a conflict.
#[tokio::test]
async fn a_cloudevent_stored_under_the_earlier_hash_is_a_duplicate_when_resent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let log = SqliteLog::open(&path, 4, Durability::Normal).unwrap();
    let mut ce = meter_eventlog::contract::event("acme", "ce-1", 1);
    ce.source = Some("sdk".into());
    assert!(matches!(log.append(std::slice::from_ref(&ce)).await.unwrap()[0], meter_eventlog::Outcome::Appended(_)));
    // As an earlier meter stored it: a hash with the time in it (any other hash than today's),
    // read back when the log opens again.
    drop(log);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let conn = meter_sqlite::rusqlite::Connection::open(&path).unwrap();
    conn.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
    let changed = conn.execute("UPDATE ids_pending SET hash = ?1 WHERE id = 'ce-1'", [&[7u8; 32][..]]).unwrap();
    assert_eq!(changed, 1);
    drop(conn);
    let log = SqliteLog::open(&path, 4, Durability::Normal).unwrap();
    let mut resend = ce.clone();
    resend.time_us += 1_000_000;
    assert!(matches!(log.append(&[ce.clone()]).await.unwrap()[0], meter_eventlog::Outcome::Duplicate));
    assert!(matches!(log.append(&[resend]).await.unwrap()[0], meter_eventlog::Outcome::Duplicate));
    let mut other = ce.clone();
    other.code = "api.call".into();
    assert!(matches!(log.append(&[other]).await, Err(meter_eventlog::Error::Conflicts(_))));
}
