//! Hard limits at ingest: a tenant's events for a hard-limited meter are refused once the
//! live counter, plus what this process accepted that is not counted yet, plus the request's
//! own new events, would pass the plan's included quantity.

use async_trait::async_trait;
use meter_billing::PlanAllowances;
use meter_schemas::{Catalog, Contribution, Event, Period};
use meter_store::{Coverage, SqliteStore, UsageStore};
use rust_decimal::Decimal;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long an accepted event is held against its limit while waiting to be counted (longer
/// only if the aggregator is down: then the limit errs on the side of refusing).
const RESERVED_FOR: Duration = Duration::from_secs(60);

/// An accepted event not yet counted: what it adds to each hard-limited meter.
struct Reserved {
    id: String,
    period: Period,
    adds: Vec<(String, Add)>,
    at: Instant,
}

#[derive(Clone)]
enum Add {
    /// Adds this much.
    Quantity(Decimal),
    /// Adds one if this value is new.
    Distinct(String),
}

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
    /// Accepted events of hard-limited tenants not counted yet, by tenant.
    reserved: Mutex<HashMap<String, Vec<Reserved>>>,
}

impl HardLimits {
    /// Hard limits checked against `live`.
    pub fn new(
        allowances: Arc<PlanAllowances>,
        live: Arc<SqliteStore>,
        catalog: Arc<Catalog>,
        consumer: String,
    ) -> Self {
        HardLimits { allowances, live, catalog, consumer, reserved: Mutex::new(HashMap::new()) }
    }
}

#[async_trait]
impl meter_ingest::Quota for HardLimits {
    async fn refused(&self, events: &[Event]) -> Result<Vec<(usize, String)>, String> {
        let mut groups: BTreeMap<(&str, Period), Vec<usize>> = BTreeMap::new();
        for (i, e) in events.iter().enumerate() {
            groups.entry((e.tenant.as_str(), Period::containing(e.time_us))).or_default().push(i);
        }
        let mut refused = Vec::new();
        let mut accepted: Vec<(String, Reserved)> = Vec::new();
        for ((tenant, period), indexes) in groups {
            let limits = self.allowances.hard_limits(tenant, period);
            if limits.is_empty() {
                continue;
            }
            let bucket = period.to_string();
            // What is counted: read the marks before the counters, so that an event counted in
            // between is held twice (refusing early), never not at all.
            let mut ids: Vec<String> = indexes.iter().map(|&i| events[i].id.clone()).collect();
            let held: Vec<String> = {
                let r = self.reserved.lock().unwrap_or_else(|e| e.into_inner());
                r.get(tenant).map(|v| v.iter().map(|x| x.id.clone()).collect()).unwrap_or_default()
            };
            ids.extend(held);
            let counted = self.live.counted_ids(tenant, ids).await.map_err(|e| e.to_string())?;
            let mut known_values: HashMap<String, HashSet<String>> = HashMap::new();
            for (meter, _, _) in &limits {
                let values: Vec<String> = indexes
                    .iter()
                    .flat_map(|&i| self.catalog.contributions(&events[i]).0)
                    .filter(|(m, _)| self.catalog.meters()[*m].name == *meter)
                    .filter_map(|(_, c)| match c {
                        Contribution::Unique(v) => Some(v),
                        _ => None,
                    })
                    .collect();
                if !values.is_empty() {
                    let known =
                        self.live.counted_values(tenant, meter, &bucket, values).await.map_err(|e| e.to_string())?;
                    known_values.insert(meter.clone(), known);
                }
            }
            let coverage = Coverage { consumer: &self.consumer, partition: 0 };
            let usage = self.live.usage(tenant, period, coverage).await.map_err(|e| e.to_string())?;

            let mut reserved = self.reserved.lock().unwrap_or_else(|e| e.into_inner());
            let mine = reserved.entry(tenant.to_string()).or_default();
            mine.retain(|r| !counted.contains(&r.id) && r.at.elapsed() < RESERVED_FOR);
            let mut used: BTreeMap<&str, Decimal> = limits
                .iter()
                .map(|(m, _, _)| (m.as_str(), usage.meters.get(m).and_then(|t| t.period.value).unwrap_or_default()))
                .collect();
            let mut distinct: HashMap<String, HashSet<String>> = known_values;
            let mut add = |used: &mut BTreeMap<&str, Decimal>, meter: &str, a: &Add, apply: bool| -> Decimal {
                let now = used.get(meter).copied().unwrap_or_default();
                let after = match a {
                    Add::Quantity(q) => now.checked_add(*q).unwrap_or(Decimal::MAX),
                    Add::Distinct(v) => {
                        let seen = distinct.entry(meter.to_string()).or_default();
                        if seen.contains(v) {
                            now
                        } else {
                            if apply {
                                seen.insert(v.clone());
                            }
                            now + Decimal::ONE
                        }
                    }
                };
                if apply && let Some(u) = used.get_mut(meter) {
                    *u = after;
                }
                after
            };
            for r in mine.iter().filter(|r| r.period == period) {
                for (m, a) in &r.adds {
                    add(&mut used, m, a, true);
                }
            }
            let mut in_request = HashSet::new();
            for &i in &indexes {
                let e = &events[i];
                if counted.contains(&e.id) || !in_request.insert(e.id.as_str()) || mine.iter().any(|r| r.id == e.id) {
                    continue;
                }
                let mut adds = Vec::new();
                let mut over = None;
                for (m, c) in self.catalog.contributions(e).0 {
                    let name = self.catalog.meters()[m].name.as_str();
                    let Some((_, limit, plan)) = limits.iter().find(|(l, _, _)| l == name) else { continue };
                    let a = match c {
                        Contribution::Count => Add::Quantity(Decimal::ONE),
                        Contribution::Sum(q) => Add::Quantity(q),
                        Contribution::Unique(v) => Add::Distinct(v),
                        Contribution::Max(q) | Contribution::Latest(q) => {
                            if q > *limit {
                                over = Some((name.to_string(), q, *limit, plan.clone()));
                            }
                            continue;
                        }
                    };
                    let after = add(&mut used, name, &a, false);
                    if after > *limit {
                        over = Some((name.to_string(), after, *limit, plan.clone()));
                    }
                    adds.push((name.to_string(), a));
                }
                match over {
                    Some((name, after, limit, plan)) => refused.push((
                        i,
                        format!(
                            "would take tenant {tenant}'s {name} to {} in {period}, past the hard limit of {} of plan {plan}",
                            after.normalize(),
                            limit.normalize()
                        ),
                    )),
                    None => {
                        for (m, a) in &adds {
                            add(&mut used, m, a, true);
                        }
                        if !adds.is_empty() {
                            let r = Reserved { id: e.id.clone(), period, adds, at: Instant::now() };
                            accepted.push((tenant.to_string(), r));
                        }
                    }
                }
            }
        }
        // A request is taken whole or not at all: hold its events only when it is taken.
        if refused.is_empty() {
            let mut reserved = self.reserved.lock().unwrap_or_else(|e| e.into_inner());
            for (tenant, r) in accepted {
                reserved.entry(tenant).or_default().push(r);
            }
        }
        refused.sort_by_key(|(i, _)| *i);
        Ok(refused)
    }
}
