//! The customer dashboard's speed, on SQLite and on ClickHouse: a tenant with 10 meters (the six
//! defaults and four of the config here) and 90 days of data among `TENANTS` tenants, read by
//! `meter serve` as the portal reads it (with a portal session's cookie), each call `SAMPLES`
//! times one after another: p50, p99 and the slowest; and last month's usage and breakdown from
//! the history, which the portal does not ask for but which read ClickHouse. Then the portal page itself in Debian's
//! Chromium, navigated `NAVIGATIONS` times: when its meter cards were in the DOM, from the
//! Performance API's mark `cards` (milliseconds after navigation started).
//!
//! `cargo bench --bench dashboard` (TENANTS, PER_DAY, SAMPLES, NAVIGATIONS and BACKENDS override
//! the defaults: 500 tenants, 3 events per tenant, event code and day, 200 samples, 30
//! navigations, `sqlite,clickhouse`). ClickHouse is the server `METER_TEST_CLICKHOUSE` names, or
//! a private `clickhouse-server`. The data is written straight into the stores (the history of
//! 90 days is older than ingest accepts), as the aggregator and the sink would have written it.
#![allow(clippy::print_stdout, missing_docs)]

#[path = "../tests/common/browser.rs"]
mod browser;
#[path = "../tests/common/mod.rs"]
mod common;

use meter_schemas::{Catalog, Event, MeterDef};
use meter_store::testing::{fresh_database, shared_http};
use meter_store::{ClickHouseStore, Metered, Progress, SqliteStore, UsageStore};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const DAY_US: i64 = 86_400_000_000;
const DAYS: i64 = 90;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The four meters added to the six defaults, as the config file says them.
const CONFIG: &str = r#"
[[meters]]
name = "storage_gb_max"
event = "storage.sample"
aggregation = "max"
property = "gb"

[[meters]]
name = "seats_latest"
event = "seats.sample"
aggregation = "latest"
property = "seats"

[[meters]]
name = "exports"
event = "export.created"
aggregation = "count"
group_by = ["format"]

[[meters]]
name = "compute_seconds"
event = "compute.run"
aggregation = "sum"
property = "seconds"
group_by = ["region"]
"#;

fn custom_meters() -> Vec<MeterDef> {
    let v: Vec<Value> = vec![
        json!({"name": "storage_gb_max", "event": "storage.sample", "aggregation": "max", "property": "gb"}),
        json!({"name": "seats_latest", "event": "seats.sample", "aggregation": "latest", "property": "seats"}),
        json!({"name": "exports", "event": "export.created", "aggregation": "count", "group_by": ["format"]}),
        json!({"name": "compute_seconds", "event": "compute.run", "aggregation": "sum", "property": "seconds",
               "group_by": ["region"]}),
    ];
    v.into_iter().map(|m| serde_json::from_value(m).unwrap()).collect()
}

/// Event `i` of `code`: its properties.
fn properties(code: &str, i: usize) -> Value {
    match code {
        "work_order.created" | "work_order.completed" => json!({"work_order_id": format!("wo-{i}")}),
        "agent.invocation" => json!({"model": (["m-a", "m-b", "m-c"][i % 3]), "input_tokens": 100 + i % 50,
                                     "output_tokens": 20}),
        "api.call" => json!({"route": format!("/v1/r{}", i % 8), "method": "GET", "status": 200}),
        "user.login" => json!({"user_id": format!("u{}", i % 40)}),
        "storage.sample" => json!({"gb": i % 100}),
        "seats.sample" => json!({"seats": 10 + i % 5}),
        "export.created" => json!({"format": (["csv", "json"][i % 2])}),
        _ => json!({"seconds": i % 60, "region": (["eu", "us", "ap"][i % 3])}),
    }
}

const CODES: [&str; 9] = [
    "work_order.created",
    "work_order.completed",
    "agent.invocation",
    "api.call",
    "user.login",
    "storage.sample",
    "seats.sample",
    "export.created",
    "compute.run",
];

