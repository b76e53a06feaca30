//! Hard limits checked by several ingest hosts against one Postgres: the holds of accepted
//! events not counted yet are shared, so a tenant at 1,999 of 2,000 with twenty racing
//! requests spread over two hosts gets exactly one accepted.

use meter_billing::{HardLimits, Ledger, PlanAllowances};
use meter_ingest::Quota;
use meter_postgres::testing::{fresh_database, shared_url};
use meter_postgres::{MAX_CONNECTIONS, Pg, PgUrl};
use meter_rater::{Cycle, PriceBook, Setup};
use meter_schemas::{Catalog, Event, Period};
use meter_store::{LiveStore, Metered, PgStore, Progress};
use std::sync::Arc;

fn invocation(i: usize, now: i64) -> Event {
    Event {
        tenant: "t".into(),
        id: format!("e{i}"),
        code: "agent.invocation".into(),
        time_us: now,
        implicit_time: false,
        subscription: None,
        source: None,
        properties: serde_json::from_str(r#"{"model": "m", "input_tokens": 1, "output_tokens": 1}"#).unwrap(),
    }
}

/// Two hosts' hard limits (each a pool of its own) for a Starter tenant (agent invocations: a
/// hard limit of 2,000).
async fn hosts(url: &PgUrl) -> (tempfile::TempDir, Vec<Arc<HardLimits>>) {
    let dir = tempfile::tempdir().unwrap();
    let catalog = Arc::new(Catalog::new(vec![]).unwrap());
    let names: Vec<&str> = catalog.meters().iter().map(|m| m.name.as_str()).collect();
    let book = Arc::new(PriceBook::parse(meter_rater::pricebook::SAMPLE, &names, &["active_users"]).unwrap());
    let ledger = Ledger::open(&dir.path().join("billing.db")).unwrap();
    let now = meter_schemas::period::now_us();
    let setup = Setup { plan: "starter".into(), cycle: Cycle::Monthly, term_years: 1, auto_renew: true, trial: false };
    ledger.create("t", setup, now, "test", book.for_period(Period::containing(now)).unwrap()).await.unwrap();
    let allowances = Arc::new(PlanAllowances::new(book));
    allowances.refresh(&ledger, now).await.unwrap();
    let hosts = (0..2)
        .map(|_| {
            let live: Arc<dyn LiveStore> =
                Arc::new(PgStore::open(Arc::new(Pg::connect(url, MAX_CONNECTIONS).unwrap())).unwrap());
            Arc::new(HardLimits::new(allowances.clone(), live, catalog.clone()))
        })
        .collect();
    (dir, hosts)
}

/// Twenty one-event requests at once, ten through each host: how many are accepted.
async fn race(hosts: &[Arc<HardLimits>], first: usize, now: i64) -> usize {
    let tries: Vec<_> = (0..20)
        .map(|n| {
            let host = hosts[n % 2].clone();
            tokio::spawn(async move { host.refused(&[invocation(first + n, now)]).await.unwrap().is_empty() })
        })
        .collect();
    let mut accepted = 0;
    for t in tries {
        accepted += usize::from(t.await.unwrap());
    }
    accepted
}

fn database() -> PgUrl {
    let url = fresh_database(&shared_url());
    PgStore::migrate(&Pg::connect(&url, 1).unwrap()).unwrap();
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn at_1999_of_2000_twenty_requests_over_two_hosts_get_one_accepted() {
    let url = database();
    let (_dir, hosts) = hosts(&url).await;
    let now = meter_schemas::period::now_us();
    // 1,999 counted.
    let counted: Vec<Event> = (0..1999).map(|i| invocation(i, now)).collect();
    let metered: Vec<Metered> = counted
        .iter()
        .enumerate()
        .map(|(n, e)| Metered {
            tenant: e.tenant.clone(),
            id: e.id.clone(),
            offset: n as u64,
            time_us: e.time_us,
            contributions: hosts[0].catalog.contributions(e).0,
            groups: vec![],
        })
        .collect();
    let progress =
        Progress { partitions: vec![meter_store::Advance { partition: 0, from: 0, to: 1999 }], watermark_us: None };
    hosts[0].live.checkpoint("c").unwrap();
    hosts[0].live.apply("c", hosts[0].catalog.meters(), &metered, &progress).unwrap();
    assert_eq!(race(&hosts, 10_000, now).await, 1);
    // Resends of counted events still go through, on either host.
    assert!(hosts[1].refused(&counted[..5]).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_held_on_one_host_count_against_the_limit_on_the_other() {
    let url = database();
    let (_dir, hosts) = hosts(&url).await;
    let now = meter_schemas::period::now_us();
    // 1,999 accepted through host 0, not counted yet.
    let held: Vec<Event> = (0..1999).map(|i| invocation(i, now)).collect();
    assert!(hosts[0].refused(&held).await.unwrap().is_empty());
    let r = hosts[1].refused(&[invocation(5000, now), invocation(5001, now)]).await.unwrap();
    assert_eq!(r.len(), 1, "the 2,001st is refused on the other host: {r:?}");
    assert!(r[0].1.contains("to 2001"), "{r:?}");
    assert_eq!(race(&hosts, 10_000, now).await, 1);
    // A resend of a held event goes through on the other host.
    assert!(hosts[1].refused(&held[..3]).await.unwrap().is_empty());
}

/// A hold that cannot be read fails the check (ingest answers 503) rather than counting as
/// nothing, and keeps nothing of the request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_hold_fails_the_check_instead_of_counting_as_nothing() {
    let url = database();
    let (_dir, hosts) = hosts(&url).await;
    let now = meter_schemas::period::now_us();
    assert!(hosts[0].refused(&[invocation(1, now)]).await.unwrap().is_empty());
    let pg = Pg::connect(&url, 1).unwrap();
    assert_eq!(pg.execute("UPDATE limit_holds SET adds = 'not json'", &[]).unwrap(), 1);
    let e = hosts[1].refused(&[invocation(2, now)]).await.unwrap_err();
    assert!(e.contains("hard-limit hold of tenant t"), "{e}");
    let held: i64 = pg.query_one("SELECT count(*) FROM limit_holds", &[]).unwrap().get(0);
    assert_eq!(held, 1, "nothing of the failed request is held");
}
