//! Billing end to end on a real `meter serve`: subscriptions through the API and the CLI, two
//! period closes (the first before its lateness window ended), events on both sides of a period
//! boundary, late events turned into an adjustment, byte-identical exports, the reconciliation
//! report and the upcoming invoice.

mod common;

use common::*;
use serde_json::{Value, json};
use std::process::Command;

/// A period `back` months before the one containing now, as `YYYY-MM` with its first instant.
fn period_back(back: i32) -> (String, time::OffsetDateTime) {
    let now = time::OffsetDateTime::now_utc();
    let months = now.year() * 12 + i32::from(u8::from(now.month())) - 1 - back;
    let (y, m) = (months.div_euclid(12), months.rem_euclid(12) + 1);
    let start =
        time::Date::from_calendar_date(y, time::Month::try_from(m as u8).unwrap(), 1).unwrap().midnight().assume_utc();
    (format!("{y:04}-{m:02}"), start)
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap()
}

fn work_order(tenant: &str, id: &str, at: time::OffsetDateTime) -> Value {
    json!({"transaction_id": id, "external_customer_id": tenant, "code": "work_order.created", "timestamp": rfc3339(at), "properties": {}})
}

async fn send(url: &str, key: &str, events: &[Value]) {
    for chunk in events.chunks(50) {
        let r = client()
            .post(format!("{url}/api/v1/events/batch"))
            .bearer_auth(key)
            .json(&json!({ "events": chunk }))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    }
}

async fn get_text(url: String, key: &str) -> String {
    let r = client().get(url).bearer_auth(key).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.text().await.unwrap()
}

fn cli(args: &[&str], url: &str, key: &str) -> std::process::Output {
    Command::new(meter_bin()).args(args).env("METER_URL", url).env("METER_KEY", key).output().unwrap()
}

fn invoice<'a>(invoices: &'a Value, tenant: &str) -> &'a Value {
    invoices
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["tenant"] == tenant)
        .unwrap_or_else(|| panic!("no invoice for {tenant}"))
}

