//! Every Stripe object meter reads parses from Stripe's published fixtures
//! (`../shared/stripe/fixtures3.json`, from stripe/openapi), and an event built from them is an
//! event meter keeps.

use meter_billing_sync::HostedPage;
use meter_billing_sync::stripe::objects::{Customer, Invoice, InvoiceItem, InvoiceLine, List};
use serde_json::Value;

fn fixtures() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/stripe/fixtures3.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("Stripe's fixtures beside the project")).unwrap()
}

#[test]
fn the_objects_meter_reads_parse_from_stripes_fixtures() {
    let r = &fixtures()["resources"];
    let c: Customer = serde_json::from_value(r["customer"].clone()).unwrap();
    assert!(c.id.starts_with("cus_"));
    let i: Invoice = serde_json::from_value(r["invoice"].clone()).unwrap();
    assert!(i.id.starts_with("in_") && i.total_excluding_tax.is_some() && i.status.is_some(), "{i:?}");
    // A draft has no pages yet; a finalized one has its hosted page and PDF.
    assert_eq!((i.hosted_invoice_url.as_deref(), i.invoice_pdf.as_deref()), (None, None));
    let mut open = r["invoice"].clone();
    open["status"] = "open".into();
    open["hosted_invoice_url"] = "https://invoice.stripe.com/i/acct_1/test_x".into();
    open["invoice_pdf"] = "https://pay.stripe.com/invoice/acct_1/test_x/pdf".into();
    let open: Invoice = serde_json::from_value(open).unwrap();
    assert_eq!(open.hosted_invoice_url.as_deref(), Some("https://invoice.stripe.com/i/acct_1/test_x"));
    assert_eq!(open.invoice_pdf.as_deref(), Some("https://pay.stripe.com/invoice/acct_1/test_x/pdf"));
    let lines: List<InvoiceLine> = serde_json::from_value(r["invoice"]["lines"].clone()).unwrap();
    assert!(!lines.data.is_empty());
    let l: InvoiceLine = serde_json::from_value(r["line_item"].clone()).unwrap();
    assert!(l.id.starts_with("il_"));
    let ii: InvoiceItem = serde_json::from_value(r["invoiceitem"].clone()).unwrap();
    assert!(ii.id.starts_with("ii_"));
    // The hosted pages of Checkout and the customer portal.
    let checkout: HostedPage = serde_json::from_value(r["checkout.session"].clone()).unwrap();
    assert!(checkout.id.starts_with("cs_") && checkout.url.starts_with("https://") && checkout.expires_at.is_some());
    let portal: HostedPage = serde_json::from_value(r["billing_portal.session"].clone()).unwrap();
    assert!(portal.id.starts_with("bps_") && portal.url.starts_with("https://"), "{portal:?}");
}

#[test]
fn a_payment_on_its_way_is_read_from_an_invoices_expanded_payments_and_a_setup_intent_parses() {
    use meter_billing_sync::stripe::objects::SetupIntent;
    let r = &fixtures()["resources"];
    let with_intent = |intent: Value| {
        let mut invoice = r["invoice"].clone();
        let mut payment = r["invoice_payment"].clone();
        payment["payment"]["payment_intent"] = intent;
        invoice["payments"] = serde_json::json!({ "object": "list", "data": [payment], "has_more": false });
        serde_json::from_value::<Invoice>(invoice).unwrap()
    };
    let intent = |status: &str| {
        let mut pi = r["payment_intent"].clone();
        pi["status"] = status.into();
        pi
    };
    assert!(with_intent(intent("processing")).payment_processing(), "a debit on its way");
    assert!(!with_intent(intent("succeeded")).payment_processing());
    assert!(!with_intent(intent("requires_payment_method")).payment_processing());
    // Not expanded: only its id, which says nothing.
    assert!(!with_intent("pi_123".into()).payment_processing());
    assert!(!serde_json::from_value::<Invoice>(r["invoice"].clone()).unwrap().payment_processing());
    // Earlier API versions: the invoice's one payment intent.
    let mut old = r["invoice"].clone();
    old["payment_intent"] = intent("processing");
    assert!(serde_json::from_value::<Invoice>(old).unwrap().payment_processing());
    let s: SetupIntent = serde_json::from_value(r["setup_intent"].clone()).unwrap();
    assert!(s.id.starts_with("seti_"), "{s:?}");
}

#[test]
fn events_built_from_the_fixtures_are_kept_with_their_object() {
    let r = &fixtures()["resources"];
    for (kind, object) in [
        ("invoice.payment_failed", "invoice"),
        ("invoice.paid", "invoice"),
        ("customer.subscription.deleted", "subscription"),
        ("checkout.session.completed", "checkout.session"),
    ] {
        let mut event = r["event"].clone();
        event["type"] = kind.into();
        event["data"]["object"] = r[object].clone();
        let kept = meter_billing_sync::events::parse(event.to_string().as_bytes()).unwrap();
        assert_eq!((kept.kind.as_str(), kept.object.as_str()), (kind, r[object]["id"].as_str().unwrap()));
    }
    let e = meter_billing_sync::events::parse(
        br#"{"id": "x", "type": "a", "created": 1, "data": {"object": {"id": "o"}}}"#,
    );
    assert!(e.unwrap_err().to_string().contains("not an event id"));
    assert!(meter_billing_sync::events::parse(b"[]").is_err());
}
