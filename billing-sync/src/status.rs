//! Where a period's sync stands: what finance reads before it trusts that Stripe holds what
//! meter closed.

use meter_billing::Ledger;
use meter_billing::ledger::outbox::{OpKind, OpState, Operation};
use meter_schemas::Period;
use serde::Serialize;

/// A closed period's sync.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PeriodSync {
    /// `YYYY-MM`.
    pub period: String,
    /// Invoices to push (those with lines); this and the next four count pushes.
    pub invoices: usize,
    /// Done and held by the provider, their totals checked equal to meter's.
    pub synced: usize,
    /// Done without a provider: the invoices stay in meter.
    pub not_synced: usize,
    /// Not done yet (being tried, or waiting to be tried again).
    pub pending: usize,
    /// On the dead list: failed in a way trying again cannot change; each says why.
    pub dead: usize,
    /// Steps of collection and dunning waiting for their time (a retry in a few days, a due
    /// date, the end of a grace period).
    pub collecting: usize,
    /// Steps of collection on the dead list.
    pub collection_dead: usize,
    /// Invoices sent and not paid yet, with when they are due; `overdue` past that.
    pub outstanding: Vec<Outstanding>,
    /// Every operation (pushes, collection steps), oldest first.
    pub operations: Vec<Operation>,
}

/// An invoice sent and not paid yet.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Outstanding {
    /// meter's invoice id.
    pub invoice: String,
    /// The tenant.
    pub tenant: String,
    /// The provider's invoice id.
    pub remote: String,
    /// Its status there.
    pub status: String,
    /// When it was sent, µs.
    pub sent_us: Option<i64>,
    /// When it is due, µs (none: charged to the payment method).
    pub due_us: Option<i64>,
    /// Past its due date, unpaid.
    pub overdue: bool,
}

/// Where `period`'s sync stands.
pub async fn period_sync(ledger: &Ledger, period: Period, now_us: i64) -> Result<PeriodSync, meter_billing::Error> {
    let operations = ledger.operations(None, Some(period)).await?;
    let push = |o: &Operation| o.kind == OpKind::PushInvoice;
    let collection = |o: &Operation| matches!(o.kind, OpKind::Collect | OpKind::CheckSuspension);
    let pushed = operations.iter().filter(|o| push(o)).map(|o| o.subject.clone()).collect();
    let remote = ledger.store().remote_invoices_of(pushed).await?;
    let outstanding = remote
        .into_iter()
        .filter(|r| !r.is_settled())
        .map(|r| Outstanding {
            overdue: r.due_us.is_some_and(|d| d < now_us),
            invoice: r.invoice,
            tenant: r.tenant,
            remote: r.remote,
            status: r.status,
            sent_us: r.sent_us,
            due_us: r.due_us,
        })
        .collect();
    let count = |f: &dyn Fn(&Operation) -> bool| operations.iter().filter(|o| f(o)).count();
    let synced_flag = |o: &Operation| {
        o.outcome
            .as_deref()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok())
            .and_then(|v| v["synced"].as_bool())
    };
    Ok(PeriodSync {
        period: period.to_string(),
        invoices: count(&push),
        synced: count(&|o| push(o) && o.state == OpState::Done && synced_flag(o) == Some(true)),
        not_synced: count(&|o| push(o) && o.state == OpState::Done && synced_flag(o) != Some(true)),
        pending: count(&|o| push(o) && o.state == OpState::Pending),
        dead: count(&|o| push(o) && o.state == OpState::Dead),
        collecting: count(&|o| collection(o) && o.state == OpState::Pending),
        collection_dead: count(&|o| collection(o) && o.state == OpState::Dead),
        outstanding,
        operations,
    })
}

/// A closed invoice of a tenant's, with where its payment stands.
#[derive(Debug, Serialize)]
pub struct BilledInvoice {
    /// The invoice as closed: its lines with their lineage.
    #[serde(flatten)]
    pub invoice: meter_rater::Invoice,
    /// At the payment provider; `None` while it was not pushed (or without a provider).
    pub payment: Option<Payment>,
}

/// Where an invoice's payment stands at the provider.
#[derive(Debug, Serialize)]
pub struct Payment {
    /// The provider's invoice id.
    pub provider_invoice: String,
    /// draft, open, paid, uncollectible or void.
    pub status: String,
    /// When it was sent (RFC 3339).
    pub sent_at: Option<String>,
    /// When it is due (RFC 3339), for an invoice paid by transfer.
    pub due_at: Option<String>,
    /// When it was paid (RFC 3339).
    pub paid_at: Option<String>,
    /// Past its due date, unpaid.
    pub overdue: bool,
    /// The provider's page of the invoice for the customer (Stripe's hosted invoice).
    pub hosted_url: Option<String>,
    /// The provider's PDF of the invoice.
    pub pdf_url: Option<String>,
}

