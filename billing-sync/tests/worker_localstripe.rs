//! The outbox worker: a close recorded in the ledger reaches localstripe (through the faulting,
//! key-enforcing proxy) exactly once per invoice, and each synced invoice's collection starts
//! (charged, or sent); without a provider every push says it was not synced; an invoice Stripe
//! cannot take goes to the dead list and holds back no other tenant.

use meter_billing::Ledger;
use meter_billing::ledger::outbox::{OpKind, OpState};
use meter_billing_sync::stripe::{Client, Settings, Stripe};
use meter_billing_sync::testing::proxy::Proxy;
use meter_billing_sync::testing::{KEY, LocalStripe, billing_of, direct, invoice, quick_stripe};
use meter_billing_sync::worker::{self, Worker};
use meter_billing_sync::{NoProvider, Provider};
use meter_rater::Invoice;
use reqwest::Method;
use rust_decimal::Decimal;
use std::sync::Arc;
use std::time::Duration;

async fn ledger_with(invoices: Vec<Invoice>) -> (Ledger, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    (meter_billing_sync::testing::ledger_with(&dir.path().join("billing.db"), invoices).await, dir)
}

fn worker(ledger: &Ledger, dir: &tempfile::TempDir, provider: Arc<dyn Provider>) -> Worker {
    let (subs, notices) = billing_of(ledger, dir.path(), meter_billing::subscriptions::DEFAULT_GRACE);
    Worker::new(subs, provider, notices, quick())
}

