//! Feeds arbitrary text to the price-book parser and rates what it accepts against arbitrary
//! usage: neither may panic (overflow must be an error).
//! Run with `cargo fuzz run pricebook` (needs cargo-fuzz).
#![no_main]

use libfuzzer_sys::fuzz_target;
use meter_rater::{Cycle, PriceBook, Setup, Subscription, Usage};

const METERS: &[&str] =
    &["work_orders", "work_orders_completed", "agent_invocations", "agent_tokens", "api_calls", "active_users"];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(book) = PriceBook::parse(text, METERS, &["active_users"]) else { return };
    let period = "2026-11".parse().expect("a period");
    let Some(list) = book.for_period(period) else { return };
    for (i, plan) in list.plans.keys().enumerate() {
        for cycle in [Cycle::Monthly, Cycle::Quarterly, Cycle::Annual] {
            let setup = Setup { plan: plan.clone(), cycle, term_years: 1 + i as u32 % 3, auto_renew: true, trial: false };
            let Ok(sub) = Subscription::create("s", "acme", &setup, period.start_us(), "fuzz", list) else { continue };
            let quantity = rust_decimal::Decimal::from(u64::from_le_bytes([data.len() as u8; 8]));
            let usage = Usage { totals: METERS.iter().map(|m| (m.to_string(), quantity)).collect(), watermark_us: None };
            let _ = meter_rater::rate("acme", "s", &sub.entries, period, Some(&usage), list);
        }
    }
});
