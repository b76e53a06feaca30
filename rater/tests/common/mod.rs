//! Helpers shared by the rater's tests.
#![allow(dead_code)]

use meter_rater::pricebook::SAMPLE;
use meter_rater::{Command, Cycle, Invoice, LineKind, PriceBook, PriceList, Setup, Subscription, Usage};
use meter_schemas::Period;
use rust_decimal::Decimal;
use std::sync::OnceLock;

/// The configured meters of the default catalog.
pub const METERS: &[&str] =
    &["work_orders", "work_orders_completed", "agent_invocations", "agent_tokens", "api_calls", "active_users"];

/// The sample price book's list for 2026.
pub fn list() -> &'static PriceList {
    static BOOK: OnceLock<PriceBook> = OnceLock::new();
    BOOK.get_or_init(|| PriceBook::parse(SAMPLE, METERS, &["active_users"]).unwrap())
        .for_period("2026-11".parse().unwrap())
        .unwrap()
}

/// Microseconds of an RFC 3339 instant.
pub fn at(rfc3339: &str) -> i64 {
    let t = time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339).unwrap();
    (t.unix_timestamp_nanos() / 1000) as i64
}

/// A decimal.
pub fn d(s: &str) -> Decimal {
    s.parse().unwrap()
}

/// A period.
pub fn p(s: &str) -> Period {
    s.parse().unwrap()
}

/// Usage from `(meter, total)` pairs.
pub fn usage(pairs: &[(&str, &str)]) -> Usage {
    Usage {
        totals: pairs.iter().map(|(m, v)| (m.to_string(), d(v))).collect(),
        watermark_us: Some(at("2026-12-08T00:00:00Z")),
    }
}

/// A subscription for `tenant` created at `when`.
pub fn subscribe(tenant: &str, plan: &str, cycle: Cycle, term_years: u32, trial: bool, when: &str) -> Subscription {
    let setup = Setup { plan: plan.into(), cycle, term_years, auto_renew: true, trial };
    Subscription::create(&format!("sub_{tenant}"), tenant, &setup, at(when), "key_admin", list()).unwrap()
}

/// Applies a command at `when`, which must be allowed.
pub fn act(s: &mut Subscription, command: Command, when: &str) {
    s.apply(&command, at(when), "key_admin", list()).unwrap();
}

/// Rates `s` for `period` after bringing it to the period's end.
pub fn rate(s: &mut Subscription, period: &str, u: &Usage) -> Invoice {
    let period = p(period);
    s.advance(period.end_us() - 1);
    meter_rater::rate(&s.tenant, &s.id, &s.entries, period, Some(u), list()).unwrap()
}

/// `(kind, amount)` of every line, amounts as text.
pub fn amounts(inv: &Invoice) -> Vec<(LineKind, String)> {
    inv.lines.iter().map(|l| (l.kind, l.amount.to_string())).collect()
}

/// The amount of the only line of `kind` (for `meter`, when given).
pub fn line(inv: &Invoice, kind: LineKind, meter: Option<&str>) -> String {
    let found: Vec<_> =
        inv.lines.iter().filter(|l| l.kind == kind && (meter.is_none() || l.meter.as_deref() == meter)).collect();
    assert_eq!(found.len(), 1, "one {kind:?} line for {meter:?} in {:#?}", inv.lines);
    found[0].amount.to_string()
}
