//! The sync stage end to end: a real `meter serve` configured with Stripe, pointed at
//! localstripe through the proxy that injects faults on one request in five and enforces
//! idempotency keys (a POST without a key, or a key reused with other parameters, is refused). A
//! period closed for 200 tenants on the four tiers reaches Stripe exactly once per invoice and
//! line, to the cent, through two SIGKILLs during the sync, and each invoice's collection starts:
//! the smaller tiers' cards are charged (declined in localstripe, where no customer has a payment
//! method: past_due, first retry in a day), the enterprise tiers' invoices are sent on net-30
//! terms. A key Stripe refuses stops the start.

mod common;

use common::{Meter, call, client, create_key, meter_bin};
use meter_billing_sync::testing::proxy::{FAULTS, Proxy};
use meter_billing_sync::testing::{KEY, LocalStripe, direct};
use reqwest::Method;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The month before the one containing now, as `YYYY-MM` with its first instant (RFC 3339).
fn last_month() -> (String, String) {
    let now = time::OffsetDateTime::now_utc();
    let months = now.year() * 12 + i32::from(u8::from(now.month())) - 2;
    let (y, m) = (months.div_euclid(12), months.rem_euclid(12) + 1);
    (format!("{y:04}-{m:02}"), format!("{y:04}-{m:02}-01T00:00:00Z"))
}

fn env(proxy: &str) -> Vec<(&'static str, String)> {
    vec![
        ("METER__INGEST__LATENESS", "120days".into()),
        ("METER__STRIPE__API_KEY", KEY.into()),
        ("METER__STRIPE__API_BASE", proxy.into()),
        ("METER__STRIPE__RATE_LIMIT", "200".into()),
        ("METER__STRIPE__ATTEMPTS", "6".into()),
        ("METER__STRIPE__TIMEOUT", "1s".into()),
        ("METER__SYNC__POLL", "100ms".into()),
        ("METER__SYNC__LEASE", "2s".into()),
        ("METER__SYNC__MIN_BACKOFF", "50ms".into()),
        ("METER__SYNC__MAX_BACKOFF", "500ms".into()),
        ("METER__STRIPE__WEBHOOK_SECRET", SECRET.into()),
        ("METER__STRIPE__WEBHOOK_SECRET_PREVIOUS", OLD_SECRET.into()),
        // Cards for the smaller tiers (the default), net-30 transfers for the enterprise tiers.
        ("METER__SYNC__COLLECTION__PLANS__ENTERPRISE__METHOD", "send_invoice".into()),
        ("METER__SYNC__COLLECTION__PLANS__ENTERPRISE__DAYS_UNTIL_DUE", "30".into()),
        ("METER__SYNC__COLLECTION__PLANS__ENTERPRISE_PLUS__METHOD", "send_invoice".into()),
        ("METER__SYNC__COLLECTION__PLANS__ENTERPRISE_PLUS__DAYS_UNTIL_DUE", "30".into()),
    ]
}

const SECRET: &str = "whsec_meter_test_current";
const OLD_SECRET: &str = "whsec_meter_test_previous";

/// A Stripe event of `kind` about `object`, built from Stripe's published fixture of that
/// object (`../shared/stripe/fixtures3.json`), with the ids meter knows.
fn fixture_event(id: &str, kind: &str, created: i64, object: &str, fields: &[(&str, &str)]) -> Value {
    static FIXTURES: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    let fixtures = FIXTURES.get_or_init(|| {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/stripe/fixtures3.json");
        serde_json::from_str(&std::fs::read_to_string(path).expect("Stripe's fixtures beside the project")).unwrap()
    });
    let mut obj = fixtures["resources"][object].clone();
    for (k, v) in fields {
        obj[*k] = json!(v);
    }
    let mut event = fixtures["resources"]["event"].clone();
    event["id"] = json!(id);
    event["type"] = json!(kind);
    event["created"] = json!(created);
    event["data"] = json!({ "object": obj });
    event
}

