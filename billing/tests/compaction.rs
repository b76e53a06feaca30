//! Compacting the embedded log behind every consumer and every census still to come, against a
//! real SQLite log, usage stores and ledger.

use meter_billing::compaction::LogCompaction;
use meter_billing::{Ledger, close};
use meter_eventlog::contract::event;
use meter_eventlog::{EventLog, Position, SqliteLog};
use meter_rater::PriceBook;
use meter_rater::pricebook::SAMPLE;
use meter_schemas::Period;
use meter_sqlite::Durability;
use meter_store::contract::{adv, meters, tokens};
use meter_store::{SqliteStore, UsageStore};
use std::sync::Arc;
use std::time::Duration;

const METERS: &[&str] =
    &["work_orders", "work_orders_completed", "agent_invocations", "agent_tokens", "api_calls", "active_users"];
const DAY: i64 = 86_400_000_000;

fn at(rfc3339: &str) -> i64 {
    let t = time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339).unwrap();
    (t.unix_timestamp_nanos() / 1000) as i64
}

fn offsets(log: &SqliteLog) -> Vec<u64> {
    let mut r = log.reader().unwrap();
    r.seek(&[]);
    let mut offsets = Vec::new();
    loop {
        let b = r.poll(1_000, Duration::from_millis(50)).unwrap();
        offsets.extend(b.records.iter().map(|r| r.position.offset));
        if b.caught_up {
            return offsets;
        }
    }
}

/// A store whose consumer `c` has counted the log's first `n` records.
fn consumer_at(dir: &std::path::Path, name: &str, n: u64) -> Arc<SqliteStore> {
    let store = Arc::new(SqliteStore::open(&dir.join(name), Durability::Normal).unwrap());
    store.checkpoint("c").unwrap();
    let events: Vec<_> = (0..n).map(|i| tokens("acme", &format!("e{i}"), 1, at("2026-12-15T00:00:00Z"))).collect();
    store.apply("c", &meters(), &events, &adv(0, n)).unwrap();
    store
}

/// Nothing goes before the first close; after it, only what every consumer is past and what
/// arrived before the first period not closed (less `max_future`): a close of November keeps
/// every record that arrived since late November, one of December lets them go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_is_compacted_behind_every_consumer_and_the_census_still_to_come() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(SqliteLog::open(&dir.path().join("events.db"), 1, Durability::Normal).unwrap());
    let events: Vec<_> = (0..10).map(|i| event("acme", &format!("e{i}"), i)).collect();
    log.append(&events).await.unwrap();
    let (aggregator, sink) = (consumer_at(dir.path(), "usage.db", 8), consumer_at(dir.path(), "history.db", 3));
    let ledger = Ledger::open(&dir.path().join("billing.db")).unwrap();
    let book = Arc::new(PriceBook::parse(SAMPLE, METERS, &["active_users"]).unwrap());
    let sources = meter_billing::testing::one_store(aggregator.clone(), book);
    let compaction = LogCompaction {
        log: log.clone(),
        consumers: vec![(aggregator.clone(), "c".into()), (sink.clone(), "c".into())],
        ledger: ledger.clone(),
        max_future_us: DAY,
    };
    assert_eq!(compaction.once().await.unwrap(), 0, "no close yet: any period may still be closed");
    assert_eq!(offsets(&log), (0..10).collect::<Vec<_>>());

    // The records arrived today (2026-12-01 or later, by this machine's clock): December's
    // census, still to come, reads them.
    let now = meter_schemas::period::now_us();
    let november: Period = "2026-11".parse().unwrap();
    assert!(now >= november.end_us() - DAY, "this test assumes it runs after 2026-11-30");
    let unclosed = Period::containing(now);
    let last = unclosed.previous();
    aggregator.advance_watermark("c", &[0], unclosed.start_us()).unwrap();
    close(&ledger, last, &sources, unclosed.start_us(), &|_| {}).await.unwrap();
    assert_eq!(compaction.once().await.unwrap(), 0, "the census of {unclosed} still reads every record");
    assert_eq!(offsets(&log), (0..10).collect::<Vec<_>>());

    // Once that period is closed too, the records go up to the slowest consumer: the sink at 3.
    aggregator.advance_watermark("c", &[0], unclosed.end_us()).unwrap();
    close(&ledger, unclosed, &sources, unclosed.end_us(), &|_| {}).await.unwrap();
    assert_eq!(
        compaction.bounds().await.unwrap(),
        Some((vec![Position { partition: 0, offset: 3 }], unclosed.end_us() - DAY))
    );
    assert_eq!(compaction.once().await.unwrap(), 3);
    assert_eq!(offsets(&log), (3..10).collect::<Vec<_>>());
    // The sink moves on to 9; the aggregator, at 8, is now the slowest.
    let more: Vec<_> = (3..9).map(|i| tokens("acme", &format!("e{i}"), 1, at("2026-12-15T00:00:00Z"))).collect();
    sink.apply("c", &meters(), &more, &adv(3, 9)).unwrap();
    assert_eq!(compaction.once().await.unwrap(), 5);
    assert_eq!(offsets(&log), vec![8, 9]);
    // With no consumer named, nothing is known to be read: nothing goes.
    let unknown = LogCompaction { consumers: vec![], ..compaction };
    assert_eq!(unknown.bounds().await.unwrap(), None);
    assert_eq!(unknown.once().await.unwrap(), 0);
    assert_eq!(offsets(&log), vec![8, 9]);
}
