//! The Stripe backend against a real Stripe stand-in (localstripe, from PyPI) behind a proxy
//! that injects every kind of fault and enforces idempotency keys as Stripe does.

use meter_billing_sync::stripe::{Client, Settings, Stripe};
use meter_billing_sync::testing::proxy::{ADAPTATIONS, FAULTS, Proxy};
use meter_billing_sync::testing::{KEY, LocalStripe, direct, invoice};
use meter_billing_sync::{Collection, Earlier, Error, Provider, Pushed};
use meter_rater::Invoice;
use reqwest::Method;
use rust_decimal::Decimal;
use std::time::Duration;

fn settings(base: &str, key: &str) -> Settings {
    Settings {
        api_key: key.to_string(),
        max_backoff: Duration::from_millis(200),
        ..meter_billing_sync::testing::quick_settings(base, 12, Duration::from_millis(1500))
    }
}

#[tokio::test]
async fn invoices_reach_stripe_exactly_once_through_every_fault() {
    let stand_in = LocalStripe::start();
    let proxy = Proxy::start(&stand_in.url, 4, Duration::from_secs(3)).await;
    eprintln!("proxy adaptations: {ADAPTATIONS:#?}");
    let stripe = Stripe::new(Client::new(settings(&proxy.url, KEY)).unwrap(), false);

    let invoices = [
        invoice("acme", "EUR", &["49.00", "12.34", "-5.01"]),
        invoice("globex", "EUR", &["0.01"]),
        invoice("initech", "EUR", &["1000.00", "250.50", "3.33", "-100.00", "0.00"]),
        invoice("umbrella", "EUR", &["99.99", "0.99"]),
    ];
    let mut customers = Vec::new();
    for inv in &invoices {
        let remote = stripe.ensure_customer(&inv.tenant, inv.currency).await.unwrap().unwrap();
        // Asked again (a crash before meter recorded it): the same customer and mirror.
        assert_eq!(stripe.ensure_customer(&inv.tenant, inv.currency).await.unwrap(), Some(remote.clone()));
        customers.push(remote.customer);
    }
    let collection = |inv: &Invoice| {
        if inv.tenant == "initech" {
            Collection::SendInvoice { days_until_due: 30 }
        } else {
            Collection::ChargeAutomatically
        }
    };
    let mut first = Vec::new();
    for (inv, customer) in invoices.iter().zip(&customers) {
        match stripe.push_invoice(inv, customer, collection(inv), Earlier::WithinWindow).await.unwrap() {
            Pushed::Synced(s) => first.push(s),
            Pushed::NotSynced => panic!("Stripe is configured"),
        }
    }
    // Pushed again, as after a crash that lost what the first push learnt: the same objects.
    for ((inv, s), customer) in invoices.iter().zip(&first).zip(&customers) {
        let again = stripe.push_invoice(inv, customer, collection(inv), Earlier::WithinWindow).await.unwrap();
        assert_eq!(again, Pushed::Synced(s.clone()), "{}", inv.id);
    }

    // What localstripe holds, read directly: one customer per tenant, one charging invoice per
    // meter invoice, each line once with its exact amount.
    let all_customers = direct(&stand_in.url, Method::GET, "/v1/customers?limit=100", &[]).await;
    for inv in &invoices {
        let n = all_customers["data"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["metadata"]["meter_tenant"] == inv.tenant.as_str())
            .count();
        assert_eq!(n, 1, "customers of {}", inv.tenant);
    }
    for (inv, customer) in invoices.iter().zip(&customers) {
        let list =
            direct(&stand_in.url, Method::GET, &format!("/v1/invoices?customer={customer}&limit=100"), &[]).await;
        let mut charging = Vec::new();
        for i in list["data"].as_array().unwrap() {
            let id = i["id"].as_str().unwrap();
            let lines = direct(&stand_in.url, Method::GET, &format!("/v1/invoices/{id}/lines?limit=100"), &[]).await;
            let mut ours: Vec<(String, i64)> = lines["data"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|l| l["metadata"]["meter_invoice_id"] == inv.id.as_str())
                .map(|l| (l["metadata"]["meter_line_id"].as_str().unwrap().to_string(), l["amount"].as_i64().unwrap()))
                .collect();
            ours.sort();
            if !ours.is_empty() {
                charging.push((i["total"].as_i64().unwrap(), ours));
            }
        }
        let expected: Vec<(String, i64)> =
            inv.lines.iter().map(|l| (l.id.clone(), (l.amount * Decimal::from(100)).try_into().unwrap())).collect();
        let total: i64 = expected.iter().map(|(_, a)| a).sum();
        assert_eq!(charging, vec![(total, expected)], "{}", inv.id);
    }

    let counts = proxy.counts();
    eprintln!("{counts:?}");
    for f in FAULTS {
        assert!(counts.faults.get(&format!("{f:?}")).copied().unwrap_or(0) > 0, "no {f:?} injected: {counts:?}");
    }
    assert_eq!(counts.key_errors, 0, "a POST without a key, or a key reused with other parameters");
    assert!(counts.replayed > 0, "no reply was replayed: the lost replies were not retried with their keys");
}