/// Every customer localstripe holds, page by page.
async fn all_customers(url: &str) -> Vec<Value> {
    let mut customers = Vec::new();
    loop {
        let after = customers.last().map(|c: &Value| format!("&starting_after={}", c["id"].as_str().unwrap()));
        let path = format!("/v1/customers?limit=100{}", after.unwrap_or_default());
        let page = direct(url, Method::GET, &path, &[]).await;
        customers.extend(page["data"].as_array().unwrap().iter().cloned());
        if page["has_more"] != true {
            return customers;
        }
    }
}

async fn post_event(url: &str, body: &str, signature: Option<String>) -> (u16, Value) {
    let mut req = client().post(format!("{url}/api/v1/stripe/webhook")).body(body.to_string());
    if let Some(sig) = signature {
        req = req.header("Stripe-Signature", sig);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

fn now_s() -> i64 {
    common::now_us() / 1_000_000
}

async fn state_of(url: &str, admin: &str, tenant: &str) -> String {
    let (s, subs) = call(Method::GET, format!("{url}/api/v1/subscriptions?tenant={tenant}"), admin, None).await;
    assert_eq!(s, 200, "{subs}");
    subs.as_array().unwrap().last().map_or("none".into(), |s| s["state"].as_str().unwrap().to_string())
}

/// Waits until every kept event is processed (the state stops changing), then reads `tenant`.
async fn settled_state(url: &str, admin: &str, tenant: &str, want: &str) -> String {
    // A failure is read back from Stripe through the proxy's faults, timeouts and retries before
    // it counts: a generous bound, not a timing (the catch-up no longer holds it back; see
    // billing-sync's `a_kept_event_is_processed_while_catching_up_hangs`).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let state = state_of(url, admin, tenant).await;
        if state == want || Instant::now() > deadline {
            return state;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_closed_period_reaches_stripe_exactly_once_through_faults_and_two_sigkills() {
    let stand_in = LocalStripe::start();
    let proxy = Proxy::start(&stand_in.url, 5, Duration::from_secs(2)).await;
    let dir = tempfile::tempdir().unwrap();
    let admin = create_key(dir.path(), "admin", None);
    let env = env(&proxy.url);
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut meter = Meter::start(dir.path(), &env_refs);
    let (period, start) = last_month();

    // The four tiers, the last sold only yearly.
    let plans =
        [("starter", "monthly"), ("professional", "monthly"), ("enterprise", "monthly"), ("enterprise_plus", "annual")];
    let tenants: Vec<String> = (0..200).map(|i| format!("tenant-{i:03}")).collect();
    for (i, t) in tenants.iter().enumerate() {
        let (s, sub) = call(
            Method::POST,
            format!("{}/api/v1/subscriptions", meter.url),
            &admin,
            Some(
                json!({"tenant": t, "plan": plans[i % plans.len()].0, "cycle": plans[i % plans.len()].1, "at": start}),
            ),
        )
        .await;
        assert_eq!(s, 201, "{sub}");
    }
    // Usage in the period for every tenant (a few hundred work orders each: overage on the
    // smaller plans).
    let ingest = create_key(dir.path(), "ingest", None);
    let day = start.replace("-01T00:00:00Z", "-02T12:00:00Z");
    for (i, t) in tenants.iter().enumerate() {
        let events: Vec<Value> = (0..(50 * (i % 7) + 1))
            .map(|n| json!({"transaction_id": format!("{t}-{n}"), "external_customer_id": t, "code": "work_order.created", "timestamp": day, "properties": {}}))
            .collect();
        let (s, r) =
            call(Method::POST, format!("{}/api/v1/events/batch", meter.url), &ingest, Some(json!({"events": events})))
                .await;
        assert!(s < 300, "{r}");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let closed = loop {
        let (s, closed) =
            call(Method::POST, format!("{}/api/v1/periods/{period}/close", meter.url), &admin, None).await;
        if s == 200 {
            break closed;
        }
        assert!(s == 409 && Instant::now() < deadline, "{s} {closed}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(closed["invoices"].as_u64().unwrap_or(0) > 0 || closed.to_string().contains("invoices"), "{closed}");

    let sync_started = Instant::now();
    // Two crashes while the sync works through the faults (the first one provably mid-sync).
    for (n, pause) in [700, 1500].into_iter().enumerate() {
        tokio::time::sleep(Duration::from_millis(pause)).await;
        let (_, status) = call(Method::GET, format!("{}/api/v1/periods/{period}/sync", meter.url), &admin, None).await;
        eprintln!("SIGKILL {n} with {} of {} pushes pending", status["pending"], status["invoices"]);
        if n == 0 {
            assert!(status["pending"].as_u64().unwrap() > 0, "the sync ended before the first kill: {status}");
        }
        meter.restart();
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    let status = loop {
        let (s, status) = call(Method::GET, format!("{}/api/v1/periods/{period}/sync", meter.url), &admin, None).await;
        assert_eq!(s, 200, "{status}");
        if status["pending"] == 0 {
            break status;
        }
        assert!(Instant::now() < deadline, "still pending: {}", status["pending"]);
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(status["dead"], 0, "{status:#}");
    assert_eq!(status["synced"], status["invoices"], "{status:#}");
    // Each invoice's first collection step: the cards charged (declined: no payment method in
    // localstripe), each with its first retry a day later and the end of its grace period
    // waiting; the net-30 invoices sent, each with its due date waiting.
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        let (_, status) = call(Method::GET, format!("{}/api/v1/periods/{period}/sync", meter.url), &admin, None).await;
        let ops = status["operations"].as_array().unwrap();
        let firsts_done = ops
            .iter()
            .filter(|o| o["kind"] == "collect" && o["state"] == "done")
            .filter(|o| o["subject"].as_str().unwrap().ends_with("/first"))
            .count();
        if firsts_done == status["invoices"].as_u64().unwrap() as usize {
            break status;
        }
        assert!(Instant::now() < deadline, "collection not started: {status:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(status["collection_dead"], 0, "{status:#}");
    let ops = status["operations"].as_array().unwrap();
    let mut waiting: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for o in ops
        .iter()
        .filter(|o| matches!(o["kind"].as_str(), Some("collect" | "check_suspension")) && o["state"] == "pending")
    {
        let step = match o["kind"].as_str().unwrap() {
            "collect" => o["subject"].as_str().unwrap().rsplit('/').next().unwrap().to_string(),
            other => other.to_string(),
        };
        waiting.entry(o["tenant"].as_str().unwrap().to_string()).or_default().push(step);
    }
    for (i, t) in tenants.iter().enumerate() {
        let on_terms = plans[i % plans.len()].0.starts_with("enterprise");
        let want: Vec<String> =
            if on_terms { vec!["due".into()] } else { vec!["retry-1".into(), "check_suspension".into()] };
        let got = waiting.get(t).cloned().unwrap_or_default();
        if i < 8 || got != want {
            assert_eq!(got, want, "{t}");
            let state = state_of(&meter.url, &admin, t).await;
            assert_eq!(state, if on_terms { "active" } else { "past_due" }, "{t}");
        }
    }
    eprintln!("synced {} invoices in {:.1} s after the close", status["synced"], sync_started.elapsed().as_secs_f64());

    // Receivables: every invoice still unpaid is outstanding, the same ones the period's sync
    // lists; none is past due yet (the cards' were due on sending, today; the others in 30 days).
    let (s, ar) = call(Method::GET, format!("{}/api/v1/receivables", meter.url), &admin, None).await;
    assert_eq!(s, 200, "{ar}");
    let (_, status) = call(Method::GET, format!("{}/api/v1/periods/{period}/sync", meter.url), &admin, None).await;
    let ids = |v: &Value, field: &str| {
        let mut ids: Vec<String> =
            v[field].as_array().unwrap().iter().map(|o| o["invoice"].as_str().unwrap().to_string()).collect();
        ids.sort();
        ids
    };
    assert_eq!(ids(&ar, "outstanding"), ids(&status, "outstanding"), "{ar:#}");
    assert_eq!(ids(&ar, "outstanding").len(), tenants.len(), "nothing paid yet");
    assert!(ar["outstanding"].as_array().unwrap().iter().all(|o| o["days_past_due"].as_i64().unwrap() <= 0), "{ar:#}");
    let total: f64 = ar["currencies"]
        .as_object()
        .unwrap()
        .values()
        .map(|c| c["outstanding"].as_str().unwrap().parse::<f64>().unwrap())
        .sum();
    let current: f64 = ar["currencies"]
        .as_object()
        .unwrap()
        .values()
        .map(|c| c["aging"]["current"].as_str().unwrap().parse::<f64>().unwrap())
        .sum();
    assert!(total > 0.0 && (total - current).abs() < 1e-9, "{ar:#}");
    let (s, e) = call(Method::GET, format!("{}/api/v1/receivables?as_of=2026-13-01", meter.url), &admin, None).await;
    assert_eq!(s, 422, "{e}");

    // What localstripe holds, read directly against meter's invoices.
    let (s, invoices) =
        call(Method::GET, format!("{}/api/v1/periods/{period}/invoices?format=json", meter.url), &admin, None).await;
    assert_eq!(s, 200);
    let invoices = invoices.as_array().unwrap();
    let with_lines: Vec<&Value> = invoices.iter().filter(|i| !i["lines"].as_array().unwrap().is_empty()).collect();
    assert_eq!(status["invoices"], with_lines.len());
    let customers = all_customers(&stand_in.url).await;
    let mut per_tenant: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for c in &customers {
        let tenant = c["metadata"]["meter_tenant"].as_str().unwrap().to_string();
        per_tenant.entry(tenant).or_default().push(c["id"].as_str().unwrap().to_string());
    }
    for inv in &with_lines {
        let tenant = inv["tenant"].as_str().unwrap();
        let ids = &per_tenant[tenant];
        assert_eq!(ids.len(), 1, "customers of {tenant}: {ids:?}");
        let list =
            direct(&stand_in.url, Method::GET, &format!("/v1/invoices?customer={}&limit=100", ids[0]), &[]).await;
        let mut found = Vec::new();
        for si in list["data"].as_array().unwrap() {
            let lines = direct(
                &stand_in.url,
                Method::GET,
                &format!("/v1/invoices/{}/lines?limit=100", si["id"].as_str().unwrap()),
                &[],
            )
            .await;
            let mut ours: Vec<(String, i64)> = lines["data"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|l| l["metadata"]["meter_invoice_id"] == inv["id"])
                .map(|l| (l["metadata"]["meter_line_id"].as_str().unwrap().to_string(), l["amount"].as_i64().unwrap()))
                .collect();
            ours.sort();
            if !ours.is_empty() {
                found.push((si["total"].as_i64().unwrap(), ours));
            }
        }
        let mut expected: Vec<(String, i64)> = inv["lines"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                let cents = l["amount"].as_str().unwrap().parse::<rust_decimal::Decimal>().unwrap()
                    * rust_decimal::Decimal::from(100);
                (l["id"].as_str().unwrap().to_string(), i64::try_from(cents).unwrap())
            })
            .collect();
        expected.sort();
        let total: i64 = expected.iter().map(|(_, a)| a).sum();
        assert_eq!(found, vec![(total, expected)], "{}", inv["id"]);
    }
    let counts = proxy.counts();
    assert_eq!(counts.key_errors, 0, "{counts:?}");
    for f in FAULTS {
        assert!(counts.faults.get(&format!("{f:?}")).is_some_and(|n| *n > 0), "no {f:?}: {counts:?}");
    }
    eprintln!("{counts:?}");

    // The reconciliation against Stripe: nothing differs; money rated equals money pushed.
    let reconcile = || async {
        // Through the proxy's faults a read can fail every try: 502, and the caller asks again.
        // Reading 200 invoices back through the faults takes a while: a patient client.
        let patient = reqwest::Client::builder().timeout(Duration::from_secs(600)).build().unwrap();
        for _ in 0..5 {
            let started = Instant::now();
            let r = patient
                .get(format!("{}/api/v1/periods/{period}/reconciliation", meter.url))
                .bearer_auth(&admin)
                .send()
                .await
                .unwrap();
            let s = r.status().as_u16();
            let rec: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
            eprintln!("reconciliation: {s} in {:.1} s", started.elapsed().as_secs_f64());
            if s == 200 {
                return rec;
            }
            assert_eq!(s, 502, "{rec}");
        }
        panic!("the reconciliation failed five times");
    };
    let rec = reconcile().await;
    assert_eq!(rec["invoices"], with_lines.len());
    assert_eq!(rec["with_differences"], 0, "{rec:#}");
    assert_eq!(rec["rated"], rec["pushed"], "{rec:#}");
    // Joined with the close's report: each tenant's events accepted = counted = stored = rated.
    assert_eq!(rec["with_metering_differences"], 0, "{rec:#}");
    for row in rec["rows"].as_array().unwrap() {
        let metering = row["metering"].as_array().unwrap();
        assert!(!metering.is_empty() && metering.iter().all(|m| m["status"] == "ok"), "{row:#}");
        let work_orders = metering.iter().find(|m| m["meter"] == "work_orders").unwrap();
        assert_eq!(work_orders["accepted"], work_orders["stored"], "{row:#}");
    }
    // The same from the command line (asked again while the proxy's faults make it a 502).
    let cli = |url: String, key: String, period: String| async move {
        for _ in 0..5 {
            let out = tokio::task::spawn_blocking({
                let (url, key, period) = (url.clone(), key.clone(), period.clone());
                move || {
                    std::process::Command::new(meter_bin())
                        .args(["sync", "reconcile", &period, "--url", &url, "--key", &key])
                        .output()
                        .unwrap()
                }
            })
            .await
            .unwrap();
            if !String::from_utf8_lossy(&out.stderr).contains("502") {
                return out;
            }
        }
        panic!("meter sync reconcile failed five times");
    };
    let out = cli(meter.url.clone(), admin.clone(), period.clone()).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("0 with differences"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Someone adds a copy of a line of tenant-003's invoice in Stripe: the reconciliation says so.
    let t3 = with_lines.iter().find(|i| i["tenant"] == "tenant-003").unwrap();
    let cus3 = &per_tenant["tenant-003"][0];
    let line = &t3["lines"][0];
    direct(
        &stand_in.url,
        Method::POST,
        "/v1/invoiceitems",
        &[
            ("customer", cus3.as_str()),
            ("amount", "100"),
            ("currency", "usd"),
            ("metadata[meter_invoice_id]", t3["id"].as_str().unwrap()),
            ("metadata[meter_line_id]", line["id"].as_str().unwrap()),
        ],
    )
    .await;
    direct(&stand_in.url, Method::POST, "/v1/invoices", &[("customer", cus3.as_str())]).await;
    let rec = reconcile().await;
    assert_eq!(rec["with_differences"], 1, "{rec:#}");
    let row = rec["rows"].as_array().unwrap().iter().find(|r| r["tenant"] == "tenant-003").unwrap();
    assert!(row["differences"][0].as_str().unwrap().contains("2 invoices in the provider carry it"), "{row:#}");
    let out = cli(meter.url.clone(), admin.clone(), period.clone()).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 invoices of"), "{}", String::from_utf8_lossy(&out.stderr));

    // Stripe's events back, signed as Stripe signs them.
    let url = meter.url.clone();
    let outcome = |tenant: &str| -> Value {
        let op = status["operations"].as_array().unwrap().iter().find(|o| o["tenant"] == tenant).unwrap();
        serde_json::from_str(op["outcome"].as_str().unwrap()).unwrap()
    };
    // tenant-002 (enterprise, net-30: active after the sync), tenant-001 (professional, card
    // declined: past_due), tenant-006 (enterprise).
    let (t0, t1, t2) = ("tenant-002", "tenant-001", "tenant-006");
    let (inv0, cus0) =
        (outcome(t0)["invoice"].as_str().unwrap().to_string(), outcome(t0)["customer"].as_str().unwrap().to_string());
    assert_eq!(state_of(&url, &admin, t0).await, "active");
    let failed = fixture_event(
        "evt_fail_0",
        "invoice.payment_failed",
        now_s(),
        "invoice",
        &[("id", &inv0), ("customer", &cus0)],
    );
    let body = failed.to_string();
    // Forged, stale, missing: 400, nothing kept, nothing changed.
    let (s, e) =
        post_event(&url, &body, Some(meter_billing_sync::signature::sign(body.as_bytes(), "whsec_forged", now_s())))
            .await;
    assert_eq!(s, 400, "{e}");
    assert!(e["detail"].as_str().unwrap().contains("does not match"), "{e}");
    let (s, e) =
        post_event(&url, &body, Some(meter_billing_sync::signature::sign(body.as_bytes(), SECRET, now_s() - 301)))
            .await;
    assert_eq!(s, 400, "{e}");
    assert!(e["detail"].as_str().unwrap().contains("tolerance"), "{e}");
    let (s, _) = post_event(&url, &body, None).await;
    assert_eq!(s, 400);
    let (s, e) =
        post_event(&url, "not json", Some(meter_billing_sync::signature::sign(b"not json", SECRET, now_s()))).await;
    assert_eq!(s, 400, "{e}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(state_of(&url, &admin, t0).await, "active", "nothing changed");

    // The real one, signed with the previous secret (a rotation): past_due; its redelivery changes nothing.
    let sig = meter_billing_sync::signature::sign(body.as_bytes(), OLD_SECRET, now_s());
    let (s, r) = post_event(&url, &body, Some(sig.clone())).await;
    assert_eq!((s, &r["duplicate"]), (200, &json!(false)), "{r}");
    assert_eq!(settled_state(&url, &admin, t0, "past_due").await, "past_due");
    let (s, r) = post_event(&url, &body, Some(sig)).await;
    assert_eq!((s, &r["duplicate"]), (200, &json!(true)), "{r}");

    // Paid: active again. Then a failure Stripe made earlier, delivered late: no change.
    let paid = fixture_event("evt_paid_0", "invoice.paid", now_s(), "invoice", &[("id", &inv0), ("customer", &cus0)]);
    let b = paid.to_string();
    let (s, _) = post_event(&url, &b, Some(meter_billing_sync::signature::sign(b.as_bytes(), SECRET, now_s()))).await;
    assert_eq!(s, 200);
    assert_eq!(settled_state(&url, &admin, t0, "active").await, "active");
    let late = fixture_event(
        "evt_fail_late",
        "invoice.payment_failed",
        now_s() - 60,
        "invoice",
        &[("id", &inv0), ("customer", &cus0)],
    );
    let b = late.to_string();
    let (s, _) = post_event(&url, &b, Some(meter_billing_sync::signature::sign(b.as_bytes(), SECRET, now_s()))).await;
    assert_eq!(s, 200);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(state_of(&url, &admin, t0).await, "active", "the invoice was paid: a late failure changes nothing");

    // An invoice meter did not make: kept, ignored.
    let stranger = fixture_event(
        "evt_stranger",
        "invoice.payment_failed",
        now_s(),
        "invoice",
        &[("id", "in_not_meters"), ("customer", &cus0)],
    );
    let b = stranger.to_string();
    let (s, _) = post_event(&url, &b, Some(meter_billing_sync::signature::sign(b.as_bytes(), SECRET, now_s()))).await;
    assert_eq!(s, 200);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(state_of(&url, &admin, t0).await, "active");

    // The mirror subscription deleted in Stripe's dashboard: meter cancels.
    let cus1 = outcome(t1)["customer"].as_str().unwrap().to_string();
    let subs = direct(&stand_in.url, Method::GET, &format!("/v1/subscriptions?customer={cus1}"), &[]).await;
    let mirror = subs["data"][0]["id"].as_str().unwrap().to_string();
    let deleted = fixture_event(
        "evt_del_1",
        "customer.subscription.deleted",
        now_s(),
        "subscription",
        &[("id", &mirror), ("customer", &cus1)],
    );
    let b = deleted.to_string();
    let (s, _) = post_event(&url, &b, Some(meter_billing_sync::signature::sign(b.as_bytes(), SECRET, now_s()))).await;
    assert_eq!(s, 200);
    assert_eq!(settled_state(&url, &admin, t1, "cancelled").await, "cancelled");
    assert_eq!(state_of(&url, &admin, t2).await, "active", "other tenants unchanged");

    // An admin cancels tenant-010's subscription in meter: Stripe's mirror is told
    // (`cancel_at_period_end`, `metadata.meter_state`).
    let (_, subs10) = call(Method::GET, format!("{url}/api/v1/subscriptions?tenant=tenant-010"), &admin, None).await;
    let id10 = subs10[0]["id"].as_str().unwrap().to_string();
    let (s, r) = call(Method::POST, format!("{url}/api/v1/subscriptions/{id10}/cancel"), &admin, Some(json!({}))).await;
    assert_eq!(s, 200, "{r}");
    let cus10 = &per_tenant["tenant-010"][0];
    let mirrors = direct(&stand_in.url, Method::GET, &format!("/v1/subscriptions?customer={cus10}"), &[]).await;
    let mirror10 = mirrors["data"][0]["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let shown = direct(&stand_in.url, Method::GET, &format!("/v1/subscriptions/{mirror10}"), &[]).await;
        let told = proxy.sent("POST", &format!("/v1/subscriptions/{mirror10}"));
        if shown["cancel_at_period_end"] == true
            && told.last().is_some_and(|b| b.contains("metadata[meter_state]=cancelled"))
        {
            break;
        }
        assert!(Instant::now() < deadline, "the mirror was not told: {shown} {told:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Self-serve sign-up. Refused before anything reaches Stripe: an unknown plan, a cycle the
    // plan is not sold on, a bad tenant id, a tenant that has a subscription, no return URL.
    let checkout = |body: Value| {
        let (url, admin) = (url.clone(), admin.clone());
        async move { call(Method::POST, format!("{url}/api/v1/checkout/sessions"), &admin, Some(body)).await }
    };
    let back = "https://saas.example/welcome";
    let refusals = [
        (
            json!({"tenant": "newco", "plan": "platinum", "cycle": "monthly", "success_url": back, "cancel_url": back}),
            422,
            "plan",
        ),
        (
            json!({"tenant": "newco", "plan": "enterprise_plus", "cycle": "monthly", "success_url": back, "cancel_url": back}),
            422,
            "cycle",
        ),
        (
            json!({"tenant": "new co!", "plan": "starter", "cycle": "monthly", "success_url": back, "cancel_url": back}),
            422,
            "tenant",
        ),
        (
            json!({"tenant": t1, "plan": "starter", "cycle": "monthly", "success_url": back, "cancel_url": back}),
            409,
            "already has subscription",
        ),
        (json!({"tenant": "newco", "plan": "starter", "cycle": "monthly"}), 422, "success_url"),
        (
            json!({"tenant": "newco", "plan": "starter", "cycle": "monthly", "success_url": "ftp://x", "cancel_url": back}),
            422,
            "success_url",
        ),
        (
            json!({"tenant": "newco", "plan": "starter", "cycle": "weekly", "success_url": back, "cancel_url": back}),
            422,
            "weekly",
        ),
    ];
    for (body, status, says) in refusals {
        let (s, e) = checkout(body.clone()).await;
        assert_eq!(s, status, "{body} -> {e}");
        assert!(e.to_string().contains(says), "{body} -> {e}");
    }
    let newco_customers = |url: String| async move {
        all_customers(&url).await.iter().filter(|c| c["metadata"]["meter_tenant"] == "newco").count()
    };
    assert_eq!(newco_customers(stand_in.url.clone()).await, 0, "nothing half-done at Stripe");
    // A good one: newco becomes a customer (once); localstripe has no Checkout, so the page
    // itself is a 502 here, and nothing else changes.
    let good =
        json!({"tenant": "newco", "plan": "professional", "cycle": "monthly", "success_url": back, "cancel_url": back});
    let (s, e) = checkout(good.clone()).await;
    assert_eq!(s, 502, "{e}");
    let (s, _) = checkout(good).await;
    assert_eq!(s, 502);
    assert_eq!(newco_customers(stand_in.url.clone()).await, 1, "one customer, however often asked");
    let (s, subs) = call(Method::GET, format!("{url}/api/v1/subscriptions?tenant=newco"), &admin, None).await;
    assert_eq!((s, subs.as_array().unwrap().len()), (200, 0), "not subscribed before the payment method is given");
    // Stripe says the session completed (built from its published fixture): provisioned within
    // 5 seconds; a session carrying newco's name but another customer is ignored.
    let all = all_customers(&stand_in.url).await;
    let newco = all.iter().find(|c| c["metadata"]["meter_tenant"] == "newco").unwrap();
    let newco = newco["id"].as_str().unwrap().to_string();
    // What Checkout does in setup mode, done straight to localstripe (it has no Checkout): a
    // card attached to newco's customer, and a setup intent confirmed with it.
    let card =
        direct(&stand_in.url, Method::POST, "/v1/payment_methods/pm_card_visa/attach", &[("customer", newco.as_str())])
            .await;
    let card = card["id"].as_str().unwrap().to_string();
    let setup = direct(&stand_in.url, Method::POST, "/v1/setup_intents", &[("customer", newco.as_str())]).await;
    let setup = setup["id"].as_str().unwrap().to_string();
    let confirmed = direct(
        &stand_in.url,
        Method::POST,
        &format!("/v1/setup_intents/{setup}/confirm"),
        &[("payment_method", card.as_str())],
    )
    .await;
    assert_eq!(confirmed["status"], "succeeded", "{confirmed}");
    let completed = |id: &str, customer: &str| {
        let mut e = fixture_event(
            id,
            "checkout.session.completed",
            now_s(),
            "checkout.session",
            &[("customer", customer), ("mode", "setup"), ("setup_intent", setup.as_str())],
        );
        e["data"]["object"]["metadata"] =
            json!({"meter_tenant": "newco", "meter_plan": "professional", "meter_cycle": "monthly"});
        e.to_string()
    };
    let forged = completed("evt_cs_other", &cus1);
    let (s, _) =
        post_event(&url, &forged, Some(meter_billing_sync::signature::sign(forged.as_bytes(), SECRET, now_s()))).await;
    assert_eq!(s, 200);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (_, subs) = call(Method::GET, format!("{url}/api/v1/subscriptions?tenant=newco"), &admin, None).await;
    assert_eq!(subs.as_array().unwrap().len(), 0, "another customer's session provisions nothing");
    let b = completed("evt_cs_newco", &newco);
    let posted = Instant::now();
    let (s, _) = post_event(&url, &b, Some(meter_billing_sync::signature::sign(b.as_bytes(), SECRET, now_s()))).await;
    assert_eq!(s, 200);
    assert_eq!(settled_state(&url, &admin, "newco", "active").await, "active");
    assert!(posted.elapsed() < Duration::from_secs(5), "provisioned in {:?}", posted.elapsed());
    let (_, subs) = call(Method::GET, format!("{url}/api/v1/subscriptions?tenant=newco"), &admin, None).await;
    assert_eq!(subs[0]["plan"], "professional");
    // The card the session collected is what meter's charges of newco will use.
    let customer = direct(&stand_in.url, Method::GET, &format!("/v1/customers/{newco}"), &[]).await;
    assert_eq!(customer["invoice_settings"]["default_payment_method"], card.as_str(), "{customer}");

    // The customer portal: a tenant with no customer yet is a 404; localstripe has no portal.
    let portal = |tenant: &str| {
        let (url, admin, tenant) = (url.clone(), admin.clone(), tenant.to_string());
        async move {
            let body = json!({"tenant": tenant, "return_url": back});
            call(Method::POST, format!("{url}/api/v1/billing-portal/sessions"), &admin, Some(body)).await
        }
    };
    let (s, e) = portal("nobody").await;
    assert_eq!(s, 404, "{e}");
    // Whether a dashboard shows a "manage payment method" button: a customer, yes; none, no.
    for (tenant, available) in [(t0, true), ("nobody", false)] {
        let (s, a) = call(Method::GET, format!("{url}/api/v1/billing-portal?tenant={tenant}"), &admin, None).await;
        assert_eq!((s, a["available"].as_bool()), (200, Some(available)), "{tenant}: {a}");
    }
    assert!(e.to_string().contains("no customer"), "{e}");
    let (s, e) = portal(t0).await;
    assert_eq!(s, 502, "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stripe_key_that_stripe_refuses_stops_the_start_and_is_never_printed() {
    let stand_in = LocalStripe::start();
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(meter_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("METER__STRIPE__API_KEY", "pk_test_publishable_not_secret")
        .env("METER__STRIPE__API_BASE", &stand_in.url)
        .env("METER__STRIPE__ATTEMPTS", "1")
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("refused the API key"), "{text}");
    assert!(!text.contains("pk_test_publishable_not_secret"), "{text}");
}