fn lines_of<'a>(inv: &'a Value, kind: &str) -> Vec<&'a Value> {
    inv["lines"].as_array().unwrap().iter().filter(|l| l["kind"] == kind).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_closes_bill_exactly_and_late_events_become_an_adjustment() {
    let dir = tempfile::tempdir().unwrap();
    let admin = create_key(dir.path(), "admin", None);
    let acme_reader = create_key(dir.path(), "read", Some("acme"));
    let ingest = create_key(dir.path(), "ingest", None);
    let meter = Meter::start(dir.path(), &[("METER__INGEST__LATENESS", "120days")]);
    let url = meter.url.clone();
    let (p1, p1_start) = period_back(2);
    let (p2, p2_start) = period_back(1);
    let (open, _) = period_back(0);
    let ms = time::Duration::milliseconds(1);
    let post = reqwest::Method::POST;
    let get = reqwest::Method::GET;

    // Subscriptions: through the API, and one through the CLI.
    let at = rfc3339(p1_start);
    let (s, acme) = call(
        post.clone(),
        format!("{url}/api/v1/subscriptions"),
        &admin,
        Some(json!({"tenant": "acme", "plan": "starter", "cycle": "monthly", "at": at})),
    )
    .await;
    assert_eq!(s, 201, "{acme}");
    assert_eq!(acme["state"], "active");
    let out = cli(
        &[
            "subscriptions",
            "create",
            "--tenant",
            "hooli",
            "--plan",
            "enterprise",
            "--cycle",
            "annual",
            "--term-years",
            "2",
            "--at",
            &at,
        ],
        &url,
        &admin,
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let hooli: Value = serde_json::from_slice(&out.stdout).unwrap();
    let trial_at = rfc3339(p1_start + time::Duration::days(3));
    let (s, initech) = call(
        post.clone(),
        format!("{url}/api/v1/subscriptions"),
        &admin,
        Some(json!({"tenant": "initech", "plan": "professional", "cycle": "monthly", "trial": true, "at": trial_at})),
    )
    .await;
    assert_eq!(s, 201, "{initech}");

    // Refusals name the field or the allowed transitions, and change nothing.
    let (s, e) = call(
        post.clone(),
        format!("{url}/api/v1/subscriptions"),
        &admin,
        Some(json!({"tenant": "acme", "plan": "starter", "cycle": "monthly"})),
    )
    .await;
    assert_eq!((s, e["detail"].as_str().unwrap().contains("already has subscription")), (409, true), "{e}");
    let (s, e) = call(
        post.clone(),
        format!("{url}/api/v1/subscriptions"),
        &admin,
        Some(json!({"tenant": "x", "plan": "gold", "cycle": "monthly"})),
    )
    .await;
    assert_eq!((s, e["extensions"]["validationErrors"][0]["path"].as_str()), (422, Some("plan")), "{e}");
    let (s, e) = call(
        post.clone(),
        format!("{url}/api/v1/subscriptions"),
        &admin,
        Some(json!({"tenant": "x", "plan": "starter", "cycle": "weekly"})),
    )
    .await;
    assert_eq!(s, 422, "{e}");
    assert!(e["detail"].as_str().unwrap().contains("cycle"), "{e}");
    let (s, e) = call(
        post.clone(),
        format!("{url}/api/v1/subscriptions"),
        &admin,
        Some(json!({"tenant": "x", "plan": "starter", "cycle": "monthly", "at": "2999-01-01T00:00:00Z"})),
    )
    .await;
    assert_eq!((s, e["extensions"]["validationErrors"][0]["path"].as_str()), (422, Some("at")), "{e}");
    let (s, e) = call(
        post.clone(),
        format!("{url}/api/v1/subscriptions"),
        &admin,
        Some(json!({"tenant": "x", "plan": "starter", "cycle": "monthly", "colour": "red"})),
    )
    .await;
    assert_eq!(s, 422, "{e}");
    assert!(e["detail"].as_str().unwrap().contains("colour"), "{e}");
    let id = acme["id"].as_str().unwrap();
    let (s, e) = call(post.clone(), format!("{url}/api/v1/subscriptions/{id}/convert"), &admin, Some(json!({}))).await;
    assert_eq!(s, 409, "{e}");
    assert_eq!(e["allowed"], json!(["change_plan", "cancel", "payment_failed"]));
    let (s, _) = call(post.clone(), format!("{url}/api/v1/subscriptions/{id}/cancel"), &acme_reader, None).await;
    assert_eq!(s, 403);
    let (s, _) =
        call(get.clone(), format!("{url}/api/v1/subscriptions/{}", hooli["id"].as_str().unwrap()), &acme_reader, None)
            .await;
    assert_eq!(s, 404, "another tenant's subscription is not found");
    let (s, own) = call(get.clone(), format!("{url}/api/v1/subscriptions/{id}"), &acme_reader, None).await;
    assert_eq!((s, own["tenant"].as_str()), (200, Some("acme")));
    let (s, e) = call(post.clone(), format!("{url}/api/v1/periods/{open}/close"), &admin, None).await;
    assert_eq!(s, 409, "the open period cannot close: {e}");
    let (s, _) = call(post.clone(), format!("{url}/api/v1/periods/2026-13/close"), &admin, None).await;
    assert_eq!(s, 422);

    // Usage: acme 619 work orders inside P1 plus one at its last millisecond, one at P2's first
    // instant; a tenant without a subscription.
    let mut events: Vec<Value> =
        (0..619).map(|i| work_order("acme", &format!("a{i}"), p1_start + time::Duration::hours(1) + ms * i)).collect();
    events.push(work_order("acme", "last-ms", p2_start - ms));
    events.push(work_order("acme", "first-instant", p2_start));
    events.extend((0..30).map(|i| work_order("initech", &format!("i{i}"), p1_start + time::Duration::days(20))));
    events.extend((0..7).map(|i| work_order("umbrella", &format!("u{i}"), p1_start + time::Duration::days(2))));
    send(&url, &ingest, &events).await;
    let sent = now_us();
    for t in ["acme", "initech", "umbrella"] {
        wait_counted(&url, &admin, t, sent).await;
    }

    // Close P1 with the CLI: progress on stderr, summary on stdout, the four exports.
    let out_dir = dir.path().join("p1");
    let out = cli(&["period", "close", &p1, "--out", out_dir.to_str().unwrap()], &url, &admin);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("census of the log"), "{stderr}");
    assert!(stdout.contains(&format!("period {p1} closed")), "{stdout}");
    assert!(stdout.contains("closed before the lateness window ended"), "{stdout}");
    let invoices: Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("invoices.json")).unwrap()).unwrap();
    let a = invoice(&invoices, "acme");
    assert_eq!(lines_of(a, "base_fee")[0]["amount"], "5000.00");
    let wo = lines_of(a, "overage").into_iter().find(|l| l["meter"] == "work_orders").unwrap();
    assert_eq!(wo["lineage"]["meters"]["work_orders"], "620", "619 + the last millisecond, not P2's first instant");
    assert_eq!(wo["amount"], "3000.00");
    assert_eq!(a["total"], "8000.00");
    let h = invoice(&invoices, "hooli");
    assert_eq!(lines_of(h, "base_fee")[0]["amount"], "300000.00");
    assert_eq!(lines_of(h, "term_discount")[0]["amount"], "-60000.00");
    let i = invoice(&invoices, "initech");
    assert_eq!(lines_of(i, "base_fee")[0]["amount"], "15000.00", "the trial converted 14 days in");
    assert!(invoices.as_array().unwrap().iter().all(|i| i["tenant"] != "umbrella"));
    let report: Value = serde_json::from_str(&std::fs::read_to_string(out_dir.join("report.json")).unwrap()).unwrap();
    let row = |r: &Value, t: &str, m: &str| {
        r.as_array().unwrap().iter().find(|x| x["tenant"] == t && x["meter"] == m).cloned().unwrap()
    };
    let acme_wo = row(&report, "acme", "work_orders");
    assert_eq!(
        (&acme_wo["accepted"], &acme_wo["counted"], &acme_wo["stored"], &acme_wo["rated"], &acme_wo["status"]),
        (&json!("620"), &json!("620"), &json!("620"), &json!("620"), &json!("ok"))
    );
    assert_eq!(row(&report, "umbrella", "work_orders")["status"], "no subscription: usage not billed");

    // Closing again changes nothing: same drafts, byte for byte.
    let (s, again) = call(post.clone(), format!("{url}/api/v1/periods/{p1}/close"), &admin, None).await;
    assert_eq!(s, 200, "{again}");
    for (what, format) in [("invoices", "json"), ("invoices", "csv"), ("report", "json"), ("report", "csv")] {
        let served = get_text(format!("{url}/api/v1/periods/{p1}/{what}?format={format}"), &admin).await;
        let written = std::fs::read_to_string(out_dir.join(format!("{what}.{format}"))).unwrap();
        assert_eq!(served, written, "{what}.{format}");
    }
    let csv = std::fs::read_to_string(out_dir.join("invoices.csv")).unwrap();
    assert!(
        csv.starts_with("invoice_id,tenant,subscription,period,currency,price_version,line_id,kind,meter"),
        "{csv}"
    );
    let (s, _) = call(get.clone(), format!("{url}/api/v1/periods/{p1}/invoices?format=xml"), &admin, None).await;
    assert_eq!(s, 422);

    // A closed period is never rewritten: no change dated inside it.
    let (s, e) = call(
        post.clone(),
        format!("{url}/api/v1/subscriptions/{id}/cancel"),
        &admin,
        Some(json!({"at": rfc3339(p1_start + time::Duration::days(5))})),
    )
    .await;
    assert_eq!(s, 409, "{e}");
    assert!(e["detail"].as_str().unwrap().contains("closed period"), "{e}");

    // Ten late events for P1, then close P2: they arrive as an adjustment, P1 stays as it was.
    let late: Vec<Value> =
        (0..10).map(|i| work_order("acme", &format!("late{i}"), p1_start + time::Duration::days(9))).collect();
    send(&url, &ingest, &late).await;
    wait_counted(&url, &admin, "acme", now_us()).await;
    let (s, closed) = call(post.clone(), format!("{url}/api/v1/periods/{p2}/close"), &admin, None).await;
    assert_eq!(s, 200, "{closed}");
    let p2_invoices: Value =
        serde_json::from_str(&get_text(format!("{url}/api/v1/periods/{p2}/invoices"), &admin).await).unwrap();
    let a2 = invoice(&p2_invoices, "acme");
    let wo2 = lines_of(a2, "overage").into_iter().find(|l| l["meter"] == "work_orders").unwrap();
    assert_eq!(wo2["lineage"]["meters"]["work_orders"], "1", "P2 holds only its first instant's event");
    let adj = lines_of(a2, "adjustment");
    assert_eq!(adj.len(), 1, "{a2:#}");
    assert_eq!(adj[0]["amount"], "250.00");
    assert!(
        adj[0]["description"].as_str().unwrap().contains(&format!("adjustment for {p1}: work_orders 620 → 630")),
        "{}",
        adj[0]
    );
    let p1_again = get_text(format!("{url}/api/v1/periods/{p1}/invoices?format=json"), &admin).await;
    assert_eq!(p1_again, std::fs::read_to_string(out_dir.join("invoices.json")).unwrap(), "P1 is not rewritten");
    let (s, e) = call(post.clone(), format!("{url}/api/v1/periods/{p1}/close"), &admin, None).await;
    assert_eq!(s, 200, "closing P1 again still answers its close: {e}");

    // acme's invoice history, with its own read key: both periods, newest first, the same
    // invoices as the periods' exports; no payment state (no provider); CSV as the export's
    // rows of those invoices; never another tenant's.
    let (s, history) = call(get.clone(), format!("{url}/api/v1/invoices"), &acme_reader, None).await;
    assert_eq!(s, 200, "{history}");
    let history = history.as_array().unwrap().clone();
    let p1_invoices: Value = serde_json::from_str(&p1_again).unwrap();
    let a1 = invoice(&p1_invoices, "acme");
    assert_eq!(history.len(), 2, "{history:#?}");
    let without_payment = |v: &Value| {
        let mut v = v.clone();
        assert_eq!(v.as_object_mut().unwrap().remove("payment"), Some(Value::Null));
        v
    };
    assert_eq!((without_payment(&history[0]), without_payment(&history[1])), (a2.clone(), a1.clone()));
    let csv = get_text(format!("{url}/api/v1/invoices?format=csv"), &acme_reader).await;
    let export = get_text(format!("{url}/api/v1/periods/{p2}/invoices?format=csv"), &admin).await;
    let acme_rows =
        |text: &str| text.lines().skip(1).filter(|l| l.contains(",acme,")).map(str::to_string).collect::<Vec<_>>();
    assert!(acme_rows(&export).iter().all(|row| csv.contains(row.as_str())), "{csv}\n{export}");
    assert_eq!(csv.lines().next(), export.lines().next(), "the same columns");
    let id1 = a1["id"].as_str().unwrap();
    let (s, one) = call(get.clone(), format!("{url}/api/v1/invoices/{id1}"), &acme_reader, None).await;
    assert_eq!((s, without_payment(&one[0])), (200, a1.clone()));
    let (s, _) = call(get.clone(), format!("{url}/api/v1/invoices?tenant=hooli"), &acme_reader, None).await;
    assert_eq!(s, 403);
    let hooli_invoice = invoice(&p2_invoices, "hooli")["id"].as_str().unwrap().to_string();
    let (s, _) = call(get.clone(), format!("{url}/api/v1/invoices/{hooli_invoice}"), &acme_reader, None).await;
    assert_eq!(s, 404, "another tenant's invoice is not there for acme");
    let (s, _) = call(get.clone(), format!("{url}/api/v1/invoices/{hooli_invoice}"), &admin, None).await;
    assert_eq!(s, 200);
    let (s, e) = call(get.clone(), format!("{url}/api/v1/invoices"), &admin, None).await;
    assert_eq!(s, 422, "an admin names the tenant: {e}");

    // The months as finance sees them: this one open, the two closed (no payment provider: never
    // synced), each with its pushes.
    let (s, months) = call(get.clone(), format!("{url}/api/v1/periods"), &admin, None).await;
    assert_eq!(s, 200, "{months}");
    let months = months.as_array().unwrap();
    assert_eq!(
        (months[0]["period"].as_str(), months[0]["state"].as_str()),
        (Some(open.as_str()), Some("open")),
        "{months:?}"
    );
    for (p, invoices) in [(&p2, &p2_invoices), (&p1, &p1_invoices)] {
        let m = months.iter().find(|m| m["period"] == p.as_str()).unwrap_or_else(|| panic!("{p} missing: {months:?}"));
        assert!(matches!(m["state"].as_str(), Some("closed" | "complete")), "{m}");
        let with_lines =
            invoices.as_array().unwrap().iter().filter(|i| !i["lines"].as_array().unwrap().is_empty()).count();
        assert_eq!(m["invoices"].as_u64(), Some(with_lines as u64), "{m}");
        assert_eq!(m["synced"], 0, "{m}");
    }
    let (s, _) = call(get.clone(), format!("{url}/api/v1/periods"), &acme_reader, None).await;
    assert_eq!(s, 403);

    // The month's recurring revenue (admin), JSON and CSV alike; a tenant's key may not.
    let (s, rev) = call(get.clone(), format!("{url}/api/v1/revenue?period={p2}"), &admin, None).await;
    assert_eq!(s, 200, "{rev}");
    let usd = &rev["currencies"]["USD"];
    let num = |v: &Value| v.as_str().unwrap().parse::<f64>().unwrap();
    assert!(num(&usd["mrr_end"]) > 0.0 && (num(&usd["arr_end"]) - 12.0 * num(&usd["mrr_end"])).abs() < 0.01, "{rev}");
    let moved = &usd["movements"];
    let sum = num(&moved["new"]) + num(&moved["expansion"]) + num(&moved["reactivation"])
        - num(&moved["contraction"])
        - num(&moved["churn"]);
    assert!((sum - num(&moved["net_new"])).abs() < 0.01, "{rev}");
    assert!((num(&usd["mrr_end"]) - num(&usd["mrr_start"]) - num(&moved["net_new"])).abs() < 0.01, "{rev}");
    // Billed equals the month's invoices; deferred revenue rolls forward to the cent.
    let g = &usd["recognition"];
    let usd_invoices = p2_invoices.as_array().unwrap().iter().filter(|i| i["currency"] == "USD");
    let billed: f64 = usd_invoices.map(|i| num(&i["total"])).sum();
    assert!((num(&g["billed"]) - billed).abs() < 0.005, "{g} against {billed}");
    assert!((num(&g["billed"]) - num(&g["billed_fees"]) - num(&g["billed_usage"])).abs() < 0.005, "{g}");
    let forward = num(&g["deferred_start"]) + num(&g["billed_fees"]) - num(&g["recognised_fees"]);
    assert!((num(&g["deferred_end"]) - forward).abs() < 0.005, "{g}");
    assert_eq!(g["collected"], Value::Null, "no payment sync here");
    let csv = get_text(format!("{url}/api/v1/revenue?period={p2}&format=csv"), &admin).await;
    assert!(
        csv.starts_with("period,currency,mrr_start,mrr_end,arr_end,")
            && csv
                .lines()
                .next()
                .unwrap()
                .ends_with(",recognised_usage,deferred_start,deferred_end,fees_without_service")
            && csv.contains(&format!("{p2},USD,")),
        "{csv}"
    );
    let (s, _) = call(get.clone(), format!("{url}/api/v1/revenue?period={p2}"), &acme_reader, None).await;
    assert_eq!(s, 403);
    let (s, e) = call(get.clone(), format!("{url}/api/v1/revenue?period=2026-13"), &admin, None).await;
    assert_eq!(s, 422, "{e}");

    // The upcoming invoice: so far and projected, for the tenant's own read key.
    let (s, up) = call(get.clone(), format!("{url}/api/v1/invoices/upcoming"), &acme_reader, None).await;
    assert_eq!(s, 200, "{up}");
    assert_eq!(up["period"], open.as_str());
    let total = |v: &Value| v["total"].as_str().unwrap().parse::<f64>().unwrap();
    assert!(total(&up["projected"]) >= total(&up["so_far"]), "{up}");
    let (s, _) = call(get.clone(), format!("{url}/api/v1/invoices/upcoming?tenant=hooli"), &acme_reader, None).await;
    assert_eq!(s, 403);
    let (s, _) = call(get.clone(), format!("{url}/api/v1/invoices/upcoming?tenant=umbrella"), &admin, None).await;
    assert_eq!(s, 404);

    // past_due → reactivated through the API; the trail records each change and who made it.
    let hid = hooli["id"].as_str().unwrap();
    let (s, v) = call(post.clone(), format!("{url}/api/v1/subscriptions/{hid}/payment_failed"), &admin, None).await;
    assert_eq!((s, v["state"].as_str()), (200, Some("past_due")), "{v}");
    let (s, e) = call(post.clone(), format!("{url}/api/v1/subscriptions/{hid}/payment_failed"), &admin, None).await;
    assert_eq!((s, &e["allowed"]), (409, &json!(["change_plan", "cancel", "reactivate"])), "{e}");
    let out = cli(&["subscriptions", "reactivate", hid], &url, &admin);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["state"], "active");
    let kinds: Vec<&str> = v["trail"].as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["created", "cycle_started", "payment_failed", "reactivated"]);
    let (_, t) =
        call(get, format!("{url}/api/v1/subscriptions/{}", initech["id"].as_str().unwrap()), &admin, None).await;
    let kinds: Vec<&str> = t["trail"].as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(&kinds[..3], ["created", "converted", "cycle_started"], "{t}");
    assert_eq!(t["trail"][1]["by"], "schedule");

    // The plans with their feature matrix; deals only for admins (and a tenant's own).
    let (s, plans) = call(reqwest::Method::GET, format!("{url}/api/v1/plans"), &acme_reader, None).await;
    assert_eq!(s, 200, "{plans}");
    assert_eq!(plans["list"]["plans"]["enterprise"]["features"]["sla"], "99.95%");
    assert_eq!(plans["list"]["plans"]["starter"]["meters"]["work_orders"]["included"], "500");
    assert_eq!(plans["list"]["overrides"], json!({}), "globex's deal is not acme's to see");
    let (_, all) = call(reqwest::Method::GET, format!("{url}/api/v1/plans"), &admin, None).await;
    assert_eq!(all["list"]["overrides"]["globex"]["fee"]["annual"], "650000.00");
    let (s, _) = call(reqwest::Method::GET, format!("{url}/api/v1/plans?period=1999-01"), &admin, None).await;
    assert_eq!(s, 404);
    // Trials: initech's converted.
    let (s, stats) = call(reqwest::Method::GET, format!("{url}/api/v1/subscriptions/stats"), &admin, None).await;
    assert_eq!(s, 200, "{stats}");
    assert_eq!(
        (&stats["trials_started"], &stats["trials_converted"], &stats["conversion_rate"]),
        (&json!(1), &json!(1), &json!("1"))
    );
    assert_eq!(stats["by_state"]["active"], 3);
    let (s, _) = call(reqwest::Method::GET, format!("{url}/api/v1/subscriptions/stats"), &acme_reader, None).await;
    assert_eq!(s, 403);
}

