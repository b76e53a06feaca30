//! The upcoming invoice: the open period rated on the live counters so far, and projected to
//! the period's end.

use crate::{Error, Ledger};
use meter_rater::{Invoice, PriceBook, State, Usage, rate};
use meter_schemas::{Aggregation, Catalog, Period};
use meter_store::{Coverage, UsageStore};
use rust_decimal::Decimal;
use serde::Serialize;

/// The open period's invoice so far and projected.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Upcoming {
    /// The period.
    #[schema(value_type = String)]
    pub period: Period,
    /// Share of the period elapsed, 0 to 1.
    #[schema(value_type = String)]
    pub elapsed: Decimal,
    /// Rated on the usage so far.
    pub so_far: Invoice,
    /// Rated on the usage projected to the period's end: counts and sums grow in proportion to
    /// the time left; unique counts, maxima and latest values stay as they are.
    pub projected: Invoice,
}

/// `usage` so far at `now_us` projected to the end of `period`: counts and sums grow in
/// proportion to the time left; unique counts, maxima and latest values stay. Returns the share
/// of the period elapsed too.
pub fn project(usage: &Usage, catalog: &Catalog, period: Period, now_us: i64) -> Result<(Decimal, Usage), Error> {
    let (start, end) = (period.start_us(), period.end_us());
    let elapsed = Decimal::from((now_us - start).clamp(1, end - start)) / Decimal::from(end - start);
    let mut projected = usage.clone();
    for (name, v) in projected.totals.iter_mut() {
        let grows = catalog
            .meters()
            .iter()
            .find(|m| &m.name == name)
            .is_some_and(|m| matches!(m.aggregation, Aggregation::Count | Aggregation::Sum));
        if grows {
            *v = v
                .checked_div(elapsed)
                .map(|p| p.round_dp(9))
                .ok_or_else(|| meter_rater::Error::Overflow(name.clone()))?;
        }
    }
    Ok((elapsed, projected))
}

/// The upcoming invoice of `tenant`'s subscription at `now_us`.
pub async fn upcoming(
    ledger: &Ledger,
    store: &dyn UsageStore,
    coverage: Coverage<'_>,
    catalog: &Catalog,
    book: &PriceBook,
    tenant: &str,
    now_us: i64,
) -> Result<Upcoming, Error> {
    let period = Period::containing(now_us);
    let list =
        book.for_period(period).ok_or_else(|| Error::PriceBook(format!("no price list is effective in {period}")))?;
    let mut subs = ledger.list(Some(tenant)).await?;
    subs.iter_mut().for_each(|s| s.advance(now_us));
    let sub = subs
        .into_iter()
        .rev()
        .find(|s| s.state() != State::Expired)
        .ok_or_else(|| Error::NotFound(format!("live subscription of tenant {tenant}")))?;
    let live = store.usage(tenant, period, coverage).await?;
    let so_far = Usage {
        totals: live.meters.iter().filter_map(|(m, t)| t.period.value.map(|v| (m.clone(), v))).collect(),
        watermark_us: live.watermark_us,
    };
    let (elapsed, projected) = project(&so_far, catalog, period, now_us)?;
    let end = period.end_us();
    let mut whole = sub.clone();
    whole.advance(end - 1);
    let trail = |s: &meter_rater::Subscription| s.entries.clone();
    Ok(Upcoming {
        period,
        elapsed: elapsed.round_dp(6),
        so_far: rate(tenant, &sub.id, &trail(&sub), period, Some(&so_far), list)?,
        projected: rate(tenant, &sub.id, &trail(&whole), period, Some(&projected), list)?,
    })
}
