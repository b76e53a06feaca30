//! Hard limits at ingest: a tenant's events for a hard-limited meter are refused once the
//! live counter, plus what this process accepted that is not counted yet, plus the request's
//! own new events, would pass the plan's included quantity.

use async_trait::async_trait;
use meter_billing::PlanAllowances;
use meter_schemas::{Catalog, Contribution, Event, Period};
use meter_store::{LimitQuery, SqliteStore};
use rust_decimal::Decimal;
use std::collections::{BTreeMap, HashMap, HashSet, btree_map};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long an accepted event is held against its limit while waiting to be counted (longer
/// only if the aggregator is down: then the limit errs on the side of refusing).
const RESERVED_FOR: Duration = Duration::from_secs(60);

/// How long an event is still held after a check saw it counted: a check that read the
/// counters before it was counted (and is deciding now) still needs it.
const COUNTED_GRACE: Duration = Duration::from_secs(10);

/// An accepted event not yet counted: what it adds to each hard-limited meter.
struct Reserved {
    id: String,
    period: Period,
    adds: Vec<(String, Add)>,
    at: Instant,
    /// When a check first saw it counted.
    counted_at: Option<Instant>,
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
    /// Accepted events of hard-limited tenants not counted yet, by tenant.
    reserved: Mutex<HashMap<String, Vec<Reserved>>>,
}

impl HardLimits {
    /// Hard limits checked against `live`.
    pub fn new(allowances: Arc<PlanAllowances>, live: Arc<SqliteStore>, catalog: Arc<Catalog>) -> Self {
        HardLimits { allowances, live, catalog, reserved: Mutex::new(HashMap::new()) }
    }
}

/// A tenant's period with hard limits, and the request's events that add to a limited meter.
struct Group {
    /// Limited meters: name, included quantity, plan.
    limits: Vec<(String, Decimal, String)>,
    /// Event index, and what it adds to each limited meter (by position in `limits`).
    events: Vec<(usize, Vec<(usize, Contribution)>)>,
}

#[async_trait]
impl meter_ingest::Quota for HardLimits {
    async fn refused(&self, events: &[Event]) -> Result<Vec<(usize, String)>, String> {
        // Events that add nothing to a limited meter need no check: a request of only those
        // reads nothing.
        let mut groups: BTreeMap<(&str, Period), Group> = BTreeMap::new();
        let mut unlimited: HashSet<(&str, Period)> = HashSet::new();
        for (i, e) in events.iter().enumerate() {
            let key = (e.tenant.as_str(), Period::containing(e.time_us));
            if unlimited.contains(&key) {
                continue;
            }
            let group = match groups.entry(key) {
                btree_map::Entry::Occupied(o) => o.into_mut(),
                btree_map::Entry::Vacant(v) => {
                    let limits = self.allowances.hard_limits(key.0, key.1);
                    if limits.is_empty() {
                        unlimited.insert(key);
                        continue;
                    }
                    v.insert(Group { limits, events: Vec::new() })
                }
            };
            let adds: Vec<(usize, Contribution)> = self
                .catalog
                .contributions(e)
                .0
                .into_iter()
                .filter_map(|(m, c)| {
                    let name = &self.catalog.meters()[m].name;
                    group.limits.iter().position(|(l, _, _)| l == name).map(|p| (p, c))
                })
                .collect();
            if !adds.is_empty() {
                group.events.push((i, adds));
            }
        }
        groups.retain(|_, g| !g.events.is_empty());
        if groups.is_empty() {
            return Ok(Vec::new());
        }
        // What is counted, for the whole request in one read: the request's ids and those held.
        let queries: Vec<LimitQuery> = {
            let reserved = self.reserved.lock().unwrap_or_else(|e| e.into_inner());
            groups
                .iter()
                .map(|((tenant, period), g)| {
                    let mut ids: Vec<String> = g.events.iter().map(|(i, _)| events[*i].id.clone()).collect();
                    ids.extend(reserved.get(*tenant).into_iter().flatten().map(|r| r.id.clone()));
                    let meters = g
                        .limits
                        .iter()
                        .enumerate()
                        .map(|(p, (meter, _, _))| {
                            let values = g
                                .events
                                .iter()
                                .flat_map(|(_, adds)| adds)
                                .filter_map(|(q, c)| match c {
                                    Contribution::Unique(v) if *q == p => Some(v.clone()),
                                    _ => None,
                                })
                                .collect();
                            (meter.clone(), values)
                        })
                        .collect();
                    LimitQuery { tenant: tenant.to_string(), bucket: period.to_string(), ids, meters }
                })
                .collect()
        };
        let states = self.live.limit_states(queries).await.map_err(|e| e.to_string())?;
        let mut refused = Vec::new();
        let mut accepted: Vec<(String, Reserved)> = Vec::new();
        // Held from the first decision to the last reservation, so that concurrent requests
        // decide one after the other, each seeing what the others took.
        let mut reserved = self.reserved.lock().unwrap_or_else(|e| e.into_inner());
        for (((tenant, period), group), state) in groups.into_iter().zip(states) {
            let Group { limits, events: mine_in_request } = group;
            let counted = state.counted;
            let mine = reserved.entry(tenant.to_string()).or_default();
            let now = Instant::now();
            for r in mine.iter_mut().filter(|r| counted.contains(&r.id)) {
                r.counted_at.get_or_insert(now);
            }
            mine.retain(|r| {
                now.duration_since(r.at) < RESERVED_FOR
                    && r.counted_at.is_none_or(|t| now.duration_since(t) < COUNTED_GRACE)
            });
            let mut used: BTreeMap<&str, Decimal> =
                limits.iter().map(|(m, _, _)| (m.as_str(), state.values.get(m).copied().unwrap_or_default())).collect();
            let mut distinct: HashMap<String, HashSet<String>> = state.known;
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
            // Held events add what this read does not count yet (one held since the read added
            // is not in `counted`: added again, which errs on the side of refusing).
            for r in mine.iter().filter(|r| r.period == period && !counted.contains(&r.id)) {
                for (m, a) in &r.adds {
                    add(&mut used, m, a, true);
                }
            }
            let mut in_request = HashSet::new();
            for (i, contributions) in mine_in_request {
                let e = &events[i];
                if counted.contains(&e.id) || !in_request.insert(e.id.as_str()) || mine.iter().any(|r| r.id == e.id) {
                    continue;
                }
                let mut adds = Vec::new();
                let mut over = None;
                for (p, c) in contributions {
                    let (name, limit, plan) = &limits[p];
                    let name = name.as_str();
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
                            let r = Reserved { id: e.id.clone(), period, adds, at: now, counted_at: None };
                            accepted.push((tenant.to_string(), r));
                        }
                    }
                }
            }
        }
        // A request is taken whole or not at all: hold its events only when it is taken.
        if refused.is_empty() {
            for (tenant, r) in accepted {
                reserved.entry(tenant).or_default().push(r);
            }
        }
        drop(reserved);
        refused.sort_by_key(|(i, _)| *i);
        Ok(refused)
    }
}
