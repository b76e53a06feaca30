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
//!
//! `PER=N` (issue 16's close with its census) sets up another workload: a real SQLite event log
//! (one partition) of N events a tenant, `meter loadgen`'s five codes in turn, every event in
//! October but one in twenty in November (`benches/common/events.rs`, the census bench's), and the
//! usage store counting exactly those events; each close then takes the census of the log too, so
//! that its report compares all four figures. `CENSUS=0` closes the same set-up without the census.
//! The set-up is kept in `DIR/SUBSCRIPTIONS-perN-vN`.
//!
//! `KEEP_CLOSED=DIR` keeps the ledger once closed in `DIR`; `LEDGER=DIR EXPORT=paged` (or
//! `whole`) then exports October's invoices and report from it as CSV, in a process of its own,
//! as the API answers them (a page of rows at a time) or as it answered them before (the close
//! read whole). `LEDGER=DIR SEARCH=paged` (or `whole`) times October's invoice search the same way.

#[path = "common/events.rs"]
mod events;

use meter_billing::export::{PAGE, Page, Pages, Rows};
use meter_billing::testing::{proc_io, proc_status};
use meter_billing::{Ledger, Progress as Stage, close};
use meter_eventlog::{EventLog, SqliteLog};
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

/// Names the kept set-up (`SETUP`): raised whenever `set_up`, `count_usage`, `count_log` or the
/// events of `common/events.rs` change what they write, so that no run starts from a set-up an
/// older bench kept.
const SET_UP_VERSION: u32 = 1;

fn at(period: &str, days: i64) -> i64 {
    period.parse::<Period>().unwrap().start_us() + days * DAY
}

