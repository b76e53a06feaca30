//! Usage alerts end to end on the embedded default: a tenant driven to 120% of its work orders
//! through duplicates, out-of-order events and two aggregator crashes gets exactly three alerts,
//! none early, none repeated; an unlimited meter gets none.

mod common;

use common::*;
use serde_json::{Value, json};

async fn send(url: &str, key: &str, events: &[Value]) {
    for chunk in events.chunks(50) {
        loop {
            let r = client()
                .post(format!("{url}/api/v1/events/batch"))
                .bearer_auth(key)
                .json(&json!({ "events": chunk }))
                .send()
                .await;
            match r {
                Ok(r) if r.status().is_success() => break,
                Ok(r) => panic!("{}", r.text().await.unwrap()),
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_at_120_percent_gets_three_alerts_through_duplicates_reordering_and_crashes() {
    let dir = tempfile::tempdir().unwrap();
    let admin = create_key(dir.path(), "admin", None);
    let reader = create_key(dir.path(), "read", Some("acme"));
    let mut meter = Meter::start(dir.path(), &[]);
    for (tenant, plan) in [("acme", "starter"), ("hooli", "enterprise")] {
        let r = client()
            .post(format!("{}/api/v1/subscriptions", meter.url))
            .bearer_auth(&admin)
            .json(&json!({"tenant": tenant, "plan": plan, "cycle": "monthly"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    // 600 work orders (Starter includes 500) at times spread over the period so far, sent in a
    // shuffled order; one batch in five sent twice; the server SIGKILLed twice on the way.
    let now = now_us();
    // Within the period and the 7-day lateness window.
    let start = meter_schemas::Period::containing(now).start_us().max(now - 6 * 86_400_000_000);
    let mut order: Vec<usize> = (0..600).collect();
    order.sort_by_key(|i| (i * 7919) % 600);
    let event = |tenant: &str, i: usize| {
        let t = start + ((now - start) as i128 * i as i128 / 600) as i64;
        let ts = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(t) * 1000).unwrap();
        json!({"transaction_id": format!("wo-{i}"), "external_customer_id": tenant, "code": "work_order.created",
               "timestamp": ts.format(&time::format_description::well_known::Rfc3339).unwrap(), "properties": {}})
    };
    let events: Vec<Value> = order.iter().map(|&i| event("acme", i)).collect();
    for (n, part) in events.chunks(100).enumerate() {
        send(&meter.url, &admin, part).await;
        if n % 5 == 0 {
            send(&meter.url, &admin, &part[..50]).await;
        }
        if n == 2 || n == 4 {
            meter.restart();
        }
    }
    let unlimited: Vec<Value> = (0..600).map(|i| event("hooli", i)).collect();
    send(&meter.url, &admin, &unlimited).await;
    let usage = wait_counted(&meter.url, &admin, "acme", now_us()).await;
    assert_eq!(values(&usage)["work_orders"], "600");
    wait_counted(&meter.url, &admin, "hooli", now_us()).await;

    let r = client().get(format!("{}/api/v1/alerts", meter.url)).bearer_auth(&reader).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let page: Value = r.json().await.unwrap();
    let alerts = page["alerts"].as_array().unwrap();
    let fired: Vec<(u64, &str)> =
        alerts.iter().map(|a| (a["percent"].as_u64().unwrap(), a["meter"].as_str().unwrap())).collect();
    assert_eq!(fired, [(80, "work_orders"), (90, "work_orders"), (100, "work_orders")], "{page:#}");
    for a in alerts {
        let (value, threshold) = (a["value"].as_str().unwrap(), a["threshold"].as_str().unwrap());
        assert!(value.parse::<u64>().unwrap() >= threshold.parse::<u64>().unwrap(), "early: {a}");
        assert_eq!(a["included"], "500");
        assert_eq!(a["tenant"], "acme");
        assert_eq!(a["plan"], "starter");
    }
    // All alerts, as an admin sees them: hooli's unlimited work orders raised none.
    let r = client().get(format!("{}/api/v1/alerts", meter.url)).bearer_auth(&admin).send().await.unwrap();
    let all: Value = r.json().await.unwrap();
    assert_eq!(all["alerts"].as_array().unwrap().len(), 3, "{all:#}");
    // A read key sees only its tenant's; paging follows `after`.
    let r =
        client().get(format!("{}/api/v1/alerts?tenant=hooli", meter.url)).bearer_auth(&reader).send().await.unwrap();
    assert_eq!(r.status(), 403);
    let r = client()
        .get(format!("{}/api/v1/alerts?after={}", meter.url, alerts[1]["seq"]))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    let rest: Value = r.json().await.unwrap();
    assert_eq!(rest["alerts"].as_array().unwrap().len(), 1);
    let r = client().get(format!("{}/api/v1/alerts?limit=0", meter.url)).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(r.status(), 422);
}
