//! Stripe's events processed against what Stripe holds now (localstripe behind the faulting,
//! key-enforcing proxy): events come late and out of order, so a failure is read back before it
//! counts; an event about an object Stripe no longer knows is recorded as failed, not retried
//! for ever ahead of every later one; a Checkout whose card cannot be kept still provisions.

use meter_billing::Ledger;
use meter_billing::ledger::outbox::{OpState, ReceivedEvent};
use meter_billing_sync::testing::proxy::Proxy;
use meter_billing_sync::testing::{LocalStripe, billing_of, direct, invoice, quick_stripe};
use meter_billing_sync::worker::{self, Worker};
use meter_billing_sync::{Provider, events};
use meter_rater::{Cycle, Setup, State};
use reqwest::Method;
use std::time::Duration;

async fn state(ledger: &Ledger, tenant: &str, now: i64) -> State {
    let mut sub = ledger.list(Some(tenant)).await.unwrap().pop().unwrap();
    sub.advance(now);
    sub.state()
}

fn event(id: &str, kind: &str, created: i64, object: &str, body: serde_json::Value) -> ReceivedEvent {
    ReceivedEvent {
        id: id.into(),
        kind: kind.into(),
        created,
        object: object.into(),
        body: serde_json::json!({ "id": id, "type": kind, "created": created, "data": { "object": body } }).to_string(),
        outcome: None,
    }
}

#[tokio::test]
async fn a_failure_is_read_back_before_it_counts_and_a_refused_read_holds_nothing_back() {
    let stand_in = LocalStripe::start();
    let proxy = Proxy::start(&stand_in.url, 4, Duration::from_secs(1)).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("billing.db");
    let grace = Duration::from_secs(15 * 86_400);
    let t0 = meter_schemas::period::now_us() + 1_000_000;
    let mut invoices = vec![invoice("acme", "EUR", &["49.00"]), invoice("beta", "EUR", &["49.00"])];
    {
        let (subs, _) = billing_of(&Ledger::open(&path).unwrap(), dir.path(), grace);
        for inv in &mut invoices {
            let setup =
                Setup { plan: "starter".into(), cycle: Cycle::Monthly, term_years: 1, auto_renew: true, trial: false };
            inv.subscription = subs.create(&inv.tenant, setup, t0, "test", t0).await.unwrap().id;
        }
    }
    let ledger = meter_billing_sync::testing::ledger_with(&path, invoices).await;
    let (subs, notices) = billing_of(&ledger, dir.path(), grace);
    let stripe = quick_stripe(&proxy.url, 4, Duration::from_millis(500));
    let settings = worker::Settings {
        min_backoff: Duration::ZERO,
        max_backoff: Duration::ZERO,
        // Sent, due in 30 days: nothing fails by meter's own doing here.
        terms: toml::from_str(r#"plans = { growth = { method = "send_invoice", days_until_due = 30 } }"#).unwrap(),
        ..Default::default()
    };
    let worker = Worker::new(subs.clone(), stripe.clone(), notices, settings);
    let mut settled = false;
    for _ in 0..200 {
        worker.work_due(t0).await.unwrap();
        let pending = ledger.operations(Some(OpState::Pending), None).await.unwrap();
        if pending.iter().all(|o| o.next_us > t0) {
            settled = true;
            break;
        }
    }
    assert!(settled, "the pushes did not finish: {:?}", ledger.operations(Some(OpState::Pending), None).await.unwrap());
    let remote = |tenant: &'static str| {
        let ledger = ledger.clone();
        async move {
            let id = format!("inv_{tenant}_2026-10");
            ledger.store().remote_invoices_of(vec![id]).await.unwrap().pop().unwrap()
        }
    };
    let (acme, beta) = (remote("acme").await, remote("beta").await);
    // acme pays at Stripe (by card, straight to localstripe): Stripe's event of it is late.
    let customer = ledger.remote_customer("acme").await.unwrap().unwrap().customer;
    let card =
        direct(&stand_in.url, Method::POST, "/v1/payment_methods/pm_card_visa/attach", &[("customer", &customer)])
            .await;
    let card = card["id"].as_str().unwrap();
    let path_of_customer = format!("/v1/customers/{customer}");
    direct(&stand_in.url, Method::POST, &path_of_customer, &[("invoice_settings[default_payment_method]", card)]).await;
    let paid = direct(&stand_in.url, Method::POST, &format!("/v1/invoices/{}/pay", acme.remote), &[]).await;
    assert_eq!(paid["status"], "paid", "{paid}");

    // A failure of each came first; and a completed Checkout naming a setup Stripe does not
    // know, before a failure of beta's.
    let now_s = t0 / 1_000_000;
    let store = ledger.store();
    let checkout = serde_json::json!({
        "id": "cs_1", "object": "checkout.session", "customer": customer, "mode": "setup", "setup_intent": "seti_nope",
        "metadata": { "meter_tenant": "acme", "meter_plan": "starter", "meter_cycle": "monthly" },
    });
    // An invoice meter recorded that Stripe no longer has (a ledger restored into another
    // account, say): reading it back is refused.
    let gone = meter_billing::ledger::outbox::RemoteInvoice { remote: "in_gone".into(), ..remote("beta").await };
    store.record_remote_invoice(gone).await.unwrap();
    for e in [
        event("evt_1", "invoice.payment_failed", now_s, &acme.remote, serde_json::json!({ "id": acme.remote })),
        event("evt_2", "checkout.session.completed", now_s + 1, "cs_1", checkout),
        event("evt_3", "invoice.payment_failed", now_s + 2, "in_gone", serde_json::json!({ "id": "in_gone" })),
        event("evt_4", "invoice.payment_failed", now_s + 3, &beta.remote, serde_json::json!({ "id": beta.remote })),
    ] {
        assert!(store.receive_event(e).await.unwrap());
    }
    let provider: &dyn Provider = &*stripe;
    assert_eq!(events::process_pending(&ledger, &subs, provider, 10, t0).await.unwrap(), 4);
    assert!(store.unprocessed_events(10).await.unwrap().is_empty(), "nothing held back");

    // acme's failure was read back: paid since, so no failure; beta's is one.
    assert_eq!(state(&ledger, "acme", t0).await, State::Active);
    assert_eq!(remote("acme").await.status, "paid");
    assert_eq!(state(&ledger, "beta", t0).await, State::PastDue);
    let outcomes: Vec<String> = sqlite_outcomes(&path);
    assert!(outcomes[0].starts_with("read back paid"), "{outcomes:?}");
    // A setup Stripe does not know keeps no card, and holds no sign-up back (acme has its
    // subscription already).
    assert!(outcomes[1].contains("no payment method kept") && outcomes[1].contains("seti_nope"), "{outcomes:?}");
    assert!(outcomes[2].starts_with("failed: ") && outcomes[2].contains("404"), "{outcomes:?}");
    assert!(!outcomes[3].starts_with("failed"), "{outcomes:?}");
}

