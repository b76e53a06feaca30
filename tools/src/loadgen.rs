//! `meter loadgen`: sends generated events to a running meter over HTTP, as many requests in
//! flight as asked, and reports events/s and request latency percentiles.

use clap::Args;
use hdrhistogram::Histogram;
use serde_json::json;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// `meter loadgen`.
#[derive(Debug, Args, Clone)]
pub struct LoadgenArgs {
    /// Base URL of the meter to load.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// API key (an ingest service key or an admin key).
    #[arg(long, env = "METER_KEY", hide_env_values = true)]
    pub key: String,
    /// Events to send in all.
    #[arg(long, default_value_t = 1_000_000)]
    pub events: usize,
    /// Events per request (Lago batch).
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Distinct tenants the events are spread over.
    #[arg(long, default_value_t = 1000)]
    pub tenants: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Prefix of event ids; change it between runs against the same data, or every event is a
    /// duplicate.
    #[arg(long)]
    pub id_prefix: Option<String>,
    /// Random ids (like UUIDv4) instead of increasing ones (like ULIDs): the worst case for the
    /// dedup indexes.
    #[arg(long)]
    pub random_ids: bool,
    /// Baseline instead of HTTP: parse the same requests before the clock starts, then append
    /// their events straight to the Kafka log at HOST:PORT (meter's producer and settings, no
    /// HTTP, no validation), with the same batching and concurrency.
    #[arg(long, value_name = "HOST:PORT")]
    pub direct_kafka: Option<String>,
    /// Partitions of the topic, for `--direct-kafka`.
    #[arg(long, default_value_t = 4)]
    pub partitions: u32,
    /// Send at most this many events per second (requests evenly spaced); unlimited by default.
    #[arg(long, value_name = "EVENTS_PER_SECOND")]
    pub rate: Option<f64>,
    /// Tenants are named this followed by their number (`tenant-0042`).
    #[arg(long, default_value = "tenant-")]
    pub tenant_prefix: String,
    /// Each request carries one tenant's events (tenants take turns by request), as tenants
    /// sending with their own keys do; by default a request's events take turns over tenants.
    #[arg(long)]
    pub tenant_per_request: bool,
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct Report {
    /// Events acknowledged with 2xx.
    pub events: usize,
    /// Requests answered other than 2xx, or failed.
    pub errors: usize,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Request latency, microseconds.
    pub latency_us: Histogram<u64>,
}

impl Report {
    /// Acknowledged events per second.
    pub fn events_per_second(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64()
    }
}

/// One generated event in Lago's shape; tenants take turns, and codes rotate over the five
/// built-in ones so that every tenant gets each in turn (whatever the number of tenants).
pub fn event(prefix: &str, i: usize, tenants: usize, now_secs: i64) -> serde_json::Value {
    let tenants = tenants.max(1);
    let tenant = format!("tenant-{:04}", i % tenants);
    let (code, properties) = match (i % tenants + i / tenants) % 5 {
        0 => ("work_order.created", json!({"work_order_id": format!("wo-{i}")})),
        1 => ("work_order.completed", json!({"work_order_id": format!("wo-{i}")})),
        2 => (
            "agent.invocation",
            json!({"model": "gpt-x", "input_tokens": 1000 + i % 97, "output_tokens": 200 + i % 13}),
        ),
        3 => ("api.call", json!({"route": "/v1/orders", "method": "GET", "status": 200})),
        _ => ("user.login", json!({"user_id": format!("user-{}", i % 50)})),
    };
    json!({
        // Zero-padded, so that ids sort in the order they are sent, as ULIDs and UUIDv7 do.
        "transaction_id": format!("{prefix}-{i:012}"),
        "external_customer_id": tenant,
        "code": code,
        "timestamp": now_secs,
        "properties": properties,
    })
}

/// Runs the load and prints the report.
#[allow(clippy::print_stdout)]
pub async fn run(args: LoadgenArgs) -> anyhow::Result<()> {
    let report = generate(&args).await?;
    let h = &report.latency_us;
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "events: {} acknowledged in {:.2} s = {:.0} events/s ({} per request, {} in flight, {} tenants)",
        report.events,
        report.elapsed.as_secs_f64(),
        report.events_per_second(),
        args.batch,
        args.concurrency,
        args.tenants
    );
    println!(
        "request latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}",
        ms(0.5),
        ms(0.9),
        ms(0.99),
        h.max() as f64 / 1000.0
    );
    println!("errors: {}", report.errors);
    if report.errors > 0 {
        anyhow::bail!("{} requests failed", report.errors);
    }
    Ok(())
}

