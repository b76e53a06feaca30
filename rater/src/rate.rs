//! The rater: usage totals, a subscription's trail and a price list in; invoice lines out.

use crate::Error;
use crate::money::{Currency, Percent, add, mul, negate, sub};
use crate::pricebook::{Allowance, Cycle, PriceList, Terms};
use crate::subscription::{Change, Entry, State};
use meter_schemas::Period;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fmt::Write;

/// A tenant's usage in a period, as the rater reads it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Period total by meter name; a meter without events is absent (zero).
    pub totals: BTreeMap<String, Decimal>,
    /// Every event acknowledged before this instant (µs) is in the totals.
    pub watermark_us: Option<i64>,
}

/// What a line charges for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LineKind {
    /// A cycle's base fee, in advance.
    BaseFee,
    /// What a plan change mid-cycle credits or charges for the rest of the cycle.
    Proration,
    /// Annual-prepay, multi-year or negotiated discount off base fees.
    TermDiscount,
    /// Seats beyond those included.
    Seats,
    /// A meter's usage beyond what the plan includes.
    Overage,
    /// The difference up to the plan's minimum for usage.
    Minimum,
    /// The volume discount off the period's charges.
    VolumeDiscount,
    /// A change to an earlier, closed period's usage (events that arrived after its close).
    Adjustment,
}

/// A line's meter totals by meter name: a sorted `Vec` (a line has one or two, where a
/// `BTreeMap` allocates a node of eleven), written as the JSON object in key order that a
/// `BTreeMap` was, `{}` when empty (`LiteMap`'s own serde writes an empty one as `[]`), and read
/// from an object in any order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Meters(litemap::LiteMap<String, Decimal>);

impl Meters {
    /// No meter.
    pub fn new() -> Self {
        Self::default()
    }

    /// The total of `meter`.
    pub fn get(&self, meter: &str) -> Option<&Decimal> {
        self.0.get(meter)
    }

    /// Each meter and its total, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Decimal)> {
        self.0.iter()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromIterator<(String, Decimal)> for Meters {
    fn from_iter<I: IntoIterator<Item = (String, Decimal)>>(pairs: I) -> Self {
        Self(pairs.into_iter().collect())
    }
}

impl Serialize for Meters {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter())
    }
}

/// Where a line's figures come from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Lineage {
    /// The meter totals it used.
    #[schema(value_type = BTreeMap<String, String>)]
    pub meters: Meters,
    /// The watermark of those totals (µs).
    pub watermark_us: Option<i64>,
    /// The price list version.
    pub price_version: String,
    /// SHA-256 of every input of the line.
    pub inputs_hash: String,
}

/// The time a fee line pays for, billed in advance: a cycle, or the rest of one after a
/// change. Revenue recognition spreads the line over it by the microsecond.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Service {
    /// Its start (µs).
    pub from_us: i64,
    /// Its end, excluded (µs).
    pub to_us: i64,
}

/// One invoice line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Line {
    /// Stable id: the invoice's id and the line's position.
    pub id: String,
    /// What it charges for.
    pub kind: LineKind,
    /// For people.
    pub description: String,
    /// The meter, for seats, overage and usage adjustments.
    pub meter: Option<String>,
    /// The quantity charged (seats or units beyond the included), where there is one.
    #[schema(value_type = Option<String>)]
    pub quantity: Option<Decimal>,
    /// The amount, rounded once, half-even, to the currency's minor unit.
    #[schema(value_type = String)]
    pub amount: Decimal,
    /// Where its figures come from.
    pub lineage: Lineage,
    /// For base fees, prorations and the discounts off them: the time the line pays for.
    /// Other lines are for the invoice's period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<Service>,
}

/// An invoice draft.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Invoice {
    /// Stable id, derived from tenant, subscription and period.
    pub id: String,
    /// Tenant.
    pub tenant: String,
    /// Subscription.
    pub subscription: String,
    /// `YYYY-MM`.
    #[schema(value_type = String)]
    pub period: Period,
    /// Currency of every amount.
    #[schema(value_type = String)]
    pub currency: Currency,
    /// The price list version that rated it.
    pub price_version: String,
    /// The plan usage was rated on; `None` when the invoice bills no usage.
    pub plan: Option<String>,
    /// The lines.
    pub lines: Vec<Line>,
    /// Sum of the lines.
    #[schema(value_type = String)]
    pub total: Decimal,
}

