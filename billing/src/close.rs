//! Period close: freeze a period at a watermark, rate every subscription, carry late events of
//! earlier closes into adjustment lines, reconcile, and record the drafts once.

use crate::ledger::{Close, Closed, Part, ReportRow};
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
use std::ops::Bound;
use std::path::PathBuf;
use std::sync::Arc;

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
    /// How many tenants with a subscription a part of the close holds ([`TENANTS_A_PART`];
    /// tests make it small).
    pub tenants_a_part: usize,
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
    /// Reading the stores' totals, from here on a range of tenants at a time with their
    /// subscriptions.
    Totals,
    /// Rating subscriptions, a range of tenants at a time, each range recorded as it comes.
    Rating {
        /// Subscriptions rated so far.
        done: usize,
        /// How many there are: 0 until the last is rated.
        of: usize,
    },
    /// Re-rating an earlier period closed before its lateness window ended.
    Adjusting {
        /// That period.
        period: String,
    },
}

/// Closes `period` at `now_us`, or returns the close already recorded for it (so running it
/// again gives the same drafts, byte for byte). Answers the close without its rows, which are
/// read a page at a time ([`Ledger::close_rows`]).
pub async fn close(
    ledger: &Ledger,
    period: Period,
    src: &Sources,
    now_us: i64,
    progress: &(dyn Fn(Progress) + Send + Sync),
) -> Result<Closed, Error> {
    if let Some(done) = ledger.closed(period).await? {
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
        still_held(&self.lost)
    }

    /// [`CloseLease::check`], for a thread of the close.
    fn watch(&self) -> Box<dyn Fn() -> Result<(), Error> + Send + Sync> {
        let lost = self.lost.clone();
        Box::new(move || still_held(&lost))
    }

    async fn give_back(mut self) {
        self.renewing.abort();
        self.given_back = true;
        if let Err(e) = self.ledger.release_close(&self.holder).await {
            tracing::warn!(error = %e, "giving the close lease back failed; it runs out by itself");
        }
    }
}

/// Fails once the lease was lost to another holder (named, with the period it closes).
fn still_held(lost: &std::sync::Mutex<Option<(String, Period)>>) -> Result<(), Error> {
    match &*lost.lock().unwrap_or_else(|e| e.into_inner()) {
        None => Ok(()),
        Some((holder, period)) => Err(Error::Conflict(format!(
            "this close stalled past its lease and {holder} took over the close of {period}; retry once it finishes"
        ))),
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
) -> Result<Closed, Error> {
    // Another process may have recorded it just before this one took the lease.
    if let Some(done) = ledger.closed(period).await? {
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

    // From here on no change may be dated inside the period: the close reads the trails now.
    lease.check()?;
    ledger.freeze(period).await?;
    let (revisions, adjustments) = revise(ledger, src, &closes, list, watermark_us, progress).await?;
    let header = Close {
        period,
        closed_at: format_time(now_us),
        closed_us: now_us,
        watermark: format_time(watermark_us),
        watermark_us,
        complete: watermark_us >= period.end_us() + src.lateness_us,
        price_version: list.version.clone(),
        invoices: Vec::new(),
        totals: BTreeMap::new(),
        report: Vec::new(),
        revisions,
    };
    // The rows are made a range of tenants at a time, off the async runtime, and recorded as
    // they come: neither the invoices nor the report is ever held whole.
    let (parts, recording) = tokio::sync::mpsc::channel(2);
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    let ranges = Stored {
        ledger: ledger.clone(),
        history: src.history.clone(),
        // Without ClickHouse the history is the live store itself: its totals are read once.
        live: (!same_store(&src.history, &src.live)).then(|| src.live.clone()),
        accepted,
        period,
        before_us: now_us,
        runtime: tokio::runtime::Handle::current(),
    };
    let mut walk = Walk {
        catalog: src.catalog.clone(),
        period,
        list: list.clone(),
        watermark_us,
        ranges: Box::new(ranges),
        adjustments,
        live: lease.watch(),
        tenants_a_part: src.tenants_a_part.max(1),
    };
    let made = tokio::task::spawn_blocking(move || {
        walk.run(&parts, &|done, of| {
            let _ = done_tx.send((done, of));
        })
    });
    let made = async { made.await.map_err(task_failed)? };
    let told = async {
        while let Some((done, of)) = done_rx.recv().await {
            progress(Progress::Rating { done, of });
        }
    };
    let (made, recorded, ()) = tokio::join!(made, ledger.record_parts(header, list, recording), told);
    // What stopped the rows stops the close; otherwise the recording says what stands.
    made?;
    let recorded = recorded?;
    if recorded.header.closed_us == now_us {
        metrics::counter!(metric::CLOSES).increment(1);
        metrics::counter!(metric::INVOICES).increment(recorded.invoices as u64);
        metrics::counter!(metric::DIFFERENCES).increment(recorded.differences as u64);
        metrics::histogram!(metric::CLOSE_DURATION).record(started.elapsed().as_secs_f64());
    }
    Ok(recorded)
}

/// Tenants with a subscription a part of the close holds: its rows are made and recorded this
/// many at a time (with every tenant with figures between them).
pub const TENANTS_A_PART: usize = 5_000;

/// Adjustment lines of earlier periods for one subscription's invoice in one currency: the list
/// (in that currency) an invoice of its own starts from, and the lines, in the order made.
#[cfg_attr(test, derive(Clone))]
struct Adjustment {
    subscription: String,
    list: PriceList,
    lines: Vec<meter_rater::Line>,
}

/// Rates again each earlier period closed before its lateness window ended, on today's totals:
/// the revisions (the baseline of their next adjustments) and, by tenant, the adjustment lines
/// for this close's invoices.
async fn revise(
    ledger: &Ledger,
    src: &Sources,
    closes: &[crate::ledger::CloseSummary],
    list: &PriceList,
    watermark_us: i64,
    progress: &(dyn Fn(Progress) + Send + Sync),
) -> Result<(BTreeMap<Period, Vec<Invoice>>, BTreeMap<String, Vec<Adjustment>>), Error> {
    let mut revisions = BTreeMap::new();
    let mut adjusting: BTreeMap<String, Vec<Adjustment>> = BTreeMap::new();
    // Read once, when an earlier period needs rating again, as recorded (not advanced).
    let mut recorded: Option<BTreeMap<String, Subscription>> = None;
    for earlier in closes {
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
        let recorded = match recorded.as_mut() {
            Some(r) => r,
            None => recorded.insert(ledger.list(None).await?.into_iter().map(|s| (s.id.clone(), s)).collect()),
        };
        let mut revised = Vec::new();
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
                adjusting.entry(sub.tenant.clone()).or_default().push(Adjustment {
                    subscription: sub.id.clone(),
                    list: in_currency,
                    lines,
                });
            }
            revised.push(again);
        }
        revisions.insert(earlier.period, revised);
    }
    Ok((revisions, adjusting))
}