#[tokio::test]
async fn refusals_and_answers_that_are_not_stripe_are_clear_errors_and_send_nothing_twice() {
    let stand_in = LocalStripe::start();
    let proxy = Proxy::start(&stand_in.url, 0, Duration::from_secs(3)).await;

    // A key Stripe refuses: the error names the problem, not the key.
    let bad = Stripe::new(Client::new(settings(&proxy.url, "pk_live_not_a_secret")).unwrap(), false);
    let eur = "EUR".parse().unwrap();
    let e = bad.ensure_customer("acme", eur).await.unwrap_err();
    assert!(matches!(e, Error::Config(_)), "{e}");
    assert!(e.to_string().contains("refused the API key") && !e.to_string().contains("pk_live_not_a_secret"), "{e}");

    let stripe = Stripe::new(Client::new(Settings { attempts: 3, ..settings(&proxy.url, KEY) }).unwrap(), false);
    // A line Stripe cannot take: nothing is sent.
    let before = proxy.counts().received;
    let e = stripe
        .push_invoice(
            &invoice("acme", "KWD", &["1.000", "2.345"]),
            "cus_x",
            Collection::ChargeAutomatically,
            Earlier::WithinWindow,
        )
        .await;
    let e = e.unwrap_err();
    assert!(matches!(&e, Error::Unrepresentable { line, .. } if line == "inv_acme_2026-10_002"), "{e}");
    assert_eq!(proxy.counts().received, before);

    // Stripe's address answering HTML: retried, then a clear error; never taken for a reply.
    proxy.answer_html(true);
    let e = stripe.ensure_customer("acme", eur).await.unwrap_err();
    assert!(e.is_transient(), "{e}");
    assert!(e.to_string().contains("not JSON") && e.to_string().contains("after 3 tries"), "{e}");
    proxy.answer_html(false);

    // A request Stripe refuses (an item for a customer that does not exist) is not retried.
    let received = proxy.counts().received;
    let e = stripe
        .push_invoice(
            &invoice("acme", "EUR", &["1.00"]),
            "cus_missing",
            Collection::ChargeAutomatically,
            Earlier::WithinWindow,
        )
        .await
        .unwrap_err();
    assert!(matches!(&e, Error::Refused { status: 404, .. }), "{e}");
    assert!(!e.is_transient());
    assert_eq!(proxy.counts().received - received, 1, "one try");
}

/// Past Stripe's 24 h idempotency window its keys answer nothing (a fresh proxy forgets them): a
/// push tried before the window looks up what it made instead of making it twice, whether it
/// got as far as the invoice or only some of its items.
#[tokio::test]
async fn a_push_retried_after_the_idempotency_window_finds_what_it_made() {
    let stand_in = LocalStripe::start();
    let before = Proxy::start(&stand_in.url, 0, Duration::from_secs(3)).await;
    let stripe = Stripe::new(Client::new(settings(&before.url, KEY)).unwrap(), false);
    let whole = invoice("acme", "EUR", &["10.00", "-2.50", "0.99"]);
    let acme = stripe.ensure_customer("acme", whole.currency).await.unwrap().unwrap().customer;
    let Pushed::Synced(first) =
        stripe.push_invoice(&whole, &acme, Collection::ChargeAutomatically, Earlier::WithinWindow).await.unwrap()
    else {
        panic!("not synced")
    };
    // A day later: Stripe forgot the keys.
    let after = Proxy::start(&stand_in.url, 0, Duration::from_secs(3)).await;
    let later = Stripe::new(Client::new(settings(&after.url, KEY)).unwrap(), false);
    let again =
        later.push_invoice(&whole, &acme, Collection::ChargeAutomatically, Earlier::BeforeWindow).await.unwrap();
    assert_eq!(again, Pushed::Synced(first.clone()));

    // A push that made two of its three items before it stopped, a day ago.
    let partial = invoice("globex", "EUR", &["1.00", "2.00", "3.00"]);
    let globex = stripe.ensure_customer("globex", partial.currency).await.unwrap().unwrap().customer;
    for line in &partial.lines[..2] {
        let amount = (line.amount * rust_decimal::Decimal::from(100)).to_string();
        let amount = amount.split('.').next().unwrap().to_string();
        direct(
            &stand_in.url,
            Method::POST,
            "/v1/invoiceitems",
            &[
                ("customer", globex.as_str()),
                ("amount", amount.as_str()),
                ("currency", "eur"),
                ("metadata[meter_invoice_id]", partial.id.as_str()),
                ("metadata[meter_line_id]", line.id.as_str()),
            ],
        )
        .await;
    }
    let Pushed::Synced(s) =
        later.push_invoice(&partial, &globex, Collection::ChargeAutomatically, Earlier::BeforeWindow).await.unwrap()
    else {
        panic!("not synced")
    };
    assert_eq!(s.total_minor, 600);
    for (customer, inv) in [(&acme, &whole), (&globex, &partial)] {
        let list =
            direct(&stand_in.url, Method::GET, &format!("/v1/invoices?customer={customer}&limit=100"), &[]).await;
        let mut ours = Vec::new();
        for i in list["data"].as_array().unwrap() {
            let lines = direct(
                &stand_in.url,
                Method::GET,
                &format!("/v1/invoices/{}/lines?limit=100", i["id"].as_str().unwrap()),
                &[],
            )
            .await;
            for l in lines["data"].as_array().unwrap() {
                if l["metadata"]["meter_invoice_id"] == inv.id.as_str() {
                    ours.push(l["metadata"]["meter_line_id"].as_str().unwrap().to_string());
                }
            }
        }
        ours.sort();
        let want: Vec<String> = inv.lines.iter().map(|l| l.id.clone()).collect();
        assert_eq!(ours, want, "each line once in Stripe for {}", inv.id);
    }
}

