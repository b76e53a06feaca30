//! The key table's and the sessions' contracts against Postgres (`METER_TEST_POSTGRES`, or a
//! private cluster), and what sharing them across hosts needs.

use meter_auth::{KeyStore, KeyTable, PgKeys, Role};
use meter_postgres::testing::{fresh_database, shared_url};
use meter_postgres::{MAX_CONNECTIONS, Pg, PgUrl};
use std::sync::Arc;

/// An empty, migrated database.
fn database() -> PgUrl {
    let url = fresh_database(&shared_url());
    PgKeys::migrate(&Pg::connect(&url, 1).unwrap()).unwrap();
    url
}

/// A process's view of the tables at `url`: a pool of its own, as on another host.
fn host(url: &PgUrl) -> PgKeys {
    PgKeys::open(Arc::new(Pg::connect(url, MAX_CONNECTIONS).unwrap())).unwrap()
}

fn table() -> Arc<dyn KeyTable> {
    Arc::new(host(&database()))
}

meter_auth::keys_contract!(table());

mod sessions {
    use super::{database, host};
    use meter_auth::SessionTable;
    use std::sync::Arc;

    fn table() -> Arc<dyn SessionTable> {
        Arc::new(host(&database()))
    }

    meter_auth::sessions_contract!(table());
}

#[test]
fn an_unmigrated_database_is_refused() {
    let url = fresh_database(&shared_url());
    let e = PgKeys::open(Arc::new(Pg::connect(&url, 1).unwrap())).err().unwrap().to_string();
    assert!(e.contains("keys schema version 0") && e.contains("run `meter migrate --state"), "{e}");
}

/// A key created through one host authenticates at once on another (an unknown key reloads the
/// table), and one revoked there stops working on the other once its cache is a second old.
#[tokio::test]
async fn keys_are_shared_across_hosts() {
    let url = database();
    let a = KeyStore::new(Arc::new(host(&url))).unwrap();
    let b = KeyStore::new(Arc::new(host(&url))).unwrap();
    let k = a.create(Role::Ingest, Some("acme")).unwrap();
    let header = format!("Bearer {}", k.secret);
    assert_eq!(b.authenticate(Some(&header)).await.unwrap().tenant.as_deref(), Some("acme"));
    assert!(a.revoke(&k.id).unwrap());
    assert!(a.authenticate(Some(&header)).await.is_err(), "refused at once where it was revoked");
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert!(b.authenticate(Some(&header)).await.is_err(), "refused on the other host after its reload");
}

/// Two hosts exchanging one link at the same moment: one gets the cookie.
#[test]
fn a_link_is_exchanged_once_across_hosts() {
    use meter_auth::session::{SessionKind, Sessions};
    let url = database();
    let made = Sessions::new(Arc::new(host(&url)))
        .create(SessionKind::Portal, Some("acme"), std::time::Duration::from_secs(600), "k", 1)
        .unwrap();
    let hosts: Vec<_> = (0..4).map(|_| Sessions::new(Arc::new(host(&url)))).collect();
    let barrier = Arc::new(std::sync::Barrier::new(hosts.len()));
    let won = std::thread::scope(|s| {
        let handles: Vec<_> = hosts
            .iter()
            .map(|h| {
                let (barrier, token) = (barrier.clone(), made.token.clone());
                s.spawn(move || {
                    barrier.wait();
                    h.exchange(&token, 2).unwrap().is_some()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).filter(|w| *w).count()
    });
    assert_eq!(won, 1);
}
