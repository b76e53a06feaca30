//! Period close: freeze a period at a watermark, rate every subscription, carry late events of
//! earlier closes into adjustment lines, reconcile, and record the drafts once.

use crate::{Error, Ledger, metric};
use meter_eventlog::EventLog;
use meter_rater::{Invoice, PriceBook, PriceList, Subscription, Usage, adjustments, rate};
use meter_schemas::period::format_time;
use meter_schemas::{Catalog, Period};
use meter_store::{Totals, UsageStore};
use rayon::prelude::*;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Where a close reads its figures.
pub struct Sources {
    /// The live counters (the aggregators').
    pub live: Arc<dyn UsageStore>,
    /// The history (ClickHouse, or the live store): authoritative, deduplicated totals.
    pub history: Arc<dyn UsageStore>,
    /// The consumer whose watermark the history reports.
    pub history_consumer: String,
    /// Partitions of the log.
    pub partitions: u32,
    /// The log, for the census of accepted events; `None` skips it.
    pub log: Option<Arc<dyn EventLog>>,
    /// The consumer group the census reads in (Kafka); a fresh one reads from offset 0.
    pub census_group: String,
    /// A directory the close may write temporary files in (the data directory): the census
    /// spills into a directory of its own in its `census` subdirectory, where each census
    /// removes what earlier ones killed midway left.
    pub scratch: PathBuf,
    /// Meters.
    pub catalog: Arc<Catalog>,
    /// Prices.
    pub book: Arc<PriceBook>,
    /// The lateness window: events may arrive this long after their time.
    pub lateness_us: i64,
}

/// What a close reports while it works.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "stage", rename_all = "snake_case")]
pub enum Progress {
    /// Reading the log for the census.
    Census {
        /// Records read so far.
        read: u64,
    },
    /// Reading the stores' totals.
    Totals,
    /// Rating subscriptions.
    Rating {
        /// Done so far.
        done: usize,
        /// Of.
        of: usize,
    },
    /// Re-rating an earlier period closed before its lateness window ended.
    Adjusting {
        /// That period.
        period: String,
    },
}

/// One tenant's meter in the reconciliation report: the four figures and what differs.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct ReportRow {
    /// Tenant.
    pub tenant: String,
    /// Meter.
    pub meter: String,
    /// Metered again from the events the log accepted (absent when the census was skipped).
    pub accepted: Option<String>,
    /// The live counters.
    pub counted: Option<String>,
    /// The history store, which the invoice uses.
    pub stored: Option<String>,
    /// What the invoice lines used (absent for a meter no line prices).
    pub rated: Option<String>,
    /// `ok`, or each difference found.
    pub status: String,
}

/// A closed period: its drafts, its report and what it was frozen at.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Close {
    /// `YYYY-MM`.
    #[schema(value_type = String)]
    pub period: Period,
    /// When it was closed (RFC 3339).
    pub closed_at: String,
    /// The same, µs.
    pub closed_us: i64,
    /// Every event acknowledged before this instant was counted (RFC 3339).
    pub watermark: String,
    /// The same, µs.
    pub watermark_us: i64,
    /// True when the watermark had passed the period's end plus the lateness window: no event
    /// for the period could still arrive. Otherwise later events go into adjustments.
    pub complete: bool,
    /// The price list version that rated it.
    pub price_version: String,
    /// The invoice drafts, by tenant.
    pub invoices: Vec<Invoice>,
    /// Sum of the drafts, by currency.
    #[schema(value_type = BTreeMap<String, String>)]
    pub totals: BTreeMap<String, Decimal>,
    /// The reconciliation report, by tenant and meter.
    pub report: Vec<ReportRow>,
    /// Earlier periods rated again on their totals at this close (the baseline of their next
    /// adjustments).
    #[schema(value_type = BTreeMap<String, Vec<Invoice>>)]
    pub revisions: BTreeMap<Period, Vec<Invoice>>,
}

