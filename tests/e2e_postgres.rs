//! End to end with the shared state on Postgres: start-up refusals (an unmigrated database, a
//! wrong password, an unreachable server: each a clear error naming the URL without its
//! password), `meter migrate --state`, and two hosts (each a `meter serve` with a data
//! directory of its own) sharing only Kafka and Postgres: a key made on one works on the other,
//! events sent to both (one batch in ten resent through the other) count exactly once from
//! either, and a key revoked on one stops working on the other.

mod common;

use common::*;
use meter_postgres::testing::{fresh_database, shared_url};
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Arc, RwLock};
use std::time::Duration;

fn meter(args: &[&str], dir: &Path) -> Output {
    Command::new(meter_bin())
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .env("METER__BOOTSTRAP_ADMIN_KEY", "false")
        .env("RUST_LOG", "warn")
        .output()
        .expect("meter runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn start_up_refuses_what_it_cannot_use_and_never_prints_the_password() {
    let url = fresh_database(&shared_url());
    let full = url.with_password_text();
    let password = full.split(':').nth(2).unwrap().split('@').next().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();

    let refused = meter(&["serve", "--listen", "127.0.0.1:0", "--state", &full], dir.path());
    let e = stderr(&refused);
    assert!(!refused.status.success(), "{e}");
    assert!(e.contains(&format!("run `meter migrate --state {url}` first")), "{e}");
    assert!(!e.contains(&password), "{e}");

    let wrong = full.replace(&password, "not-the-password");
    let refused = meter(&["serve", "--listen", "127.0.0.1:0", "--state", &wrong], dir.path());
    let e = stderr(&refused);
    assert!(!refused.status.success() && e.contains(&format!("cannot connect to Postgres at {url}")), "{e}");
    assert!(e.contains("password authentication failed") && !e.contains("not-the-password"), "{e}");

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let nowhere = format!("postgres://meter:hidden-pw@127.0.0.1:{port}/meter");
    let refused = meter(&["migrate", "--state", &nowhere], dir.path());
    let e = stderr(&refused);
    assert!(!refused.status.success(), "{e}");
    assert!(e.contains(&format!("cannot connect to Postgres at postgres://meter@127.0.0.1:{port}/meter")), "{e}");
    assert!(!e.contains("hidden-pw"), "{e}");

    for _ in 0..2 {
        let migrated = meter(&["migrate", "--state", &full], dir.path());
        let e = stderr(&migrated);
        assert!(migrated.status.success(), "{e}");
        let versions = format!(
            "schema versions keys 1, store {}, ledger {}, webhooks 1",
            meter_store::PG_MIGRATIONS.len(),
            meter_billing::ledger::PG_MIGRATIONS.len()
        );
        assert!(e.contains(&versions) && !e.contains(&password), "{e}");
    }
    // A schema newer than this build is refused at start-up, naming the component.
    let pg = meter_postgres::Pg::connect(&url, 1).unwrap();
    pg.execute("INSERT INTO meter_schema_versions (component, version) VALUES ('ledger', 99)", &[]).unwrap();
    let refused = meter(&["serve", "--listen", "127.0.0.1:0", "--state", &full], dir.path());
    let e = stderr(&refused);
    assert!(!refused.status.success() && e.contains("ledger schema version 99, newer than this meter knows"), "{e}");
}

/// `meter keys ARGS --state URL`'s output.
fn keys(args: &[&str], state: &str, dir: &Path) -> String {
    let mut all = vec!["keys"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--state", state]);
    let out = meter(&all, dir);
    assert!(out.status.success(), "{}", stderr(&out));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_share_only_kafka_and_postgres() {
    let url = fresh_database(&shared_url());
    let state = url.with_password_text();
    let kafka = DevKafka::start(4);
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    assert!(meter(&["migrate", "--state", &state], a_dir.path()).status.success());
    let mut env = kafka.env();
    env.push(("METER__STATE__URL", state.clone()));
    let a = Meter::start(a_dir.path(), &env_refs(&env));
    let b = Meter::start(b_dir.path(), &env_refs(&env));

    // A key made through host A's command line works on host B at once.
    let key = keys(&["create", "--role", "admin"], &state, a_dir.path());
    let (status, _) = call(reqwest::Method::GET, format!("{}/api/v1/usage?tenant=pg-0", b.url), &key, None).await;
    assert_eq!(status, 200);

    // Events through both hosts, one batch in ten resent through the other.
    let now_s = now_us() / 1_000_000;
    let events: Arc<Vec<Value>> =
        Arc::new((0..20_000).map(|i| meter_tools::loadgen::event("pg", i, 40, now_s)).collect());
    let urls = Arc::new(RwLock::new(vec![a.url.clone(), b.url.clone()]));
    let retried = Stream::start(events.clone(), urls, key.clone(), 4).finish().await;
    assert_eq!(retried, 0, "no request failed");
    assert_eq!(assert_exact(&a.url, &key, &events).await, 40);
    assert_eq!(assert_exact(&b.url, &key, &events).await, 40);

    // The hard-limit race across hosts: a Starter tenant (agent invocations stop at 2,000) at
    // 1,999 counted, twenty one-event requests at once, ten through each host: one accepted.
    let r = client()
        .post(format!("{}/api/v1/subscriptions", a.url))
        .bearer_auth(&key)
        .json(&serde_json::json!({"tenant": "capped", "plan": "starter", "cycle": "monthly"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let invocation = |i: usize| {
        serde_json::json!({"transaction_id": format!("cap-{i}"), "external_customer_id": "capped",
            "code": "agent.invocation", "timestamp": now_s,
            "properties": {"model": "m", "input_tokens": 1, "output_tokens": 1}})
    };
    // Both hosts' plan caches see the subscription within a second.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for chunk in (0..1999).map(invocation).collect::<Vec<_>>().chunks(100) {
        let (status, body) = call(
            reqwest::Method::POST,
            format!("{}/api/v1/events/batch", a.url),
            &key,
            Some(serde_json::json!({ "events": chunk })),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    wait_counted(&b.url, &key, "capped", now_us()).await;
    let racers: Vec<_> = (0..20)
        .map(|n| {
            let (url, key, body) =
                ([&a.url, &b.url][n % 2].clone(), key.clone(), serde_json::json!({ "events": [invocation(5000 + n)] }));
            tokio::spawn(async move {
                call(reqwest::Method::POST, format!("{url}/api/v1/events/batch"), &key, Some(body)).await.0
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for r in racers {
        statuses.push(r.await.unwrap());
    }
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 1, "{statuses:?}");
    assert!(statuses.iter().all(|s| *s == 200 || *s == 403), "{statuses:?}");

    // A key revoked through host A's command line stops working on host B once B's cache of
    // the key table is a second old.
    let reader = keys(&["create", "--role", "read", "--tenant", "pg-1"], &state, a_dir.path());
    let read = |u: &str| format!("{u}/api/v1/usage?tenant=pg-1");
    assert_eq!(call(reqwest::Method::GET, read(&b.url), &reader, None).await.0, 200);
    let listed = keys(&["list"], &state, b_dir.path());
    let id = listed.lines().find(|l| l.contains("pg-1")).unwrap().split('\t').next().unwrap().to_string();
    keys(&["revoke", &id], &state, a_dir.path());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(call(reqwest::Method::GET, read(&b.url), &reader, None).await.0, 401);
    assert_eq!(call(reqwest::Method::GET, read(&a.url), &reader, None).await.0, 401);
}

/// Postgres killed for a few seconds under load, then started again on the same data: ingest
/// keeps answering for meters without a hard limit (the log holds the events), answers 503
/// with `Retry-After` for a hard-limited meter (deciding it needs Postgres), `/readyz` names
/// Postgres; counting resumes and ends exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_under_load_fails_no_unlimited_request_and_ends_exact() {
    use meter_postgres::testing::PostgresServer;
    let pg_dir = tempfile::tempdir().unwrap();
    let server = PostgresServer::start(pg_dir.path());
    let state = server.url().with_password_text();
    let kafka = DevKafka::start(4);
    let dir = tempfile::tempdir().unwrap();
    assert!(meter(&["migrate", "--state", &state], dir.path()).status.success());
    let mut env = kafka.env();
    env.push(("METER__STATE__URL", state.clone()));
    let m = Meter::start(dir.path(), &env_refs(&env));
    let key = keys(&["create", "--role", "admin"], &state, dir.path());
    let (status, body) = call(
        reqwest::Method::POST,
        format!("{}/api/v1/subscriptions", m.url),
        &key,
        Some(serde_json::json!({"tenant": "capped", "plan": "starter", "cycle": "monthly"})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let now_s = now_us() / 1_000_000;
    let events: Arc<Vec<Value>> =
        Arc::new((0..100_000).map(|i| meter_tools::loadgen::event("pgr", i, 20, now_s)).collect());
    let stream = Stream::start(events.clone(), Arc::new(RwLock::new(vec![m.url.clone()])), key.clone(), 2);
    while stream.done.load(std::sync::atomic::Ordering::SeqCst) < stream.batches / 4 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut server = tokio::task::spawn_blocking(move || {
        let mut server = server;
        server.kill();
        server
    })
    .await
    .unwrap();
    // Down: readiness names Postgres; a hard-limited meter's event waits for it.
    let ready = client().get(format!("{}/readyz", m.url)).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let why = ready.text().await.unwrap();
    assert!(why.contains("postgres"), "{why}");
    let capped = serde_json::json!({"events": [{"transaction_id": "cap-1", "external_customer_id": "capped",
        "code": "agent.invocation", "timestamp": now_s,
        "properties": {"model": "m", "input_tokens": 1, "output_tokens": 1}}]});
    let r =
        client().post(format!("{}/api/v1/events/batch", m.url)).bearer_auth(&key).json(&capped).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let down_done = stream.done.load(std::sync::atomic::Ordering::SeqCst);
    let _server = tokio::task::spawn_blocking(move || {
        server.restart();
        server
    })
    .await
    .unwrap();
    let retried = stream.finish().await;
    eprintln!("{down_done} batches acknowledged by the end of the outage; {retried} requests retried");
    assert_eq!(retried, 0, "ingest kept answering for the unlimited meters");
    assert_eq!(assert_exact(&m.url, &key, &events).await, 20);
    let r =
        client().post(format!("{}/api/v1/events/batch", m.url)).bearer_auth(&key).json(&capped).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let ready = client().get(format!("{}/readyz", m.url)).send().await.unwrap();
    assert_eq!(ready.status(), 200, "{}", ready.text().await.unwrap());
}
