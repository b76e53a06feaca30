//! Usage alerts: thresholds of each meter's included quantity, evaluated where the counters
//! change (in the same transaction), each firing once per tenant, meter, period and threshold.

use meter_schemas::Period;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Metric names of alerts, declared once.
pub mod metric {
    /// Alerts raised (each once), by `kind` (`usage_threshold` or `upgrade_suggested`).
    pub const RAISED: &str = "meter_alerts_raised_total";
}

/// What a tenant's plan includes of a meter in a period, and the percentages that alert.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Watch {
    /// Included quantity (greater than 0).
    pub included: Decimal,
    /// Percentages of `included` that alert, e.g. 80, 90, 100.
    pub percents: Vec<u32>,
    /// The plan's code, for the alert's text.
    pub plan: String,
}

/// Where the store learns what each tenant's plan includes. Called inside the counters'
/// transaction: it must answer from memory.
pub trait Allowances: Send + Sync {
    /// The watch on `meter` of `tenant` in `period`; `None` for a meter that is unlimited, not
    /// included, or a tenant without a plan.
    fn watch(&self, tenant: &str, meter: &str, period: Period) -> Option<Watch>;
}

/// An alert: a meter of a tenant reached a percentage of its included quantity in a period
/// (`usage_threshold`), or a higher tier would cost the tenant less (`upgrade_suggested`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Alert {
    /// Deterministic: the same tenant, meter, period and percentage (or suggested plan) always
    /// give the same id, so a replay, a restart or a duplicate never makes a second alert.
    pub id: String,
    /// Order in which alerts were raised, from 1.
    pub seq: u64,
    /// Tenant.
    pub tenant: String,
    /// `YYYY-MM`.
    pub period: String,
    /// `usage_threshold` or `upgrade_suggested`.
    pub kind: String,
    /// The tenant's plan.
    pub plan: String,
    /// When it was raised (RFC 3339).
    pub raised_at: String,
    /// The meter (thresholds).
    pub meter: Option<String>,
    /// The percentage reached (thresholds).
    pub percent: Option<u32>,
    /// The quantity that percentage is, exact decimal text (thresholds).
    pub threshold: Option<String>,
    /// The plan's included quantity (thresholds).
    pub included: Option<String>,
    /// The meter's value when the alert was raised (thresholds).
    pub value: Option<String>,
    /// The cheaper higher tier (suggestions).
    pub suggested_plan: Option<String>,
    /// What the period would cost less on it, projected to the period's end (suggestions).
    pub saving: Option<String>,
}

/// A higher tier that would cost a tenant less this period.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Suggestion {
    /// Tenant.
    pub tenant: String,
    /// `YYYY-MM`.
    pub period: String,
    /// The tenant's plan now.
    pub plan: String,
    /// The cheaper higher tier.
    pub suggested_plan: String,
    /// The saving, in the price list's currency.
    pub saving: Decimal,
}

/// The id of the suggestion of `plan` to `tenant` in `period`.
pub fn suggestion_id(tenant: &str, period: &str, plan: &str) -> String {
    alert_id(tenant, &format!("upgrade:{plan}"), period, 0)
}

/// The id of the alert for `percent` of `meter` of `tenant` in `period`.
pub fn alert_id(tenant: &str, meter: &str, period: &str, percent: u32) -> String {
    let h = Sha256::digest(format!("{tenant}\u{0}{meter}\u{0}{period}\u{0}{percent}").as_bytes());
    format!("alrt_{:x}", h)[..29].to_string()
}

/// The percentages of `watch` that `value` has reached, with their thresholds.
pub fn reached(watch: &Watch, value: Decimal) -> Vec<(u32, Decimal)> {
    watch
        .percents
        .iter()
        .filter_map(|&p| {
            let threshold = watch.included.checked_mul(Decimal::from(p))? / Decimal::ONE_HUNDRED;
            (value >= threshold).then_some((p, threshold.normalize()))
        })
        .collect()
}

/// A threshold alert a period counter has reached, as a store writes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reached {
    /// [`alert_id`].
    pub id: String,
    /// Tenant.
    pub tenant: String,
    /// Meter.
    pub meter: String,
    /// `YYYY-MM`.
    pub period: String,
    /// The percentage reached.
    pub percent: u32,
    /// The quantity that percentage is, exact decimal text.
    pub threshold: String,
    /// The plan's included quantity, exact decimal text.
    pub included: String,
    /// The counter's value, exact decimal text.
    pub value: String,
    /// The plan.
    pub plan: String,
}

/// The threshold alerts the counter `tally` of `tenant`'s `meter` in `bucket` has reached under
/// its plan, but those in `known`: none for a day's bucket, a counter without a value or a
/// meter its plan does not watch. Every backend of the live counters raises these, each once.
pub fn thresholds(
    allowances: &dyn Allowances,
    (tenant, meter, bucket): (&str, &str, &str),
    tally: &meter_schemas::Tally,
    known: &std::collections::HashSet<String>,
) -> Vec<Reached> {
    let (Some(value), Ok(period)) = (tally.value, bucket.parse::<Period>()) else { return Vec::new() };
    let Some(watch) = allowances.watch(tenant, meter, period) else { return Vec::new() };
    reached(&watch, value)
        .into_iter()
        .map(|(percent, threshold)| Reached {
            id: alert_id(tenant, meter, bucket, percent),
            tenant: tenant.to_string(),
            meter: meter.to_string(),
            period: bucket.to_string(),
            percent,
            threshold: threshold.to_string(),
            included: watch.included.normalize().to_string(),
            value: value.normalize().to_string(),
            plan: watch.plan.clone(),
        })
        .filter(|r| !known.contains(&r.id))
        .collect()
}
