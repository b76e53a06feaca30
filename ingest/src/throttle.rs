//! Per-tenant rate quotas: events and requests a second, by plan, so that one tenant's flood is
//! answered 429 with `Retry-After` rather than slowing everyone's ingest.
//!
//! Each tenant has two buckets (events, requests), kept with the generic cell rate algorithm:
//! a bucket is one instant, its theoretical arrival time (TAT); `n` more fit if the TAT, once
//! advanced by `n` emission intervals, stays within the burst of now. A request is admitted
//! only if every bucket it touches has room (each tenant whose events it carries: `n` events and
//! one request), and then all of them are advanced at once; a refused request leaves every
//! bucket as it was. governor (in the lock file for the Stripe client) takes cells from one key
//! at a time and gives none back, so a request carrying several tenants' events, refused for
//! one of them, would have spent the others' quota: hence these few lines here.
//!
//! On several ingest hosts each host keeps its own buckets and enforces `1/hosts` of every
//! quota ([`Quotas::hosts`]). A tenant whose requests are spread evenly over the hosts gets its
//! quota; none gets more than its quota (plus a burst on each host); one that reaches fewer
//! hosts gets that share of it.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One plan's rate quota, for the whole deployment.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateQuota {
    /// Events a second.
    pub events_per_second: NonZeroU32,
    /// Requests a second (each tenant whose events a request carries counts it); none: only
    /// events are limited.
    pub requests_per_second: Option<NonZeroU32>,
    /// How much more than the rate may arrive at once: this long's worth of the quota.
    pub burst: Duration,
}

impl RateQuota {
    /// The burst when none is configured: a second's worth of the quota.
    pub const DEFAULT_BURST: Duration = Duration::from_secs(1);
}

/// Every tenant's rate quota.
#[derive(Clone, Debug, PartialEq)]
pub struct Quotas {
    /// The quota of a tenant whose plan has none of its own, or that has no plan; none: such a
    /// tenant is not limited.
    pub default: Option<RateQuota>,
    /// Quotas by plan code.
    pub plans: HashMap<String, RateQuota>,
    /// Ingest hosts sharing the quotas: each enforces this share of them.
    pub hosts: NonZeroU32,
}

impl Default for Quotas {
    /// No quota at all, on one host.
    fn default() -> Self {
        Quotas { default: None, plans: HashMap::new(), hosts: NonZeroU32::MIN }
    }
}

impl Quotas {
    /// Whether any tenant is limited.
    pub fn any(&self) -> bool {
        self.default.is_some() || !self.plans.is_empty()
    }

    /// The quota `plan` (or no plan) runs under.
    fn of(&self, plan: Option<&str>) -> Option<&RateQuota> {
        plan.and_then(|p| self.plans.get(p)).or(self.default.as_ref())
    }

    /// Why a quota cannot take a request of `max_events` events on one host, if it cannot: the
    /// events its burst lets a host take at once.
    pub fn too_small_for(&self, quota: &RateQuota, max_events: usize) -> Option<u64> {
        let at_once = Limit::events(quota, self.hosts).capacity().floor();
        (at_once < max_events as f64).then_some(at_once as u64)
    }
}

/// Which plan a tenant is on now.
pub trait Plans: Send + Sync {
    /// `tenant`'s plan, if it has one.
    fn plan_of(&self, tenant: &str) -> Option<String>;
}

/// What a refused request ran out of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exceeded {
    /// Events a second.
    Events,
    /// Requests a second.
    Requests,
}

impl Exceeded {
    /// Its name, in errors and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Exceeded::Events => "events",
            Exceeded::Requests => "requests",
        }
    }
}

/// A request refused for a tenant's quota.
#[derive(Clone, Debug, PartialEq)]
pub struct Throttled {
    /// The tenant.
    pub tenant: String,
    /// Its plan, if it has one.
    pub plan: Option<String>,
    /// What it ran out of.
    pub exceeded: Exceeded,
    /// Its quota of that, a second, for the whole deployment.
    pub per_second: u32,
    /// When the same request would be admitted, if nothing else arrives first.
    pub retry_after: Duration,
}

