//! Hard limits at ingest: a tenant's events for a hard-limited meter are refused once the
//! live counter, plus what this process accepted that is not counted yet, plus the request's
//! own new events, would pass the plan's included quantity.

use crate::PlanAllowances;
use async_trait::async_trait;
use meter_schemas::{Catalog, Contribution, Event, Period};
use meter_store::{Decide, Hold, LimitQuery, LimitSnapshot, LimitState, LiveStore};
use rust_decimal::Decimal;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long an accepted event is held against its limit while waiting to be counted, at least:
/// it is let go after this only if the aggregator has counted something since it was accepted
/// (its append failed, say). While the aggregator counts nothing (down), it stays held and the
/// limit errs on the side of refusing.
const RESERVED_FOR: Duration = Duration::from_secs(60);

// Each check looks up only the held events not yet seen counted (the few in flight to the
// aggregator). One seen counted at progress P is counted for every read at P or later; a check
// that read before P (overtaken between its read and its decision) still adds it. So an event
// seen counted is let go only once every check reading now began after it was seen.

/// Accepted events not yet known counted, and the checks between their read and decision.
#[derive(Default)]
struct Held {
    by_tenant: HashMap<String, Vec<Reserved>>,
    /// When each check in flight began, by ticket (issued in order: the first is the oldest).
    reading: BTreeMap<u64, Instant>,
    next_ticket: u64,
}

/// A check's place in [`Held::reading`], given up when the check ends (or is dropped).
struct Reading<'a> {
    held: &'a Mutex<Held>,
    ticket: u64,
}

impl Drop for Reading<'_> {
    fn drop(&mut self) {
        self.held.lock().unwrap_or_else(|e| e.into_inner()).reading.remove(&self.ticket);
    }
}

/// An accepted event not yet counted: what it adds to each hard-limited meter.
struct Reserved {
    id: String,
    period: Period,
    adds: Vec<(String, Add)>,
    at: Instant,
    /// The [`LimitSnapshot::progress`] of the check that accepted it.
    accepted_at: u64,
    /// When a check first saw it counted, and that check's [`LimitSnapshot::progress`].
    counted_at: Option<(Instant, u64)>,
}

#[derive(Clone, serde::Serialize, serde::Deserialize)]
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
    pub live: Arc<dyn LiveStore>,
    /// Meters.
    pub catalog: Arc<Catalog>,
    /// Accepted events of hard-limited tenants not known counted yet.
    held: Mutex<Held>,
}

impl HardLimits {
    /// Hard limits checked against `live`.
    pub fn new(allowances: Arc<PlanAllowances>, live: Arc<dyn LiveStore>, catalog: Arc<Catalog>) -> Self {
        HardLimits { allowances, live, catalog, held: Mutex::default() }
    }
}

/// What an event adds to each limited meter of its check (by position in its limits).
type Adds = Vec<(usize, Contribution)>;

/// An accepted event: its id and what it adds to each limited meter, by name.
type Accepted = (String, Vec<(String, Add)>);

/// One tenant's period of a check, owned, so that a shared store's transaction can decide it.
struct Check {
    tenant: String,
    period: Period,
    /// Limited meters: name, included quantity, plan.
    limits: Vec<(String, Decimal, String)>,
    /// Request index, event id, and what it adds to each limited meter (by position in `limits`).
    events: Vec<(usize, String, Adds)>,
}

impl Check {
    fn query(&self, held_ids: impl Iterator<Item = String>) -> LimitQuery {
        let mut ids: Vec<String> = self.events.iter().map(|(_, id, _)| id.clone()).collect();
        ids.extend(held_ids);
        let meters = self
            .limits
            .iter()
            .enumerate()
            .map(|(p, (meter, _, _))| {
                let values = self
                    .events
                    .iter()
                    .flat_map(|(_, _, adds)| adds)
                    .filter_map(|(q, c)| match c {
                        Contribution::Unique(v) if *q == p => Some(v.clone()),
                        _ => None,
                    })
                    .collect();
                (meter.clone(), values)
            })
            .collect();
        LimitQuery { tenant: self.tenant.clone(), bucket: self.period.to_string(), ids, meters }
    }

    /// The one rule of a check: the events of the request that would take a limited meter past
    /// its limit, given the counters (`state`), the accepted events not counted yet
    /// (`uncounted`: what each adds) and every event held for the tenant (`held`: resends of
    /// those go through). Returns the refusals and what each accepted event adds.
    fn decide(
        self,
        state: LimitState,
        uncounted: &[&[(String, Add)]],
        held: &HashSet<&str>,
    ) -> (Vec<(usize, String)>, Vec<Accepted>) {
        let Check { tenant, period, limits, events } = self;
        let counted = state.counted;
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
        for adds in uncounted {
            for (m, a) in *adds {
                add(&mut used, m, a, true);
            }
        }
        let (mut refused, mut accepted) = (Vec::new(), Vec::new());
        let mut in_request = HashSet::new();
        for (i, id, contributions) in events {
            if counted.contains(&id) || held.contains(id.as_str()) || !in_request.insert(id.clone()) {
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
                        accepted.push((id, adds));
                    }
                }
            }
        }
        (refused, accepted)
    }
}

