//! The customer portal in a real browser: Debian's Chromium, headless, driven over WebDriver
//! (`chromedriver`, `fantoccini`). `deploy/test.sh` installs both; without them this test fails
//! and says so.
//!
//! A portal link for acme is opened: the page exchanges its token, drops it from the address
//! bar, and shows a card per meter whose figures equal `/api/v1/usage` and
//! `/api/v1/entitlements`; the page's own session is refused beta's usage (by the page's fetch
//! and by a hand-edited URL); the link does not open a second time. Screenshots go under
//! `target/screenshots/`.

#[path = "common/browser.rs"]
mod browser;
mod common;

use browser::*;
use common::*;
use fantoccini::Locator;
use reqwest::Method;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_portal_shows_a_tenant_its_own_usage_exactly_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let admin = create_key(dir.path(), "admin", None);
    let ingest = create_key(dir.path(), "ingest", None);
    // A lateness window long enough for events of last month to be sent now: beta's, whose
    // usage no subscription bills, is a difference in last month's reconciliation.
    let meter = Meter::start(dir.path(), &[("METER__INGEST__LATENESS", "70days")]);
    let url = meter.url.clone();
    // A link that will have expired by the end of the test (a minute is the shortest a session
    // may last).
    let (s, expiring) = call(
        Method::POST,
        format!("{url}/api/v1/portal/sessions"),
        &admin,
        Some(json!({"tenant": "acme", "ttl": "1m"})),
    )
    .await;
    assert_eq!(s, 201, "{expiring}");
    let expires = Instant::now() + Duration::from_secs(61);
    // acme on starter since the start of the month before last; some usage for acme and for
    // beta. That month is closed here; last month is left for the console to close.
    let today = time::OffsetDateTime::now_utc().date();
    let this_month = today.replace_day(1).unwrap();
    let last_month = (this_month - time::Duration::days(1)).replace_day(1).unwrap();
    let before_last = (last_month - time::Duration::days(1)).replace_day(1).unwrap();
    let since = before_last.midnight().assume_utc().format(&time::format_description::well_known::Rfc3339).unwrap();
    let month = |d: time::Date| format!("{:04}-{:02}", d.year(), u8::from(d.month()));
    let (last, first) = (month(last_month), month(before_last));
    let (s, e) = call(
        Method::POST,
        format!("{url}/api/v1/subscriptions"),
        &admin,
        Some(json!({"tenant": "acme", "plan": "starter", "cycle": "monthly", "at": since})),
    )
    .await;
    assert_eq!(s, 201, "{e}");
    let now = time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap();
    let mut events = Vec::new();
    // acme past 80% of its 500 work orders: an alert.
    for (tenant, n) in [("acme", 410), ("beta", 3)] {
        for i in 0..n {
            events.push(json!({
                "transaction_id": format!("{tenant}-{i}"), "external_customer_id": tenant, "code": "work_order.created",
                "timestamp": now, "properties": {},
            }));
        }
    }
    let mid_last = (last_month + time::Duration::days(14)).midnight().assume_utc();
    let mid_last = mid_last.format(&time::format_description::well_known::Rfc3339).unwrap();
    for i in 0..4 {
        events.push(json!({
            "transaction_id": format!("beta-last-{i}"), "external_customer_id": "beta", "code": "api.call",
            "timestamp": mid_last, "properties": {"route": "/v1/x", "method": "GET", "status": 200},
        }));
    }
    // acme's agents on six models, and its API calls on two routes: the breakdown.
    let models =
        [("claude", 100, 0, 2), ("gpt-4o", 10, 5, 3), ("qwen", 2, 3, 1), ("phi", 4, 0, 1), ("mistral", 1, 2, 1)];
    for (model, input, output, n) in models.into_iter().chain([("llama", 1, 1, 1)]) {
        for i in 0..n {
            events.push(json!({
                "transaction_id": format!("inv-{model}-{i}"), "external_customer_id": "acme", "code": "agent.invocation",
                "timestamp": now, "properties": {"model": model, "input_tokens": input, "output_tokens": output},
            }));
        }
    }
    for (i, route) in ["/v1/orders", "/v1/orders", "/v1/users", "/v1/orders"].into_iter().enumerate() {
        events.push(json!({
            "transaction_id": format!("call-{i}"), "external_customer_id": "acme", "code": "api.call",
            "timestamp": now, "properties": {"route": route, "method": "GET", "status": 200},
        }));
    }
    for chunk in events.chunks(50) {
        let (s, e) =
            call(Method::POST, format!("{url}/api/v1/events/batch"), &ingest, Some(json!({"events": chunk}))).await;
        assert!(s == 200 || s == 202, "{s} {e}");
    }
    wait_counted(&url, &admin, "acme", now_us()).await;
    // Last month closed: acme has an invoice.
    let (s, e) = call(Method::POST, format!("{url}/api/v1/periods/{first}/close"), &admin, None).await;
    assert_eq!(s, 200, "{e}");
    let (_, opened) =
        call(Method::POST, format!("{url}/api/v1/portal/sessions"), &admin, Some(json!({"tenant": "acme"}))).await;
    let link = opened["url"].as_str().unwrap().to_string();

    // Pages and assets: from the binary, under the policy that allows only this server.
    for (path, kind) in
        [("/portal", "text/html"), ("/assets/portal.js", "text/javascript"), ("/assets/style.css", "text/css")]
    {
        let r = client().get(format!("{url}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let header = |h: &str| r.headers().get(h).map(|v| v.to_str().unwrap().to_string());
        assert!(header("content-type").unwrap().starts_with(kind), "{path}");
        assert_eq!(header("content-security-policy").as_deref(), Some(meter_web::CSP), "{path}");
        assert_eq!(header("x-content-type-options").as_deref(), Some("nosniff"), "{path}");
    }
    let r = client().get(format!("{url}/")).send().await.unwrap();
    assert_eq!(r.url().path(), "/portal", "/ leads to the portal");
    // Gzip-compressed, all the page's own assets together at most 150 KB so.
    let mut weight = 0;
    for path in [
        "/portal",
        "/assets/portal.js",
        "/assets/common.js",
        "/assets/style.css",
        "/assets/vendor/uplot/uPlot.iife.min.js",
        "/assets/vendor/uplot/uPlot.min.css",
    ] {
        let r = client().get(format!("{url}{path}")).header("accept-encoding", "gzip").send().await.unwrap();
        assert_eq!(r.headers().get("content-encoding").map(|v| v.to_str().unwrap()), Some("gzip"), "{path}");
        weight += r.bytes().await.unwrap().len();
    }
    eprintln!("the portal's assets weigh {weight} bytes gzip-compressed");
    assert!(weight <= 150 * 1024, "{weight} bytes");

    let driver = driver();
    let c = browser(&driver).await;
    let opened_us = now_us();
    c.goto(&link).await.unwrap();
    let state = ready(&c).await;
    assert!(state[1].is_null(), "the page says: {state}");
    screenshot(&c, "portal").await;
    // The token is gone from the address bar.
    assert!(!c.current_url().await.unwrap().as_str().contains("token"), "the token stays in the address bar");

    // No payment provider here: no "manage payment method" button.
    let button = c.find(Locator::Id("payment-method")).await.unwrap();
    assert_eq!(button.attr("data-value").await.unwrap().as_deref(), Some("false"));
    assert!(!button.is_displayed().await.unwrap());

    // Every card equals the API's figures.
    let usage = usage(&url, &admin, "acme").await;
    let (_, ent) = call(Method::GET, format!("{url}/api/v1/entitlements?tenant=acme"), &admin, None).await;
    let tenant = c.find(Locator::Id("tenant")).await.unwrap().attr("data-value").await.unwrap();
    assert_eq!(tenant.as_deref(), Some("acme"));
    let badge = c.find(Locator::Id("watermark")).await.unwrap().attr("data-value").await.unwrap().unwrap();
    let instant = |t: &str| time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).unwrap();
    let later = usage["watermark"].as_str().unwrap();
    assert!(
        instant(&badge) <= instant(later),
        "the page's watermark {badge} is not before the API's later one {later}"
    );
    let cards = c.find_all(Locator::Css("#meters [data-meter]")).await.unwrap();
    assert_eq!(cards.len(), usage["meters"].as_array().unwrap().len());
    for m in usage["meters"].as_array().unwrap() {
        let name = m["name"].as_str().unwrap();
        let card = c.find(Locator::Css(&format!("#meters [data-meter='{name}']"))).await.unwrap();
        let field = |f: &'static str| {
            let card = card.clone();
            async move {
                match card.find(Locator::Css(&format!("[data-field='{f}']"))).await {
                    Ok(e) => e.attr("data-value").await.unwrap(),
                    Err(_) => None,
                }
            }
        };
        assert_eq!(field("used").await.unwrap_or_default(), m["value"].as_str().unwrap_or(""), "{name}");
        let e = ent["entitlements"].as_array().unwrap().iter().find(|e| e["kind"] == "meter" && e["name"] == name);
        assert_eq!(field("included").await.as_deref(), e.and_then(|e| e["limit"].as_str()), "{name}");
        assert_eq!(field("remaining").await.as_deref(), e.and_then(|e| e["remaining"].as_str()), "{name}");
        let hard = e.is_some_and(|e| e["hard_limit"] == true);
        assert_eq!(field("hard_limit").await.is_some(), hard, "{name}");
    }
    // The subscription's cycle, state and running cycle, as the API gives them.
    let (_, subs) = call(Method::GET, format!("{url}/api/v1/subscriptions?tenant=acme"), &admin, None).await;
    let sub = subs.as_array().unwrap().last().unwrap();
    for (field, want) in [
        ("cycle", sub["cycle"].as_str().unwrap().to_string()),
        ("state", sub["state"].as_str().unwrap().to_string()),
        ("cycle_dates", format!("{}/{}", sub["cycle_start"].as_str().unwrap(), sub["cycle_end"].as_str().unwrap())),
    ] {
        let shown = c.find(Locator::Css(&format!("#subscription [data-field='{field}']"))).await.unwrap();
        assert_eq!(shown.attr("data-value").await.unwrap(), Some(want), "{field}");
    }
    // The plan's features, as the entitlements give them.
    let features: Vec<&Value> =
        ent["entitlements"].as_array().unwrap().iter().filter(|e| e["kind"] == "feature").collect();
    assert!(!features.is_empty());
    assert_eq!(c.find_all(Locator::Css("#features tr")).await.unwrap().len(), features.len());
    for f in features {
        let name = f["name"].as_str().unwrap();
        let shown = c.find(Locator::Css(&format!("[data-feature='{name}'] [data-field='value']"))).await.unwrap();
        assert_eq!(shown.attr("data-value").await.unwrap(), Some(f["value"].to_string()), "{name}");
        let allowed = c.find(Locator::Css(&format!("[data-feature='{name}'] [data-field='allowed']"))).await.unwrap();
        assert_eq!(allowed.attr("data-value").await.unwrap(), Some(f["allowed"].to_string()), "{name}");
    }
    let wo = usage["meters"].as_array().unwrap().iter().find(|m| m["name"] == "work_orders").unwrap();
    assert_eq!(wo["value"], "410", "acme's own events, not beta's");
    let level = c.find(Locator::Css("#meters [data-meter='work_orders'] [data-field='percent']")).await.unwrap();
    assert_eq!(level.attr("data-value").await.unwrap().as_deref(), Some("82"));
    assert!(level.text().await.unwrap().contains("past 80%"), "the level is said in words");

    // Usage by dimension: the API's figures equal the hand table, and the page's equal the API's.
    let (_, breakdown) = call(Method::GET, format!("{url}/api/v1/usage/breakdown?tenant=acme"), &admin, None).await;
    let dims = breakdown["dimensions"].as_array().unwrap();
    let dim = |meter: &str| dims.iter().find(|d| d["meter"] == meter).unwrap().clone();
    let tokens = dim("agent_tokens");
    assert_eq!(tokens["property"], "model");
    let top: Vec<(String, String)> = tokens["top"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["value"].as_str().unwrap().to_string(), s["amount"].as_str().unwrap().to_string()))
        .collect();
    let hand = [("claude", "200"), ("gpt-4o", "45"), ("qwen", "5"), ("phi", "4"), ("mistral", "3")];
    assert_eq!(top, hand.map(|(v, a)| (v.to_string(), a.to_string())).to_vec());
    assert_eq!(tokens["rest"], json!({"values": 1, "amount": "2"}), "llama");
    assert_eq!(tokens["total"], "259");
    let calls = dim("api_calls");
    assert_eq!(calls["property"], "route");
    assert_eq!(calls["top"], json!([{"value": "/v1/orders", "amount": "3"}, {"value": "/v1/users", "amount": "1"}]));
    assert_eq!(calls["rest"], json!({"values": 0, "amount": "0"}));
    for d in dims {
        let (meter, property) = (d["meter"].as_str().unwrap(), d["property"].as_str().unwrap());
        let table = format!("#breakdown table[data-meter='{meter}'][data-property='{property}']");
        let mut expected: Vec<(String, String)> = d["top"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| ("top".to_string(), s["amount"].as_str().unwrap().to_string()))
            .collect();
        if d["rest"]["values"] != 0 {
            expected.push(("rest".into(), d["rest"]["amount"].as_str().unwrap().into()));
        }
        expected.push(("total".into(), d["total"].as_str().unwrap().into()));
        let mut shown = Vec::new();
        for row in c.find_all(Locator::Css(&format!("{table} tr[data-field]"))).await.unwrap() {
            let field = row.attr("data-field").await.unwrap().unwrap();
            let amount = row.find(Locator::Css("[data-field='amount']")).await.unwrap();
            shown.push((field, amount.attr("data-value").await.unwrap().unwrap()));
        }
        assert_eq!(shown, expected, "{meter} by {property}");
    }

    // This period's invoice, so far and projected, line by line as the API rates it.
    let (_, up) = call(Method::GET, format!("{url}/api/v1/invoices/upcoming?tenant=acme"), &admin, None).await;
    let value = |id: &'static str| {
        let c = c.clone();
        async move { c.find(Locator::Id(id)).await.unwrap().attr("data-value").await.unwrap().unwrap() }
    };
    assert_eq!(value("so-far-total").await, up["so_far"]["total"].as_str().unwrap());
    // The projection scales what is billed so far by the period's length over its elapsed part,
    // read by the page and by this call a few seconds apart: equal up to that share of the
    // elapsed time (exact to the cent later in a month; not in its first hour).
    let (shown, asked) = (value("projected-total").await, up["projected"]["total"].as_str().unwrap().to_string());
    let elapsed = (now_us() - meter_schemas::Period::containing(now_us()).start_us()) as f64;
    let drift = (now_us() - opened_us) as f64 / elapsed;
    let (a, b): (f64, f64) = (shown.parse().unwrap(), asked.parse().unwrap());
    assert!((a - b).abs() <= b.abs() * drift + 0.01, "projected: page {shown}, API {asked} (drift allowed {drift})");
    let rows = c.find_all(Locator::Css("#upcoming-lines tr")).await.unwrap();
    assert_eq!(rows.len(), up["so_far"]["lines"].as_array().unwrap().len());
    for line in up["so_far"]["lines"].as_array().unwrap() {
        let id = line["id"].as_str().unwrap();
        let row = c.find(Locator::Css(&format!("[data-line='{id}'] [data-field='so_far']"))).await.unwrap();
        assert_eq!(row.attr("data-value").await.unwrap().as_deref(), line["amount"].as_str(), "{id}");
    }
    // The daily chart of work orders: 30, 60 and 90 days, each plotted value the running total
    // within its month of the API's daily series; drawn (a canvas) and tabled.
    for days in [30u32, 60, 90] {
        if days == 60 {
            // By the keyboard: the focused choice moves on with the arrow key.
            let thirty = c.find(Locator::Css("input[name='days'][value='30']")).await.unwrap();
            thirty.send_keys(&fantoccini::key::Key::Right.to_string()).await.unwrap();
        } else if days == 90 {
            c.find(Locator::Css(&format!("input[name='days'][value='{days}']"))).await.unwrap().click().await.unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let shown = c.find(Locator::Id("chart")).await.unwrap().attr("data-chart-days").await.unwrap();
            let rows = c.find_all(Locator::Css("#daily-table tbody tr")).await.unwrap().len();
            if shown.as_deref() == Some(days.to_string().as_str()) && rows == days as usize {
                break;
            }
            assert!(Instant::now() < deadline, "the chart did not switch to {days} days");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(!c.find_all(Locator::Css("#chart canvas")).await.unwrap().is_empty(), "nothing drawn");
        let (_, series) =
            call(Method::GET, format!("{url}/api/v1/usage/daily?tenant=acme&days={days}"), &admin, None).await;
        let wo = series["meters"].as_array().unwrap().iter().find(|m| m["name"] == "work_orders").unwrap();
        let (mut month, mut total) = (String::new(), 0u64);
        for d in wo["daily"].as_array().unwrap() {
            let date = d["date"].as_str().unwrap();
            if date[..7] != month {
                (month, total) = (date[..7].to_string(), 0);
            }
            total += d["value"].as_str().unwrap_or("0").parse::<u64>().unwrap_or(0);
            let cell = c
                .find(Locator::Css(&format!("#daily-table tr[data-date='{date}'] [data-field='value']")))
                .await
                .unwrap();
            assert_eq!(cell.attr("data-value").await.unwrap(), Some(total.to_string()), "{days} days, {date}");
        }
        let all: u64 = wo["daily"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["value"].as_str().unwrap_or("0").parse::<u64>().unwrap_or(0))
            .sum();
        assert_eq!(all, 410, "the days hold acme's 410 work orders");
    }
    screenshot(&c, "portal-90-days").await;

    // Last month's invoice in the history, its CSV (the page's own download link, fetched as
    // the browser would) the same bytes as the API's.
    let (_, history) = call(Method::GET, format!("{url}/api/v1/invoices?tenant=acme"), &admin, None).await;
    let inv = &history[0];
    let id = inv["id"].as_str().unwrap();
    let total = c.find(Locator::Css(&format!("[data-invoice='{id}'] [data-field='total']"))).await.unwrap();
    assert_eq!(total.attr("data-value").await.unwrap().as_deref(), inv["total"].as_str());
    let csv_link = c.find(Locator::Css(&format!("[data-invoice='{id}'] a[download$='.csv']"))).await.unwrap();
    let href = csv_link.attr("href").await.unwrap().unwrap();
    let downloaded = c
        .execute_async(
            "const done = arguments[arguments.length - 1]; fetch(arguments[0]).then(r => r.text()).then(done)",
            vec![json!(href)],
        )
        .await
        .unwrap();
    let from_api = client()
        .get(format!("{url}/api/v1/invoices/{id}?format=csv"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(downloaded.as_str(), Some(from_api.as_str()));
    assert!(from_api.lines().count() > 1, "{from_api}");

    // The 80% alert, as the API lists it. (Only the thresholds: the
    // upgrade advisor may raise a suggestion at any time.)
    let (_, alerts) = call(Method::GET, format!("{url}/api/v1/alerts?tenant=acme"), &admin, None).await;
    let alerts: Vec<&Value> =
        alerts["alerts"].as_array().unwrap().iter().filter(|a| a["kind"] == "usage_threshold").collect();
    assert!(alerts.iter().any(|a| a["meter"] == "work_orders" && a["percent"] == 80), "{alerts:?}");
    for a in &alerts {
        let id = a["id"].as_str().unwrap();
        let li = c.find(Locator::Css(&format!("#alerts [data-alert='{id}']"))).await.unwrap();
        assert!(li.text().await.unwrap().contains(a["raised_at"].as_str().unwrap()), "{id}");
    }
    let mut shown = 0;
    for li in c.find_all(Locator::Css("#alerts li")).await.unwrap() {
        shown += usize::from(li.text().await.unwrap().contains(" passed "));
    }
    assert_eq!(shown, alerts.len());
    assert_eq!(c.find_all(Locator::Css("#invoices tr")).await.unwrap().len(), 1, "the month before last's");

    // The invoice's own page, from the history's link: every line and the total as the API has
    // them, with each line's inputs hash.
    c.find(Locator::Css(&format!("[data-invoice='{id}'] a[data-field='view']"))).await.unwrap().click().await.unwrap();
    let state = ready(&c).await;
    assert!(state[1].is_null(), "the invoice page says: {state}");
    screenshot(&c, "invoice").await;
    let (_, one) = call(Method::GET, format!("{url}/api/v1/invoices/{id}"), &admin, None).await;
    let one = &one[0];
    let shown_total = c.find(Locator::Id("invoice-total")).await.unwrap().attr("data-value").await.unwrap();
    assert_eq!(shown_total.as_deref(), one["total"].as_str());
    let lines = one["lines"].as_array().unwrap();
    assert_eq!(c.find_all(Locator::Css("#lines tr")).await.unwrap().len(), lines.len());
    for l in lines {
        let lid = l["id"].as_str().unwrap();
        let amount = c.find(Locator::Css(&format!("#lines [data-line='{lid}'] [data-field='amount']"))).await.unwrap();
        assert_eq!(amount.attr("data-value").await.unwrap().as_deref(), l["amount"].as_str(), "{lid}");
    }
    let hashes = c.find_all(Locator::Css("#lineage [data-field='inputs_hash']")).await.unwrap();
    assert_eq!(hashes.len(), lines.len());
    assert_eq!(hashes[0].attr("data-value").await.unwrap().as_deref(), lines[0]["lineage"]["inputs_hash"].as_str());

    // Sent through a payment provider (recorded in the ledger as the sync records a push to
    // Stripe), the invoice links to the provider's hosted page and PDF, on its page and in the
    // history.
    let (hosted, pdf) =
        ("https://invoice.stripe.com/i/acct_1/test_acme", "https://pay.stripe.com/invoice/acct_1/test_acme/pdf");
    let ledger = meter_billing::ledger::SqliteLedger::open(&dir.path().join("billing.db")).unwrap();
    let sent = meter_billing::ledger::outbox::RemoteInvoice {
        remote: "in_acme".into(),
        invoice: id.to_string(),
        tenant: "acme".into(),
        status: "open".into(),
        sent_us: Some(now_us()),
        due_us: None,
        paid_us: None,
        hosted_url: Some(hosted.into()),
        pdf_url: Some(pdf.into()),
    };
    meter_billing::ledger::LedgerStore::record_remote_invoice(&ledger, sent).await.unwrap();
    c.refresh().await.unwrap();
    ready(&c).await;
    for (field, href) in [("hosted", hosted), ("pdf", pdf)] {
        let a = c.find(Locator::Css(&format!("#invoice-head a[data-field='{field}']"))).await.unwrap();
        assert_eq!(a.attr("href").await.unwrap().as_deref(), Some(href), "{field}");
    }
    c.goto(&format!("{url}/portal")).await.unwrap();
    ready(&c).await;
    let row = format!("[data-invoice='{id}']");
    let payment = c.find(Locator::Css(&format!("{row} [data-field='payment']"))).await.unwrap();
    assert_eq!(payment.attr("data-value").await.unwrap().as_deref(), Some("open"));
    for (field, href) in [("hosted", hosted), ("pdf", pdf)] {
        let a = c.find(Locator::Css(&format!("{row} a[data-field='{field}']"))).await.unwrap();
        assert_eq!(a.attr("href").await.unwrap().as_deref(), Some(href), "{field}");
    }

    // The page's session reads acme only: beta's usage is refused to its own fetch.
    let status = c
        .execute_async(
            "const done = arguments[arguments.length - 1]; fetch('/api/v1/usage?tenant=beta').then(r => done(r.status))",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(status, 403);
    // And by a hand-edited URL.
    c.goto(&format!("{url}/api/v1/usage?tenant=beta")).await.unwrap();
    let text = c.find(Locator::Css("body")).await.unwrap().text().await.unwrap();
    assert!(text.contains("403") || text.contains("another tenant"), "{text}");
    c.goto(&format!("{url}/api/v1/usage?tenant=acme")).await.unwrap();
    let text = c.find(Locator::Css("body")).await.unwrap().text().await.unwrap();
    assert!(text.contains("\"tenant\":\"acme\""), "{text}");

    // The console refuses a portal session.
    c.goto(&format!("{url}/console")).await.unwrap();
    let state = ready(&c).await;
    assert!(state[1].as_str().is_some_and(|m| m.contains("may not open the finance console")), "{state}");

    // On a phone-sized screen nothing runs off the page sideways.
    c.set_window_size(390, 844).await.unwrap();
    c.goto(&format!("{url}/portal")).await.unwrap();
    let state = ready(&c).await;
    assert!(state[1].is_null(), "the page says: {state}");
    let widths = c.execute("return [document.documentElement.scrollWidth, window.innerWidth]", vec![]).await.unwrap();
    assert!(widths[0].as_u64() <= widths[1].as_u64(), "the page is wider than the phone: {widths}");
    screenshot(&c, "portal-phone").await;
    c.set_window_size(1280, 2200).await.unwrap();

    // Revoked, the session's page is refused at once.
    let sid = opened["id"].as_str().unwrap();
    let (s, _) = call(Method::DELETE, format!("{url}/api/v1/sessions/{sid}"), &admin, None).await;
    assert_eq!(s, 204);
    c.goto(&format!("{url}/portal")).await.unwrap();
    let state = ready(&c).await;
    assert!(state[1].as_str().is_some_and(|m| m.contains("session has ended")), "{state}");
    screenshot(&c, "portal-revoked").await;

    // The link works once: opened again (a fresh browser, no cookie), it is refused.
    c.close().await.unwrap();
    let again = browser(&driver).await;
    again.goto(&link).await.unwrap();
    let state = ready(&again).await;
    assert!(state[1].as_str().is_some_and(|m| m.contains("already used")), "{state}");
    screenshot(&again, "portal-link-used").await;
    again.close().await.unwrap();

    // The finance console, through a console session: every figure as the API gives it.
    let (_, console) = call(Method::POST, format!("{url}/api/v1/console/sessions"), &admin, Some(json!({}))).await;
    let f = browser(&driver).await;
    f.goto(console["url"].as_str().unwrap()).await.unwrap();
    let state = ready(&f).await;
    assert!(state[1].is_null(), "the console says: {state}");
    screenshot(&f, "console").await;
    let data = |css: String| {
        let f = f.clone();
        async move { f.find(Locator::Css(&css)).await.unwrap().attr("data-value").await.unwrap() }
    };
    let (_, months) = call(Method::GET, format!("{url}/api/v1/periods"), &admin, None).await;
    let months = months.as_array().unwrap();
    assert_eq!(f.find_all(Locator::Css("#periods tr")).await.unwrap().len(), months.len());
    for m in months {
        let p = m["period"].as_str().unwrap();
        assert_eq!(
            data(format!("#periods [data-period='{p}'] [data-field='state']")).await.as_deref(),
            m["state"].as_str()
        );
    }
    // The revenue of the month the page shows: the latest closed one.
    let month = f.find(Locator::Id("revenue")).await.unwrap().attr("data-period").await.unwrap().unwrap();
    let latest_closed = months.iter().find(|m| !m["invoices"].is_null()).unwrap()["period"].as_str().unwrap();
    assert_eq!(month, latest_closed);
    let (_, rev) = call(Method::GET, format!("{url}/api/v1/revenue?period={month}"), &admin, None).await;
    for (currency, c) in rev["currencies"].as_object().unwrap() {
        for field in ["mrr_start", "mrr_end", "arr_end"] {
            let shown = data(format!("#revenue [data-currency='{currency}'] [data-field='{field}']")).await;
            assert_eq!(shown.as_deref(), c[field].as_str(), "{field}");
        }
        let shown = data(format!("#revenue [data-currency='{currency}'] [data-field='new']")).await;
        assert_eq!(shown.as_deref(), c["movements"]["new"].as_str());
        let g = &c["recognition"];
        for field in ["billed", "billed_fees", "billed_usage", "recognised", "deferred_start", "deferred_end"] {
            let shown = data(format!("#recognition [data-currency='{currency}'] [data-field='{field}']")).await;
            assert_eq!(shown.as_deref(), g[field].as_str(), "{field}");
        }
        let collected = data(format!("#recognition [data-currency='{currency}'] [data-field='collected']")).await;
        assert_eq!(collected.unwrap_or_default(), g["collected"].as_str().unwrap_or(""), "collected");
    }
    assert!(rev["currencies"]["USD"]["mrr_end"].as_str().unwrap().parse::<f64>().unwrap() > 0.0, "acme's starter fee");
    // Last month closed from the console: its progress streamed onto the page, then the month
    // closed, its reconciliation with every difference first, and its invoices found by tenant.
    f.find(Locator::Css(&format!("[data-close='{last}']"))).await.unwrap().click().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut stages = Vec::new();
    loop {
        let stage = f.find(Locator::Id("close-status")).await.unwrap().attr("data-stage").await.unwrap();
        if let Some(stage) = stage
            && stages.last() != Some(&stage)
        {
            stages.push(stage);
        }
        let closed = f.execute("return document.body.dataset.closed || null", vec![]).await.unwrap();
        if closed.as_str() == Some(last.as_str()) {
            break;
        }
        assert!(Instant::now() < deadline, "the close never ended: {stages:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(stages.last().map(String::as_str), Some("done"), "{stages:?}");
    let seen = f.find(Locator::Id("close-status")).await.unwrap().attr("data-seen").await.unwrap().unwrap_or_default();
    assert!(seen.contains("totals") && seen.contains("rating"), "the page showed no progress: {seen:?}");
    screenshot(&f, "console-closed").await;
    let (_, months) = call(Method::GET, format!("{url}/api/v1/periods"), &admin, None).await;
    let state = months.as_array().unwrap().iter().find(|m| m["period"] == last.as_str()).unwrap()["state"].clone();
    assert!(state == "closed" || state == "complete", "{state}");
    assert_eq!(data(format!("#periods [data-period='{last}'] [data-field='state']")).await.as_deref(), state.as_str());
    assert!(f.find_all(Locator::Css("[data-close]")).await.unwrap().is_empty(), "nothing else to close");
    let (_, report) = call(Method::GET, format!("{url}/api/v1/periods/{last}/report"), &admin, None).await;
    let report = report.as_array().unwrap();
    let rows = f.find_all(Locator::Css("#report tr")).await.unwrap();
    assert_eq!(rows.len(), report.len());
    assert!(report.iter().any(|r| r["tenant"] == "beta" && r["status"] != "ok"), "beta's usage is a difference");
    let mut seen_ok = false;
    for (shown, _) in rows.iter().zip(report) {
        let tenant = shown.attr("data-tenant").await.unwrap().unwrap();
        let meter = shown.attr("data-meter").await.unwrap().unwrap();
        let want = report.iter().find(|r| r["tenant"] == tenant.as_str() && r["meter"] == meter.as_str()).unwrap();
        let status = shown.find(Locator::Css("[data-field='status']")).await.unwrap();
        assert_eq!(status.attr("data-value").await.unwrap().as_deref(), want["status"].as_str(), "{tenant} {meter}");
        for field in ["accepted", "counted", "stored", "rated"] {
            let cell = shown.find(Locator::Css(&format!("[data-field='{field}']"))).await.unwrap();
            let value = cell.attr("data-value").await.unwrap().unwrap_or_default();
            assert_eq!(value, want[field].as_str().map(str::to_string).unwrap_or_default(), "{tenant} {meter} {field}");
        }
        let flagged = shown.attr("class").await.unwrap().is_some_and(|c| c.contains("flagged"));
        assert_eq!(flagged, want["status"] != "ok", "{tenant} {meter}: highlighted when it differs");
        if want["status"] != "ok" {
            assert!(status.text().await.unwrap().starts_with("differs"), "said in words");
            assert!(!seen_ok, "differences come first");
        } else {
            seen_ok = true;
        }
    }
    // A tenant's link finds its invoices: the same as the API's search, with their totals.
    f.find(Locator::Css("#report tr[data-tenant='acme'] a")).await.unwrap().click().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while f.find(Locator::Id("found")).await.unwrap().attr("data-query").await.unwrap().as_deref()
        != Some("tenant:acme")
    {
        assert!(Instant::now() < deadline, "the search never ran");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, found) =
        call(Method::GET, format!("{url}/api/v1/periods/{last}/invoices/search?tenant=acme"), &admin, None).await;
    assert_eq!(found["matched"], 1, "{found}");
    let shown: Vec<String> = {
        let mut v = Vec::new();
        for r in f.find_all(Locator::Css("#found tr")).await.unwrap() {
            v.push(r.attr("data-invoice").await.unwrap().unwrap());
        }
        v
    };
    let want: Vec<String> =
        found["invoices"].as_array().unwrap().iter().map(|i| i["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(shown, want);
    assert_eq!(data("#search-summary".to_string()).await, Some(found["matched"].to_string()));
    for (currency, total) in found["totals"].as_object().unwrap() {
        let shown = data(format!("#found-totals [data-currency='{currency}'] [data-field='total']")).await;
        assert_eq!(shown.as_deref(), total.as_str(), "{currency}");
    }
    screenshot(&f, "console-search").await;
    let (_, ar) = call(Method::GET, format!("{url}/api/v1/receivables"), &admin, None).await;
    assert_eq!(f.find_all(Locator::Css("#aging tr")).await.unwrap().len(), ar["currencies"].as_object().unwrap().len());
    let (_, stats) = call(Method::GET, format!("{url}/api/v1/subscriptions/stats"), &admin, None).await;
    for (state, n) in stats["by_state"].as_object().unwrap() {
        assert_eq!(data(format!("#subscriptions [data-field='state-{state}']")).await, Some(n.to_string()), "{state}");
    }
    f.close().await.unwrap();

    // The link opened after its minute: refused.
    tokio::time::sleep(expires.saturating_duration_since(Instant::now())).await;
    let late = browser(&driver).await;
    late.goto(expiring["url"].as_str().unwrap()).await.unwrap();
    let state = ready(&late).await;
    assert!(state[1].as_str().is_some_and(|m| m.contains("expired")), "{state}");
    screenshot(&late, "portal-link-expired").await;
    late.close().await.unwrap();
}