impl Throttled {
    /// `Retry-After`, in whole seconds (at least one).
    pub fn retry_after_secs(&self) -> u64 {
        (self.retry_after.as_secs() + u64::from(self.retry_after.subsec_nanos() > 0)).max(1)
    }
}

impl std::fmt::Display for Throttled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let plan = match &self.plan {
            Some(p) => format!("plan {p:?}'s"),
            None => "the default".to_string(),
        };
        write!(
            f,
            "tenant {:?} sent more than its quota of {} {} a second ({plan} quota); retry after {} s",
            self.tenant,
            self.per_second,
            self.exceeded.as_str(),
            self.retry_after_secs()
        )
    }
}

/// One bucket's rule on one host: a cell every `interval_ns`, up to `burst_ns` ahead of now.
#[derive(Clone, Copy, Debug)]
struct Limit {
    interval_ns: f64,
    burst_ns: f64,
}

impl Limit {
    fn new(per_second: NonZeroU32, burst: Duration, hosts: NonZeroU32) -> Self {
        let interval_ns = 1e9 * f64::from(hosts.get()) / f64::from(per_second.get());
        // The burst is never less than one cell, so that a single event or request always fits.
        Limit { interval_ns, burst_ns: (burst.as_nanos() as f64).max(interval_ns) }
    }

    fn events(quota: &RateQuota, hosts: NonZeroU32) -> Self {
        Limit::new(quota.events_per_second, quota.burst, hosts)
    }

    /// Cells a full bucket holds (with [`SLACK`], as [`Limit::take`] admits them).
    fn capacity(&self) -> f64 {
        self.burst_ns * (1.0 + SLACK) / self.interval_ns
    }

    /// The bucket's TAT after `n` more cells at `now`, or how long until they would fit.
    fn take(&self, tat: f64, now: f64, n: u32) -> Result<f64, f64> {
        let next = tat.max(now) + f64::from(n) * self.interval_ns;
        match next - now <= self.burst_ns * (1.0 + SLACK) {
            true => Ok(next),
            false => Err(next - now - self.burst_ns),
        }
    }
}

/// A hair of slack for the float arithmetic: a full burst into an empty bucket fits, and the
/// configuration's check ([`Quotas::too_small_for`]) agrees with what is admitted.
const SLACK: f64 = 1e-9;

/// What an admitted request took from each tenant's buckets (ns of their TATs), to give back if
/// the request is refused after all ([`Throttle::give_back`]).
#[derive(Debug, Default)]
#[must_use = "what an admitted request took is given back if the request fails"]
pub struct Taken(Vec<(String, f64, f64)>);

/// A tenant's two buckets: the TAT of its events and of its requests (ns since the throttle
/// started).
#[derive(Clone, Copy, Debug, Default)]
struct Buckets {
    events: f64,
    requests: f64,
}

/// Admits requests within their tenants' quotas.
pub struct Throttle {
    quotas: Quotas,
    plans: Arc<dyn Plans>,
    started: Instant,
    state: Mutex<State>,
}

struct State {
    buckets: HashMap<String, Buckets>,
    /// Idle buckets (those whose TATs are past: a fresh bucket would say the same) are dropped
    /// once there are this many, which then becomes twice those left (at least
    /// [`SWEEP_FROM`]): the map stays within twice the tenants recently sending, and a sweep
    /// (a pass over all of them under the lock) comes after as many new tenants as it passed.
    sweep_at: usize,
}

impl Default for State {
    fn default() -> Self {
        State { buckets: HashMap::new(), sweep_at: SWEEP_FROM }
    }
}

/// The fewest buckets a sweep waits for.
const SWEEP_FROM: usize = 4096;

impl Throttle {
    /// Quotas `quotas`, each tenant's plan asked of `plans`.
    pub fn new(quotas: Quotas, plans: Arc<dyn Plans>) -> Self {
        Throttle { quotas, plans, started: Instant::now(), state: Mutex::default() }
    }

    /// Admits a request carrying `events` events of each tenant, or says which tenant's quota
    /// it would exceed for longest (nothing is then taken from any).
    pub fn admit(&self, events: &[(&str, u32)]) -> Result<Taken, Throttled> {
        self.admit_at(self.started.elapsed(), events)
    }