impl Invoice {
    /// An invoice without lines, to carry adjustments for a subscription with nothing else to bill.
    pub fn empty(tenant: &str, subscription: &str, period: Period, list: &PriceList) -> Self {
        Invoice {
            id: invoice_id(tenant, subscription, period),
            tenant: tenant.into(),
            subscription: subscription.into(),
            period,
            currency: list.currency,
            price_version: list.version.clone(),
            plan: None,
            lines: Vec::new(),
            total: Decimal::ZERO,
        }
    }

    /// Appends `lines`, numbering them after the others, and updates the total.
    pub fn append(&mut self, lines: Vec<Line>) -> Result<(), Error> {
        self.lines.extend(lines);
        for (i, l) in self.lines.iter_mut().enumerate() {
            l.id = format!("{}_{:03}", self.id, i + 1);
        }
        self.total = self.lines.iter().try_fold(Decimal::ZERO, |t, l| add(t, l.amount, "invoice total"))?;
        Ok(())
    }
}

/// Adjustment lines for a closed period whose usage changed after its close: for each usage
/// line (seats, overage, minimum, volume discount) the difference between `revised` (the period
/// rated again on today's totals) and `billed` (what was invoiced, with earlier adjustments).
pub fn adjustments(billed: &Invoice, revised: &Invoice, watermark_us: Option<i64>) -> Vec<Line> {
    let key = |l: &Line| (l.kind, l.meter.clone());
    let usage_kinds = [LineKind::Seats, LineKind::Overage, LineKind::Minimum, LineKind::VolumeDiscount];
    /// A usage line's change: the amount, and the line before and after.
    type Change<'l> = (Decimal, Option<&'l Line>, Option<&'l Line>);
    let mut diff: BTreeMap<(LineKind, Option<String>), Change<'_>> = BTreeMap::new();
    for l in billed.lines.iter().filter(|l| usage_kinds.contains(&l.kind)) {
        let e = diff.entry(key(l)).or_default();
        e.0 -= l.amount;
        e.1 = Some(l);
    }
    for l in revised.lines.iter().filter(|l| usage_kinds.contains(&l.kind)) {
        let e = diff.entry(key(l)).or_default();
        e.0 += l.amount;
        e.2 = Some(l);
    }
    diff.into_iter()
        .filter(|(_, (delta, _, _))| !delta.is_zero())
        .map(|((kind, meter), (amount, before, after))| {
            let used = |l: Option<&Line>| l.and_then(|l| meter.as_ref().and_then(|m| l.lineage.meters.get(m))).copied();
            let what = meter.clone().unwrap_or_else(|| format!("{kind:?}").to_lowercase());
            let description = match (used(before), used(after)) {
                (Some(b), Some(a)) => format!(
                    "adjustment for {}: {what} {} → {} (events counted after that period's close)",
                    billed.period,
                    b.normalize(),
                    a.normalize()
                ),
                _ => format!("adjustment for {}: {what} (events counted after that period's close)", billed.period),
            };
            let hashes = format!(
                "{}\u{0}{}",
                before.map_or("", |l| l.lineage.inputs_hash.as_str()),
                after.map_or("", |l| l.lineage.inputs_hash.as_str())
            );
            Line {
                id: String::new(),
                kind: LineKind::Adjustment,
                description,
                meter,
                quantity: None,
                amount,
                lineage: Lineage {
                    meters: after.map(|l| l.lineage.meters.clone()).unwrap_or_default(),
                    watermark_us,
                    price_version: revised.price_version.clone(),
                    inputs_hash: hex::encode(Sha256::digest(hashes.as_bytes())),
                },
                service: None,
            }
        })
        .collect()
}

/// The id of the invoice of `subscription` for `period`.
pub fn invoice_id(tenant: &str, subscription: &str, period: Period) -> String {
    let h = Sha256::digest(format!("{tenant}\u{0}{subscription}\u{0}{period}").as_bytes());
    format!("in_{}", &hex::encode(h)[..24])
}

