//! Recurring revenue: what a subscription's base fee comes to per month at an instant (its
//! share of MRR), net of the discount off it, as the rater bills it. Usage is not recurring and
//! is left out.

use crate::money::Percent;
use crate::pricebook::{Cycle, PriceList};
use crate::subscription::{Change, State, Subscription};
use rust_decimal::Decimal;

/// The discount off `tenant`'s base fee of `plan` on `cycle`, committed for `term_years`: a
/// deal's negotiated one, else the multi-year one (two years or more), else annual prepay;
/// none when it is 0%. The one rule the rater and revenue share.
pub fn base_fee_discount(
    list: &PriceList,
    tenant: &str,
    plan: &str,
    cycle: Cycle,
    term_years: u32,
) -> Option<(String, Percent)> {
    let d = &list.discounts;
    let found = if let Some(p) = list.terms(tenant, plan).and_then(|t| t.deal).and_then(|d| d.discount) {
        Some(("negotiated discount".to_string(), p))
    } else if term_years >= 2 {
        Some((format!("multi-year discount ({term_years} years)"), d.multi_year))
    } else if cycle == Cycle::Annual {
        Some(("annual prepay discount".to_string(), d.annual_prepay))
    } else {
        None
    };
    found.filter(|(_, p)| !p.is_zero())
}

/// The state, plan and cycle of `sub` at `at_us`, and whether it pays a base fee then (active
/// or past due, or cancelled while the cycle it paid for runs); `None` before it started.
pub fn standing_at(sub: &Subscription, at_us: i64) -> Option<(State, String, Cycle, bool)> {
    let mut ahead = sub.clone();
    if ahead.entries.last().is_some_and(|e| e.at_us <= at_us) {
        ahead.advance(at_us);
    }
    let upto: Vec<_> = ahead.entries.iter().filter(|e| e.at_us <= at_us).collect();
    let last = upto.last()?;
    let pays = match last.state {
        State::Active | State::PastDue => true,
        // Cancelled: it runs to the end of what was paid, unless that was a trial or a
        // suspension (nothing paid runs).
        State::Cancelled => {
            let cancelled = upto.iter().rposition(|e| matches!(e.change, Change::Cancelled { .. }));
            cancelled
                .and_then(|i| i.checked_sub(1))
                .is_some_and(|i| matches!(upto[i].state, State::Active | State::PastDue))
        }
        State::Trial | State::Suspended | State::Expired => false,
    };
    Some((last.state, last.plan.clone(), last.cycle, pays))
}

/// `sub`'s base fee per month at `at_us` under `list`, net of its discount: its share of MRR
/// (a quarterly fee over 3 months, an annual one over 12); 0 when it pays none then. Exact, not
/// rounded.
pub fn monthly_fee(sub: &Subscription, at_us: i64, list: &PriceList) -> Decimal {
    let Some((_, plan, cycle, true)) = standing_at(sub, at_us) else { return Decimal::ZERO };
    let Some(fee) = list.terms(&sub.tenant, &plan).and_then(|t| t.fee(cycle)) else { return Decimal::ZERO };
    let net = match base_fee_discount(list, &sub.tenant, &plan, cycle, sub.term_years) {
        Some((_, percent)) => fee - fee * percent.fraction(),
        None => fee,
    };
    net / Decimal::from(cycle.months())
}
