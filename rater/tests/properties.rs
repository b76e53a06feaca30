//! Properties of the rater, 10,000 cases each.

mod common;

use common::*;
use meter_rater::price::{Price, Tier};
use meter_rater::{Command, Currency, Cycle, Error, Setup, Subscription, Usage, prorate};
use meter_schemas::{Contribution, Tally};
use proptest::prelude::*;
use rust_decimal::Decimal;
use std::collections::{BTreeMap, BTreeSet};

const PLANS: &[&str] = &["starter", "professional", "enterprise", "enterprise_plus"];
const CYCLES: &[Cycle] = &[Cycle::Monthly, Cycle::Quarterly, Cycle::Annual];
const NOV_START: i64 = 1_793_491_200_000_000; // 2026-11-01T00:00:00Z
const DAY: i64 = 86_400_000_000;

fn config() -> ProptestConfig {
    ProptestConfig { cases: 10_000, ..ProptestConfig::default() }
}

/// A subscription created up to 120 days before November 2026 (or during it), then up to four
/// commands at increasing instants; refused commands are skipped.
#[derive(Clone, Debug)]
struct Scenario {
    plan: usize,
    cycle: usize,
    term_years: u32,
    trial: bool,
    tenant: usize,
    created: i64,
    commands: Vec<(i64, u8, usize, usize)>,
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (
        0..PLANS.len(),
        0..CYCLES.len(),
        1u32..4,
        any::<bool>(),
        0usize..3,
        -120 * DAY..30 * DAY,
        prop::collection::vec((0..20 * DAY, 0u8..5, 0..PLANS.len(), 0..CYCLES.len()), 0..4),
    )
        .prop_map(|(plan, cycle, term_years, trial, tenant, created, commands)| Scenario {
            plan,
            cycle,
            term_years,
            trial,
            tenant,
            created: NOV_START + created,
            commands,
        })
}

impl Scenario {
    /// The subscription, or `None` when its plan is not sold on its cycle.
    fn build(&self) -> Option<Subscription> {
        let tenant = ["acme", "globex", "initech"][self.tenant];
        let setup = Setup {
            plan: PLANS[self.plan].into(),
            cycle: CYCLES[self.cycle],
            term_years: self.term_years,
            auto_renew: true,
            trial: self.trial,
        };
        let mut s = Subscription::create("sub", tenant, &setup, self.created, "k", list()).ok()?;
        let mut t = self.created;
        for &(gap, kind, plan, cycle) in &self.commands {
            t += gap;
            let command = match kind {
                0 => Command::ChangePlan { plan: PLANS[plan].into(), cycle: Some(CYCLES[cycle]) },
                1 => Command::Cancel,
                2 => Command::Reactivate,
                3 => Command::PaymentFailed { grace_us: None },
                _ => Command::Convert,
            };
            let _ = s.apply(&command, t, "k", list());
        }
        s.advance(p("2026-11").end_us() - 1);
        Some(s)
    }

    fn rate(&self, s: &Subscription, usage: &Usage) -> Result<meter_rater::Invoice, Error> {
        meter_rater::rate(&s.tenant, &s.id, &s.entries, p("2026-11"), Some(usage), list())
    }
}

/// A decimal of 0 to `max` with up to `scale` places.
fn quantity(max: i64, scale: u32) -> impl Strategy<Value = Decimal> {
    (0..=max * 10i64.pow(scale)).prop_map(move |n| Decimal::new(n, scale))
}

fn usage_of(q: [Decimal; 6]) -> Usage {
    let mut u = Usage::default();
    for (m, v) in METERS.iter().zip(q) {
        u.totals.insert(m.to_string(), v);
    }
    u
}

