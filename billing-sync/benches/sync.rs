//! The sync's throughput against the local stand-in: `N` invoices (one per tenant, `LINES` lines
//! each) of one close, pushed by the outbox worker to localstripe through the proxy (no faults;
//! it counts requests), at the rate limit `RATE` (requests a second).
//!
//!   cargo bench -p meter-billing-sync --bench sync                 # N=1000 LINES=4 RATE=20
//!   N=10000 RATE=100 cargo bench -p meter-billing-sync --bench sync
//!
//! Prints the requests per invoice, invoices a second, and the whole time; and which limit bound
//! (the rate limit, when requests a second came within 5% of it; otherwise the stand-in).

use meter_billing::Ledger;
use meter_billing::close::Close;
use meter_billing::ledger::SqliteLedger;
use meter_billing::ledger::outbox::OpState;
use meter_billing_sync::Provider;
use meter_billing_sync::stripe::{Client, Settings, Stripe};
use meter_billing_sync::testing::proxy::Proxy;
use meter_billing_sync::testing::{KEY, LocalStripe};
use meter_billing_sync::worker::{self, Worker};
use meter_rater::{Invoice, Line, LineKind, Lineage};
use rust_decimal::Decimal;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn invoice(tenant: &str, lines: usize) -> Invoice {
    let id = format!("inv_{tenant}");
    let lines: Vec<Line> = (0..lines)
        .map(|i| Line {
            id: format!("{id}_{:03}", i + 1),
            kind: LineKind::Overage,
            description: format!("line {}", i + 1),
            meter: None,
            quantity: None,
            amount: Decimal::new(1000 + i as i64 * 37, 2),
            lineage: Lineage {
                meters: Default::default(),
                watermark_us: None,
                price_version: "2026-01".into(),
                inputs_hash: format!("h{i}"),
            },
        })
        .collect();
    let total = lines.iter().map(|l| l.amount).sum();
    Invoice {
        id,
        tenant: tenant.into(),
        subscription: format!("sub_{tenant}"),
        period: "2026-10".parse().unwrap(),
        currency: "EUR".parse().unwrap(),
        price_version: "2026-01".into(),
        plan: Some("growth".into()),
        lines,
        total,
    }
}

#[allow(clippy::print_stdout)]
#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let (n, lines, rate) = (env("N", 1000), env("LINES", 4), env("RATE", 20));
    let stand_in = LocalStripe::start();
    let proxy = Proxy::start(&stand_in.url, 0, Duration::from_secs(30)).await;
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::new(Arc::new(SqliteLedger::open(&dir.path().join("billing.db")).unwrap()));
    let book = meter_rater::PriceBook::parse(
        meter_rater::pricebook::SAMPLE,
        &["work_orders", "work_orders_completed", "agent_invocations", "agent_tokens", "api_calls", "active_users"],
        &["active_users"],
    )
    .unwrap();
    let invoices: Vec<Invoice> = (0..n).map(|i| invoice(&format!("tenant-{i:05}"), lines)).collect();
    let close = Close {
        period: "2026-10".parse().unwrap(),
        closed_at: String::new(),
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
    ledger.record(close, book.version("2026-01").unwrap()).await.unwrap();
    let settings = Settings {
        api_base: proxy.url.clone(),
        rate_limit: NonZeroU32::new(rate as u32).unwrap(),
        ..Settings::new(KEY)
    };
    let stripe: Arc<dyn Provider> = Arc::new(Stripe::new(Client::new(settings).unwrap(), false));
    let worker = Worker::new(ledger.clone(), stripe, worker::Settings { batch: 16, ..Default::default() });
    let started = Instant::now();
    let mut last_report = Instant::now();
    loop {
        let now = meter_schemas::period::now_us();
        if worker.work_due(now).await.unwrap() == 0 {
            break;
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            let done = ledger.operations(Some(OpState::Done), None).await.unwrap().len();
            eprintln!("{done}/{n} invoices synced after {:.0} s", started.elapsed().as_secs_f64());
            last_report = Instant::now();
        }
    }
    let took = started.elapsed().as_secs_f64();
    let ops = ledger.operations(None, None).await.unwrap();
    let done = ops.iter().filter(|o| o.state == OpState::Done).count();
    assert_eq!(done, n, "every invoice synced: {:?}", ops.iter().find(|o| o.state != OpState::Done));
    let requests = proxy.counts().received;
    let per_second = requests as f64 / took;
    let binds = if per_second >= rate as f64 * 0.95 { "the rate limit" } else { "the stand-in" };
    println!(
        "N={n} LINES={lines} RATE={rate}: {requests} requests, {:.2} per invoice; {:.1} invoices/s, {per_second:.1} requests/s; {took:.1} s in all; bound by {binds}",
        requests as f64 / n as f64,
        n as f64 / took,
    );
}