fn quick() -> worker::Settings {
    worker::Settings {
        poll: Duration::from_millis(10),
        lease: Duration::from_secs(60),
        batch: 8,
        min_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(20),
        // Net-30 by bank transfer for one tenant; cards for the others.
        terms: toml::from_str(r#"tenants = { tenant-03 = { method = "send_invoice", days_until_due = 30 } }"#).unwrap(),
        ..Default::default()
    }
}

/// Works the outbox until nothing pending is due (or gives up after a while).
async fn drain(worker: &Worker, ledger: &Ledger) {
    for _ in 0..500 {
        let now = meter_schemas::period::now_us();
        let pending = ledger.operations(Some(OpState::Pending), None).await.unwrap();
        if pending.iter().all(|o| o.next_us > now) {
            return;
        }
        worker.work_due(meter_schemas::period::now_us()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("operations still pending: {:?}", ledger.operations(Some(OpState::Pending), None).await.unwrap());
}

#[tokio::test]
async fn a_recorded_close_reaches_stripe_once_per_invoice_and_a_bad_one_is_dead() {
    let stand_in = LocalStripe::start();
    let proxy = Proxy::start(&stand_in.url, 5, Duration::from_secs(2)).await;
    let mut invoices: Vec<Invoice> = (0..12)
        .map(|i| invoice(&format!("tenant-{i:02}"), "EUR", &["10.00", &format!("{i}.{i:02}"), "-1.00"]))
        .collect();
    invoices.push(invoice("kuwait", "KWD", &["1.234"]));
    let (ledger, dir) = ledger_with(invoices.clone()).await;
    let stripe = quick_stripe(&proxy.url, 3, Duration::from_millis(1000));
    let worker = worker(&ledger, &dir, stripe);
    drain(&worker, &ledger).await;

    let all = ledger.operations(None, None).await.unwrap();
    let ops: Vec<_> = all.iter().filter(|o| o.kind == OpKind::PushInvoice).collect();
    assert_eq!(ops.len(), 13);
    for (op, inv) in ops.iter().zip(&invoices) {
        assert_eq!(op.subject, inv.id);
        if inv.tenant == "kuwait" {
            assert_eq!(op.state, OpState::Dead);
            assert!(op.outcome.as_deref().unwrap().contains("multiples of 0.010"), "{op:?}");
            continue;
        }
        assert_eq!(op.state, OpState::Done, "{op:?}");
        let outcome: serde_json::Value = serde_json::from_str(op.outcome.as_deref().unwrap()).unwrap();
        assert_eq!(outcome["synced"], true);
        let expected = (inv.total * Decimal::from(100)).to_string().parse::<Decimal>().unwrap();
        assert_eq!(Decimal::from(outcome["total_minor"].as_i64().unwrap()), expected.trunc(), "{}", inv.id);
        let remote = ledger.remote_customer(&inv.tenant).await.unwrap().unwrap();
        assert!(remote.subscription.is_some());
        // In localstripe: one invoice carrying meter's lines for this customer.
        let list =
            direct(&stand_in.url, Method::GET, &format!("/v1/invoices?customer={}&limit=100", remote.customer), &[])
                .await;
        let charging: Vec<i64> = list["data"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["total"].as_i64() != Some(0))
            .map(|i| i["total"].as_i64().unwrap())
            .collect();
        assert_eq!(charging, [outcome["total_minor"].as_i64().unwrap()], "{}", inv.id);
    }
    // Each synced invoice's collection started: the cards charged (no customer has a payment
    // method in localstripe, so each charge failed and its first retry waits a day), tenant-03's
    // invoice sent, due in 30 days.
    let of = |kind: OpKind, subject: &str| all.iter().find(|o| o.kind == kind && o.subject == subject);
    for inv in invoices.iter().filter(|i| i.tenant != "kuwait") {
        let first = of(OpKind::Collect, &format!("{}/first", inv.id)).unwrap_or_else(|| panic!("{}", inv.id));
        assert_eq!(first.state, OpState::Done, "{first:?}");
        let outcome: serde_json::Value = serde_json::from_str(first.outcome.as_deref().unwrap()).unwrap();
        if inv.tenant == "tenant-03" {
            assert_eq!(outcome["result"], "sent", "{outcome}");
            let due = of(OpKind::Collect, &format!("{}/due", inv.id)).unwrap();
            assert_eq!(due.state, OpState::Pending);
            assert!(due.next_us > meter_schemas::period::now_us() + 29 * 86_400_000_000);
        } else {
            assert_eq!(outcome["result"], "failed", "{outcome}");
            assert!(outcome["detail"].as_str().unwrap().contains("payment method"), "{outcome}");
            let retry = of(OpKind::Collect, &format!("{}/retry-1", inv.id)).unwrap();
            assert_eq!(retry.state, OpState::Pending);
        }
    }
    assert!(of(OpKind::Collect, "inv_kuwait_2026-10/first").is_none(), "nothing to collect of a dead push");
    let customers = direct(&stand_in.url, Method::GET, "/v1/customers?limit=100", &[]).await;
    assert_eq!(customers["data"].as_array().unwrap().len(), 12, "one customer per tenant, none for the dead invoice");
    let counts = proxy.counts();
    assert_eq!(counts.key_errors, 0);
    assert!(counts.faults.values().sum::<usize>() >= 6, "{counts:?}");

    // What finance sees: every synced invoice outstanding (none paid yet), tenant-03's due in
    // 30 days, the others charged to the card (no due date); none overdue yet.
    let now = meter_schemas::period::now_us();
    let status = meter_billing_sync::status::period_sync(&ledger, "2026-10".parse().unwrap(), now).await.unwrap();
    assert_eq!((status.synced, status.dead, status.outstanding.len()), (12, 1, 12));
    for o in &status.outstanding {
        assert!(!o.overdue);
        let sent = o.sent_us.unwrap();
        match o.tenant.as_str() {
            "tenant-03" => assert_eq!(o.due_us, Some(sent + 30 * 86_400_000_000)),
            _ => assert_eq!(o.due_us, None, "{}", o.tenant),
        }
    }
    let later = meter_billing_sync::status::period_sync(&ledger, "2026-10".parse().unwrap(), now + 31 * 86_400_000_000)
        .await
        .unwrap();
    let overdue: Vec<&str> = later.outstanding.iter().filter(|o| o.overdue).map(|o| o.tenant.as_str()).collect();
    assert_eq!(overdue, ["tenant-03"]);

    // Events a webhook missed are read back from Stripe's API and kept once.
    let now_s = meter_schemas::period::now_us() / 1_000_000;
    let stripe =
        Stripe::new(Client::new(Settings { api_base: stand_in.url.clone(), ..Settings::new(KEY) }).unwrap(), false);
    let new = meter_billing_sync::events::catch_up(&ledger, &stripe, now_s).await.unwrap();
    let kept = ledger.store().unprocessed_events(10_000).await.unwrap();
    assert_eq!(new, kept.len());
    assert!(
        kept.iter().filter(|e| e.kind == "customer.subscription.created").count() >= 12,
        "the mirrors' creation events: {:?}",
        kept.iter().map(|e| &e.kind).collect::<Vec<_>>()
    );
    assert_eq!(meter_billing_sync::events::catch_up(&ledger, &stripe, now_s).await.unwrap(), 0, "nothing new twice");
}

#[tokio::test]
async fn without_a_provider_every_push_says_it_was_not_synced() {
    let (ledger, dir) = ledger_with(vec![invoice("acme", "USD", &["5.00"]), invoice("beta", "USD", &["1.00"])]).await;
    let worker = worker(&ledger, &dir, Arc::new(NoProvider));
    drain(&worker, &ledger).await;
    for op in ledger.operations(None, None).await.unwrap() {
        assert_eq!(op.state, OpState::Done);
        assert_eq!(op.outcome.as_deref(), Some(r#"{"provider":"none","synced":false}"#));
    }
    assert_eq!(ledger.remote_customer("acme").await.unwrap(), None);
}

/// Two workers on one outbox, each push taking longer than a claim (Stripe answering slowly):
/// the worker that claimed an operation renews its claim while the push runs, so the other
/// never takes it over, and every request reaches Stripe once (none replayed from its key).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_claim_is_renewed_while_its_slow_push_runs() {
    let stand_in = LocalStripe::start();
    let proxy = Proxy::start(&stand_in.url, 0, Duration::from_secs(2)).await;
    let invoices: Vec<Invoice> =
        (0..4).map(|i| invoice(&format!("tenant-{i:02}"), "EUR", &["10.00", "2.50"])).collect();
    let (ledger, dir) = ledger_with(invoices).await;
    proxy.slow(Duration::from_millis(250));
    let settings = || worker::Settings { lease: Duration::from_millis(300), ..quick() };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let (subs, notices) = billing_of(&ledger, dir.path(), meter_billing::subscriptions::DEFAULT_GRACE);
            let w = Worker::new(subs, quick_stripe(&proxy.url, 3, Duration::from_secs(5)), notices, settings());
            let mut stopped = stopped.clone();
            tokio::spawn(w.run(async move {
                let _ = stopped.wait_for(|s| *s).await;
            }))
        })
        .collect();
    let pushes = || async {
        let all = ledger.operations(None, None).await.unwrap();
        all.into_iter().filter(|o| o.kind == OpKind::PushInvoice).collect::<Vec<_>>()
    };
    for _ in 0..600 {
        if pushes().await.iter().all(|o| o.state == OpState::Done) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.send(true).unwrap();
    for w in workers {
        w.await.unwrap();
    }
    let pushes = pushes().await;
    assert_eq!(pushes.len(), 4);
    for op in &pushes {
        assert_eq!((op.state, op.attempts), (OpState::Done, 1), "{op:?}");
    }
    let counts = proxy.counts();
    assert!(counts.forwarded >= 4 * 3, "each push takes several slow requests: {counts:?}");
    assert_eq!(counts.replayed, 0, "no request was sent twice: {counts:?}");
}
