//! The price book: versioned price lists in TOML, each taking effect on a date.
//!
//! A period is rated with the list in effect on its first day, so a new list never changes
//! a period that has already started, and a closed period keeps the version it was rated with.

use crate::money::{Currency, Percent};
use crate::price::Price;
use meter_schemas::Period;
use meter_schemas::period::Date;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// The sample price book that ships with meter and is the default.
pub const SAMPLE: &str = include_str!("../pricebook.toml");

/// How often a subscription's base fee is billed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Cycle {
    /// Every month.
    Monthly,
    /// Every three months.
    Quarterly,
    /// Every twelve months (paid in advance: the annual-prepay discount applies).
    Annual,
}

impl Cycle {
    /// Months in one cycle.
    pub fn months(self) -> u32 {
        match self {
            Cycle::Monthly => 1,
            Cycle::Quarterly => 3,
            Cycle::Annual => 12,
        }
    }
}

impl fmt::Display for Cycle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Cycle::Monthly => "monthly",
            Cycle::Quarterly => "quarterly",
            Cycle::Annual => "annual",
        })
    }
}

impl FromStr for Cycle {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "monthly" => Ok(Cycle::Monthly),
            "quarterly" => Ok(Cycle::Quarterly),
            "annual" => Ok(Cycle::Annual),
            _ => Err(format!("unknown cycle {s:?}: use monthly, quarterly or annual")),
        }
    }
}

/// How much of a meter a plan includes each period.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Allowance {
    /// No limit: no overage is ever charged.
    Unlimited,
    /// This much is included; usage beyond it is charged.
    Up(Decimal),
}

impl TryFrom<String> for Allowance {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        if s == "unlimited" {
            return Ok(Allowance::Unlimited);
        }
        match Decimal::from_str_exact(&s) {
            Ok(d) if !d.is_sign_negative() => Ok(Allowance::Up(d)),
            _ => Err(format!("{s:?} is neither \"unlimited\" nor a quantity of at least 0")),
        }
    }
}

impl From<Allowance> for String {
    fn from(a: Allowance) -> String {
        match a {
            Allowance::Unlimited => "unlimited".into(),
            Allowance::Up(d) => d.normalize().to_string(),
        }
    }
}

/// The price of one meter in a plan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeterPrice {
    /// Included each period.
    pub included: Allowance,
    /// The price of usage beyond `included`; absent with `included = "unlimited"`.
    pub price: Option<Price>,
    /// Refuse the tenant's events beyond `included` at ingest instead of charging overage.
    #[serde(default)]
    pub hard_limit: bool,
}

/// Seats: distinct users in the period (a unique-count meter) beyond those included.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Seats {
    /// The meter that counts seats (default `active_users`).
    #[serde(default = "default_seat_meter")]
    pub meter: String,
    /// Seats included each period.
    pub included: Decimal,
    /// Price of each further seat per period.
    pub unit_price: Decimal,
}

fn default_seat_meter() -> String {
    "active_users".into()
}

/// A feature-matrix value: on/off, a number, or a level.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum Feature {
    /// On or off.
    Flag(bool),
    /// A number (a limit).
    Number(i64),
    /// A named level.
    Level(String),
}

/// One plan (tier) of a price list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// Display name.
    pub name: String,
    /// Order among the plans, lowest first (the tier ladder customers see).
    pub rank: u32,
    /// Base fee per cycle, for each cycle the plan is sold on.
    pub fee: BTreeMap<Cycle, Decimal>,
    /// Length of a trial in days.
    #[serde(default = "default_trial_days")]
    pub trial_days: u32,
    /// Seats included and the price of more.
    pub seats: Option<Seats>,
    /// Priced meters, by meter name; other meters are not billed.
    #[serde(default)]
    pub meters: BTreeMap<String, MeterPrice>,
    /// Least charged each period for usage (seats and overage); the difference is a line.
    pub minimum: Option<Decimal>,
    /// The feature matrix.
    #[serde(default)]
    pub features: BTreeMap<String, Feature>,
    /// Percentages of each included quantity at which the tenant is alerted.
    #[serde(default = "default_alerts")]
    pub alerts: Vec<u32>,
}

fn default_trial_days() -> u32 {
    14
}

fn default_alerts() -> Vec<u32> {
    vec![80, 90, 100]
}

