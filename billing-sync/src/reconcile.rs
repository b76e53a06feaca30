//! Reconciliation of a closed period against the provider: for every meter invoice, whether the
//! provider holds it exactly once, with the same currency, each line's amount and the same total
//! before tax, its status there and the tax the provider added; joined with the close's report
//! for its tenant (events accepted = counted = stored = rated, meter by meter). What finance
//! checks before it trusts that what was charged is what meter rated, and what it rated is
//! what was sent.

use crate::Error;
use crate::items::{Item, plan_items};
use crate::provider::{Held, Provider};
use futures_util::StreamExt;
use meter_billing::Ledger;
use meter_billing::export::{PAGE, Page, Pages, Rows};
use meter_billing::ledger::outbox::{OpKind, OpState};
use meter_schemas::Period;
use serde::Serialize;
use std::collections::BTreeMap;

/// One meter invoice against the provider.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Row {
    /// meter's invoice id.
    pub invoice: String,
    /// The tenant.
    pub tenant: String,
    /// Lowercase ISO code.
    pub currency: String,
    /// meter's total, minor units (none when a line cannot be sent).
    pub total_minor: Option<i64>,
    /// Where its sync stands (pending, done, dead).
    pub sync: String,
    /// The provider's invoices carrying its lines (one when all is well).
    pub held: Vec<Held>,
    /// Every difference, in words; empty when the provider holds exactly what meter rated.
    pub differences: Vec<String>,
    /// The close's report for the tenant, meter by meter: events accepted (metered again from
    /// the log) = counted (the live counters) = stored (the history) = rated.
    pub metering: Vec<meter_billing::ReportRow>,
    /// Whether every meter of the tenant's report is `ok`.
    pub metering_ok: bool,
}

/// A period against the provider.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Reconciliation {
    /// `YYYY-MM`.
    pub period: String,
    /// The provider (`stripe`, `none`).
    pub provider: String,
    /// meter invoices with lines.
    pub invoices: usize,
    /// Invoices with at least one difference from the provider.
    pub with_differences: usize,
    /// Invoices whose tenant's metering differs in the close's report (accepted, counted,
    /// stored and rated not all equal).
    pub with_metering_differences: usize,
    /// Money rated and pushed, by currency, minor units: meter's totals and the provider's
    /// totals before tax; equal when nothing differs.
    pub rated: BTreeMap<String, i64>,
    /// The same, as the provider holds it.
    pub pushed: BTreeMap<String, i64>,
    /// The tax the provider added, by currency.
    pub tax: BTreeMap<String, i64>,
    /// Each invoice.
    pub rows: Vec<Row>,
}

/// Reconciles `period`'s invoices against `provider`.
pub async fn reconcile(ledger: &Ledger, provider: &dyn Provider, period: Period) -> Result<Reconciliation, Error> {
    let ops = ledger.operations(None, Some(period)).await?;
    let mut out = Reconciliation {
        period: period.to_string(),
        provider: provider.name().to_string(),
        invoices: 0,
        with_differences: 0,
        with_metering_differences: 0,
        rated: BTreeMap::new(),
        pushed: BTreeMap::new(),
        tax: BTreeMap::new(),
        rows: Vec::new(),
    };
    // Invoices side by side (each is a few reads of the provider, retried through its faults).
    let pushes: Vec<_> = ops.into_iter().filter(|o| o.kind == OpKind::PushInvoice).collect();
    let checked: Vec<Result<Row, Error>> = futures_util::stream::iter(pushes)
        .map(|op| async move { check(ledger, provider, &op).await })
        .buffered(16)
        .collect()
        .await;
    // The close's report, by tenant (a report row per tenant and meter: looked up, not scanned,
    // for each of thousands of invoices), read a page at a time without the close's invoices.
    let mut report: BTreeMap<String, Vec<_>> = BTreeMap::new();
    if let Some(mut pages) = Pages::open(ledger, period, Rows::Report, PAGE).await? {
        while let Some(page) = pages.next().await? {
            if let Page::Report(rows) = page {
                for r in rows {
                    report.entry(r.tenant.clone()).or_default().push(r);
                }
            }
        }
    }
    for row in checked {
        let mut row = row?;
        row.metering = report.get(&row.tenant).cloned().unwrap_or_default();
        row.metering_ok = row.metering.iter().all(|r| !r.differs());
        out.invoices += 1;
        if !row.differences.is_empty() {
            out.with_differences += 1;
        }
        if !row.metering_ok {
            out.with_metering_differences += 1;
        }
        if let Some(total) = row.total_minor {
            *out.rated.entry(row.currency.clone()).or_default() += total;
        }
        for held in &row.held {
            *out.pushed.entry(held.currency.clone()).or_default() += held.total_excluding_tax;
            *out.tax.entry(held.currency.clone()).or_default() += held.tax;
        }
        out.rows.push(row);
    }
    Ok(out)
}

