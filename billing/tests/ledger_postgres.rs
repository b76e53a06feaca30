//! The ledger's contract against Postgres (`METER_TEST_POSTGRES`, or a private cluster), and
//! what several hosts writing one ledger need.

use meter_billing::Ledger;
use meter_billing::ledger::contract::{a_close, book, invoice};
use meter_billing::ledger::{LedgerStore, PgLedger};
use meter_postgres::testing::{fresh_database, shared_url};
use meter_postgres::{MAX_CONNECTIONS, Pg, PgUrl};
use std::sync::Arc;

fn database() -> PgUrl {
    let url = fresh_database(&shared_url());
    PgLedger::migrate(&Pg::connect(&url, 1).unwrap()).unwrap();
    url
}

/// A process's view of the ledger at `url`: a pool of its own, as on another host.
fn host(url: &PgUrl) -> PgLedger {
    PgLedger::open(Arc::new(Pg::connect(url, MAX_CONNECTIONS).unwrap())).unwrap()
}

fn store() -> Arc<dyn LedgerStore> {
    Arc::new(host(&database()))
}

meter_billing::ledger_contract!(store());

/// A close too long for one value is kept in parts and reads back the same; recording it again
/// keeps the first.
#[tokio::test]
async fn a_large_close_is_kept_in_parts() {
    let ledger = Ledger::new(Arc::new(host(&database()).with_part_bytes(1000)));
    let invoices = (0..30).map(|t| invoice(&format!("t{t:02}"), "2026-10", 3)).collect();
    let big = meter_billing::Close { invoices, ..a_close("2026-10", &[]) };
    assert!(serde_json::to_vec(&big).unwrap().len() > 5000);
    let book = book();
    let list = book.version("2026-01").unwrap();
    assert_eq!(ledger.record(big.clone(), list).await.unwrap(), big);
    assert_eq!(ledger.close_of("2026-10".parse().unwrap()).await.unwrap().unwrap(), big);
    let mut again = big.clone();
    again.closed_us = 8;
    assert_eq!(ledger.record(again, list).await.unwrap(), big);
    assert_eq!(ledger.invoices_of("t07").await.unwrap().len(), 1);
}

/// Three hosts creating one tenant's subscription at once: one is admitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hosts_admit_one_subscription_per_tenant() {
    let url = database();
    let hosts: Vec<Arc<Ledger>> = (0..3).map(|_| Arc::new(Ledger::new(Arc::new(host(&url))))).collect();
    let tries: Vec<_> = hosts
        .iter()
        .cycle()
        .take(9)
        .enumerate()
        .map(|(i, ledger)| {
            let ledger = ledger.clone();
            tokio::spawn(async move {
                let book = book();
                let setup = meter_rater::Setup {
                    plan: "starter".into(),
                    cycle: meter_rater::Cycle::Monthly,
                    term_years: 1,
                    auto_renew: true,
                    trial: false,
                };
                ledger
                    .create("acme", setup, 1_791_849_600_000_000 + i as i64, "k", book.version("2026-01").unwrap())
                    .await
            })
        })
        .collect();
    let mut admitted = 0;
    for t in tries {
        admitted += usize::from(t.await.unwrap().is_ok());
    }
    assert_eq!(admitted, 1);
}
