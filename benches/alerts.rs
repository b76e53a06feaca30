//! Event-to-alert latency and entitlement checks, end to end on a release `meter serve`.
//!
//! `cargo bench --bench alerts` (embedded default), `LOG=kafka cargo bench --bench alerts` (on
//! `meter dev kafka`). TENANTS (default 200) Starter tenants are brought to 399 of their 500
//! included work orders; then, one tenant every 20 ms, the 400th is sent and the time until the
//! 80% alert reaches a webhook receiver is measured. Then CLIENTS (default 8) clients ask
//! `GET /api/v1/entitlements/work_orders` for SECONDS (default 5) seconds. METER_BIN=PATH runs
//! another build of meter (another commit's, side by side).
//! After the alerts, each server stage's mean over those sends alone is printed from `/metrics`.

use hdrhistogram::Histogram;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Starts `cmd` and returns it with the first word after `prefix` on its stdout.
fn announce(mut cmd: Command, prefix: &str) -> (Child, String) {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("starts");
    let out = BufReader::new(child.stdout.take().expect("piped"));
    let found = out.lines().map_while(Result::ok).find_map(|l| l.strip_prefix(prefix).map(str::to_string));
    match found {
        Some(rest) => (child, rest.split_whitespace().next().unwrap_or_default().to_string()),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("no line {prefix:?}");
        }
    }
}

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn percentiles(h: &Histogram<u64>) -> String {
    format!(
        "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.max() as f64 / 1000.0
    )
}

/// The sum and count of each server histogram that an alert passes through, from `/metrics`.
async fn stages(http: &reqwest::Client, url: &str) -> std::collections::BTreeMap<String, (f64, f64)> {
    const STAGES: [&str; 5] = [
        "meter_ingest_request_duration_seconds",
        "meter_log_commit_duration_seconds",
        "meter_aggregator_batch_duration_seconds",
        "meter_aggregator_event_to_counter_seconds",
        "meter_webhooks_alert_to_delivery_seconds",
    ];
    let text = http.get(format!("{url}/metrics")).send().await.unwrap().text().await.unwrap();
    let mut out = std::collections::BTreeMap::<String, (f64, f64)>::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let name = series.split('{').next().unwrap_or_default();
        let value: f64 = value.parse().unwrap_or_default();
        for stage in STAGES {
            if name == format!("{stage}_sum") {
                out.entry(stage.to_string()).or_default().0 += value;
            } else if name == format!("{stage}_count") {
                out.entry(stage.to_string()).or_default().1 += value;
            }
        }
    }
    out
}