/// `invoices` with where each one's payment stands at `now_us`.
async fn with_payments(
    ledger: &Ledger,
    invoices: Vec<meter_rater::Invoice>,
    now_us: i64,
) -> Result<Vec<BilledInvoice>, meter_billing::Error> {
    use meter_schemas::period::format_time;
    let ids = invoices.iter().map(|i| i.id.clone()).collect();
    let mut remote: std::collections::BTreeMap<String, _> =
        ledger.store().remote_invoices_of(ids).await?.into_iter().map(|r| (r.invoice.clone(), r)).collect();
    Ok(invoices
        .into_iter()
        .map(|invoice| {
            let payment = remote.remove(&invoice.id).map(|r| Payment {
                overdue: !r.is_settled() && r.due_us.is_some_and(|d| d < now_us),
                provider_invoice: r.remote,
                status: r.status,
                sent_at: r.sent_us.map(format_time),
                due_at: r.due_us.map(format_time),
                paid_at: r.paid_us.map(format_time),
                hosted_url: r.hosted_url,
                pdf_url: r.pdf_url,
            });
            BilledInvoice { invoice, payment }
        })
        .collect())
}

/// Every closed invoice of `tenant`, newest period first, with where its payment stands.
pub async fn invoices_of(
    ledger: &Ledger,
    tenant: &str,
    now_us: i64,
) -> Result<Vec<BilledInvoice>, meter_billing::Error> {
    let invoices = ledger.invoices_of(tenant).await?;
    with_payments(ledger, invoices, now_us).await
}

/// The closed invoice `id` with where its payment stands, if it is `tenant`'s (any tenant's for
/// `None`).
pub async fn invoice(
    ledger: &Ledger,
    id: &str,
    tenant: Option<&str>,
    now_us: i64,
) -> Result<Option<BilledInvoice>, meter_billing::Error> {
    let Some(invoice) = ledger.invoice(id).await?.filter(|i| tenant.is_none_or(|t| i.tenant == t)) else {
        return Ok(None);
    };
    Ok(with_payments(ledger, vec![invoice], now_us).await?.pop())
}

/// Where a month stands, as finance sees it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PeriodState {
    /// `YYYY-MM`.
    pub period: String,
    /// `open` (running); `ended` (over, the counters not yet past its end, or an earlier month to
    /// close first); `closable` (the oldest month not closed, counted past its end);
    /// `not_closed` (a later month was closed first: this one can no longer be); `closed`
    /// (events may still come for it: they go to a later invoice); `complete` (closed, and no
    /// event can come any more); `synced` (complete, and every invoice with lines is held by the
    /// payment provider).
    pub state: &'static str,
    /// For a closed month: how many invoices with lines it pushes, and how many are synced,
    /// pending and dead.
    pub invoices: Option<usize>,
    /// Synced.
    pub synced: Option<usize>,
    /// Pending.
    pub pending: Option<usize>,
    /// Dead.
    pub dead: Option<usize>,
}

/// Every month from the first closed one (or the one before this one, before any close) to this
/// one, newest first, at `now_us`, with the history complete up to `watermark_us` (what a close
/// checks) and events accepted up to `lateness_us` late.
pub async fn periods(
    ledger: &Ledger,
    watermark_us: Option<i64>,
    lateness_us: i64,
    now_us: i64,
) -> Result<Vec<PeriodState>, meter_billing::Error> {
    let current = Period::containing(now_us);
    let summaries = ledger.close_summaries().await?;
    let last_closed = summaries.iter().map(|s| s.period).max();
    let first = summaries.iter().map(|s| s.period).min().unwrap_or_else(|| current.previous());
    let open =
        |state| PeriodState { period: String::new(), state, invoices: None, synced: None, pending: None, dead: None };
    let mut out = Vec::new();
    let mut p = first;
    // The oldest month after the last close is the one a close takes next.
    let mut next_to_close = true;
    while p <= current {
        let own = summaries.iter().find(|s| s.period == p);
        let state = match own {
            Some(close) => {
                // Complete once a close of it, or a later one revising it, saw past its lateness.
                let seen = summaries
                    .iter()
                    .filter(|s| s.period == p || s.revises.contains(&p))
                    .map(|s| s.watermark_us)
                    .max()
                    .unwrap_or(close.watermark_us);
                let sync = period_sync(ledger, p, now_us).await?;
                let state = match (
                    seen >= p.end_us() + lateness_us,
                    sync.synced == sync.invoices && sync.pending == 0 && sync.dead == 0,
                ) {
                    (true, true) => "synced",
                    (true, false) => "complete",
                    (false, _) => "closed",
                };
                out.push(PeriodState {
                    period: p.to_string(),
                    state,
                    invoices: Some(sync.invoices),
                    synced: Some(sync.synced),
                    pending: Some(sync.pending),
                    dead: Some(sync.dead),
                });
                p = p.next();
                continue;
            }
            None if p == current => "open",
            None if last_closed.is_some_and(|l| p < l) => "not_closed",
            None if next_to_close && watermark_us.is_some_and(|w| w >= p.end_us()) => "closable",
            None => "ended",
        };
        if matches!(state, "closable" | "ended") {
            next_to_close = false;
        }
        out.push(PeriodState { period: p.to_string(), ..open(state) });
        p = p.next();
    }
    out.reverse();
    Ok(out)
}
