//! Upgrade suggestions: for each tenant, whether a higher tier would cost less than its plan
//! with its overage, on the usage projected to the period's end.

use crate::preview::project;
use crate::{Error, Ledger};
use meter_rater::{Cycle, LineKind, PriceBook, PriceList, Setup, State, Subscription, Usage, rate};
use meter_schemas::{Catalog, Period};
use meter_store::{Coverage, Suggestion, UsageStore};
use rust_decimal::Decimal;

/// The cycle to compare `plan` on: the tenant's when the plan is sold on it, else the plan's
/// cheapest per month.
fn cycle_for(list: &PriceList, tenant: &str, plan: &str, like: &Subscription) -> Option<Cycle> {
    let terms = list.terms(tenant, plan)?;
    if terms.fee(like.cycle()).is_some() {
        return Some(like.cycle());
    }
    let per_month = |c: &Cycle| terms.fee(*c).map(|f| f / Decimal::from(c.months()));
    terms.plan.fee.keys().min_by_key(|c| per_month(c)).copied()
}

/// The period's cost on `plan` billed on `cycle` for `usage`: the base fee per month (after the
/// term discount the tenant would get) plus seats, overage and the minimum. `None` when the plan
/// is not sold on that cycle.
pub fn monthly_cost(
    list: &PriceList,
    tenant: &str,
    plan: &str,
    cycle: Cycle,
    like: &Subscription,
    period: Period,
    usage: &Usage,
) -> Option<Decimal> {
    let setup = Setup { plan: plan.into(), cycle, term_years: like.term_years, auto_renew: true, trial: false };
    let mut s = Subscription::create("advice", tenant, &setup, period.start_us(), "advisor", list).ok()?;
    s.advance(period.end_us() - 1);
    let inv = rate(tenant, "advice", &s.entries, period, Some(usage), list).ok()?;
    let sum =
        |kinds: &[LineKind]| inv.lines.iter().filter(|l| kinds.contains(&l.kind)).map(|l| l.amount).sum::<Decimal>();
    let base = sum(&[LineKind::BaseFee, LineKind::TermDiscount]) / Decimal::from(cycle.months());
    Some(list.currency.round(base + sum(&[LineKind::Seats, LineKind::Overage, LineKind::Minimum])))
}

/// Every live subscription whose plan a higher tier beats this period, with the best such tier;
/// nothing until `after_us` into the period.
#[allow(clippy::too_many_arguments)]
pub async fn advise(
    after_us: i64,
    ledger: &Ledger,
    store: &dyn UsageStore,
    consumer: &str,
    partitions: u32,
    catalog: &Catalog,
    book: &PriceBook,
    now_us: i64,
) -> Result<Vec<Suggestion>, Error> {
    let period = Period::containing(now_us);
    let Some(list) = book.for_period(period) else { return Ok(Vec::new()) };
    // Projections from the first days of a period are noise, and a suggestion stands all period.
    if now_us - period.start_us() < after_us {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for mut sub in ledger.list(None).await? {
        sub.advance(now_us);
        if matches!(sub.state(), State::Expired | State::Trial) {
            continue;
        }
        let Some(current) = list.plans.get(sub.plan()) else { continue };
        let partition = meter_schemas::partition::partition_for(&sub.tenant, partitions);
        let live = store.usage(&sub.tenant, period, Coverage { consumer, partition }).await?;
        let so_far = Usage {
            totals: live.meters.iter().filter_map(|(m, t)| t.period.value.map(|v| (m.clone(), v))).collect(),
            watermark_us: live.watermark_us,
        };
        let projected = match project(&so_far, catalog, period, now_us) {
            Ok((_, p)) => p,
            Err(e) => {
                tracing::warn!(tenant = %sub.tenant, error = %e, "cannot project the usage for upgrade advice");
                continue;
            }
        };
        // Each higher tier against the current plan on the same cycle (so that a plan sold only
        // annually is not compared with a monthly price).
        let best = list
            .plans
            .iter()
            .filter(|(_, p)| p.rank > current.rank)
            .filter_map(|(code, _)| {
                let cycle = cycle_for(list, &sub.tenant, code, &sub)?;
                let now = monthly_cost(list, &sub.tenant, sub.plan(), cycle, &sub, period, &projected)?;
                let then = monthly_cost(list, &sub.tenant, code, cycle, &sub, period, &projected)?;
                (then < now).then(|| (code, now - then))
            })
            .max_by_key(|(_, saving)| *saving);
        if let Some((code, saving)) = best {
            out.push(Suggestion {
                tenant: sub.tenant.clone(),
                period: period.to_string(),
                plan: sub.plan().to_string(),
                suggested_plan: code.clone(),
                saving,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use meter_rater::Cycle;

    const METERS: &[&str] =
        &["work_orders", "work_orders_completed", "agent_invocations", "agent_tokens", "api_calls", "active_users"];

    #[test]
    fn a_higher_tier_is_cheaper_once_overage_outgrows_its_base_fee() {
        let book = PriceBook::parse(meter_rater::pricebook::SAMPLE, METERS, &["active_users"]).unwrap();
        let period: Period = "2026-11".parse().unwrap();
        let list = book.for_period(period).unwrap();
        let setup =
            Setup { plan: "starter".into(), cycle: Cycle::Monthly, term_years: 1, auto_renew: true, trial: false };
        let sub = Subscription::create("s", "acme", &setup, period.start_us(), "k", list).unwrap();
        let usage =
            |wo: i64| Usage { totals: [("work_orders".to_string(), Decimal::from(wo))].into(), watermark_us: None };
        let cost = |plan: &str, cycle: Cycle, wo: i64| {
            monthly_cost(list, "acme", plan, cycle, &sub, period, &usage(wo)).unwrap().to_string()
        };
        assert_eq!(cost("starter", Cycle::Monthly, 1500), "30000.00", "5,000 + 1,000 over at 25");
        assert_eq!(cost("professional", Cycle::Monthly, 1500), "15000.00");
        assert_eq!(cost("enterprise", Cycle::Monthly, 1500), "52500.00", "base and minimum");
        assert_eq!(cost("starter", Cycle::Monthly, 400), "5000.00");
        // Annual: a year's fee less the 15% prepay discount, over twelve months.
        assert_eq!(cost("enterprise", Cycle::Annual, 0), "23750.00", "21,250 and the 2,500 minimum");
        assert_eq!(cost("enterprise_plus", Cycle::Annual, 0), "45416.67");
        assert_eq!(cycle_for(list, "acme", "enterprise_plus", &sub), Some(Cycle::Annual), "sold annually only");
    }
}