impl HardLimits {
    /// The request's tenant periods with hard limits, and the events that add to them.
    fn checks(&self, events: &[Event]) -> Vec<Check> {
        // Events that add nothing to a limited meter need no check: a request of only those
        // reads nothing. `None`: a tenant period without hard limits.
        let mut checks: hashbrown::HashMap<(&str, Period), Option<Check>> = hashbrown::HashMap::new();
        for (i, e) in events.iter().enumerate() {
            let key = (e.tenant.as_str(), Period::containing(e.time_us));
            let check = checks.entry(key).or_insert_with(|| {
                let limits = self.allowances.hard_limits(key.0, key.1);
                (!limits.is_empty()).then(|| Check {
                    tenant: key.0.to_string(),
                    period: key.1,
                    limits,
                    events: Vec::new(),
                })
            });
            let Some(check) = check else { continue };
            let adds: Vec<(usize, Contribution)> = self
                .catalog
                .contributions(e)
                .0
                .into_iter()
                .filter_map(|(m, c)| {
                    let name = &self.catalog.meters()[m].name;
                    check.limits.iter().position(|(l, _, _)| l == name).map(|p| (p, c))
                })
                .collect();
            if !adds.is_empty() {
                check.events.push((i, e.id.clone(), adds));
            }
        }
        // By tenant and period: the same order whatever the hasher.
        let mut checks: Vec<Check> = checks.into_values().flatten().filter(|c| !c.events.is_empty()).collect();
        checks.sort_by(|a, b| (&a.tenant, a.period).cmp(&(&b.tenant, b.period)));
        checks
    }

    /// A check against the holds the live store keeps for every process of every host: the
    /// store locks each tenant's period, reads the counters and the holds not counted yet, and
    /// keeps what this check accepts, in one transaction. `None` when the store keeps no
    /// shared holds.
    async fn shared_check(&self, checks: Vec<Check>) -> Result<Option<Vec<(usize, String)>>, String> {
        let queries: Vec<LimitQuery> = checks.iter().map(|c| c.query(std::iter::empty())).collect();
        let decide: Decide = Box::new(move |snapshot: &LimitSnapshot, holds: &[Vec<Hold>]| {
            let mut refused = Vec::new();
            let mut new = Vec::new();
            for ((check, state), holds) in checks.into_iter().zip(snapshot.states.iter().cloned()).zip(holds) {
                // A hold that cannot be read is refused as an error, never counted as nothing
                // (that would let the limit be passed).
                let parsed = holds
                    .iter()
                    .map(|h| serde_json::from_str::<Vec<(String, Add)>>(&h.adds))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("a hard-limit hold of tenant {}: {e}", check.tenant))?;
                let uncounted: Vec<&[(String, Add)]> = parsed.iter().map(Vec::as_slice).collect();
                let held: HashSet<&str> = holds.iter().map(|h| h.id.as_str()).collect();
                let (r, accepted) = check.decide(state, &uncounted, &held);
                refused.extend(r);
                new.push(
                    accepted
                        .into_iter()
                        .map(|(id, adds)| {
                            Ok(Hold { id, adds: serde_json::to_string(&adds).map_err(|e| e.to_string())? })
                        })
                        .collect::<Result<Vec<_>, String>>()?,
                );
            }
            // A request is taken whole or not at all: hold its events only when it is taken.
            if !refused.is_empty() {
                new.iter_mut().for_each(Vec::clear);
            }
            Ok((new, refused))
        });
        self.live.limit_check(queries, RESERVED_FOR, decide).await.map_err(|e| e.to_string())
    }
}

