//! A line's amount as the integer of minor units a payment provider takes, never rounded again.

use meter_rater::money::Currency;
use rust_decimal::Decimal;

/// Why an amount cannot be sent as it is.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unrepresentable {
    /// More digits after the point than the currency's minor unit: rounding it would change
    /// what meter billed.
    #[error("{amount} {currency} has more decimals than the currency's {minor} and would be rounded")]
    TooPrecise {
        /// The amount.
        amount: Decimal,
        /// Its currency.
        currency: &'static str,
        /// The currency's decimals.
        minor: u32,
    },
    /// Stripe takes three-decimal currencies (BHD, JOD, KWD, OMR, TND) in thousandths whose last
    /// digit is 0.
    #[error("{amount} {currency}: Stripe takes three-decimal currencies only in multiples of 0.010")]
    ThreeDecimalNotEndingInZero {
        /// The amount.
        amount: Decimal,
        /// Its currency.
        currency: &'static str,
    },
    /// Beyond what an integer of minor units holds.
    #[error("{amount} {currency} is too large to send")]
    TooLarge {
        /// The amount.
        amount: Decimal,
        /// Its currency.
        currency: &'static str,
    },
}

/// `amount` in `currency`'s minor units (cents; yen; thousandths of a dinar), exactly.
pub fn minor_units(amount: Decimal, currency: Currency) -> Result<i64, Unrepresentable> {
    let minor = currency.minor_units();
    let code = currency.code();
    let scaled = amount * Decimal::from(10_i64.pow(minor));
    if scaled.fract() != Decimal::ZERO {
        return Err(Unrepresentable::TooPrecise { amount, currency: code, minor });
    }
    let units = i64::try_from(scaled.trunc()).map_err(|_| Unrepresentable::TooLarge { amount, currency: code })?;
    if minor == 3 && units % 10 != 0 {
        return Err(Unrepresentable::ThreeDecimalNotEndingInZero { amount, currency: code });
    }
    Ok(units)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    fn c(code: &str) -> Currency {
        code.parse().unwrap()
    }

    #[test]
    fn amounts_become_minor_units_exactly() {
        assert_eq!(minor_units(d("12.34"), c("USD")), Ok(1234));
        assert_eq!(minor_units(d("-0.01"), c("EUR")), Ok(-1));
        assert_eq!(minor_units(d("0.10"), c("USD")), Ok(10));
        assert_eq!(minor_units(d("1500"), c("JPY")), Ok(1500));
        assert_eq!(minor_units(d("1.230"), c("KWD")), Ok(1230));
        assert_eq!(minor_units(d("-2.5"), c("BHD")), Ok(-2500));
        // A number carrying trailing zeros beyond the minor unit is still exact.
        assert_eq!(minor_units(d("7.1000"), c("USD")), Ok(710));
    }

    #[test]
    fn what_would_be_rounded_is_refused_with_its_reason() {
        let e = minor_units(d("0.005"), c("USD")).unwrap_err();
        assert!(matches!(e, Unrepresentable::TooPrecise { minor: 2, .. }), "{e}");
        assert!(e.to_string().contains("0.005 USD"), "{e}");
        assert!(matches!(minor_units(d("1.5"), c("JPY")), Err(Unrepresentable::TooPrecise { .. })));
        let e = minor_units(d("1.235"), c("KWD")).unwrap_err();
        assert!(matches!(e, Unrepresentable::ThreeDecimalNotEndingInZero { .. }), "{e}");
        assert!(matches!(minor_units(d("100000000000000000000"), c("USD")), Err(Unrepresentable::TooLarge { .. })));
    }
}
