//! The sync's throughput against the local stand-in: `N` invoices (one per tenant, `LINES` lines
//! each) of one close, pushed by the outbox worker to localstripe through the proxy (no faults;
//! it counts requests), at the rate limit `RATE` (requests a second), each with the first step
//! of its collection (a charge, which localstripe refuses for want of a payment method, and the
//! invoice read back: two requests; before the collection was built, a push alone took about
//! 10.0 requests at LINES=4).
//!
//!   cargo bench -p meter-billing-sync --bench sync                 # N=1000 LINES=4 RATE=20
//!   N=10000 RATE=100 cargo bench -p meter-billing-sync --bench sync
//!
//! Prints the requests per invoice, invoices a second, and the whole time; and which limit bound
//! (the rate limit, when requests a second came within 5% of it; otherwise the stand-in).

use meter_billing::ledger::outbox::{OpKind, OpState};
use meter_billing_sync::Provider;
use meter_billing_sync::stripe::{Client, Settings, Stripe};
use meter_billing_sync::testing::proxy::Proxy;
use meter_billing_sync::testing::{KEY, LocalStripe, billing_of, invoice, ledger_with};
use meter_billing_sync::worker::{self, Worker};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[allow(clippy::print_stdout)]
#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let (n, lines, rate) = (env("N", 1000), env("LINES", 4), env("RATE", 20));
    let stand_in = LocalStripe::start();
    let proxy = Proxy::start(&stand_in.url, 0, Duration::from_secs(30)).await;
    let dir = tempfile::tempdir().unwrap();
    let amounts: Vec<String> = (0..lines).map(|i| format!("{}.{:02}", 10 + i * 37 / 100, i * 37 % 100)).collect();
    let amounts: Vec<&str> = amounts.iter().map(String::as_str).collect();
    let invoices: Vec<_> = (0..n).map(|i| invoice(&format!("tenant-{i:05}"), "EUR", &amounts)).collect();
    let ledger = ledger_with(&dir.path().join("billing.db"), invoices).await;
    let settings = Settings {
        api_base: proxy.url.clone(),
        rate_limit: NonZeroU32::new(rate as u32).unwrap(),
        ..Settings::new(KEY)
    };
    let stripe: Arc<dyn Provider> = Arc::new(Stripe::new(Client::new(settings).unwrap(), false));
    let (subs, notices) = billing_of(&ledger, dir.path(), meter_billing::subscriptions::DEFAULT_GRACE);
    let settings = worker::Settings { batch: 16, ..Default::default() };
    let worker = Worker::new(subs, stripe, notices, settings);
    let started = Instant::now();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    let mut last_report = Instant::now();
    loop {
        // Only what is still pending: every push is written by the close, and each first
        // collection step when its push is done, so none pending means all done.
        let pending = ledger.operations(Some(OpState::Pending), None).await.unwrap();
        let pushes = pending.iter().filter(|o| o.kind == OpKind::PushInvoice).count();
        let firsts = pending.iter().filter(|o| o.kind == OpKind::Collect && o.subject.ends_with("/first")).count();
        if pushes == 0 && firsts == 0 {
            break;
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            eprintln!("{}/{n} invoices pushed after {:.0} s", n - pushes, started.elapsed().as_secs_f64());
            last_report = Instant::now();
        }
        // Every 2 s: each look holds the ledger's connection while it reads.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let took = started.elapsed().as_secs_f64();
    let _ = stop.send(());
    running.await.unwrap();
    let ops = ledger.operations(None, None).await.unwrap();
    let pushes = || ops.iter().filter(|o| o.kind == OpKind::PushInvoice);
    let done = pushes().filter(|o| o.state == OpState::Done).count();
    assert_eq!(done, n, "every invoice synced: {:?}", pushes().find(|o| o.state != OpState::Done));
    let collected = ops.iter().filter(|o| o.kind == OpKind::Collect && o.state == OpState::Done).count();
    assert_eq!(collected, n, "every invoice's first collection step made");
    let requests = proxy.counts().received;
    let per_second = requests as f64 / took;
    let binds = if per_second >= rate as f64 * 0.95 { "the rate limit" } else { "the stand-in" };
    println!(
        "N={n} LINES={lines} RATE={rate}: {requests} requests, {:.2} per invoice; {:.1} invoices/s, {per_second:.1} requests/s; {took:.1} s in all; bound by {binds}",
        requests as f64 / n as f64,
        n as f64 / took,
    );
}
