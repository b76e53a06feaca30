//! Revenue recognition of a month (ASC 606), per currency, as the month's close books it: what
//! was billed for the month, what of that was collected, what was recognised in it, and the
//! deferred revenue at its start and end.
//!
//! - **Billed**: the month's closed invoices, in all. **Fees** are the lines that pay in advance
//!   for a time (a base fee for its cycle, a proration for the rest of one, the term discount off
//!   them: each line's [`Service`]); **usage** is every other line (overage, seats, minimums,
//!   adjustments, and the volume discount, though it is taken off fees too), recognised in the
//!   month it is billed for.
//! - **Collected**: of the month's invoices, the totals paid at the payment provider by `as_of`;
//!   `None` when none of them is held at a provider (no payment sync).
//! - **Recognised**: usage in the month it is billed for; each fee ratably over its service
//!   period by the microsecond (so by day in whole days), its pieces rounded cumulatively
//!   ([`meter_rater::prorate`]) so that they add up to the line to the cent.
//! - **Deferred** at a month's end: the fees billed up to that month not yet recognised by its
//!   end. A fee's service never starts before the month it is billed for, so
//!   `deferred_end = deferred_start + billed_fees − recognised_fees`, to the cent.

use crate::ledger::outbox::RemoteInvoice;
use meter_rater::{Invoice, Line, LineKind, Service, prorate};
use meter_schemas::Period;
use rust_decimal::Decimal;
use serde::Serialize;
use std::collections::BTreeMap;

/// How many months back a fee billed then can still be recognised: the longest cycle, a year.
pub const LOOKBACK_MONTHS: u32 = 12;

/// One currency's recognition in a month.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Recognition {
    /// The month's invoices, in all.
    pub billed: Decimal,
    /// Of that, fees billed in advance.
    pub billed_fees: Decimal,
    /// Of that, usage.
    pub billed_usage: Decimal,
    /// Of the month's invoices, paid by `as_of`; `None` without a payment provider.
    pub collected: Option<Decimal>,
    /// Recognised in the month: `recognised_fees + recognised_usage`.
    pub recognised: Decimal,
    /// Fees' share of the month.
    pub recognised_fees: Decimal,
    /// The month's usage (= `billed_usage`).
    pub recognised_usage: Decimal,
    /// Fees billed before the month, not recognised by its start.
    pub deferred_start: Decimal,
    /// Fees billed up to the month, not recognised by its end.
    pub deferred_end: Decimal,
    /// Of `billed_fees`, lines of invoices closed before meter recorded what a fee pays for,
    /// taken to pay for the month itself (0 for every invoice closed since).
    pub fees_without_service: Decimal,
}

/// What a fee `line` of `invoice` pays for; `None` when the line is usage. A fee line of an
/// invoice closed before meter recorded what fees pay for has no `service`: it is taken to pay
/// for the invoice's own month (and counted in `fees_without_service`).
fn fee(invoice: &Invoice, line: &Line) -> Option<(Service, bool)> {
    match line.kind {
        LineKind::BaseFee | LineKind::Proration | LineKind::TermDiscount => Some(match line.service {
            Some(s) if s.to_us > s.from_us => (s, true),
            _ => (Service { from_us: invoice.period.start_us(), to_us: invoice.period.end_us() }, false),
        }),
        LineKind::Seats | LineKind::Overage | LineKind::Minimum | LineKind::VolumeDiscount | LineKind::Adjustment => {
            None
        }
    }
}

/// The part of a fee `line` recognised in `from..to`.
fn share(invoice: &Invoice, line: &Line, s: Service, from: i64, to: i64) -> Decimal {
    // The rater's own rounding rule; its only error is an overflow no invoice amount reaches.
    prorate(invoice.currency, line.amount, from, to, s.from_us, s.to_us).unwrap_or(Decimal::ZERO)
}

/// The recognition of `period`, per currency, from `invoices` (every closed invoice of the
/// periods [`LOOKBACK_MONTHS`] before `period` up to it) and `held` (where the payment provider
/// holds the month's invoices). A meter invoice the provider holds twice (one voided, one pushed
/// again) is collected when either was paid.
pub fn recognition(
    invoices: &[Invoice],
    held: &[RemoteInvoice],
    period: Period,
    as_of_us: i64,
) -> BTreeMap<String, Recognition> {
    let mut paid: BTreeMap<&str, bool> = BTreeMap::new();
    for r in held {
        *paid.entry(r.invoice.as_str()).or_default() |= r.paid_us.is_some_and(|at| at <= as_of_us);
    }
    let (start, end) = (period.start_us(), period.end_us());
    let mut out: BTreeMap<String, Recognition> = BTreeMap::new();
    for inv in invoices.iter().filter(|i| i.period <= period) {
        let r = out.entry(inv.currency.code().to_string()).or_default();
        let this_month = inv.period == period;
        if this_month {
            r.billed += inv.total;
            if let Some(paid) = paid.get(inv.id.as_str()) {
                let collected = r.collected.get_or_insert(Decimal::ZERO);
                if *paid {
                    *collected += inv.total;
                }
            }
        }
        for line in &inv.lines {
            match fee(inv, line) {
                Some((s, known)) => {
                    if !known && this_month {
                        r.fees_without_service += line.amount;
                    }
                    if this_month {
                        r.billed_fees += line.amount;
                    } else {
                        r.deferred_start += share(inv, line, s, start, s.to_us.max(start));
                    }
                    r.recognised_fees += share(inv, line, s, start, end);
                    r.deferred_end += share(inv, line, s, end, s.to_us.max(end));
                }
                None if this_month => r.billed_usage += line.amount,
                None => {}
            }
        }
    }
    for r in out.values_mut() {
        r.recognised_usage = r.billed_usage;
        r.recognised = r.recognised_fees + r.recognised_usage;
    }
    out.retain(|_, r| *r != Recognition::default());
    out
}
