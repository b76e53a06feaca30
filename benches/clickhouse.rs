//! The ClickHouse store, measured against the `clickhouse` crate inserting the same rows directly,
//! then read back per tenant (period totals, 90-day series) and whole (the period close).
//!
//! `cargo bench --bench clickhouse` (EVENTS, TENANTS and SAMPLES override the defaults:
//! 10,000,000 events, 10,000 tenants over 90 days, 1,000 tenant queries). Uses the server named by
//! `METER_TEST_CLICKHOUSE`, or starts a private `clickhouse-server`.
#![allow(clippy::print_stdout, missing_docs)]

use clickhouse::Row;
use meter_schemas::period::{day_of, now_us};
use meter_schemas::{Catalog, Contribution, Period};
use meter_store::testing::{fresh_database, shared_http};
use meter_store::{Advance, ClickHouseStore, ClickHouseUrl, Metered, Progress, UsageStore};
use rust_decimal::Decimal;
use serde::Serialize;
use std::time::{Duration, Instant};

const BATCH: usize = 100_000;
const DAY_US: i64 = 86_400_000_000;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The same row the store inserts, written here by hand.
#[derive(Row, Serialize)]
struct Direct<'a> {
    tenant: &'a str,
    id: &'a str,
    time_us: i64,
    rank: u64,
    meters: Vec<&'a str>,
    kinds: Vec<u8>,
    values: Vec<i128>,
    texts: Vec<&'a str>,
}

fn events(from: usize, n: usize, tenants: usize, start_us: i64, span_us: i64, catalog: &Catalog) -> Vec<Metered> {
    let index = |name: &str| catalog.meters().iter().position(|m| m.name == name).unwrap();
    let (wo, inv, tok, api, users) = (
        index("work_orders"),
        index("agent_invocations"),
        index("agent_tokens"),
        index("api_calls"),
        index("active_users"),
    );
    (from..from + n)
        .map(|i| {
            let contributions = match i % 4 {
                0 => vec![(wo, Contribution::Count)],
                1 => vec![(inv, Contribution::Count), (tok, Contribution::Sum(Decimal::from(1000 + i % 97)))],
                2 => vec![(api, Contribution::Count)],
                _ => vec![(users, Contribution::Unique(format!("user-{}", i % 50)))],
            };
            Metered {
                tenant: format!("tenant-{:05}", i % tenants),
                id: format!("ev-{i}"),
                offset: i as u64,
                // Spread over the whole span, in no order.
                time_us: start_us + ((i as u64).wrapping_mul(11_400_714_819_323_198_485) >> 16) as i64 % span_us,
                groups: match i % 4 {
                    1 => vec![(tok, vec![format!("model-{}", i % 3)])],
                    2 => vec![(api, vec![format!("/v1/route-{}", i % 7)])],
                    _ => vec![],
                },
                contributions,
            }
        })
        .collect()
}

fn direct_rows<'a>(events: &'a [Metered], catalog: &'a Catalog) -> Vec<Direct<'a>> {
    events
        .iter()
        .map(|e| {
            let mut row = Direct {
                tenant: &e.tenant,
                id: &e.id,
                time_us: e.time_us,
                rank: u64::MAX - e.offset,
                meters: vec![],
                kinds: vec![],
                values: vec![],
                texts: vec![],
            };
            for (m, c) in &e.contributions {
                row.meters.push(&catalog.meters()[*m].name);
                let (k, v, t) = match c {
                    Contribution::Count => (0, 1_000_000_000, ""),
                    Contribution::Sum(q) => (1, q.mantissa() * 1_000_000_000, ""),
                    Contribution::Unique(u) => (2, 0, u.as_str()),
                    _ => unreachable!("not generated"),
                };
                row.kinds.push(k);
                row.values.push(v);
                row.texts.push(t);
            }
            row
        })
        .collect()
}

