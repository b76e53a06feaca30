//! A month's billed, collected and recognised revenue, and its deferred revenue (ASC 606), for a
//! fixture of invoices rated by the rater equal a table computed by hand.
//!
//! November 2026 (30 days), the sample price list (USD). Each fee is recognised by the
//! microsecond over what it pays for, its pieces rounded cumulatively to the cent:
//!
//! | tenant | line (billed in) | service | recognised in Nov | deferred 1 Nov | deferred 1 Dec |
//! |---|---|---|---:|---:|---:|
//! | mon | base 5,000 (Oct) | 5 Oct – 5 Nov, 31 days | 5,000 − round(5,000 × 27/31) = 645.16 | 645.16 | 0 |
//! | mon | base 5,000 (Nov) | 5 Nov – 5 Dec, 30 days | round(5,000 × 26/30) = 4,333.33 | | 666.67 |
//! | mon | overage 123.45 (Nov, by hand) | November | 123.45 (usage) | | |
//! | qtr | base 13,500 (Sep) | 10 Sep – 10 Dec, 91 days | round(13,500 × 82/91) − round(13,500 × 52/91) = 12,164.84 − 7,714.29 = 4,450.55 | 5,785.71 | 1,335.16 |
//! | ann | base 45,000 (Nov) | 3 Nov 2026 – 3 Nov 2027, 365 days | round(45,000 × 28/365) = 3,452.05 | | 41,547.95 |
//! | ann | annual prepay −6,750 (Nov) | the same | round(−6,750 × 28/365) = −517.81 | | −6,232.19 |
//! | upg | base 5,000 (Oct) | October | 0 | 0 | 0 |
//! | upg | base 5,000, credit −2,666.67, charge 8,000 (Nov; upgraded 15 Nov) | November | 10,333.33 | | 0 |
//!
//! Billed in November: fees 5,000 + 38,250 + 10,333.33 = 53,583.33, usage 123.45, in all
//! 53,706.78. Recognised: fees 22,696.61, usage 123.45, in all 22,820.06. Deferred: 6,430.87 →
//! 37,317.59 (= 6,430.87 + 53,583.33 − 22,696.61). Collected by 5 Dec: mon's invoice, paid 3 Dec
//! (5,123.45) under its second push at the provider (the first voided); upg's was paid 10 Dec,
//! ann's is open.

use meter_billing::ledger::outbox::RemoteInvoice;
use meter_billing::recognition::{Recognition, recognition};
use meter_rater::{Command, Cycle, Invoice, LineKind, Setup, Subscription, rate};
use meter_schemas::Period;
use rust_decimal::Decimal;

fn at(text: &str) -> i64 {
    let t = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).unwrap();
    (t.unix_timestamp_nanos() / 1_000) as i64
}

fn d(s: &str) -> Decimal {
    s.parse().unwrap()
}

