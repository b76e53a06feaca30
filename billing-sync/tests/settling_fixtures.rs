//! A debit on its way (SEPA, ACH: days between the charge and its outcome), which localstripe
//! cannot show (its debits succeed at once): Stripe's answers are served from Stripe's published
//! fixtures (`../shared/stripe/fixtures3.json`), an invoice whose payment intent is
//! `processing`, then `requires_payment_method` (the debit did not go through). The Stripe
//! backend, the collector and the ledger are meter's own; only the server is a stand-in.
//!
//! The charge is neither paid nor failed while the debit is on its way; the invoice is looked
//! at again every `settling_check`; when the debit fails, that is the failure of the attempt
//! that started it, dunning from then.

use axum::Router;
use axum::extract::{Path, State};
use axum::routing::{get, post};
use meter_billing::Ledger;
use meter_billing::ledger::outbox::{OpKind, OpState, RemoteInvoice, Settle};
use meter_billing_sync::Collection;
use meter_billing_sync::collect::Collect;
use meter_billing_sync::testing::{billing_of, invoice, quick_stripe};
use meter_billing_sync::worker::{self, Worker};
use meter_rater::{Cycle, Setup, State as SubState};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

const DAY: i64 = 86_400_000_000;

fn fixtures() -> &'static Value {
    static FIXTURES: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    FIXTURES.get_or_init(|| {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/stripe/fixtures3.json");
        serde_json::from_str(&std::fs::read_to_string(path).expect("Stripe's fixtures beside the project")).unwrap()
    })
}

/// The stand-in's state: whether the debit failed, and what it was asked.
#[derive(Default)]
struct Bank {
    failed: AtomicBool,
    pays: AtomicUsize,
    reads: AtomicUsize,
}

/// Stripe's invoice fixture as `id`, open; with its payment's intent expanded when `intent`.
fn open_invoice(id: &str, intent: Option<&str>) -> Value {
    let r = &fixtures()["resources"];
    let mut inv = r["invoice"].clone();
    inv["id"] = json!(id);
    inv["status"] = json!("open");
    if let Some(status) = intent {
        let mut pi = r["payment_intent"].clone();
        pi["status"] = json!(status);
        let mut payment = r["invoice_payment"].clone();
        payment["payment"]["payment_intent"] = pi;
        inv["payments"] =
            json!({ "object": "list", "data": [payment], "has_more": false, "url": "/v1/invoice_payments" });
    }
    inv
}

