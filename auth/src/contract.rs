//! Contract tests of the key table's port ([`KeyTable`]): each body is written once and run
//! against every backend. A backend's test file calls [`keys_contract!`](crate::keys_contract)
//! with a factory of empty tables.

use crate::{KeyStore, KeyTable, Role, StoredKey};
use std::sync::Arc;

fn key(id: &str, role: Role, tenant: Option<&str>, at: &str) -> StoredKey {
    StoredKey {
        id: id.into(),
        hash: format!("hash-of-{id}"),
        role,
        tenant: tenant.map(str::to_string),
        created_at: at.into(),
    }
}

/// Stored keys are listed oldest first, found by hash while not revoked, and revoked once.
pub fn keys_are_stored_found_and_revoked(t: Arc<dyn KeyTable>) {
    assert!(t.is_empty().unwrap());
    t.insert(&key("k2", Role::Read, Some("acme"), "2026-11-02T00:00:00Z")).unwrap();
    t.insert(&key("k1", Role::Admin, None, "2026-11-01T00:00:00Z")).unwrap();
    assert!(!t.is_empty().unwrap());
    let listed: Vec<_> = t.list().unwrap().into_iter().map(|k| (k.id, k.role, k.tenant, k.revoked_at)).collect();
    assert_eq!(
        listed,
        vec![("k1".into(), Role::Admin, None, None), ("k2".into(), Role::Read, Some("acme".to_string()), None)]
    );
    let active = t.active().unwrap();
    assert_eq!(active["hash-of-k2"].tenant.as_deref(), Some("acme"));
    assert_eq!(active["hash-of-k2"].key_id, "k2");
    assert!(t.revoke("k2", "2026-11-03T00:00:00Z").unwrap());
    assert!(!t.revoke("k2", "2026-11-04T00:00:00Z").unwrap(), "revoked once");
    assert!(!t.revoke("nope", "2026-11-04T00:00:00Z").unwrap());
    assert!(!t.active().unwrap().contains_key("hash-of-k2"));
    let revoked = t.list().unwrap().into_iter().find(|k| k.id == "k2").unwrap();
    assert_eq!(revoked.revoked_at.as_deref(), Some("2026-11-03T00:00:00Z"));
    assert!(!t.is_empty().unwrap(), "a table that had keys is not empty");
}

/// An id or a hash stored twice is refused, and the first key is unchanged.
pub fn an_id_or_hash_is_stored_once(t: Arc<dyn KeyTable>) {
    t.insert(&key("k1", Role::Admin, None, "2026-11-01T00:00:00Z")).unwrap();
    assert!(t.insert(&key("k1", Role::Read, Some("b"), "2026-11-02T00:00:00Z")).is_err());
    let mut same_hash = key("k9", Role::Read, Some("b"), "2026-11-02T00:00:00Z");
    same_hash.hash = "hash-of-k1".into();
    assert!(t.insert(&same_hash).is_err());
    let listed = t.list().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].role, Role::Admin);
}

/// Through the cache: a created key authenticates, its secret is not what is stored, and a
/// revoked one no longer authenticates.
pub async fn keys_authenticate_through_the_cache(t: Arc<dyn KeyTable>) {
    let keys = KeyStore::new(t.clone()).unwrap();
    let k = keys.create(Role::Ingest, Some("acme")).unwrap();
    let stored = t.list().unwrap();
    assert_eq!(stored.len(), 1);
    assert!(!t.active().unwrap().contains_key(&k.secret), "only the hash is stored");
    let header = format!("Bearer {}", k.secret);
    let p = keys.authenticate(Some(&header)).await.unwrap();
    assert_eq!((p.role, p.tenant.as_deref()), (Role::Ingest, Some("acme")));
    assert!(keys.revoke(&k.id).unwrap());
    assert!(keys.authenticate(Some(&header)).await.is_err());
}

/// Expands to one test per contract body, for a backend given by a factory of empty tables.
#[macro_export]
macro_rules! keys_contract {
    ($table:expr) => {
        #[test]
        fn keys_are_stored_found_and_revoked() {
            $crate::contract::keys_are_stored_found_and_revoked($table);
        }

        #[test]
        fn an_id_or_hash_is_stored_once() {
            $crate::contract::an_id_or_hash_is_stored_once($table);
        }

        #[tokio::test]
        async fn keys_authenticate_through_the_cache() {
            $crate::contract::keys_authenticate_through_the_cache($table).await;
        }
    };
}