/// One meter invoice against the provider.
async fn check(
    ledger: &Ledger,
    provider: &dyn Provider,
    op: &meter_billing::ledger::outbox::Operation,
) -> Result<Row, Error> {
    let invoice: meter_rater::Invoice = serde_json::from_str(&op.body).map_err(|e| Error::Ledger(e.into()))?;
    let sync = match op.state {
        OpState::Pending => "pending",
        OpState::Done => "done",
        OpState::Dead => "dead",
    };
    let currency = invoice.currency.code().to_lowercase();
    let mut row = Row {
        invoice: invoice.id.clone(),
        tenant: invoice.tenant.clone(),
        currency: currency.clone(),
        total_minor: None,
        sync: sync.into(),
        held: Vec::new(),
        differences: Vec::new(),
        metering: Vec::new(),
        metering_ok: true,
    };
    let items = match plan_items(&invoice) {
        Ok(items) => items,
        Err(e) => {
            row.differences.push(format!("cannot be sent: {e}"));
            return Ok(row);
        }
    };
    let total: i64 = items.iter().map(|i| i.amount).sum();
    row.total_minor = Some(total);
    if provider.name() == "none" {
        return Ok(row);
    }
    let remote = ledger.remote_customer(&invoice.tenant).await?;
    row.held = match &remote {
        Some(r) => provider.held(&r.customer, &invoice.id).await?,
        None => Vec::new(),
    };
    row.differences = differences(&items, total, &currency, &row.held);
    Ok(row)
}

/// What differs between meter's items and the provider's invoices carrying them.
pub fn differences(items: &[Item], total: i64, currency: &str, held: &[Held]) -> Vec<String> {
    let mut d = Vec::new();
    match held {
        [] => {
            d.push("not in the provider".into());
            return d;
        }
        [_] => {}
        more => d.push(format!("{} invoices in the provider carry it: {}", more.len(), ids(more))),
    }
    for h in held {
        if h.currency != currency {
            d.push(format!("{}: currency {} instead of {currency}", h.id, h.currency));
        }
        if h.total_excluding_tax != total {
            d.push(format!("{}: total before tax {} instead of {total}", h.id, h.total_excluding_tax));
        }
        for item in items {
            let key = item.line_key();
            match h.lines.get(&key).map(Vec::as_slice) {
                Some([a]) if *a == item.amount => {}
                Some([a]) => d.push(format!("{}: line {key} is {a} instead of {}", h.id, item.amount)),
                Some(more) => d.push(format!("{}: line {key} is there {} times", h.id, more.len())),
                None => d.push(format!("{}: line {key} is missing", h.id)),
            }
        }
        for key in h.lines.keys().filter(|k| !items.iter().any(|i| &i.line_key() == *k)) {
            d.push(format!("{}: line {key} is not meter's", h.id));
        }
    }
    d
}

fn ids(held: &[Held]) -> String {
    held.iter().map(|h| h.id.as_str()).collect::<Vec<_>>().join(", ")
}