fn percentile(sorted: &[Duration], q: f64) -> f64 {
    sorted[((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1].as_secs_f64() * 1000.0
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let (total, tenants, samples) = (env("EVENTS", 10_000_000), env("TENANTS", 10_000), env("SAMPLES", 1_000));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let http = shared_http();
    let catalog = Catalog::new(vec![]).unwrap();
    let now = now_us();
    let span = 90 * DAY_US;
    let start = (now - span).div_euclid(DAY_US) * DAY_US;
    let migrate = |url: &ClickHouseUrl| {
        rt.block_on(ClickHouseStore::migrate(url)).unwrap();
    };
    let (direct_url, store_url) = (fresh_database(&http), fresh_database(&http));
    migrate(&direct_url);
    migrate(&store_url);
    let client = clickhouse::Client::default()
        .with_url(&direct_url.http)
        .with_database(&direct_url.database)
        .with_validation(false)
        .with_compression(clickhouse::Compression::None);
    let store = rt.block_on(ClickHouseStore::open(&store_url)).unwrap();
    println!("{total} events, {tenants} tenants, 90 days, batches of {BATCH}; server {http}");

    // Inserts, alternating batch by batch (and which goes first) so that both meet the same
    // server state: the merges one insert starts slow down the next.
    let (mut direct_time, mut store_time) = (Duration::ZERO, Duration::ZERO);
    let mut next = 0u64;
    for (n, from) in (0..total).step_by(BATCH).enumerate() {
        let batch = events(from, BATCH.min(total - from), tenants, start, span, &catalog);
        let direct = || {
            // Both timings include turning events into rows.
            let t = Instant::now();
            let rows = direct_rows(&batch, &catalog);
            rt.block_on(async {
                let mut insert = client.insert::<Direct<'_>>("events").await.unwrap();
                for r in &rows {
                    insert.write(r).await.unwrap();
                }
                insert.end().await.unwrap();
            });
            t.elapsed()
        };
        let to = next + batch.len() as u64;
        let progress = Progress { partitions: vec![Advance { partition: 0, from: next, to }], watermark_us: Some(now) };
        let sink = || {
            let t = Instant::now();
            store.apply("meter-sink", catalog.meters(), &batch, &progress).unwrap();
            t.elapsed()
        };
        if n % 2 == 0 {
            direct_time += direct();
            store_time += sink();
        } else {
            store_time += sink();
            direct_time += direct();
        }
        next = to;
        if from % 1_000_000 == 0 {
            eprintln!("  inserted {} of {total}", from + batch.len());
        }
    }
    let direct_rate = total as f64 / direct_time.as_secs_f64();
    let store_rate = total as f64 / store_time.as_secs_f64();
    println!(
        "insert: clickhouse crate directly {direct_rate:.0} rows/s; store apply (sink) {store_rate:.0} rows/s; ratio {:.2}",
        store_rate / direct_rate
    );

    let period = Period::containing(now);
    let series_from = day_of(now) - time::Duration::days(89);
    let series_to = day_of(now) + time::Duration::days(1);
    let coverage = meter_store::Coverage { consumer: "meter-sink", partition: 0 };
    let measure = |label: &str| {
        let mut period_times = Vec::new();
        let mut series_times = Vec::new();
        for s in 0..samples {
            let tenant = format!("tenant-{:05}", (s * 7919) % tenants);
            let t = Instant::now();
            let u = rt.block_on(store.usage(&tenant, period, coverage)).unwrap();
            period_times.push(t.elapsed());
            assert!(!u.meters.is_empty());
            let t = Instant::now();
            let d = rt.block_on(store.daily(&tenant, series_from, series_to)).unwrap();
            series_times.push(t.elapsed());
            assert!(!d.is_empty());
        }
        period_times.sort();
        series_times.sort();
        println!(
            "{label}: period totals p50 {:.1} ms p99 {:.1} ms; 90-day series p50 {:.1} ms p99 {:.1} ms ({samples} tenants)",
            percentile(&period_times, 0.5),
            percentile(&period_times, 0.99),
            percentile(&series_times, 0.5),
            percentile(&series_times, 0.99)
        );
        let t = Instant::now();
        let close = rt.block_on(store.period_totals(period)).unwrap();
        println!(
            "{label}: period close scan of {period}: {} tenants in {:.2} s",
            close.len(),
            t.elapsed().as_secs_f64()
        );
        let previous = Period::containing(period.start_us() - 1);
        let t = Instant::now();
        let close = rt.block_on(store.period_totals(previous)).unwrap();
        println!(
            "{label}: period close scan of {previous}: {} tenants in {:.2} s",
            close.len(),
            t.elapsed().as_secs_f64()
        );
    };
    measure("raw events");
    // Seal everything before today (a watermark 8 days on, past a 7-day lateness window).
    let t = Instant::now();
    let lateness = 7 * DAY_US;
    store.advance_watermark("meter-sink", &[0], now - DAY_US + lateness).unwrap();
    let rolled = rt.block_on(store.roll_up("meter-sink", 1, lateness)).unwrap();
    println!("roll-up of {} days: {:.2} s", rolled - start / DAY_US, t.elapsed().as_secs_f64());
    measure("after roll-up");
}
