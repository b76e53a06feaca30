//! The usage-store and live-counter contracts against the SQLite backend.

use meter_sqlite::Durability;
use meter_sqlite::dedup::Settings;
use meter_store::contract::{Harness, LiveHarness};
use meter_store::{LiveStore, SqliteStore, UsageStore};
use std::sync::Arc;
use std::time::Duration;

struct Sqlite(tempfile::TempDir);

#[async_trait::async_trait]
impl Harness for Sqlite {
    async fn open(&self) -> Arc<dyn UsageStore> {
        Arc::new(SqliteStore::open(&self.0.path().join("usage.db"), Durability::Normal).unwrap())
    }
}

#[async_trait::async_trait]
impl LiveHarness for Sqlite {
    async fn open_live(&self) -> Arc<dyn LiveStore> {
        Arc::new(SqliteStore::open(&self.0.path().join("usage.db"), Durability::Normal).unwrap())
    }

    async fn open_live_keeping(&self, horizon: Duration) -> Arc<dyn LiveStore> {
        let dedup = Settings::new(horizon.as_micros() as i64);
        Arc::new(SqliteStore::open_with(&self.0.path().join("usage.db"), Durability::Normal, dedup).unwrap())
    }
}

fn sqlite() -> Sqlite {
    Sqlite(tempfile::tempdir().unwrap())
}

meter_store::store_contract!(sqlite());
meter_store::live_contract!(sqlite());

/// A store written by the previous schema (one watermark per consumer, consumer "aggregator")
/// opens with its checkpoints and watermark carried over to the group's name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_1_store_keeps_its_checkpoints_and_watermark() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("usage.db");
    let old = meter_sqlite::rusqlite::Connection::open(&path).unwrap();
    old.execute_batch(
        "CREATE TABLE tallies (tenant TEXT NOT NULL, meter TEXT NOT NULL, bucket TEXT NOT NULL,
             value TEXT, latest_us INTEGER, latest_id TEXT, PRIMARY KEY (tenant, meter, bucket)) WITHOUT ROWID;
         CREATE TABLE uniques (tenant TEXT NOT NULL, meter TEXT NOT NULL, bucket TEXT NOT NULL, value TEXT NOT NULL,
             PRIMARY KEY (tenant, meter, bucket, value)) WITHOUT ROWID;
         CREATE TABLE seen (tenant TEXT NOT NULL, id TEXT NOT NULL, PRIMARY KEY (id, tenant)) WITHOUT ROWID;
         CREATE TABLE checkpoints (consumer TEXT NOT NULL, partition INTEGER NOT NULL, next_offset INTEGER NOT NULL,
             PRIMARY KEY (consumer, partition));
         CREATE TABLE watermarks (consumer TEXT PRIMARY KEY, watermark_us INTEGER NOT NULL);
         INSERT INTO checkpoints VALUES ('aggregator', 0, 12), ('aggregator', 2, 7);
         INSERT INTO watermarks VALUES ('aggregator', 1794744000000000);
         PRAGMA user_version = 1;",
    )
    .unwrap();
    drop(old);
    let store = SqliteStore::open(&path, Durability::Normal).unwrap();
    assert_eq!(store.checkpoint("meter-aggregator").unwrap().positions, vec![(0, 12), (2, 7)]);
    let usage = store
        .usage("t", "2026-11".parse().unwrap(), meter_store::Coverage { consumer: "meter-aggregator", partition: 2 })
        .await
        .unwrap();
    assert_eq!(usage.watermark_us, Some(1_794_744_000_000_000));
}

/// A breakdown amount the store cannot read (a damaged or hand-edited file) is an error, on
/// reading it and on adding to it, and the batch that would have added to it changes nothing;
/// it never reads as zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_breakdown_amount_is_an_error_and_changes_nothing() {
    use meter_store::contract::{MID_NOVEMBER, adv, metered, meters};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("usage.db");
    let store = SqliteStore::open(&path, Durability::Normal).unwrap();
    let call = |o, id: &str| {
        metered(
            o,
            "a",
            id,
            "api.call",
            serde_json::json!({"route": "/x", "method": "GET", "status": 200}),
            MID_NOVEMBER,
        )
    };
    store.apply("c", &meters(), &[call(0, "c1")], &adv(0, 1)).unwrap();
    meter_sqlite::rusqlite::Connection::open(&path)
        .unwrap()
        .execute("UPDATE breakdowns SET amount = 'lots'", [])
        .unwrap();
    let nov = "2026-11".parse().unwrap();
    let read = store.breakdown("a", nov).await.unwrap_err().to_string();
    assert!(read.contains("breakdown amount \"lots\""), "{read}");
    // A fresh process has no cached amount: it reads the stored one, and refuses the batch.
    drop(store);
    let store = SqliteStore::open(&path, Durability::Normal).unwrap();
    store.checkpoint("c").unwrap();
    let applied = store.apply("c", &meters(), &[call(1, "c2")], &adv(1, 2));
    assert!(matches!(applied, Err(meter_store::Error::Unreadable(_))), "{applied:?}");
    assert_eq!(store.checkpoint("c").unwrap().positions, vec![(0, 1)], "the checkpoint did not move");
    let usage = store.usage("a", nov, meter_store::Coverage { consumer: "c", partition: 0 }).await.unwrap();
    assert_eq!(usage.meters["api_calls"].period.value, Some(rust_decimal::Decimal::ONE), "c2 not counted");
}
