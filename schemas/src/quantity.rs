//! Exact decimal quantities parsed from text, never through `f64`.

use rust_decimal::Decimal;
use serde_json::Value;

/// The largest quantity one event may carry. Ten billion events at this size still fit a `Decimal`,
/// so a period total can never overflow.
pub const MAX_QUANTITY: Decimal = Decimal::from_parts(0xA764_0000, 0x0DE0_B6B3, 0, false, 0);

/// Most decimal places a quantity may have. With at most 10^18 per event, totals stay exact (a
/// `Decimal` holds 28 digits) up to 10^19.
pub const MAX_SCALE: u32 = 9;

/// Why a text is not an acceptable quantity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    /// Not a number at all.
    #[error("must be a decimal number")]
    NotANumber,
    /// `NaN`, `Infinity` and friends.
    #[error("must be a finite decimal number")]
    NotFinite,
    /// More digits or a larger exponent than 28 significant digits allow.
    #[error("is beyond the decimal range (at most 28 significant digits)")]
    OutOfRange,
    /// Below zero.
    #[error("must not be negative")]
    Negative,
    /// Above [`MAX_QUANTITY`].
    #[error("must be at most 1000000000000000000")]
    TooLarge,
    /// More decimal places than [`MAX_SCALE`].
    #[error("must have at most 9 decimal places")]
    TooPrecise,
    /// Has a fractional part where an integer is required.
    #[error("must be a non-negative integer")]
    NotInteger,
}

/// Parses a decimal from its exact text (`"12"`, `"0.25"`, `"1e3"`), refusing anything that would
/// be rounded.
pub fn parse_decimal(text: &str) -> Result<Decimal, QuantityError> {
    let t = text.strip_prefix('+').unwrap_or(text);
    if t.is_empty() || t.strip_prefix('-').unwrap_or(t).starts_with(['+', '-']) {
        return Err(QuantityError::NotANumber);
    }
    let unsigned = t.trim_start_matches('-');
    if ["nan", "inf", "infinity"].iter().any(|word| unsigned.eq_ignore_ascii_case(word)) {
        return Err(QuantityError::NotFinite);
    }
    if !t.bytes().all(|b| b.is_ascii_digit() || matches!(b, b'-' | b'.' | b'e' | b'E' | b'+')) {
        return Err(QuantityError::NotANumber);
    }
    if let Some((mantissa, _)) = t.split_once(['e', 'E']) {
        // `from_scientific` rounds a long mantissa; refuse one that a Decimal cannot hold exactly.
        if mantissa.trim_start_matches(['-', '+', '0', '.']).bytes().filter(u8::is_ascii_digit).count() > 28 {
            return Err(QuantityError::OutOfRange);
        }
        let d = Decimal::from_scientific(t).map_err(|_| QuantityError::OutOfRange)?;
        return Ok(d.normalize());
    }
    Decimal::from_str_exact(t).map_err(|e| match e {
        rust_decimal::Error::ErrorString(s) if !s.contains("overflow") => QuantityError::NotANumber,
        _ => QuantityError::OutOfRange,
    })
}

/// A non-negative quantity of at most [`MAX_QUANTITY`], from a JSON number or numeric string.
pub fn quantity(value: &Value) -> Result<Decimal, QuantityError> {
    let d = match value {
        Value::Number(n) => parse_decimal(n.as_str())?,
        Value::String(s) => parse_decimal(s)?,
        _ => return Err(QuantityError::NotANumber),
    };
    if d.is_sign_negative() && !d.is_zero() {
        return Err(QuantityError::Negative);
    }
    if d > MAX_QUANTITY {
        return Err(QuantityError::TooLarge);
    }
    let d = d.normalize();
    if d.scale() > MAX_SCALE {
        return Err(QuantityError::TooPrecise);
    }
    Ok(d)
}

/// A non-negative integer of at most [`MAX_QUANTITY`] (token counts, for instance).
pub fn count(value: &Value) -> Result<Decimal, QuantityError> {
    let d = quantity(value).map_err(|e| match e {
        QuantityError::NotANumber | QuantityError::Negative | QuantityError::TooPrecise => QuantityError::NotInteger,
        other => other,
    })?;
    if !d.fract().is_zero() {
        return Err(QuantityError::NotInteger);
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::str::FromStr;

    fn num(text: &str) -> Value {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn max_quantity_is_ten_to_the_eighteenth() {
        assert_eq!(MAX_QUANTITY.to_string(), "1000000000000000000");
    }

    #[test]
    fn exact_text_is_kept() {
        assert_eq!(quantity(&num("0.1")).unwrap().to_string(), "0.1");
        assert_eq!(quantity(&num("\"12.50\"")).unwrap().to_string(), "12.5");
        assert_eq!(quantity(&num("1e3")).unwrap().to_string(), "1000");
        assert_eq!(quantity(&num("123456789.123456789")).unwrap().to_string(), "123456789.123456789");
    }

    #[test]
    fn refuses_what_is_not_a_finite_decimal() {
        assert_eq!(quantity(&num("1e400")), Err(QuantityError::OutOfRange));
        assert_eq!(quantity(&num("\"NaN\"")), Err(QuantityError::NotFinite));
        assert_eq!(quantity(&num("\"-Infinity\"")), Err(QuantityError::NotFinite));
        assert_eq!(quantity(&num("-1")), Err(QuantityError::Negative));
        assert_eq!(quantity(&num("123456789012345678901234567890")), Err(QuantityError::OutOfRange));
        assert_eq!(quantity(&num("0.12345678901234567890123456789012")), Err(QuantityError::OutOfRange));
        assert_eq!(quantity(&num("0.12345678901234567890123456789012e0")), Err(QuantityError::OutOfRange));
        assert_eq!(quantity(&num("0.0000000001")), Err(QuantityError::TooPrecise));
        assert_eq!(quantity(&num("\"++5\"")), Err(QuantityError::NotANumber));
        assert_eq!(quantity(&num("0.000000001")).unwrap().to_string(), "0.000000001");
        assert_eq!(quantity(&num("1000000000000000001")), Err(QuantityError::TooLarge));
        assert_eq!(quantity(&num("true")), Err(QuantityError::NotANumber));
        assert_eq!(quantity(&num("\"12abc\"")), Err(QuantityError::NotANumber));
        assert_eq!(count(&num("1.5")), Err(QuantityError::NotInteger));
        assert_eq!(count(&num("-3")), Err(QuantityError::NotInteger));
        assert_eq!(count(&num("7")).unwrap().to_string(), "7");
    }

    proptest! {
        #[test]
        fn integers_round_trip_exactly(n in 0u64..=1_000_000_000_000_000_000) {
            let v = Value::String(n.to_string());
            prop_assert_eq!(count(&v).unwrap().to_string(), n.to_string());
        }

        #[test]
        fn decimals_round_trip_exactly(int in 0u64..1_000_000_000u64, frac in 0u32..1_000_000u32) {
            let text = format!("{int}.{frac:06}");
            let expected = Decimal::from_str(&text).unwrap().normalize();
            prop_assert_eq!(quantity(&Value::String(text)).unwrap(), expected);
        }
    }
}