/// A volume discount: this percentage off the part of a period's charges above `above`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeDiscount {
    /// The threshold.
    pub above: Decimal,
    /// The discount on what lies above it (the highest threshold reached applies to its part).
    pub percent: Percent,
}

/// Discounts of a price list.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Discounts {
    /// Off the base fee of annual cycles.
    #[serde(default)]
    pub annual_prepay: Percent,
    /// Off the base fee of subscriptions committed for two years or more (instead of annual prepay).
    #[serde(default)]
    pub multi_year: Percent,
    /// Graduated discounts on a period's charges, ascending by `above`.
    #[serde(default)]
    pub volume: Vec<VolumeDiscount>,
}

/// A deal for one tenant on one plan: whatever it sets replaces the plan's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Override {
    /// The plan the deal applies to.
    pub plan: String,
    /// Base fees per cycle.
    pub fee: Option<BTreeMap<Cycle, Decimal>>,
    /// Seats.
    pub seats: Option<Seats>,
    /// Meter prices, each replacing the plan's for that meter.
    #[serde(default)]
    pub meters: BTreeMap<String, MeterPrice>,
    /// Minimum per period.
    pub minimum: Option<Decimal>,
    /// A negotiated discount off the base fee, instead of the annual-prepay or multi-year one.
    pub discount: Option<Percent>,
}

/// One version of the prices.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceList {
    /// Version name, unique in the book.
    pub version: String,
    /// First day (UTC) of the first period it rates.
    #[serde(with = "day")]
    pub effective: Date,
    /// Currency of every amount in the list.
    pub currency: Currency,
    /// Discounts.
    #[serde(default)]
    pub discounts: Discounts,
    /// Plans by code.
    pub plans: BTreeMap<String, Plan>,
    /// Deals by tenant.
    #[serde(default)]
    pub overrides: BTreeMap<String, Override>,
}

/// What a tenant pays on a plan: the plan with the tenant's deal applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Terms<'a> {
    /// The plan's code.
    pub code: &'a str,
    /// The plan.
    pub plan: &'a Plan,
    /// The tenant's deal on it, if any.
    pub deal: Option<&'a Override>,
}

impl Terms<'_> {
    /// Base fee per cycle; `None` when the plan is not sold on that cycle.
    pub fn fee(&self, cycle: Cycle) -> Option<Decimal> {
        self.deal.and_then(|d| d.fee.as_ref()).unwrap_or(&self.plan.fee).get(&cycle).copied()
    }

    /// Seats.
    pub fn seats(&self) -> Option<&Seats> {
        self.deal.and_then(|d| d.seats.as_ref()).or(self.plan.seats.as_ref())
    }

    /// The price of `meter`.
    pub fn meter(&self, meter: &str) -> Option<&MeterPrice> {
        self.deal.and_then(|d| d.meters.get(meter)).or_else(|| self.plan.meters.get(meter))
    }

    /// Every priced meter, by name.
    pub fn meters(&self) -> BTreeMap<&str, &MeterPrice> {
        let mut all: BTreeMap<&str, &MeterPrice> = self.plan.meters.iter().map(|(k, v)| (k.as_str(), v)).collect();
        if let Some(d) = self.deal {
            all.extend(d.meters.iter().map(|(k, v)| (k.as_str(), v)));
        }
        all
    }

    /// Minimum per period.
    pub fn minimum(&self) -> Option<Decimal> {
        self.deal.and_then(|d| d.minimum).or(self.plan.minimum)
    }
}

impl PriceList {
    /// The list with `tenant`'s deal and no other tenant's (no deal at all for `None`): what a
    /// tenant may read of it.
    pub fn with_deals_of(&self, tenant: Option<&str>) -> PriceList {
        let mut shown = self.clone();
        shown.overrides.retain(|name, _| tenant == Some(name.as_str()));
        shown
    }

    /// The plan `code` as `tenant` pays for it.
    pub fn terms<'a>(&'a self, tenant: &str, code: &'a str) -> Option<Terms<'a>> {
        let plan = self.plans.get(code)?;
        let deal = self.overrides.get(tenant).filter(|d| d.plan == code);
        Some(Terms { code, plan, deal })
    }

    /// A SHA-256 of the list's content, so that a list changed after it rated a closed period
    /// is noticed.
    pub fn digest(&self) -> String {
        let text = serde_json::to_string(self).expect("a price list serializes");
        hex::encode(Sha256::digest(text.as_bytes()))
    }
}

