//! Drives real `meter` processes for the end-to-end tests.
#![allow(dead_code)]

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The `meter` binary under test.
pub fn meter_bin() -> &'static str {
    env!("CARGO_BIN_EXE_meter")
}

/// A running `meter serve` (or `meter ingest`, `meter aggregate`).
pub struct Meter {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// Its data directory.
    pub dir: PathBuf,
    role: &'static str,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl Meter {
    /// Starts `meter serve` on a free port with `env` (METER__… overrides) and waits until it listens.
    pub fn start(dir: &Path, env: &[(&str, &str)]) -> Meter {
        Self::start_role("serve", dir, env)
    }

    /// Starts `meter ROLE` (`serve`, `ingest` or `aggregate`) like [`Meter::start`].
    pub fn start_role(role: &'static str, dir: &Path, env: &[(&str, &str)]) -> Meter {
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Self::spawn(role, dir, Vec::new(), env)
    }

    /// Starts `meter serve` like [`Meter::start`], with the configuration file `config`.
    pub fn start_configured(dir: &Path, config: &Path, env: &[(&str, &str)]) -> Meter {
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Self::spawn("serve", dir, vec!["--config".into(), config.display().to_string()], env)
    }

    fn spawn(role: &'static str, dir: &Path, args: Vec<String>, env: Vec<(String, String)>) -> Meter {
        let mut cmd = Command::new(meter_bin());
        cmd.args([role, "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir)
            .args(&args)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("METER__BOOTSTRAP_ADMIN_KEY", "false");
        let (child, url) = spawn_announcing(cmd, "meter listening on ");
        Meter { child, url, dir: dir.to_path_buf(), role, args, env }
    }

    /// How many of the process's threads are named `name` (as Linux keeps it: its first 15 bytes).
    pub fn threads_named(&self, name: &str) -> usize {
        let name = &name.as_bytes()[..name.len().min(15)];
        let tasks = std::fs::read_dir(format!("/proc/{}/task", self.child.id())).expect("the process's threads");
        tasks
            .filter_map(|t| std::fs::read(t.ok()?.path().join("comm")).ok())
            .filter(|comm| comm.strip_suffix(b"\n").unwrap_or(comm) == name)
            .count()
    }

    /// The value of `field` in the process's `/proc/PID/status` (`THP_enabled`, `VmRSS`, …).
    pub fn status_field(&self, field: &str) -> String {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).expect("the process's status");
        let line = status.lines().find_map(|l| l.strip_prefix(field)?.strip_prefix(':'));
        line.unwrap_or_else(|| panic!("no {field} in /proc/PID/status")).trim().to_string()
    }

    /// Kills the process with SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("signal");
        self.child.wait().expect("exit status")
    }