/// Closes `period` at `now_us`, or returns the close already recorded for it (so running it
/// again gives the same drafts, byte for byte).
pub async fn close(
    ledger: &Ledger,
    period: Period,
    src: &Sources,
    now_us: i64,
    progress: &(dyn Fn(Progress) + Send + Sync),
) -> Result<Close, Error> {
    if let Some(done) = ledger.close_of(period).await? {
        return Ok(done);
    }
    let lease = CloseLease::take(ledger, period).await?;
    let closed = close_holding(ledger, period, src, now_us, progress, &lease).await;
    lease.give_back().await;
    closed
}

/// How long the close lease lasts unless renewed: its holder renews it every third of this, and
/// a close on another process can start this long after the holder died.
pub const CLOSE_LEASE: std::time::Duration = std::time::Duration::from_secs(30);

/// The right to run the one close of the installation (every process, on every host, sharing the
/// ledger), renewed in the background while the close runs.
struct CloseLease {
    ledger: Ledger,
    holder: String,
    /// Who took the lease over, when this close lost it: the holder and the period it closes.
    lost: Arc<std::sync::Mutex<Option<(String, Period)>>>,
    renewing: tokio::task::JoinHandle<()>,
    given_back: bool,
}

impl CloseLease {
    /// Takes the lease, or says who holds it ([`Error::Conflict`]).
    async fn take(ledger: &Ledger, period: Period) -> Result<Self, Error> {
        let holder = meter_schemas::process::holder();
        let lease_us = CLOSE_LEASE.as_micros() as i64;
        let now = meter_schemas::period::now_us();
        if let Some(other) = ledger.lease_close(&holder, period, now + lease_us, now).await? {
            return Err(Error::Conflict(format!(
                "a close of {} is running on {} since {} (its lease runs until {} unless renewed); retry once it \
                 finishes",
                other.period,
                other.holder,
                format_time(other.since_us),
                format_time(other.until_us)
            )));
        }
        let lost = Arc::new(std::sync::Mutex::new(None));
        let renewing = tokio::spawn({
            let (ledger, holder, lost) = (ledger.clone(), holder.clone(), lost.clone());
            async move {
                loop {
                    tokio::time::sleep(CLOSE_LEASE / 3).await;
                    let now = meter_schemas::period::now_us();
                    match ledger.lease_close(&holder, period, now + lease_us, now).await {
                        Ok(None) => {}
                        Ok(Some(other)) => {
                            tracing::error!(holder = %other.holder, "the close lease was lost; this close stops");
                            *lost.lock().unwrap_or_else(|e| e.into_inner()) = Some((other.holder, other.period));
                            return;
                        }
                        Err(e) => tracing::warn!(error = %e, "renewing the close lease failed; trying again"),
                    }
                }
            }
        });
        Ok(CloseLease { ledger: ledger.clone(), holder, lost, renewing, given_back: false })
    }

    /// Fails once another process took the lease over (this one stalled past it): the close
    /// stops before it freezes or records anything more.
    fn check(&self) -> Result<(), Error> {
        match &*self.lost.lock().unwrap_or_else(|e| e.into_inner()) {
            None => Ok(()),
            Some((holder, period)) => Err(Error::Conflict(format!(
                "this close stalled past its lease and {} took over the close of {}; retry once it finishes",
                holder, period
            ))),
        }
    }

    async fn give_back(mut self) {
        self.renewing.abort();
        self.given_back = true;
        if let Err(e) = self.ledger.release_close(&self.holder).await {
            tracing::warn!(error = %e, "giving the close lease back failed; it runs out by itself");
        }
    }
}

impl Drop for CloseLease {
    /// A close dropped midway (its request went away) gives its lease back too.
    fn drop(&mut self) {
        self.renewing.abort();
        if !self.given_back
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            let (ledger, holder) = (self.ledger.clone(), std::mem::take(&mut self.holder));
            rt.spawn(async move { ledger.release_close(&holder).await });
        }
    }
}

