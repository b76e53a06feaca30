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
    // In the open generation: a new file's takes its first ids straight in (an appended id
    // would be inside a transaction's row, which this cannot change: the count below says so).
    let changed: usize = ["ids_g1"]
        .iter()
        .map(|t| conn.execute(&format!("UPDATE {t} SET hash = ?1 WHERE id = 'ce-1'"), [&[7u8; 32][..]]).unwrap())
        .sum();
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

/// Offsets of what a reader from offset 0 reads now.
fn read_all(log: &SqliteLog) -> Vec<u64> {
    let mut r = log.reader().unwrap();
    r.seek(&[]);
    let mut offsets = Vec::new();
    loop {
        let b = r.poll(1_000, std::time::Duration::from_millis(50)).unwrap();
        offsets.extend(b.records.iter().map(|r| r.position.offset));
        if b.caught_up {
            return offsets;
        }
    }
}

/// Compaction drops a prefix of a partition: only records below where every consumer stands
/// that arrived before the cut-off; the next offset never goes back, even after a reopen with the
/// partition emptied, readers are told where it starts, and a dropped id stays a duplicate.
#[tokio::test]
async fn compaction_drops_only_what_no_consumer_and_no_census_reads() {
    use meter_eventlog::contract::event;
    use meter_eventlog::{Outcome, Position};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let log = SqliteLog::open(&path, 1, Durability::Normal).unwrap();
    let first: Vec<_> = (0..10).map(|i| event("acme", &format!("a{i}"), i)).collect();
    log.append(&first).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let cut_off = meter_schemas::period::now_us();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let second: Vec<_> = (0..5).map(|i| event("acme", &format!("b{i}"), i)).collect();
    log.append(&second).await.unwrap();
    let at = |offset| [Position { partition: 0, offset }];

    // The slowest consumer is at offset 6: 0-5 go.
    assert_eq!(log.compact(&at(6), cut_off).await.unwrap(), 6);
    assert_eq!(read_all(&log), (6..15).collect::<Vec<_>>());
    assert_eq!(log.reader().unwrap().kept_from().unwrap(), at(6));
    // Every consumer is at the end, but 10-14 arrived after the cut-off: only 6-9 go.
    assert_eq!(log.compact(&at(15), cut_off).await.unwrap(), 4);
    assert_eq!(read_all(&log), (10..15).collect::<Vec<_>>());
    // Nothing more to drop; and a consumer position below what is gone changes nothing.
    assert_eq!(log.compact(&at(15), cut_off).await.unwrap(), 0);
    assert_eq!(log.compact(&at(3), i64::MAX).await.unwrap(), 0);
    // All of it.
    assert_eq!(log.compact(&at(15), i64::MAX).await.unwrap(), 5);
    assert_eq!(read_all(&log), Vec::<u64>::new());
    drop(log);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;

    let log = SqliteLog::open(&path, 1, Durability::Normal).unwrap();
    assert_eq!(log.reader().unwrap().kept_from().unwrap(), at(15));
    let outcomes = log.append(&[event("acme", "a0", 0), event("acme", "c0", 0)]).await.unwrap();
    assert_eq!(outcomes, vec![Outcome::Duplicate, Outcome::Appended(Position { partition: 0, offset: 15 })]);
    assert_eq!(read_all(&log), vec![15]);
}