/// Where the close reads a range of tenants: their subscriptions and their totals. The ranges
/// are asked for in order, each after the one before.
trait Ranges: Send {
    /// The subscriptions of the next `tenants` tenants after `after` that have one
    /// ([`LedgerStore::subscriptions_after`](crate::ledger::LedgerStore::subscriptions_after)).
    fn subscriptions(&mut self, after: Option<&str>, tenants: usize) -> Result<Vec<Subscription>, Error>;

    /// The totals of the tenants after `after` up to `upto`, included (every one left when
    /// `None`).
    fn totals(&mut self, after: Option<&str>, upto: Option<&str>) -> Result<RangeTotals, Error>;
}

/// A range of tenants' totals.
struct RangeTotals {
    /// The history's.
    stored: Totals,
    /// The live counters', when they are not the history.
    counted: Option<Totals>,
    /// The census's, when it was taken.
    accepted: Option<Totals>,
}

/// The ledger, the stores and the census, read from a thread of the close.
struct Stored {
    ledger: Ledger,
    history: Arc<dyn UsageStore>,
    /// The live counters, when they are not the history.
    live: Option<Arc<dyn UsageStore>>,
    accepted: Option<crate::census::Accepted>,
    period: Period,
    /// The close's instant: subscriptions created since (while it walks) are not its own.
    before_us: i64,
    runtime: tokio::runtime::Handle,
}

impl Ranges for Stored {
    fn subscriptions(&mut self, after: Option<&str>, tenants: usize) -> Result<Vec<Subscription>, Error> {
        self.runtime.block_on(self.ledger.subscriptions_after(after.map(str::to_string), tenants, self.before_us))
    }

    fn totals(&mut self, after: Option<&str>, upto: Option<&str>) -> Result<RangeTotals, Error> {
        let (stored, counted) = self.runtime.block_on(async {
            let stored = self.history.period_totals_in(self.period, after, upto).await?;
            let counted = match &self.live {
                Some(live) => Some(live.period_totals_in(self.period, after, upto).await?),
                None => None,
            };
            Ok::<_, Error>((stored, counted))
        })?;
        // The census's runs are read in order: what is left up to `upto` is this range's.
        let accepted = self.accepted.as_mut().map(|a| a.until(upto)).transpose()?;
        Ok(RangeTotals { stored, counted, accepted })
    }
}