/// On Kafka the log keeps every copy a retried request sent; the census reads the topic from
/// offset 0 in a consumer group of its own and counts each `(tenant, id)` once, as the stores do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_on_kafka_reconciles_a_census_of_the_topic() {
    let kafka = DevKafka::start(4);
    let dir = tempfile::tempdir().unwrap();
    close_reconciles(kafka.env(), dir.path(), None).await;
}

/// With a ClickHouse store, the close freezes at the sink's watermark and rates ClickHouse's
/// deduplicated totals; the live counters are the "counted" column.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_on_clickhouse_rates_its_history() {
    let ch_dir = tempfile::tempdir().unwrap();
    let clickhouse = meter_store::testing::ClickHouseServer::start(ch_dir.path());
    let db = meter_store::testing::fresh_database(&clickhouse.http());
    let store = format!("clickhouse://{}/{}", db.http.trim_start_matches("http://"), db.database);
    let dir = tempfile::tempdir().unwrap();
    let migrated =
        Command::new(meter_bin()).args(["migrate", "--store", &store, "--data-dir"]).arg(dir.path()).output().unwrap();
    assert!(migrated.status.success(), "{}", String::from_utf8_lossy(&migrated.stderr));
    let env = vec![("METER__STORE__URL", store), ("METER__SINK__LINGER", "200ms".to_string())];
    close_reconciles(env, dir.path(), Some("store")).await;
}

