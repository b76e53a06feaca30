//! `meter loadgen`: sends generated events to a running meter over HTTP, as many requests in
//! flight as asked, and reports events/s and request latency percentiles.

use clap::Args;
use hdrhistogram::Histogram;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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
    /// Send for this many seconds at `--rate` instead of `--events`; each request's body is
    /// built when it is sent, so that a long run holds only what is in flight, and its events
    /// carry the time it is due rather than the run's start (`benches/soak.sh`).
    #[arg(long, value_name = "SECONDS", requires = "rate", conflicts_with = "direct_kafka")]
    pub duration: Option<u64>,
    /// Resend this share of requests, in percent (spread evenly): such a request repeats, byte
    /// for byte, the one sent ten requests of new events before, as a client does that lost an
    /// answer (at a high rate the first copy may still be in flight); its events must be counted
    /// once.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=50), conflicts_with = "direct_kafka")]
    pub resend_percent: u8,
    /// Reads per second alongside the load: `GET /api/v1/usage` and `GET /api/v1/entitlements`
    /// in turn, over the tenants in turn (the key must read every tenant's: an admin key).
    #[arg(long, default_value_t = 0.0, conflicts_with = "direct_kafka")]
    pub reads_per_second: f64,
    /// Append a row to this CSV file every `--every` seconds: events acknowledged, requests and
    /// failures, and the p50/p99 of ingest requests, usage reads and entitlement checks in that
    /// interval.
    #[arg(long, value_name = "FILE", conflicts_with = "direct_kafka")]
    pub csv: Option<std::path::PathBuf>,
    /// Seconds between `--csv` rows.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub every: u64,
    /// Write, as JSON, what the server acknowledged for each tenant, every event once however
    /// often it was sent: events per code, the agents' tokens (input plus output) and the
    /// distinct users who logged in; for a reconciliation against the counters.
    #[arg(long, value_name = "FILE", conflicts_with = "direct_kafka")]
    pub acknowledged: Option<std::path::PathBuf>,
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct Report {
    /// Events acknowledged with 2xx (a resent request's each time).
    pub events: usize,
    /// Requests answered other than 2xx, or failed.
    pub errors: usize,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Request latency, microseconds.
    pub latency_us: Histogram<u64>,
    /// Reads sent alongside (`--reads-per-second`), and how many of them failed.
    pub reads: usize,
    /// Reads answered other than 2xx, or failed.
    pub read_errors: usize,
    /// Read latency, microseconds.
    pub read_latency_us: Histogram<u64>,
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
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
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
        ms(h, 0.5),
        ms(h, 0.9),
        ms(h, 0.99),
        h.max() as f64 / 1000.0
    );
    println!("errors: {}", report.errors);
    if report.reads > 0 {
        let r = &report.read_latency_us;
        println!(
            "reads: {} (usage and entitlements), latency ms: p50 {:.2}  p99 {:.2}  max {:.2}; failed: {}",
            report.reads,
            ms(r, 0.5),
            ms(r, 0.99),
            r.max() as f64 / 1000.0,
            report.read_errors
        );
    }
    if report.errors > 0 {
        anyhow::bail!("{} requests failed", report.errors);
    }
    if report.read_errors > 0 {
        anyhow::bail!("{} reads failed", report.read_errors);
    }
    Ok(())
}

/// How far back a resend reaches, in requests of new events.
const RESEND_BACK: usize = 10;

/// Which requests carry new events and which resend earlier ones (`--resend-percent`).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Plan {
    /// Requests in all.
    requests: usize,
    /// Percent of requests that are resends: among requests `0..s`, `s × percent / 100`
    /// (rounded down), so request `s` is one when that count steps up at `s + 1`.
    percent: usize,
}

impl Plan {
    /// `requests` requests, `resend_percent` of them resends.
    fn of_requests(requests: usize, resend_percent: u8) -> Self {
        Plan { requests, percent: usize::from(resend_percent) }
    }

    /// As many requests as it takes to send `originals` requests of new events.
    fn of_originals(originals: usize, resend_percent: u8) -> Self {
        let mut plan = Self::of_requests(originals, resend_percent);
        while plan.originals_before(plan.requests) < originals {
            plan.requests += 1;
        }
        plan
    }

