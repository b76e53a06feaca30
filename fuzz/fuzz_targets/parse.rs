//! Feeds arbitrary bytes to the envelope parser in every format: it must never panic, and what it
//! accepts must survive the log encoding unchanged and be meterable.
//! Run with `cargo fuzz run parse` (needs cargo-fuzz).
#![no_main]

use libfuzzer_sys::fuzz_target;
use meter_schemas::envelope::{Context, Format, parse};
use meter_schemas::{Catalog, Event, Limits, TenantScope};
use std::sync::OnceLock;

fuzz_target!(|data: &[u8]| {
    static CATALOG: OnceLock<Catalog> = OnceLock::new();
    let catalog = CATALOG.get_or_init(|| Catalog::new(vec![]).expect("default meters are valid"));
    let limits = Limits::default();
    for format in [Format::Json, Format::LagoBatch, Format::CloudEvent, Format::CloudEventBatch, Format::Ndjson] {
        for scope in [TenantScope::Any, TenantScope::Only("acme".into())] {
            let cx = Context { limits: &limits, catalog, scope: &scope, now_us: 1_794_744_000_000_000 };
            if let Ok(parsed) = parse(format, data, &cx) {
                for e in parsed.events {
                    assert_eq!(Event::decode(&e.encode()).expect("decodes"), e);
                    let _ = catalog.contributions(&e);
                }
            }
        }
    }
});
