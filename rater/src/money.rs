//! Currencies, percentages and the one rounding rule: half-even, once per line, to the
//! currency's minor unit.

use crate::Error;
use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// ISO 4217 codes this rater knows, with their minor units (digits after the point).
const CURRENCIES: &[(&str, u32)] = &[
    ("AUD", 2),
    ("BHD", 3),
    ("BRL", 2),
    ("CAD", 2),
    ("CHF", 2),
    ("CNY", 2),
    ("DKK", 2),
    ("EUR", 2),
    ("GBP", 2),
    ("HKD", 2),
    ("INR", 2),
    ("JPY", 0),
    ("KRW", 0),
    ("KWD", 3),
    ("MXN", 2),
    ("NOK", 2),
    ("NZD", 2),
    ("SEK", 2),
    ("SGD", 2),
    ("USD", 2),
    ("ZAR", 2),
];

/// A currency by its ISO 4217 code, with its minor unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency {
    /// Index into `CURRENCIES`.
    index: u8,
}

impl Currency {
    /// US dollars.
    pub const USD: Currency = Currency { index: 19 };

    /// The ISO code.
    pub fn code(&self) -> &'static str {
        CURRENCIES[usize::from(self.index)].0
    }

    /// Digits after the point of the minor unit (2 for cents, 0 for yen).
    pub fn minor_units(&self) -> u32 {
        CURRENCIES[usize::from(self.index)].1
    }

    /// `amount` rounded half-even to the minor unit: the one rounding each line gets.
    pub fn round(&self, amount: Decimal) -> Decimal {
        let mut r = amount.round_dp_with_strategy(self.minor_units(), RoundingStrategy::MidpointNearestEven);
        r.rescale(self.minor_units());
        no_negative_zero(r)
    }
}

impl FromStr for Currency {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CURRENCIES.iter().position(|(c, _)| *c == s).map(|i| Currency { index: i as u8 }).ok_or_else(|| {
            let known: Vec<_> = CURRENCIES.iter().map(|(c, _)| *c).collect();
            format!("unknown currency {s:?}: use an ISO 4217 code ({})", known.join(", "))
        })
    }
}

impl TryFrom<String> for Currency {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Currency> for String {
    fn from(c: Currency) -> String {
        c.code().to_string()
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// A percentage written `"15%"` (at least 0, below 100).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Percent(Decimal);

impl Percent {
    /// The percentage as a fraction (`15%` is 0.15).
    pub fn fraction(&self) -> Decimal {
        self.0 / Decimal::ONE_HUNDRED
    }

    /// True for 0%.
    pub fn is_zero(&self) -> bool {
        self.0.is_zero()
    }
}

impl FromStr for Percent {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let digits = s.strip_suffix('%').ok_or_else(|| format!("{s:?} is not a percentage like \"15%\""))?;
        let p =
            Decimal::from_str_exact(digits.trim()).map_err(|_| format!("{s:?} is not a percentage like \"15%\""))?;
        if p.is_sign_negative() || p >= Decimal::ONE_HUNDRED {
            return Err(format!("{s} must be at least 0% and below 100%"));
        }
        Ok(Percent(p))
    }
}

impl TryFrom<String> for Percent {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Percent> for String {
    fn from(p: Percent) -> String {
        format!("{}%", p.0.normalize())
    }
}

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}%", self.0.normalize())
    }
}

/// `−a`, with no negative zero.
pub(crate) fn negate(a: Decimal) -> Decimal {
    no_negative_zero(-a)
}

/// `v`, or of a zero a zero of the same scale and no sign. Negating 0.00 gives −0.00 (and
/// 0.00 + −0.00 keeps it), which is written "-0.00" and reads back "0.00": a credit that rounds
/// to nothing would make a close that does not read back the bytes it was recorded with. Every
/// figure the rater makes passes here (`negate`, `Currency::round`, `exact`).
fn no_negative_zero(mut v: Decimal) -> Decimal {
    if v.is_zero() {
        v.set_sign_positive(true);
    }
    v
}

