//! The census (the accepted figure of a close) over a real SQLite log of TENANTS tenants sending
//! PER events each (defaults 100,000 and 10), each tenant all five built-in codes in turn as
//! `meter loadgen` sends them, every event inside October 2026 but one in twenty in November:
//! the census's time and the process's memory.
//!
//! Two steps, so that the census is measured in a process of its own:
//! - `MODE=build LOG_DIR=DIR cargo bench -p meter-billing --bench census` writes the log once;
//! - `MODE=read LOG_DIR=DIR cargo bench -p meter-billing --bench census` takes the census of
//!   October and prints its time, its totals' checksum (the same for every build that counts
//!   alike), the resident memory after opening the log and the peak (`VmHWM`) at the end, with
//!   the allocator `meter` itself runs with (mimalloc).

use meter_eventlog::{EventLog, SqliteLog};
use meter_schemas::{Catalog, Period};
use std::path::PathBuf;
use std::time::Instant;

#[path = "common/events.rs"]
mod events;
use events::event;

const PARTITIONS: u32 = 4;

/// The allocator `meter` runs with, so that the memory measured is the server's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[allow(clippy::print_stdout)]
#[tokio::main]
async fn main() {
    let var = |k: &str, d: usize| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
    let (tenants, per) = (var("TENANTS", 100_000), var("PER", 10));
    let dir = PathBuf::from(std::env::var("LOG_DIR").expect("LOG_DIR: where the log is kept"));
    let october: Period = "2026-10".parse().unwrap();
    let path = dir.join("log.db");
    match std::env::var("MODE").as_deref() {
        Ok("build") => {
            std::fs::create_dir_all(&dir).unwrap();
            let log = SqliteLog::open(&path, PARTITIONS, meter_sqlite::Durability::Normal).unwrap();
            let t = Instant::now();
            let mut batch = Vec::with_capacity(10_000);
            for k in 0..per {
                for tenant in 0..tenants {
                    batch.push(event(tenant, k, per, october));
                    if batch.len() == 10_000 {
                        log.append(&batch).await.unwrap();
                        batch.clear();
                    }
                }
            }
            if !batch.is_empty() {
                log.append(&batch).await.unwrap();
            }
            println!("built: {} events of {tenants} tenants in {:.1} s", tenants * per, t.elapsed().as_secs_f64());
        }
        Ok("read") => {
            let log = SqliteLog::open(&path, PARTITIONS, meter_sqlite::Durability::Normal).unwrap();
            let catalog = Catalog::new(vec![]).unwrap();
            let opened = meter_billing::testing::proc_status("VmRSS:");
            let t = Instant::now();
            let reader = log.reader_in("census-bench").unwrap();
            let totals = tokio::task::block_in_place(|| {
                meter_billing::census::census(reader, &catalog, october, PARTITIONS, &dir, &|_| {})?.rest()
            })
            .unwrap();
            let secs = t.elapsed().as_secs_f64();
            let counted: rust_decimal::Decimal = totals.values().flat_map(|m| m.values()).filter_map(|t| t.value).sum();
            println!(
                "census: {} events of {tenants} tenants in {secs:.2} s ({:.0} events/s); {} tenants counted, \
                 values summing to {counted}; RSS after opening the log {opened}, peak {}",
                tenants * per,
                (tenants * per) as f64 / secs,
                totals.len(),
                meter_billing::testing::proc_status("VmHWM:")
            );
        }
        _ => panic!("MODE=build or MODE=read"),
    }
}
