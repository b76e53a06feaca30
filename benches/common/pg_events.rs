//! The load generator's events, metered, and their batches applied, for the Postgres benchmarks.

use meter_schemas::Catalog;
use meter_schemas::period::now_us;
use meter_store::{Advance, Metered, PgStore, Progress, UsageStore};
use std::time::{Duration, Instant};

/// The number in environment variable `name`, or `default`.
pub fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Applies `batches` on `store` as consumer "bench" (one log partition, from offset 0); answers
/// the time they took.
pub fn applied(store: &PgStore, catalog: &Catalog, batches: &[&[Metered]]) -> Duration {
    store.checkpoint("bench").unwrap();
    let started = Instant::now();
    let mut at = 0u64;
    for b in batches {
        let to = at + b.len() as u64;
        let progress = Progress { partitions: vec![Advance { partition: 0, from: at, to }], watermark_us: None };
        store.apply("bench", catalog.meters(), b, &progress).unwrap();
        at = to;
    }
    started.elapsed()
}

/// The load generator's events (every tenant sends all five codes), metered.
pub fn events(n: usize, tenants: usize, catalog: &Catalog) -> Vec<Metered> {
    let now_s = now_us() / 1_000_000;
    (0..n)
        .map(|i| {
            let v = meter_tools::loadgen::event("bench", i, tenants, now_s);
            let event = meter_schemas::Event {
                tenant: v["external_customer_id"].as_str().unwrap().into(),
                id: v["transaction_id"].as_str().unwrap().into(),
                code: v["code"].as_str().unwrap().into(),
                time_us: now_s * 1_000_000,
                implicit_time: false,
                subscription: None,
                source: None,
                properties: v["properties"].as_object().cloned().unwrap_or_default(),
            };
            let (contributions, _) = catalog.contributions(&event);
            let groups = catalog.groups(&contributions, &event);
            Metered {
                tenant: event.tenant,
                id: event.id,
                offset: i as u64,
                time_us: event.time_us,
                contributions,
                groups,
            }
        })
        .collect()
}