    /// Freezes the process (SIGSTOP) for `pause`, then lets it go on (SIGCONT), as a long GC
    /// pause or a stalled VM would.
    pub fn freeze(&mut self, pause: Duration) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).expect("signal");
        std::thread::sleep(pause);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).expect("signal");
    }

    /// Starts a new process on the same data directory and settings.
    pub fn restart(&mut self) {
        self.kill9();
        *self = Self::spawn(self.role, &self.dir.clone(), self.args.clone(), self.env.clone());
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Creates a key with `meter keys create` and returns it.
pub fn create_key(dir: &Path, role: &str, tenant: Option<&str>) -> String {
    let mut cmd = Command::new(meter_bin());
    cmd.args(["keys", "create", "--role", role, "--data-dir"]).arg(dir);
    if let Some(t) = tenant {
        cmd.args(["--tenant", t]);
    }
    let out = cmd.output().expect("meter keys create runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Sends `method url` with `key` (and a JSON body); the status and the answer (JSON, or the
/// text when it is not JSON).
pub async fn call(method: reqwest::Method, url: String, key: &str, body: Option<Value>) -> (u16, Value) {
    let mut req = client().request(method, url).bearer_auth(key);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// An HTTP client for tests.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap()
}

/// `GET /api/v1/usage` as JSON.
pub async fn usage(url: &str, key: &str, tenant: &str) -> Value {
    usage_from(url, key, tenant, None).await
}

/// `GET /api/v1/usage` as JSON, from `source` (`live` or `store`) if given.
pub async fn usage_from(url: &str, key: &str, tenant: &str, source: Option<&str>) -> Value {
    let source = source.map(|s| format!("&source={s}")).unwrap_or_default();
    let r = client().get(format!("{url}/api/v1/usage?tenant={tenant}{source}")).bearer_auth(key).send().await.unwrap();
    assert_eq!(r.status(), 200, "usage of {tenant}");
    r.json().await.unwrap()
}

/// Period-to-date values by meter name.
pub fn values(usage: &Value) -> std::collections::BTreeMap<String, Value> {
    usage["meters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["name"].as_str().unwrap().to_string(), m["value"].clone()))
        .collect()
}

/// Waits until the watermark says everything acknowledged before `after_us` is counted.
pub async fn wait_counted(url: &str, key: &str, tenant: &str, after_us: i64) -> Value {
    wait_counted_in(url, key, tenant, after_us, None, Duration::from_secs(60)).await
}

/// [`wait_counted`] for `source` (`live` or `store`), waiting at most `patience`.
pub async fn wait_counted_in(
    url: &str,
    key: &str,
    tenant: &str,
    after_us: i64,
    source: Option<&str>,
    patience: Duration,
) -> Value {
    let deadline = Instant::now() + patience;
    loop {
        let u = usage_from(url, key, tenant, source).await;
        if let Some(w) = u["watermark"].as_str() {
            let w = time::OffsetDateTime::parse(w, &time::format_description::well_known::Rfc3339).unwrap();
            if (w.unix_timestamp_nanos() / 1000) as i64 >= after_us {
                return u;
            }
        }
        assert!(Instant::now() < deadline, "usage never caught up: {u}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Now, in microseconds.
pub fn now_us() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000) as i64
}

/// A Kafka for one test: a `meter dev kafka` process (librdkafka's mock cluster), or the broker
/// named by `METER_TEST_KAFKA=HOST:PORT`, with a topic and consumer group of the test's own.
pub struct DevKafka {
    child: Option<Child>,
    /// `host:port` to bootstrap from.
    pub bootstrap: String,
    /// The events topic.
    pub topic: String,
    /// The alerts topic.
    pub alerts_topic: String,
    /// The aggregators' consumer group.
    pub group: String,
    /// Partitions of the topic.
    pub partitions: u32,
}

impl DevKafka {
    /// A broker with a topic of `partitions` partitions.
    pub fn start(partitions: u32) -> DevKafka {
        if let Ok(bootstrap) = std::env::var("METER_TEST_KAFKA") {
            let suffix = now_us();
            return DevKafka {
                child: None,
                bootstrap,
                topic: format!("usage.events.test-{suffix}"),
                alerts_topic: format!("usage.alerts.test-{suffix}"),
                group: format!("meter-aggregator-test-{suffix}"),
                partitions,
            };
        }
        let mut cmd = Command::new(meter_bin());
        cmd.args(["dev", "kafka", "--partitions", &partitions.to_string()]);
        let (child, bootstrap) = spawn_announcing(cmd, "kafka bootstrap: ");
        DevKafka {
            child: Some(child),
            bootstrap,
            topic: "usage.events".into(),
            alerts_topic: "usage.alerts".into(),
            group: "meter-aggregator".into(),
            partitions,
        }
    }

    /// `METER__…` settings for meter processes on this broker.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("METER__LOG__URL", format!("kafka://{}", self.bootstrap)),
            ("METER__LOG__TOPIC", self.topic.clone()),
            ("METER__LOG__ALERTS_TOPIC", self.alerts_topic.clone()),
            ("METER__LOG__PARTITIONS", self.partitions.to_string()),
            ("METER__AGGREGATOR__GROUP", self.group.clone()),
        ]
    }
}

impl Drop for DevKafka {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `env` as `meter` processes take it.
pub fn env_refs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// Starts `cmd` (quiet logs, stdout piped) and waits for the stdout line starting with `prefix`;
/// returns the child and the first word after the prefix (an address).
fn spawn_announcing(mut cmd: Command, prefix: &'static str) -> (Child, String) {
    let mut child = cmd
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the meter binary starts");
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix(prefix) {
                let _ = tx.send(rest.split_whitespace().next().unwrap_or_default().to_string());
            }
        }
    });
    let address = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|_| panic!("no line {prefix:?} within 60 s"));
    (child, address)
}

