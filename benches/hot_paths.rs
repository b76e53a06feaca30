//! Criterion benchmarks of the hot paths: parsing and validating a request, metering events, the
//! SQLite log append and the store's batch apply (without alerts, with every tenant on a plan so
//! that each changed counter is checked against its thresholds, of tenants counted for the
//! first time, and of 10,000 tenants whose counters exist, in order and mixed), and a new id's
//! lookup in the embedded default's dedup state of many sealed generations, through their group
//! filters and through each generation's filter. Run with `cargo bench --bench hot_paths`.
#![allow(missing_docs)] // criterion's macros generate undocumented functions

use criterion::measurement::WallTime;
use criterion::{BatchSize, BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main};
use meter_billing::{Ledger, PlanAllowances};
use meter_eventlog::{EventLog, SqliteLog};
use meter_rater::{Cycle, PriceBook, Setup};
use meter_schemas::envelope::{Context, Format, parse};
use meter_schemas::{Catalog, Event, Limits, TenantScope};
use meter_sqlite::Durability;
use meter_store::{LiveStore, Metered, Progress, SqliteStore, UsageStore};
use std::hint::black_box;

fn body(prefix: &str, n: usize, tenants: usize) -> Vec<u8> {
    let now = meter_schemas::period::now_us() / 1_000_000;
    let events: Vec<_> = (0..n).map(|i| meter_tools::loadgen::event(prefix, i, tenants, now)).collect();
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
    // What every reader of the log does per record: the log's format, and JSON as earlier builds
    // wrote it (still read), side by side.
    let records: Vec<Vec<u8>> = events.iter().map(Event::encode).collect();
    let json: Vec<Vec<u8>> = events.iter().map(|e| serde_json::to_vec(e).unwrap()).collect();
    for (name, records) in [("log_decode_100", &records), ("log_decode_json_100", &json)] {
        g.bench_function(name, |bench| {
            bench.iter(|| records.iter().map(|r| Event::decode(black_box(r)).unwrap().properties.len()).sum::<usize>())
        });
    }
    // What the aggregator does per event: its contributions, and its group values for the
    // meters broken down.
    g.bench_function("meter_contributions_100", |bench| {
        bench.iter(|| {
            events
                .iter()
                .map(|e| {
                    let (contributions, _) = catalog.contributions(e);
                    contributions.len() + catalog.groups(&contributions, e).len()
                })
                .sum::<usize>()
        })
    });
    // A record to what the aggregator keeps of it (its contributions, its group values, the
    // tenant and id copied out): decoded whole, as before, and viewed in place, as now.
    let metered = |e: &Event| {
        let (contributions, _) = catalog.contributions(e);
        let groups = catalog.groups(&contributions, e);
        (e.tenant.clone(), e.id.clone(), contributions.len() + groups.len())
    };
    g.bench_function("log_decode_and_meter_100", |bench| {
        bench.iter(|| records.iter().map(|r| metered(&Event::decode(black_box(r)).unwrap()).2).sum::<usize>())
    });
    g.bench_function("log_view_and_meter_100", |bench| {
        bench.iter(|| {
            records
                .iter()
                .map(|r| {
                    Event::view(black_box(r), |v| {
                        let (contributions, _) = catalog.contributions_of(v.code, v);
                        let groups = catalog.groups_of(&contributions, v);
                        (v.tenant.to_owned(), v.id.to_owned(), contributions.len() + groups.len()).2
                    })
                    .unwrap()
                })
                .sum::<usize>()
        })
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
    let plain = SqliteStore::open(&dir.path().join("usage.db"), Durability::Normal).unwrap();
    let watched = SqliteStore::open(&dir.path().join("watched.db"), Durability::Normal).unwrap();
    watched.set_allowances(rt.block_on(every_tenant_on_starter(dir.path(), &catalog)));
    for (name, store) in [("sqlite_store_apply_1000", &plain), ("sqlite_store_apply_1000_alerts", &watched)] {
        bench_apply(&mut g, name, store, &catalog, |round| {
            metered(parsed(&format!("s{round}"), 1000, 1000, &catalog), &catalog, None)
        });
    }
    // Tenants counted for the first time: 100 new ones each round, 10 events each (every code
    // twice), so that each of their counters takes a new row and each tenant a slot.
    let fresh = SqliteStore::open(&dir.path().join("fresh.db"), Durability::Normal).unwrap();
    bench_apply(&mut g, "sqlite_store_apply_1000_new_tenants", &fresh, &catalog, |round| {
        metered(parsed(&format!("n{round}"), 1000, 100, &catalog), &catalog, Some(&format!("r{round}-")))
    });
    // Many tenants whose counters exist and are cached, as in a live stream past its first
    // batches: each round is 40,000 events (the aggregator's batch) of 10,000 tenants, 4 each
    // (four of the five codes), so that it rewrites most of their counters' rows. The warm-up
    // gives them their rows.
    let many = SqliteStore::open(&dir.path().join("many.db"), Durability::Normal).unwrap();
    g.throughput(Throughput::Elements(40_000));
    bench_apply(&mut g, "sqlite_store_apply_40000_of_10000_tenants", &many, &catalog, |round| {
        metered(parsed(&format!("m{round}"), 40_000, 10_000, &catalog), &catalog, None)
    });
    // The same in an order of tenants unlike their rows' (a live stream's tenants send when they
    // will): event j of a round is event j × 7,919 mod 40,000 of the ordered round.
    let mixed = SqliteStore::open(&dir.path().join("mixed.db"), Durability::Normal).unwrap();
    bench_apply(&mut g, "sqlite_store_apply_40000_of_10000_tenants_mixed", &mixed, &catalog, |round| {
        let ordered = metered(parsed(&format!("x{round}"), 40_000, 10_000, &catalog), &catalog, None);
        (0..ordered.len()).map(|j| ordered[j * 7_919 % ordered.len()].clone()).collect()
    });
    g.finish();
}

/// Benches `store`'s apply of the batch that `events` makes for each round (numbered from 1, so
/// that each round's ids are new).
fn bench_apply(
    g: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    store: &SqliteStore,
    catalog: &Catalog,
    mut events: impl FnMut(usize) -> Vec<Metered>,
) {
    let mut round = 0;
    g.bench_function(name, |bench| {
        bench.iter_batched(
            || {
                round += 1;
                events(round)
            },
            |metered| store.apply("bench", catalog.meters(), &metered, &Progress::default()).unwrap(),
            BatchSize::LargeInput,
        )
    });
}

/// `events` metered as the aggregator hands them to the store, their tenants' names after
/// `prefix` when given.
fn metered(events: Vec<Event>, catalog: &Catalog, prefix: Option<&str>) -> Vec<Metered> {
    events
        .into_iter()
        .map(|e| {
            let contributions = catalog.contributions(&e).0;
            Metered {
                groups: catalog.groups(&contributions, &e),
                contributions,
                tenant: prefix.map_or(e.tenant.clone(), |p| format!("{p}{}", e.tenant)),
                id: e.id,
                offset: 0,
                time_us: e.time_us,
            }
        })
        .collect()
}

/// The allowances of the 1,000 tenants `body` uses, each subscribed to the sample's Starter plan.
async fn every_tenant_on_starter(dir: &std::path::Path, catalog: &Catalog) -> std::sync::Arc<PlanAllowances> {
    let names: Vec<&str> = catalog.meters().iter().map(|m| m.name.as_str()).collect();
    let book =
        std::sync::Arc::new(PriceBook::parse(meter_rater::pricebook::SAMPLE, &names, &["active_users"]).unwrap());
    let ledger = Ledger::open(&dir.join("billing.db")).unwrap();
    let now = meter_schemas::period::now_us();
    let list = book.for_period(meter_schemas::Period::containing(now)).unwrap().clone();
    let tenants: std::collections::BTreeSet<String> =
        parsed("t", 1000, 1000, catalog).into_iter().map(|e| e.tenant).collect();
    for t in tenants {
        let setup =
            Setup { plan: "starter".into(), cycle: Cycle::Monthly, term_years: 1, auto_renew: true, trial: false };
        ledger.create(&t, setup, now, "bench", &list).await.unwrap();
    }
    let allowances = std::sync::Arc::new(PlanAllowances::new(book));
    allowances.refresh(&ledger, now).await.unwrap();
    allowances
}

/// A new id's lookup in a dedup state of 104 sealed generations and the open one, as the soak's
/// was at 38.5 million ids (sealed at 131,072 ids, then at a 32nd of the sealed ids; their
/// filters some 43 MB), as a reader's mirror does it for every event: through the groups'
/// filters ([`meter_sqlite::dedup::GROUP`] generations each), and on a copy of the same file
/// without its groups, through each generation's filter. The set-up writes the ids first (a
/// minute or two).
fn dedup_lookup(c: &mut Criterion) {
    use meter_sqlite::dedup::{Dedup, Mirror, Settings};
    use meter_sqlite::rusqlite::TransactionBehavior;
    const SEALED: i64 = 104;
    const PER_COMMIT: i64 = 8_192;
    let dir = tempfile::tempdir().unwrap();
    let grouped = dir.path().join("grouped.db");
    let settings = Settings { horizon_us: i64::MAX / 2, ..Settings::new(0) };
    {
        let mut conn = meter_sqlite::open(&grouped, Durability::Normal).unwrap();
        let mut dedup = Dedup::open(&mut conn, "ids", None, settings, 0).unwrap();
        // Time-ordered ids: they go straight into the open generation, which is sealed full.
        let mut ids = 0;
        for commit in 0.. {
            let gens: i64 = conn.query_row("SELECT count(*) FROM ids_gens", [], |r| r.get(0)).unwrap();
            if gens > SEALED {
                break;
            }
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).unwrap();
            dedup.begin(&tx).unwrap();
            {
                let mut batch = dedup.batch(&tx);
                for i in commit * PER_COMMIT..(commit + 1) * PER_COMMIT {
                    batch.insert("t", &format!("{i:012}"), (vec![1; 32], i)).unwrap();
                }
            }
            dedup.commit(tx).unwrap();
            dedup.committed(&mut conn, 1).unwrap();
            ids += PER_COMMIT;
        }
        dedup.settle_groups(&mut conn).unwrap();
        eprintln!("dedup state of {ids} ids set up");
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)").unwrap();
    }
    let each = dir.path().join("each.db");
    std::fs::copy(&grouped, &each).unwrap();
    let conn = meter_sqlite::open(&each, Durability::Normal).unwrap();
    conn.execute_batch("DELETE FROM ids_groups").unwrap();
    drop(conn);
    let mut g = c.benchmark_group("dedup");
    g.sample_size(20);
    g.throughput(Throughput::Elements(1000));
    for (name, path) in [
        ("lookup_new_id_104_sealed_generations_grouped", &grouped),
        ("lookup_new_id_104_sealed_generations_each_filter", &each),
    ] {
        let mut conn = meter_sqlite::open(path, Durability::Normal).unwrap();
        let mut mirror = Mirror::default();
        let mut round = 0u64;
        g.bench_function(name, |bench| {
            bench.iter(|| {
                round += 1;
                let tx = conn.transaction().unwrap();
                mirror.refresh(&tx, "ids").unwrap();
                let mut found = 0;
                for i in 0..1000u64 {
                    // Random-looking ids never written.
                    let id = format!("{:016x}", (round * 1000 + i).wrapping_mul(0x9e37_79b9_7f4a_7c15));
                    found += usize::from(mirror.get(&tx, "t", &id).unwrap().is_some());
                }
                black_box(found)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, ingest_path, storage_path, dedup_lookup);
criterion_main!(benches);