/// Every tenant's 90 days (to now), `per_day` events of each code a day, metered as the
/// aggregator meters them; in batches of 10,000.
fn history(catalog: &Catalog, tenants: usize, per_day: usize, now_us: i64) -> Vec<Vec<Metered>> {
    let first_day = (now_us.div_euclid(DAY_US) - (DAYS - 1)) * DAY_US;
    let (mut batches, mut batch, mut n) = (Vec::new(), Vec::new(), 0usize);
    for day in 0..DAYS {
        for t in 0..tenants {
            let tenant = if t == 0 { "acme".to_string() } else { format!("tenant-{t:05}") };
            for code in CODES {
                for k in 0..per_day {
                    n += 1;
                    // Spread over the day, never past now.
                    let time_us = (first_day + day * DAY_US + (k as i64 * 7_919 + t as i64) % 86_000 * 1_000_000)
                        .min(now_us - 1_000_000);
                    let event = Event {
                        tenant: tenant.clone(),
                        id: format!("e-{n}"),
                        code: code.to_string(),
                        time_us,
                        implicit_time: false,
                        subscription: None,
                        source: None,
                        properties: properties(code, n).as_object().unwrap().clone(),
                    };
                    let (contributions, _) = catalog.contributions(&event);
                    let groups = catalog.groups(&contributions, &event);
                    batch.push(Metered {
                        tenant: tenant.clone(),
                        id: event.id,
                        offset: n as u64,
                        time_us,
                        contributions,
                        groups,
                    });
                    if batch.len() == 10_000 {
                        batches.push(std::mem::take(&mut batch));
                    }
                }
            }
        }
    }
    batches.push(batch);
    batches
}

fn fill(store: &dyn UsageStore, catalog: &Catalog, batches: &[Vec<Metered>], consumer: &str) {
    let none = Progress::default();
    for b in batches {
        store.apply(consumer, catalog.meters(), b, &none).unwrap();
    }
}

