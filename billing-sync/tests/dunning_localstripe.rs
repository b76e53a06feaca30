//! Dunning on meter's clock, against localstripe behind the faulting, key-enforcing proxy: the
//! worker is run at chosen instants (its clock is injected), with a grace period of 9 days and
//! retries 1, 3 and 7 days after the first failure (both configurable).
//!
//! - acme's card is declined every time: past_due at the first failure, retries at 1, 3 and 7
//!   days, each failure and retry told to its webhook endpoint, suspended at 9 days and told so;
//! - beta's payment goes through at the second retry: active again, no third retry, no
//!   suspension;
//! - delta pays by transfer too, in time, but Stripe's event of it has not come: at the due
//!   date meter reads the invoice from Stripe, finds it paid, and nothing fails;
//! - gamma pays by transfer (net-30): its invoice is sent, and unpaid at its due date it counts
//!   as a failed payment from then.

use meter_billing::Ledger;
use meter_billing::ledger::outbox::{OpKind, OpState};

use meter_billing_sync::collect;
use meter_billing_sync::testing::proxy::Proxy;
use meter_billing_sync::testing::{LocalStripe, billing_of, direct, invoice, quick_stripe, work_at};
use meter_billing_sync::worker::{self, Worker};
use meter_rater::subscription::Change;
use meter_rater::{Cycle, Setup, State};
use meter_webhooks::Scope;
use reqwest::Method;
use std::time::Duration;

const DAY: i64 = 86_400_000_000;

async fn state(ledger: &Ledger, tenant: &str, now: i64) -> State {
    let mut sub = ledger.list(Some(tenant)).await.unwrap().pop().unwrap();
    sub.advance(now);
    sub.state()
}

/// Gives `tenant`'s customer in localstripe the test card `card` as its default.
async fn card(url: &str, ledger: &Ledger, tenant: &str, card: &str) {
    let customer = ledger.remote_customer(tenant).await.unwrap().unwrap().customer;
    let pm = direct(url, Method::POST, &format!("/v1/payment_methods/{card}/attach"), &[("customer", &customer)]).await;
    let pm = pm["id"].as_str().unwrap();
    direct(
        url,
        Method::POST,
        &format!("/v1/customers/{customer}"),
        &[("invoice_settings[default_payment_method]", pm)],
    )
    .await;
}

