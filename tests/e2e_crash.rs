//! End to end: a client streams events, retrying every failure, while `meter serve` is killed
//! with SIGKILL and restarted again and again. Usage ends exactly at the distinct events. The same
//! body runs on the embedded SQLite log and on a Kafka log (`meter dev kafka`), where retries leave
//! real duplicates in the log for the aggregator to drop.

mod common;

use common::*;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

const BATCH: usize = 100;
const TENANTS: usize = 40;

/// Expected period totals per tenant, computed from the events themselves.
fn expected(events: &[Value]) -> BTreeMap<String, BTreeMap<&'static str, String>> {
    let mut counts: BTreeMap<String, BTreeMap<&'static str, u64>> = BTreeMap::new();
    let mut users: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for e in events {
        let tenant = e["external_customer_id"].as_str().unwrap().to_string();
        let c = counts.entry(tenant.clone()).or_default();
        let p = &e["properties"];
        match e["code"].as_str().unwrap() {
            "work_order.created" => *c.entry("work_orders").or_default() += 1,
            "work_order.completed" => *c.entry("work_orders_completed").or_default() += 1,
            "agent.invocation" => {
                *c.entry("agent_invocations").or_default() += 1;
                *c.entry("agent_tokens").or_default() +=
                    p["input_tokens"].as_u64().unwrap() + p["output_tokens"].as_u64().unwrap();
            }
            "api.call" => *c.entry("api_calls").or_default() += 1,
            "user.login" => {
                users.entry(tenant).or_default().insert(p["user_id"].as_str().unwrap().to_string());
            }
            other => panic!("unexpected code {other}"),
        }
    }
    counts
        .into_iter()
        .map(|(tenant, c)| {
            let mut m: BTreeMap<&'static str, String> =
                ["work_orders", "work_orders_completed", "agent_invocations", "agent_tokens", "api_calls"]
                    .into_iter()
                    .map(|k| (k, c.get(k).copied().unwrap_or(0).to_string()))
                    .collect();
            m.insert("active_users", users.get(&tenant).map_or(0, BTreeSet::len).to_string());
            (tenant, m)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_stream_neither_loses_nor_double_counts() {
    stream_through_kills(&[], 100_000, 6).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_on_a_kafka_log_neither_loses_nor_double_counts() {
    let kafka = DevKafka::start(4);
    stream_through_kills(&[("METER__LOG__URL", &kafka.log_url())], 30_000, 4).await;
}

async fn stream_through_kills(env: &[(&str, &str)], events_total: usize, kills_total: usize) {
    let dir = tempfile::tempdir().unwrap();
    let key = create_key(dir.path(), "admin", None);
    let meter = Arc::new(std::sync::Mutex::new(Meter::start(dir.path(), env)));
    let url = Arc::new(RwLock::new(meter.lock().unwrap().url.clone()));

    let now_s = now_us() / 1_000_000;
    let events: Arc<Vec<Value>> =
        Arc::new((0..events_total).map(|i| meter::loadgen::event("crash", i, TENANTS, now_s)).collect());
    let batches = events_total / BATCH;
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let retries = Arc::new(AtomicUsize::new(0));

    let mut clients = Vec::new();
    for worker in 0..4 {
        let (events, next, done, retries, url, key) =
            (events.clone(), next.clone(), done.clone(), retries.clone(), url.clone(), key.clone());
        clients.push(tokio::spawn(async move {
            let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
            loop {
                let b = next.fetch_add(1, Ordering::SeqCst);
                if b >= batches {
                    break;
                }
                // One batch in ten is sent a second time, as a client that never saw the first answer would.
                let sends = if (b + worker) % 10 == 0 { 2 } else { 1 };
                for _ in 0..sends {
                    let body = json!({ "events": &events[b * BATCH..(b + 1) * BATCH] });
                    loop {
                        let u = url.read().unwrap().clone();
                        let sent =
                            http.post(format!("{u}/api/v1/events/batch")).bearer_auth(&key).json(&body).send().await;
                        if matches!(&sent, Ok(r) if r.status() == 200) {
                            break;
                        }
                        retries.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                done.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }

    let mut kills = 0;
    while kills < kills_total {
        let threshold = batches * (kills + 1) / (kills_total + 1);
        while done.load(Ordering::SeqCst) < threshold {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let m = meter.clone();
        let new_url = tokio::task::spawn_blocking(move || {
            let mut m = m.lock().unwrap();
            m.restart();
            m.url.clone()
        })
        .await
        .unwrap();
        *url.write().unwrap() = new_url;
        kills += 1;
    }
    for c in clients {
        c.await.unwrap();
    }
    assert_eq!(done.load(Ordering::SeqCst), batches);
    eprintln!("{kills} SIGKILLs, {} retried requests", retries.load(Ordering::Relaxed));

    let u = url.read().unwrap().clone();
    let acked = now_us();
    let want = expected(&events);
    assert_eq!(want.len(), TENANTS);
    for (tenant, meters) in &want {
        let usage = wait_counted(&u, &key, tenant, acked).await;
        let got: BTreeMap<&str, String> =
            values(&usage).iter().map(|(k, v)| (want_key(k), v.as_str().unwrap().to_string())).collect();
        let expected: BTreeMap<&str, String> = meters.iter().map(|(k, v)| (*k, v.clone())).collect();
        assert_eq!(got, expected, "tenant {tenant}");
    }
}

fn want_key(k: &str) -> &'static str {
    ["work_orders", "work_orders_completed", "agent_invocations", "agent_tokens", "api_calls", "active_users"]
        .into_iter()
        .find(|x| *x == k)
        .expect("a default meter")
}
