//! The Stripe stand-in of the tests (feature `testing`): localstripe (PyPI, pinned), started on
//! loopback, behind a proxy that injects faults and enforces idempotency keys as Stripe does.

pub mod proxy;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

/// What the tests install into `target/localstripe-venv`: localstripe and the versions of its
/// dependencies it was checked with (it pins none itself).
const PACKAGES: &[&str] = &["localstripe==1.15.10", "aiohttp==3.14.5", "python-dateutil==4.0.0"];

fn python() -> PathBuf {
    static READY: OnceLock<PathBuf> = OnceLock::new();
    READY.get_or_init(install).clone()
}

fn install() -> PathBuf {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/localstripe-venv");
    let python = venv.join("bin/python");
    let ready = python.exists()
        && Command::new(&python).args(["-c", "import localstripe, aiohttp"]).status().is_ok_and(|s| s.success());
    if !ready {
        let made = Command::new("python3").args(["-m", "venv"]).arg(&venv).status().expect("python3 runs");
        assert!(made.success(), "python3 -m venv failed");
        let pip = Command::new(venv.join("bin/pip")).args(["install", "-q"]).args(PACKAGES).status().expect("pip runs");
        assert!(pip.success(), "pip install {PACKAGES:?} failed");
    }
    python
}

/// A localstripe process; killed when dropped.
pub struct LocalStripe {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
}

impl LocalStripe {
    /// Installs (once) and starts a fresh instance.
    pub fn start() -> Self {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/testing/run_localstripe.py");
        let mut child = Command::new(python())
            .arg(script)
            .arg("0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("localstripe starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line).expect("localstripe prints its port");
        let port: u16 = line.trim().parse().unwrap_or_else(|_| panic!("localstripe printed {line:?}, not a port"));
        LocalStripe { child, url: format!("http://127.0.0.1:{port}") }
    }
}

impl Drop for LocalStripe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The API key the tests use (localstripe takes any `sk_…`).
pub const KEY: &str = "sk_test_meter";

/// Sends a form request straight to localstripe (fixtures and checks, not meter's requests).
pub async fn direct(url: &str, method: reqwest::Method, path: &str, form: &[(&str, &str)]) -> serde_json::Value {
    let req = reqwest::Client::new().request(method, format!("{url}{path}")).bearer_auth(KEY);
    let req = if form.is_empty() { req } else { req.form(form) };
    let reply = req.send().await.expect("localstripe answers");
    let status = reply.status();
    let body = reply.text().await.unwrap();
    assert!(status.is_success(), "{path}: {status} {body}");
    serde_json::from_str(&body).unwrap()
}
