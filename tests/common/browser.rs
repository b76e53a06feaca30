//! Debian's Chromium, headless, driven over WebDriver (`chromedriver`, `fantoccini`), for the
//! browser tests and the dashboard's benchmark. `deploy/test.sh` installs both.
#![allow(dead_code)]

use fantoccini::{Client, ClientBuilder};
use serde_json::{Value, json};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// chromedriver on a free loopback port, killed when dropped.
pub struct Driver {
    child: Child,
    url: String,
    /// The browsers' profile directories, removed with the driver.
    profiles: std::sync::Mutex<Vec<tempfile::TempDir>>,
}

impl Drop for Driver {
    /// chromedriver and every browser it started, which share its process group: none is left
    /// running, whether the test passed or not.
    fn drop(&mut self) {
        let group = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
        // The browsers are gone: their profiles can go too (TempDir removes each on drop).
        self.profiles.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

pub fn driver() -> Driver {
    assert!(
        std::path::Path::new(CHROMEDRIVER).exists() && std::path::Path::new(CHROMIUM).exists(),
        "{CHROMIUM} and {CHROMEDRIVER} are needed: apt-get install -y chromium chromium-driver (deploy/test.sh does)"
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new(CHROMEDRIVER)
        .process_group(0)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Driver { child, url: format!("http://127.0.0.1:{port}"), profiles: Default::default() }
}

pub async fn browser(driver: &Driver) -> Client {
    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().to_path_buf();
    driver.profiles.lock().unwrap_or_else(|e| e.into_inner()).push(dir);
    let caps = json!({
        "goog:chromeOptions": {
            "binary": CHROMIUM,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1280,2200", format!("--user-data-dir={}", profile.display()),
            ],
        }
    });
    let caps = caps.as_object().unwrap().clone();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        match ClientBuilder::new(connector).capabilities(caps.clone()).connect(&driver.url).await {
            Ok(c) => return c,
            Err(e) => {
                assert!(Instant::now() < deadline, "chromedriver did not start: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

pub async fn screenshot(c: &Client, name: &str) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{name}.png")), c.screenshot().await.unwrap()).unwrap();
}

/// Waits until the page says it is ready, or shows a message; nothing on it may have been
/// blocked by the Content-Security-Policy.
pub async fn ready(c: &Client) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let state = c
            .execute("return [document.body.dataset.ready || null, document.getElementById('message').hidden ? null : document.getElementById('message').textContent]", vec![])
            .await
            .unwrap();
        if !state[0].is_null() || !state[1].is_null() {
            let blocked =
                c.execute("return document.documentElement.dataset.cspViolations || null", vec![]).await.unwrap();
            assert!(blocked.is_null(), "the Content-Security-Policy blocked: {blocked}");
            return state;
        }
        assert!(Instant::now() < deadline, "the page never got ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