/// Expected period totals per tenant, computed from the events themselves.
pub fn expected(events: &[Value]) -> BTreeMap<String, BTreeMap<&'static str, String>> {
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

/// The default meter named `k`.
pub fn want_key(k: &str) -> &'static str {
    ["work_orders", "work_orders_completed", "agent_invocations", "agent_tokens", "api_calls", "active_users"]
        .into_iter()
        .find(|x| *x == k)
        .expect("a default meter")
}

/// Waits until everything acknowledged by now is counted, then checks every tenant's six meters
/// against the distinct `events`; returns the number of tenants checked.
pub async fn assert_exact(url: &str, key: &str, events: &[Value]) -> usize {
    assert_exact_in(url, key, events, None, Duration::from_secs(60)).await
}

/// [`assert_exact`] for `source` (`live` or `store`), waiting at most `patience` for each tenant.
pub async fn assert_exact_in(
    url: &str,
    key: &str,
    events: &[Value],
    source: Option<&str>,
    patience: Duration,
) -> usize {
    let acked = now_us();
    let want = expected(events);
    for (tenant, meters) in &want {
        let usage = wait_counted_in(url, key, tenant, acked, source, patience).await;
        let got: BTreeMap<&str, String> =
            values(&usage).iter().map(|(k, v)| (want_key(k), v.as_str().unwrap().to_string())).collect();
        let expected: BTreeMap<&str, String> = meters.iter().map(|(k, v)| (*k, v.clone())).collect();
        assert_eq!(got, expected, "tenant {tenant}");
    }
    want.len()
}

/// Events per request of a [`Stream`].
pub const BATCH: usize = 100;

/// Clients sending `events` in batches of [`BATCH`], each batch to one of `urls` in turn, retrying
/// every failure until it gets a 200; one batch in ten is sent twice, as by a client that never saw
/// the first answer.
pub struct Stream {
    /// Batches acknowledged.
    pub done: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Batches in all.
    pub batches: usize,
    retries: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Stream {
    /// Starts `workers` clients.
    pub fn start(
        events: std::sync::Arc<Vec<Value>>,
        urls: std::sync::Arc<std::sync::RwLock<Vec<String>>>,
        key: String,
        workers: usize,
    ) -> Stream {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let batches = events.len() / BATCH;
        let next = std::sync::Arc::new(AtomicUsize::new(0));
        let done = std::sync::Arc::new(AtomicUsize::new(0));
        let retries = std::sync::Arc::new(AtomicUsize::new(0));
        let tasks = (0..workers)
            .map(|worker| {
                let (events, next, done, retries, urls, key) =
                    (events.clone(), next.clone(), done.clone(), retries.clone(), urls.clone(), key.clone());
                tokio::spawn(async move {
                    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
                    loop {
                        let b = next.fetch_add(1, Ordering::SeqCst);
                        if b >= batches {
                            break;
                        }
                        let sends = if (b + worker) % 10 == 0 { 2 } else { 1 };
                        for attempt in 0..sends {
                            let body = serde_json::json!({ "events": &events[b * BATCH..(b + 1) * BATCH] });
                            loop {
                                let u = {
                                    let urls = urls.read().unwrap();
                                    urls[(b + attempt) % urls.len()].clone()
                                };
                                let sent = http
                                    .post(format!("{u}/api/v1/events/batch"))
                                    .bearer_auth(&key)
                                    .json(&body)
                                    .send()
                                    .await;
                                if matches!(&sent, Ok(r) if r.status() == 200) {
                                    break;
                                }
                                retries.fetch_add(1, Ordering::Relaxed);
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                        }
                        done.fetch_add(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        Stream { done, batches, retries, tasks }
    }

    /// Waits for every batch to be acknowledged; returns the number of retried requests.
    pub async fn finish(self) -> usize {
        for t in self.tasks {
            t.await.unwrap();
        }
        assert_eq!(self.done.load(std::sync::atomic::Ordering::SeqCst), self.batches);
        self.retries.load(std::sync::atomic::Ordering::Relaxed)
    }
}
