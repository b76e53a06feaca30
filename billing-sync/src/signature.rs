//! Stripe's webhook signatures (`Stripe-Signature: t=…,v1=…[,v1=…]`): HMAC-SHA256 of
//! `"{t}.{body}"` under the endpoint's secret, checked before anything else is read of a request.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// How far a signature's timestamp may be from now, either way (Stripe's own libraries: 300 s).
pub const TOLERANCE_S: i64 = 300;

/// Why a signature is refused. Each says what is wrong and never echoes a secret.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No `Stripe-Signature` header.
    #[error("Stripe-Signature header is missing")]
    Missing,
    /// The header is not `t=<unix seconds>,v1=<hex>…`.
    #[error("Stripe-Signature header is malformed: {0}")]
    Malformed(&'static str),
    /// No `v1` value matches the body under any configured secret.
    #[error("Stripe-Signature does not match the body under the configured webhook secret")]
    Mismatch,
    /// Signed too long ago (a replay) or in the future.
    #[error("Stripe-Signature timestamp {t} is {age} s from now, beyond the {TOLERANCE_S} s tolerance")]
    Stale {
        /// The signed timestamp.
        t: i64,
        /// Now minus `t`, seconds.
        age: i64,
    },
}

/// Checks `header` against `body`: some `v1` value must match under some secret of `secrets`
/// (several during a rotation) and the timestamp must be within [`TOLERANCE_S`] of `now_s`.
/// Returns the signed timestamp.
pub fn verify(body: &[u8], header: Option<&str>, secrets: &[String], now_s: i64) -> Result<i64, SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let mut t = None;
    let mut candidates = Vec::new();
    for part in header.split(',') {
        let (k, v) = part.trim().split_once('=').ok_or(SignatureError::Malformed("a part without '='"))?;
        match k {
            "t" => t = Some(v.parse::<i64>().map_err(|_| SignatureError::Malformed("t is not a number"))?),
            "v1" => candidates.push(hex::decode(v).map_err(|_| SignatureError::Malformed("v1 is not hex"))?),
            _ => {}
        }
    }
    let t = t.ok_or(SignatureError::Malformed("no t"))?;
    if candidates.is_empty() {
        return Err(SignatureError::Malformed("no v1 signature"));
    }
    let matches = secrets.iter().any(|secret| {
        let mac = signer(secret, t, body);
        candidates.iter().any(|c| mac.clone().verify_slice(c).is_ok())
    });
    if !matches {
        return Err(SignatureError::Mismatch);
    }
    let age = now_s - t;
    if age.abs() > TOLERANCE_S {
        return Err(SignatureError::Stale { t, age });
    }
    Ok(t)
}

/// The header Stripe would send for `body` signed with `secret` at `t` (tests, and a stand-in's
/// events).
pub fn sign(body: &[u8], secret: &str, t: i64) -> String {
    format!("t={t},v1={}", hex::encode(signer(secret, t, body).finalize().into_bytes()))
}

fn signer(secret: &str, t: i64, body: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &[u8] = br#"{"id":"evt_1","type":"invoice.paid"}"#;
    const NOW: i64 = 1_800_000_000;

    fn secrets(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_signature_made_with_the_secret_within_tolerance_passes() {
        let h = sign(BODY, "whsec_a", NOW - 10);
        assert_eq!(verify(BODY, Some(&h), &secrets(&["whsec_a"]), NOW), Ok(NOW - 10));
    }

    #[test]
    fn forged_altered_and_malformed_signatures_are_refused() {
        let s = secrets(&["whsec_a"]);
        let forged = sign(BODY, "whsec_other", NOW);
        assert_eq!(verify(BODY, Some(&forged), &s, NOW), Err(SignatureError::Mismatch));
        let h = sign(BODY, "whsec_a", NOW);
        assert_eq!(verify(b"{\"id\":\"evt_2\"}", Some(&h), &s, NOW), Err(SignatureError::Mismatch));
        assert_eq!(verify(BODY, None, &s, NOW), Err(SignatureError::Missing));
        assert!(matches!(verify(BODY, Some("v1=00"), &s, NOW), Err(SignatureError::Malformed(_))));
        assert!(matches!(verify(BODY, Some(&format!("t={NOW}")), &s, NOW), Err(SignatureError::Malformed(_))));
        assert!(matches!(verify(BODY, Some("t=x,v1=00"), &s, NOW), Err(SignatureError::Malformed(_))));
        assert!(matches!(verify(BODY, Some("garbage"), &s, NOW), Err(SignatureError::Malformed(_))));
        // The header's other schemes (v0) are not signatures meter accepts.
        let v0 = sign(BODY, "whsec_a", NOW).replace("v1=", "v0=");
        assert!(matches!(verify(BODY, Some(&v0), &s, NOW), Err(SignatureError::Malformed(_))));
    }

    #[test]
    fn a_replay_older_than_the_tolerance_and_a_future_timestamp_are_refused() {
        let s = secrets(&["whsec_a"]);
        let old = sign(BODY, "whsec_a", NOW - TOLERANCE_S - 1);
        assert_eq!(verify(BODY, Some(&old), &s, NOW), Err(SignatureError::Stale { t: NOW - 301, age: 301 }));
        let edge = sign(BODY, "whsec_a", NOW - TOLERANCE_S);
        assert!(verify(BODY, Some(&edge), &s, NOW).is_ok());
        let future = sign(BODY, "whsec_a", NOW + TOLERANCE_S + 1);
        assert!(matches!(verify(BODY, Some(&future), &s, NOW), Err(SignatureError::Stale { .. })));
    }

    #[test]
    fn several_v1_values_and_a_rotated_secret_are_accepted() {
        // Stripe signs with every active secret during a rotation: one header, two v1 values.
        let new = sign(BODY, "whsec_new", NOW);
        let old = sign(BODY, "whsec_old", NOW);
        let both = format!("{new},{}", old.split(',').nth(1).unwrap());
        assert!(verify(BODY, Some(&both), &secrets(&["whsec_old"]), NOW).is_ok());
        assert!(verify(BODY, Some(&both), &secrets(&["whsec_new"]), NOW).is_ok());
        // meter configured with both secrets while it rolls over.
        assert!(verify(BODY, Some(&old), &secrets(&["whsec_new", "whsec_old"]), NOW).is_ok());
        assert_eq!(verify(BODY, Some(&old), &secrets(&[]), NOW), Err(SignatureError::Mismatch));
    }
}