#[test]
fn billed_collected_recognised_and_deferred_equal_a_table_computed_by_hand() {
    let book = meter_billing::testing::sample_book();
    let list = book.version("2026-01").unwrap();
    let sub = |tenant: &str, cycle, when: &str| {
        let setup = Setup { plan: "starter".into(), cycle, term_years: 1, auto_renew: true, trial: false };
        Subscription::create(&format!("sub_{tenant}"), tenant, &setup, at(when), "k", list).unwrap()
    };
    let mon = sub("mon", Cycle::Monthly, "2026-10-05T00:00:00Z");
    let qtr = sub("qtr", Cycle::Quarterly, "2026-09-10T00:00:00Z");
    let ann = sub("ann", Cycle::Annual, "2026-11-03T00:00:00Z");
    let mut upg = sub("upg", Cycle::Monthly, "2026-10-01T00:00:00Z");
    let upgrade = Command::ChangePlan { plan: "professional".into(), cycle: None };
    upg.apply(&upgrade, at("2026-11-15T00:00:00Z"), "k", list).unwrap();
    // Every month's invoice of each, as a close rates it.
    let mut invoices: Vec<Invoice> = Vec::new();
    for s in [&mon, &qtr, &ann, &upg] {
        for p in ["2026-09", "2026-10", "2026-11"] {
            let period: Period = p.parse().unwrap();
            let mut s = s.clone();
            s.advance(period.end_us());
            invoices.push(rate(&s.tenant, &s.id, &s.entries, period, None, list).unwrap());
        }
    }
    // mon's November usage: an overage line, billed in arrears.
    let mon_nov = invoices.iter_mut().find(|i| i.tenant == "mon" && i.period.to_string() == "2026-11").unwrap();
    let mut overage = mon_nov.lines[0].clone();
    (overage.kind, overage.amount, overage.service) = (LineKind::Overage, d("123.45"), None);
    mon_nov.append(vec![overage]).unwrap();
    let id = |tenant: &str| {
        invoices.iter().find(|i| i.tenant == tenant && i.period.to_string() == "2026-11").unwrap().id.clone()
    };
    let held = |tenant: &str, remote: &str, status: &str, paid: Option<&str>| RemoteInvoice {
        remote: remote.into(),
        invoice: id(tenant),
        tenant: tenant.into(),
        status: status.into(),
        sent_us: Some(at("2026-12-01T09:00:00Z")),
        due_us: None,
        paid_us: paid.map(at),
        hosted_url: None,
        pdf_url: None,
    };
    // mon's invoice is held twice: paid under its second push, its first one voided after.
    let paid = vec![
        held("mon", "in_mon_2", "paid", Some("2026-12-03T09:00:00Z")),
        held("mon", "in_mon_1", "void", None),
        held("upg", "in_upg", "paid", Some("2026-12-10T09:00:00Z")),
        held("ann", "in_ann", "open", None),
    ];
    let as_of = at("2026-12-05T23:59:59Z");

    let nov = recognition(&invoices, &paid, "2026-11".parse().unwrap(), as_of);
    let want = Recognition {
        billed: d("53706.78"),
        billed_fees: d("53583.33"),
        billed_usage: d("123.45"),
        collected: Some(d("5123.45")),
        recognised: d("22820.06"),
        recognised_fees: d("22696.61"),
        recognised_usage: d("123.45"),
        deferred_start: d("6430.87"),
        deferred_end: d("37317.59"),
        fees_without_service: Decimal::ZERO,
    };
    assert_eq!(nov["USD"], want);
    assert_eq!(want.deferred_end, want.deferred_start + want.billed_fees - want.recognised_fees);

    // October ends where November starts; no invoice of October is at a provider.
    let oct = &recognition(&invoices, &paid, "2026-10".parse().unwrap(), as_of)["USD"];
    assert_eq!(oct.deferred_end, nov["USD"].deferred_start);
    assert_eq!(oct.collected, None, "no payment sync for October's invoices");
    // By hand: mon 4,354.84 (27 of 31 days) + upg 5,000 + qtr 7,714.29 − 3,115.38 = 13,953.75.
    assert_eq!(oct.recognised_fees, d("13953.75"));
    // A fee is recognised in whole over its service: the year of ann adds up to what it billed.
    let mut months = Vec::new();
    let mut p: Period = "2026-11".parse().unwrap();
    for _ in 0..13 {
        months.push(p);
        p = p.next();
    }
    let ann_only: Vec<Invoice> = invoices.iter().filter(|i| i.tenant == "ann").cloned().collect();
    let year: Decimal = months
        .iter()
        .map(|m| recognition(&ann_only, &paid, *m, as_of).get("USD").map_or(Decimal::ZERO, |r| r.recognised))
        .sum();
    assert_eq!(year, d("38250.00"));

    // An invoice closed before fee lines carried what they pay for: its fees are taken to pay
    // for its own month, and said so; its usage stays usage.
    let mut old: Vec<Invoice> = invoices.clone();
    for i in &mut old {
        for l in &mut i.lines {
            l.service = None;
        }
    }
    let before = &recognition(&old, &paid, "2026-11".parse().unwrap(), as_of)["USD"];
    assert_eq!((before.billed_fees, before.billed_usage), (d("53583.33"), d("123.45")));
    assert_eq!(before.fees_without_service, d("53583.33"));
    assert_eq!(before.recognised_fees, d("53583.33"), "every fee in its own month");
    assert_eq!((before.deferred_start, before.deferred_end), (Decimal::ZERO, Decimal::ZERO));
}