/// `a × b`, or an overflow error naming `what`.
pub(crate) fn mul(a: Decimal, b: Decimal, what: &str) -> Result<Decimal, Error> {
    exact(a.checked_mul(b), what)
}

/// `a + b`, or an overflow error naming `what`.
pub(crate) fn add(a: Decimal, b: Decimal, what: &str) -> Result<Decimal, Error> {
    exact(a.checked_add(b), what)
}

/// `a − b`, or an overflow error naming `what`.
pub(crate) fn sub(a: Decimal, b: Decimal, what: &str) -> Result<Decimal, Error> {
    exact(a.checked_sub(b), what)
}

/// `a ÷ b` (b non-zero), or an overflow error naming `what`.
pub(crate) fn div(a: Decimal, b: Decimal, what: &str) -> Result<Decimal, Error> {
    exact(a.checked_div(b), what)
}

/// A checked result whose magnitude still leaves room for rounding and summing lines: beyond
/// 10^24 money is an error, not a figure anyone can defend.
fn exact(r: Option<Decimal>, what: &str) -> Result<Decimal, Error> {
    match r {
        Some(v) if v.abs() < limit() => Ok(no_negative_zero(v)),
        _ => Err(Error::Overflow(what.to_string())),
    }
}

/// The largest magnitude an amount may reach (10^24).
pub(crate) fn limit() -> Decimal {
    const LIMIT: Decimal = Decimal::from_parts(2_701_131_776, 466_537_709, 54_210, false, 0);
    LIMIT
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usd_is_usd() {
        assert_eq!(Currency::USD.code(), "USD");
        assert_eq!("USD".parse::<Currency>().unwrap(), Currency::USD);
    }

    #[test]
    fn rounds_half_even_to_the_minor_unit() {
        let usd = Currency::USD;
        assert_eq!(usd.round("0.125".parse().unwrap()).to_string(), "0.12");
        assert_eq!(usd.round("0.135".parse().unwrap()).to_string(), "0.14");
        assert_eq!(usd.round("-0.125".parse().unwrap()).to_string(), "-0.12");
        assert_eq!(usd.round("7".parse().unwrap()).to_string(), "7.00");
        // No negative zero: written "-0.00", it would read back "0.00".
        assert_eq!(usd.round("-0.004".parse().unwrap()).to_string(), "0.00");
        assert_eq!(negate("0.00".parse().unwrap()).to_string(), "0.00");
        let zero: Decimal = "0.00".parse().unwrap();
        assert_eq!(add(zero, -zero, "x").unwrap().to_string(), "0.00");
        assert_eq!(sub(zero, zero, "x").unwrap().to_string(), "0.00");
        let jpy: Currency = "JPY".parse().unwrap();
        assert_eq!(jpy.round("2.5".parse().unwrap()).to_string(), "2");
        assert_eq!(jpy.round("3.5".parse().unwrap()).to_string(), "4");
        let kwd: Currency = "KWD".parse().unwrap();
        assert_eq!(kwd.round("1.0005".parse().unwrap()).to_string(), "1.000");
    }

    #[test]
    fn refuses_unknown_currencies_and_bad_percentages() {
        assert!("usd".parse::<Currency>().unwrap_err().contains("ISO 4217"));
        assert!("XXX".parse::<Currency>().is_err());
        assert_eq!("15%".parse::<Percent>().unwrap().fraction().to_string(), "0.15");
        assert!("15".parse::<Percent>().unwrap_err().contains("like \"15%\""));
        assert!("100%".parse::<Percent>().unwrap_err().contains("below 100%"));
        assert!("-1%".parse::<Percent>().is_err());
    }

    #[test]
    fn the_limit_is_ten_to_the_24() {
        assert_eq!(limit(), Decimal::from_i128_with_scale(1_000_000_000_000_000_000_000_000, 0));
    }

    #[test]
    fn arithmetic_past_the_limit_is_an_error() {
        let big = limit();
        assert!(matches!(mul(big, Decimal::TWO, "x"), Err(Error::Overflow(w)) if w == "x"));
        assert!(add(Decimal::MAX, Decimal::ONE, "y").is_err());
        assert!(mul(Decimal::ONE, Decimal::TWO, "z").is_ok());
    }
}