/// Rates one subscription for `period`: base fees of cycles starting in it, prorations of plan
/// changes in it, term discounts, and (when it was paid for at some instant of the period) seats,
/// overage, the minimum and the volume discount, on the plan in effect at the last such instant.
/// `entries` is the subscription's trail up to at least the period's end. `usage` is `None` when
/// another subscription of the tenant bills the period's usage (one that ended in the period
/// before this one started): usage is per tenant and is billed once.
pub fn rate(
    tenant: &str,
    subscription: &str,
    entries: &[Entry],
    period: Period,
    usage: Option<&Usage>,
    list: &PriceList,
) -> Result<Invoice, Error> {
    let id = invoice_id(tenant, subscription, period);
    let none = Usage::default();
    let mut r = Rating::new(tenant, subscription, period, usage.unwrap_or(&none), list);
    let (start, end) = (period.start_us(), period.end_us());
    let term_years = match entries.first().map(|e| &e.change) {
        Some(Change::Created { term_years, .. }) => *term_years,
        _ => 1,
    };
    // What the subscription was from each instant of the period on: (from, paying, plan). It
    // pays once a cycle has started (a cancelled trial never does) until it expires.
    let mut spans: Vec<(i64, bool, &str)> = Vec::new();
    let mut cycled = false;
    for e in entries.iter().take_while(|e| e.at_us < end) {
        cycled |= matches!(e.change, Change::CycleStarted { .. });
        let paying = cycled && !matches!(e.state, State::Trial | State::Expired);
        if e.at_us < start {
            spans.clear();
            spans.push((start, paying, &e.plan));
            continue;
        }
        r.base(e, term_years)?;
        spans.push((e.at_us, paying, &e.plan));
    }
    let billed_plan = spans
        .iter()
        .enumerate()
        .filter(|(i, (from, paying, _))| *paying && spans.get(i + 1).map_or(end, |n| n.0) > *from)
        .map(|(_, (_, _, plan))| *plan)
        .next_back();
    r.term_discounts()?;
    if let Some(plan) = billed_plan.filter(|_| usage.is_some()) {
        let terms = list.terms(tenant, plan).ok_or_else(|| Error::UnknownPlan(plan.into(), list.version.clone()))?;
        r.usage(&terms)?;
        r.volume_discount()?;
    }
    r.finish(id, billed_plan.filter(|_| usage.is_some()).map(str::to_string))
}

struct Rating<'a> {
    tenant: &'a str,
    subscription: &'a str,
    period: Period,
    usage: &'a Usage,
    list: &'a PriceList,
    lines: Vec<Line>,
    /// Base and proration amounts by the discount that applies to them.
    /// Fees a term discount is taken off, by discount and the time they pay for.
    discountable: BTreeMap<(String, Percent, Service), Decimal>,
}

impl<'a> Rating<'a> {
    fn new(tenant: &'a str, subscription: &'a str, period: Period, usage: &'a Usage, list: &'a PriceList) -> Self {
        Rating { tenant, subscription, period, usage, list, lines: Vec::new(), discountable: BTreeMap::new() }
    }