async fn serve(bank: Arc<Bank>) -> String {
    async fn pay(State(bank): State<Arc<Bank>>, Path(id): Path<String>) -> axum::Json<Value> {
        bank.pays.fetch_add(1, Ordering::SeqCst);
        // /pay answers the invoice as Stripe does, its payments not expanded.
        axum::Json(open_invoice(&id, None))
    }
    async fn read(State(bank): State<Arc<Bank>>, Path(id): Path<String>) -> axum::Json<Value> {
        bank.reads.fetch_add(1, Ordering::SeqCst);
        let intent = if bank.failed.load(Ordering::SeqCst) { "requires_payment_method" } else { "processing" };
        axum::Json(open_invoice(&id, Some(intent)))
    }
    let app =
        Router::new().route("/v1/invoices/{id}/pay", post(pay)).route("/v1/invoices/{id}", get(read)).with_state(bank);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

#[tokio::test]
async fn a_debit_on_its_way_is_neither_paid_nor_failed_until_its_outcome_comes() {
    let bank = Arc::new(Bank::default());
    let url = serve(bank.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("billing.db");
    let grace = Duration::from_secs(15 * 86_400);
    let t0 = meter_schemas::period::now_us() + 1_000_000;
    let mut inv = invoice("epsilon", "EUR", &["120.00"]);
    {
        let (subs, notices) = billing_of(&Ledger::open(&path).unwrap(), dir.path(), grace);
        let setup =
            Setup { plan: "starter".into(), cycle: Cycle::Monthly, term_years: 1, auto_renew: true, trial: false };
        inv.subscription = subs.create("epsilon", setup, t0, "test", t0).await.unwrap().id;
        notices.register("http://127.0.0.1:9/billing", Some("epsilon"), false).await.unwrap();
    }
    let ledger = meter_billing_sync::testing::ledger_with(&path, vec![inv.clone()]).await;
    // The invoice was pushed as `in_epsilon` (its push settled with its collection's first step,
    // as the worker settles one).
    let store = ledger.store();
    let claimed = store.claim_operations(t0, 60_000_000, 10).await.unwrap();
    let push = claimed.into_iter().find(|o| o.kind == OpKind::PushInvoice).unwrap();
    let first = Collect::first(&inv, "in_epsilon", Collection::ChargeAutomatically, None);
    store.settle(push.id, Settle::Done { outcome: "{}".into(), then: vec![first.operation(t0)] }).await.unwrap();
    store
        .record_remote_invoice(RemoteInvoice {
            remote: "in_epsilon".into(),
            invoice: inv.id.clone(),
            tenant: "epsilon".into(),
            status: "open".into(),
            sent_us: Some(t0),
            due_us: None,
            paid_us: None,
            hosted_url: None,
            pdf_url: None,
        })
        .await
        .unwrap();
    let (subs, notices) = billing_of(&ledger, dir.path(), grace);
    let settings = worker::Settings {
        min_backoff: Duration::ZERO,
        max_backoff: Duration::ZERO,
        settling_check: Duration::from_secs(2 * 86_400),
        ..Default::default()
    };
    let worker = Worker::new(subs, quick_stripe(&url, 3, Duration::from_secs(2)), notices.clone(), settings);
    let step = |label: &'static str| {
        let ledger = ledger.clone();
        async move {
            let ops = ledger.operations(None, None).await.unwrap();
            ops.into_iter()
                .find(|o| o.kind == OpKind::Collect && o.subject == format!("{}/{label}", "inv_epsilon_2026-10"))
        }
    };
    let state = |at: i64| {
        let ledger = ledger.clone();
        async move {
            let mut sub = ledger.list(Some("epsilon")).await.unwrap().pop().unwrap();
            sub.advance(at);
            sub.state()
        }
    };

    // Charged: the debit is on its way. Not paid, not failed; looked at again in two days.
    worker.work_due(t0).await.unwrap();
    assert_eq!((bank.pays.load(Ordering::SeqCst), bank.reads.load(Ordering::SeqCst)), (1, 1));
    let charged = step("first").await.unwrap();
    assert!(charged.outcome.as_deref().unwrap().contains("\"processing\""), "{charged:?}");
    assert_eq!(state(t0).await, SubState::Active);
    let look = step("settling-0-1").await.expect("a look at the debit is written");
    assert_eq!((look.state, look.next_us), (OpState::Pending, t0 + 2 * DAY));
    worker.work_due(t0 + 2 * DAY - 1).await.unwrap();
    assert_eq!(bank.reads.load(Ordering::SeqCst), 1, "nothing before it is due");

    // Two days on, still on its way: another look, and nothing charged again.
    worker.work_due(t0 + 2 * DAY).await.unwrap();
    assert!(step("settling-0-1").await.unwrap().outcome.unwrap().contains("\"processing\""));
    assert_eq!(step("settling-0-2").await.unwrap().next_us, t0 + 4 * DAY);
    assert_eq!(bank.pays.load(Ordering::SeqCst), 1);
    assert_eq!(state(t0 + 2 * DAY).await, SubState::Active);

    // The debit did not go through: the first attempt failed, from then; dunning starts.
    bank.failed.store(true, Ordering::SeqCst);
    worker.work_due(t0 + 4 * DAY).await.unwrap();
    let failed = step("settling-0-2").await.unwrap();
    assert!(failed.outcome.as_deref().unwrap().contains("\"failed\""), "{failed:?}");
    assert!(failed.outcome.as_deref().unwrap().contains("did not go through"), "{failed:?}");
    assert_eq!(state(t0 + 4 * DAY).await, SubState::PastDue);
    let retry = step("retry-1").await.expect("the first retry is written");
    assert_eq!(retry.next_us, t0 + 5 * DAY, "a day after the failure");
    let told = notices.deliveries(meter_webhooks::Scope::Tenant("epsilon"), None, 10).await.unwrap();
    let kinds: Vec<&str> = told.iter().map(|d| d.alert_id.split(':').next().unwrap()).collect();
    assert!(kinds.contains(&"billing.payment_failed"), "{kinds:?}");
}
