//! Price models for a quantity: per unit, graduated tiers, volume tiers and packages.

use crate::Error;
use crate::money::{add, div, mul, sub};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// How a quantity (the usage beyond what the plan includes) is charged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "model", rename_all = "snake_case", deny_unknown_fields)]
pub enum Price {
    /// Every unit at one price.
    PerUnit {
        /// Price of one unit.
        unit_price: Decimal,
    },
    /// Each unit at the price of the tier it falls in (the first `up_to` units at the first
    /// tier's price, the next at the second's, …), plus each reached tier's flat fee.
    Graduated {
        /// Tiers in ascending order; only the last may have no `up_to`.
        tiers: Vec<Tier>,
    },
    /// Every unit at the price of the tier the whole quantity falls in, plus that tier's flat fee.
    Volume {
        /// Tiers in ascending order; only the last may have no `up_to`.
        tiers: Vec<Tier>,
    },
    /// Units sold in packages of `size`; a started package is charged whole.
    Package {
        /// Units per package.
        size: Decimal,
        /// Price of one package.
        price: Decimal,
    },
}

/// One tier of a graduated or volume price.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tier {
    /// Last quantity of the tier (inclusive); absent on an unbounded last tier.
    pub up_to: Option<Decimal>,
    /// Price of one unit in the tier.
    pub unit_price: Decimal,
    /// Charged once when the quantity reaches the tier.
    #[serde(default)]
    pub flat_fee: Decimal,
}

impl Price {
    /// The unrounded charge for `quantity` (at least 0). Errors when it would overflow.
    pub fn charge(&self, quantity: Decimal, what: &str) -> Result<Decimal, Error> {
        if quantity <= Decimal::ZERO {
            return Ok(Decimal::ZERO);
        }
        match self {
            Price::PerUnit { unit_price } => mul(quantity, *unit_price, what),
            Price::Package { size, price } => {
                let packages = div(quantity, *size, what)?.ceil();
                mul(packages, *price, what)
            }
            Price::Graduated { tiers } => {
                let mut total = Decimal::ZERO;
                let mut floor = Decimal::ZERO;
                for t in tiers {
                    let top = t.up_to.map_or(quantity, |u| u.min(quantity));
                    let units = sub(top, floor, what)?;
                    total = add(total, add(mul(units, t.unit_price, what)?, t.flat_fee, what)?, what)?;
                    match t.up_to {
                        Some(u) if u < quantity => floor = u,
                        _ => break,
                    }
                }
                Ok(total)
            }
            Price::Volume { tiers } => {
                let t = tiers.iter().find(|t| t.up_to.is_none_or(|u| quantity <= u)).unwrap_or(&tiers[tiers.len() - 1]);
                add(mul(quantity, t.unit_price, what)?, t.flat_fee, what)
            }
        }
    }

    /// Problems with the model, each as `(field, why)` relative to the price.
    pub fn check(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let negative = |v: &Decimal| v.is_sign_negative() && !v.is_zero();
        match self {
            Price::PerUnit { unit_price } if negative(unit_price) => {
                out.push(("unit_price".into(), "must not be negative".into()));
            }
            Price::PerUnit { .. } => {}
            Price::Package { size, price } => {
                if *size <= Decimal::ZERO {
                    out.push(("size".into(), "must be greater than 0".into()));
                }
                if negative(price) {
                    out.push(("price".into(), "must not be negative".into()));
                }
            }
            Price::Graduated { tiers } | Price::Volume { tiers } => {
                if tiers.is_empty() {
                    out.push(("tiers".into(), "needs at least one tier".into()));
                }
                let mut last = Decimal::ZERO;
                for (i, t) in tiers.iter().enumerate() {
                    let at = format!("tiers[{i}]");
                    if negative(&t.unit_price) {
                        out.push((format!("{at}.unit_price"), "must not be negative".into()));
                    }
                    if negative(&t.flat_fee) {
                        out.push((format!("{at}.flat_fee"), "must not be negative".into()));
                    }
                    match t.up_to {
                        None if i + 1 < tiers.len() => {
                            out.push((format!("{at}.up_to"), "only the last tier may be unbounded".into()))
                        }
                        Some(u) if u <= last => {
                            out.push((format!("{at}.up_to"), format!("must be greater than {last}")));
                        }
                        Some(u) => last = u,
                        None => {}
                    }
                }
                if tiers.last().is_some_and(|t| t.up_to.is_some()) {
                    let at = format!("tiers[{}].up_to", tiers.len() - 1);
                    out.push((
                        at,
                        "the last tier must be unbounded (no up_to): usage above it would have no price".into(),
                    ));
                }
                if let Price::Volume { tiers } = self {
                    out.extend(check_volume_monotonic(tiers));
                }
            }
        }
        out
    }
}

