//! Two period closes in a row over SUBSCRIPTIONS tenants (default 20,000), each with usage on
//! all six meters in a real SQLite usage store and a subscription in a real ledger: the time of
//! each close, and its size as JSON.
//!
//! `cargo bench -p meter-billing --bench close` (`SUBSCRIPTIONS=100000` for a larger run;
//! `CLOSES=1` closes October only, so that nothing of an earlier close is held).
//! Each close also reports the resident memory at each stage and its own peak (`VmHWM`, reset
//! before it through `/proc/self/clear_refs`), with the allocator `meter` runs with (mimalloc),
//! the ledger's size on disk after it, and the bytes the process wrote during the close (`wchar`
//! of `/proc/self/io`: the ledger's WAL and its checkpoint, and whatever the usage store's
//! checkpointer writes meanwhile).
//!
//! `SETUP=DIR` keeps the set-up (the ledger and the usage store, about 13 minutes at 1,000,000
//! subscriptions) in `DIR/SUBSCRIPTIONS-vN` and starts later runs from a copy of it: each run
//! closes the same files, as they were before any close.

use meter_billing::testing::{proc_io, proc_status};
use meter_billing::{Ledger, Progress as Stage, close};
use meter_rater::pricebook::SAMPLE;
use meter_rater::{Cycle, PriceBook, Setup};
use meter_schemas::{Catalog, Contribution, Period};
use meter_store::{Advance, Metered, Progress, SqliteStore, UsageStore};
use rust_decimal::Decimal;
use std::sync::Arc;
use std::time::Instant;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const DAY: i64 = 86_400_000_000;

/// Names the kept set-up (`SETUP`): raised whenever `set_up` changes what it writes, so that no
/// run starts from a set-up an older bench kept.
const SET_UP_VERSION: u32 = 1;

fn at(period: &str, days: i64) -> i64 {
    period.parse::<Period>().unwrap().start_us() + days * DAY
}