fn usages() -> impl Strategy<Value = [Decimal; 6]> {
    [
        quantity(20_000, 0),
        quantity(20_000, 0),
        quantity(100_000, 0),
        quantity(20_000_000_000, 3),
        quantity(30_000_000, 0),
        quantity(8_000, 0),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn lines_sum_to_the_total(s in scenario(), q in usages()) {
        let Some(sub) = s.build() else { return Ok(()) };
        let inv = s.rate(&sub, &usage_of(q)).unwrap();
        let sum: Decimal = inv.lines.iter().map(|l| l.amount).sum();
        prop_assert_eq!(sum, inv.total);
        for l in &inv.lines {
            prop_assert_eq!(l.amount.scale(), 2, "{} is rounded once, to cents", l.amount);
        }
        // No amount, quantity or total is a negative zero: it is written "-0.00" and reads back
        // "0.00", so a close would not read back the bytes it was recorded with.
        let quantities = inv.lines.iter().filter_map(|l| l.quantity);
        for d in inv.lines.iter().map(|l| l.amount).chain(quantities).chain([inv.total]) {
            prop_assert!(!(d.is_zero() && d.is_sign_negative()), "a negative zero in {:?}", inv);
        }
    }

    #[test]
    fn the_total_never_decreases_as_usage_grows(s in scenario(), q in usages(), more in usages()) {
        let Some(sub) = s.build() else { return Ok(()) };
        let low = s.rate(&sub, &usage_of(q)).unwrap();
        let grown: [Decimal; 6] = std::array::from_fn(|i| q[i] + more[i]);
        let high = s.rate(&sub, &usage_of(grown)).unwrap();
        prop_assert!(high.total >= low.total, "{} then {}", low.total, high.total);
    }

    #[test]
    fn splitting_usage_into_batches_changes_nothing(
        s in scenario(),
        events in prop::collection::vec((0usize..6, 0u32..200, 0i64..5_000_000), 0..200),
        cuts in prop::collection::vec(0usize..200, 0..6),
    ) {
        let Some(sub) = s.build() else { return Ok(()) };
        let whole = fold(&[&events[..]]);
        let mut cuts: Vec<_> = cuts.into_iter().map(|c| c.min(events.len())).collect();
        cuts.sort();
        let mut batches = Vec::new();
        let mut from = 0;
        for c in cuts.into_iter().chain([events.len()]) {
            batches.push(&events[from..c]);
            from = c;
        }
        let split = fold(&batches);
        prop_assert_eq!(&whole, &split);
        prop_assert_eq!(s.rate(&sub, &whole).unwrap(), s.rate(&sub, &split).unwrap());
    }

    #[test]
    fn graduated_and_volume_prices_equal_a_unit_by_unit_reference(
        bounds in prop::collection::btree_set(1u32..400, 0..4),
        prices in prop::collection::vec((0u32..5_000, 0u32..100_000), 5),
        q in 0u32..1_500,
    ) {
        let mut tiers: Vec<Tier> = bounds
            .iter()
            .zip(&prices)
            .map(|(b, (unit, flat))| Tier { up_to: Some(Decimal::from(*b)), unit_price: Decimal::new(i64::from(*unit), 2), flat_fee: Decimal::new(i64::from(*flat), 2) })
            .collect();
        let (unit, flat) = prices[4];
        tiers.push(Tier { up_to: None, unit_price: Decimal::new(i64::from(unit), 2), flat_fee: Decimal::new(i64::from(flat), 2) });
        let tier_of = |n: u32| tiers.iter().position(|t| t.up_to.is_none_or(|u| Decimal::from(n) <= u)).unwrap();
        // Graduated: every unit at its own tier's price, and each tier's flat fee once reached.
        let mut graduated = Decimal::ZERO;
        let mut reached = BTreeSet::new();
        for n in 1..=q {
            graduated += tiers[tier_of(n)].unit_price;
            reached.insert(tier_of(n));
        }
        graduated += reached.iter().map(|&i| tiers[i].flat_fee).sum::<Decimal>();
        // Volume: every unit at the price of the tier of the whole quantity.
        let volume = if q == 0 { Decimal::ZERO } else {
            let t = &tiers[tier_of(q)];
            t.unit_price * Decimal::from(q) + t.flat_fee
        };
        let qd = Decimal::from(q);
        prop_assert_eq!(Price::Graduated { tiers: tiers.clone() }.charge(qd, "x").unwrap(), graduated);
        prop_assert_eq!(Price::Volume { tiers }.charge(qd, "x").unwrap(), volume);
    }

    #[test]
    fn prorated_pieces_of_a_cycle_sum_to_its_price(
        fee in 0i64..100_000_000_000,
        length in 1i64..400 * DAY,
        cuts in prop::collection::vec(0f64..1.0, 0..12),
    ) {
        let fee = Decimal::new(fee, 3);
        let (start, end) = (NOV_START, NOV_START + length);
        let mut points: Vec<i64> = cuts.iter().map(|c| start + (c * length as f64) as i64).collect();
        points.extend([start, end]);
        points.sort();
        let sum: Decimal = points.windows(2).map(|w| prorate(Currency::USD, fee, w[0], w[1], start, end).unwrap()).sum();
        prop_assert_eq!(sum, Currency::USD.round(fee));
    }

    #[test]
    fn near_the_decimal_limit_the_rater_returns_an_error(
        s in scenario(),
        q in usages(),
        huge in (4i128 * 10i128.pow(22))..=79_228_162_514_264_337_593_543_950_335i128,
        meter in prop::sample::select(vec!["work_orders", "active_users"]),
    ) {
        let setup = Setup { plan: "starter".into(), cycle: CYCLES[s.cycle], term_years: 1, auto_renew: true, trial: false };
        let sub = Subscription::create("sub", "acme", &setup, NOV_START, "k", list()).unwrap();
        let mut u = usage_of(q);
        u.totals.insert(meter.to_string(), Decimal::from_i128_with_scale(huge, 0));
        let r = meter_rater::rate(&sub.tenant, &sub.id, &sub.entries, p("2026-11"), Some(&u), list());
        prop_assert!(matches!(r, Err(Error::Overflow(_))), "{:?}", r.map(|i| i.total));
    }
}

/// Folds `(meter, user, quantity)` events batch by batch into tallies, then adds the batches'
/// tallies up (unique users merge as sets), as the aggregator's batches do.
fn fold(batches: &[&[(usize, u32, i64)]]) -> Usage {
    let mut totals: BTreeMap<String, Decimal> = BTreeMap::new();
    let mut users = BTreeSet::new();
    for batch in batches {
        let mut tallies: BTreeMap<usize, Tally> = BTreeMap::new();
        for (i, &(meter, user, q)) in batch.iter().enumerate() {
            let c = match meter {
                3 => Contribution::Sum(Decimal::new(q, 3)),
                5 if users.insert(user) => Contribution::Unique(user.to_string()),
                5 => continue,
                _ => Contribution::Count,
            };
            tallies.entry(meter).or_default().add(&c, 0, &i.to_string()).unwrap();
        }
        for (meter, t) in tallies {
            *totals.entry(METERS[meter].to_string()).or_default() += t.value.unwrap_or_default();
        }
    }
    let mut u = Usage { totals, watermark_us: None };
    u.totals.retain(|_, v| !v.is_zero());
    for v in u.totals.values_mut() {
        *v = v.normalize();
    }
    u
}
