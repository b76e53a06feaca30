//! End to end: a client streams events, retrying every failure, while `meter serve` is killed
//! with SIGKILL and restarted again and again. Usage ends exactly at the distinct events. The same
//! body runs on the embedded SQLite log and on a Kafka log (`meter dev kafka`), where retries leave
//! real duplicates in the log for the aggregator to drop (or on the broker named by
//! `METER_TEST_KAFKA=HOST:PORT`).

mod common;

use common::*;
use serde_json::Value;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::Duration;

const TENANTS: usize = 40;

/// Every process runs with transparent huge pages off (zeroing a 2 MiB page at each first touch
/// of mimalloc's arenas held up a fresh aggregator's first batches), unless `MIMALLOC_ALLOW_THP`
/// asks to keep them.
#[test]
fn processes_run_without_transparent_huge_pages_unless_asked() {
    let dir = tempfile::tempdir().unwrap();
    let off = Meter::start(dir.path(), &[]);
    assert_eq!(off.status_field("THP_enabled"), "0");
    drop(off);
    let kept = Meter::start(dir.path(), &[("MIMALLOC_ALLOW_THP", "1")]);
    assert_eq!(kept.status_field("THP_enabled"), "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_stream_neither_loses_nor_double_counts() {
    stream_through_kills(&[], 100_000, 6).await;
}

/// The same with random ids (UUIDv4-like): on the embedded default they are appended, a row per
/// transaction, rather than put straight into a generation, and each restart reads them back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_with_random_ids_neither_loses_nor_double_counts() {
    stream_through_kills_with(&[], 60_000, 4, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_on_a_kafka_log_neither_loses_nor_double_counts() {
    let kafka = DevKafka::start(4);
    stream_through_kills(&env_refs(&kafka.env()), 30_000, 4).await;
}

async fn stream_through_kills(env: &[(&str, &str)], events_total: usize, kills_total: usize) {
    stream_through_kills_with(env, events_total, kills_total, false).await;
}

async fn stream_through_kills_with(env: &[(&str, &str)], events_total: usize, kills_total: usize, random_ids: bool) {
    let dir = tempfile::tempdir().unwrap();
    let key = create_key(dir.path(), "admin", None);
    let meter = Arc::new(std::sync::Mutex::new(Meter::start(dir.path(), env)));
    let urls = Arc::new(RwLock::new(vec![meter.lock().unwrap().url.clone()]));

    let now_s = now_us() / 1_000_000;
    let events: Arc<Vec<Value>> = Arc::new(
        (0..events_total)
            .map(|i| {
                let mut e = meter_tools::loadgen::event("crash", i, TENANTS, now_s);
                if random_ids {
                    e["transaction_id"] = format!("crash-{:032x}", rand::random::<u128>()).into();
                }
                e
            })
            .collect(),
    );
    let stream = Stream::start(events.clone(), urls.clone(), key.clone(), 4);
    let mut kills = 0;
    while kills < kills_total {
        let threshold = stream.batches * (kills + 1) / (kills_total + 1);
        while stream.done.load(Ordering::SeqCst) < threshold {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let m = meter.clone();
        let new_url = tokio::task::spawn_blocking(move || {
            let mut m = m.lock().unwrap();
            m.restart();
            m.url.clone()
        })
        .await
        .unwrap();
        *urls.write().unwrap() = vec![new_url];
        kills += 1;
    }
    let retries = stream.finish().await;
    eprintln!("{kills} SIGKILLs, {retries} retried requests");

    let u = urls.read().unwrap()[0].clone();
    assert_eq!(assert_exact(&u, &key, &events).await, TENANTS);
}