/// Every price list, ordered by effective date.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PriceBook {
    lists: Vec<PriceList>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    list: Vec<PriceList>,
}

/// A price book that cannot be used, with every problem by path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid price book: {}", .0.iter().map(|(f, m)| format!("{f}: {m}")).collect::<Vec<_>>().join("; "))]
pub struct PriceBookError(pub Vec<(String, String)>);

impl PriceBook {
    /// Parses and checks a price book. `meters` are the configured meter names and
    /// `unique_meters` those that count distinct values (seats must use one).
    pub fn parse(text: &str, meters: &[&str], unique_meters: &[&str]) -> Result<Self, PriceBookError> {
        let file: File = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| text[..s.start].matches('\n').count() + 1);
            let at = line.map_or("price book".to_string(), |l| format!("price book line {l}"));
            PriceBookError(vec![(at, e.message().to_string())])
        })?;
        let mut lists = file.list;
        lists.sort_by_key(|l| l.effective);
        let book = PriceBook { lists };
        let problems = book.check(meters, unique_meters);
        if problems.is_empty() { Ok(book) } else { Err(PriceBookError(problems)) }
    }

    /// The list that rates `period`: the last one effective on or before its first day.
    pub fn for_period(&self, period: Period) -> Option<&PriceList> {
        self.lists.iter().rev().find(|l| l.effective <= period.first_day())
    }

    /// The list with this version.
    pub fn version(&self, version: &str) -> Option<&PriceList> {
        self.lists.iter().find(|l| l.version == version)
    }

    /// Every list, oldest first.
    pub fn lists(&self) -> &[PriceList] {
        &self.lists
    }

    fn check(&self, meters: &[&str], unique_meters: &[&str]) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if self.lists.is_empty() {
            out.push(("list".into(), "the price book needs at least one [[list]]".into()));
        }
        for (i, l) in self.lists.iter().enumerate() {
            let at = format!("list[{}] (version {})", i, l.version);
            if self.lists[..i].iter().any(|o| o.version == l.version) {
                out.push((format!("{at}.version"), "is used by another list".into()));
            }
            if i > 0 && self.lists[i - 1].effective == l.effective {
                out.push((format!("{at}.effective"), "is the date of another list".into()));
            }
            if l.plans.is_empty() {
                out.push((format!("{at}.plans"), "needs at least one plan".into()));
            }
            let mut ranks = BTreeMap::new();
            for (code, p) in &l.plans {
                let at = format!("{at}.plans.{code}");
                if let Some(other) = ranks.insert(p.rank, code) {
                    out.push((format!("{at}.rank"), format!("is the rank of plan {other}")));
                }
                if p.fee.is_empty() {
                    out.push((format!("{at}.fee"), "needs a fee for at least one cycle".into()));
                }
                if p.trial_days > 365 {
                    out.push((format!("{at}.trial_days"), "must be at most 365".into()));
                }
                if p.alerts.windows(2).any(|w| w[0] >= w[1]) || p.alerts.iter().any(|a| !(1..=1000).contains(a)) {
                    out.push((format!("{at}.alerts"), "must be ascending percentages from 1 to 1000".into()));
                }
                check_prices(
                    &at,
                    Some(&p.fee),
                    p.seats.as_ref(),
                    &p.meters,
                    p.minimum,
                    meters,
                    unique_meters,
                    &mut out,
                );
            }
            for (tenant, d) in &l.overrides {
                let at = format!("{at}.overrides.{tenant}");
                if !l.plans.contains_key(&d.plan) {
                    out.push((format!("{at}.plan"), format!("unknown plan {:?}", d.plan)));
                }
                check_prices(
                    &at,
                    d.fee.as_ref(),
                    d.seats.as_ref(),
                    &d.meters,
                    d.minimum,
                    meters,
                    unique_meters,
                    &mut out,
                );
            }
            let mut floor = None;
            for (j, v) in l.discounts.volume.iter().enumerate() {
                if floor.is_some_and(|f| v.above <= f) || v.above.is_sign_negative() {
                    out.push((
                        format!("{at}.discounts.volume[{j}].above"),
                        "must be at least 0 and above the previous threshold".into(),
                    ));
                }
                floor = Some(v.above);
            }
        }
        out
    }
}