#[tokio::test]
async fn the_payment_method_a_setup_collected_becomes_the_customers_default_and_only_its_own() {
    use meter_billing_sync::PaymentMethod;
    let stand_in = LocalStripe::start();
    let proxy = Proxy::start(&stand_in.url, 4, Duration::from_secs(3)).await;
    let stripe = Stripe::new(Client::new(settings(&proxy.url, KEY)).unwrap(), false);
    let acme = stripe.ensure_customer("acme", "EUR".parse().unwrap()).await.unwrap().unwrap().customer;
    let beta = stripe.ensure_customer("beta", "EUR".parse().unwrap()).await.unwrap().unwrap().customer;
    // What Checkout in setup mode does (localstripe has no Checkout): a card attached to acme's
    // customer and a setup intent confirmed with it; and one of beta's never confirmed.
    let card =
        direct(&stand_in.url, Method::POST, "/v1/payment_methods/pm_card_visa/attach", &[("customer", &acme)]).await;
    let card = card["id"].as_str().unwrap().to_string();
    let setup = direct(&stand_in.url, Method::POST, "/v1/setup_intents", &[("customer", &acme)]).await;
    let setup = setup["id"].as_str().unwrap().to_string();
    let path = format!("/v1/setup_intents/{setup}/confirm");
    direct(&stand_in.url, Method::POST, &path, &[("payment_method", card.as_str())]).await;
    let unconfirmed = direct(&stand_in.url, Method::POST, "/v1/setup_intents", &[("customer", &beta)]).await;
    let unconfirmed = unconfirmed["id"].as_str().unwrap().to_string();

    let default_of = |customer: String| {
        let url = stand_in.url.clone();
        async move {
            let c = direct(&url, Method::GET, &format!("/v1/customers/{customer}"), &[]).await;
            c["invoice_settings"]["default_payment_method"].as_str().map(str::to_string)
        }
    };
    // Another customer's setup keeps nothing, nor one that collected nothing.
    let other = stripe.keep_payment_method(&beta, &setup).await.unwrap();
    assert!(matches!(&other, PaymentMethod::NotKept(why) if why.contains("not for customer")), "{other:?}");
    let none = stripe.keep_payment_method(&beta, &unconfirmed).await.unwrap();
    assert!(matches!(&none, PaymentMethod::NotKept(why) if why.contains("collected no payment method")), "{none:?}");
    assert_eq!(default_of(beta.clone()).await, None);
    // acme's own: its card is the default for invoices, however often asked.
    assert_eq!(stripe.keep_payment_method(&acme, &setup).await.unwrap(), PaymentMethod::Default(card.clone()));
    assert_eq!(stripe.keep_payment_method(&acme, &setup).await.unwrap(), PaymentMethod::Default(card.clone()));
    assert_eq!(default_of(acme).await, Some(card));
    // An unknown setup is the provider's refusal, named.
    let e = stripe.keep_payment_method(&beta, "seti_nope").await.unwrap_err();
    assert!(matches!(e, Error::Refused { status: 404, .. }), "{e}");
}
