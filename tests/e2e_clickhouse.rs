//! End to end on a ClickHouse store: `meter migrate`, the refusal of an unmigrated store, and a
//! ClickHouse server killed for 30 s during a stream of 100,000 events: no ingest request fails,
//! and the live counters and the ClickHouse history both end exact.

mod common;

use common::*;
use meter_store::testing::{ClickHouseServer, fresh_database};
use serde_json::Value;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

const TENANTS: usize = 100;

fn meter(args: &[&str], dir: &std::path::Path) -> std::process::Output {
    Command::new(meter_bin())
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .env("METER__BOOTSTRAP_ADMIN_KEY", "false")
        .env("RUST_LOG", "warn")
        .output()
        .expect("meter runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clickhouse_down_for_30_s_during_a_stream_fails_no_request_and_loses_nothing() {
    let ch_dir = tempfile::tempdir().unwrap();
    let mut clickhouse = ClickHouseServer::start(ch_dir.path());
    let db = fresh_database(&clickhouse.http());
    let store = format!("clickhouse://{}/{}", db.http.trim_start_matches("http://"), db.database);
    let dir = tempfile::tempdir().unwrap();

    // An unmigrated store is refused, with what to do; `meter migrate` makes it usable.
    let refused = meter(&["serve", "--listen", "127.0.0.1:0", "--store", &store], dir.path());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && stderr.contains("meter migrate --store"), "{stderr}");
    let migrated = meter(&["migrate", "--store", &store], dir.path());
    assert!(migrated.status.success(), "{}", String::from_utf8_lossy(&migrated.stderr));
    let at = format!("schema version {}", meter_store::CLICKHOUSE_SCHEMA_VERSION);
    assert!(String::from_utf8_lossy(&migrated.stderr).contains(&at));

    let key = create_key(dir.path(), "admin", None);
    let m = Meter::start(dir.path(), &[("METER__STORE__URL", &store), ("METER__SINK__LINGER", "200ms")]);
    let urls = Arc::new(RwLock::new(vec![m.url.clone()]));
    let now_s = now_us() / 1_000_000;
    let events: Arc<Vec<Value>> =
        Arc::new((0..100_000).map(|i| meter_tools::loadgen::event("ch", i, TENANTS, now_s)).collect());
    let stream = Stream::start(events.clone(), urls.clone(), key.clone(), 4);
    while stream.done.load(Ordering::SeqCst) < stream.batches / 5 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let down_at = Instant::now();
    let mut clickhouse = tokio::task::spawn_blocking(move || {
        clickhouse.kill();
        clickhouse
    })
    .await
    .unwrap();
    eprintln!("clickhouse killed after {} of {} batches", stream.done.load(Ordering::SeqCst), stream.batches);
    // Meanwhile the process stays ready (ingest accepts into the log) and says the sink fails.
    let mut said = String::new();
    while down_at.elapsed() < Duration::from_secs(30) {
        let r = client().get(format!("{}/readyz", m.url)).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let body = r.text().await.unwrap();
        if body.contains("clickhouse sink failing") {
            said = body;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(!said.is_empty(), "readyz never reported the failing sink");
    let during = stream.done.load(Ordering::SeqCst);
    let _clickhouse = tokio::task::spawn_blocking(move || {
        clickhouse.restart();
        clickhouse
    })
    .await
    .unwrap();
    let retries = stream.finish().await;
    eprintln!("{during} batches acknowledged by the end of the outage; {retries} requests retried");
    assert_eq!(retries, 0, "no ingest request failed while ClickHouse was down");

    assert_eq!(assert_exact(&m.url, &key, &events).await, TENANTS, "live counters");
    let checked = assert_exact_in(&m.url, &key, &events, Some("store"), Duration::from_secs(120)).await;
    assert_eq!(checked, TENANTS, "ClickHouse history");
    // Usage by model and by route: ClickHouse's history answers as the live counters do.
    for tenant in ["tenant-0001", "tenant-0002"] {
        let mut by_source = Vec::new();
        for source in ["live", "store"] {
            let path = format!("{}/api/v1/usage/breakdown?tenant={tenant}&top=100&source={source}", m.url);
            let body: Value = client().get(path).bearer_auth(&key).send().await.unwrap().json().await.unwrap();
            by_source.push(body["dimensions"].clone());
        }
        assert!(!by_source[0].as_array().unwrap().is_empty(), "{tenant} has no breakdown");
        assert_eq!(by_source[0], by_source[1], "{tenant}: live and ClickHouse differ");
    }
    let u = usage_from(&m.url, &key, "tenant-0001", Some("store")).await;
    assert_eq!(u["source"], "store");
    let r = client().get(format!("{}/api/v1/usage?tenant=tenant-0001&source=nope", m.url)).bearer_auth(&key).send();
    let r = r.await.unwrap();
    assert_eq!(r.status(), 422);
    let body = r.text().await.unwrap();
    assert!(body.contains("source") && body.contains("live") && body.contains("store"), "{body}");
    // The sink's metrics are told apart from the aggregator's.
    let metrics = client().get(format!("{}/metrics", m.url)).send().await.unwrap().text().await.unwrap();
    for consumer in ["meter-aggregator", "meter-sink"] {
        let line = format!("meter_aggregator_events_total{{consumer=\"{consumer}\",outcome=\"counted\"}}");
        assert!(metrics.contains(&line), "{line} missing from {metrics}");
    }
    assert_eq!(usage(&m.url, &key, "tenant-0001").await["source"], "live", "the open period reads live");
    let r = client().get(format!("{}/api/v1/usage/daily?tenant=tenant-0001&days=90", m.url)).bearer_auth(&key).send();
    let series: Value = r.await.unwrap().json().await.unwrap();
    assert_eq!(series["meters"][0]["daily"].as_array().unwrap().len(), 90);
    let r = client().get(format!("{}/api/v1/usage/daily?tenant=tenant-0001&days=45", m.url)).bearer_auth(&key).send();
    let r = r.await.unwrap();
    assert_eq!(r.status(), 422);
    let body = r.text().await.unwrap();
    assert!(body.contains("days") && body.contains("30, 60 or 90"), "{body}");
}