/// The close proper, once its lease is held.
async fn close_holding(
    ledger: &Ledger,
    period: Period,
    src: &Sources,
    now_us: i64,
    progress: &(dyn Fn(Progress) + Send + Sync),
    lease: &CloseLease,
) -> Result<Close, Error> {
    // Another process may have recorded it just before this one took the lease.
    if let Some(done) = ledger.close_of(period).await? {
        return Ok(done);
    }
    let started = std::time::Instant::now();
    let closes = ledger.close_summaries().await?;
    if let Some(later) = closes.iter().find(|c| c.period > period) {
        return Err(Error::Conflict(format!("period {} is already closed; periods close in order", later.period)));
    }
    if now_us < period.end_us() {
        return Err(Error::NotReady(format!("period {period} is open until {}", format_time(period.end_us()))));
    }
    let watermark_us = src.history.watermark(&src.history_consumer, src.partitions).await?.ok_or_else(|| {
        Error::NotReady("no watermark yet: the usage store has not read every partition of the log".into())
    })?;
    if watermark_us < period.end_us() {
        return Err(Error::NotReady(format!(
            "events are counted up to {} only; period {period} ends at {}: retry once the store has caught up",
            format_time(watermark_us),
            format_time(period.end_us())
        )));
    }
    let list = src.book.for_period(period).ok_or_else(|| {
        Error::PriceBook(format!(
            "no price list is effective on {}",
            meter_schemas::period::format_day(period.first_day())
        ))
    })?;

    let accepted = match &src.log {
        Some(log) => Some(census(src, log.clone(), period, now_us, progress).await?),
        None => None,
    };
    progress(Progress::Totals);
    let stored = Arc::new(src.history.period_totals(period).await?);
    // Without ClickHouse the history is the live store itself: its totals are read once.
    let counted = if same_store(&src.history, &src.live) {
        stored.clone()
    } else {
        Arc::new(src.live.period_totals(period).await?)
    };

    // From here on no change may be dated inside the period: the close reads the trails now.
    lease.check()?;
    ledger.freeze(period).await?;
    let subscriptions = ledger.list(None).await?;
    let subscribed: BTreeSet<String> = subscriptions.iter().map(|s| s.tenant.clone()).collect();
    let rated = rate_all(subscriptions, stored.clone(), period, list.clone(), watermark_us, progress).await?;
    // Usage is the tenant's: of two subscriptions in one period (one ended, the next began), the
    // later one bills it.
    let mut owner: BTreeMap<String, usize> = BTreeMap::new();
    for (i, (sub, inv)) in rated.iter().enumerate() {
        if inv.plan.is_some() {
            owner.insert(sub.tenant.clone(), i);
        }
    }
    let mut invoices: BTreeMap<(String, &'static str), Invoice> = BTreeMap::new();
    for (i, (sub, mut inv)) in rated.into_iter().enumerate() {
        if inv.plan.is_some() && owner.get(&sub.tenant) != Some(&i) {
            inv = rate(&sub.tenant, &sub.id, &sub.entries, period, None, list).map_err(|e| unratable(&sub, e))?;
        }
        if !inv.lines.is_empty() {
            invoices.insert((sub.id.clone(), inv.currency.code()), inv);
        }
    }
    progress(Progress::Rating { done: invoices.len(), of: invoices.len() });

    let mut revisions = BTreeMap::new();
    // Read once, when an earlier period needs rating again, as recorded (not advanced).
    let recorded = tokio::sync::OnceCell::new();
    for earlier in &closes {
        // A period can still change until a close (its own or a later one's revision) saw a
        // watermark past its end plus the lateness window.
        let settled = earlier.period.end_us() + src.lateness_us;
        let last = closes.iter().rev().find(|c| c.period == earlier.period || c.revises.contains(&earlier.period));
        if last.is_none_or(|c| c.watermark_us >= settled) {
            continue;
        }
        progress(Progress::Adjusting { period: earlier.period.to_string() });
        // Only now are the closes read whole: the period's own, and its latest revision.
        let gone = |p: Period| Error::Corrupt(format!("the close of {p} is gone"));
        let revised_by = closes.iter().rev().find(|c| c.revises.contains(&earlier.period)).map(|c| c.period);
        let mut revising = match revised_by {
            Some(p) => Some(ledger.close_of(p).await?.ok_or_else(|| gone(p))?),
            None => None,
        };
        let mut earlier = ledger.close_of(earlier.period).await?.ok_or_else(|| gone(earlier.period))?;
        let baseline = match revising.as_mut() {
            Some(c) => c.revisions.remove(&earlier.period).ok_or_else(|| gone(earlier.period))?,
            None => std::mem::take(&mut earlier.invoices),
        };
        let totals = src.history.period_totals(earlier.period).await?;
        let earlier_list = src.book.version(&earlier.price_version).ok_or_else(|| {
            Error::PriceBook(format!("price list {} of period {} is gone", earlier.price_version, earlier.period))
        })?;
        let mut revised = Vec::new();
        let recorded: &BTreeMap<String, Subscription> = recorded
            .get_or_try_init(|| async {
                Ok::<_, Error>(ledger.list(None).await?.into_iter().map(|s| (s.id.clone(), s)).collect())
            })
            .await?;
        for billed in &baseline {
            let mut sub = recorded
                .get(&billed.subscription)
                .cloned()
                .ok_or_else(|| Error::NotFound(billed.subscription.clone()))?;
            sub.advance(earlier.period.end_us() - 1);
            let usage = usage_of(&totals, &sub.tenant, watermark_us);
            let usage = billed.plan.is_some().then_some(&usage);
            let again = rate(&sub.tenant, &sub.id, &sub.entries, earlier.period, usage, earlier_list)
                .map_err(|e| unratable(&sub, e))?;
            let lines = adjustments(billed, &again, Some(watermark_us));
            if !lines.is_empty() {
                // In the currency they were billed in: with the current list's, or apart.
                let mut in_currency = list.clone();
                in_currency.currency = again.currency;
                let inv = invoices.entry((sub.id.clone(), again.currency.code())).or_insert_with(|| {
                    let mut inv = Invoice::empty(&sub.tenant, &sub.id, period, &in_currency);
                    if in_currency.currency != list.currency {
                        // Beside the subscription's invoice in the list's currency: an id of its
                        // own (pushed, and in the tenant's history, as that one is).
                        inv.id = format!("{}_{}", inv.id, in_currency.currency.code().to_lowercase());
                    }
                    inv
                });
                inv.append(lines)?;
            }
            revised.push(again);
        }
        revisions.insert(earlier.period, revised);
    }

    let mut invoices: Vec<Invoice> = invoices.into_values().collect();
    invoices.sort_by(|a, b| (&a.tenant, &a.id).cmp(&(&b.tenant, &b.id)));
    let mut totals: BTreeMap<String, Decimal> = BTreeMap::new();
    for inv in &invoices {
        let sum = totals.entry(inv.currency.to_string()).or_default();
        *sum = sum.checked_add(inv.total).ok_or_else(|| meter_rater::Error::Overflow("the close's total".into()))?;
    }
    // Hundreds of thousands of rows at scale: off the async runtime too.
    let catalog = src.catalog.clone();
    let (invoices, report) = tokio::task::spawn_blocking(move || {
        let rows = report(&catalog, accepted.as_ref(), &counted, &stored, &invoices, &subscribed);
        (invoices, rows)
    })
    .await
    .map_err(task_failed)?;
    let close = Close {
        period,
        closed_at: format_time(now_us),
        closed_us: now_us,
        watermark: format_time(watermark_us),
        watermark_us,
        complete: watermark_us >= period.end_us() + src.lateness_us,
        price_version: list.version.clone(),
        invoices,
        totals,
        report,
        revisions,
    };
    let (invoices, differences) = (close.invoices.len(), close.report.iter().filter(|r| r.status != "ok").count());
    lease.check()?;
    let recorded = ledger.record(close, list).await?;
    if recorded.closed_us == now_us {
        metrics::counter!(metric::CLOSES).increment(1);
        metrics::counter!(metric::INVOICES).increment(invoices as u64);
        metrics::counter!(metric::DIFFERENCES).increment(differences as u64);
        metrics::histogram!(metric::CLOSE_DURATION).record(started.elapsed().as_secs_f64());
    }
    Ok(recorded)
}

/// Whether `a` and `b` are one store (their data pointers, not their vtables, compared).
fn same_store(a: &Arc<dyn UsageStore>, b: &Arc<dyn UsageStore>) -> bool {
    std::ptr::addr_eq(Arc::as_ptr(a), Arc::as_ptr(b))
}

/// Rates every subscription on `stored`, in order, on every core and off the async runtime.
async fn rate_all(
    subscriptions: Vec<Subscription>,
    stored: Arc<Totals>,
    period: Period,
    list: PriceList,
    watermark_us: i64,
    progress: &(dyn Fn(Progress) + Send + Sync),
) -> Result<Vec<(Subscription, Invoice)>, Error> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    // On every core (rayon's pool), off the async runtime; the invoices keep the subscriptions'
    // order. A panic in a rating thread reaches the task, and the close fails with it.
    let task = tokio::task::spawn_blocking(move || {
        let done = AtomicUsize::new(0);
        subscriptions
            .into_par_iter()
            .map(|mut sub| {
                sub.advance(period.end_us() - 1);
                let usage = usage_of(&stored, &sub.tenant, watermark_us);
                let inv = rate(&sub.tenant, &sub.id, &sub.entries, period, Some(&usage), &list)
                    .map_err(|e| unratable(&sub, e))?;
                let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_multiple_of(10_000) {
                    let _ = tx.send(n);
                }
                Ok((sub, inv))
            })
            .collect::<Result<Vec<_>, Error>>()
    });
    while let Some(done) = rx.recv().await {
        progress(Progress::Rating { done, of: 0 });
    }
    task.await.map_err(task_failed)?
}

