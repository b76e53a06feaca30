//! Changes that come with time alone reach Stripe's mirror of a subscription when they are due,
//! though nothing is written to the ledger then: against localstripe behind the faulting,
//! key-enforcing proxy, the worker run at chosen instants (its clock is injected).
//!
//! - trial: its trial converts at its end: the mirror is told `active` then, not before;
//! - once: it does not renew: at its cycle's end it expires and the mirror is ended;
//! - back: cancelled, then taken back before the end: at the end it renews, which the mirror
//!   does not show, so nothing is sent;
//! - steady: renews by itself: nothing ever comes with time, nothing is written for it.

use meter_billing::Ledger;
use meter_billing::ledger::outbox::{OpKind, OpState};
use meter_billing_sync::testing::proxy::Proxy;
use meter_billing_sync::testing::{LocalStripe, billing_of, invoice, quick_stripe, work_at};
use meter_billing_sync::worker::{self, Worker};
use meter_rater::{Command, Cycle, Setup, State};
use std::time::Duration;

const DAY: i64 = 86_400_000_000;

#[tokio::test]
async fn a_change_that_comes_with_time_reaches_the_mirror_when_it_is_due() {
    let stand_in = LocalStripe::start();
    let proxy = Proxy::start(&stand_in.url, 4, Duration::from_secs(1)).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("billing.db");
    let grace = Duration::from_secs(15 * 86_400);
    // A second ahead of the wall clock, which dates what the ledger writes.
    let t0 = meter_schemas::period::now_us() + 1_000_000;
    let setup =
        |trial, auto_renew| Setup { plan: "starter".into(), cycle: Cycle::Monthly, term_years: 1, auto_renew, trial };
    let tenants = [
        ("trial", setup(true, true)),
        ("once", setup(false, false)),
        ("back", setup(false, true)),
        ("steady", setup(false, true)),
    ];
    let mut invoices = Vec::new();
    let mut subs_of = std::collections::BTreeMap::new();
    {
        let (subs, _) = billing_of(&Ledger::open(&path).unwrap(), dir.path(), grace);
        for (tenant, setup) in tenants {
            let sub = subs.create(tenant, setup, t0, "test", t0).await.unwrap();
            let mut inv = invoice(tenant, "EUR", &["49.00"]);
            inv.subscription = sub.id.clone();
            invoices.push(inv);
            subs_of.insert(tenant, sub);
        }
    }
    let ledger = meter_billing_sync::testing::ledger_with(&path, invoices).await;
    let (subs, notices) = billing_of(&ledger, dir.path(), grace);
    let stripe = quick_stripe(&proxy.url, 3, Duration::from_millis(500));
    let settings = worker::Settings {
        lease: Duration::from_secs(60),
        min_backoff: Duration::ZERO,
        max_backoff: Duration::ZERO,
        // Invoices sent, due in 90 days: no payment fails within this test.
        terms: toml::from_str(r#"plans = { growth = { method = "send_invoice", days_until_due = 90 } }"#).unwrap(),
        ..Default::default()
    };
    let worker = Worker::new(subs.clone(), stripe, notices, settings);
    let trial_end = subs_of["trial"].trial_ends_us().unwrap();
    let (_, cycle_end) = subs_of["once"].current_cycle().unwrap();
    assert!(trial_end < cycle_end);

    // "back" is cancelled, then taken back: the expiry the cancellation scheduled will not come.
    let back = &subs_of["back"].id;
    subs.apply(back, Command::Cancel, t0 + DAY, "test", t0 + DAY).await.unwrap();
    subs.apply(back, Command::Reactivate, t0 + 2 * DAY, "test", t0 + 2 * DAY).await.unwrap();

    // The pushes make each tenant's mirror, showing the state as it is.
    work_at(&worker, &ledger, t0 + 2 * DAY).await;
    let mirror = |tenant: &'static str| {
        let ledger = ledger.clone();
        async move { ledger.remote_customer(tenant).await.unwrap().unwrap().subscription.unwrap() }
    };
    let told = |mirror: &str| proxy.sent("POST", &format!("/v1/subscriptions/{mirror}"));
    let trial_mirror = mirror("trial").await;
    let first = told(&trial_mirror);
    assert!(first.last().unwrap().contains("metadata[meter_state]=trial"), "{first:?}");

    // Not before the trial's end; at it, the mirror shows the subscription active.
    work_at(&worker, &ledger, trial_end - 1).await;
    assert_eq!(told(&trial_mirror).len(), first.len(), "nothing is due before the trial ends");
    work_at(&worker, &ledger, trial_end).await;
    let after = told(&trial_mirror);
    assert!(after.len() > first.len(), "the conversion was not mirrored");
    assert!(after.last().unwrap().contains("metadata[meter_state]=active"), "{after:?}");
    assert!(!after.last().unwrap().contains("trial_end"), "{after:?}");

    // "once" expires at its cycle's end, and its mirror is ended.
    let once_mirror = mirror("once").await;
    let deleted = || proxy.sent("DELETE", &format!("/v1/subscriptions/{once_mirror}")).len();
    work_at(&worker, &ledger, cycle_end - 1).await;
    assert_eq!(deleted(), 0, "it runs to the end of its cycle");
    let back_mirror = mirror("back").await;
    let back_before = told(&back_mirror).len();
    work_at(&worker, &ledger, cycle_end).await;
    assert!(deleted() >= 1, "the expiry was not mirrored");
    let mut once = ledger.get(&subs_of["once"].id).await.unwrap();
    once.advance(cycle_end);
    assert_eq!(once.state(), State::Expired);

    // "back" renewed at that instant instead of expiring: nothing was due for its mirror.
    assert_eq!(told(&back_mirror).len(), back_before, "a renewal is not a change the mirror shows");
    let ops = ledger.operations(None, None).await.unwrap();
    let when_due = |tenant: &str| {
        ops.iter().filter(|o| o.kind == OpKind::MirrorWhenDue && o.tenant == tenant).cloned().collect::<Vec<_>>()
    };
    let back_ops = when_due("back");
    assert_eq!(back_ops.len(), 1, "{back_ops:?}");
    assert_eq!(back_ops[0].state, OpState::Done);
    assert!(back_ops[0].outcome.as_deref().unwrap().contains("not_due"), "{back_ops:?}");
    // "steady" never had anything coming with time; the others' are all done.
    assert!(when_due("steady").is_empty());
    for tenant in ["trial", "once"] {
        let ops = when_due(tenant);
        assert_eq!(ops.len(), 1, "{tenant}: {ops:?}");
        assert_eq!(ops[0].state, OpState::Done, "{tenant}: {ops:?}");
    }
    assert!(
        ledger.operations(Some(OpState::Dead), None).await.unwrap().is_empty(),
        "nothing dead: {:?}",
        ledger.operations(Some(OpState::Dead), None).await.unwrap()
    );
}