/// What the close walks, a range of tenants at a time: every source by tenant.
struct Walk {
    catalog: Arc<Catalog>,
    period: Period,
    list: PriceList,
    watermark_us: i64,
    /// The subscriptions and the totals, a range at a time.
    ranges: Box<dyn Ranges>,
    adjustments: BTreeMap<String, Vec<Adjustment>>,
    /// Fails once the close lost its lease.
    live: Box<dyn Fn() -> Result<(), Error> + Send + Sync>,
    /// [`TENANTS_A_PART`], but in tests.
    tenants_a_part: usize,
}

impl Walk {
    /// Makes the close's rows, a range of tenants at a time, in its order (invoices by tenant,
    /// then id; report rows by tenant, then meter), and sends each range to the recording, then
    /// the totals; tells `done` how many subscriptions were rated, of how many. A recording that
    /// stopped (it failed, or found the period closed meanwhile) stops the walk: its answer is
    /// the close's.
    fn run(
        &mut self,
        parts: &tokio::sync::mpsc::Sender<Part>,
        done: &(dyn Fn(usize, usize) + Sync),
    ) -> Result<(), Error> {
        let (mut rated, mut after) = (0, None::<String>);
        let mut totals: BTreeMap<String, Decimal> = BTreeMap::new();
        loop {
            // The next tenants with a subscription, and every tenant with figures up to the last
            // of them (after the last subscription's tenant, every one left).
            let subs = self.ranges.subscriptions(after.as_deref(), self.tenants_a_part)?;
            let upto = subs.last().map(|s| s.tenant.clone());
            let RangeTotals { stored, counted, accepted } = self.ranges.totals(after.as_deref(), upto.as_deref())?;
            let counted = counted.as_ref().unwrap_or(&stored);
            let tenants: BTreeSet<&str> = subs
                .iter()
                .map(|s| s.tenant.as_str())
                .chain(stored.keys().map(String::as_str))
                .chain(counted.keys().map(String::as_str))
                .chain(accepted.iter().flat_map(|a| a.keys().map(String::as_str)))
                .collect();
            if !tenants.is_empty() {
                let tenants: Vec<&str> = tenants.into_iter().collect();
                let figures = Figures { accepted: accepted.as_ref(), counted, stored: &stored };
                let (invoices, report) = self.part(&tenants, &subs, &figures)?;
                for inv in &invoices {
                    let sum = totals.entry(inv.currency.to_string()).or_default();
                    *sum = sum
                        .checked_add(inv.total)
                        .ok_or_else(|| meter_rater::Error::Overflow("the close's total".into()))?;
                }
                rated += subs.len();
                (self.live)()?;
                if parts.blocking_send(Part::Rows(invoices, report)).is_err() {
                    return Ok(());
                }
            }
            match upto {
                Some(last) => {
                    done(rated, 0);
                    after = Some(last);
                }
                None => break,
            }
        }
        done(rated, rated);
        (self.live)()?;
        let _ = parts.blocking_send(Part::End(totals));
        Ok(())
    }

