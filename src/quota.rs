//! Hard limits at ingest: a tenant's events for a hard-limited meter are refused once the
//! live counter (plus the request's own new events) would pass the plan's included quantity.

use async_trait::async_trait;
use meter_billing::PlanAllowances;
use meter_schemas::{Catalog, Contribution, Event, Period};
use meter_store::{Coverage, SqliteStore, UsageStore};
use rust_decimal::Decimal;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The hard limits of every tenant's plan, checked against the live counters.
pub struct HardLimits {
    /// Every tenant's plan.
    pub allowances: Arc<PlanAllowances>,
    /// The live counters.
    pub live: Arc<SqliteStore>,
    /// Meters.
    pub catalog: Arc<Catalog>,
    /// The aggregators' consumer (for the usage read's watermark).
    pub consumer: String,
}

#[async_trait]
impl meter_ingest::Quota for HardLimits {
    async fn refused(&self, events: &[Event]) -> Result<Vec<(usize, String)>, String> {
        // Events by tenant and period, only where the plan has a hard limit.
        let mut groups: BTreeMap<(&str, Period), Vec<usize>> = BTreeMap::new();
        for (i, e) in events.iter().enumerate() {
            groups.entry((e.tenant.as_str(), Period::containing(e.time_us))).or_default().push(i);
        }
        let mut refused = Vec::new();
        for ((tenant, period), indexes) in groups {
            let limits = self.allowances.hard_limits(tenant, period);
            if limits.is_empty() {
                continue;
            }
            let ids = indexes.iter().map(|&i| events[i].id.clone()).collect();
            let counted = self.live.counted_ids(tenant, ids).await.map_err(|e| e.to_string())?;
            let coverage = Coverage { consumer: &self.consumer, partition: 0 };
            let usage = self.live.usage(tenant, period, coverage).await.map_err(|e| e.to_string())?;
            let mut used: BTreeMap<&str, Decimal> = limits
                .iter()
                .map(|(m, _, _)| (m.as_str(), usage.meters.get(m).and_then(|t| t.period.value).unwrap_or_default()))
                .collect();
            for &i in &indexes {
                let e = &events[i];
                if counted.contains(&e.id) {
                    continue;
                }
                for (m, c) in self.catalog.contributions(e).0 {
                    let name = self.catalog.meters()[m].name.as_str();
                    let Some((_, limit, plan)) = limits.iter().find(|(l, _, _)| l == name) else { continue };
                    let now = used[name];
                    let after = match &c {
                        Contribution::Count => now + Decimal::ONE,
                        Contribution::Sum(q) => now.checked_add(*q).unwrap_or(Decimal::MAX),
                        // A distinct value may be one already counted: refuse only once the limit is reached.
                        Contribution::Unique(_) => now + Decimal::from(u8::from(now >= *limit)),
                        Contribution::Max(q) | Contribution::Latest(q) => *q,
                    };
                    if after > *limit {
                        refused.push((
                            i,
                            format!(
                                "would take tenant {tenant}'s {name} to {} in {period}, past the hard limit of {} of plan {plan}",
                                after.normalize(),
                                limit.normalize()
                            ),
                        ));
                    } else if matches!(c, Contribution::Count | Contribution::Sum(_)) {
                        used.insert(name, after);
                    }
                }
            }
        }
        refused.sort_by_key(|(i, _)| *i);
        refused.dedup_by_key(|(i, _)| *i);
        Ok(refused)
    }
}
