//! Contract tests of the ledger's port ([`LedgerStore`]): each body is written once and run
//! against every backend through [`Ledger`]. A backend's test file calls
//! [`ledger_contract!`](crate::ledger_contract) with a factory of empty stores.

use super::{Ledger, LedgerStore};
use crate::Error;
use crate::close::Close;
use meter_rater::pricebook::SAMPLE;
use meter_rater::{Command, Cycle, PriceBook, Setup};
use meter_schemas::Period;
use std::sync::Arc;

const METERS: &[&str] =
    &["work_orders", "work_orders_completed", "agent_invocations", "agent_tokens", "api_calls", "active_users"];

/// 2026-10-15T00:00:00Z.
const MID_OCTOBER: i64 = 1_791_849_600_000_000;
const DAY: i64 = 86_400_000_000;

fn book() -> PriceBook {
    PriceBook::parse(SAMPLE, METERS, &["active_users"]).unwrap()
}

fn setup(plan: &str) -> Setup {
    Setup { plan: plan.into(), cycle: Cycle::Monthly, term_years: 1, auto_renew: true, trial: false }
}

/// A close of `period` with nothing in it but its watermark and revisions.
pub fn a_close(period: &str, revises: &[&str]) -> Close {
    Close {
        period: period.parse().unwrap(),
        closed_at: "2026-11-02T00:00:00Z".into(),
        closed_us: 7,
        watermark: String::new(),
        watermark_us: 42,
        complete: false,
        price_version: "2026-01".into(),
        invoices: vec![],
        totals: Default::default(),
        report: vec![],
        revisions: revises.iter().map(|p| (p.parse().unwrap(), vec![])).collect(),
    }
}

/// A price list that rated a closed period may not change or go; a later list may be added.
pub async fn a_price_list_that_rated_a_closed_period_may_not_change(store: Arc<dyn LedgerStore>) {
    let ledger = Ledger::new(store);
    let book = PriceBook::parse(SAMPLE, METERS, &["active_users"]).unwrap();
    ledger.check_price_book(&book).await.unwrap();
    let period: Period = "2026-10".parse().unwrap();
    let close = Close {
        period,
        closed_at: String::new(),
        closed_us: 0,
        watermark: String::new(),
        watermark_us: 0,
        complete: true,
        price_version: "2026-01".into(),
        invoices: vec![],
        totals: Default::default(),
        report: vec![],
        revisions: Default::default(),
    };
    ledger.record(close, book.version("2026-01").unwrap()).await.unwrap();
    ledger.check_price_book(&book).await.unwrap();
    let edited = PriceBook::parse(&SAMPLE.replace("\"25.00\"", "\"26.00\""), METERS, &["active_users"]).unwrap();
    let err = ledger.check_price_book(&edited).await.unwrap_err().to_string();
    assert!(err.contains("price list 2026-01 changed after it rated the closed period 2026-10"), "{err}");
    // A new list with a later date is the way to change prices.
    let next = SAMPLE
        .replace("version = \"2026-01\"", "version = \"2027-01\"")
        .replace("effective = 2026-01-01", "effective = 2027-01-01")
        .replace("\"25.00\"", "\"26.00\"");
    let later = PriceBook::parse(&format!("{SAMPLE}\n{next}"), METERS, &["active_users"]).unwrap();
    assert_eq!(later.for_period("2027-03".parse().unwrap()).unwrap().version, "2027-01");
    ledger.check_price_book(&later).await.unwrap();
}