    /// The invoices and report rows of `tenants` (in order), whose subscriptions are `subs`.
    fn part(
        &self,
        tenants: &[&str],
        subs: &[Subscription],
        figures: &Figures,
    ) -> Result<(Vec<Invoice>, Vec<ReportRow>), Error> {
        let (period, list, watermark_us) = (self.period, &self.list, self.watermark_us);
        // On every core (rayon's pool), in the subscriptions' order.
        let rated = subs
            .par_iter()
            .map(|sub| {
                let mut sub = sub.clone();
                sub.advance(period.end_us() - 1);
                let usage = usage_of(figures.stored, &sub.tenant, watermark_us);
                let inv = rate(&sub.tenant, &sub.id, &sub.entries, period, Some(&usage), list)
                    .map_err(|e| unratable(&sub, e))?;
                Ok((sub, inv))
            })
            .collect::<Result<Vec<_>, Error>>()?;
        // Usage is the tenant's: of two subscriptions in one period (one ended, the next began),
        // the later one bills it.
        let mut owner: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, (sub, inv)) in rated.iter().enumerate() {
            if inv.plan.is_some() {
                owner.insert(sub.tenant.as_str(), i);
            }
        }
        let owner: BTreeMap<String, usize> = owner.into_iter().map(|(t, i)| (t.to_string(), i)).collect();
        let mut invoices: BTreeMap<(String, &'static str), Invoice> = BTreeMap::new();
        for (i, (sub, mut inv)) in rated.into_iter().enumerate() {
            if inv.plan.is_some() && owner.get(&sub.tenant) != Some(&i) {
                inv = rate(&sub.tenant, &sub.id, &sub.entries, period, None, list).map_err(|e| unratable(&sub, e))?;
            }
            if !inv.lines.is_empty() {
                invoices.insert((sub.id.clone(), inv.currency.code()), inv);
            }
        }
        let (first, last) = (tenants[0], tenants[tenants.len() - 1]);
        let adjusted = self.adjustments.range::<str, _>((Bound::Included(first), Bound::Included(last)));
        for (tenant, adjustments) in adjusted {
            for a in adjustments {
                let key = (a.subscription.clone(), a.list.currency.code());
                let inv = invoices.entry(key).or_insert_with(|| {
                    let mut inv = Invoice::empty(tenant, &a.subscription, period, &a.list);
                    if a.list.currency != list.currency {
                        // Beside the subscription's invoice in the list's currency: an id of its
                        // own (pushed, and in the tenant's history, as that one is).
                        inv.id = format!("{}_{}", inv.id, a.list.currency.code().to_lowercase());
                    }
                    inv
                });
                inv.append(a.lines.clone())?;
            }
        }
        let mut invoices: Vec<Invoice> = invoices.into_values().collect();
        invoices.sort_by(|a, b| (&a.tenant, &a.id).cmp(&(&b.tenant, &b.id)));
        let subscribed: BTreeSet<&str> = subs.iter().map(|s| s.tenant.as_str()).collect();
        let rows = report(&self.catalog, figures, tenants, &invoices, &subscribed);
        Ok((invoices, rows))
    }
}

/// Whether `a` and `b` are one store (their data pointers, not their vtables, compared).
fn same_store(a: &Arc<dyn UsageStore>, b: &Arc<dyn UsageStore>) -> bool {
    std::ptr::addr_eq(Arc::as_ptr(a), Arc::as_ptr(b))
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
) -> Result<crate::census::Accepted, Error> {
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

/// The three figures of each tenant's meters besides what was rated: accepted (from the census,
/// when taken), counted and stored.
struct Figures<'a> {
    accepted: Option<&'a Totals>,
    counted: &'a Totals,
    stored: &'a Totals,
}

