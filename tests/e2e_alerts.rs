//! Usage alerts end to end on the embedded default: a tenant driven to 120% of its work orders
//! through duplicates, out-of-order events and two aggregator crashes gets exactly three alerts,
//! none early, none repeated; an unlimited meter gets none.

mod common;

use common::*;
use serde_json::{Value, json};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A webhook receiver on port 0 that verifies every signature and fails its first `failures`
/// deliveries with a 500 (`usize::MAX`: it never recovers).
struct Receiver {
    url: String,
    secret: Arc<Mutex<String>>,
    failures: Arc<AtomicUsize>,
    /// Alert ids it accepted (answered 2xx), in order.
    accepted: Arc<Mutex<Vec<String>>>,
    /// Requests whose signature did not verify.
    forged: Arc<AtomicUsize>,
}

impl Receiver {
    async fn start(failures: usize) -> Receiver {
        let secret = Arc::new(Mutex::new(String::new()));
        let failures = Arc::new(AtomicUsize::new(failures));
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let forged = Arc::new(AtomicUsize::new(0));
        let (s, f, a, x) = (secret.clone(), failures.clone(), accepted.clone(), forged.clone());
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let (s, f, a, x) = (s.clone(), f.clone(), a.clone(), x.clone());
                async move {
                    let header = headers.get("Meter-Signature").and_then(|v| v.to_str().ok()).unwrap_or_default();
                    let now = now_us() / 1_000_000;
                    let secret = s.lock().unwrap().clone();
                    if meter_webhooks::verify(&secret, header, &body, now).is_err() {
                        x.fetch_add(1, Ordering::SeqCst);
                        return axum::http::StatusCode::BAD_REQUEST;
                    }
                    // Tampering is detected by the same check.
                    let mut tampered = body.to_vec();
                    tampered.push(b' ');
                    assert!(meter_webhooks::verify(&secret, header, &tampered, now).is_err());
                    assert!(meter_webhooks::verify(&secret, header, &body, now + 301).is_err(), "stale");
                    if f.load(Ordering::SeqCst) > 0 {
                        f.fetch_sub(1, Ordering::SeqCst);
                        return axum::http::StatusCode::INTERNAL_SERVER_ERROR;
                    }
                    let v: Value = serde_json::from_slice(&body).unwrap();
                    assert_eq!(headers.get("Meter-Event-Id").unwrap().to_str().unwrap(), v["id"].as_str().unwrap());
                    a.lock().unwrap().push(v["id"].as_str().unwrap().to_string());
                    axum::http::StatusCode::OK
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver { url, secret, failures, accepted, forged }
    }

    async fn register(&self, meter: &str, key: &str, tenant: Option<&str>) {
        let mut body = json!({ "url": self.url });
        if let Some(t) = tenant {
            body["tenant"] = json!(t);
        }
        let r = client().post(format!("{meter}/api/v1/webhooks")).bearer_auth(key).json(&body).send().await.unwrap();
        assert_eq!(r.status(), 201);
        let v: Value = r.json().await.unwrap();
        *self.secret.lock().unwrap() = v["secret"].as_str().unwrap().to_string();
    }

    fn accepted(&self) -> Vec<String> {
        self.accepted.lock().unwrap().clone()
    }
}

/// Subscribes `tenant` to `plan`, monthly.
async fn subscribe(url: &str, key: &str, tenant: &str, plan: &str) {
    let r = client()
        .post(format!("{url}/api/v1/subscriptions"))
        .bearer_auth(key)
        .json(&json!({"tenant": tenant, "plan": plan, "cycle": "monthly"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
}

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
    let mut meter = Meter::start(
        dir.path(),
        &[
            ("METER__WEBHOOKS__RETRY_FOR", "3s"),
            ("METER__WEBHOOKS__FIRST_BACKOFF", "100ms"),
            ("METER__WEBHOOKS__MAX_BACKOFF", "400ms"),
            // Upgrade suggestions depend on the day of the month (the projection): not here.
            ("METER__ALERTS__ADVISE_EVERY", "1000days"),
            // acme's own receiver runs on this machine.
            ("METER__WEBHOOKS__ALLOW_PRIVATE_TARGETS", "true"),
        ],
    );
    // acme's own endpoint; an admin endpoint for every tenant that fails its first 5
    // deliveries; an admin endpoint for acme that never recovers.
    let own = Receiver::start(0).await;
    own.register(&meter.url, &reader, None).await;
    let flaky = Receiver::start(5).await;
    flaky.register(&meter.url, &admin, None).await;
    let down = Receiver::start(usize::MAX).await;
    down.register(&meter.url, &admin, Some("acme")).await;
    for (tenant, plan) in [("acme", "starter"), ("hooli", "enterprise")] {
        subscribe(&meter.url, &admin, tenant, plan).await;
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
            // Delivery is at least once: a SIGKILL between a receiver's 2xx and the record sends
            // that delivery again (same id). The crashes come once every alert raised so far is
            // recorded as delivered to the two answering receivers, so that what this test
            // counts is alerts raised twice.
            wait_counted(&meter.url, &admin, "acme", now_us()).await;
            let get = |path: &'static str| {
                let url = format!("{}{path}", meter.url);
                let admin = admin.clone();
                async move { client().get(url).bearer_auth(admin).send().await.unwrap().json::<Value>().await.unwrap() }
            };
            let raised = get("/api/v1/alerts").await["alerts"].as_array().unwrap().len();
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let deliveries = get("/api/v1/webhooks/deliveries?state=delivered").await;
                if deliveries.as_array().unwrap().len() >= 2 * raised || Instant::now() > deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
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

    // Every receiver that answers gets each alert once, with the alert's id, signed.
    let ids: Vec<String> = alerts.iter().map(|a| a["id"].as_str().unwrap().to_string()).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while (own.accepted().len() < 3 || flaky.accepted().len() < 3) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut got = own.accepted();
    got.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(got, want, "acme's endpoint");
    let mut got = flaky.accepted();
    got.sort();
    assert_eq!(got, want, "the endpoint that failed 5 times gets each alert once it recovers");
    assert_eq!(flaky.failures.load(Ordering::SeqCst), 0);
    for r in [&own, &flaky, &down] {
        assert_eq!(r.forged.load(Ordering::SeqCst), 0, "every signature verified");
    }
    // The endpoint that never recovers ends in the dead-letter list after the retry window.
    let dead = loop {
        let r = client()
            .get(format!("{}/api/v1/webhooks/deliveries?state=dead", meter.url))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap();
        let dead: Vec<Value> = r.json().await.unwrap();
        if dead.len() == 3 || Instant::now() > deadline {
            break dead;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(dead.len(), 3, "{dead:#?}");
    assert!(
        dead.iter().all(|d| d["attempts"].as_u64().unwrap() >= 3 && d["last_error"].as_str().unwrap().contains("500")),
        "{dead:#?}"
    );
    assert!(down.accepted().is_empty());
    // That endpoint is the admin's: acme's key neither sees its deliveries nor retries them.
    let get = |key: &str, path: &str| client().get(format!("{}{path}", meter.url)).bearer_auth(key.to_string()).send();
    let mine: Vec<Value> = get(&reader, "/api/v1/webhooks/deliveries?state=dead").await.unwrap().json().await.unwrap();
    assert!(mine.is_empty(), "{mine:?}");
    let visible: Vec<Value> = get(&reader, "/api/v1/webhooks").await.unwrap().json().await.unwrap();
    assert_eq!(visible.len(), 1, "only its own endpoint: {visible:?}");
    down.failures.store(0, Ordering::SeqCst);
    let id = dead[0]["id"].as_u64().unwrap();
    let retry = |key: &str| {
        client()
            .post(format!("{}/api/v1/webhooks/deliveries/{id}/retry", meter.url))
            .bearer_auth(key.to_string())
            .send()
    };
    assert_eq!(retry(&reader).await.unwrap().status(), 404);
    assert_eq!(retry(&admin).await.unwrap().status(), 202);
    while down.accepted().is_empty() && Instant::now() < deadline + Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(down.accepted(), [dead[0]["alert_id"].as_str().unwrap().to_string()]);
    assert_eq!(retry(&admin).await.unwrap().status(), 409, "only a dead delivery is retried");
    let r = client()
        .post(format!("{}/api/v1/webhooks", meter.url))
        .bearer_auth(&reader)
        .json(&json!({"url": "ftp://x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
}

/// A receiver that holds its first request open keeps only its own alerts waiting: another
/// tenant's alert, raised while it holds, is delivered before it answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_endpoint_does_not_hold_back_another_endpoints_alerts() {
    let dir = tempfile::tempdir().unwrap();
    let admin = create_key(dir.path(), "admin", None);
    let meter =
        Meter::start(dir.path(), &[("METER__WEBHOOKS__TIMEOUT", "60s"), ("METER__ALERTS__ADVISE_EVERY", "1000days")]);
    let holding = Arc::new(tokio::sync::Notify::new());
    let release = Arc::new(tokio::sync::Notify::new());
    let (h, r) = (holding.clone(), release.clone());
    // The slow one answers when the fast one has received its alert, or after 20 s.
    let slow = axum::Router::new().route(
        "/hook",
        axum::routing::post(move || {
            let (h, r) = (h.clone(), r.clone());
            async move {
                h.notify_one();
                let released = tokio::time::timeout(Duration::from_secs(20), r.notified()).await.is_ok();
                if released { axum::http::StatusCode::OK } else { axum::http::StatusCode::SERVICE_UNAVAILABLE }
            }
        }),
    );
    let r = release.clone();
    let fast = axum::Router::new().route(
        "/hook",
        axum::routing::post(move || {
            let r = r.clone();
            async move {
                r.notify_one();
                axum::http::StatusCode::OK
            }
        }),
    );
    for (tenant, app) in [("slowco", slow), ("fastco", fast)] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let hook = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let r = client()
            .post(format!("{}/api/v1/webhooks", meter.url))
            .bearer_auth(&admin)
            .json(&json!({"url": hook, "tenant": tenant}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        subscribe(&meter.url, &admin, tenant, "starter").await;
    }
    // 400 of Starter's 500 work orders: the 80% alert.
    let orders = |tenant: &str| -> Vec<Value> {
        (0..400)
            .map(|i| json!({"transaction_id": format!("w{i}"), "external_customer_id": tenant, "code": "work_order.created", "properties": {}}))
            .collect()
    };
    send(&meter.url, &admin, &orders("slowco")).await;
    tokio::time::timeout(Duration::from_secs(30), holding.notified()).await.expect("slowco's alert was never sent");
    send(&meter.url, &admin, &orders("fastco")).await;
    let deliveries = || async {
        let r = client().get(format!("{}/api/v1/webhooks/deliveries", meter.url)).bearer_auth(&admin).send().await;
        r.unwrap().json::<Vec<Value>>().await.unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(40);
    let all = loop {
        let all = deliveries().await;
        let done = all.iter().filter(|d| d["state"] == "delivered").count();
        if done == 2 || Instant::now() > deadline {
            break all;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Had the slow endpoint held the dispatcher, it would have answered 503 after 20 s first.
    assert_eq!(all.len(), 2, "{all:#?}");
    for d in &all {
        assert_eq!(d["state"], "delivered", "{all:#?}");
        assert_eq!(d["attempts"], 1, "{all:#?}");
    }
    let metrics = client().get(format!("{}/metrics", meter.url)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains(r#"meter_alerts_raised_total{kind="usage_threshold"} 2"#), "{metrics}");
    assert!(metrics.contains(r#"meter_webhooks_attempts_total{outcome="delivered"} 2"#), "{metrics}");
}

fn invocation(tenant: &str, id: &str) -> Value {
    json!({"transaction_id": id, "external_customer_id": tenant, "code": "agent.invocation",
           "properties": {"model": "m", "input_tokens": 10, "output_tokens": 5}})
}

async fn post_batch(url: &str, key: &str, events: &[Value]) -> (u16, Value) {
    let r = client()
        .post(format!("{url}/api/v1/events/batch"))
        .bearer_auth(key)
        .json(&json!({ "events": events }))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

async fn entitlement(url: &str, key: &str, what: &str) -> (u16, Value) {
    let r = client().get(format!("{url}/api/v1/entitlements{what}")).bearer_auth(key).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// Starter's agent invocations are a hard limit of 2,000: entitlements say what is left, and
/// ingest refuses the events past it (and only those: other tenants, other meters and resends
/// go through).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entitlements_answer_from_the_plan_and_a_hard_limit_refuses_events_past_it() {
    let dir = tempfile::tempdir().unwrap();
    let admin = create_key(dir.path(), "admin", None);
    let service = create_key(dir.path(), "ingest", None);
    let capco = create_key(dir.path(), "read", Some("capco"));
    let meter = Meter::start(dir.path(), &[]);
    let url = meter.url.clone();
    for tenant in ["capco", "other"] {
        subscribe(&url, &admin, tenant, "starter").await;
    }
    let first: Vec<Value> = (0..1990).map(|i| invocation("capco", &format!("c{i}"))).collect();
    for chunk in first.chunks(50) {
        assert_eq!(post_batch(&url, &service, chunk).await.0, 200);
    }
    wait_counted(&url, &admin, "capco", now_us()).await;

    let (s, all) = entitlement(&url, &capco, "").await;
    assert_eq!(s, 200, "{all}");
    assert_eq!(all["plan"], "starter");
    let find =
        |name: &str| all["entitlements"].as_array().unwrap().iter().find(|e| e["name"] == name).cloned().unwrap();
    let inv = find("agent_invocations");
    assert_eq!(
        (&inv["limit"], &inv["used"], &inv["remaining"], &inv["allowed"], &inv["hard_limit"]),
        (&json!("2000"), &json!("1990"), &json!("10"), &json!(true), &json!(true)),
        "{inv}"
    );
    assert_eq!(
        (&find("sso")["allowed"], &find("integrations")["limit"], &find("sla")["value"]),
        (&json!(false), &json!("3"), &json!("99.5%"))
    );
    assert_eq!(find("work_orders")["limit"], "500");
    let (s, one) = entitlement(&url, &service, "/agent_tokens?tenant=capco").await;
    assert_eq!((s, &one["remaining"]), (200, &json!("4970150")), "{one}");
    let (s, e) = entitlement(&url, &capco, "/teleport").await;
    assert_eq!(s, 404, "{e}");
    let (s, _) = entitlement(&url, &capco, "?tenant=other").await;
    assert_eq!(s, 403);
    let (s, e) = entitlement(&url, &service, "").await;
    assert_eq!(s, 422, "a service key names the tenant: {e}");
    let (s, e) = entitlement(&url, &service, "?tenant=bad%20id").await;
    assert_eq!((s, e["extensions"]["validationErrors"][0]["path"].as_str()), (422, Some("tenant")), "{e}");
    let r =
        client().get(format!("{url}/api/v1/subscriptions?tenant=bad%20id")).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(r.status(), 422);
    let r = client().get(format!("{url}/api/v1/alerts")).bearer_auth(&service).send().await.unwrap();
    assert_eq!(r.status(), 403, "an ingest key does not read alerts");

    // 20 more: the 11th would be the 2,001st. The request is refused whole, naming it; nothing is stored.
    let more: Vec<Value> = (1990..2010).map(|i| invocation("capco", &format!("c{i}"))).collect();
    let (s, e) = post_batch(&url, &service, &more).await;
    assert_eq!(s, 403, "{e}");
    let detail = e["error_details"]["events[10]"][0].as_str().unwrap_or_default();
    assert!(detail.contains("past the hard limit of 2000 of plan starter"), "{e}");
    assert_eq!(e["error_details"].as_object().unwrap().len(), 10, "events 10 to 19: {e}");
    let (s, _) = post_batch(&url, &service, &more[..10]).await;
    assert_eq!(s, 200, "the 10 that fit");
    wait_counted(&url, &admin, "capco", now_us()).await;
    let (_, inv) = entitlement(&url, &capco, "/agent_invocations").await;
    assert_eq!((&inv["used"], &inv["remaining"], &inv["allowed"]), (&json!("2000"), &json!("0"), &json!(false)));
    // A resend of a counted event is a duplicate, not a refusal; other meters and tenants go on.
    assert_eq!(post_batch(&url, &service, &more[..1]).await.0, 200);
    assert_eq!(post_batch(&url, &service, &[invocation("other", "o1")]).await.0, 200);
    let wo = json!({"transaction_id": "w1", "external_customer_id": "capco", "code": "work_order.created", "properties": {}});
    assert_eq!(post_batch(&url, &service, &[wo]).await.0, 200);
    let (s, _) = post_batch(&url, &service, &[invocation("capco", "c-over")]).await;
    assert_eq!(s, 403);
    wait_counted(&url, &admin, "capco", now_us()).await;
    assert_eq!(values(&usage(&url, &admin, "capco").await)["agent_invocations"], "2000");

    // At 1,999, twenty requests at once: one is taken, before any is counted; the others refused.
    let fill: Vec<Value> = (2..2000).map(|i| invocation("other", &format!("o{i}"))).collect(); // o1 was sent above
    for chunk in fill.chunks(50) {
        assert_eq!(post_batch(&url, &service, chunk).await.0, 200);
    }
    wait_counted(&url, &admin, "other", now_us()).await;
    let racing: Vec<_> = (0..20)
        .map(|i| {
            let (url, service) = (url.clone(), service.clone());
            tokio::spawn(async move { post_batch(&url, &service, &[invocation("other", &format!("race{i}"))]).await.0 })
        })
        .collect();
    let mut statuses = Vec::new();
    for r in racing {
        statuses.push(r.await.unwrap());
    }
    statuses.sort();
    assert_eq!(
        (statuses.iter().filter(|s| **s == 200).count(), statuses.iter().filter(|s| **s == 403).count()),
        (1, 19),
        "{statuses:?}"
    );
    wait_counted(&url, &admin, "other", now_us()).await;
    assert_eq!(values(&usage(&url, &admin, "other").await)["agent_invocations"], "2000");
}

/// A Starter tenant whose projected work orders make a higher tier cheaper than Starter with its
/// overage gets one `upgrade_suggested` alert naming the tier and the saving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_higher_tier_that_would_cost_less_is_suggested_once() {
    let dir = tempfile::tempdir().unwrap();
    let admin = create_key(dir.path(), "admin", None);
    let meter =
        Meter::start(dir.path(), &[("METER__ALERTS__ADVISE_EVERY", "200ms"), ("METER__ALERTS__ADVISE_AFTER", "0s")]);
    let url = meter.url.clone();
    let events: Vec<Value> = (0..1500)
        .map(|i| json!({"transaction_id": format!("w{i}"), "external_customer_id": "sugco", "code": "work_order.created", "properties": {}}))
        .collect();
    for chunk in events.chunks(50) {
        assert_eq!(post_batch(&url, &admin, chunk).await.0, 200);
    }
    wait_counted(&url, &admin, "sugco", now_us()).await;
    // Subscribed once every event is counted, so that the advisor never sees a part of them.
    subscribe(&url, &admin, "sugco", "starter").await;
    let suggestions = |page: &Value| -> Vec<Value> {
        page["alerts"].as_array().unwrap().iter().filter(|a| a["kind"] == "upgrade_suggested").cloned().collect()
    };
    let alerts = || async {
        let r = client().get(format!("{url}/api/v1/alerts?tenant=sugco")).bearer_auth(&admin).send().await.unwrap();
        r.json::<Value>().await.unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let found = loop {
        let page = alerts().await;
        let s = suggestions(&page);
        if !s.is_empty() || Instant::now() > deadline {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(found.len(), 1, "{found:?}");
    // At least 1,500 work orders projected: Starter costs 30,000 or more a month, Professional
    // 15,000; a higher tier is cheaper still the larger the projection (early in a month, 1,500
    // work orders in the first hour project to over a million: Enterprise Plus).
    let s = &found[0];
    assert!(["professional", "enterprise", "enterprise_plus"].contains(&s["suggested_plan"].as_str().unwrap()), "{s}");
    assert!(s["saving"].as_str().unwrap().parse::<f64>().unwrap() >= 15000.0 - 0.005, "{s}");
    assert_eq!(s["plan"], "starter");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let page = alerts().await;
    let again = suggestions(&page);
    assert_eq!(again.len(), 1, "suggested once per tier and period: {again:?}");
    // Subscribing after the usage raised the thresholds it had already passed, at once.
    let thresholds: Vec<u64> = page["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["kind"] == "usage_threshold")
        .map(|a| a["percent"].as_u64().unwrap())
        .collect();
    assert_eq!(thresholds, [80, 90, 100]);
}

/// On Kafka: one ingest and two aggregate processes sharing the data directory; an aggregator
/// is SIGKILLed mid-stream and restarted (two rebalances). The receiver gets each of the three
/// threshold alerts once, and the alerts topic holds the same three.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_kafka_three_alerts_arrive_once_through_a_rebalance_and_reach_the_alerts_topic() {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;

    let kafka = DevKafka::start(4);
    let dir = tempfile::tempdir().unwrap();
    let admin = create_key(dir.path(), "admin", None);
    let mut env = kafka.env();
    env.push(("METER__WEBHOOKS__FIRST_BACKOFF", "100ms".into()));
    env.push(("METER__ALERTS__ADVISE_EVERY", "1000days".into()));
    let env = env_refs(&env);
    let ingest = Meter::start_role("ingest", dir.path(), &env);
    let mut one = Meter::start_role("aggregate", dir.path(), &env);
    let two = Meter::start_role("aggregate", dir.path(), &env);
    let receiver = Receiver::start(0).await;
    receiver.register(&ingest.url, &admin, None).await;
    subscribe(&ingest.url, &admin, "acme", "starter").await;
    // The aggregators read the tenants' plans every second.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // A process that only reads the log has no producer, and so no producer's polling thread
    // (it spins the last fraction of every 100 ms poll), until it has an alert to publish.
    const POLLER: &str = "producer polling thread";
    assert_eq!((one.threads_named(POLLER), two.threads_named(POLLER)), (0, 0), "no producer before an alert");
    assert_eq!(ingest.threads_named(POLLER), 1, "ingest makes its producer at start, before its first request");

    let mut order: Vec<usize> = (0..600).collect();
    order.sort_by_key(|i| (i * 7919) % 600);
    let events: Vec<Value> = order
        .iter()
        .map(|i| json!({"transaction_id": format!("wo-{i}"), "external_customer_id": "acme", "code": "work_order.created", "properties": {}}))
        .collect();
    for (n, part) in events.chunks(50).enumerate() {
        send(&ingest.url, &admin, part).await;
        if n % 4 == 0 {
            send(&ingest.url, &admin, &part[..10]).await;
        }
        match n {
            3 => one.kill9(),
            5 => one.restart(),
            _ => {}
        }
    }
    let usage = wait_counted(&ingest.url, &admin, "acme", now_us()).await;
    assert_eq!(values(&usage)["work_orders"], "600");

    let deadline = Instant::now() + Duration::from_secs(30);
    while receiver.accepted().len() < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = receiver.accepted();
    assert_eq!(got.len(), 3, "each alert once: {got:?}");
    let mut ids = got.clone();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3, "{got:?}");
    assert_eq!(receiver.forged.load(Ordering::SeqCst), 0);

    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &kafka.bootstrap)
        .set("group.id", format!("alerts-reader-{}", now_us()))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[&kafka.alerts_topic]).unwrap();
    let mut topic_ids = Vec::new();
    while topic_ids.len() < 3 && Instant::now() < deadline + Duration::from_secs(20) {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            let v: Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
            assert_eq!(m.key(), Some("acme".as_bytes()));
            if v["data"]["kind"] == "usage_threshold" {
                topic_ids.push(v["id"].as_str().unwrap().to_string());
            }
        }
    }
    // A second more, to see any copy.
    let more_until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < more_until {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            let v: Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
            if v["data"]["kind"] == "usage_threshold" {
                topic_ids.push(v["id"].as_str().unwrap().to_string());
            }
        }
    }
    topic_ids.sort();
    assert_eq!(topic_ids, ids, "the alerts topic holds the same alerts, once each (one publisher holds the lease)");
    // The publisher made its producer for its first alerts; the event log's is still not made.
    assert_eq!(one.threads_named(POLLER) + two.threads_named(POLLER), 1, "one producer, the alerts topic's");
}
