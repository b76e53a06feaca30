//! Contract tests of the ledger's port ([`LedgerStore`]): each body is written once and run
//! against every backend through [`Ledger`]. A backend's test file calls
//! [`ledger_contract!`](crate::ledger_contract) with a factory of empty stores.

use super::Close;
use super::outbox::{NewOperation, OpKind, OpState, Operation, ReceivedEvent, RemoteCustomer, RemoteInvoice, Settle};
use super::{Ledger, LedgerStore, Rows};
use crate::Error;
use meter_rater::pricebook::SAMPLE;
use meter_rater::{Command, Cycle, PriceBook, Setup};
use meter_schemas::Period;
use std::sync::Arc;

const METERS: &[&str] =
    &["work_orders", "work_orders_completed", "agent_invocations", "agent_tokens", "api_calls", "active_users"];

/// 2026-10-15T00:00:00Z.
const MID_OCTOBER: i64 = 1_791_849_600_000_000;
const DAY: i64 = 86_400_000_000;

/// The sample price book.
pub fn book() -> PriceBook {
    PriceBook::parse(SAMPLE, METERS, &["active_users"]).unwrap()
}

/// A monthly subscription to `plan`, renewing, without a trial.
pub fn setup(plan: &str) -> Setup {
    Setup { plan: plan.into(), cycle: Cycle::Monthly, term_years: 1, auto_renew: true, trial: false }
}