#[async_trait]
impl meter_ingest::Quota for HardLimits {
    async fn refused(&self, events: &[Event]) -> Result<Vec<(usize, String)>, String> {
        let checks = self.checks(events);
        if checks.is_empty() {
            return Ok(Vec::new());
        }
        if self.live.shares_holds() {
            let mut refused = self.shared_check(checks).await?.unwrap_or_default();
            refused.sort_by_key(|(i, _)| *i);
            return Ok(refused);
        }
        // What is counted, for the whole request in one read: the request's ids and those held.
        let (queries, reading): (Vec<LimitQuery>, Reading) = {
            let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
            let ticket = held.next_ticket;
            held.next_ticket += 1;
            held.reading.insert(ticket, Instant::now());
            let reserved = &held.by_tenant;
            let queries = checks
                .iter()
                .map(|c| {
                    let held = reserved.get(&c.tenant).into_iter().flatten();
                    c.query(held.filter(|r| r.counted_at.is_none()).map(|r| r.id.clone()))
                })
                .collect();
            (queries, Reading { held: &self.held, ticket })
        };
        let LimitSnapshot { progress, states } = self.live.limit_states(queries).await.map_err(|e| e.to_string())?;
        let mut refused = Vec::new();
        let mut accepted: Vec<(String, Reserved)> = Vec::new();
        // Held from the first decision to the last reservation, so that concurrent requests
        // decide one after the other, each seeing what the others took.
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let oldest_other = held.reading.iter().find(|(t, _)| **t != reading.ticket).map(|(_, at)| *at);
        let reserved = &mut held.by_tenant;
        let touched: Vec<String> = checks.iter().map(|c| c.tenant.clone()).collect();
        for (check, state) in checks.into_iter().zip(states) {
            let (tenant, period) = (check.tenant.clone(), check.period);
            let mine = reserved.entry(tenant.clone()).or_default();
            let now = Instant::now();
            for r in mine.iter_mut().filter(|r| state.counted.contains(&r.id)) {
                r.counted_at.get_or_insert((now, progress));
            }
            // Held events add what this read does not count yet.
            let counted = &state.counted;
            let uncounted =
                |r: &Reserved| !counted.contains(&r.id) && r.counted_at.is_none_or(|(_, seen_at)| seen_at > progress);
            mine.retain(|r| match r.counted_at {
                None => now.duration_since(r.at) < RESERVED_FOR || progress <= r.accepted_at,
                Some((seen, _)) => uncounted(r) || oldest_other.is_some_and(|began| began <= seen),
            });
            let held: HashSet<&str> = mine.iter().map(|r| r.id.as_str()).collect();
            let adds: Vec<&[(String, Add)]> =
                mine.iter().filter(|r| r.period == period && uncounted(r)).map(|r| r.adds.as_slice()).collect();
            let (r, taken) = check.decide(state, &adds, &held);
            refused.extend(r);
            accepted.extend(taken.into_iter().map(|(id, adds)| {
                (tenant.clone(), Reserved { id, period, adds, at: now, accepted_at: progress, counted_at: None })
            }));
        }
        // A request is taken whole or not at all: hold its events only when it is taken.
        if refused.is_empty() {
            for (tenant, r) in accepted {
                reserved.entry(tenant).or_default().push(r);
            }
        }
        // A tenant with nothing held is forgotten (it may not send again).
        for tenant in &touched {
            if reserved.get(tenant).is_some_and(Vec::is_empty) {
                reserved.remove(tenant);
            }
        }
        drop(held);
        drop(reading);
        refused.sort_by_key(|(i, _)| *i);
        Ok(refused)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meter_ingest::Quota;
    use meter_rater::{Cycle, PriceBook, Setup};
    use meter_store::{Metered, Progress};

    /// A Starter tenant (agent invocations: a hard limit of 2,000) and its live store.
    async fn starter() -> (tempfile::TempDir, HardLimits) {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Arc::new(Catalog::new(vec![]).unwrap());
        let names: Vec<&str> = catalog.meters().iter().map(|m| m.name.as_str()).collect();
        let book = Arc::new(PriceBook::parse(meter_rater::pricebook::SAMPLE, &names, &["active_users"]).unwrap());
        let ledger = crate::Ledger::open(&dir.path().join("billing.db")).unwrap();
        let now = meter_schemas::period::now_us();
        let list = book.for_period(Period::containing(now)).unwrap();
        let setup =
            Setup { plan: "starter".into(), cycle: Cycle::Monthly, term_years: 1, auto_renew: true, trial: false };
        ledger.create("t", setup, now, "test", list).await.unwrap();
        let allowances = Arc::new(PlanAllowances::new(book));
        allowances.refresh(&ledger, now).await.unwrap();
        let live: Arc<dyn LiveStore> = Arc::new(
            meter_store::SqliteStore::open(&dir.path().join("usage.db"), meter_sqlite::Durability::Normal).unwrap(),
        );
        live.checkpoint("c").unwrap();
        (dir, HardLimits::new(allowances, live, catalog))
    }

    fn invocations(ids: std::ops::Range<usize>) -> Vec<Event> {
        let now = meter_schemas::period::now_us();
        ids.map(|i| Event {
            tenant: "t".into(),
            id: format!("e{i}"),
            code: "agent.invocation".into(),
            time_us: now,
            implicit_time: false,
            subscription: None,
            source: None,
            properties: serde_json::from_str(r#"{"model": "m", "input_tokens": 1, "output_tokens": 1}"#).unwrap(),
        })
        .collect()
    }

    /// The aggregator counts `events` (log offsets `from..`).
    fn count(limits: &HardLimits, events: &[Event], from: u64) {
        let metered: Vec<Metered> = events
            .iter()
            .enumerate()
            .map(|(n, e)| Metered {
                tenant: e.tenant.clone(),
                id: e.id.clone(),
                offset: from + n as u64,
                time_us: e.time_us,
                contributions: limits.catalog.contributions(e).0,
                groups: vec![],
            })
            .collect();
        let to = from + events.len() as u64;
        let progress =
            Progress { partitions: vec![meter_store::Advance { partition: 0, from, to }], watermark_us: None };
        limits.live.apply("c", limits.catalog.meters(), &metered, &progress).unwrap();
    }

    fn held(limits: &HardLimits) -> usize {
        limits.held.lock().unwrap().by_tenant.values().map(Vec::len).sum()
    }

    /// Accepted events are held until counted, then let go (no check was reading); counted and
    /// held ones add up to the limit exactly; resends are never refused.
    #[tokio::test]
    async fn held_and_counted_events_add_up_to_the_limit() {
        let (_dir, limits) = starter().await;
        let first = invocations(0..1990);
        assert!(limits.refused(&first).await.unwrap().is_empty());
        assert_eq!(held(&limits), 1990);
        // Not counted yet: held events count against the limit.
        let r = limits.refused(&invocations(1990..2001)).await.unwrap();
        assert_eq!(r.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [10], "only the 2,001st: {r:?}");
        assert!(r[0].1.contains("to 2001"), "{r:?}");
        count(&limits, &first, 0);
        // Now counted: seen so by this check and let go, and the 10 that fit are held.
        assert!(limits.refused(&invocations(1990..2000)).await.unwrap().is_empty());
        assert_eq!(held(&limits), 10, "the counted 1,990 are let go");
        assert_eq!(limits.refused(&invocations(2000..2001)).await.unwrap().len(), 1);
        // Resends of counted and of held events go through.
        assert!(limits.refused(&invocations(0..5)).await.unwrap().is_empty());
        assert!(limits.refused(&invocations(1995..2000)).await.unwrap().is_empty());
        count(&limits, &invocations(1990..2000), 1990);
        assert_eq!(limits.refused(&invocations(2000..2001)).await.unwrap().len(), 1, "2,000 counted");
        assert_eq!(held(&limits), 0);
        assert!(limits.held.lock().unwrap().by_tenant.is_empty(), "the tenant is forgotten");
    }

    /// An event never seen counted is held past a minute while the aggregator counts nothing
    /// (it may be down: refusing errs on the safe side), and let go once it has counted others.
    #[tokio::test]
    async fn an_uncounted_event_is_held_while_the_aggregator_stands_still() {
        let (_dir, limits) = starter().await;
        assert!(limits.refused(&invocations(0..1999)).await.unwrap().is_empty());
        let long_ago = Instant::now().checked_sub(Duration::from_secs(61)).unwrap();
        for r in limits.held.lock().unwrap().by_tenant.values_mut().flatten() {
            r.at = long_ago;
        }
        assert!(limits.refused(&invocations(1999..2000)).await.unwrap().is_empty());
        assert_eq!(limits.refused(&invocations(2000..2001)).await.unwrap().len(), 1, "the 1,999 still count");
        assert_eq!(held(&limits), 2000);
        // The aggregator moves on (another tenant's events) without counting the 1,999 (their
        // append failed, say): after a minute they are let go.
        let mut other = invocations(5000..5001);
        other[0].tenant = "other".into();
        count(&limits, &other, 0);
        assert!(limits.refused(&invocations(2000..2001)).await.unwrap().is_empty());
        assert_eq!(held(&limits), 2, "the 1,999 are let go");
    }

    /// An event seen counted is kept while a check that began before it was seen is reading:
    /// that check's read may not count it yet.
    #[tokio::test]
    async fn a_counted_event_is_kept_while_an_older_check_reads() {
        let (_dir, limits) = starter().await;
        let first = invocations(0..100);
        assert!(limits.refused(&first).await.unwrap().is_empty());
        count(&limits, &first, 0);
        // An older check is reading (it registered before the next one sees them counted).
        let older = {
            let mut h = limits.held.lock().unwrap();
            let ticket = h.next_ticket;
            h.next_ticket += 1;
            h.reading.insert(ticket, Instant::now());
            Reading { held: &limits.held, ticket }
        };
        assert!(limits.refused(&invocations(100..101)).await.unwrap().is_empty());
        assert_eq!(held(&limits), 101, "kept for the older check");
        drop(older);
        assert!(limits.refused(&invocations(101..102)).await.unwrap().is_empty());
        assert_eq!(held(&limits), 2, "let go once no older check reads");
    }
}