/// A blocking task of the close that panicked or was cancelled.
fn task_failed(e: tokio::task::JoinError) -> Error {
    Error::Task(e.to_string())
}

async fn census(
    src: &Sources,
    log: Arc<dyn EventLog>,
    period: Period,
    now_us: i64,
    progress: &(dyn Fn(Progress) + Send + Sync),
) -> Result<Totals, Error> {
    progress(Progress::Census { read: 0 });
    // A group of its own, so that the census is given every partition (Kafka).
    let group = format!("{}-{period}-{now_us}", src.census_group);
    let (catalog, partitions, spill) = (src.catalog.clone(), src.partitions, crate::census::spill_dir(&src.scratch));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let task = tokio::task::spawn_blocking(move || {
        // What a census killed midway left behind (not what a live one holds).
        crate::census::remove_left_over(&spill);
        std::fs::create_dir_all(&spill)?;
        let reader = log.reader_in(&group)?;
        crate::census::census(reader, &catalog, period, partitions, &spill, &|read| {
            let _ = tx.send(read);
        })
    });
    while let Some(read) = rx.recv().await {
        progress(Progress::Census { read });
    }
    task.await.map_err(task_failed)?
}

/// A subscription the close cannot rate stops the close, naming it: no period closes with a
/// tenant left out.
fn unratable(sub: &meter_rater::Subscription, e: meter_rater::Error) -> Error {
    Error::Conflict(format!("cannot rate subscription {} of tenant {}: {e}", sub.id, sub.tenant))
}

