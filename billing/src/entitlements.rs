//! Entitlements: what a tenant's plan allows, from the feature matrix and the live counters.

use crate::{Error, PlanAllowances};
use meter_rater::pricebook::{Allowance, Feature};
use meter_schemas::{Catalog, Period};
use meter_store::{Coverage, UsageStore};
use rust_decimal::Decimal;
use serde::Serialize;

/// One entitlement: a feature of the plan's matrix, or a meter's allowance.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Entitlement {
    /// Feature or meter name.
    pub name: String,
    /// `feature` or `meter`.
    pub kind: &'static str,
    /// Whether the tenant may use it now: a flag that is on, a number other than 0, any level;
    /// a meter unless it is a hard limit that is used up.
    pub allowed: bool,
    /// A feature's value (on/off, a number, a level).
    pub value: Option<Feature>,
    /// A meter's included quantity per period, or `unlimited`; a numeric feature's limit.
    pub limit: Option<String>,
    /// A meter's use in the period so far.
    pub used: Option<String>,
    /// What is left of a limited meter (never below 0).
    pub remaining: Option<String>,
    /// A meter whose events are refused beyond the limit.
    pub hard_limit: bool,
}

/// Everything a tenant's plan allows now.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Entitlements {
    /// Tenant.
    pub tenant: String,
    /// Plan code.
    pub plan: String,
    /// `YYYY-MM`.
    pub period: String,
    /// The live counters are complete up to here (RFC 3339).
    pub watermark: Option<String>,
    /// Features first (by name), then meters (in configuration order).
    pub entitlements: Vec<Entitlement>,
}

/// The entitlements of `tenant` at `now_us`.
pub async fn entitlements(
    allowances: &PlanAllowances,
    store: &dyn UsageStore,
    coverage: Coverage<'_>,
    catalog: &Catalog,
    tenant: &str,
    now_us: i64,
) -> Result<Entitlements, Error> {
    let period = Period::containing(now_us);
    let plan =
        allowances.plan_of(tenant).ok_or_else(|| Error::NotFound(format!("live subscription of tenant {tenant}")))?;
    let book = allowances.book();
    let list =
        book.for_period(period).ok_or_else(|| Error::PriceBook(format!("no price list is effective in {period}")))?;
    let terms = list
        .terms(tenant, &plan)
        .ok_or_else(|| Error::PriceBook(format!("plan {plan} is not in price list {}", list.version)))?;
    let usage = store.usage(tenant, period, coverage).await?;
    let mut out = Vec::new();
    for (name, value) in &terms.plan.features {
        let (allowed, limit) = match value {
            Feature::Flag(on) => (*on, None),
            Feature::Number(n) => (*n != 0, Some(if *n < 0 { "unlimited".to_string() } else { n.to_string() })),
            Feature::Level(_) => (true, None),
        };
        out.push(Entitlement {
            name: name.clone(),
            kind: "feature",
            allowed,
            value: Some(value.clone()),
            limit,
            used: None,
            remaining: None,
            hard_limit: false,
        });
    }
    for m in catalog.meters() {
        let (included, hard_limit) = match (terms.seats().filter(|s| s.meter == m.name), terms.meter(&m.name)) {
            (Some(seats), _) => (Allowance::Up(seats.included), false),
            (None, Some(price)) => (price.included, price.hard_limit),
            (None, None) => continue,
        };
        let used = usage.meters.get(&m.name).and_then(|t| t.period.value).unwrap_or_default();
        let (limit, remaining, allowed) = match included {
            Allowance::Unlimited => ("unlimited".to_string(), None, true),
            Allowance::Up(q) => {
                let left = (q - used).max(Decimal::ZERO);
                (q.normalize().to_string(), Some(left.normalize().to_string()), !hard_limit || used < q)
            }
        };
        out.push(Entitlement {
            name: m.name.clone(),
            kind: "meter",
            allowed,
            value: None,
            limit: Some(limit),
            used: Some(used.normalize().to_string()),
            remaining,
            hard_limit,
        });
    }
    Ok(Entitlements {
        tenant: tenant.to_string(),
        plan,
        period: period.to_string(),
        watermark: usage.watermark_us.map(meter_schemas::period::format_time),
        entitlements: out,
    })
}
