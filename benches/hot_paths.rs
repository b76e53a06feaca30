//! Criterion benchmarks of the hot paths: parsing and validating a request, metering events, the
//! SQLite log append and the store's batch apply. Run with `cargo bench --bench hot_paths`.
#![allow(missing_docs)] // criterion's macros generate undocumented functions

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use meter_eventlog::{EventLog, SqliteLog};
use meter_schemas::envelope::{Context, Format, parse};
use meter_schemas::{Catalog, Event, Limits, TenantScope};
use meter_sqlite::Durability;
use meter_store::{Metered, Progress, SqliteStore, UsageStore};
use std::hint::black_box;

fn body(prefix: &str, n: usize, tenants: usize) -> Vec<u8> {
    let now = meter_schemas::period::now_us() / 1_000_000;
    let events: Vec<_> = (0..n).map(|i| meter::loadgen::event(prefix, i, tenants, now)).collect();
    serde_json::to_vec(&serde_json::json!({ "events": events })).unwrap()
}

fn parsed(prefix: &str, n: usize, tenants: usize, catalog: &Catalog) -> Vec<Event> {
    let limits = Limits { max_events: n, ..Limits::default() };
    let cx = Context { limits: &limits, catalog, scope: &TenantScope::Any, now_us: meter_schemas::period::now_us() };
    parse(Format::LagoBatch, &body(prefix, n, tenants), &cx).unwrap().events
}

fn ingest_path(c: &mut Criterion) {
    let catalog = Catalog::new(vec![]).unwrap();
    let limits = Limits::default();
    let b = body("p", 100, 1000);
    let mut g = c.benchmark_group("ingest");
    g.throughput(Throughput::Elements(100));
    g.bench_function("parse_validate_lago_batch_100", |bench| {
        bench.iter(|| {
            let cx = Context {
                limits: &limits,
                catalog: &catalog,
                scope: &TenantScope::Any,
                now_us: meter_schemas::period::now_us(),
            };
            black_box(parse(Format::LagoBatch, black_box(&b), &cx).unwrap())
        })
    });
    let events = parsed("h", 100, 1000, &catalog);
    g.bench_function("hash_and_encode_100", |bench| {
        bench.iter(|| {
            events.iter().map(|e| (e.payload_hash()[0], e.encode().len())).fold(0usize, |a, (h, l)| a + h as usize + l)
        })
    });
    g.bench_function("meter_contributions_100", |bench| {
        bench.iter(|| events.iter().map(|e| catalog.contributions(e).0.len()).sum::<usize>())
    });
    g.finish();
}

fn storage_path(c: &mut Criterion) {
    let catalog = Catalog::new(vec![]).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut g = c.benchmark_group("storage");
    g.sample_size(20);
    g.throughput(Throughput::Elements(1000));
    let log = SqliteLog::open(&dir.path().join("events.db"), 4, Durability::Full).unwrap();
    let mut round = 0;
    g.bench_function("sqlite_log_append_1000_fsync", |bench| {
        bench.iter_batched(
            || {
                round += 1;
                parsed(&format!("l{round}"), 1000, 1000, &catalog)
            },
            |events| rt.block_on(log.append(&events)).unwrap(),
            BatchSize::LargeInput,
        )
    });
    let store = SqliteStore::open(&dir.path().join("usage.db"), Durability::Normal).unwrap();
    let mut round = 0;
    g.bench_function("sqlite_store_apply_1000", |bench| {
        bench.iter_batched(
            || {
                round += 1;
                parsed(&format!("s{round}"), 1000, 1000, &catalog)
                    .into_iter()
                    .map(|e| Metered {
                        contributions: catalog.contributions(&e).0,
                        tenant: e.tenant,
                        id: e.id,
                        offset: 0,
                        time_us: e.time_us,
                    })
                    .collect::<Vec<_>>()
            },
            |metered| store.apply("bench", catalog.meters(), &metered, &Progress::default()).unwrap(),
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, ingest_path, storage_path);
criterion_main!(benches);