    /// Requests of new events among requests `0..s`.
    fn originals_before(&self, s: usize) -> usize {
        s - s * self.percent / 100
    }

    /// Whether request `s` is a resend.
    fn resends(&self, s: usize) -> bool {
        (s + 1) * self.percent / 100 > s * self.percent / 100
    }

    /// Requests of new events in all.
    fn originals(&self) -> usize {
        self.originals_before(self.requests)
    }

    /// The request of new events whose body request `s` sends: its own, or for a resend the one
    /// [`RESEND_BACK`] before (the first, early on).
    fn original(&self, s: usize) -> usize {
        let before = self.originals_before(s);
        if self.resends(s) { before.saturating_sub(RESEND_BACK) } else { before }
    }
}

/// The events of a run, request by request of new events; the same every time they are asked for.
struct Source {
    args: LoadgenArgs,
    prefix: String,
    /// For random ids: each event's is a function of this and its number, so that a body built
    /// again (a resend, `--duration`'s lazy bodies, `--acknowledged`) is the same.
    seed: u64,
    /// The time of the first request's events (s).
    now_secs: i64,
    /// With `--duration`, seconds between requests of new events: each request's events carry
    /// the time it is due to be sent (so that a long run's last events are not as old as the
    /// run), the same each time it is built; otherwise 0, every event at `now_secs`.
    secs_per_request: f64,
    events: usize,
}

impl Source {
    /// The events of request of new events `r`.
    fn events(&self, r: usize) -> Vec<serde_json::Value> {
        let batch = self.args.batch.max(1);
        let tenants = self.args.tenants.max(1);
        (r * batch..((r + 1) * batch).min(self.events))
            .map(|i| {
                let at = self.now_secs + (r as f64 * self.secs_per_request) as i64;
                let mut e = event(&self.prefix, i, tenants, at);
                if self.args.random_ids {
                    e["transaction_id"] = format!("{}-{:032x}", self.prefix, random_id(self.seed, i)).into();
                }
                let tenant = if self.args.tenant_per_request { r } else { i } % tenants;
                e["external_customer_id"] = format!("{}{tenant:04}", self.args.tenant_prefix).into();
                e
            })
            .collect()
    }

    fn body(&self, r: usize) -> Vec<u8> {
        serde_json::to_vec(&json!({ "events": self.events(r) })).expect("serializable")
    }
}