/// The kept events' outcomes, in the order they were made.
fn sqlite_outcomes(path: &std::path::Path) -> Vec<String> {
    let c = rusqlite::Connection::open(path).unwrap();
    let mut stmt = c.prepare("SELECT outcome FROM received_events ORDER BY created").unwrap();
    stmt.query_map([], |r| r.get::<_, String>(0)).unwrap().collect::<Result<_, _>>().unwrap()
}

/// A kept event is processed while catching up on the provider's events hangs: the two do not
/// wait for each other (a Stripe slow to list its events must not hold back a failed payment).
/// The event kept needs no call to Stripe: this checks the loops' structure only, not a read
/// back through the client while another of its requests hangs.
#[tokio::test]
async fn a_kept_event_is_processed_while_catching_up_hangs() {
    let stand_in = LocalStripe::start();
    let proxy = Proxy::start(&stand_in.url, 0, Duration::from_secs(1)).await;
    proxy.hang("/v1/events");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("billing.db");
    let ledger = meter_billing_sync::testing::ledger_with(&path, Vec::new()).await;
    let (subs, webhooks) = billing_of(&ledger, dir.path(), Duration::from_secs(86_400));
    // One attempt that waits far longer than this test: the catch-up is held for its whole run.
    let stripe = quick_stripe(&proxy.url, 1, Duration::from_secs(3_600));
    let run = tokio::spawn(events::run(
        ledger.clone(),
        subs,
        stripe,
        Duration::from_millis(20),
        Duration::from_secs(60),
        webhooks.single_runner("stripe-events"),
    ));
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while proxy.holding() == 0 {
        assert!(std::time::Instant::now() < deadline, "the catch-up never asked for Stripe's events");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let now_s = meter_schemas::period::now_us() / 1_000_000;
    let kept = event("evt_kept", "customer.created", now_s, "cus_x", serde_json::json!({ "id": "cus_x" }));
    assert!(events::receive(&ledger, kept).await.unwrap());
    while !ledger.store().unprocessed_events(10).await.unwrap().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the kept event waited behind the catch-up ({} request held)",
            proxy.holding()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(proxy.holding(), 1, "the catch-up is still held: the event did not wait for it to fail");
    let outcomes = sqlite_outcomes(&path);
    assert_eq!(outcomes.len(), 1);
    assert!(outcomes[0].starts_with("ignored"), "{outcomes:?}");
    run.abort();
}