#[allow(clippy::print_stdout)]
#[tokio::main]
async fn main() {
    let tenants: usize = env("TENANTS", 200);
    let clients: usize = env("CLIENTS", 8);
    let seconds: u64 = env("SECONDS", 5);
    let kafka = std::env::var("LOG").is_ok_and(|l| l == "kafka");
    // METER_BIN runs another build (another commit's, side by side) instead of this one's.
    let bin = std::env::var("METER_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_meter").to_string());
    let dir = tempfile::tempdir().unwrap();

    let mut vars: Vec<(&str, String)> = vec![
        ("METER__BOOTSTRAP_ADMIN_KEY", "false".into()),
        ("METER__ALERTS__ADVISE_EVERY", "1000days".into()),
        ("RUST_LOG", "warn".into()),
    ];
    let _broker = kafka.then(|| {
        let mut cmd = Command::new(&bin);
        cmd.args(["dev", "kafka", "--partitions", "4"]);
        let (child, bootstrap) = announce(cmd, "kafka bootstrap: ");
        vars.push(("METER__LOG__URL", format!("kafka://{bootstrap}")));
        vars.push(("METER__LOG__PARTITIONS", "4".into()));
        Kill(child)
    });
    let key =
        Command::new(&bin).args(["keys", "create", "--role", "admin", "--data-dir"]).arg(dir.path()).output().unwrap();
    let key = String::from_utf8(key.stdout).unwrap().trim().to_string();
    let mut cmd = Command::new(&bin);
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .envs(vars.iter().map(|(k, v)| (*k, v)));
    let (child, url) = announce(cmd, "meter listening on ");
    let _meter = Kill(child);
    let http = reqwest::Client::new();

    // The receiver: when each tenant's 80% alert arrived.
    let arrived: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let seen = arrived.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: axum::body::Bytes| {
            let seen = seen.clone();
            async move {
                let v: Value = serde_json::from_slice(&body).unwrap_or_default();
                if v["data"]["percent"] == 80 {
                    seen.lock()
                        .unwrap()
                        .entry(v["data"]["tenant"].as_str().unwrap_or_default().to_string())
                        .or_insert_with(Instant::now);
                }
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let r = http
        .post(format!("{url}/api/v1/webhooks"))
        .bearer_auth(&key)
        .json(&json!({ "url": hook }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    let names: Vec<String> = (0..tenants).map(|i| format!("t{i:04}")).collect();
    for t in &names {
        let body = json!({"tenant": t, "plan": "starter", "cycle": "monthly"});
        let r = http.post(format!("{url}/api/v1/subscriptions")).bearer_auth(&key).json(&body).send().await.unwrap();
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    }
    let wo = |t: &str, i: usize| json!({"transaction_id": format!("{t}-{i}"), "external_customer_id": t, "code": "work_order.created", "properties": {}});
    let started = Instant::now();
    for t in &names {
        for chunk in (0..399).collect::<Vec<_>>().chunks(50) {
            let events: Vec<Value> = chunk.iter().map(|&i| wo(t, i)).collect();
            let r = http
                .post(format!("{url}/api/v1/events/batch"))
                .bearer_auth(&key)
                .json(&json!({ "events": events }))
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success());
        }
    }
    // Wait until every tenant's 399 are counted.
    for t in &names {
        loop {
            let u: Value = http
                .get(format!("{url}/api/v1/usage?tenant={t}"))
                .bearer_auth(&key)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if u["meters"].as_array().unwrap().iter().any(|m| m["name"] == "work_orders" && m["value"] == "399") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    println!(
        "log: {}; {tenants} tenants at 399 of 500 work orders in {:.1} s",
        if kafka { "kafka (meter dev kafka, 4 partitions)" } else { "embedded (SQLite)" },
        started.elapsed().as_secs_f64()
    );

    let before = stages(&http, &url).await;
    let mut sent: HashMap<String, Instant> = HashMap::new();
    let mut acked = Histogram::<u64>::new(3).unwrap();
    for t in &names {
        let at = Instant::now();
        let r = http
            .post(format!("{url}/api/v1/events/batch"))
            .bearer_auth(&key)
            .json(&json!({ "events": [wo(t, 399)] }))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
        acked.record(at.elapsed().as_micros() as u64).unwrap();
        sent.insert(t.clone(), at);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while arrived.lock().unwrap().len() < tenants && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut h = Histogram::<u64>::new(3).unwrap();
    let got = arrived.lock().unwrap().clone();
    for (t, at) in &got {
        h.record(at.duration_since(sent[t]).as_micros() as u64).unwrap();
    }
    println!(
        "event-to-alert (send of the 400th work order to the 80% alert at the webhook): {} of {tenants}, {}",
        got.len(),
        percentiles(&h)
    );
    println!("  of which the send to its answer: {}", percentiles(&acked));
    // Where the rest went: each stage's mean over these sends alone, from the server's own
    // histograms (the difference of their sums and counts before and after).
    let after = stages(&http, &url).await;
    for (name, (sum, count)) in &after {
        let (s0, c0) = before.get(name).copied().unwrap_or_default();
        if count > &c0 {
            println!("  {name}: mean {:.2} ms over {}", (sum - s0) / (count - c0) * 1e3, count - c0);
        }
    }

    // Entitlement checks.
    let stop = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (http, url, key, names) = (http.clone(), url.clone(), key.clone(), names.clone());
        tasks.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new(3).unwrap();
            let mut i = c;
            while Instant::now() < stop {
                let t = &names[i % names.len()];
                let at = Instant::now();
                let r = http
                    .get(format!("{url}/api/v1/entitlements/work_orders?tenant={t}"))
                    .bearer_auth(&key)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                let _ = r.bytes().await.unwrap();
                h.record(at.elapsed().as_micros() as u64).unwrap();
                i += clients;
            }
            h
        }));
    }
    let mut all = Histogram::<u64>::new(3).unwrap();
    for t in tasks {
        all.add(t.await.unwrap()).unwrap();
    }
    println!(
        "entitlement checks over HTTP ({clients} clients, {seconds} s): {:.0}/s, {}",
        all.len() as f64 / seconds as f64,
        percentiles(&all)
    );
}
