//! A month's revenue for a fixture of subscriptions equals a table computed by hand.
//!
//! November 2026, the sample price list (USD; starter 5,000 a month, 13,500 a quarter, 45,000 a
//! year less 15% annual prepay; professional 15,000 a month):
//!
//! | tenant | what | MRR 31 Oct | MRR 30 Nov | movement |
//! |---|---|---:|---:|---|
//! | mon | starter monthly since 5 Oct | 5,000 | 5,000 | |
//! | qtr | starter quarterly since 10 Sep | 4,500 | 4,500 | |
//! | ann | starter annual from 3 Nov (45,000 × 0.85 / 12) | 0 | 3,187.50 | new 3,187.50 |
//! | upg | starter, upgraded to professional on 15 Nov | 5,000 | 15,000 | expansion 10,000 |
//! | down | professional, down to starter on 10 Nov | 15,000 | 5,000 | contraction 10,000 |
//! | cxl | professional since 1 Sep, cancelled 20 Oct: runs to 1 Nov | 15,000 | 0 | churn 15,000 |
//! | back | starter since 1 Aug, suspended in Sep, paid again 20 Nov | 0 | 5,000 | reactivation 5,000 |
//! | trial | starter trial from 25 Nov | 0 | 0 | |
//! | ret | a trial from 1 Aug that converted on 15 Aug and ran out on 15 Sep (not renewing; no entry was written for either), then starter monthly again from 5 Nov | 0 | 5,000 | reactivation 5,000 |
//!
//! MRR 44,500 → 42,687.50; net new −1,812.50; ARR 512,250.

use meter_billing::revenue::{Movements, revenue};
use meter_rater::{Command, Cycle, Setup, Subscription};
use rust_decimal::Decimal;

fn at(text: &str) -> i64 {
    let t = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).unwrap();
    (t.unix_timestamp_nanos() / 1_000) as i64
}

#[test]
fn a_months_mrr_arr_and_movements_equal_a_table_computed_by_hand() {
    let book = meter_billing::testing::sample_book();
    let list = book.version("2026-01").unwrap();
    let sub = |tenant: &str, plan: &str, cycle, trial, when: &str| {
        let setup = Setup { plan: plan.into(), cycle, term_years: 1, auto_renew: true, trial };
        Subscription::create(&format!("sub_{tenant}"), tenant, &setup, at(when), "k", list).unwrap()
    };
    let act = |s: &mut Subscription, c: Command, when: &str| s.apply(&c, at(when), "k", list).unwrap();
    let mon = sub("mon", "starter", Cycle::Monthly, false, "2026-10-05T00:00:00Z");
    let qtr = sub("qtr", "starter", Cycle::Quarterly, false, "2026-09-10T00:00:00Z");
    let ann = sub("ann", "starter", Cycle::Annual, false, "2026-11-03T00:00:00Z");
    let mut upg = sub("upg", "starter", Cycle::Monthly, false, "2026-10-01T00:00:00Z");
    act(&mut upg, Command::ChangePlan { plan: "professional".into(), cycle: None }, "2026-11-15T00:00:00Z");
    let mut down = sub("down", "professional", Cycle::Monthly, false, "2026-10-01T00:00:00Z");
    act(&mut down, Command::ChangePlan { plan: "starter".into(), cycle: None }, "2026-11-10T00:00:00Z");
    let mut cxl = sub("cxl", "professional", Cycle::Monthly, false, "2026-09-01T00:00:00Z");
    act(&mut cxl, Command::Cancel, "2026-10-20T00:00:00Z");
    let mut back = sub("back", "starter", Cycle::Monthly, false, "2026-08-01T00:00:00Z");
    act(&mut back, Command::PaymentFailed { grace_us: None }, "2026-09-02T00:00:00Z");
    act(&mut back, Command::Reactivate, "2026-11-20T00:00:00Z");
    let trial = sub("trial", "starter", Cycle::Monthly, true, "2026-11-25T00:00:00Z");
    let once = Setup { plan: "starter".into(), cycle: Cycle::Monthly, term_years: 1, auto_renew: false, trial: true };
    let ret_then = Subscription::create("sub_ret_1", "ret", &once, at("2026-08-01T00:00:00Z"), "k", list).unwrap();
    let ret_now = sub("ret", "starter", Cycle::Monthly, false, "2026-11-05T00:00:00Z");
    let subs = [mon, qtr, ann, upg, down, cxl, back, trial, ret_then, ret_now];

    let r = revenue(&subs, &book, "2026-11".parse().unwrap());
    let d = |s: &str| s.parse::<Decimal>().unwrap();
    let usd = &r.currencies["USD"];
    assert_eq!((usd.mrr_start, usd.mrr_end, usd.arr_end), (d("44500.00"), d("42687.50"), d("512250.00")));
    let want = Movements {
        new: d("3187.50"),
        expansion: d("10000.00"),
        contraction: d("10000.00"),
        churn: d("15000.00"),
        reactivation: d("10000.00"),
        net_new: d("-1812.50"),
    };
    assert_eq!(usd.movements, want);
    assert_eq!(usd.mrr_end - usd.mrr_start, usd.movements.net_new);
    assert_eq!((usd.paying_start, usd.paying_end), (5, 7));
    let states: Vec<(&str, usize)> = r.by_state.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    assert_eq!(states, [("active", 7), ("expired", 2), ("trial", 1)]);

    // October, for the same book: the annual one and the trial were not there yet; nothing
    // was cancelled out yet.
    let oct = revenue(&subs, &book, "2026-10".parse().unwrap());
    assert_eq!(oct.currencies["USD"].mrr_end, d("44500.00"));
    // August: ret paid from its trial's end on 15 August, though no entry says so.
    let aug = revenue(&subs, &book, "2026-08".parse().unwrap());
    assert_eq!(aug.currencies["USD"].movements.new, d("10000.00"), "back on 1 Aug and ret on 15 Aug");
}