#[tokio::test]
async fn a_failed_payment_is_retried_on_meters_clock_and_suspends_after_the_grace_unless_paid() {
    let stand_in = LocalStripe::start();
    let proxy = Proxy::start(&stand_in.url, 4, Duration::from_secs(1)).await;
    let dir = tempfile::tempdir().unwrap();
    // The tenants subscribe first; October's invoices bill those subscriptions.
    let path = dir.path().join("billing.db");
    let grace = Duration::from_secs(9 * 86_400);
    // A second ahead of the wall clock, which dates what the ledger writes (its mirrors).
    let t0 = meter_schemas::period::now_us() + 1_000_000;
    let mut invoices = vec![
        invoice("acme", "EUR", &["120.00", "3.45"]),
        invoice("beta", "EUR", &["49.00"]),
        invoice("gamma", "EUR", &["990.00"]),
        invoice("delta", "EUR", &["75.00"]),
    ];
    {
        let (subs, notices) = billing_of(&Ledger::open(&path).unwrap(), dir.path(), grace);
        for inv in &mut invoices {
            let setup =
                Setup { plan: "starter".into(), cycle: Cycle::Monthly, term_years: 1, auto_renew: true, trial: false };
            inv.subscription = subs.create(&inv.tenant, setup, t0, "test", t0).await.unwrap().id;
            notices.register("http://127.0.0.1:9/billing", Some(&inv.tenant), false).await.unwrap();
        }
    }
    let ledger = meter_billing_sync::testing::ledger_with(&path, invoices).await;
    let (subs, notices) = billing_of(&ledger, dir.path(), grace);
    let stripe = quick_stripe(&proxy.url, 3, Duration::from_millis(500));
    let settings = worker::Settings {
        lease: Duration::from_secs(60),
        // The clock stands still at each instant: an operation whose requests all failed is due
        // again at the same instant.
        min_backoff: Duration::ZERO,
        max_backoff: Duration::ZERO,
        terms: toml::from_str(r#"tenants = { gamma = { method = "send_invoice", days_until_due = 30 }, delta = { method = "send_invoice", days_until_due = 30 } }"#).unwrap(),
        retries: collect::DEFAULT_RETRIES.to_vec(),
        ..Default::default()
    };
    let worker = Worker::new(subs, stripe, notices.clone(), settings);

    // Pushed and charged at once: no customer has a payment method yet, so acme's and beta's
    // charges fail; gamma's invoice is sent.
    work_at(&worker, &ledger, t0).await;
    assert_eq!(state(&ledger, "acme", t0).await, State::PastDue);
    assert_eq!(state(&ledger, "beta", t0).await, State::PastDue);
    assert_eq!(state(&ledger, "gamma", t0).await, State::Active);
    card(&stand_in.url, &ledger, "acme", "pm_card_chargeCustomerFail").await;
    card(&stand_in.url, &ledger, "beta", "pm_card_chargeCustomerFail").await;

    // Nothing before a day; the first retry at one day fails for both.
    let dunning_done = || async {
        let done = ledger.operations(Some(OpState::Done), None).await.unwrap();
        done.iter().filter(|o| matches!(o.kind, OpKind::Collect | OpKind::CheckSuspension)).count()
    };
    let ops_before = dunning_done().await;
    work_at(&worker, &ledger, t0 + DAY - 1).await;
    assert_eq!(dunning_done().await, ops_before);
    work_at(&worker, &ledger, t0 + DAY).await;
    // beta's payment method is mended before its second retry, at three days.
    card(&stand_in.url, &ledger, "beta", "pm_card_visa").await;
    work_at(&worker, &ledger, t0 + 3 * DAY).await;
    assert_eq!(state(&ledger, "beta", t0 + 3 * DAY).await, State::Active, "paid at the second retry");
    assert_eq!(state(&ledger, "acme", t0 + 3 * DAY).await, State::PastDue);
    work_at(&worker, &ledger, t0 + 7 * DAY).await;
    work_at(&worker, &ledger, t0 + 9 * DAY - 1).await;
    assert_eq!(state(&ledger, "acme", t0 + 9 * DAY - 1).await, State::PastDue, "still in its grace");
    work_at(&worker, &ledger, t0 + 9 * DAY).await;
    assert_eq!(state(&ledger, "acme", t0 + 9 * DAY).await, State::Suspended, "9 days after the first failure");
    assert_eq!(state(&ledger, "beta", t0 + 9 * DAY).await, State::Active);

    // delta pays in Stripe before its due date (here by card, straight to localstripe: no event
    // reaches meter).
    card(&stand_in.url, &ledger, "delta", "pm_card_visa").await;
    let delta = ledger.store().remote_invoices_of(vec!["inv_delta_2026-10".into()]).await.unwrap();
    direct(&stand_in.url, Method::POST, &format!("/v1/invoices/{}/pay", delta[0].remote), &[]).await;
    // gamma: unpaid at its due date (30 days), a failed payment from then.
    assert_eq!(state(&ledger, "gamma", t0 + 30 * DAY - 1).await, State::Active);
    work_at(&worker, &ledger, t0 + 30 * DAY).await;
    assert_eq!(state(&ledger, "gamma", t0 + 30 * DAY).await, State::PastDue);
    assert_eq!(state(&ledger, "delta", t0 + 30 * DAY).await, State::Active, "paid, as Stripe says at the due date");
    let delta = ledger.store().remote_invoices_of(vec!["inv_delta_2026-10".into()]).await.unwrap();
    assert_eq!((delta[0].status.as_str(), delta[0].paid_us), ("paid", Some(t0 + 30 * DAY)));
    assert!(notices.deliveries(Scope::Tenant("delta"), None, 10).await.unwrap().is_empty(), "nothing to tell delta");

    // Stripe's mirror of each subscription is told meter's state (`metadata.meter_state`; as
    // sent: localstripe keeps no metadata on a subscription's update).
    for (tenant, want) in [("acme", "suspended"), ("beta", "active"), ("gamma", "past_due"), ("delta", "active")] {
        let mirror = ledger.remote_customer(tenant).await.unwrap().unwrap().subscription.unwrap();
        let sent = proxy.sent("POST", &format!("/v1/subscriptions/{mirror}"));
        let last = sent.last().unwrap_or_else(|| panic!("{tenant}: no update of its mirror"));
        assert!(last.contains(&format!("metadata[meter_state]={want}")), "{tenant}: {last}");
        assert!(last.contains("cancel_at_period_end=false"), "{tenant}: {last}");
    }

    // What each tenant's endpoint was told, once each.
    let told = |tenant: &'static str| {
        let notices = notices.clone();
        async move {
            let mut ids: Vec<String> = notices
                .deliveries(Scope::Tenant(tenant), None, 100)
                .await
                .unwrap()
                .into_iter()
                .map(|d| {
                    d.alert_id
                        .split(':')
                        .enumerate()
                        .filter(|(i, _)| *i != 1)
                        .map(|(_, p)| p)
                        .collect::<Vec<_>>()
                        .join(":")
                })
                .collect();
            ids.sort();
            ids
        }
    };
    let want = |ids: &[&str]| {
        let mut v: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
        v.sort();
        v
    };
    assert_eq!(
        told("acme").await,
        want(&[
            "billing.payment_failed:0",
            "billing.payment_failed:1",
            "billing.payment_failed:2",
            "billing.payment_failed:3",
            "billing.payment_retry_scheduled:1",
            "billing.payment_retry_scheduled:2",
            "billing.payment_retry_scheduled:3",
            "billing.suspended:8",
        ])
    );
    assert_eq!(
        told("beta").await,
        want(&[
            "billing.payment_failed:0",
            "billing.payment_failed:1",
            "billing.payment_retry_scheduled:1",
            "billing.payment_retry_scheduled:2",
        ])
    );
    assert_eq!(told("gamma").await, want(&["billing.payment_failed:0", "billing.payment_retry_scheduled:1"]));

    // Each step in the subscription's own trail, once.
    let trail = |tenant: &'static str| {
        let ledger = ledger.clone();
        async move {
            let sub = ledger.list(Some(tenant)).await.unwrap().pop().unwrap();
            sub.entries
                .iter()
                .filter_map(|e| match &e.change {
                    Change::Dunning(d) => Some((d.attempt, d.outcome.clone(), d.next_retry_us.is_some())),
                    _ => None,
                })
                .collect::<Vec<_>>()
        }
    };
    let failed = |n: u32, more: bool| (n, "failed".to_string(), more);
    assert_eq!(trail("acme").await, [failed(0, true), failed(1, true), failed(2, true), failed(3, false)]);
    assert_eq!(trail("beta").await, [failed(0, true), failed(1, true), (2, "paid".to_string(), false)]);
    assert_eq!(trail("gamma").await, [failed(0, true)]);

    // The steps, as the outbox shows them.
    let ops = ledger.operations(None, None).await.unwrap();
    let steps = |tenant: &str| {
        ops.iter()
            .filter(|o| o.tenant == tenant && matches!(o.kind, OpKind::Collect | OpKind::CheckSuspension))
            .map(|o| {
                let outcome: serde_json::Value = serde_json::from_str(o.outcome.as_deref().unwrap_or("{}")).unwrap();
                let step = match o.kind {
                    OpKind::CheckSuspension => "check".to_string(),
                    _ => o.subject.rsplit('/').next().unwrap().to_string(),
                };
                (step, o.state, outcome["result"].as_str().map(str::to_string))
            })
            .collect::<Vec<_>>()
    };
    let done = |s: &str, r: &str| (s.to_string(), OpState::Done, Some(r.to_string()));
    assert_eq!(
        steps("acme"),
        [
            done("first", "failed"),
            done("retry-1", "failed"),
            done("check", "suspended"),
            done("retry-2", "failed"),
            done("retry-3", "failed"),
        ]
    );
    assert_eq!(
        steps("beta"),
        [done("first", "failed"), done("retry-1", "failed"), done("check", "not_suspended"), done("retry-2", "paid"),]
    );
    let gamma = steps("gamma");
    assert_eq!(gamma[..2], [done("first", "sent"), done("due", "failed")]);
    let paid = ledger.store().remote_invoices_of(vec!["inv_beta_2026-10".into()]).await.unwrap();
    assert_eq!((paid[0].status.as_str(), paid[0].paid_us), ("paid", Some(t0 + 3 * DAY)));
    let counts = proxy.counts();
    assert_eq!(counts.key_errors, 0, "every request carried a stable key");
    assert!(counts.faults.values().sum::<usize>() >= 6, "{counts:?}");
}