/// Nine tenants, one subscribed, 900 events in the period two months back, 300 of them sent
/// twice; the close's four figures agree for every tenant.
async fn close_reconciles(mut env: Vec<(&'static str, String)>, dir: &std::path::Path, history: Option<&str>) {
    let admin = create_key(dir, "admin", None);
    env.push(("METER__INGEST__LATENESS", "120days".into()));
    // What a census killed with its process left: removed when meter starts again.
    let killed = dir.join("census").join("census-with-its-process");
    std::fs::create_dir_all(&killed).unwrap();
    std::fs::write(killed.join("lock"), b"").unwrap();
    let meter = Meter::start(dir, &env_refs(&env));
    assert!(!killed.exists(), "a census's spill is removed at start-up");
    let url = meter.url.clone();
    let (p1, p1_start) = period_back(2);
    let (s, v) = call(
        reqwest::Method::POST,
        format!("{url}/api/v1/subscriptions"),
        &admin,
        Some(json!({"tenant": "t0", "plan": "starter", "cycle": "monthly", "at": rfc3339(p1_start)})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let events: Vec<Value> = (0..900)
        .map(|i| work_order(&format!("t{}", i % 9), &format!("e{i}"), p1_start + time::Duration::minutes(i)))
        .collect();
    send(&url, &admin, &events).await;
    send(&url, &admin, &events[..300]).await; // a client retrying: copies in a Kafka topic
    let sent = now_us();
    for t in 0..9 {
        wait_counted(&url, &admin, &format!("t{t}"), sent).await;
        if history.is_some() {
            wait_counted_in(&url, &admin, &format!("t{t}"), sent, history, std::time::Duration::from_secs(60)).await;
        }
    }
    // What a census killed midway would have left in the data directory.
    let left = dir.join("census").join("census-killed");
    std::fs::create_dir_all(&left).unwrap();
    std::fs::write(left.join("0"), b"spilled").unwrap();
    let (s, closed) = call(reqwest::Method::POST, format!("{url}/api/v1/periods/{p1}/close"), &admin, None).await;
    assert_eq!(s, 200, "{closed}");
    assert_eq!(closed["differences"], 8, "t1 to t8 have no subscription: {closed:#}");
    let spilled: Vec<_> = std::fs::read_dir(dir.join("census")).unwrap().collect();
    assert!(spilled.is_empty(), "the census removes its spill and what an earlier one left: {spilled:?}");
    assert!(closed.get("report").is_none(), "the close answers without its rows: {closed:#}");
    let report: Value =
        serde_json::from_str(&get_text(format!("{url}/api/v1/periods/{p1}/report"), &admin).await).unwrap();
    let rows: Vec<&Value> = report.as_array().unwrap().iter().filter(|r| r["meter"] == "work_orders").collect();
    assert_eq!(rows.len(), 9);
    for r in rows {
        assert_eq!((&r["accepted"], &r["counted"], &r["stored"]), (&json!("100"), &json!("100"), &json!("100")), "{r}");
        let billed = r["tenant"] == "t0";
        assert_eq!(r["status"], if billed { "ok" } else { "no subscription: usage not billed" }, "{r}");
    }
    let invoices: Value =
        serde_json::from_str(&get_text(format!("{url}/api/v1/periods/{p1}/invoices"), &admin).await).unwrap();
    assert_eq!(invoice(&invoices, "t0")["total"], "5000.00", "100 work orders are within Starter's 500");
}
