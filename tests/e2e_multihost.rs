//! Three hosts, each a set of `meter` processes with a data directory of its own, sharing only
//! Kafka (`meter dev kafka`, or `METER_TEST_KAFKA`), Postgres (the shared state) and ClickHouse
//! (the history): host 1 and host 2 run `meter ingest` and `meter aggregate`, host 3 `meter
//! aggregate` and `meter sink`. 200,000 events of 200 tenants go to both ingest hosts, one batch
//! in ten resent through the other; host 3's aggregator is SIGKILLed and restarted, and so is
//! the whole of host 1 (its ingest and its aggregator). Every tenant's every meter is then exact
//! from every host, in the live counters and in ClickHouse; each threshold alert is raised once;
//! a key made through one host works on another at once, and one revoked stops working
//! everywhere a second later.

mod common;

use common::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::Duration;

const TENANTS: usize = 200;
const EVENTS: usize = 200_000;

fn meter(args: &[&str], dir: &Path) -> std::process::Output {
    Command::new(meter_bin())
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .env("METER__BOOTSTRAP_ADMIN_KEY", "false")
        .env("RUST_LOG", "warn")
        .output()
        .expect("meter runs")
}

fn key(args: &[&str], state: &str, dir: &Path) -> String {
    let mut all = vec!["keys"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--state", state]);
    let out = meter(&all, dir);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hosts_sharing_kafka_postgres_and_clickhouse_stay_exact_through_kills() {
    let pg = meter_postgres::testing::fresh_database(&meter_postgres::testing::shared_url());
    let state = pg.with_password_text();
    let ch = meter_store::testing::fresh_database(&meter_store::testing::shared_http());
    let store = format!("clickhouse://{}/{}", ch.http.trim_start_matches("http://"), ch.database);
    let kafka = DevKafka::start(6);
    let hosts: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    // Starter's work orders include 160 here: each tenant's 200 pass 80, 90 and 100 %.
    let book = hosts[0].path().join("prices.toml");
    let sample = meter_rater::pricebook::SAMPLE;
    let starter = "[list.plans.starter.meters.work_orders]\nincluded = \"500\"";
    assert!(sample.contains(starter));
    std::fs::write(&book, sample.replace(starter, "[list.plans.starter.meters.work_orders]\nincluded = \"160\""))
        .unwrap();

    let migrated = meter(&["migrate", "--state", &state, "--store", &store], hosts[0].path());
    assert!(migrated.status.success(), "{}", String::from_utf8_lossy(&migrated.stderr));
    let mut env = kafka.env();
    env.extend([
        ("METER__STATE__URL", state.clone()),
        ("METER__STORE__URL", store.clone()),
        ("METER__SINK__LINGER", "200ms".into()),
        ("METER__BILLING__PRICE_BOOK", book.display().to_string()),
        ("METER__ALERTS__ADVISE_EVERY", "1000days".into()),
    ]);
    let env = env_refs(&env);
    let start = |role: &'static str, host: usize| Meter::start_role(role, hosts[host].path(), &env);
    let mut ingest = [start("ingest", 0), start("ingest", 1)];
    let mut aggregate = [start("aggregate", 0), start("aggregate", 1), start("aggregate", 2)];
    let sink = start("sink", 2);

    // A key made through host 3's command line works on host 1 at once.
    let admin = key(&["create", "--role", "admin"], &state, hosts[2].path());
    for t in 0..TENANTS {
        let r = client()
            .post(format!("{}/api/v1/subscriptions", ingest[t % 2].url))
            .bearer_auth(&admin)
            .json(&serde_json::json!({"tenant": format!("tenant-{t:04}"), "plan": "starter", "cycle": "monthly"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    }

    let now_s = now_us() / 1_000_000;
    let events: Arc<Vec<Value>> =
        Arc::new((0..EVENTS).map(|i| meter_tools::loadgen::event("mh", i, TENANTS, now_s)).collect());
    let urls = Arc::new(RwLock::new(ingest.iter().map(|m| m.url.clone()).collect::<Vec<_>>()));
    let stream = Stream::start(events.clone(), urls.clone(), admin.clone(), 8);
    let wait_for = |part: usize| {
        let done = stream.done.clone();
        let target = stream.batches * part / 3;
        async move {
            while done.load(Ordering::SeqCst) < target {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    // A third in: host 3's aggregator is SIGKILLed and restarted.
    wait_for(1).await;
    aggregate[2].restart();
    // Two thirds in: the whole of host 1 (its ingest and its aggregator).
    wait_for(2).await;
    ingest[0].kill9();
    aggregate[0].kill9();
    tokio::time::sleep(Duration::from_millis(500)).await;
    ingest[0].restart();
    aggregate[0].restart();
    urls.write().unwrap()[0] = ingest[0].url.clone();
    let retried = stream.finish().await;
    eprintln!("{retried} requests retried (host 1 was down)");

    // Exact from every host, in the live counters and in ClickHouse.
    for url in [&ingest[0].url, &ingest[1].url, &aggregate[2].url] {
        assert_eq!(assert_exact_in(url, &admin, &events, Some("live"), Duration::from_secs(120)).await, TENANTS);
    }
    assert_eq!(assert_exact_in(&sink.url, &admin, &events, Some("store"), Duration::from_secs(120)).await, TENANTS);
    assert_eq!(assert_exact_in(&ingest[1].url, &admin, &events, Some("store"), Duration::from_secs(60)).await, TENANTS);

    // Each tenant's work orders passed 80, 90 and 100 % of 160: 600 threshold alerts, each once,
    // in order. From the fourth day of a month (`alerts.advise_after`) the upgrade advisor's
    // suggestions share the feed: each once too.
    for url in [&ingest[0].url, &aggregate[2].url] {
        let mut alerts = Vec::new();
        let mut after = 0;
        loop {
            let (status, page) =
                call(reqwest::Method::GET, format!("{url}/api/v1/alerts?after={after}"), &admin, None).await;
            assert_eq!(status, 200, "{page}");
            let got = page["alerts"].as_array().unwrap().clone();
            if got.is_empty() {
                break;
            }
            after = page["next_after"].as_u64().unwrap();
            alerts.extend(got);
        }
        let seqs: Vec<u64> = alerts.iter().map(|a| a["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, (1..=alerts.len() as u64).collect::<Vec<u64>>(), "every seq once, in order");
        let (thresholds, suggested): (Vec<&Value>, Vec<&Value>) =
            alerts.iter().partition(|a| a["kind"] == "usage_threshold");
        assert_eq!(thresholds.len(), 600);
        let suggestions: BTreeSet<(&str, &str)> = suggested
            .iter()
            .map(|a| {
                assert_eq!(a["kind"], "upgrade_suggested", "{a}");
                (a["tenant"].as_str().unwrap(), a["suggested_plan"].as_str().unwrap())
            })
            .collect();
        assert_eq!(suggestions.len(), suggested.len(), "each suggestion raised once");
        let distinct: BTreeSet<(String, String, u64)> = thresholds
            .iter()
            .map(|a| {
                assert_eq!(a["meter"], "work_orders", "{a}");
                (
                    a["tenant"].as_str().unwrap().into(),
                    a["period"].as_str().unwrap().into(),
                    a["percent"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(distinct.len(), 600);
    }

    // A key revoked through host 2's command line stops working on every host.
    let reader = key(&["create", "--role", "read", "--tenant", "tenant-0001"], &state, hosts[1].path());
    let read = |u: &str| format!("{u}/api/v1/usage?tenant=tenant-0001");
    for url in [&ingest[0].url, &aggregate[2].url] {
        assert_eq!(call(reqwest::Method::GET, read(url), &reader, None).await.0, 200);
    }
    let listed = key(&["list"], &state, hosts[1].path());
    let id = listed.lines().find(|l| l.contains("tenant-0001")).unwrap().split('\t').next().unwrap().to_string();
    key(&["revoke", &id], &state, hosts[1].path());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for url in [&ingest[0].url, &ingest[1].url, &aggregate[2].url] {
        assert_eq!(call(reqwest::Method::GET, read(url), &reader, None).await.0, 401, "{url}");
    }
}
