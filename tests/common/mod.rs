//! Drives real `meter` processes for the end-to-end tests.
#![allow(dead_code)]

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The `meter` binary under test.
pub fn meter_bin() -> &'static str {
    env!("CARGO_BIN_EXE_meter")
}

/// A running `meter serve`.
pub struct Meter {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// Its data directory.
    pub dir: PathBuf,
    env: Vec<(String, String)>,
}

impl Meter {
    /// Starts `meter serve` on a free port with `env` (METER__… overrides) and waits until it listens.
    pub fn start(dir: &Path, env: &[(&str, &str)]) -> Meter {
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Self::spawn(dir, env)
    }

    fn spawn(dir: &Path, env: Vec<(String, String)>) -> Meter {
        let mut cmd = Command::new(meter_bin());
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("METER__BOOTSTRAP_ADMIN_KEY", "false");
        let (child, url) = spawn_announcing(cmd, "meter listening on ");
        Meter { child, url, dir: dir.to_path_buf(), env }
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

    /// Starts a new process on the same data directory and settings.
    pub fn restart(&mut self) {
        self.kill9();
        *self = Self::spawn(&self.dir.clone(), self.env.clone());
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

/// An HTTP client for tests.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap()
}

/// `GET /api/v1/usage` as JSON.
pub async fn usage(url: &str, key: &str, tenant: &str) -> Value {
    let r = client().get(format!("{url}/api/v1/usage?tenant={tenant}")).bearer_auth(key).send().await.unwrap();
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
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let u = usage(url, key, tenant).await;
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

/// A `meter dev kafka` process: librdkafka's mock cluster as a broker for `meter serve`.
pub struct DevKafka {
    child: Child,
    /// `host:port` to bootstrap from.
    pub bootstrap: String,
}

impl DevKafka {
    /// Starts the mock cluster with `partitions` partitions of `usage.events`.
    pub fn start(partitions: u32) -> DevKafka {
        let mut cmd = Command::new(meter_bin());
        cmd.args(["dev", "kafka", "--partitions", &partitions.to_string()]);
        let (child, bootstrap) = spawn_announcing(cmd, "kafka bootstrap: ");
        DevKafka { child, bootstrap }
    }

    /// `METER__LOG__URL` for a `meter serve` on this broker.
    pub fn log_url(&self) -> String {
        format!("kafka://{}", self.bootstrap)
    }
}

impl Drop for DevKafka {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