    fn terms<'p>(&self, plan: &'p str) -> Result<Terms<'p>, Error>
    where
        'a: 'p,
    {
        self.list.terms(self.tenant, plan).ok_or_else(|| Error::UnknownPlan(plan.into(), self.list.version.clone()))
    }

    fn fee(&self, plan: &str, cycle: Cycle) -> Result<Decimal, Error> {
        self.terms(plan)?.fee(cycle).ok_or_else(|| Error::NotSold(plan.into(), cycle))
    }

    /// The discount off the base fee of `plan` on `cycle`: a deal's, else multi-year, else
    /// annual prepay.
    fn term_discount(&self, plan: &str, cycle: Cycle, term_years: u32) -> Result<Option<(String, Percent)>, Error> {
        self.terms(plan)?;
        Ok(crate::recurring::base_fee_discount(self.list, self.tenant, plan, cycle, term_years))
    }

    fn base(&mut self, e: &Entry, term_years: u32) -> Result<(), Error> {
        match &e.change {
            Change::CycleStarted { reason, start_us, end_us } => {
                let fee = self.fee(&e.plan, e.cycle)?;
                let amount = self.round(fee);
                let text = format!(
                    "{} base fee, {} cycle {} to {} ({:?})",
                    self.terms(&e.plan)?.plan.name,
                    e.cycle,
                    day(*start_us),
                    day(*end_us),
                    reason
                );
                let hash = self.hash(&[&"base", &e.plan, &e.cycle, start_us, end_us, &fee]);
                let service = Service { from_us: *start_us, to_us: *end_us };
                self.push(LineKind::BaseFee, text, None, None, amount, Meters::new(), hash);
                self.serves(service);
                if let Some((name, p)) = self.term_discount(&e.plan, e.cycle, term_years)? {
                    *self.discountable.entry((name, p, service)).or_default() += amount;
                }
            }
            Change::PlanChanged { from_plan, from_cycle, cycle_start_us: Some(cs), cycle_end_us: Some(ce), .. }
                if e.at_us < *ce =>
            {
                let old = self.fee(from_plan, *from_cycle)?;
                let credit = negate(prorate(self.list.currency, old, e.at_us, *ce, *cs, *ce)?);
                let text = format!(
                    "credit for {} {} from {} to {} (unused part of the cycle)",
                    self.terms(from_plan)?.plan.name,
                    from_cycle,
                    time_text(e.at_us),
                    day(*ce)
                );
                let hash = self.hash(&[&"credit", from_plan, from_cycle, cs, ce, &e.at_us, &old]);
                let service = Service { from_us: e.at_us, to_us: *ce };
                self.push(LineKind::Proration, text, None, None, credit, Meters::new(), hash);
                self.serves(service);
                if let Some((name, p)) = self.term_discount(from_plan, *from_cycle, term_years)? {
                    *self.discountable.entry((name, p, service)).or_default() += credit;
                }
                if *from_cycle == e.cycle {
                    let new = self.fee(&e.plan, e.cycle)?;
                    let charge = prorate(self.list.currency, new, e.at_us, *ce, *cs, *ce)?;
                    let text = format!(
                        "{} {} from {} to {} (rest of the cycle)",
                        self.terms(&e.plan)?.plan.name,
                        e.cycle,
                        time_text(e.at_us),
                        day(*ce)
                    );
                    let hash = self.hash(&[&"charge", &e.plan, &e.cycle, cs, ce, &e.at_us, &new]);
                    self.push(LineKind::Proration, text, None, None, charge, Meters::new(), hash);
                    self.serves(service);
                    if let Some((name, p)) = self.term_discount(&e.plan, e.cycle, term_years)? {
                        *self.discountable.entry((name, p, service)).or_default() += charge;
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn term_discounts(&mut self) -> Result<(), Error> {
        for ((name, percent, service), base) in std::mem::take(&mut self.discountable) {
            if base.is_zero() {
                continue;
            }
            let amount = negate(self.round(mul(base, percent.fraction(), "term discount")?));
            let hash = self.hash(&[&"term_discount", &name, &percent, &base, &service.from_us, &service.to_us]);
            self.push(
                LineKind::TermDiscount,
                format!("{name}: {percent} of {base}"),
                None,
                None,
                amount,
                Meters::new(),
                hash,
            );
            self.serves(service);
        }
        Ok(())
    }

    fn usage(&mut self, terms: &Terms<'_>) -> Result<(), Error> {
        let mut usage_charges = Decimal::ZERO;
        if let Some(seats) = terms.seats() {
            let used = self.used(&seats.meter);
            let extra = sub(used, seats.included, "seats")?.max(Decimal::ZERO);
            let amount = self.round(mul(extra, seats.unit_price, "seats")?);
            let text = format!(
                "seats: {} used, {} included, {} more at {} each",
                used.normalize(),
                seats.included.normalize(),
                extra.normalize(),
                seats.unit_price
            );
            let hash = self.hash(&[&"seats", &seats.meter, &used, &seats.included, &seats.unit_price]);
            let meters = Meters::from_iter([(seats.meter.clone(), used)]);
            self.push(LineKind::Seats, text, Some(seats.meter.clone()), Some(extra), amount, meters, hash);
            usage_charges = add(usage_charges, amount, "seats")?;
        }
        for (meter, price) in terms.meters() {
            let used = self.used(meter);
            let (over, amount, text) = match (&price.included, &price.price) {
                (Allowance::Up(included), Some(p)) => {
                    let over = sub(used, *included, meter)?.max(Decimal::ZERO);
                    let amount = self.round(p.charge(over, meter)?);
                    let text = format!(
                        "{meter}: {} used, {} included, {} over",
                        used.normalize(),
                        included.normalize(),
                        over.normalize()
                    );
                    (over, amount, text)
                }
                (Allowance::Up(included), None) => {
                    let text = format!("{meter}: {} used of {} (a hard limit)", used.normalize(), included.normalize());
                    (Decimal::ZERO, self.round(Decimal::ZERO), text)
                }
                (Allowance::Unlimited, _) => {
                    (Decimal::ZERO, self.round(Decimal::ZERO), format!("{meter}: {} used, unlimited", used.normalize()))
                }
            };
            // The price list's version (in every hash), the plan and whether the tenant's deal
            // applies determine the price: a list that rated a closed period never changes.
            let hash = self.hash(&[&"overage", &meter, &used, &terms.code, &terms.deal.is_some()]);
            let meters = Meters::from_iter([(meter.to_string(), used)]);
            self.push(LineKind::Overage, text, Some(meter.to_string()), Some(over), amount, meters, hash);
            usage_charges = add(usage_charges, amount, meter)?;
        }
        if let Some(minimum) = terms.minimum() {
            let minimum = self.round(minimum);
            if usage_charges < minimum {
                let amount = sub(minimum, usage_charges, "minimum")?;
                let text = format!("minimum for usage {minimum}, usage charged {usage_charges}");
                let hash = self.hash(&[&"minimum", &minimum, &usage_charges]);
                self.push(LineKind::Minimum, text, None, None, amount, Meters::new(), hash);
            }
        }
        Ok(())
    }

    fn volume_discount(&mut self) -> Result<(), Error> {
        let subtotal = self.total()?;
        let tiers = &self.list.discounts.volume;
        let mut discount = Decimal::ZERO;
        for (i, t) in tiers.iter().enumerate() {
            let top = tiers.get(i + 1).map_or(subtotal, |n| n.above.min(subtotal));
            let part = sub(top, t.above, "volume discount")?;
            if part > Decimal::ZERO {
                discount = add(discount, mul(part, t.percent.fraction(), "volume discount")?, "volume discount")?;
            }
        }
        if discount > Decimal::ZERO {
            let amount = negate(self.round(discount));
            let hash = self.hash(&[&"volume_discount", &subtotal]);
            let text = format!("volume discount on charges of {subtotal}");
            self.push(LineKind::VolumeDiscount, text, None, None, amount, Meters::new(), hash);
        }
        Ok(())
    }

    fn used(&self, meter: &str) -> Decimal {
        self.usage.totals.get(meter).copied().unwrap_or_default()
    }

    fn round(&self, amount: Decimal) -> Decimal {
        self.list.currency.round(amount)
    }

    fn total(&self) -> Result<Decimal, Error> {
        self.lines.iter().try_fold(Decimal::ZERO, |t, l| add(t, l.amount, "invoice total"))
    }

    /// SHA-256 over the invoice's identity, the price version, the watermark and `parts`.
    fn hash(&self, parts: &[&dyn std::fmt::Display]) -> String {
        let mut text = String::with_capacity(128);
        let _ = write!(
            text,
            "{}\u{0}{}\u{0}{}\u{0}{}\u{0}{:?}",
            self.tenant, self.subscription, self.period, self.list.version, self.usage.watermark_us
        );
        for p in parts {
            let _ = write!(text, "\u{0}{p}");
        }
        format!("{:x}", Sha256::digest(text.as_bytes()))
    }

    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        kind: LineKind,
        description: String,
        meter: Option<String>,
        quantity: Option<Decimal>,
        amount: Decimal,
        meters: Meters,
        inputs_hash: String,
    ) {
        let lineage = Lineage {
            meters,
            watermark_us: self.usage.watermark_us,
            price_version: self.list.version.clone(),
            inputs_hash,
        };
        self.lines.push(Line { id: String::new(), kind, description, meter, quantity, amount, lineage, service: None });
    }

    /// The line just pushed pays for `service`.
    fn serves(&mut self, service: Service) {
        if let Some(l) = self.lines.last_mut() {
            l.service = Some(service);
        }
    }

    fn finish(mut self, id: String, plan: Option<String>) -> Result<Invoice, Error> {
        let total = self.total()?;
        for (i, l) in self.lines.iter_mut().enumerate() {
            l.id = format!("{id}_{:03}", i + 1);
        }
        Ok(Invoice {
            id,
            tenant: self.tenant.into(),
            subscription: self.subscription.into(),
            period: self.period,
            currency: self.list.currency,
            price_version: self.list.version.clone(),
            plan,
            lines: self.lines,
            total,
        })
    }
}

/// The part of `fee` (for the cycle `cycle_start..cycle_end`) that falls in `from..to`, to the
/// microsecond. Rounded so that contiguous pieces of one cycle always sum to the rounded fee:
/// each piece is the rounded share up to its end minus the rounded share up to its start.
pub fn prorate(
    currency: Currency,
    fee: Decimal,
    from: i64,
    to: i64,
    cycle_start: i64,
    cycle_end: i64,
) -> Result<Decimal, Error> {
    let length = Decimal::from(cycle_end - cycle_start);
    let share = |t: i64| -> Result<Decimal, Error> {
        let elapsed = Decimal::from((t - cycle_start).clamp(0, cycle_end - cycle_start));
        let part = mul(fee, elapsed, "proration")?;
        Ok(currency.round(part / length))
    };
    sub(share(to)?, share(from)?, "proration")
}

fn day(us: i64) -> String {
    meter_schemas::period::format_day(meter_schemas::period::day_of(us))
}

fn time_text(us: i64) -> String {
    meter_schemas::period::format_time(us)
}
