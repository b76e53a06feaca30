//! Idempotency keys: derived from what a request does and its parameters, so that the same
//! request always carries the same key (a retry after a lost reply is answered with the first
//! reply) and a changed parameter carries a new one.

use sha2::{Digest, Sha256};

/// A form or query string with its pairs sorted: the same parameters in any order (async-stripe
/// encodes metadata from a `HashMap`, whose order changes from one process to the next) give
/// the same bytes.
pub fn canonical_form(form: &str) -> String {
    let mut pairs: Vec<&str> = form.split('&').filter(|p| !p.is_empty()).collect();
    pairs.sort_unstable();
    pairs.join("&")
}

/// The key of `method path?query` with `body`: `meter_` and the SHA-256 of their canonical
/// forms (Stripe keeps keys up to 255 characters).
pub fn idempotency_key(method: &str, path: &str, query: Option<&str>, body: Option<&str>) -> String {
    occasion_key(method, path, query, body, None)
}

/// The key of a request that is meant to be made again on purpose with the same parameters
/// (the second try of a payment, a week after the first failed): `occasion` names which time
/// it is, so each occasion has its key, and each retry of one occasion the same key.
pub fn occasion_key(
    method: &str,
    path: &str,
    query: Option<&str>,
    body: Option<&str>,
    occasion: Option<&str>,
) -> String {
    let mut h = Sha256::new();
    for part in [method, path, &canonical_form(query.unwrap_or("")), &canonical_form(body.unwrap_or(""))] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    if let Some(occasion) = occasion {
        h.update((occasion.len() as u64).to_be_bytes());
        h.update(occasion.as_bytes());
    }
    format!("meter_{}", hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_request_gets_the_same_key_whatever_the_order_of_its_parameters() {
        let a = idempotency_key("POST", "/customers", None, Some("metadata[a]=1&metadata[b]=2&name=x"));
        let b = idempotency_key("POST", "/customers", None, Some("name=x&metadata[b]=2&metadata[a]=1"));
        assert_eq!(a, b);
        assert!(a.starts_with("meter_") && a.len() <= 255);
    }

    #[test]
    fn a_changed_parameter_path_or_method_gets_a_new_key() {
        let base = idempotency_key("POST", "/customers", None, Some("name=x"));
        assert_ne!(base, idempotency_key("POST", "/customers", None, Some("name=y")));
        assert_ne!(base, idempotency_key("POST", "/customers/cus_1", None, Some("name=x")));
        assert_ne!(base, idempotency_key("DELETE", "/customers", None, Some("name=x")));
        assert_ne!(base, idempotency_key("POST", "/customers", Some("name=x"), None));
        // Each occasion of the same request has its own key, the same on every try.
        let pay = |o| occasion_key("POST", "/invoices/in_1/pay", None, Some(""), o);
        assert_eq!(pay(None), idempotency_key("POST", "/invoices/in_1/pay", None, Some("")));
        assert_ne!(pay(Some("attempt=0")), pay(Some("attempt=1")));
        assert_ne!(pay(Some("attempt=0")), pay(None));
        assert_eq!(pay(Some("attempt=1")), pay(Some("attempt=1")));
        // Lengths are part of the hash: moving a boundary changes the key.
        assert_ne!(idempotency_key("POST", "/a", None, Some("b")), idempotency_key("POST", "/ab", None, None));
    }
}