/// A tenant has one live subscription at a time; subscriptions list oldest first, change in
/// one step, and an unknown id is not found.
pub async fn a_tenant_has_one_live_subscription(store: Arc<dyn LedgerStore>) {
    let ledger = Ledger::new(store);
    let book = book();
    let list = book.version("2026-01").unwrap();
    let a = ledger.create("acme", setup("starter"), MID_OCTOBER, "k", list).await.unwrap();
    let b = ledger.create("beta", setup("professional"), MID_OCTOBER + 1, "k", list).await.unwrap();
    let e = ledger.create("acme", setup("professional"), MID_OCTOBER + 2, "k", list).await.unwrap_err();
    assert!(matches!(e, Error::Conflict(_)), "{e}");
    let ids: Vec<String> = ledger.list(None).await.unwrap().into_iter().map(|s| s.id).collect();
    assert_eq!(ids, [a.id.clone(), b.id.clone()]);
    assert_eq!(ledger.list(Some("beta")).await.unwrap().len(), 1);
    let changed = ledger
        .apply(
            &a.id,
            Command::ChangePlan { plan: "professional".into(), cycle: None },
            MID_OCTOBER + DAY,
            "k",
            list.clone(),
        )
        .await
        .unwrap();
    assert_eq!(ledger.get(&a.id).await.unwrap(), changed);
    assert_ne!(changed, a);
    assert!(matches!(ledger.get("sub_nope").await.unwrap_err(), Error::NotFound(_)));
    let e = ledger.apply("sub_nope", Command::Cancel, MID_OCTOBER + DAY, "k", list.clone()).await.unwrap_err();
    assert!(matches!(e, Error::NotFound(_)), "{e}");
}

/// Once a period is being closed, no change may be dated inside it, and a close is recorded
/// once: recording it again returns the first.
pub async fn a_closed_period_is_never_rewritten(store: Arc<dyn LedgerStore>) {
    let ledger = Ledger::new(store);
    let book = book();
    let list = book.version("2026-01").unwrap();
    let a = ledger.create("acme", setup("starter"), MID_OCTOBER, "k", list).await.unwrap();
    let october: Period = "2026-10".parse().unwrap();
    ledger.freeze(october).await.unwrap();
    let e = ledger.create("beta", setup("starter"), MID_OCTOBER + DAY, "k", list).await.unwrap_err();
    assert!(matches!(e, Error::Closed(_)), "{e}");
    let e = ledger.apply(&a.id, Command::Cancel, MID_OCTOBER + DAY, "k", list.clone()).await.unwrap_err();
    assert!(matches!(e, Error::Closed(_)), "{e}");
    let november = october.end_us() + DAY;
    ledger.apply(&a.id, Command::Cancel, november, "k", list.clone()).await.unwrap();
    let first = a_close("2026-10", &[]);
    assert_eq!(ledger.record(first.clone(), list).await.unwrap(), first);
    let mut second = first.clone();
    second.closed_us = 8;
    assert_eq!(ledger.record(second, list).await.unwrap(), first, "the first close stands");
    assert_eq!(ledger.close_of(october).await.unwrap(), Some(first));
    assert_eq!(ledger.close_of(october.next()).await.unwrap(), None);
    ledger.record(a_close("2026-11", &["2026-10"]), list).await.unwrap();
    let summaries = ledger.close_summaries().await.unwrap();
    let revised: Vec<(String, Vec<String>)> =
        summaries.iter().map(|s| (s.period.to_string(), s.revises.iter().map(|p| p.to_string()).collect())).collect();
    assert_eq!(revised, [("2026-10".into(), vec![]), ("2026-11".into(), vec!["2026-10".to_string()])]);
    assert!(summaries.iter().all(|s| s.watermark_us == 42));
}

/// Expands to one test per contract body, for a backend given by a factory of empty stores.
#[macro_export]
macro_rules! ledger_contract {
    ($store:expr) => {
        $crate::ledger_contract!(@t $store; a_price_list_that_rated_a_closed_period_may_not_change,
            a_tenant_has_one_live_subscription, a_closed_period_is_never_rewritten);
    };
    (@t $store:expr; $($name:ident),*) => {
        $(
            #[tokio::test]
            async fn $name() {
                $crate::ledger::contract::$name($store).await;
            }
        )*
    };
}
