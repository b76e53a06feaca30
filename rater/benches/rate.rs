//! Rates SUBSCRIPTIONS subscriptions (default 1,000,000) with 6 meters each, on one thread and
//! on every core, as a period close does, and prints the time of each.
//!
//! `cargo bench -p meter-rater --bench rate` (`SUBSCRIPTIONS=100000` for a quick run).

use meter_rater::pricebook::SAMPLE;
use meter_rater::{Command, Cycle, Invoice, PriceBook, Setup, Subscription, Usage, rate};
use meter_schemas::Period;
use rust_decimal::Decimal;
use std::time::Instant;

const METERS: &[&str] =
    &["work_orders", "work_orders_completed", "agent_invocations", "agent_tokens", "api_calls", "active_users"];

#[allow(clippy::print_stdout)]
fn main() {
    let n: usize = std::env::var("SUBSCRIPTIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let book = PriceBook::parse(SAMPLE, METERS, &["active_users"]).unwrap();
    let period: Period = "2026-11".parse().unwrap();
    let list = book.for_period(period).unwrap();
    let start = period.start_us();
    let day = 86_400_000_000i64;

    let t = Instant::now();
    let plans = [("starter", Cycle::Monthly), ("professional", Cycle::Quarterly), ("enterprise", Cycle::Annual)];
    let work: Vec<(Subscription, Usage)> = (0..n)
        .map(|i| {
            let (plan, cycle) = plans[i % 3];
            let setup =
                Setup { plan: plan.into(), cycle, term_years: 1 + (i % 2) as u32, auto_renew: true, trial: false };
            let tenant = format!("tenant-{i:07}");
            let created = start - (i as i64 % 60) * day;
            let mut s = Subscription::create(&format!("sub_{i}"), &tenant, &setup, created, "bench", list).unwrap();
            if i % 10 == 0 {
                let to = Command::ChangePlan { plan: plans[(i / 10 + 1) % 3].0.into(), cycle: None };
                let _ = s.apply(&to, start + 10 * day, "bench", list);
            }
            s.advance(period.end_us() - 1);
            let totals = METERS
                .iter()
                .enumerate()
                .map(|(m, name)| (name.to_string(), Decimal::from((i * 7919 + m * 104_729) % 3_000_000)))
                .collect();
            (s, Usage { totals, watermark_us: Some(period.end_us()) })
        })
        .collect();
    println!("set-up: {n} subscriptions in {:.2} s", t.elapsed().as_secs_f64());

    let rate_all = |chunk: &[(Subscription, Usage)]| -> (usize, Decimal) {
        let mut lines = 0;
        let mut total = Decimal::ZERO;
        for (s, u) in chunk {
            let inv: Invoice = rate(&s.tenant, &s.id, &s.entries, period, Some(u), list).unwrap();
            lines += inv.lines.len();
            total += inv.total;
        }
        (lines, total)
    };

    let t = Instant::now();
    let (lines, total) = rate_all(&work);
    let one = t.elapsed().as_secs_f64();
    println!("one thread: {n} subscriptions, {lines} lines, total {total}, in {one:.2} s ({:.0}/s)", n as f64 / one);

    let threads = std::thread::available_parallelism().map_or(1, |p| p.get());
    let t = Instant::now();
    let parts: Vec<(usize, Decimal)> = std::thread::scope(|scope| {
        let handles: Vec<_> = work.chunks(n.div_ceil(threads)).map(|c| scope.spawn(move || rate_all(c))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let all = t.elapsed().as_secs_f64();
    let (lines2, total2) = parts.into_iter().fold((0, Decimal::ZERO), |a, b| (a.0 + b.0, a.1 + b.1));
    assert_eq!((lines2, total2), (lines, total));
    println!("{threads} threads: {n} subscriptions in {all:.2} s ({:.0}/s)", n as f64 / all);
}
