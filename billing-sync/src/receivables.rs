//! Accounts receivable: what customers owe on the invoices the provider holds, as of a day, per
//! currency (no conversion).
//!
//! - **Outstanding** at `as_of`: sent by then, neither paid by then nor void or uncollectible.
//! - **Due**: its due date (`send_invoice`), or the day it was sent (charged on sending).
//! - **Aging**: days past due at `as_of`, whole days: `current` (not past due), `1-30`,
//!   `31-60`, `61-90`, `over_90`.
//! - **Billed** over the 90 days to `as_of`: invoices sent in that window, but void or
//!   uncollectible ones; **collected**: those of them paid by `as_of`; the **collection rate**
//!   is collected ÷ billed.
//! - **DSO** (days sales outstanding): outstanding ÷ billed over the 90 days × 90.
//!
//! A void or uncollectible invoice is left out as of any day: the provider's status says that it
//! was written off, not when, so a report as of a day before that does not show it owed.

use meter_billing::ledger::outbox::RemoteInvoice;
use rust_decimal::Decimal;
use serde::Serialize;
use std::collections::BTreeMap;

const DAY_US: i64 = 86_400_000_000;
/// The window billing, collection and DSO are measured over.
pub const WINDOW_DAYS: i64 = 90;

/// Outstanding amounts by age.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Aging {
    /// Not past due.
    pub current: Decimal,
    /// 1 to 30 days past due.
    #[serde(rename = "1-30")]
    pub days_1_30: Decimal,
    /// 31 to 60.
    #[serde(rename = "31-60")]
    pub days_31_60: Decimal,
    /// 61 to 90.
    #[serde(rename = "61-90")]
    pub days_61_90: Decimal,
    /// More than 90.
    pub over_90: Decimal,
}

impl Aging {
    fn add(&mut self, days_past_due: i64, amount: Decimal) {
        let bucket = match days_past_due {
            ..=0 => &mut self.current,
            1..=30 => &mut self.days_1_30,
            31..=60 => &mut self.days_31_60,
            61..=90 => &mut self.days_61_90,
            _ => &mut self.over_90,
        };
        *bucket += amount;
    }
}

/// One currency's receivables.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct InCurrency {
    /// Everything outstanding.
    pub outstanding: Decimal,
    /// It, by age.
    pub aging: Aging,
    /// Billed over the window.
    pub billed: Decimal,
    /// Of that, collected by `as_of`.
    pub collected: Decimal,
    /// collected ÷ billed (4 decimals); none when nothing was billed.
    pub collection_rate: Option<Decimal>,
    /// outstanding ÷ billed × the window's days (2 decimals); none when nothing was billed.
    pub dso_days: Option<Decimal>,
}

/// An outstanding invoice.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Receivable {
    /// meter's invoice.
    pub invoice: String,
    /// The provider's.
    pub provider_invoice: String,
    /// The tenant.
    pub tenant: String,
    /// ISO code.
    pub currency: String,
    /// What is owed.
    pub amount: Decimal,
    /// When it was due (µs).
    pub due_us: i64,
    /// Whole days past due at `as_of` (0 or less: not yet due).
    pub days_past_due: i64,
}

/// Receivables as of a day.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Receivables {
    /// The instant they are as of (µs).
    pub as_of_us: i64,
    /// The window's days.
    pub window_days: i64,
    /// By currency.
    pub currencies: BTreeMap<String, InCurrency>,
    /// Every outstanding invoice, most overdue first.
    pub outstanding: Vec<Receivable>,
}

/// Receivables at `as_of_us` of the invoices the provider holds (`held`: where each stands
/// there, with meter's invoice).
pub fn receivables(held: &[(RemoteInvoice, meter_rater::Invoice)], as_of_us: i64) -> Receivables {
    let mut currencies: BTreeMap<String, InCurrency> = BTreeMap::new();
    let mut outstanding = Vec::new();
    let window_start = as_of_us - WINDOW_DAYS * DAY_US;
    for (remote, invoice) in held {
        let Some(sent) = remote.sent_us.filter(|s| *s <= as_of_us) else { continue };
        let written_off = matches!(remote.status.as_str(), "void" | "uncollectible");
        let paid_by_then = remote.paid_us.is_some_and(|p| p <= as_of_us);
        let c = currencies.entry(invoice.currency.code().to_string()).or_default();
        if sent > window_start && !written_off {
            c.billed += invoice.total;
            if paid_by_then {
                c.collected += invoice.total;
            }
        }
        if written_off || paid_by_then {
            continue;
        }
        let due = remote.due_us.unwrap_or(sent);
        let days_past_due = (as_of_us - due).div_euclid(DAY_US);
        c.outstanding += invoice.total;
        c.aging.add(days_past_due, invoice.total);
        outstanding.push(Receivable {
            invoice: invoice.id.clone(),
            provider_invoice: remote.remote.clone(),
            tenant: invoice.tenant.clone(),
            currency: invoice.currency.code().to_string(),
            amount: invoice.total,
            due_us: due,
            days_past_due,
        });
    }
    for c in currencies.values_mut() {
        if !c.billed.is_zero() {
            c.collection_rate = Some((c.collected / c.billed).round_dp(4));
            c.dso_days = Some((c.outstanding / c.billed * Decimal::from(WINDOW_DAYS)).round_dp(2));
        }
    }
    outstanding.sort_by(|a, b| b.days_past_due.cmp(&a.days_past_due).then_with(|| a.invoice.cmp(&b.invoice)));
    Receivables { as_of_us, window_days: WINDOW_DAYS, currencies, outstanding }
}