/// The report rows of `tenants` (in order), rated in `invoices`, with the tenants that have a
/// subscription `subscribed`.
fn report(
    catalog: &Catalog,
    figures: &Figures,
    tenants: &[&str],
    invoices: &[Invoice],
    subscribed: &BTreeSet<&str>,
) -> Vec<ReportRow> {
    let Figures { accepted, counted, stored } = *figures;
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
    let mut rows = Vec::new();
    for &tenant in tenants {
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
                status: if flags.is_empty() { ReportRow::OK.into() } else { flags.join("; ") },
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

    /// The walk stops where its close must: once the lease is lost it sends nothing more (not
    /// its end, so the recording records nothing) and fails naming the new holder; once the
    /// recording is gone (it failed, or found the period closed) it stops without an error of its
    /// own, since the recording's answer is the close's.
    #[test]
    fn the_walk_stops_when_the_lease_is_lost_or_the_recording_gone() {
        let book = sample_book();
        let period: Period = "2026-10".parse().unwrap();
        let walk = |live: Box<dyn Fn() -> Result<(), Error> + Send + Sync>| Walk {
            catalog: Arc::new(Catalog::new(vec![]).unwrap()),
            period,
            list: book.for_period(period).unwrap().clone(),
            watermark_us: period.end_us(),
            ranges: Box::new(Held {
                subscriptions: vec![],
                stored: totals(&[("x", "api_calls", 3), ("y", "api_calls", 4)]),
                counted: None,
                accepted: None,
            }),
            adjustments: BTreeMap::new(),
            live,
            tenants_a_part: 1,
        };
        let lost = std::sync::Mutex::new(Some(("elsewhere".to_string(), period)));
        let lost = Arc::new(lost);
        let (tx, mut rx) = tokio::sync::mpsc::channel(10);
        let e = walk(Box::new(move || still_held(&lost))).run(&tx, &|_, _| {}).unwrap_err();
        assert!(matches!(&e, Error::Conflict(m) if m.contains("elsewhere")), "{e}");
        assert!(rx.try_recv().is_err(), "nothing sent");

        let (tx, rx) = tokio::sync::mpsc::channel(10);
        drop(rx);
        walk(Box::new(|| Ok(()))).run(&tx, &|_, _| {}).unwrap();
    }

    /// A close made in parts of any number of tenants is the close made in one: the same
    /// invoices and report rows in the same order, the same totals, whatever falls on a part's
    /// edge (a tenant's two subscriptions, usage without a subscription, a tenant the census alone
    /// saw, adjustment lines in the list's currency and in another).
    /// The sample price book over the default meters.
    fn sample_book() -> PriceBook {
        PriceBook::parse(
            meter_rater::pricebook::SAMPLE,
            &["work_orders", "work_orders_completed", "agent_invocations", "agent_tokens", "api_calls", "active_users"],
            &["active_users"],
        )
        .unwrap()
    }

    /// Subscriptions (by tenant) and totals held in memory, read by range as the stores read them.
    struct Held {
        subscriptions: Vec<Subscription>,
        stored: Totals,
        counted: Option<Totals>,
        accepted: Option<Totals>,
    }

    impl Ranges for Held {
        fn subscriptions(&mut self, after: Option<&str>, tenants: usize) -> Result<Vec<Subscription>, Error> {
            let next: Vec<&Subscription> =
                self.subscriptions.iter().filter(|s| after.is_none_or(|a| s.tenant.as_str() > a)).collect();
            let first: BTreeSet<&str> = next.iter().map(|s| s.tenant.as_str()).collect();
            let first: BTreeSet<&str> = first.into_iter().take(tenants).collect();
            Ok(next.into_iter().filter(|s| first.contains(s.tenant.as_str())).cloned().collect())
        }

        fn totals(&mut self, after: Option<&str>, upto: Option<&str>) -> Result<RangeTotals, Error> {
            let within = |t: &Totals| -> Totals {
                t.iter()
                    .filter(|(k, _)| after.is_none_or(|a| k.as_str() > a) && upto.is_none_or(|u| k.as_str() <= u))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            };
            Ok(RangeTotals {
                stored: within(&self.stored),
                counted: self.counted.as_ref().map(within),
                accepted: self.accepted.as_ref().map(within),
            })
        }
    }

    #[test]
    fn the_parts_of_a_close_are_the_close_made_in_one() {
        let book = sample_book();
        let period: Period = "2026-10".parse().unwrap();
        let list = book.for_period(period).unwrap().clone();
        let setup = |plan: &str| meter_rater::Setup {
            plan: plan.into(),
            cycle: meter_rater::Cycle::Monthly,
            term_years: 1,
            auto_renew: true,
            trial: false,
        };
        let sub = |id: &str, tenant: &str, plan: &str, day: i64| {
            let at = period.start_us() + day * 86_400_000_000;
            Subscription::create(id, tenant, &setup(plan), at, "k", &list).unwrap()
        };
        // By tenant, as the close sorts them; "b" has two (the later bills the usage).
        let subscriptions = vec![
            sub("s_a", "a", "starter", 0),
            sub("s_b1", "b", "starter", 0),
            sub("s_b2", "b", "professional", 10),
            sub("s_d", "d", "starter", 3),
            sub("s_f", "f", "professional", 0),
        ];
        let stored = totals(&[
            ("a", "work_orders", 700),
            ("b", "api_calls", 90_000),
            ("c", "work_orders", 5),
            ("d", "agent_tokens", 2_000_000),
            ("f", "work_orders", 1),
            ("g", "api_calls", 3),
        ]);
        let mut counted = stored.clone();
        counted.get_mut("d").unwrap().get_mut("agent_tokens").unwrap().value = Some(Decimal::from(1_999_999));
        let mut accepted = counted.clone();
        accepted.insert("e".into(), totals(&[("e", "api_calls", 3)]).remove("e").unwrap());
        let line = |amount: i64| meter_rater::Line {
            id: String::new(),
            kind: meter_rater::LineKind::Adjustment,
            description: "late usage of 2026-09".into(),
            meter: Some("work_orders".into()),
            quantity: None,
            amount: Decimal::from(amount),
            lineage: meter_rater::Lineage {
                meters: meter_rater::Meters::from_iter([("work_orders".to_string(), Decimal::from(3))]),
                watermark_us: None,
                price_version: list.version.clone(),
                inputs_hash: String::new(),
            },
            service: None,
        };
        let mut euros = list.clone();
        euros.currency = "EUR".parse().unwrap();
        let adjustments = BTreeMap::from([
            (
                "a".to_string(),
                vec![Adjustment { subscription: "s_a".into(), list: list.clone(), lines: vec![line(4)] }],
            ),
            (
                "d".to_string(),
                vec![
                    Adjustment { subscription: "s_d".into(), list: euros.clone(), lines: vec![line(7)] },
                    Adjustment { subscription: "s_d".into(), list: euros, lines: vec![line(1)] },
                ],
            ),
        ]);
        let walk = |tenants_a_part: usize| Walk {
            catalog: Arc::new(Catalog::new(vec![]).unwrap()),
            period,
            list: list.clone(),
            watermark_us: period.end_us(),
            ranges: Box::new(Held {
                subscriptions: subscriptions.clone(),
                stored: stored.clone(),
                counted: Some(counted.clone()),
                accepted: Some(accepted.clone()),
            }),
            adjustments: adjustments
                .iter()
                .map(|(t, a)| (t.clone(), a.iter().map(Adjustment::clone).collect()))
                .collect(),
            live: Box::new(|| Ok(())),
            tenants_a_part,
        };
        let made = |tenants_a_part: usize| {
            let (tx, mut rx) = tokio::sync::mpsc::channel(100);
            walk(tenants_a_part).run(&tx, &|_, _| {}).unwrap();
            drop(tx);
            let (mut invoices, mut rows, mut parts, mut end) = (Vec::new(), Vec::new(), 0, None);
            while let Ok(part) = rx.try_recv() {
                assert!(end.is_none(), "nothing after the end");
                match part {
                    Part::Rows(i, r) => {
                        parts += 1;
                        invoices.extend(i);
                        rows.extend(r);
                    }
                    Part::End(totals) => end = Some(totals),
                }
            }
            let json = serde_json::to_string(&(invoices, rows, end.expect("an end"))).unwrap();
            (json, parts)
        };
        // Parts end at a subscription's tenant: c and e (usage without a subscription) share one
        // with the next tenant that has one, and g (after the last) one of its own.
        let (one, parts) = made(100);
        assert_eq!(parts, 2);
        for (n, expected) in [(1, 5), (2, 3), (3, 3), (4, 2)] {
            let (json, parts) = made(n);
            assert_eq!(parts, expected, "parts of {n} tenants with a subscription");
            assert_eq!(json, one, "made in parts of {n} tenants");
        }
        let (invoices, rows, end): (Vec<Invoice>, Vec<ReportRow>, BTreeMap<String, Decimal>) =
            serde_json::from_str(&one).unwrap();
        let ids: Vec<&str> = invoices.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids.len(), 6, "{ids:?}: a, b twice, d in USD and in EUR, f");
        assert!(ids.iter().any(|i| i.ends_with("_eur")), "{ids:?}");
        let eur = invoices.iter().find(|i| i.id.ends_with("_eur")).unwrap();
        assert_eq!(eur.lines.len(), 2, "both adjustments in one invoice of its own");
        assert_eq!(end.len(), 2, "USD and EUR: {end:?}");
        let tenants: BTreeSet<&str> = rows.iter().map(|r| r.tenant.as_str()).collect();
        assert_eq!(tenants, BTreeSet::from(["a", "b", "c", "d", "e", "f", "g"]));
        let b_usage: Vec<&Invoice> = invoices.iter().filter(|i| i.tenant == "b" && i.plan.is_some()).collect();
        assert_eq!(b_usage.len(), 1, "the later of b's subscriptions bills its usage");
        assert_eq!(b_usage[0].subscription, "s_b2");
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
        let book = sample_book();
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
        let figures = Figures { accepted: Some(&accepted), counted: &counted, stored: &stored };
        let rows = report(&catalog, &figures, &["a", "b", "c", "d"], &[inv], &BTreeSet::from(["d"]));
        let status = |t: &str, m: &str| rows.iter().find(|r| r.tenant == t && r.meter == m).unwrap().status.clone();
        assert_eq!(status("a", "work_orders"), "counted ≠ stored; rated ≠ stored");
        assert_eq!(status("b", "work_orders"), "accepted ≠ counted; no subscription: usage not billed");
        assert_eq!(status("c", "api_calls"), "no subscription: usage not billed");
        assert_eq!(status("d", "api_calls"), "usage not billed: no paid time in the period (trial)");
        assert!(rows.iter().all(|r| r.meter != "agent_tokens"), "meters without figures are left out");
    }
}