/// p50, p99 and the largest of `samples`, in milliseconds.
fn quantiles(mut samples: Vec<f64>) -> (f64, f64, f64) {
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let at = |q: f64| samples[((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1];
    (at(0.50), at(0.99), samples[samples.len() - 1])
}

async fn run(backend: &str, tenants: usize, per_day: usize, samples: usize, navigations: usize) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("meter.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let catalog = Catalog::new(custom_meters()).unwrap();
    assert_eq!(catalog.meters().len(), 10);
    let now = meter_schemas::period::now_us();
    let started = Instant::now();
    let batches = history(&catalog, tenants, per_day, now);
    let events: usize = batches.iter().map(Vec::len).sum();
    // The live counters, as the aggregator leaves them.
    {
        let live = SqliteStore::open(&dir.path().join("usage.db"), meter_sqlite::Durability::Normal).unwrap();
        fill(&live, &catalog, &batches, "meter-aggregator");
    }
    drop(batches);
    let mut env: Vec<(&str, String)> = Vec::new();
    if backend == "clickhouse" {
        let url = fresh_database(&shared_http());
        let (store, u) = tokio::task::spawn_blocking(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(ClickHouseStore::migrate(&url)).unwrap();
            (rt.block_on(ClickHouseStore::open(&url)).unwrap(), url)
        })
        .await
        .unwrap();
        let catalog2 = catalog.clone();
        tokio::task::spawn_blocking(move || {
            let batches = history(&catalog2, tenants, per_day, now);
            fill(&store, &catalog2, &batches, "meter-sink");
        })
        .await
        .unwrap();
        env.push((
            "METER__STORE__URL",
            format!("clickhouse://{}/{}", u.http.trim_start_matches("http://"), u.database),
        ));
    }
    println!(
        "{backend}: {events} events ({tenants} tenants × 9 codes × {per_day} a day × {DAYS} days) written in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let admin = common::create_key(dir.path(), "admin", None);
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let meter = common::Meter::start_configured(dir.path(), &config, &env_refs);
    let url = meter.url.clone();
    let since = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(now - 91 * DAY_US) * 1_000)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let sub = json!({"tenant": "acme", "plan": "starter", "cycle": "monthly", "at": since});
    let (s, e) = common::call(reqwest::Method::POST, format!("{url}/api/v1/subscriptions"), &admin, Some(sub)).await;
    assert_eq!(s, 201, "{e}");
    // A portal link for the browser, and another one's cookie, as the page holds it.
    let portal_link = || async {
        let (s, opened) = common::call(
            reqwest::Method::POST,
            format!("{url}/api/v1/portal/sessions"),
            &admin,
            Some(json!({"tenant": "acme", "ttl": "1h"})),
        )
        .await;
        assert_eq!(s, 201, "{opened}");
        opened["url"].as_str().unwrap().to_string()
    };
    let link = portal_link().await;
    let period = meter_schemas::Period::containing(now).to_string();
    let before = meter_schemas::Period::containing(now).previous().to_string();
    let calls = [
        "/api/v1/usage".to_string(),
        "/api/v1/entitlements".to_string(),
        "/api/v1/invoices/upcoming".to_string(),
        "/api/v1/billing-portal".to_string(),
        "/api/v1/subscriptions".to_string(),
        "/api/v1/usage/daily?days=30".to_string(),
        "/api/v1/usage/daily?days=90".to_string(),
        format!("/api/v1/usage/breakdown?period={period}"),
        "/api/v1/alerts".to_string(),
        "/api/v1/invoices".to_string(),
        // Not the portal's: last month from the history (ClickHouse when configured).
        format!("/api/v1/usage?period={before}&source=store"),
        format!("/api/v1/usage/breakdown?period={before}&source=store"),
    ];
    let token = portal_link().await.split("#token=").nth(1).unwrap().to_string();
    let exchanged = common::client()
        .post(format!("{url}/api/v1/sessions/exchange"))
        .json(&json!({"token": token}))
        .send()
        .await
        .unwrap();
    assert!(exchanged.status().is_success(), "{}", exchanged.status());
    let cookie = exchanged
        .headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.split(';').next().filter(|c| c.starts_with("meter_session=")))
        .unwrap()
        .to_string();
    let http = reqwest::Client::new();
    // The usage of acme over the 10 meters is there before timing starts.
    let usage: Value =
        http.get(format!("{url}/api/v1/usage")).header("cookie", &cookie).send().await.unwrap().json().await.unwrap();
    assert_eq!(usage["meters"].as_array().unwrap().len(), 10, "{usage}");
    assert!(usage["meters"].as_array().unwrap().iter().all(|m| !m["value"].is_null()), "{usage}");
    println!("{backend}: each of the portal's calls {samples} times, one after another (ms)");
    println!("| call | p50 | p99 | slowest |");
    println!("|---|---:|---:|---:|");
    let mut worst: f64 = 0.0;
    for path in &calls {
        for _ in 0..5 {
            http.get(format!("{url}{path}")).header("cookie", &cookie).send().await.unwrap();
        }
        let mut times = Vec::with_capacity(samples);
        for _ in 0..samples {
            let t = Instant::now();
            let r = http.get(format!("{url}{path}")).header("cookie", &cookie).send().await.unwrap();
            let status = r.status();
            let _ = r.bytes().await.unwrap();
            times.push(t.elapsed().as_secs_f64() * 1000.0);
            assert!(status.is_success(), "{path}: {status}");
        }
        let (p50, p99, max) = quantiles(times);
        worst = worst.max(p99);
        println!("| `{path}` | {p50:.2} | {p99:.2} | {max:.2} |");
    }
    println!("{backend}: the largest p99 is {worst:.2} ms (aim: at most 50)");

    // The page: when its meter cards are in the DOM, after navigation started.
    let driver = browser::driver();
    let c = browser::browser(&driver).await;
    c.goto(&link).await.unwrap();
    let state = browser::ready(&c).await;
    assert!(state[1].is_null(), "the page says: {state}");
    let mut marks = Vec::with_capacity(navigations);
    for _ in 0..navigations {
        c.goto(&format!("{url}/portal")).await.unwrap();
        let state = browser::ready(&c).await;
        assert!(state[1].is_null(), "the page says: {state}");
        let mark = c
            .execute("const m = performance.getEntriesByName('cards'); return m.length ? m[0].startTime : null", vec![])
            .await
            .unwrap();
        marks.push(mark.as_f64().expect("the page marks its cards"));
    }
    let (p50, p99, max) = quantiles(marks);
    println!(
        "{backend}: meter cards in the DOM after navigation, {navigations} navigations (ms): p50 {p50:.1}, p99 {p99:.1}, slowest {max:.1} (aim: at most 300)"
    );
    c.close().await.unwrap();
    drop(meter);
    tokio::time::sleep(Duration::from_millis(100)).await;
}

fn main() {
    // `cargo bench` passes `--bench`; this benchmark has no filters.
    let tenants = env("TENANTS", 500);
    let per_day = env("PER_DAY", 3);
    let samples = env("SAMPLES", 200);
    let navigations = env("NAVIGATIONS", 30);
    let backends = std::env::var("BACKENDS").unwrap_or_else(|_| "sqlite,clickhouse".into());
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    for backend in backends.split(',') {
        rt.block_on(run(backend.trim(), tenants, per_day, samples, navigations));
    }
}