#[allow(clippy::print_stdout)]
#[tokio::main]
async fn main() {
    if let (Some(dir), Ok(mode)) = (std::env::var_os("LEDGER"), std::env::var("EXPORT")) {
        return exports(std::path::Path::new(&dir), &mode).await;
    }
    if let (Some(dir), Ok(mode)) = (std::env::var_os("LEDGER"), std::env::var("SEARCH")) {
        return search(std::path::Path::new(&dir), &mode).await;
    }
    let var = |k: &str, d: usize| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
    let (n, per) = (var("SUBSCRIPTIONS", 20_000), var("PER", 0));
    let census = per > 0 && var("CENSUS", 1) == 1;
    let dir = tempfile::tempdir().unwrap();
    let name = match per {
        0 => format!("{n}-v{SET_UP_VERSION}"),
        per => format!("{n}-per{per}-v{SET_UP_VERSION}"),
    };
    let kept = std::env::var_os("SETUP").map(|d| std::path::PathBuf::from(d).join(name));
    let reuse = kept.as_ref().is_some_and(|k| k.join("done").exists());
    let catalog = Arc::new(Catalog::new(vec![]).unwrap());
    let meters = catalog.meters().to_vec();
    let names: Vec<&str> = meters.iter().map(|m| m.name.as_str()).collect();
    let book = Arc::new(PriceBook::parse(SAMPLE, &names, &["active_users"]).unwrap());
    let open = || {
        let store =
            Arc::new(SqliteStore::open(&dir.path().join("usage.db"), meter_sqlite::Durability::Normal).unwrap());
        let log = (per > 0).then(|| {
            Arc::new(SqliteLog::open(&dir.path().join("log.db"), 1, meter_sqlite::Durability::Normal).unwrap())
        });
        (store, Ledger::open(&dir.path().join("billing.db")).unwrap(), log)
    };
    match kept.as_ref() {
        Some(kept) if reuse => {
            copy_files(kept, dir.path());
            println!("set-up: copied from {}", kept.display());
        }
        _ => {
            let (store, ledger, log) = open();
            set_up(n, &store, &ledger, &book).await;
            match log.as_ref() {
                Some(log) => count_log(n, per, &store, log, &catalog).await,
                None => count_usage(n, &store, &meters),
            }
            if let Some(kept) = kept.as_ref() {
                // Closed first (the store's checkpointer stopped): nothing writes while copied.
                drop((store, ledger, log));
                std::fs::create_dir_all(kept).unwrap();
                copy_files(dir.path(), kept);
                std::fs::write(kept.join("done"), "").unwrap();
            }
        }
    }
    let (store, ledger, log) = open();

    let mut sources = meter_billing::testing::one_store(store.clone(), book.clone());
    if census {
        sources.log = log.map(|l| l as Arc<dyn EventLog>);
        sources.scratch = dir.path().to_path_buf();
    }
    println!("the close takes the census of the log: {census}");
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
            Stage::Census { read: 0 } => marks.lock().unwrap().push(("census", t.elapsed(), proc_status("VmRSS:"))),
            Stage::Totals => marks.lock().unwrap().push(("totals", t.elapsed(), proc_status("VmRSS:"))),
            // The first part rated (5,000 tenants): the totals, the freeze and the subscriptions'
            // list are done.
            Stage::Rating { of: 0, .. } if !marks.lock().unwrap().iter().any(|m| m.0 == "first part") => {
                marks.lock().unwrap().push(("first part", t.elapsed(), proc_status("VmRSS:")))
            }
            // Every part rated (each recorded as it comes: the last is still being written).
            Stage::Rating { done, of } if done == of => {
                marks.lock().unwrap().push(("rated", t.elapsed(), proc_status("VmRSS:")))
            }
            _ => {}
        };
        let closed = close(&ledger, period.parse().unwrap(), &sources, now, &mark).await.unwrap();
        let took = t.elapsed();
        let written = proc_io("wchar:") - written;
        let (after, peak) = (proc_status("VmRSS:"), proc_status("VmHWM:"));
        // Read back a page at a time, after the close and its peak.
        let (mut lines, mut bytes, mut rows) = (0, 0, 0);
        for what in [Rows::Invoices, Rows::Report] {
            let mut pages = Pages::open(&ledger, closed.header.period, what, PAGE).await.unwrap().unwrap();
            while let Some(page) = pages.next().await.unwrap() {
                bytes += serde_json::to_vec(&page).unwrap().len();
                match page {
                    Page::Invoices(p) => lines += p.iter().map(|i| i.lines.len()).sum::<usize>(),
                    Page::Report(p) => rows += p.len(),
                }
            }
        }
        println!(
            "close {period}: {} invoices, {lines} lines, {rows} report rows ({} differ), {:.1} MB as JSON, in {:.2} s",
            closed.invoices,
            closed.differences,
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
    if let Some(keep) = std::env::var_os("KEEP_CLOSED").map(std::path::PathBuf::from) {
        drop(ledger);
        std::fs::create_dir_all(&keep).unwrap();
        for f in ["billing.db", "billing.db-wal"] {
            if dir.path().join(f).exists() {
                std::fs::copy(dir.path().join(f), keep.join(f)).unwrap();
            }
        }
        println!("the ledger, closed, kept in {}", keep.display());
    }
}

/// October's invoices and report as CSV from the ledger in `dir` (`KEEP_CLOSED`), in this process
/// alone: as the API answers them now (`paged`: a page of rows at a time, into a sink), or as it
/// answered them before (`whole`: the close read whole for each, each list written whole). The
/// time and bytes of each, and its peak memory over the RSS before it.
#[allow(clippy::print_stdout)]
async fn exports(dir: &std::path::Path, mode: &str) {
    use meter_billing::export::{Export, Format, Page, Rows, whole};
    let ledger = Ledger::open(&dir.join("billing.db")).unwrap();
    let period: Period = "2026-10".parse().unwrap();
    for rows in [Rows::Invoices, Rows::Report] {
        std::fs::write("/proc/self/clear_refs", "5").unwrap();
        let (before, t) = (proc_status("VmRSS:"), Instant::now());
        let bytes = match mode {
            "paged" => {
                let mut export = Export::open(&ledger, period, rows, Format::Csv).await.unwrap().unwrap();
                let mut bytes = 0;
                while let Some(piece) = export.next().await.unwrap() {
                    bytes += piece.len();
                }
                bytes
            }
            "whole" => {
                let close = ledger.close_of(period).await.unwrap().unwrap();
                whole(&Page::of(close, rows, 0), Format::Csv).unwrap().len()
            }
            _ => panic!("EXPORT=paged or EXPORT=whole"),
        };
        println!(
            "export of the {rows:?} as CSV, {mode}: {bytes} bytes in {:.2} s; RSS before {before}, peak {}",
            t.elapsed().as_secs_f64(),
            proc_status("VmHWM:")
        );
    }
}