#[allow(clippy::print_stdout)]
#[tokio::main]
async fn main() {
    let n: usize = std::env::var("SUBSCRIPTIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    let dir = tempfile::tempdir().unwrap();
    let kept = std::env::var_os("SETUP").map(|d| std::path::PathBuf::from(d).join(format!("{n}-v{SET_UP_VERSION}")));
    let reuse = kept.as_ref().is_some_and(|k| k.join("done").exists());
    let catalog = Arc::new(Catalog::new(vec![]).unwrap());
    let meters = catalog.meters().to_vec();
    let names: Vec<&str> = meters.iter().map(|m| m.name.as_str()).collect();
    let book = Arc::new(PriceBook::parse(SAMPLE, &names, &["active_users"]).unwrap());
    let open = || {
        let store =
            Arc::new(SqliteStore::open(&dir.path().join("usage.db"), meter_sqlite::Durability::Normal).unwrap());
        (store, Ledger::open(&dir.path().join("billing.db")).unwrap())
    };
    match kept.as_ref() {
        Some(kept) if reuse => {
            copy_files(kept, dir.path());
            println!("set-up: copied from {}", kept.display());
        }
        _ => {
            let (store, ledger) = open();
            set_up(n, &store, &ledger, &book, &meters).await;
            if let Some(kept) = kept.as_ref() {
                // Closed first (the store's checkpointer stopped): nothing writes while copied.
                drop((store, ledger));
                std::fs::create_dir_all(kept).unwrap();
                copy_files(dir.path(), kept);
                std::fs::write(kept.join("done"), "").unwrap();
            }
        }
    }
    let (store, ledger) = open();

    let sources = meter_billing::testing::one_store(store.clone(), book.clone());
    let closes: usize = std::env::var("CLOSES").ok().and_then(|v| v.parse().ok()).unwrap_or(2);
    for (period, now) in [("2026-10", at("2026-11", 9)), ("2026-11", at("2026-12", 9))].into_iter().take(closes) {
        store.advance_watermark("c", &[0], now).unwrap();
        // The peak from here on is the close's own (5: reset VmHWM to the current RSS).
        std::fs::write("/proc/self/clear_refs", "5").unwrap();
        let (before, written) = (proc_status("VmRSS:"), proc_io("wchar:"));
        let t = Instant::now();
        // When the totals began to be read, when rating began and when it ended, with the memory
        // resident then.
        let marks = std::sync::Mutex::new(Vec::new());
        let mark = |p: Stage| match p {
            Stage::Totals => marks.lock().unwrap().push(("totals", t.elapsed(), proc_status("VmRSS:"))),
            // The first 10,000 rated: the totals, the freeze and the subscriptions' list are done.
            Stage::Rating { done: 10_000, of: 0 } => {
                marks.lock().unwrap().push(("10,000 rated", t.elapsed(), proc_status("VmRSS:")))
            }
            Stage::Rating { done, of } if done == of => {
                marks.lock().unwrap().push(("rated", t.elapsed(), proc_status("VmRSS:")))
            }
            _ => {}
        };
        let closed = close(&ledger, period.parse().unwrap(), &sources, now, &mark).await.unwrap();
        let took = t.elapsed();
        let written = proc_io("wchar:") - written;
        let (after, peak) = (proc_status("VmRSS:"), proc_status("VmHWM:"));
        let lines: usize = closed.invoices.iter().map(|i| i.lines.len()).sum();
        let bytes = serde_json::to_vec(&closed).unwrap().len();
        println!(
            "close {period}: {} invoices, {lines} lines, {} report rows, {:.1} MB as JSON, in {:.2} s",
            closed.invoices.len(),
            closed.report.len(),
            bytes as f64 / 1e6,
            took.as_secs_f64()
        );
        println!("  RSS before {before}, after {after}, peak of the close {peak}");
        let on_disk: u64 = ["billing.db", "billing.db-wal"]
            .iter()
            .filter_map(|f| std::fs::metadata(dir.path().join(f)).ok())
            .map(|m| m.len())
            .sum();
        println!(
            "  the ledger on disk (file and WAL) {:.1} MB; the close wrote {:.1} MB",
            on_disk as f64 / 1e6,
            written as f64 / 1e6
        );
        for (stage, at, rss) in marks.lock().unwrap().iter() {
            println!("  {stage} at {:.2} s, RSS {rss}", at.as_secs_f64());
        }
    }
}

/// The usage store and the ledger, with their WAL files where there are some, from `from` to
/// `to`.
fn copy_files(from: &std::path::Path, to: &std::path::Path) {
    for f in ["usage.db", "usage.db-wal", "billing.db", "billing.db-wal"] {
        if from.join(f).exists() {
            std::fs::copy(from.join(f), to.join(f)).unwrap();
        }
    }
}

/// `n` subscriptions in the ledger, and the usage of October and November on all six meters in
/// the store (consumer `c`, one partition).
#[allow(clippy::print_stdout)]
async fn set_up(n: usize, store: &SqliteStore, ledger: &Ledger, book: &PriceBook, meters: &[meter_schemas::MeterDef]) {
    store.checkpoint("c").unwrap();

    let t = Instant::now();
    let plans = [("starter", Cycle::Monthly), ("professional", Cycle::Quarterly), ("enterprise", Cycle::Annual)];
    let list = book.for_period("2026-09".parse().unwrap()).unwrap();
    for i in 0..n {
        let (plan, cycle) = plans[i % 3];
        let setup = Setup { plan: plan.into(), cycle, term_years: 1, auto_renew: true, trial: false };
        ledger.create(&format!("tenant-{i:07}"), setup, at("2026-09", (i % 28) as i64), "bench", list).await.unwrap();
    }
    println!("set-up: {n} subscriptions in {:.2} s", t.elapsed().as_secs_f64());

    let t = Instant::now();
    let mut offset = 0u64;
    for period in ["2026-10", "2026-11"] {
        let mut batch = Vec::new();
        for i in 0..n {
            for (m, def) in meters.iter().enumerate() {
                let c = match def.aggregation {
                    meter_schemas::Aggregation::Sum => Contribution::Sum(Decimal::from((i * 7919 + m) % 3_000_000)),
                    meter_schemas::Aggregation::UniqueCount => Contribution::Unique(format!("u{}", i % 50)),
                    _ => Contribution::Count,
                };
                batch.push(Metered {
                    tenant: format!("tenant-{i:07}"),
                    id: format!("{period}-{i}-{m}"),
                    offset: offset + batch.len() as u64,
                    time_us: at(period, (i % 28) as i64),
                    contributions: vec![(m, c)],
                    groups: vec![],
                });
            }
        }
        for chunk in batch.chunks(10_000) {
            let (from, to) = (chunk[0].offset, chunk[chunk.len() - 1].offset + 1);
            let progress = Progress { partitions: vec![Advance { partition: 0, from, to }], watermark_us: None };
            store.apply("c", meters, chunk, &progress).unwrap();
        }
        offset += batch.len() as u64;
    }
    println!("set-up: {offset} events counted in {:.2} s", t.elapsed().as_secs_f64());
}