/// `tenant`'s totals as the rater reads them.
fn usage_of(totals: &Totals, tenant: &str, watermark_us: i64) -> Usage {
    let totals = totals
        .get(tenant)
        .map(|m| m.iter().filter_map(|(name, t)| t.value.map(|v| (name.clone(), v))).collect())
        .unwrap_or_default();
    Usage { totals, watermark_us: Some(watermark_us) }
}

fn report(
    catalog: &Catalog,
    accepted: Option<&Totals>,
    counted: &Totals,
    stored: &Totals,
    invoices: &[Invoice],
    subscribed: &BTreeSet<String>,
) -> Vec<ReportRow> {
    let mut rated: BTreeMap<&str, BTreeMap<&str, Decimal>> = BTreeMap::new();
    for inv in invoices {
        // Adjustment lines carry an earlier period's totals.
        for l in inv.lines.iter().filter(|l| l.kind != meter_rater::LineKind::Adjustment) {
            for (m, v) in l.lineage.meters.iter() {
                rated.entry(inv.tenant.as_str()).or_default().insert(m, *v);
            }
        }
    }
    let billed: BTreeSet<&str> = invoices.iter().filter(|i| i.plan.is_some()).map(|i| i.tenant.as_str()).collect();
    let tenants: BTreeSet<&str> = counted
        .keys()
        .chain(stored.keys())
        .chain(accepted.into_iter().flat_map(|a| a.keys()))
        .map(String::as_str)
        .chain(billed.iter().copied())
        .collect();
    let mut rows = Vec::new();
    for tenant in tenants {
        for m in catalog.meters() {
            let value =
                |t: &Totals| t.get(tenant).and_then(|ms| ms.get(&m.name)).and_then(|t| t.display(m.aggregation));
            let (a, c, s) = (accepted.map(value), value(counted), value(stored));
            let r = rated.get(tenant).and_then(|ms| ms.get(m.name.as_str())).map(|v| v.normalize().to_string());
            if a.as_ref().is_none_or(Option::is_none) && c.is_none() && s.is_none() && r.is_none() {
                continue;
            }
            let mut flags = Vec::new();
            if a.as_ref().is_some_and(|a| *a != c) {
                flags.push("accepted ≠ counted");
            }
            if c != s {
                flags.push("counted ≠ stored");
            }
            // The rater reads a meter without events as 0.
            if r.as_ref().is_some_and(|r| Some(r) != s.as_ref().or(Some(&"0".to_string())).as_ref().copied()) {
                flags.push("rated ≠ stored");
            }
            if !billed.contains(tenant) && s.is_some() {
                flags.push(if subscribed.contains(tenant) {
                    "usage not billed: no paid time in the period (trial)"
                } else {
                    "no subscription: usage not billed"
                });
            }
            rows.push(ReportRow {
                tenant: tenant.to_string(),
                meter: m.name.clone(),
                accepted: a.flatten(),
                counted: c,
                stored: s,
                rated: r,
                status: if flags.is_empty() { "ok".into() } else { flags.join("; ") },
            });
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use meter_schemas::Tally;

    fn totals(rows: &[(&str, &str, i64)]) -> Totals {
        let mut t = Totals::new();
        for (tenant, meter, v) in rows {
            let tally = Tally { value: Some(Decimal::from(*v)), latest: None };
            t.entry(tenant.to_string()).or_default().insert(meter.to_string(), tally);
        }
        t
    }

    #[test]
    fn the_report_flags_every_difference_between_the_four_figures() {
        let catalog = Catalog::new(vec![]).unwrap();
        let accepted =
            totals(&[("a", "work_orders", 10), ("b", "work_orders", 5), ("c", "api_calls", 3), ("d", "api_calls", 2)]);
        let counted =
            totals(&[("a", "work_orders", 10), ("b", "work_orders", 4), ("c", "api_calls", 3), ("d", "api_calls", 2)]);
        let stored =
            totals(&[("a", "work_orders", 9), ("b", "work_orders", 4), ("c", "api_calls", 3), ("d", "api_calls", 2)]);
        let book = PriceBook::parse(
            meter_rater::pricebook::SAMPLE,
            &["work_orders", "work_orders_completed", "agent_invocations", "agent_tokens", "api_calls", "active_users"],
            &["active_users"],
        )
        .unwrap();
        let list = book.lists().last().unwrap();
        let mut inv = Invoice::empty("a", "s", "2026-10".parse().unwrap(), list);
        let line = meter_rater::Line {
            id: String::new(),
            kind: meter_rater::LineKind::Overage,
            description: String::new(),
            meter: Some("work_orders".into()),
            quantity: None,
            amount: Decimal::ZERO,
            lineage: meter_rater::Lineage {
                meters: meter_rater::Meters::from_iter([("work_orders".to_string(), Decimal::from(8))]),
                watermark_us: None,
                price_version: list.version.clone(),
                inputs_hash: String::new(),
            },
            service: None,
        };
        inv.append(vec![line]).unwrap();
        inv.plan = Some("starter".into());
        let rows = report(&catalog, Some(&accepted), &counted, &stored, &[inv], &BTreeSet::from(["d".to_string()]));
        let status = |t: &str, m: &str| rows.iter().find(|r| r.tenant == t && r.meter == m).unwrap().status.clone();
        assert_eq!(status("a", "work_orders"), "counted ≠ stored; rated ≠ stored");
        assert_eq!(status("b", "work_orders"), "accepted ≠ counted; no subscription: usage not billed");
        assert_eq!(status("c", "api_calls"), "no subscription: usage not billed");
        assert_eq!(status("d", "api_calls"), "usage not billed: no paid time in the period (trial)");
        assert!(rows.iter().all(|r| r.meter != "agent_tokens"), "meters without figures are left out");
    }
}
