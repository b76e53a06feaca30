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

/// October 2026's invoice of `tenant` (`inv_{tenant}_2026-10`) in `currency`, one line per
/// amount (`inv_{tenant}_2026-10_001`, …, inputs hashes `hash0`, …).
pub fn invoice(tenant: &str, currency: &str, amounts: &[&str]) -> meter_rater::Invoice {
    use meter_rater::{Line, LineKind, Lineage};
    let id = format!("inv_{tenant}_2026-10");
    let lines: Vec<Line> = amounts
        .iter()
        .enumerate()
        .map(|(i, a)| Line {
            id: format!("{id}_{:03}", i + 1),
            kind: LineKind::Overage,
            description: format!("line {}", i + 1),
            meter: None,
            quantity: None,
            amount: a.parse().expect("a decimal amount"),
            lineage: Lineage {
                meters: Default::default(),
                watermark_us: None,
                price_version: "2026-01".into(),
                inputs_hash: format!("hash{i}"),
            },
            service: None,
        })
        .collect();
    let total = lines.iter().map(|l| l.amount).sum();
    meter_rater::Invoice {
        id,
        tenant: tenant.into(),
        subscription: format!("sub_{tenant}"),
        period: "2026-10".parse().expect("a period"),
        currency: currency.parse().expect("a currency"),
        price_version: "2026-01".into(),
        plan: Some("growth".into()),
        lines,
        total,
    }
}

/// A SQLite ledger at `path` in which October 2026 is closed with `invoices` (rated with the
/// sample price book), so that its outbox holds one push per invoice with lines.
pub async fn ledger_with(path: &Path, invoices: Vec<meter_rater::Invoice>) -> meter_billing::Ledger {
    let ledger = meter_billing::Ledger::new(std::sync::Arc::new(
        meter_billing::ledger::SqliteLedger::open(path).expect("a ledger opens"),
    ));
    let meters =
        ["work_orders", "work_orders_completed", "agent_invocations", "agent_tokens", "api_calls", "active_users"];
    let book = meter_rater::PriceBook::parse(meter_rater::pricebook::SAMPLE, &meters, &["active_users"])
        .expect("the sample price book parses");
    let close = meter_billing::Close {
        period: "2026-10".parse().expect("a period"),
        closed_at: "2026-11-02T00:00:00Z".into(),
        closed_us: 1,
        watermark: String::new(),
        watermark_us: 0,
        complete: true,
        price_version: "2026-01".into(),
        invoices,
        totals: Default::default(),
        report: vec![],
        revisions: Default::default(),
    };
    ledger.record(close, book.version("2026-01").expect("the sample's list")).await.expect("the close is recorded");
    ledger
}

/// Subscriptions over `ledger` (the sample price book, live counters and webhooks in `dir`),
/// with `grace` from a failed payment to suspension, and the webhooks that tell tenants.
pub fn billing_of(
    ledger: &meter_billing::Ledger,
    dir: &Path,
    grace: std::time::Duration,
) -> (meter_billing::Subscriptions, std::sync::Arc<meter_webhooks::Webhooks>) {
    use std::sync::Arc;
    let meters =
        ["work_orders", "work_orders_completed", "agent_invocations", "agent_tokens", "api_calls", "active_users"];
    let book = Arc::new(
        meter_rater::PriceBook::parse(meter_rater::pricebook::SAMPLE, &meters, &["active_users"])
            .expect("the sample price book parses"),
    );
    let live = Arc::new(
        meter_store::SqliteStore::open(&dir.join("usage.db"), meter_sqlite::Durability::Normal).expect("a store opens"),
    );
    let subs = meter_billing::Subscriptions {
        ledger: ledger.clone(),
        allowances: Arc::new(meter_billing::PlanAllowances::new(book.clone())),
        book,
        live,
        grace,
    };
    let settings = meter_webhooks::Settings { allow_private_targets: true, ..Default::default() };
    let webhooks = Arc::new(meter_webhooks::Webhooks::open(&dir.join("webhooks.db"), settings).expect("webhooks open"));
    (subs, webhooks)
}

/// Client settings for tests against `base` (the proxy, or localstripe itself): a high rate
/// limit, quick retries, `attempts` tries of a request each waiting at most `timeout`.
pub fn quick_settings(base: &str, attempts: u32, timeout: std::time::Duration) -> crate::stripe::Settings {
    use std::time::Duration;
    crate::stripe::Settings {
        api_base: base.to_string(),
        rate_limit: std::num::NonZeroU32::new(200).expect("not zero"),
        attempts,
        min_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(100),
        timeout,
        ..crate::stripe::Settings::new(KEY)
    }
}

/// The Stripe provider through `base` with [`quick_settings`].
pub fn quick_stripe(base: &str, attempts: u32, timeout: std::time::Duration) -> std::sync::Arc<dyn crate::Provider> {
    let client = crate::stripe::Client::new(quick_settings(base, attempts, timeout)).expect("a client");
    std::sync::Arc::new(crate::stripe::Stripe::new(client, false))
}

/// Works everything the outbox holds due at `now` (faulted requests included: tried again at the
/// same instant, the clock standing still), failing the test if it never settles.
pub async fn work_at(worker: &crate::worker::Worker, ledger: &meter_billing::Ledger, now: i64) {
    use meter_billing::ledger::outbox::OpState;
    for _ in 0..200 {
        worker.work_due(now).await.expect("the worker works");
        let pending = ledger.operations(Some(OpState::Pending), None).await.expect("the ledger reads");
        if pending.iter().all(|o| o.next_us > now) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    panic!("still due at {now}: {:?}", ledger.operations(Some(OpState::Pending), None).await);
}