    /// Whether `tenant` could have a request of one event admitted now (nothing is taken): a
    /// tenant key's request is refused before its body is parsed when it could not, so that a
    /// flood of refused requests costs little.
    pub fn could_admit(&self, tenant: &str) -> Result<(), Throttled> {
        self.check_at(self.started.elapsed(), &[(tenant, 1)], false).map(|_| ())
    }

    /// Gives back what an admitted request took, when it was refused after all (a hard limit,
    /// a conflict, the log unavailable): a request that stores nothing costs no quota.
    pub fn give_back(&self, taken: Taken) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        for (tenant, events, requests) in taken.0 {
            if let Some(b) = state.buckets.get_mut(&tenant) {
                b.events -= events;
                b.requests -= requests;
            }
        }
    }

    /// [`Throttle::admit`] at `now` after the throttle started.
    fn admit_at(&self, now: Duration, events: &[(&str, u32)]) -> Result<Taken, Throttled> {
        self.check_at(now, events, true)
    }

    /// Whether a request carrying `events` fits at `now`; if it does and `take`, its events and
    /// its request are taken from each tenant's buckets. If it does not, the refusal names the
    /// bucket that needs longest, so that `Retry-After` is when the whole request fits.
    fn check_at(&self, now: Duration, events: &[(&str, u32)], take: bool) -> Result<Taken, Throttled> {
        let hosts = self.quotas.hosts;
        let limited: Vec<(&str, u32, Option<String>, &RateQuota)> = events
            .iter()
            .filter_map(|&(tenant, n)| {
                // With no plan of its own, every tenant runs under the default.
                let plan = if self.quotas.plans.is_empty() { None } else { self.plans.plan_of(tenant) };
                let quota = self.quotas.of(plan.as_deref())?;
                Some((tenant, n, plan, quota))
            })
            .collect();
        if limited.is_empty() {
            return Ok(Taken::default());
        }
        let now = now.as_nanos() as f64;
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = Vec::with_capacity(limited.len());
        let mut worst: Option<(f64, usize, Exceeded, NonZeroU32)> = None;
        for (i, (tenant, n, _, quota)) in limited.iter().enumerate() {
            let was = state.buckets.get(*tenant).copied().unwrap_or_default();
            let mut refuse = |wait: f64, exceeded, per_second| {
                if worst.is_none_or(|(w, ..)| wait > w) {
                    worst = Some((wait, i, exceeded, per_second));
                }
            };
            let limit = Limit::events(quota, hosts);
            let events = limit.take(was.events, now, *n).unwrap_or_else(|wait| {
                refuse(wait, Exceeded::Events, quota.events_per_second);
                was.events
            });
            let mut took = (f64::from(*n) * limit.interval_ns, 0.0);
            let requests = match quota.requests_per_second {
                Some(rps) => {
                    let limit = Limit::new(rps, quota.burst, hosts);
                    took.1 = limit.interval_ns;
                    limit.take(was.requests, now, 1).unwrap_or_else(|wait| {
                        refuse(wait, Exceeded::Requests, rps);
                        was.requests
                    })
                }
                None => was.requests,
            };
            next.push((*tenant, Buckets { events, requests }, took));
        }
        if let Some((wait, i, exceeded, per_second)) = worst {
            let (tenant, _, plan, _) = &limited[i];
            return Err(Throttled {
                tenant: tenant.to_string(),
                plan: plan.clone(),
                exceeded,
                per_second: per_second.get(),
                retry_after: Duration::from_nanos(wait.ceil() as u64),
            });
        }
        if !take {
            return Ok(Taken::default());
        }
        let mut taken = Vec::with_capacity(next.len());
        for (tenant, buckets, (events, requests)) in next {
            taken.push((tenant.to_string(), events, requests));
            match state.buckets.get_mut(tenant) {
                Some(b) => *b = buckets,
                None => {
                    state.buckets.insert(tenant.to_string(), buckets);
                }
            }
        }
        if state.buckets.len() >= state.sweep_at {
            state.buckets.retain(|_, b| b.events > now || b.requests > now);
            state.sweep_at = (2 * state.buckets.len()).max(SWEEP_FROM);
        }
        Ok(Taken(taken))
    }

    /// Tenants with a bucket kept (a test's look at the sweep).
    #[cfg(test)]
    fn kept(&self) -> usize {
        self.state.lock().unwrap().buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plans from a fixed list.
    struct Fixed(Vec<(&'static str, &'static str)>);

    impl Plans for Fixed {
        fn plan_of(&self, tenant: &str) -> Option<String> {
            self.0.iter().find(|(t, _)| *t == tenant).map(|(_, p)| p.to_string())
        }
    }

    fn quota(events: u32, requests: Option<u32>) -> RateQuota {
        RateQuota {
            events_per_second: NonZeroU32::new(events).unwrap(),
            requests_per_second: requests.map(|r| NonZeroU32::new(r).unwrap()),
            burst: RateQuota::DEFAULT_BURST,
        }
    }

    fn throttle(default: Option<RateQuota>, plans: &[(&str, RateQuota)], hosts: u32) -> Throttle {
        let quotas = Quotas {
            default,
            plans: plans.iter().map(|(p, q)| (p.to_string(), *q)).collect(),
            hosts: NonZeroU32::new(hosts).unwrap(),
        };
        Throttle::new(quotas, Arc::new(Fixed(vec![("big", "pro")])))
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_tenant_gets_its_burst_then_its_rate() {
        let t = throttle(Some(quota(1000, None)), &[], 1);
        // A second's worth at once, then nothing more at that instant.
        assert!(t.admit_at(ms(0), &[("a", 1000)]).is_ok());
        let refused = t.admit_at(ms(0), &[("a", 1)]).unwrap_err();
        assert_eq!((refused.exceeded, refused.per_second, refused.tenant.as_str()), (Exceeded::Events, 1000, "a"));
        assert_eq!(refused.retry_after, ms(1));
        assert_eq!(refused.retry_after_secs(), 1);
        // 100 ms later, 100 events more fit, and not 101.
        assert!(t.admit_at(ms(100), &[("a", 101)]).is_err());
        assert!(t.admit_at(ms(100), &[("a", 100)]).is_ok());
        // Over ten seconds at twice the rate, half is admitted.
        let mut admitted = 0;
        for i in 0..200u64 {
            if t.admit_at(ms(1000 + i * 50), &[("a", 100)]).is_ok() {
                admitted += 100;
            }
        }
        assert!((9_900..=11_000).contains(&admitted), "{admitted}");
    }

    #[test]
    fn a_refusal_says_how_long_to_wait_for_the_whole_request() {
        let t = throttle(Some(quota(100, None)), &[], 1);
        assert!(t.admit_at(ms(0), &[("a", 100)]).is_ok());
        // 50 events need half a second; Retry-After rounds up to whole seconds.
        let refused = t.admit_at(ms(0), &[("a", 50)]).unwrap_err();
        assert_eq!(refused.retry_after, ms(500));
        assert_eq!(refused.retry_after_secs(), 1);
        assert!(t.admit_at(ms(499), &[("a", 50)]).is_err());
        assert!(t.admit_at(ms(500), &[("a", 50)]).is_ok());
        let long = Throttled { retry_after: Duration::from_millis(2001), ..refused };
        assert_eq!(long.retry_after_secs(), 3);
        assert!(
            long.to_string().contains("quota of 100 events a second (the default quota); retry after 3 s"),
            "{long}"
        );
    }

    #[test]
    fn tenants_do_not_share_a_bucket() {
        let t = throttle(Some(quota(100, None)), &[], 1);
        assert!(t.admit_at(ms(0), &[("a", 100)]).is_ok());
        assert!(t.admit_at(ms(0), &[("a", 1)]).is_err());
        assert!(t.admit_at(ms(0), &[("b", 100)]).is_ok());
    }

    #[test]
    fn a_plan_has_its_own_quota_and_the_default_covers_the_rest() {
        let t = throttle(Some(quota(10, None)), &[("pro", quota(1000, None))], 1);
        assert!(t.admit_at(ms(0), &[("big", 1000)]).is_ok());
        let refused = t.admit_at(ms(0), &[("small", 11)]).unwrap_err();
        assert_eq!((refused.plan, refused.per_second), (None, 10));
        let refused = t.admit_at(ms(0), &[("big", 1)]).unwrap_err();
        assert_eq!((refused.plan.as_deref(), refused.per_second), (Some("pro"), 1000));
        assert!(refused.to_string().contains("plan \"pro\"'s quota"), "{refused}");
        // Without a default, a tenant on no limited plan is not limited.
        let t = throttle(None, &[("pro", quota(10, None))], 1);
        assert!(t.admit_at(ms(0), &[("small", 1_000_000)]).is_ok());
        assert!(t.admit_at(ms(0), &[("big", 11)]).is_err());
    }

    #[test]
    fn requests_are_limited_apart_from_events() {
        let t = throttle(Some(quota(1000, Some(2))), &[], 1);
        assert!(t.admit_at(ms(0), &[("a", 1)]).is_ok());
        assert!(t.admit_at(ms(0), &[("a", 1)]).is_ok());
        let refused = t.admit_at(ms(0), &[("a", 1)]).unwrap_err();
        assert_eq!((refused.exceeded, refused.per_second, refused.retry_after), (Exceeded::Requests, 2, ms(500)));
        assert!(refused.to_string().contains("2 requests a second"), "{refused}");
        assert!(t.admit_at(ms(500), &[("a", 1)]).is_ok());
    }

    #[test]
    fn a_refused_request_takes_nothing_from_any_tenant() {
        let t = throttle(Some(quota(100, Some(100))), &[], 1);
        assert!(t.admit_at(ms(0), &[("b", 100)]).is_ok());
        // a's 60 would fit, b's 1 does not: a keeps its whole burst.
        let refused = t.admit_at(ms(0), &[("a", 60), ("b", 1)]).unwrap_err();
        assert_eq!(refused.tenant, "b");
        assert!(t.admit_at(ms(0), &[("a", 100)]).is_ok());
        // A refused request is not counted as a request either.
        let t = throttle(Some(quota(10, Some(1))), &[], 1);
        assert!(t.admit_at(ms(0), &[("a", 11)]).is_err());
        assert!(t.admit_at(ms(0), &[("a", 10)]).is_ok());
    }

    #[test]
    fn each_host_enforces_its_share() {
        let t = throttle(Some(quota(1000, Some(10))), &[], 4);
        assert!(t.admit_at(ms(0), &[("a", 250)]).is_ok());
        let refused = t.admit_at(ms(0), &[("a", 1)]).unwrap_err();
        // The quota named is the deployment's; the wait is this host's.
        assert_eq!((refused.per_second, refused.retry_after), (1000, ms(4)));
        let t = throttle(Some(quota(1000, Some(10))), &[], 4);
        assert!(t.admit_at(ms(0), &[("a", 1)]).is_ok());
        assert!(t.admit_at(ms(0), &[("a", 1)]).is_ok());
        assert_eq!(t.admit_at(ms(0), &[("a", 1)]).unwrap_err().exceeded, Exceeded::Requests);
    }

    #[test]
    fn a_quota_too_small_for_the_largest_request_is_named() {
        let quotas = Quotas { hosts: NonZeroU32::new(4).unwrap(), ..Quotas::default() };
        assert_eq!(quotas.too_small_for(&quota(2000, None), 1000), Some(500));
        assert_eq!(quotas.too_small_for(&quota(4000, None), 1000), None);
        let quotas = Quotas::default();
        assert_eq!(quotas.too_small_for(&RateQuota { burst: ms(250), ..quota(2000, None) }, 1000), Some(500));
    }

    #[test]
    fn could_admit_takes_nothing() {
        let t = throttle(Some(quota(10, Some(1))), &[], 1);
        for _ in 0..5 {
            assert!(t.check_at(ms(0), &[("a", 1)], false).is_ok());
        }
        assert!(t.admit_at(ms(0), &[("a", 10)]).is_ok());
        let refused = t.check_at(ms(0), &[("a", 1)], false).unwrap_err();
        assert_eq!(
            (refused.exceeded, refused.retry_after),
            (Exceeded::Requests, ms(1000)),
            "the longer of its two waits"
        );
        assert!(t.could_admit("b").is_ok());
    }

    #[test]
    fn idle_buckets_are_dropped_and_live_ones_kept() {
        let t = throttle(Some(quota(1000, None)), &[], 1);
        for i in 0..SWEEP_FROM as u64 - 1 {
            let _ = t.admit_at(ms(0), &[(&format!("t{i}"), 1)]).unwrap();
        }
        assert_eq!(t.kept(), SWEEP_FROM - 1);
        // A second later every bucket is full again: the sweep drops them all but the busy one.
        let _ = t.admit_at(ms(1000), &[("busy", 5)]).unwrap();
        assert_eq!(t.kept(), 1);
        // Buckets still in use are kept, and the next sweep waits for twice as many.
        let t = throttle(Some(quota(1000, None)), &[], 1);
        for i in 0..SWEEP_FROM as u64 {
            let _ = t.admit_at(ms(0), &[(&format!("t{i}"), 1)]).unwrap();
        }
        assert_eq!(t.kept(), SWEEP_FROM, "each bucket's TAT is 1 ms ahead: none idle");
        let _ = t.admit_at(ms(2), &[("late", 1)]).unwrap();
        assert_eq!(t.kept(), SWEEP_FROM + 1, "no sweep before twice as many");
    }

    #[test]
    fn what_a_refused_request_took_is_given_back() {
        let t = throttle(Some(quota(100, Some(2))), &[], 1);
        let taken = t.admit_at(ms(0), &[("a", 60), ("b", 100)]).unwrap();
        assert!(t.admit_at(ms(0), &[("a", 41)]).is_err());
        t.give_back(taken);
        // Both tenants have their whole burst again, events and requests.
        let _ = t.admit_at(ms(0), &[("a", 100)]).unwrap();
        let _ = t.admit_at(ms(0), &[("b", 100)]).unwrap();
        let _ = t.admit_at(ms(0), &[("a", 0)]).unwrap();
        assert_eq!(t.admit_at(ms(0), &[("a", 0)]).unwrap_err().exceeded, Exceeded::Requests, "two requests each");
    }

    #[test]
    fn a_refusal_names_the_longest_wait() {
        // a lacks 1 event (10 ms); b lacks a request (500 ms): the request fits in 500 ms.
        let t = throttle(Some(quota(100, Some(2))), &[], 1);
        let _ = t.admit_at(ms(0), &[("a", 100)]).unwrap();
        let _ = t.admit_at(ms(0), &[("b", 1)]).unwrap();
        let _ = t.admit_at(ms(0), &[("b", 1)]).unwrap();
        let refused = t.admit_at(ms(0), &[("a", 1), ("b", 1)]).unwrap_err();
        assert_eq!(
            (refused.tenant.as_str(), refused.exceeded, refused.retry_after),
            ("b", Exceeded::Requests, ms(500))
        );
        // One tenant over both: its longer wait.
        let t = throttle(Some(quota(1000, Some(1))), &[], 4);
        let _ = t.admit_at(ms(0), &[("a", 250)]).unwrap();
        let refused = t.admit_at(ms(0), &[("a", 1)]).unwrap_err();
        assert_eq!(
            (refused.exceeded, refused.retry_after, refused.retry_after_secs()),
            (Exceeded::Requests, ms(4000), 4)
        );
    }

    #[test]
    fn the_configuration_check_agrees_with_what_is_admitted() {
        // 55 a second with a burst of a second: 1e9 / (1e9 / 55) is a hair under 55 in floats.
        let q = quota(55, None);
        assert_eq!(Quotas::default().too_small_for(&q, 55), None);
        let t = throttle(Some(q), &[], 1);
        assert!(t.admit_at(ms(0), &[("a", 55)]).is_ok());
        assert_eq!(Quotas::default().too_small_for(&q, 56), Some(55));
    }
}
