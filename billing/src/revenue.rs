//! Revenue of a month as finance reads it, per currency: MRR at the month's start (the instant
//! before it) and end (its last instant), ARR (12 × MRR), and the month's movements, tenant by
//! tenant: **new** (no MRR at the start, never any before), **reactivation** (none at the start,
//! some before), **expansion** and **contraction** (more or less than at the start), **churn**
//! (some at the start, none at the end); net new is their sum, the end's MRR less the start's.
//!
//! MRR is subscription fees alone, net of the discount off them, spread over the cycle's months
//! ([`meter_rater::recurring`]), each tenant's rounded to the cent: no usage, no prorations. A
//! cancelled subscription counts until the end of what it paid for; a trial, a suspended or an
//! expired one counts nothing.
//!
//! Beside them, per currency, what the month billed, collected and recognised, and the deferred
//! revenue at its start and end ([`crate::recognition`]).

use meter_rater::recurring::{monthly_fee, standing_at};
use meter_rater::{PriceBook, Subscription};
use meter_schemas::Period;
use rust_decimal::Decimal;
use serde::Serialize;
use std::collections::BTreeMap;

/// A month's movements of MRR.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Movements {
    /// Tenants with MRR for the first time.
    pub new: Decimal,
    /// Tenants with more than at the start: the increase.
    pub expansion: Decimal,
    /// Tenants with less, but some: the decrease.
    pub contraction: Decimal,
    /// Tenants with none left: what they had.
    pub churn: Decimal,
    /// Tenants with MRR again after a time without.
    pub reactivation: Decimal,
    /// new + expansion + reactivation − contraction − churn.
    pub net_new: Decimal,
}

/// One currency's revenue of the month.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct InCurrency {
    /// MRR the instant before the month.
    pub mrr_start: Decimal,
    /// MRR at the month's last instant.
    pub mrr_end: Decimal,
    /// 12 × `mrr_end`.
    pub arr_end: Decimal,
    /// How MRR moved.
    pub movements: Movements,
    /// Tenants paying a fee at the start.
    pub paying_start: usize,
    /// At the end.
    pub paying_end: usize,
    /// What was billed, collected and recognised, and deferred revenue ([`crate::recognition`]).
    pub recognition: crate::recognition::Recognition,
}

/// A month's revenue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Revenue {
    /// `YYYY-MM`.
    pub period: String,
    /// By currency (no conversion).
    pub currencies: BTreeMap<String, InCurrency>,
    /// Subscriptions by state at the month's end (those started by then).
    pub by_state: BTreeMap<String, usize>,
}

/// `subs`' revenue of `period`, priced with the list in effect at each instant of `book`.
pub fn revenue(subs: &[Subscription], book: &PriceBook, period: Period) -> Revenue {
    let (start, end) = (period.start_us() - 1, period.end_us() - 1);
    let fee = |s: &Subscription, at: i64| -> Option<(String, Decimal)> {
        let list = book.for_period(Period::containing(at))?;
        Some((list.currency.code().to_string(), monthly_fee(s, at, list)))
    };
    // (currency, tenant) → (at the start, at the end, some before the start).
    let mut tenants: BTreeMap<(String, String), (Decimal, Decimal, bool)> = BTreeMap::new();
    let mut by_state: BTreeMap<String, usize> = BTreeMap::new();
    for s in subs {
        if let Some((state, ..)) = standing_at(s, end) {
            *by_state.entry(state.to_string()).or_default() += 1;
        }
        // Paying at any instant before the month: the changes time brought count too (a trial
        // that converted, then ran out, is in no written entry).
        let mut history = s.clone();
        if history.entries.last().is_some_and(|e| e.at_us <= start) {
            history.advance(start);
        }
        let before = history
            .entries
            .iter()
            .filter(|e| e.at_us < start)
            .any(|e| fee(&history, e.at_us).is_some_and(|(_, f)| !f.is_zero()));
        for (at, slot) in [(start, 0), (end, 1)] {
            let Some((currency, f)) = fee(s, at) else { continue };
            let t = tenants.entry((currency, s.tenant.clone())).or_default();
            match slot {
                0 => t.0 += f,
                _ => t.1 += f,
            }
            t.2 |= before;
        }
    }
    let mut currencies: BTreeMap<String, InCurrency> = BTreeMap::new();
    for ((currency, _), (a, b, before)) in tenants {
        // Each tenant's MRR in cents, so that every total and movement adds up to the cent.
        let (a, b) = (a.round_dp(2), b.round_dp(2));
        let c = currencies.entry(currency).or_default();
        c.mrr_start += a;
        c.mrr_end += b;
        c.paying_start += usize::from(!a.is_zero());
        c.paying_end += usize::from(!b.is_zero());
        let m = &mut c.movements;
        match (a.is_zero(), b.is_zero()) {
            (true, false) if before => m.reactivation += b,
            (true, false) => m.new += b,
            (false, true) => m.churn += a,
            (false, false) if b > a => m.expansion += b - a,
            (false, false) if b < a => m.contraction += a - b,
            _ => {}
        }
    }
    for c in currencies.values_mut() {
        let m = &mut c.movements;
        m.net_new = m.new + m.expansion + m.reactivation - m.contraction - m.churn;
        c.arr_end = c.mrr_end * Decimal::from(12);
    }
    Revenue { period: period.to_string(), currencies, by_state }
}

impl Revenue {
    /// Adds each currency's recognition of the month.
    pub fn with_recognition(mut self, recognition: BTreeMap<String, crate::recognition::Recognition>) -> Self {
        for (currency, r) in recognition {
            self.currencies.entry(currency).or_default().recognition = r;
        }
        self
    }
}

impl Revenue {
    /// As CSV: one row per currency.
    pub fn csv(&self) -> String {
        let mut w = csv::Writer::from_writer(Vec::new());
        let header = [
            "period",
            "currency",
            "mrr_start",
            "mrr_end",
            "arr_end",
            "new",
            "expansion",
            "contraction",
            "churn",
            "reactivation",
            "net_new",
            "paying_start",
            "paying_end",
            "billed",
            "billed_fees",
            "billed_usage",
            "collected",
            "recognised",
            "recognised_fees",
            "recognised_usage",
            "deferred_start",
            "deferred_end",
            "fees_without_service",
        ];
        w.write_record(header).expect("writing to memory");
        for (currency, c) in &self.currencies {
            let (m, r) = (&c.movements, &c.recognition);
            let row = [
                self.period.clone(),
                currency.clone(),
                c.mrr_start.to_string(),
                c.mrr_end.to_string(),
                c.arr_end.to_string(),
                m.new.to_string(),
                m.expansion.to_string(),
                m.contraction.to_string(),
                m.churn.to_string(),
                m.reactivation.to_string(),
                m.net_new.to_string(),
                c.paying_start.to_string(),
                c.paying_end.to_string(),
                r.billed.to_string(),
                r.billed_fees.to_string(),
                r.billed_usage.to_string(),
                r.collected.map(|c| c.to_string()).unwrap_or_default(),
                r.recognised.to_string(),
                r.recognised_fees.to_string(),
                r.recognised_usage.to_string(),
                r.deferred_start.to_string(),
                r.deferred_end.to_string(),
                r.fees_without_service.to_string(),
            ];
            w.write_record(row).expect("writing to memory");
        }
        String::from_utf8(w.into_inner().expect("flushing memory")).expect("CSV of text is text")
    }
}