/// Receivables at `as_of_us` of every invoice the provider holds.
pub async fn of(ledger: &meter_billing::Ledger, as_of_us: i64) -> Result<Receivables, meter_billing::Error> {
    let held = ledger.store().held_invoices().await?;
    tokio::task::spawn_blocking(move || receivables(&held, as_of_us))
        .await
        .map_err(|e| meter_billing::Error::Task(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An invoice of `total` EUR sent `sent` days before the day, due `due` days before it
    /// (`None`: on sending), paid `paid` days before it, in `status`.
    fn held(
        id: &str,
        total: &str,
        sent: i64,
        due: Option<i64>,
        paid: Option<i64>,
        status: &str,
        day: i64,
    ) -> (RemoteInvoice, meter_rater::Invoice) {
        let mut invoice = crate::testing::invoice(id, "EUR", &[total]);
        invoice.id = id.to_string();
        let remote = RemoteInvoice {
            remote: format!("in_{id}"),
            invoice: id.to_string(),
            tenant: id.to_string(),
            status: status.to_string(),
            sent_us: Some(day - sent * DAY_US),
            due_us: due.map(|d| day - d * DAY_US),
            paid_us: paid.map(|p| day - p * DAY_US),
            hosted_url: None,
            pdf_url: None,
        };
        (remote, invoice)
    }

    #[test]
    fn aging_collection_and_dso_equal_a_table_computed_by_hand() {
        let day = 1_800_000_000_000_000;
        let d = |s: &str| s.parse::<Decimal>().unwrap();
        let book = [
            // Sent 10 days ago on net-30: due in 20 days, current.
            held("a", "100.00", 10, Some(-20), None, "open", day),
            // Due 20 days ago: 1-30.
            held("b", "200.00", 50, Some(20), None, "open", day),
            // Due 70 days ago, sent before the window: 61-90, not billed in it.
            held("c", "300.00", 100, Some(70), None, "open", day),
            // Paid 35 days ago: collected, not outstanding.
            held("d", "400.00", 40, None, Some(35), "paid", day),
            // Charged 200 days ago, never paid: over 90 (due on sending).
            held("e", "500.00", 200, None, None, "open", day),
            // Void: neither billed nor outstanding.
            held("f", "50.00", 5, None, None, "void", day),
            // Paid tomorrow, as seen today: outstanding, 31-60 (due 45 days ago).
            held("g", "60.00", 75, Some(45), Some(-1), "paid", day),
            // Sent tomorrow: not there yet.
            held("h", "70.00", -1, None, None, "open", day),
        ];
        let r = receivables(&book, day);
        let eur = &r.currencies["EUR"];
        // By hand: outstanding a 100 + b 200 + c 300 + e 500 + g 60 = 1160.
        assert_eq!(eur.outstanding, d("1160.00"));
        let aging = Aging {
            current: d("100.00"),
            days_1_30: d("200.00"),
            days_31_60: d("60.00"),
            days_61_90: d("300.00"),
            over_90: d("500.00"),
        };
        assert_eq!(eur.aging, aging);
        // Sent within 90 days, not void: a 100, b 200, d 400, g 60 = 760; collected by the day: d 400.
        assert_eq!((eur.billed, eur.collected), (d("760.00"), d("400.00")));
        assert_eq!(eur.collection_rate, Some(d("0.5263")), "400 / 760");
        assert_eq!(eur.dso_days, Some(d("137.37")), "1160 / 760 × 90");
        let order: Vec<(&str, i64)> = r.outstanding.iter().map(|o| (o.invoice.as_str(), o.days_past_due)).collect();
        assert_eq!(order, [("e", 200), ("c", 70), ("g", 45), ("b", 20), ("a", -20)]);
    }
}