/// Sends the load and measures it; bodies are built before the clock starts.
pub async fn generate(args: &LoadgenArgs) -> anyhow::Result<Report> {
    let prefix = args.id_prefix.clone().unwrap_or_else(|| format!("lg{}", meter_schemas::period::now_us()));
    let now_secs = meter_schemas::period::now_us() / 1_000_000;
    let batch = args.batch.max(1);
    let bodies: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..args.events.div_ceil(batch))
            .map(|r| {
                let events: Vec<_> = (r * batch..((r + 1) * batch).min(args.events))
                    .map(|i| {
                        let mut e = event(&prefix, i, args.tenants, now_secs);
                        if args.random_ids {
                            e["transaction_id"] = format!("{prefix}-{:032x}", rand::random::<u128>()).into();
                        }
                        let tenant = if args.tenant_per_request { r } else { i } % args.tenants.max(1);
                        e["external_customer_id"] = format!("{}{tenant:04}", args.tenant_prefix).into();
                        e
                    })
                    .collect();
                serde_json::to_vec(&json!({ "events": events })).expect("serializable")
            })
            .collect(),
    );
    if let Some(brokers) = &args.direct_kafka {
        return direct_kafka(args, brokers, bodies.as_slice()).await;
    }
    let client = reqwest::Client::builder().pool_max_idle_per_host(args.concurrency).build()?;
    let url = Arc::new(format!("{}/api/v1/events/batch", args.url.trim_end_matches('/')));
    let key = Arc::new(args.key.clone());
    let total = args.events;
    // The first failure is shown, so that a run that fails says why.
    let told = Arc::new(std::sync::Once::new());
    let send = move |i: usize| {
        let (client, url, key, bodies, told) = (client.clone(), url.clone(), key.clone(), bodies.clone(), told.clone());
        async move {
            let sent = client
                .post(url.as_str())
                .bearer_auth(key.as_str())
                .header("content-type", "application/json")
                .body(bodies[i].clone())
                .send()
                .await;
            let failure = match sent {
                Ok(r) if r.status().is_success() => {
                    let _ = r.bytes().await;
                    return Some(batch.min(total - i * batch));
                }
                Ok(r) => format!("answered {}: {}", r.status(), r.text().await.unwrap_or_default()),
                Err(e) => format!("not sent: {e}"),
            };
            told.call_once(|| eprintln!("loadgen: request {i} failed (the first): {failure:.2000}"));
            None
        }
    };
    // Warm up (connections, the server's producer) with the first request before the clock starts;
    // it is sent again in the run, as a duplicate.
    send(0).await;
    drive(args.events.div_ceil(batch), args.concurrency, total, pace(args), send).await
}

/// The spacing of requests that `--rate` asks for.
fn pace(args: &LoadgenArgs) -> Option<Duration> {
    args.rate.filter(|r| *r > 0.0).map(|r| Duration::from_secs_f64(args.batch.max(1) as f64 / r))
}

