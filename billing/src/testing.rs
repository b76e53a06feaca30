//! Helpers for tests and benchmarks (feature `testing`).

use crate::Sources;
use meter_rater::PriceBook;
use meter_schemas::Catalog;
use meter_store::UsageStore;
use std::sync::Arc;

/// The sample price book (`rater/pricebook.toml`) for the default meters.
pub fn sample_book() -> PriceBook {
    let catalog = Catalog::new(vec![]).expect("the default meters are valid");
    let names: Vec<&str> = catalog.meters().iter().map(|m| m.name.as_str()).collect();
    PriceBook::parse(meter_rater::pricebook::SAMPLE, &names, &["active_users"]).expect("the sample price book parses")
}

/// Sources on one store that is both the live counters and the history (consumer `c`, one
/// partition), with no log (no census), the default meters and a 7-day lateness window.
pub fn one_store(store: Arc<dyn UsageStore>, book: Arc<PriceBook>) -> Sources {
    Sources {
        live: store.clone(),
        history: store,
        history_consumer: "c".into(),
        partitions: 1,
        log: None,
        census_group: "meter-close".into(),
        scratch: std::env::temp_dir(),
        catalog: Arc::new(Catalog::new(vec![]).expect("the default meters are valid")),
        book,
        lateness_us: 7 * 86_400_000_000,
        tenants_a_part: crate::close::TENANTS_A_PART,
    }
}

/// A field of this process's `/proc/self/status` (`VmRSS:`, `VmHWM:`), as written there; empty
/// where there is none (benchmarks report memory with it).
pub fn proc_status(field: &str) -> String {
    proc_field("/proc/self/status", field)
}

/// A counter of this process's `/proc/self/io` (`wchar:`, the bytes it passed to `write` and
/// `pwrite`); 0 where there is none (benchmarks report what a stage wrote with it).
pub fn proc_io(field: &str) -> u64 {
    proc_field("/proc/self/io", field).parse().unwrap_or(0)
}

fn proc_field(file: &str, field: &str) -> String {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .map(|l| l[field.len()..].trim().to_string())
        .unwrap_or_default()
}