/// The invoices `period`'s pushes carry as listed, checked to be what claiming every due
/// operation gives. For a ledger whose due operations are that period's pushes, one per tenant
/// (a claim gives each tenant's oldest only, of every period); it claims them.
pub async fn pushed(ledger: &Ledger, period: &str) -> Vec<meter_rater::Invoice> {
    let invoices = |ops: Vec<Operation>| -> Vec<meter_rater::Invoice> {
        ops.iter().map(|o| serde_json::from_str(&o.body).unwrap()).collect()
    };
    let listed = invoices(ledger.operations(None, Some(period.parse().unwrap())).await.unwrap());
    let claimed = invoices(ledger.claim_operations(i64::MAX / 2, 1, 100_000).await.unwrap());
    assert_eq!(claimed, listed, "claimed as listed");
    listed
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

/// Every change of a subscription writes, in its transaction, the operation that mirrors it at
/// the provider, and the one that will mirror the next change time alone brings, due then.
pub async fn a_subscription_change_writes_its_mirror_and_the_one_time_will_bring(store: Arc<dyn LedgerStore>) {
    let ledger = Ledger::new(store);
    let book = book();
    let list = book.version("2026-01").unwrap();
    let trial = Setup { trial: true, ..setup("starter") };
    let a = ledger.create("acme", trial, MID_OCTOBER, "k", list).await.unwrap();
    let ends = a.trial_ends_us().unwrap();
    let mirrors = |kind| {
        let ledger = ledger.clone();
        async move {
            let ops = ledger.operations(Some(OpState::Pending), None).await.unwrap();
            ops.into_iter().filter(|o| o.kind == kind).map(|o| (o.subject, o.next_us)).collect::<Vec<_>>()
        }
    };
    assert_eq!(
        mirrors(OpKind::MirrorSubscription).await.iter().map(|m| &m.0).collect::<Vec<_>>(),
        [&format!("{}#1", a.id)]
    );
    assert_eq!(mirrors(OpKind::MirrorWhenDue).await, [(format!("{}@{ends}", a.id), ends)]);
    // Cancelled in its trial, it expires at the trial's end: the same instant, the same operation.
    ledger.apply(&a.id, Command::Cancel, MID_OCTOBER + DAY, "k", list.clone()).await.unwrap();
    assert_eq!(mirrors(OpKind::MirrorSubscription).await.len(), 2);
    assert_eq!(mirrors(OpKind::MirrorWhenDue).await, [(format!("{}@{ends}", a.id), ends)]);
    // One that renews by itself has nothing coming with time; until a payment fails: then its
    // suspension, when the grace runs out.
    let b = ledger.create("beta", setup("starter"), MID_OCTOBER, "k", list).await.unwrap();
    let due = mirrors(OpKind::MirrorWhenDue).await;
    assert!(due.iter().all(|(subject, _)| subject.starts_with(&a.id)), "{due:?}");
    let failed = Command::PaymentFailed { grace_us: Some(3 * DAY) };
    let b = ledger.apply(&b.id, failed, MID_OCTOBER + DAY, "k", list.clone()).await.unwrap();
    let suspends = MID_OCTOBER + 4 * DAY;
    assert_eq!(b.next_state_change(), Some(suspends));
    let due = mirrors(OpKind::MirrorWhenDue).await;
    assert!(due.contains(&(format!("{}@{suspends}", b.id), suspends)), "{due:?}");
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

/// What recording a close returns is the close as it reads back, byte for byte (a decimal's
/// scale too, which `==` does not compare): the close given, when it was recorded now (the
/// backends return it without reading it back), and the first, when one was recorded before.
pub async fn a_recorded_close_reads_back_byte_for_byte(store: Arc<dyn LedgerStore>) {
    let ledger = Ledger::new(store);
    let book = book();
    let list = book.version("2026-01").unwrap();
    let row = |tenant: &str, accepted: Option<&str>, stored: &str, status: &str| super::ReportRow {
        tenant: tenant.into(),
        meter: "api_calls".into(),
        accepted: accepted.map(Into::into),
        counted: Some("3".into()),
        stored: Some(stored.into()),
        rated: None,
        status: status.into(),
    };
    let close = Close {
        invoices: vec![invoice("acme", "2026-10", 3), invoice("béta \"ü\"", "2026-10", 0)],
        totals: [("USD".to_string(), rust_decimal::Decimal::new(3_003_300, 4))].into(),
        report: vec![row("acme", Some("3.000"), "3.0", "ok"), row("béta \"ü\"", None, "0", "counted 3, stored 0")],
        revisions: [("2026-09".parse().unwrap(), vec![invoice("acme", "2026-09", 1)])].into(),
        ..a_close("2026-10", &[])
    };
    let json = |c: &Close| serde_json::to_string(c).unwrap();
    let recorded = ledger.record(close.clone(), list).await.unwrap();
    assert_eq!(json(&recorded), json(&close), "the close given, as it reads back");
    let closed = ledger.closed("2026-10".parse().unwrap()).await.unwrap().unwrap();
    assert_eq!(json(&closed.header), json(&crate::ledger::Closed::of(close.clone()).header), "its header");
    let again = ledger.record(Close { closed_us: 9, invoices: vec![], ..close.clone() }, list).await.unwrap();
    assert_eq!(json(&again), json(&close), "the first close stands, read back");
}

/// A close reads in pages of any size, in its order, and its exports, written a page at a time,
/// are the bytes of its whole lists: pretty JSON as `serde_json` writes a list, CSV with one
/// header. A period not closed has neither.
pub async fn a_close_reads_in_pages_and_exports_the_same_bytes(store: Arc<dyn LedgerStore>) {
    use crate::export::{Export, Format};
    use crate::ledger::{Page, Rows};
    let ledger = Ledger::new(store);
    let book = book();
    let list = book.version("2026-01").unwrap();
    // Not in order: the ledger keeps a close's order, and the search sorts.
    let tenants = ["c2", "acme", "c3", "béta \"ü\"", "c1"];
    let close = Close {
        invoices: tenants.iter().enumerate().map(|(i, t)| invoice(t, "2026-10", i % 3)).collect(),
        report: report(7),
        ..a_close("2026-10", &[])
    };
    ledger.record(close.clone(), list).await.unwrap();
    ledger.record(a_close("2026-11", &[]), list).await.unwrap();
    let (october, november, december): (Period, Period, Period) =
        ("2026-10".parse().unwrap(), "2026-11".parse().unwrap(), "2026-12".parse().unwrap());
    let whole = |rows| serde_json::to_value(Page::of(close.clone(), rows, 0)).unwrap();
    for rows in [Rows::Invoices, Rows::Report] {
        for page in [1, 2, 3, 5, 100] {
            let mut read = Vec::new();
            loop {
                let got = ledger.close_rows(october, rows, read.len(), page).await.unwrap().unwrap();
                let n = got.len();
                read.extend(serde_json::to_value(got).unwrap().as_array().unwrap().iter().cloned());
                if n < page {
                    break;
                }
            }
            assert_eq!(serde_json::Value::Array(read), whole(rows), "{rows:?} in pages of {page}");
        }
        assert!(ledger.close_rows(october, rows, 7, 10).await.unwrap().unwrap().is_empty(), "past the end");
        assert_eq!(ledger.close_rows(december, rows, 0, 10).await.unwrap(), None, "not closed");
    }

    let export = async |period, rows, format, page| {
        let e = Export::open_paged(&ledger, period, rows, format, page).await.unwrap();
        String::from_utf8(e.unwrap().collect().await.unwrap()).unwrap()
    };
    fn pretty<T: serde::Serialize>(v: &T) -> String {
        serde_json::to_string_pretty(v).unwrap() + "\n"
    }
    let csv = export(october, Rows::Report, Format::Csv, usize::MAX).await;
    assert_eq!(csv.lines().count(), 8, "a header and a line a row: {csv}");
    for page in [1, 2, 3, 5, 7, 100] {
        assert_eq!(export(october, Rows::Invoices, Format::Json, page).await, pretty(&close.invoices), "{page}");
        assert_eq!(export(october, Rows::Report, Format::Json, page).await, pretty(&close.report), "{page}");
        let lines = crate::export::invoices_csv(&close.invoices);
        assert_eq!(export(october, Rows::Invoices, Format::Csv, page).await, lines, "{page}");
        assert_eq!(export(october, Rows::Report, Format::Csv, page).await, csv, "{page}");
    }
    assert_eq!(export(november, Rows::Invoices, Format::Json, 2).await, "[]\n", "a close without invoices");
    assert_eq!(export(november, Rows::Report, Format::Csv, 2).await, csv.lines().next().unwrap().to_string() + "\n");
    for rows in [Rows::Invoices, Rows::Report] {
        assert!(Export::open(&ledger, december, rows, Format::Json).await.unwrap().is_none(), "not closed");
    }
    use crate::search::{Query, of_in_pages, search};
    // The invoice search reads the close in pages too, finds what it finds in the whole list, and
    // gives the matches by tenant.
    let all = Query { with_empty: true, limit: 10, ..Query::default() };
    let tenants: Vec<String> =
        of_in_pages(&ledger, october, &all, 2).await.unwrap().unwrap().invoices.into_iter().map(|f| f.tenant).collect();
    assert_eq!(tenants, ["acme", "béta \"ü\"", "c1", "c2", "c3"]);
    for q in [
        Query { limit: 10, ..Query::default() },
        Query { text: "C".into(), offset: 1, limit: 1, ..Query::default() },
        Query { with_empty: true, offset: 2, limit: 2, ..Query::default() },
    ] {
        for page in [1, 2, 100] {
            let found = of_in_pages(&ledger, october, &q, page).await.unwrap().unwrap();
            assert_eq!(found, search(&close.invoices, &q), "{q:?}, pages of {page}");
        }
        assert_eq!(of_in_pages(&ledger, december, &q, 2).await.unwrap(), None, "not closed");
    }
}

/// `n` report rows whose tenants need quoting in CSV and escaping in JSON, some figures
/// missing, some rows differing.
pub fn report(n: usize) -> Vec<super::ReportRow> {
    (0..n)
        .map(|i| super::ReportRow {
            tenant: format!("t\"{i}, é"),
            meter: "api_calls".into(),
            accepted: i.is_multiple_of(2).then(|| format!("{i}.50")),
            counted: Some(i.to_string()),
            stored: None,
            rated: Some("0".into()),
            status: if i.is_multiple_of(3) { "ok".into() } else { "counted ≠ stored".into() },
        })
        .collect()
}

/// An invoice of `tenant` for `period` with `lines` lines.
pub fn invoice(tenant: &str, period: &str, lines: usize) -> meter_rater::Invoice {
    let p: Period = period.parse().unwrap();
    let book = book();
    let mut inv = meter_rater::Invoice::empty(tenant, &format!("sub_{tenant}"), p, book.version("2026-01").unwrap());
    let lines = (0..lines)
        .map(|i| meter_rater::Line {
            id: String::new(),
            kind: meter_rater::LineKind::BaseFee,
            description: format!("fee {i}"),
            meter: None,
            quantity: None,
            amount: rust_decimal::Decimal::new(1000 + i as i64, 2),
            lineage: meter_rater::Lineage {
                meters: Default::default(),
                watermark_us: None,
                price_version: "2026-01".into(),
                inputs_hash: format!("h{i}"),
            },
            service: None,
        })
        .collect();
    inv.append(lines).unwrap();
    inv
}

fn a_close_of(period: &str, invoices: Vec<meter_rater::Invoice>) -> Close {
    Close { invoices, ..a_close(period, &[]) }
}

/// Each closed invoice is found by its tenant (newest period first) and by its id, whatever
/// else the close holds; recording a period again changes none.
pub async fn a_tenants_closed_invoices_are_found_by_tenant_and_id(store: Arc<dyn LedgerStore>) {
    let ledger = Ledger::new(store);
    let list = book();
    let list = list.version("2026-01").unwrap();
    let oct = a_close_of("2026-10", vec![invoice("acme", "2026-10", 2), invoice("beta", "2026-10", 1)]);
    let nov = a_close_of("2026-11", vec![invoice("acme", "2026-11", 0)]);
    ledger.record(oct.clone(), list).await.unwrap();
    ledger.record(nov.clone(), list).await.unwrap();
    ledger
        .record(Close { closed_us: 9, invoices: vec![invoice("acme", "2026-10", 5)], ..oct.clone() }, list)
        .await
        .unwrap();
    let acme = ledger.invoices_of("acme").await.unwrap();
    assert_eq!(acme, [nov.invoices[0].clone(), oct.invoices[0].clone()], "newest first, as first recorded");
    assert_eq!(ledger.invoices_of("beta").await.unwrap(), [oct.invoices[1].clone()]);
    assert!(ledger.invoices_of("gamma").await.unwrap().is_empty());
    // By period, oldest first: October's two, then November's.
    let p = |s: &str| s.parse::<meter_schemas::Period>().unwrap();
    let mut october = oct.invoices.clone();
    october.sort_by(|a, b| a.id.cmp(&b.id));
    let both: Vec<_> = october.iter().cloned().chain([nov.invoices[0].clone()]).collect();
    assert_eq!(ledger.invoices_between(p("2026-09"), p("2026-11")).await.unwrap(), both);
    assert_eq!(ledger.invoices_between(p("2026-11"), p("2026-12")).await.unwrap(), [nov.invoices[0].clone()]);
    assert!(ledger.invoices_between(p("2026-12"), p("2027-03")).await.unwrap().is_empty());
    assert_eq!(ledger.invoice(&oct.invoices[1].id).await.unwrap().as_ref(), Some(&oct.invoices[1]));
    assert_eq!(ledger.invoice("inv_nope").await.unwrap(), None);
    // What the provider holds, with meter's invoice it carries.
    assert!(ledger.store().held_invoices().await.unwrap().is_empty());
    let held = RemoteInvoice {
        remote: "in_1".into(),
        invoice: oct.invoices[1].id.clone(),
        tenant: "beta".into(),
        status: "open".into(),
        sent_us: Some(5),
        due_us: None,
        paid_us: None,
        hosted_url: None,
        pdf_url: None,
    };
    ledger.store().record_remote_invoice(held.clone()).await.unwrap();
    assert_eq!(ledger.store().held_invoices().await.unwrap(), [(held, oct.invoices[1].clone())]);
}

/// A close writes, in its own transaction, one push per invoice that has lines; recording the
/// period again writes nothing more.
pub async fn a_close_writes_its_pushes_to_the_outbox_once(store: Arc<dyn LedgerStore>) {
    let ledger = Ledger::new(store);
    let list = book();
    let list = list.version("2026-01").unwrap();
    let close = a_close_of(
        "2026-10",
        vec![invoice("acme", "2026-10", 2), invoice("beta", "2026-10", 0), invoice("gamma", "2026-10", 1)],
    );
    ledger.record(close.clone(), list).await.unwrap();
    ledger.record(Close { closed_us: 9, ..close.clone() }, list).await.unwrap();
    let ops = ledger.operations(None, Some("2026-10".parse().unwrap())).await.unwrap();
    let got: Vec<(OpKind, String, String, OpState)> =
        ops.iter().map(|o| (o.kind, o.subject.clone(), o.tenant.clone(), o.state)).collect();
    assert_eq!(
        got,
        [
            (OpKind::PushInvoice, close.invoices[0].id.clone(), "acme".to_string(), OpState::Pending),
            (OpKind::PushInvoice, close.invoices[2].id.clone(), "gamma".to_string(), OpState::Pending),
        ]
    );
    let body: meter_rater::Invoice = serde_json::from_str(&ops[0].body).unwrap();
    assert_eq!(body, close.invoices[0]);
    assert!(ops.iter().all(|o| o.attempts == 0 && o.first_tried_us.is_none() && o.next_us == close.closed_us));
    assert!(ledger.operations(None, Some("2026-11".parse().unwrap())).await.unwrap().is_empty());
}

/// Claims take each tenant's oldest pending operation only, lease it, and respect a retry's
/// due time; done operations leave the queue; a dead one holds back its tenant's later ones
/// until it is revived.
pub async fn the_outbox_is_worked_one_operation_per_tenant_in_order(store: Arc<dyn LedgerStore>) {
    let ledger = Ledger::new(store);
    let list = book();
    let list = list.version("2026-01").unwrap();
    ledger.record(a_close_of("2026-09", vec![invoice("acme", "2026-09", 1)]), list).await.unwrap();
    ledger
        .record(a_close_of("2026-10", vec![invoice("acme", "2026-10", 1), invoice("beta", "2026-10", 1)]), list)
        .await
        .unwrap();
    let subjects = |ops: &[Operation]| ops.iter().map(|o| o.subject.clone()).collect::<Vec<_>>();
    let now = 1_000;
    let first = ledger.claim_operations(now, 100, 10).await.unwrap();
    assert_eq!(subjects(&first), [invoice("acme", "2026-09", 1).id, invoice("beta", "2026-10", 1).id]);
    assert!(first.iter().all(|o| o.first_tried_us == Some(now)));
    // Leased: nobody else takes them until the lease ends.
    assert!(ledger.claim_operations(now + 50, 100, 10).await.unwrap().is_empty());
    assert_eq!(ledger.claim_operations(now + 100, 100, 10).await.unwrap().len(), 2);
    let (acme, beta) = (&first[0], &first[1]);
    ledger.settle(acme.id, Settle::done("{}".into())).await.unwrap();
    ledger.settle(beta.id, Settle::Again { next_us: now + 500, error: "429".into() }).await.unwrap();
    let next = ledger.claim_operations(now + 200, 100, 10).await.unwrap();
    assert_eq!(next.len(), 1, "acme's October only; beta waits for its retry");
    assert_eq!(next[0].subject, invoice("acme", "2026-10", 1).id);
    assert_eq!(next[0].first_tried_us, Some(now + 200));
    ledger.settle(next[0].id, Settle::done("{}".into())).await.unwrap();
    let retried = ledger.claim_operations(now + 500, 100, 10).await.unwrap();
    assert_eq!(subjects(&retried), std::slice::from_ref(&beta.subject));
    assert_eq!(retried[0].attempts, 1);
    assert_eq!(retried[0].first_tried_us, Some(now), "the first try's time stays");
    ledger.settle(beta.id, Settle::Dead("Stripe refused: 400".into())).await.unwrap();
    let e = ledger.settle(beta.id, Settle::done("{}".into())).await.unwrap_err();
    assert!(matches!(e, Error::NoOperation(_)), "{e}");
    let dead = ledger.operations(Some(OpState::Dead), None).await.unwrap();
    assert_eq!((dead.len(), dead[0].outcome.as_deref()), (1, Some("Stripe refused: 400")));
    // beta's next invoice waits behind the dead one.
    ledger.record(a_close_of("2026-11", vec![invoice("beta", "2026-11", 1)]), list).await.unwrap();
    assert!(ledger.claim_operations(now + 550, 100, 10).await.unwrap().is_empty(), "held back by the dead one");
    ledger.revive(beta.id, now + 600).await.unwrap();
    assert!(matches!(ledger.revive(beta.id, now + 600).await.unwrap_err(), Error::NoOperation(_)));
    let revived = ledger.claim_operations(now + 600, 100, 10).await.unwrap();
    assert_eq!(revived.iter().map(|o| (o.id, o.attempts)).collect::<Vec<_>>(), [(beta.id, 2)]);
}

/// A done operation writes what follows it in the same step, once however often it is
/// settled or written again; a tenant's lanes are worked apart: a retry due later holds back
/// neither its tenant's next push nor the collection of another of its invoices.
pub async fn what_follows_an_operation_is_written_with_it_and_lanes_are_worked_apart(store: Arc<dyn LedgerStore>) {
    let ledger = Ledger::new(store);
    let list = book();
    let list = list.version("2026-01").unwrap();
    let sept = invoice("acme", "2026-09", 1);
    ledger.record(a_close_of("2026-09", vec![sept.clone()]), list).await.unwrap();
    let now = 1_000;
    let push = ledger.claim_operations(now, 100, 10).await.unwrap().remove(0);
    let step = |n: u32, due: i64| NewOperation {
        kind: OpKind::Collect,
        subject: format!("{}/{n}", sept.id),
        tenant: "acme".into(),
        period: Some("2026-09".into()),
        body: format!("{{\"step\":{n}}}"),
        next_us: due,
    };
    let settle = Settle::Done { outcome: "{}".into(), then: vec![step(0, now)] };
    ledger.settle(push.id, settle.clone()).await.unwrap();
    assert!(matches!(ledger.settle(push.id, settle).await.unwrap_err(), Error::NoOperation(_)));
    let ops = ledger.operations(None, None).await.unwrap();
    let kinds: Vec<_> = ops.iter().map(|o| (o.kind, o.subject.clone(), o.state)).collect();
    assert_eq!(
        kinds,
        [
            (OpKind::PushInvoice, sept.id.clone(), OpState::Done),
            (OpKind::Collect, format!("{}/0", sept.id), OpState::Pending)
        ]
    );
    assert_eq!(ops[1].body, r#"{"step":0}"#);
    let collect = ledger.claim_operations(now, 100, 10).await.unwrap();
    assert_eq!(collect.len(), 1);
    // The first collection failed: a retry in a week, and the suspension check after it.
    let week = 7 * DAY;
    let check = NewOperation {
        kind: OpKind::CheckSuspension,
        subject: sept.id.clone(),
        tenant: "acme".into(),
        period: Some("2026-09".into()),
        body: "{}".into(),
        next_us: now + 2 * week,
    };
    let then = vec![step(1, now + week), check.clone(), step(1, now + week)];
    ledger.settle(collect[0].id, Settle::Done { outcome: "{}".into(), then }).await.unwrap();
    assert_eq!(ledger.operations(Some(OpState::Pending), None).await.unwrap().len(), 2, "written once each");
    // October's push is not held back by September's retry, due in a week.
    let oct = invoice("acme", "2026-10", 1);
    ledger.record(a_close_of("2026-10", vec![oct.clone()]), list).await.unwrap();
    let due = ledger.claim_operations(now + 10, 100, 10).await.unwrap();
    assert_eq!(due.iter().map(|o| o.subject.clone()).collect::<Vec<_>>(), [oct.id]);
    ledger.settle(due[0].id, Settle::done("{}".into())).await.unwrap();
    let later = ledger.claim_operations(now + week, 100, 10).await.unwrap();
    assert_eq!(later.iter().map(|o| o.subject.clone()).collect::<Vec<_>>(), [format!("{}/1", sept.id)]);
    // Written again after it was done: nothing changes.
    ledger.settle(later[0].id, Settle::Done { outcome: "{}".into(), then: vec![step(0, now)] }).await.unwrap();
    let last = ledger.claim_operations(now + 2 * week, 100, 10).await.unwrap();
    assert_eq!(last.iter().map(|o| o.kind).collect::<Vec<_>>(), [OpKind::CheckSuspension]);
}

/// What the provider calls a tenant is recorded and replaced whole.
pub async fn remote_customers_are_recorded_per_tenant(store: Arc<dyn LedgerStore>) {
    let ledger = Ledger::new(store);
    assert_eq!(ledger.remote_customer("acme").await.unwrap(), None);
    let first = RemoteCustomer { tenant: "acme".into(), customer: "cus_1".into(), subscription: None };
    ledger.record_remote_customer(first.clone()).await.unwrap();
    assert_eq!(ledger.remote_customer("acme").await.unwrap(), Some(first));
    let second = RemoteCustomer { tenant: "acme".into(), customer: "cus_1".into(), subscription: Some("sub_9".into()) };
    ledger.record_remote_customer(second.clone()).await.unwrap();
    assert_eq!(ledger.remote_customer("acme").await.unwrap(), Some(second));
    assert_eq!(ledger.remote_customer("beta").await.unwrap(), None);
}

/// The provider's invoices move forward only; its events are kept once by id and come back per
/// object in the order the provider made them until processed.
pub async fn provider_invoices_move_forward_and_events_are_kept_once(store: Arc<dyn LedgerStore>) {
    let ri = |status: &str| RemoteInvoice {
        remote: "in_1".into(),
        invoice: "inv_a".into(),
        tenant: "acme".into(),
        status: status.into(),
        sent_us: None,
        due_us: None,
        paid_us: None,
        hosted_url: None,
        pdf_url: None,
    };
    let sent = RemoteInvoice {
        sent_us: Some(10),
        due_us: Some(30),
        hosted_url: Some("https://invoice.stripe.com/i/x".into()),
        pdf_url: Some("https://pay.stripe.com/invoice/x/pdf".into()),
        ..ri("open")
    };
    assert_eq!(store.record_remote_invoice(sent.clone()).await.unwrap(), sent);
    // A later word without the pages (an event's) keeps them.
    let paid = store.record_remote_invoice(RemoteInvoice { paid_us: Some(20), ..ri("paid") }).await.unwrap();
    assert_eq!(paid, RemoteInvoice { status: "paid".into(), paid_us: Some(20), ..sent.clone() });
    assert_eq!(store.record_remote_invoice(ri("open")).await.unwrap().status, "paid", "never back");
    // Pages learnt with a status already known are kept.
    let later = RemoteInvoice { pdf_url: Some("https://pay.stripe.com/invoice/x/pdf2".into()), ..ri("paid") };
    let paid = RemoteInvoice { pdf_url: later.pdf_url.clone(), ..paid };
    assert_eq!(store.record_remote_invoice(later).await.unwrap(), paid);
    assert_eq!(store.remote_invoice("in_1".into()).await.unwrap(), Some(paid.clone()));
    assert_eq!(store.remote_invoices_of(vec!["inv_a".into(), "inv_b".into()]).await.unwrap(), vec![paid]);
    assert_eq!(store.remote_invoice("in_2".into()).await.unwrap(), None);
    let remote = RemoteCustomer { tenant: "acme".into(), customer: "cus_1".into(), subscription: Some("sub_1".into()) };
    store.record_remote_customer(remote.clone()).await.unwrap();
    assert_eq!(store.remote_customer_by_id("cus_1".into()).await.unwrap(), Some(remote.clone()));
    assert_eq!(store.remote_customer_by_id("sub_1".into()).await.unwrap(), Some(remote));
    assert_eq!(store.remote_customer_by_id("cus_9".into()).await.unwrap(), None);

    let ev = |id: &str, object: &str, created: i64| ReceivedEvent {
        id: id.into(),
        kind: "invoice.paid".into(),
        created,
        object: object.into(),
        body: format!("{{\"id\":\"{id}\"}}"),
        outcome: None,
    };
    assert_eq!(store.latest_event_created().await.unwrap(), None);
    assert!(store.receive_event(ev("evt_2", "in_1", 20)).await.unwrap());
    assert!(store.receive_event(ev("evt_1", "in_1", 10)).await.unwrap());
    assert!(store.receive_event(ev("evt_3", "in_0", 30)).await.unwrap());
    assert!(!store.receive_event(ev("evt_1", "in_1", 10)).await.unwrap(), "a redelivery is not new");
    assert_eq!(store.latest_event_created().await.unwrap(), Some(30));
    let ids = |v: Vec<ReceivedEvent>| v.into_iter().map(|e| e.id).collect::<Vec<_>>();
    // In the order the provider made them, whatever their object.
    assert_eq!(ids(store.unprocessed_events(10).await.unwrap()), ["evt_1", "evt_2", "evt_3"]);
    store.processed_event("evt_1".into(), "ignored".into(), 5).await.unwrap();
    assert_eq!(ids(store.unprocessed_events(10).await.unwrap()), ["evt_2", "evt_3"]);
    assert_eq!(ids(store.unprocessed_events(1).await.unwrap()), ["evt_2"]);
}

/// Eight requests creating a subscription for one tenant at once: one is admitted, the others
/// are refused as a conflict, and one subscription is stored.
pub async fn concurrent_creates_for_one_tenant_admit_one(store: Arc<dyn LedgerStore>) {
    let ledger = Arc::new(Ledger::new(store));
    let tries: Vec<_> = (0..8)
        .map(|i| {
            let ledger = ledger.clone();
            tokio::spawn(async move {
                let book = book();
                let list = book.version("2026-01").unwrap();
                ledger.create("acme", setup("starter"), MID_OCTOBER + i, "k", list).await
            })
        })
        .collect();
    let mut admitted = 0;
    for t in tries {
        match t.await.unwrap() {
            Ok(_) => admitted += 1,
            Err(Error::Conflict(_)) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(admitted, 1);
    assert_eq!(ledger.list(Some("acme")).await.unwrap().len(), 1);
}

/// Six workers claiming at once never take one operation twice, and between them take every
/// lane's first.
pub async fn concurrent_workers_never_claim_one_operation(store: Arc<dyn LedgerStore>) {
    let ledger = Arc::new(Ledger::new(store));
    let invoices = (0..40).map(|t| invoice(&format!("t{t:02}"), "2026-10", 1)).collect();
    ledger.record(a_close_of("2026-10", invoices), book().version("2026-01").unwrap()).await.unwrap();
    let workers: Vec<_> = (0..6)
        .map(|_| {
            let ledger = ledger.clone();
            tokio::spawn(async move {
                let mut mine = Vec::new();
                loop {
                    let got = ledger.claim_operations(1_000, 10_000, 3).await.unwrap();
                    if got.is_empty() {
                        return mine;
                    }
                    mine.extend(got.into_iter().map(|o| o.id));
                }
            })
        })
        .collect();
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await.unwrap());
    }
    let n = all.len();
    all.sort_unstable();
    all.dedup();
    assert_eq!((all.len(), n), (40, 40), "each of the 40 tenants' pushes claimed once");
}

/// One close at a time: the lease is its holder's until it runs out, renewed by its holder,
/// taken over once it ran out, and given back by its holder only.
pub async fn one_close_holds_the_lease_at_a_time(store: Arc<dyn LedgerStore>) {
    let ledger = Ledger::new(store);
    let (oct, nov): (Period, Period) = ("2026-10".parse().unwrap(), "2026-11".parse().unwrap());
    assert_eq!(ledger.lease_close("a", oct, 100, 0).await.unwrap(), None);
    let held = ledger.lease_close("b", nov, 150, 50).await.unwrap().expect("a holds it until 100");
    assert_eq!(held, super::CloseHolder { holder: "a".into(), period: oct, since_us: 0, until_us: 100 });
    assert_eq!(ledger.lease_close("a", oct, 200, 60).await.unwrap(), None, "renewed");
    let held = ledger.lease_close("b", nov, 250, 150).await.unwrap().expect("renewed until 200");
    assert_eq!((held.since_us, held.until_us), (0, 200), "a renewal keeps the start");
    assert_eq!(ledger.lease_close("b", nov, 400, 201).await.unwrap(), None, "taken over once it ran out");
    let held = ledger.lease_close("a", oct, 450, 300).await.unwrap().expect("b holds it");
    assert_eq!(held, super::CloseHolder { holder: "b".into(), period: nov, since_us: 201, until_us: 400 });
    ledger.release_close("a").await.unwrap();
    assert!(ledger.lease_close("a", oct, 450, 300).await.unwrap().is_some(), "only its holder gives it back");
    ledger.release_close("b").await.unwrap();
    assert_eq!(ledger.lease_close("a", oct, 450, 300).await.unwrap(), None, "given back");
}

/// Eight closes starting at once: one takes the lease, and the others are told who has it.
pub async fn concurrent_closes_take_the_lease_once(store: Arc<dyn LedgerStore>) {
    let ledger = Arc::new(Ledger::new(store));
    let oct: Period = "2026-10".parse().unwrap();
    let tries: Vec<_> = (0..8)
        .map(|i| {
            let ledger = ledger.clone();
            tokio::spawn(async move { (i, ledger.lease_close(&format!("host-{i}"), oct, 1_000, 10).await.unwrap()) })
        })
        .collect();
    let mut winners = Vec::new();
    let mut told = Vec::new();
    for t in tries {
        match t.await.unwrap() {
            (i, None) => winners.push(format!("host-{i}")),
            (_, Some(h)) => told.push(h.holder),
        }
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
    assert!(told.iter().all(|h| *h == winners[0]), "{told:?} against {winners:?}");
}

/// A worker extends the claims it still holds, and only those: not one that ran out and was
/// claimed by another worker, nor one settled meanwhile.
pub async fn a_worker_renews_only_the_claims_it_still_holds(store: Arc<dyn LedgerStore>) {
    let ledger = Ledger::new(store);
    let invoices = ["acme", "beta", "coop"].iter().map(|t| invoice(t, "2026-10", 1)).collect();
    ledger.record(a_close_of("2026-10", invoices), book().version("2026-01").unwrap()).await.unwrap();
    let mut ids: Vec<i64> = ledger.claim_operations(1_000, 100, 10).await.unwrap().iter().map(|o| o.id).collect();
    ids.sort_unstable();
    assert_eq!(ids.len(), 3);
    let claims = |until: i64| ids.iter().map(|id| (*id, until)).collect::<Vec<_>>();
    let mut renewed = ledger.renew_claims(claims(1_100), 1_190).await.unwrap();
    renewed.sort_unstable();
    assert_eq!(renewed, ids);
    assert!(ledger.claim_operations(1_150, 100, 10).await.unwrap().is_empty(), "held past the first claim's end");
    assert!(ledger.renew_claims(claims(1_100), 1_300).await.unwrap().is_empty(), "not the claim it holds now");
    ledger.settle(ids[0], Settle::done("{}".into())).await.unwrap();
    // The others ran out at 1,190; another worker claims them.
    let taken = ledger.claim_operations(1_200, 100, 10).await.unwrap();
    assert_eq!(taken.len(), 2);
    assert!(ledger.renew_claims(claims(1_190), 1_400).await.unwrap().is_empty(), "lost to the other worker");
    let mut theirs = ledger.renew_claims(taken.iter().map(|o| (o.id, 1_300)).collect(), 1_400).await.unwrap();
    theirs.sort_unstable();
    assert_eq!(theirs, ids[1..]);
}

/// A close recorded as its parts come (its rows a range of tenants at a time, then its totals)
/// reads back as the close held whole, its positions running on across parts, with one push per
/// invoice that has lines; its answer counts its rows. Parts that stop before their end record
/// nothing: no close, no invoice, no push. A period closed before reads nothing of the parts.
pub async fn a_close_is_recorded_as_its_parts_come_or_not_at_all(store: Arc<dyn LedgerStore>) {
    use crate::ledger::{Closed, Part};
    let ledger = Ledger::new(store);
    let book = book();
    let list = book.version("2026-01").unwrap();
    let invoices: Vec<_> = (0..7).map(|t| invoice(&format!("t{t}"), "2026-10", t % 3)).collect();
    let report = report(11);
    let totals: std::collections::BTreeMap<String, rust_decimal::Decimal> =
        [("USD".to_string(), rust_decimal::Decimal::new(12_345, 2))].into();
    let whole =
        Close { invoices: invoices.clone(), report: report.clone(), totals: totals.clone(), ..a_close("2026-10", &[]) };
    let header = a_close("2026-10", &[]);
    let parts = |stop: bool| {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let (invoices, report, totals) = (invoices.clone(), report.clone(), totals.clone());
        let sending = tokio::spawn(async move {
            // Uneven parts: invoices alone, report rows alone, both, and an empty one.
            let cuts = [(0, 3, 0, 0), (3, 3, 0, 5), (3, 6, 5, 6), (6, 7, 6, 11), (7, 7, 11, 11)];
            for (a, b, c, d) in cuts {
                if tx.send(Part::Rows(invoices[a..b].to_vec(), report[c..d].to_vec())).await.is_err() {
                    return false;
                }
            }
            stop || tx.send(Part::End(totals)).await.is_ok()
        });
        (rx, sending)
    };
    let period: Period = "2026-10".parse().unwrap();

    let (rx, sending) = parts(true);
    let e = ledger.record_parts(header.clone(), list, rx).await.unwrap_err();
    assert!(sending.await.unwrap());
    assert!(matches!(e, Error::Task(_)) && e.to_string().contains("2026-10"), "{e}");
    assert_eq!(ledger.closed(period).await.unwrap(), None, "nothing recorded");
    assert_eq!(ledger.close_rows(period, Rows::Invoices, 0, 100).await.unwrap(), None);
    assert!(ledger.operations(None, None).await.unwrap().is_empty(), "no push");
    assert_eq!(ledger.invoices_of("t1").await.unwrap(), vec![], "no invoice");

    // While the parts come, the ledger is read: the close is not there yet.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let recording = tokio::spawn({
        let (ledger, header, list) = (ledger.clone(), header.clone(), list.clone());
        async move { ledger.record_parts(header, &list, rx).await }
    });
    tx.send(Part::Rows(invoices[..3].to_vec(), report[..5].to_vec())).await.unwrap();
    // Taken (the channel holds one): the recording began.
    tx.send(Part::Rows(vec![], vec![])).await.unwrap();
    let reads = async {
        assert_eq!(ledger.closed(period).await.unwrap(), None);
        assert!(ledger.close_rows(period, Rows::Report, 0, 10).await.unwrap().is_none());
        ledger.subscriptions_after(None, 10, i64::MAX).await.unwrap();
        ledger.list(None).await.unwrap();
    };
    tokio::time::timeout(std::time::Duration::from_secs(5), reads).await.expect("reads wait for no recording");
    drop(tx);
    assert!(matches!(recording.await.unwrap().unwrap_err(), Error::Task(_)), "its parts stopped: nothing recorded");
    assert_eq!(ledger.closed(period).await.unwrap(), None);

    let (rx, sending) = parts(false);
    let recorded = ledger.record_parts(header.clone(), list, rx).await.unwrap();
    assert!(sending.await.unwrap());
    let json = |c: &Close| serde_json::to_string(c).unwrap();
    let read = ledger.close_of(period).await.unwrap().unwrap();
    assert_eq!(json(&read), json(&whole), "the parts read back as the close held whole");
    let differences = report.iter().filter(|r| r.status != "ok").count();
    assert!(differences > 0 && differences < report.len());
    assert_eq!(
        recorded,
        Closed { header: Close { totals: totals.clone(), ..header.clone() }, invoices: 7, differences }
    );
    assert_eq!(ledger.closed(period).await.unwrap(), Some(recorded.clone()), "as it reads back");
    assert_eq!(Closed::of(read), recorded);
    let with_lines: Vec<_> = invoices.iter().filter(|i| !i.lines.is_empty()).cloned().collect();
    assert_eq!(pushed(&ledger, "2026-10").await, with_lines, "one push per invoice with lines");

    // Closed before: the first stands, and the parts are left unread.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(Part::Rows(vec![invoice("late", "2026-10", 1)], vec![])).await.unwrap();
    let again = ledger.record_parts(Close { closed_us: 9, ..header }, list, rx).await.unwrap();
    assert_eq!(again, recorded, "the first close stands");
    assert!(tx.is_closed(), "its parts are dropped unread");
    assert_eq!(ledger.invoices_of("late").await.unwrap(), vec![]);
}

/// A close reads the subscriptions a range of tenants at a time: by tenant in the order of their
/// bytes (as Rust orders strings), each tenant's oldest first, never a tenant's apart; the ranges
/// together are every subscription, once.
pub async fn subscriptions_are_read_a_range_of_tenants_at_a_time(store: Arc<dyn LedgerStore>) {
    let ledger = Ledger::new(store);
    let book = book();
    let list = book.version("2026-01").unwrap();
    for (i, t) in ["é", "a", "B", "ab", "a b"].iter().enumerate() {
        ledger.create(t, setup("starter"), MID_OCTOBER + i as i64, "k", list).await.unwrap();
    }
    // "a" subscribes again once its first subscription ended.
    let first = ledger.list(Some("a")).await.unwrap().remove(0);
    ledger.apply(&first.id, Command::Cancel, MID_OCTOBER + DAY, "k", list.clone()).await.unwrap();
    let again = ledger.create("a", setup("professional"), MID_OCTOBER + 40 * DAY, "k", list).await.unwrap();
    let ids = |subs: &[meter_rater::Subscription]| subs.iter().map(|s| s.id.clone()).collect::<Vec<_>>();
    let tenants = |subs: &[meter_rater::Subscription]| subs.iter().map(|s| s.tenant.clone()).collect::<Vec<_>>();
    let all = ledger.subscriptions_after(None, 100, i64::MAX).await.unwrap();
    assert_eq!(tenants(&all), ["B", "a", "a", "a b", "ab", "é"]);
    assert_eq!(ids(&all[1..3]), [first.id.clone(), again.id.clone()], "a tenant's oldest first");
    assert_eq!(tenants(&ledger.subscriptions_after(Some("B".into()), 1, i64::MAX).await.unwrap()), ["a", "a"]);
    assert_eq!(tenants(&ledger.subscriptions_after(Some("a".into()), 2, i64::MAX).await.unwrap()), ["a b", "ab"]);
    assert_eq!(tenants(&ledger.subscriptions_after(Some("A".into()), 1, i64::MAX).await.unwrap()), ["B"]);
    assert!(ledger.subscriptions_after(Some("é".into()), 3, i64::MAX).await.unwrap().is_empty());
    let before = ledger.subscriptions_after(None, 100, again.entries[0].at_us).await.unwrap();
    assert_eq!(tenants(&before), ["B", "a", "a b", "ab", "é"], "those created before an instant");
    for n in 1..=6 {
        let (mut read, mut after) = (Vec::new(), None);
        loop {
            let page = ledger.subscriptions_after(after.clone(), n, i64::MAX).await.unwrap();
            let Some(last) = page.last() else { break };
            let distinct: std::collections::BTreeSet<&str> = page.iter().map(|s| s.tenant.as_str()).collect();
            assert!(distinct.len() <= n, "{n}: {distinct:?}");
            after = Some(last.tenant.clone());
            read.extend(page);
        }
        assert_eq!(ids(&read), ids(&all), "in ranges of {n} tenants");
    }
}

/// Expands to one test per contract body, for a backend given by a factory of empty stores.
#[macro_export]
macro_rules! ledger_contract {
    ($store:expr) => {
        $crate::ledger_contract!(@t $store; a_price_list_that_rated_a_closed_period_may_not_change,
            a_tenant_has_one_live_subscription, a_closed_period_is_never_rewritten,
            a_close_writes_its_pushes_to_the_outbox_once, the_outbox_is_worked_one_operation_per_tenant_in_order,
            what_follows_an_operation_is_written_with_it_and_lanes_are_worked_apart,
            remote_customers_are_recorded_per_tenant, provider_invoices_move_forward_and_events_are_kept_once,
            a_subscription_change_writes_its_mirror_and_the_one_time_will_bring,
            a_tenants_closed_invoices_are_found_by_tenant_and_id, concurrent_creates_for_one_tenant_admit_one,
            concurrent_workers_never_claim_one_operation, one_close_holds_the_lease_at_a_time,
            concurrent_closes_take_the_lease_once, a_worker_renews_only_the_claims_it_still_holds,
            a_recorded_close_reads_back_byte_for_byte, a_close_reads_in_pages_and_exports_the_same_bytes,
            a_close_is_recorded_as_its_parts_come_or_not_at_all, subscriptions_are_read_a_range_of_tenants_at_a_time);
    };
    (@t $store:expr; $($name:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                $crate::ledger::contract::$name($store).await;
            }
        )*
    };
}
