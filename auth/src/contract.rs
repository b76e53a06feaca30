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

/// A session's link is exchanged once, while the session lives, for a cookie that then
/// authenticates as the session's kind and tenant until it expires or is revoked; nothing but
/// hashes is stored; sessions are listed by tenant, newest first.
pub fn sessions_are_exchanged_once_and_live_until_expired_or_revoked(t: Arc<dyn crate::SessionTable>) {
    use crate::session::{COOKIE_PREFIX, SessionKind, Sessions};
    use crate::{AuthError, Role};
    use std::time::Duration;
    const MIN: i64 = 60_000_000;
    let now = 1_800_000_000_000_000;
    let sessions = Sessions::new(t.clone());
    let hour = Duration::from_secs(3600);
    let a = sessions.create(SessionKind::Portal, Some("acme"), hour, "key_admin", now).unwrap();
    assert!(!format!("{a:?}").contains(&a.token), "the token never prints");
    assert_eq!(a.info.expires_us, now + 60 * MIN);
    // Refused before anything is stored.
    for (kind, tenant, ttl) in [
        (SessionKind::Portal, None, hour),
        (SessionKind::Portal, Some("bad tenant"), hour),
        (SessionKind::Console, Some("acme"), hour),
        (SessionKind::Portal, Some("acme"), Duration::from_secs(59)),
        (SessionKind::Console, None, Duration::from_secs(25 * 3600)),
    ] {
        let e = sessions.create(kind, tenant, ttl, "key_admin", now).unwrap_err().to_string();
        assert!(e.starts_with("tenant") || e.starts_with("ttl"), "{e}");
    }
    assert_eq!(t.list(None).unwrap().len(), 1);

    // Exchanged once: a second exchange of the same link, or an unknown one, gets nothing.
    let x = sessions.exchange(&a.token, now + MIN).unwrap().expect("a live link is exchanged");
    assert!(x.secret.starts_with(COOKIE_PREFIX) && !format!("{x:?}").contains(&x.secret));
    assert_eq!(x.info.exchanged_us, Some(now + MIN));
    assert!(sessions.exchange(&a.token, now + 2 * MIN).unwrap().is_none(), "a link works once");
    assert!(sessions.exchange("mtl_unknown", now).unwrap().is_none());
    assert!(sessions.exchange("not a token", now).unwrap().is_none());
    let p = sessions.authenticate(&x.secret, now + 2 * MIN).unwrap();
    assert_eq!((p.role, p.tenant.as_deref(), p.key_id.as_str()), (Role::Read, Some("acme"), a.info.id.as_str()));
    // Not after it expires.
    assert_eq!(sessions.authenticate(&x.secret, now + 60 * MIN), Err(AuthError::Unauthenticated));
    assert_eq!(sessions.authenticate("mts_unknown", now), Err(AuthError::Unauthenticated));
    assert_eq!(sessions.authenticate(&a.token, now + 2 * MIN), Err(AuthError::Unauthenticated), "a link is no cookie");

    // An expired link is not exchanged; a revoked session neither, nor does its cookie work.
    let late = sessions.create(SessionKind::Portal, Some("beta"), Duration::from_secs(60), "k", now).unwrap();
    assert!(sessions.exchange(&late.token, now + MIN).unwrap().is_none(), "expired");
    let c = sessions.create(SessionKind::Console, None, hour, "key_admin", now + 1).unwrap();
    let cx = sessions.exchange(&c.token, now + 2).unwrap().unwrap();
    assert_eq!(sessions.authenticate(&cx.secret, now + 3).unwrap().role, Role::Admin);
    assert!(sessions.revoke(&c.info.id, now + 4).unwrap());
    assert!(!sessions.revoke(&c.info.id, now + 5).unwrap(), "revoked once");
    assert_eq!(sessions.authenticate(&cx.secret, now + 6), Err(AuthError::Unauthenticated));
    let r = sessions.create(SessionKind::Portal, Some("acme"), hour, "k", now + 7).unwrap();
    assert!(sessions.revoke(&r.info.id, now + 8).unwrap());
    assert!(sessions.exchange(&r.token, now + 9).unwrap().is_none(), "a revoked link");

    // Listed by tenant, newest first, with what became of each.
    let acme: Vec<_> = t.list(Some("acme")).unwrap().into_iter().map(|s| (s.id, s.revoked_us)).collect();
    assert_eq!(acme, [(r.info.id.clone(), Some(now + 8)), (a.info.id.clone(), None)]);
    assert_eq!(t.list(None).unwrap().len(), 4);
    assert_eq!(t.get(&c.info.id).unwrap().unwrap().revoked_us, Some(now + 4));
    assert!(t.get("ses_nope").unwrap().is_none());
}

/// Expands to one test per contract body of the session table, for a backend given by a
/// factory of empty tables.
#[macro_export]
macro_rules! sessions_contract {
    ($table:expr) => {
        #[test]
        fn sessions_are_exchanged_once_and_live_until_expired_or_revoked() {
            $crate::contract::sessions_are_exchanged_once_and_live_until_expired_or_revoked($table);
        }
    };
}