/// A volume price whose next tier charges less at a boundary than the tier before would make
/// an invoice shrink as usage grows; the price book refuses it.
fn check_volume_monotonic(tiers: &[Tier]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (i, pair) in tiers.windows(2).enumerate() {
        let (a, b) = (&pair[0], &pair[1]);
        let Some(edge) = a.up_to else { continue };
        let (Some(before), Some(after)) = (
            edge.checked_mul(a.unit_price).and_then(|v| v.checked_add(a.flat_fee)),
            edge.checked_mul(b.unit_price).and_then(|v| v.checked_add(b.flat_fee)),
        ) else {
            out.push((format!("tiers[{}]", i + 1), "overflows at its lower boundary".into()));
            continue;
        };
        if after < before {
            out.push((
                format!("tiers[{}].flat_fee", i + 1),
                format!(
                    "at {edge} units this tier charges {after}, less than the {before} of the tier before: a larger \
                     usage would cost less (raise flat_fee by at least {})",
                    before - after
                ),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    fn tier(up_to: Option<&str>, unit: &str, flat: &str) -> Tier {
        Tier { up_to: up_to.map(d), unit_price: d(unit), flat_fee: d(flat) }
    }

    #[test]
    fn each_model_charges_as_documented() {
        let per_unit = Price::PerUnit { unit_price: d("25") };
        assert_eq!(per_unit.charge(d("3"), "x").unwrap(), d("75"));
        assert_eq!(per_unit.charge(d("-3"), "x").unwrap(), d("0"));
        let tiers = vec![tier(Some("100"), "2", "10"), tier(Some("200"), "1", "5"), tier(None, "0.5", "0")];
        let graduated = Price::Graduated { tiers: tiers.clone() };
        assert_eq!(graduated.charge(d("50"), "x").unwrap(), d("110"));
        assert_eq!(graduated.charge(d("150"), "x").unwrap(), d("265"));
        assert_eq!(graduated.charge(d("300"), "x").unwrap(), d("365"));
        let volume = Price::Volume { tiers: vec![tier(Some("100"), "2", "0"), tier(None, "1", "100")] };
        assert_eq!(volume.charge(d("100"), "x").unwrap(), d("200"));
        assert_eq!(volume.charge(d("101"), "x").unwrap(), d("201"));
        let package = Price::Package { size: d("1000000"), price: d("2") };
        assert_eq!(package.charge(d("1"), "x").unwrap(), d("2"));
        assert_eq!(package.charge(d("2000000"), "x").unwrap(), d("4"));
        assert_eq!(package.charge(d("2000001"), "x").unwrap(), d("6"));
    }

    #[test]
    fn a_volume_price_that_would_shrink_an_invoice_is_refused() {
        let shrinking = Price::Volume { tiers: vec![tier(Some("100"), "10", "0"), tier(None, "9", "0")] };
        let problems = shrinking.check();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].0, "tiers[1].flat_fee");
        assert!(problems[0].1.contains("raise flat_fee by at least 100"), "{}", problems[0].1);
        let unordered = Price::Graduated { tiers: vec![tier(Some("100"), "1", "0"), tier(Some("50"), "1", "0")] };
        assert_eq!(unordered.check()[0].0, "tiers[1].up_to");
        let open_middle = Price::Graduated { tiers: vec![tier(None, "1", "0"), tier(Some("50"), "1", "0")] };
        assert_eq!(open_middle.check()[0].0, "tiers[0].up_to");
        let bounded = Price::Graduated { tiers: vec![tier(Some("100"), "2", "0"), tier(Some("200"), "1", "0")] };
        assert_eq!(
            bounded.check(),
            [(
                "tiers[1].up_to".to_string(),
                "the last tier must be unbounded (no up_to): usage above it would have no price".to_string()
            )]
        );
        assert_eq!(Price::Package { size: d("0"), price: d("1") }.check()[0].0, "size");
    }
}
