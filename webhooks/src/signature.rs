//! `Meter-Signature`: an HMAC-SHA256, keyed with the endpoint's secret, over the timestamp, a
//! dot and the exact body, in the style of Stripe's `Stripe-Signature`:
//!
//! ```text
//! Meter-Signature: t=1794744000,v1=5257a869e7ecebeda32affa62cdca3fa51cad7e77a0e56ff536d0ce8e108d8bd
//! ```
//!
//! A receiver recomputes `hex(HMAC-SHA256(secret, "{t}.{body}"))`, compares it with `v1` in
//! constant time, and refuses a `t` more than five minutes from its clock (a replay).

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// How far a signature's time may be from the receiver's clock.
pub const TOLERANCE_SECS: i64 = 300;

/// Why a signature is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    /// Not `t=…,v1=…`.
    #[error("malformed Meter-Signature header")]
    Malformed,
    /// `t` is more than the tolerance away from now.
    #[error("signature timestamp is {0} s away from now (tolerance {TOLERANCE_SECS} s)")]
    Stale(i64),
    /// No `v1` matches the body.
    #[error("no signature matches the body")]
    Mismatch,
}

fn mac(secret: &str, t: i64, body: &[u8]) -> Hmac<Sha256> {
    let mut m = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes a key of any length");
    m.update(t.to_string().as_bytes());
    m.update(b".");
    m.update(body);
    m
}

/// The `Meter-Signature` header for `body` sent at `t` (Unix seconds).
pub fn sign(secret: &str, t: i64, body: &[u8]) -> String {
    format!("t={t},v1={}", hex::encode(mac(secret, t, body).finalize().into_bytes()))
}

/// Checks a `Meter-Signature` header against `body` at `now` (Unix seconds).
pub fn verify(secret: &str, header: &str, body: &[u8], now: i64) -> Result<(), Invalid> {
    let mut t = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = Some(v.parse::<i64>().map_err(|_| Invalid::Malformed)?),
            Some(("v1", v)) => signatures.push(hex::decode(v).map_err(|_| Invalid::Malformed)?),
            Some(_) => {}
            None => return Err(Invalid::Malformed),
        }
    }
    let t = t.ok_or(Invalid::Malformed)?;
    if signatures.is_empty() {
        return Err(Invalid::Malformed);
    }
    let age = now.saturating_sub(t);
    if age.unsigned_abs() > TOLERANCE_SECS as u64 {
        return Err(Invalid::Stale(age));
    }
    let expected = mac(secret, t, body);
    // verify_slice compares in constant time.
    if signatures.iter().any(|s| expected.clone().verify_slice(s).is_ok()) { Ok(()) } else { Err(Invalid::Mismatch) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_and_a_forged_or_stale_one_does_not() {
        let body = br#"{"id":"alrt_1"}"#;
        let header = sign("whsec_a", 1_794_744_000, body);
        assert!(header.starts_with("t=1794744000,v1="));
        assert_eq!(verify("whsec_a", &header, body, 1_794_744_100), Ok(()));
        assert_eq!(verify("whsec_b", &header, body, 1_794_744_100), Err(Invalid::Mismatch), "another secret");
        assert_eq!(verify("whsec_a", &header, br#"{"id":"alrt_2"}"#, 1_794_744_100), Err(Invalid::Mismatch));
        assert_eq!(verify("whsec_a", &header, body, 1_794_744_301), Err(Invalid::Stale(301)));
        let forged = header.replace("t=1794744000", "t=1794744200");
        assert_eq!(verify("whsec_a", &forged, body, 1_794_744_200), Err(Invalid::Mismatch), "a moved timestamp");
        assert_eq!(verify("whsec_a", "v1=00", body, 0), Err(Invalid::Malformed));
        assert_eq!(verify("whsec_a", "t=1,v1=zz", body, 1), Err(Invalid::Malformed));
        let extreme = format!("t={},v1=00", i64::MIN);
        assert!(matches!(verify("whsec_a", &extreme, body, 1_794_744_000), Err(Invalid::Stale(_))), "no overflow");
    }
}