/// Sends requests `0..requests` through `send`, `concurrency` at a time (request `i` not before
/// `i × every`, when given), measuring each one's latency and printing progress every second.
/// `send(i)` answers how many events request `i` had acknowledged, or `None` when it failed.
async fn drive<F, Fut>(
    requests: usize,
    concurrency: usize,
    total: usize,
    every: Option<Duration>,
    send: F,
) -> anyhow::Result<Report>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Option<usize>> + Send,
{
    let send = Arc::new(send);
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let progress = {
        let done = done.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let d = done.load(Ordering::Relaxed);
                eprintln!("loadgen: {d}/{total} events, {:.0} events/s", d as f64 / started.elapsed().as_secs_f64());
            }
        })
    };
    let mut workers = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (send, next, done) = (send.clone(), next.clone(), done.clone());
        workers.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new(3).expect("valid precision");
            let mut errors = 0;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= requests {
                    break;
                }
                if let Some(every) = every {
                    tokio::time::sleep_until((started + every * i as u32).into()).await;
                }
                let t = Instant::now();
                let acked = send(i).await;
                let _ = hist.record(t.elapsed().as_micros() as u64);
                match acked {
                    Some(n) => {
                        done.fetch_add(n, Ordering::Relaxed);
                    }
                    None => errors += 1,
                }
            }
            (hist, errors)
        }));
    }
    let mut latency_us = Histogram::<u64>::new(3).expect("valid precision");
    let mut errors = 0;
    for w in workers {
        let (h, e) = w.await?;
        latency_us.add(&h).expect("same precision");
        errors += e;
    }
    let elapsed = started.elapsed();
    progress.abort();
    Ok(Report { events: done.load(Ordering::Relaxed), errors, elapsed, latency_us })
}

/// The `--direct-kafka` baseline: the same events, appended to the Kafka log without HTTP.
async fn direct_kafka(args: &LoadgenArgs, brokers: &str, bodies: &[Vec<u8>]) -> anyhow::Result<Report> {
    use meter_schemas::envelope::{Context, Format, parse};
    let catalog = meter_schemas::Catalog::new(vec![])?;
    let limits = meter_schemas::Limits { max_events: args.batch.max(1), ..Default::default() };
    let scope = meter_schemas::TenantScope::Any;
    let now = meter_schemas::period::now_us();
    let requests: Vec<Vec<meter_schemas::Event>> = bodies
        .iter()
        .map(|b| {
            let cx = Context { limits: &limits, catalog: &catalog, scope: &scope, now_us: now };
            parse(Format::LagoBatch, b, &cx).map(|p| p.events).map_err(|r| anyhow::anyhow!("{:?}", r.errors))
        })
        .collect::<Result<_, _>>()?;
    let mut settings = meter_eventlog::KafkaSettings::new(brokers);
    settings.partitions = args.partitions;
    let log = Arc::new(meter_eventlog::KafkaLog::open(settings).await?);
    // Warm up the producer (its first batches wait for metadata and producer ids) before the clock
    // starts, as the HTTP run warms the server's; the batch is appended again in the run.
    if let Some(first) = requests.first() {
        meter_eventlog::EventLog::append(&*log, first).await?;
    }
    let requests = Arc::new(requests);
    let count = requests.len();
    let send = move |i: usize| {
        let (log, requests) = (log.clone(), requests.clone());
        async move {
            let batch = &requests[i];
            meter_eventlog::EventLog::append(&*log, batch).await.ok().map(|_| batch.len())
        }
    };
    drive(count, args.concurrency, args.events, pace(args), send).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};

    /// With 100 tenants (a multiple of five) each tenant still gets all five codes, evenly.
    #[test]
    fn every_tenant_gets_every_code() {
        for tenants in [1, 3, 4, 5, 9, 99, 100, 1000] {
            let mut codes: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
            for i in 0..tenants * 10 {
                let e = event("t", i, tenants, 0);
                let (t, c) = (e["external_customer_id"].as_str().unwrap(), e["code"].as_str().unwrap());
                *codes.entry(t.into()).or_default().entry(c.into()).or_default() += 1;
            }
            assert_eq!(codes.len(), tenants);
            for (t, by_code) in &codes {
                assert_eq!(by_code.len(), 5, "{tenants} tenants: {t} got {by_code:?}");
                assert_eq!(by_code.values().collect::<BTreeSet<_>>(), BTreeSet::from([&2]), "{t}: {by_code:?}");
            }
        }
    }
}