/// A well-mixed 128-bit id, distinct for each `i` (splitmix64, a bijection, twice).
fn random_id(seed: u64, i: usize) -> u128 {
    fn mix(x: u64) -> u64 {
        let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    let a = mix(seed ^ i as u64);
    (u128::from(a) << 64) | u128::from(mix(a))
}

/// Request bodies: built before the clock starts, or (`--duration`) each when it is sent.
enum Bodies {
    Built(Vec<Vec<u8>>),
    Lazy,
}

/// What one `--every` interval measured, taken and reset by each CSV row.
struct Window {
    events: usize,
    requests: usize,
    failed: usize,
    ingest: Histogram<u64>,
    usage: Histogram<u64>,
    entitlements: Histogram<u64>,
    failed_reads: usize,
}

impl Window {
    fn new() -> Self {
        let h = || Histogram::<u64>::new(3).expect("valid precision");
        Window { events: 0, requests: 0, failed: 0, ingest: h(), usage: h(), entitlements: h(), failed_reads: 0 }
    }

    const HEADER: &str = "seconds,events_acknowledged,requests,failed_requests,ingest_p50_ms,ingest_p99_ms,\
                          usage_reads,usage_p99_ms,entitlement_reads,entitlement_p99_ms,failed_reads";

    /// The interval's row, ending `seconds` after the start; starts the next interval.
    fn row(&mut self, seconds: f64) -> String {
        let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        let row = format!(
            "{seconds:.0},{},{},{},{:.2},{:.2},{},{:.2},{},{:.2},{}",
            self.events,
            self.requests,
            self.failed,
            ms(&self.ingest, 0.5),
            ms(&self.ingest, 0.99),
            self.usage.len(),
            ms(&self.usage, 0.99),
            self.entitlements.len(),
            ms(&self.entitlements, 0.99),
            self.failed_reads
        );
        *self = Window::new();
        row
    }
}

/// Sends the load and measures it; bodies are built before the clock starts (or, with
/// `--duration`, as they are sent).
pub async fn generate(args: &LoadgenArgs) -> anyhow::Result<Report> {
    let prefix = args.id_prefix.clone().unwrap_or_else(|| format!("lg{}", meter_schemas::period::now_us()));
    let now_secs = meter_schemas::period::now_us() / 1_000_000;
    let batch = args.batch.max(1);
    let plan = match (args.duration, args.rate) {
        (Some(secs), Some(rate)) => {
            Plan::of_requests(((rate * secs as f64) / batch as f64).ceil() as usize, args.resend_percent)
        }
        _ => Plan::of_originals(args.events.div_ceil(batch), args.resend_percent),
    };
    let events = match args.duration {
        Some(_) => plan.originals() * batch,
        None => args.events,
    };
    // Requests of new events are due about every `requests / originals` slots of `pace` each.
    let secs_per_request = match (args.duration, pace(args)) {
        (Some(_), Some(every)) if plan.originals() > 0 => {
            every.as_secs_f64() * plan.requests as f64 / plan.originals() as f64
        }
        _ => 0.0,
    };
    let source =
        Arc::new(Source { args: args.clone(), prefix, seed: rand::random(), now_secs, secs_per_request, events });
    let bodies = Arc::new(match args.duration {
        Some(_) => Bodies::Lazy,
        None => Bodies::Built((0..plan.originals()).map(|r| source.body(r)).collect()),
    });
    if let Some(brokers) = &args.direct_kafka {
        let Bodies::Built(bodies) = &*bodies else { unreachable!("--duration conflicts with --direct-kafka") };
        return direct_kafka(args, brokers, bodies).await;
    }
    let client = reqwest::Client::builder().pool_max_idle_per_host(args.concurrency).build()?;
    let url = Arc::new(format!("{}/api/v1/events/batch", args.url.trim_end_matches('/')));
    let key = Arc::new(args.key.clone());
    let acked: Arc<Vec<AtomicBool>> = Arc::new((0..plan.originals()).map(|_| AtomicBool::new(false)).collect());
    // The first failure is shown, so that a run that fails says why.
    let told = Arc::new(std::sync::Once::new());
    let send = {
        let (source, acked, client) = (source.clone(), acked.clone(), client.clone());
        move |s: usize| {
            let (client, url, key, bodies, told, source, acked) =
                (client.clone(), url.clone(), key.clone(), bodies.clone(), told.clone(), source.clone(), acked.clone());
            async move {
                let r = plan.original(s);
                let body = match &*bodies {
                    Bodies::Built(b) => b[r].clone(),
                    Bodies::Lazy => source.body(r),
                };
                let sent = client
                    .post(url.as_str())
                    .bearer_auth(key.as_str())
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await;
                let failure = match sent {
                    Ok(a) if a.status().is_success() => {
                        let _ = a.bytes().await;
                        acked[r].store(true, Ordering::Relaxed);
                        return Some(batch.min(source.events - r * batch));
                    }
                    Ok(a) => format!("answered {}: {}", a.status(), a.text().await.unwrap_or_default()),
                    Err(e) => format!("not sent: {e}"),
                };
                told.call_once(|| eprintln!("loadgen: request {s} failed (the first): {failure:.2000}"));
                None
            }
        }
    };
    // Warm up (connections, the server's producer) with the first request before the clock starts;
    // it is sent again in the run, as a duplicate.
    if plan.requests > 0 {
        send(0).await;
    }
    let window = Arc::new(std::sync::Mutex::new(Window::new()));
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let reader = (args.reads_per_second > 0.0)
        .then(|| tokio::spawn(reads(client.clone(), args.clone(), window.clone(), stop.clone(), started)));
    let csv = match &args.csv {
        Some(path) => {
            let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
            if file.metadata()?.len() == 0 {
                writeln!(file, "{}", Window::HEADER)?;
            }
            let (window, every) = (window.clone(), Duration::from_secs(args.every));
            Some(tokio::spawn(async move {
                let mut next = started + every;
                loop {
                    tokio::time::sleep_until(next.into()).await;
                    let row = window.lock().expect("not poisoned").row(started.elapsed().as_secs_f64());
                    if let Err(e) = file.write_all(format!("{row}\n").as_bytes()) {
                        eprintln!("loadgen: cannot write the CSV row: {e}");
                    }
                    next += every;
                }
            }))
        }
        None => None,
    };
    let mut report =
        drive(plan.requests, args.concurrency, plan.requests * batch, pace(args), Some(window.clone()), send).await?;
    stop.store(true, Ordering::Relaxed);
    if let Some(reader) = reader {
        (report.reads, report.read_errors, report.read_latency_us) = reader.await?;
    }
    if let (Some(task), Some(path)) = (csv, &args.csv) {
        task.abort();
        // Not before it stopped: a row it was writing would interleave with the last one.
        let _ = task.await;
        let row = window.lock().expect("not poisoned").row(started.elapsed().as_secs_f64());
        let mut file = std::fs::OpenOptions::new().append(true).open(path)?;
        file.write_all(format!("{row}\n").as_bytes())?;
    }
    if let Some(path) = &args.acknowledged {
        std::fs::write(path, serde_json::to_vec_pretty(&acknowledged(&source, &acked))?)?;
    }
    Ok(report)
}

/// What the server acknowledged for each tenant, every event once: events per code, tokens
/// (input plus output) and distinct users who logged in.
fn acknowledged(source: &Source, acked: &[AtomicBool]) -> serde_json::Value {
    #[derive(Default)]
    struct Tenant {
        codes: BTreeMap<String, u64>,
        tokens: u64,
        users: BTreeSet<String>,
    }
    let mut tenants: BTreeMap<String, Tenant> = BTreeMap::new();
    for (r, _) in acked.iter().enumerate().filter(|(_, a)| a.load(Ordering::Relaxed)) {
        for e in source.events(r) {
            let t = tenants.entry(e["external_customer_id"].as_str().unwrap_or_default().to_string()).or_default();
            *t.codes.entry(e["code"].as_str().unwrap_or_default().to_string()).or_default() += 1;
            let p = &e["properties"];
            t.tokens += p["input_tokens"].as_u64().unwrap_or(0) + p["output_tokens"].as_u64().unwrap_or(0);
            if let Some(u) = p["user_id"].as_str() {
                t.users.insert(u.to_string());
            }
        }
    }
    tenants
        .into_iter()
        .map(|(name, t)| (name, json!({ "events": t.codes, "tokens": t.tokens, "users": t.users.len() })))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// `--reads-per-second`: usage reads and entitlement checks in turn, over the tenants in turn,
/// until `stop`; each recorded in the current window. Answers the reads, the failed ones, and
/// their latency.
async fn reads(
    client: reqwest::Client,
    args: LoadgenArgs,
    window: Arc<std::sync::Mutex<Window>>,
    stop: Arc<AtomicBool>,
    started: Instant,
) -> (usize, usize, Histogram<u64>) {
    let base = args.url.trim_end_matches('/').to_string();
    let every = Duration::from_secs_f64(1.0 / args.reads_per_second);
    let mut latency = Histogram::<u64>::new(3).expect("valid precision");
    let (mut n, mut failed) = (0usize, 0usize);
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep_until((started + every * n as u32).into()).await;
        let tenant = format!("{}{:04}", args.tenant_prefix, (n / 2) % args.tenants.max(1));
        let usage = n % 2 == 0;
        let path = if usage { "usage" } else { "entitlements" };
        let t = Instant::now();
        let ok = match client.get(format!("{base}/api/v1/{path}?tenant={tenant}")).bearer_auth(&args.key).send().await {
            Ok(a) if a.status().is_success() => a.bytes().await.is_ok(),
            Ok(a) => {
                eprintln!("loadgen: GET /api/v1/{path} for {tenant} answered {}", a.status());
                false
            }
            Err(e) => {
                eprintln!("loadgen: GET /api/v1/{path} for {tenant} not sent: {e}");
                false
            }
        };
        let us = t.elapsed().as_micros() as u64;
        let _ = latency.record(us);
        let mut w = window.lock().expect("not poisoned");
        let _ = if usage { w.usage.record(us) } else { w.entitlements.record(us) };
        if !ok {
            failed += 1;
            w.failed_reads += 1;
        }
        n += 1;
    }
    (n, failed, latency)
}

/// The spacing of requests that `--rate` asks for.
fn pace(args: &LoadgenArgs) -> Option<Duration> {
    args.rate.filter(|r| *r > 0.0).map(|r| Duration::from_secs_f64(args.batch.max(1) as f64 / r))
}

/// Sends requests `0..requests` through `send`, `concurrency` at a time (request `i` not before
/// `i × every`, when given), measuring each one's latency (also into `window`, when given) and
/// printing progress every second. `send(i)` answers how many events request `i` had
/// acknowledged, or `None` when it failed.
async fn drive<F, Fut>(
    requests: usize,
    concurrency: usize,
    total: usize,
    every: Option<Duration>,
    window: Option<Arc<std::sync::Mutex<Window>>>,
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
        let (send, next, done, window) = (send.clone(), next.clone(), done.clone(), window.clone());
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
                let us = t.elapsed().as_micros() as u64;
                let _ = hist.record(us);
                match acked {
                    Some(n) => {
                        done.fetch_add(n, Ordering::Relaxed);
                    }
                    None => errors += 1,
                }
                if let Some(w) = &window {
                    let mut w = w.lock().expect("not poisoned");
                    let _ = w.ingest.record(us);
                    w.requests += 1;
                    w.events += acked.unwrap_or(0);
                    w.failed += usize::from(acked.is_none());
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
    Ok(Report {
        events: done.load(Ordering::Relaxed),
        errors,
        elapsed,
        latency_us,
        reads: 0,
        read_errors: 0,
        read_latency_us: Histogram::<u64>::new(3).expect("valid precision"),
    })
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
    drive(count, args.concurrency, args.events, pace(args), None, send).await
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// Every request of new events is sent once as itself; resends are the asked share of all
    /// requests and each repeats one sent before it.
    #[test]
    fn a_plan_sends_every_original_once_and_resends_earlier_ones() {
        for (originals, percent) in [
            (0, 5),
            (1, 5),
            (7, 50),
            (1000, 5),
            (1000, 0),
            (999, 10),
            (5000, 1),
            (3000, 3),
            (3000, 7),
            (3000, 34),
            (100, 50),
        ] {
            let plan = Plan::of_originals(originals, percent);
            let mut sent_as_itself = vec![0; originals];
            let mut resends = 0;
            let mut newest = None;
            for s in 0..plan.requests {
                let r = plan.original(s);
                assert!(r < originals, "{originals}, {percent}%: request {s} sends {r}");
                if newest.is_some_and(|n| r <= n) {
                    resends += 1;
                } else {
                    assert_eq!(r, newest.map_or(0, |n| n + 1), "{originals}, {percent}%: request {s}");
                    sent_as_itself[r] += 1;
                    newest = Some(r);
                }
            }
            assert!(sent_as_itself.iter().all(|n| *n == 1), "{originals}, {percent}%");
            let want = plan.requests * percent as usize / 100;
            assert_eq!(resends, want, "{originals}, {percent}%");
            assert_eq!(plan.originals(), originals);
        }
        let plan = Plan::of_originals(1000, 5);
        assert_eq!(plan.requests, 1052);
        assert_eq!((plan.original(19), plan.original(39)), (9, 28), "ten requests of new events back");
    }

    /// A source builds the same bodies each time (resends and `--duration`'s lazy bodies rely on
    /// it), random ids included, the ids of a run are distinct, and each request's events carry the time
    /// it is due.
    #[test]
    fn a_source_builds_the_same_body_again() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: LoadgenArgs,
        }
        let mut args =
            <Cli as clap::Parser>::try_parse_from(["loadgen", "--key", "k", "--random-ids", "--batch", "50"])
                .unwrap()
                .args;
        args.tenants = 7;
        let source = Source { args, prefix: "p".into(), seed: 42, now_secs: 1, secs_per_request: 0.5, events: 1000 };
        assert_eq!(source.body(3), source.body(3));
        let ids: BTreeSet<String> =
            (0..20).flat_map(|r| source.events(r)).map(|e| e["transaction_id"].as_str().unwrap().to_string()).collect();
        assert_eq!(ids.len(), 1000);
        assert!(source.events(19).len() == 50 && source.events(20).is_empty());
        let times = |r| source.events(r).iter().map(|e| e["timestamp"].as_i64().unwrap()).collect::<BTreeSet<_>>();
        assert_eq!((times(0), times(3), times(19)), (BTreeSet::from([1]), BTreeSet::from([2]), BTreeSet::from([10])));
    }
}
