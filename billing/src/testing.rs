//! Helpers for tests and benchmarks (feature `testing`).

use crate::Sources;
use meter_rater::PriceBook;
use meter_schemas::Catalog;
use meter_store::UsageStore;
use std::sync::Arc;

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
        catalog: Arc::new(Catalog::new(vec![]).expect("the default meters are valid")),
        book,
        lateness_us: 7 * 86_400_000_000,
    }
}
