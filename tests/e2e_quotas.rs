//! End to end: a tenant over its rate quota is answered 429 with `Retry-After`, in the style of
//! the API it used, and nothing of the refused requests is stored or counted; other tenants, and
//! a plan with a larger quota, go on as before.

mod common;

use common::*;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const CONFIG: &str = "
[ingest]
max_events_per_request = 50
[ingest.quotas.default]
events_per_second = 100
requests_per_second = 20
[ingest.quotas.plans.professional]
events_per_second = 1000
";

fn events(tenant: &str, prefix: &str, n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            json!({"transaction_id": format!("{prefix}-{i}"), "external_customer_id": tenant,
                "code": "agent.invocation", "properties": {"model": "m", "input_tokens": 1, "output_tokens": 1}})
        })
        .collect()
}

/// Posts a Lago batch with `key`: the status, `Retry-After` and the body.
async fn post(url: &str, key: &str, events: &[Value]) -> (u16, Option<String>, Value) {
    let r = client()
        .post(format!("{url}/api/v1/events/batch"))
        .bearer_auth(key)
        .json(&json!({ "events": events }))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let retry = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
    (status, retry, r.json().await.unwrap_or(Value::Null))
}

/// Sends `per_request` events of `tenant` a request, eight requests at a time (faster than any
/// quota here, however slow the machine), until one is refused: the events admitted, the time it
/// took and the refusal.
async fn flood(
    url: &str,
    key: &str,
    tenant: &str,
    per_request: usize,
) -> (usize, Duration, (u16, Option<String>, Value)) {
    let started = Instant::now();
    let mut admitted = 0;
    for round in 0..250 {
        let mut sent = tokio::task::JoinSet::new();
        for k in 0..8 {
            let (url, key) = (url.to_string(), key.to_string());
            let batch = events(tenant, &format!("{tenant}-{per_request}-{round}-{k}"), per_request);
            sent.spawn(async move { post(&url, &key, &batch).await });
        }
        let mut refused = None;
        while let Some(answer) = sent.join_next().await {
            let answer = answer.unwrap();
            match answer.0 {
                200 => admitted += per_request,
                _ => refused = refused.or(Some(answer)),
            }
        }
        if let Some(refused) = refused {
            return (admitted, started.elapsed(), refused);
        }
    }
    panic!("{tenant} was never refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_over_its_quota_is_answered_429_and_the_others_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("meter.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let admin = create_key(dir.path(), "admin", None);
    let flooder = create_key(dir.path(), "ingest", Some("flood"));
    let meter = Meter::start_configured(dir.path(), &config, &[]);
    let url = meter.url.as_str();

    // Events: a burst of a second's quota, then the rate; the refusal says when to come back.
    let (flooded, took, (status, retry, body)) = flood(url, &flooder, "flood", 50).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(retry.as_deref(), Some("1"));
    assert_eq!((body["status"].as_u64(), body["code"].as_str()), (Some(429), Some("too_many_requests")), "{body}");
    assert_eq!(body["error"], "Too Many Requests");
    let why = body["error_details"]["tenant"][0].as_str().unwrap_or_default();
    assert!(why.contains("tenant \"flood\" sent more than its quota of 100 events a second"), "{body}");
    let most = 100 + (took.as_secs_f64() * 100.0).ceil() as usize;
    assert!((100..=most).contains(&flooded), "{flooded} events admitted in {took:?} (at most {most})");

    // The same tenant in OpenMeter's dialect: a problem document.
    let ce: Vec<Value> = (0..50)
        .map(|i| {
            json!({"specversion": "1.0", "id": format!("ce-{i}"), "source": "s", "type": "agent.invocation",
                "subject": "flood", "data": {"model": "m", "input_tokens": 1, "output_tokens": 1}})
        })
        .collect();
    let r = client()
        .post(format!("{url}/api/v1/events"))
        .bearer_auth(&flooder)
        .header("content-type", "application/cloudevents-batch+json")
        .body(json!(ce).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 429);
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let problem: Value = r.json().await.unwrap();
    assert_eq!((problem["status"].as_u64(), problem["title"].as_str()), (Some(429), Some("Too Many Requests")));
    assert!(problem["detail"].as_str().unwrap().contains("quota of 100 events a second"), "{problem}");

    // Another tenant is not held back by the flood.
    let (status, _, body) = post(url, &admin, &events("calm", "calm", 50)).await;
    assert_eq!(status, 200, "{body}");

    // A request refused for another reason (a reused id, 409) costs no quota: of "conflict"'s
    // burst of 100, the 50 it stored are spent, not the 50 refused.
    let (status, _, body) = post(url, &admin, &events("conflict", "c", 50)).await;
    assert_eq!(status, 200, "{body}");
    let mut changed = events("conflict", "c", 50);
    changed[0]["properties"]["input_tokens"] = json!(2);
    let (status, _, body) = post(url, &admin, &changed).await;
    assert_eq!(status, 409, "{body}");
    let (status, _, body) = post(url, &admin, &events("conflict", "d", 50)).await;
    assert_eq!(status, 200, "the refused request took quota: {body}");

    // Requests: a tenant sending one event at a time runs out of requests, not events.
    let (chatted, took, (status, _, body)) = flood(url, &admin, "chatty", 1).await;
    assert_eq!(status, 429, "{body}");
    assert!(body["error_details"]["tenant"][0].as_str().unwrap().contains("quota of 20 requests a second"), "{body}");
    let most = 20 + (took.as_secs_f64() * 20.0).ceil() as usize;
    assert!((20..=most).contains(&chatted), "{chatted} requests admitted in {took:?} (at most {most})");

    // A plan's own quota replaces the default (its requests are not limited).
    let r = client()
        .post(format!("{url}/api/v1/subscriptions"))
        .bearer_auth(&admin)
        .json(&json!({"tenant": "pro", "plan": "professional", "cycle": "monthly"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let (pro, took, (status, _, body)) = flood(url, &admin, "pro", 50).await;
    assert_eq!(status, 429, "{body}");
    assert!(body["error_details"]["tenant"][0].as_str().unwrap().contains("plan \"professional\"'s quota"), "{body}");
    let most = 1000 + (took.as_secs_f64() * 1000.0).ceil() as usize;
    assert!((1000..=most).contains(&pro), "{pro} events admitted in {took:?} (at most {most})");

    // After the wait it names, the flooder is admitted again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, _, body) = post(url, &flooder, &events("flood", "later", 50)).await;
    assert_eq!(status, 200, "{body}");

    // Exactly what was admitted is counted: nothing of a refused request.
    let metrics = client().get(format!("{url}/metrics")).send().await.unwrap().text().await.unwrap();
    let throttled = |what: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with("meter_ingest_throttled_total") && l.contains(&format!("exceeded=\"{what}\"")))
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    assert!(throttled("events") >= 3 && throttled("requests") >= 1, "{metrics}");
    let counted = |usage: Value| values(&usage)["agent_invocations"].as_str().unwrap_or("0").parse::<usize>().unwrap();
    for (tenant, admitted) in
        [("flood", flooded + 50), ("chatty", chatted), ("pro", pro), ("calm", 50), ("conflict", 100)]
    {
        assert_eq!(counted(wait_counted(url, &admin, tenant, now_us()).await), admitted, "{tenant}");
    }
}

/// A tenant key's requests that carry no event it could be charged for (a malformed body, an empty
/// batch) still spend a request of its quota: a flood of them is answered 429 once the quota is
/// spent rather than parsed without end (they took nothing before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_keys_malformed_requests_spend_its_requests_quota() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("meter.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let key = create_key(dir.path(), "ingest", Some("junk"));
    let meter = Meter::start_configured(dir.path(), &config, &[]);
    let started = Instant::now();
    let mut answers = Vec::new();
    for i in 0..400 {
        let body = if i % 2 == 0 { "{not json".to_string() } else { json!({ "events": [] }).to_string() };
        let r = client()
            .post(format!("{}/api/v1/events/batch", meter.url))
            .bearer_auth(&key)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        answers.push(r.status().as_u16());
        if r.status() == 429 {
            break;
        }
    }
    assert_eq!(answers.last(), Some(&429), "never refused: {answers:?}");
    let spent = answers.len() - 1;
    let most = 20 + (started.elapsed().as_secs_f64() * 20.0).ceil() as usize;
    assert!((20..=most).contains(&spent), "{spent} requests answered before the 429 (at most {most}): {answers:?}");
    assert!(answers[..spent].iter().all(|s| [200, 400, 422].contains(s)), "{answers:?}");
}