/// October's invoice search from the ledger in `dir` (`KEEP_CLOSED`), in this process alone, for
/// every invoice with lines (the console's search before anything is typed) and for one tenant's
/// name: as the API answers it now (`paged`: the close's invoices a page at a time) or as it did
/// before (`whole`: the period's invoices read whole). The time, the matches and the peak memory.
#[allow(clippy::print_stdout)]
async fn search(dir: &std::path::Path, mode: &str) {
    use meter_billing::search::{Query, of, search};
    let ledger = Ledger::open(&dir.join("billing.db")).unwrap();
    let period: Period = "2026-10".parse().unwrap();
    for text in ["", "tenant-0123456"] {
        let q = Query { text: text.into(), limit: 50, ..Query::default() };
        std::fs::write("/proc/self/clear_refs", "5").unwrap();
        let (before, t) = (proc_status("VmRSS:"), Instant::now());
        let found = match mode {
            "paged" => of(&ledger, period, &q).await.unwrap().unwrap(),
            "whole" => search(&ledger.invoices_between(period, period).await.unwrap(), &q),
            _ => panic!("SEARCH=paged or SEARCH=whole"),
        };
        println!(
            "search {text:?}, {mode}: {} matched in {:.2} s; RSS before {before}, peak {}",
            found.matched,
            t.elapsed().as_secs_f64(),
            proc_status("VmHWM:")
        );
    }
}

/// The usage store and the ledger, with their WAL files where there are some, from `from` to
/// `to`.
fn copy_files(from: &std::path::Path, to: &std::path::Path) {
    for f in ["usage.db", "usage.db-wal", "billing.db", "billing.db-wal", "log.db", "log.db-wal"] {
        if from.join(f).exists() {
            std::fs::copy(from.join(f), to.join(f)).unwrap();
        }
    }
}

/// `n` subscriptions in the ledger.
#[allow(clippy::print_stdout)]
async fn set_up(n: usize, store: &SqliteStore, ledger: &Ledger, book: &PriceBook) {
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
}

/// The usage of October and November on all six meters in the store (consumer `c`, one
/// partition), without a log.
#[allow(clippy::print_stdout)]
fn count_usage(n: usize, store: &SqliteStore, meters: &[meter_schemas::MeterDef]) {
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

/// `per` events a tenant appended to `log` (one partition), and the same events counted in the
/// store as the aggregator counts them (consumer `c`, the log's offsets).
#[allow(clippy::print_stdout)]
async fn count_log(n: usize, per: usize, store: &SqliteStore, log: &SqliteLog, catalog: &Catalog) {
    let t = Instant::now();
    let october: Period = "2026-10".parse().unwrap();
    let mut offset = 0u64;
    let mut batch = Vec::with_capacity(10_000);
    for k in 0..per {
        for tenant in 0..n {
            batch.push(events::event(tenant, k, per, october));
            if batch.len() == 10_000 || (k + 1 == per && tenant + 1 == n) {
                log.append(&batch).await.unwrap();
                let metered: Vec<Metered> = batch
                    .drain(..)
                    .enumerate()
                    .map(|(j, e)| {
                        let contributions = catalog.contributions(&e).0;
                        Metered {
                            groups: catalog.groups(&contributions, &e),
                            contributions,
                            tenant: e.tenant,
                            id: e.id,
                            offset: offset + j as u64,
                            time_us: e.time_us,
                        }
                    })
                    .collect();
                let to = offset + metered.len() as u64;
                let progress =
                    Progress { partitions: vec![Advance { partition: 0, from: offset, to }], watermark_us: None };
                store.apply("c", catalog.meters(), &metered, &progress).unwrap();
                offset = to;
            }
        }
    }
    println!("set-up: {offset} events in the log and counted in {:.2} s", t.elapsed().as_secs_f64());
}