#[allow(clippy::too_many_arguments)]
fn check_prices(
    at: &str,
    fee: Option<&BTreeMap<Cycle, Decimal>>,
    seats: Option<&Seats>,
    priced: &BTreeMap<String, MeterPrice>,
    minimum: Option<Decimal>,
    meters: &[&str],
    unique_meters: &[&str],
    out: &mut Vec<(String, String)>,
) {
    let negative = |d: Decimal| d.is_sign_negative() && !d.is_zero();
    for (cycle, amount) in fee.into_iter().flatten() {
        if negative(*amount) {
            out.push((format!("{at}.fee.{cycle}"), "must not be negative".into()));
        }
    }
    if let Some(s) = seats {
        if !unique_meters.contains(&s.meter.as_str()) {
            out.push((format!("{at}.seats.meter"), format!("{:?} is not a unique-count meter", s.meter)));
        }
        if negative(s.included) || negative(s.unit_price) {
            out.push((format!("{at}.seats"), "included and unit_price must not be negative".into()));
        }
    }
    if minimum.is_some_and(negative) {
        out.push((format!("{at}.minimum"), "must not be negative".into()));
    }
    for (name, m) in priced {
        let at = format!("{at}.meters.{name}");
        if !meters.contains(&name.as_str()) {
            out.push((at.clone(), format!("unknown meter (configured: {})", meters.join(", "))));
        }
        if m.hard_limit && m.included == Allowance::Unlimited {
            out.push((format!("{at}.hard_limit"), "needs an included quantity to limit".into()));
        }
        match (&m.included, &m.price) {
            (Allowance::Up(_), None) if m.hard_limit => {}
            (Allowance::Up(_), None) => {
                out.push((format!("{at}.price"), "is needed unless included is \"unlimited\" or a hard limit".into()))
            }
            (Allowance::Unlimited, Some(_)) => {
                out.push((format!("{at}.price"), "is never charged: included is \"unlimited\"".into()))
            }
            (_, Some(p)) => out.extend(p.check().into_iter().map(|(f, m)| (format!("{at}.price.{f}"), m))),
            _ => {}
        }
    }
}

mod day {
    use meter_schemas::period::Date;
    use serde::{Deserialize, Deserializer, Serializer};
    use time::macros::format_description;

    pub fn serialize<S: Serializer>(d: &Date, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&meter_schemas::period::format_day(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Date, D::Error> {
        let v = toml::value::Datetime::deserialize(d)?.to_string();
        Date::parse(&v, format_description!("[year]-[month]-[day]"))
            .map_err(|_| serde::de::Error::custom(format!("{v} is not a date like 2026-01-01")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const METERS: &[&str] =
        &["work_orders", "work_orders_completed", "agent_invocations", "agent_tokens", "api_calls", "active_users"];

    #[test]
    fn the_sample_parses_and_has_the_four_tiers() {
        let book = PriceBook::parse(SAMPLE, METERS, &["active_users"]).unwrap();
        let list = book.for_period("2026-11".parse().unwrap()).unwrap();
        let codes: Vec<_> = list.plans.keys().map(String::as_str).collect();
        assert_eq!(codes, ["enterprise", "enterprise_plus", "professional", "starter"]);
        assert_eq!(list.currency, Currency::USD);
        assert!(book.for_period("2020-01".parse().unwrap()).is_none());
    }

    #[test]
    fn problems_are_reported_by_path() {
        let text = r#"
            [[list]]
            version = "v1"
            effective = 2026-01-01
            currency = "USD"
            [list.plans.a]
            name = "A"
            rank = 1
            fee = { monthly = "-1" }
            seats = { meter = "api_calls", included = "5", unit_price = "1" }
            [list.plans.a.meters.nope]
            included = "5"
            price = { model = "per_unit", unit_price = "1" }
            [list.plans.a.meters.api_calls]
            included = "unlimited"
            price = { model = "per_unit", unit_price = "1" }
        "#;
        let e = PriceBook::parse(text, METERS, &["active_users"]).unwrap_err();
        let fields: Vec<_> = e.0.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            [
                "list[0] (version v1).plans.a.fee.monthly",
                "list[0] (version v1).plans.a.seats.meter",
                "list[0] (version v1).plans.a.meters.api_calls.price",
                "list[0] (version v1).plans.a.meters.nope",
            ]
        );
        let typo = PriceBook::parse("[[list]]\nversion = \"v1\"\nefective = 2026-01-01\n", METERS, &[]).unwrap_err();
        assert!(typo.to_string().contains("unknown field `efective`"), "{typo}");
        assert!(typo.to_string().contains("line 3"), "{typo}");
    }
}
