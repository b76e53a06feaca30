//! Table tests: every tier and discount of the sample price book, plan changes, a trial, and the
//! way from past_due to suspended and back.

mod common;

use common::*;
use meter_rater::subscription::{Change, CycleReason, Refusal, add_months};
use meter_rater::{Command, Cycle, LineKind as K, Setup, State, Subscription};

const SAMPLE_USAGE: &[(&str, &str)] = &[
    ("active_users", "60"),
    ("work_orders", "620"),
    ("agent_tokens", "7500000"),
    ("api_calls", "150000"),
    ("agent_invocations", "30000"),
];

#[test]
fn starter_monthly_charges_base_seats_and_each_overage() {
    let mut s = subscribe("acme", "starter", Cycle::Monthly, 1, false, "2026-11-01T00:00:00Z");
    let inv = rate(&mut s, "2026-11", &usage(SAMPLE_USAGE));
    assert_eq!(
        amounts(&inv),
        [
            (K::BaseFee, "5000.00".into()),
            (K::Seats, "1100.00".into()),   // 11 seats over 49, at 100
            (K::Overage, "0.00".into()),    // agent_invocations: a hard limit, never charged
            (K::Overage, "12.00".into()),   // agent_tokens: 2.5M over → 3 packages at 4
            (K::Overage, "100.00".into()),  // api_calls: 50,000 over at 0.002
            (K::Overage, "3000.00".into()), // work_orders: 120 over at 25
        ]
    );
    assert_eq!(inv.total.to_string(), "9212.00");
    assert_eq!(inv.plan.as_deref(), Some("starter"));
    let wo = inv.lines.iter().find(|l| l.meter.as_deref() == Some("work_orders")).unwrap();
    assert_eq!(wo.description, "work_orders: 620 used, 500 included, 120 over");
    assert_eq!(wo.lineage.meters.get("work_orders").unwrap().to_string(), "620");
    assert_eq!(wo.lineage.price_version, "2026-01");
    assert_eq!(wo.lineage.watermark_us, Some(at("2026-12-08T00:00:00Z")));
    assert_eq!(wo.lineage.inputs_hash.len(), 64);
    assert_eq!(wo.id, format!("{}_006", inv.id));
    let capped = inv.lines.iter().find(|l| l.meter.as_deref() == Some("agent_invocations")).unwrap();
    assert_eq!(capped.description, "agent_invocations: 30000 used of 2000 (a hard limit)");
    // Rating again gives the same invoice, ids and hashes included.
    assert_eq!(rate(&mut s, "2026-11", &usage(SAMPLE_USAGE)), inv);
}

#[test]
fn usage_within_the_allowances_charges_nothing_but_the_base_fee() {
    let mut s = subscribe("acme", "starter", Cycle::Monthly, 1, false, "2026-11-01T00:00:00Z");
    let inv = rate(&mut s, "2026-11", &usage(&[("work_orders", "500"), ("active_users", "49")]));
    assert_eq!(inv.total.to_string(), "5000.00");
    assert!(inv.lines.iter().skip(1).all(|l| l.amount.is_zero()));
}

#[test]
fn annual_prepay_takes_15_percent_and_multi_year_20_percent_off_the_base_fee() {
    let mut annual = subscribe("a", "starter", Cycle::Annual, 1, false, "2026-11-01T00:00:00Z");
    let inv = rate(&mut annual, "2026-11", &usage(&[]));
    assert_eq!(line(&inv, K::BaseFee, None), "45000.00");
    assert_eq!(line(&inv, K::TermDiscount, None), "-6750.00");
    assert_eq!(inv.total.to_string(), "38250.00");

    let mut two_years = subscribe("b", "starter", Cycle::Annual, 2, false, "2026-11-01T00:00:00Z");
    let inv = rate(&mut two_years, "2026-11", &usage(&[]));
    assert_eq!(line(&inv, K::TermDiscount, None), "-9000.00");
    assert_eq!(inv.total.to_string(), "36000.00", "Starter's floor: $36,000 a year");

    let mut monthly = subscribe("c", "starter", Cycle::Monthly, 1, false, "2026-11-01T00:00:00Z");
    assert!(rate(&mut monthly, "2026-11", &usage(&[])).lines.iter().all(|l| l.kind != K::TermDiscount));
    // The next eleven months of the annual cycle bill no base fee; the twelfth renews.
    for period in ["2026-12", "2027-06", "2027-10"] {
        let inv = rate(&mut annual, period, &usage(&[]));
        assert!(inv.lines.iter().all(|l| l.kind != K::BaseFee), "{period}");
    }
    assert_eq!(line(&rate(&mut annual, "2027-11", &usage(&[])), K::BaseFee, None), "45000.00");
}

#[test]
fn professional_rates_graduated_and_volume_tiers_and_earns_the_volume_discount() {
    let mut s = subscribe("acme", "professional", Cycle::Monthly, 1, false, "2026-11-01T00:00:00Z");
    let u = usage(&[("work_orders", "12000"), ("api_calls", "1500000"), ("agent_invocations", "35000")]);
    let inv = rate(&mut s, "2026-11", &u);
    // 7,000 over: 5,000 at 20 and 2,000 at 17.50.
    assert_eq!(line(&inv, K::Overage, Some("work_orders")), "135000.00");
    // 500,000 over, in the first volume tier: all at 0.0015.
    assert_eq!(line(&inv, K::Overage, Some("api_calls")), "750.00");
    // 15,000 over: 10,000 at 0.10 and 5,000 at 0.08.
    assert_eq!(line(&inv, K::Overage, Some("agent_invocations")), "1400.00");
    // Charges 152,150: 3% of 50,000 and 5% of 52,150.
    assert_eq!(line(&inv, K::VolumeDiscount, None), "-4107.50");
    assert_eq!(inv.total.to_string(), "148042.50");
    // Past 1M over, the whole api_calls quantity moves to the second volume tier.
    let inv = rate(&mut s, "2026-11", &usage(&[("api_calls", "2500000")]));
    assert_eq!(line(&inv, K::Overage, Some("api_calls")), "2000.00");
}

#[test]
fn enterprise_has_unlimited_work_orders_and_a_minimum() {
    let mut s = subscribe("acme", "enterprise", Cycle::Monthly, 1, false, "2026-11-01T00:00:00Z");
    let inv = rate(&mut s, "2026-11", &usage(&[("work_orders", "900000"), ("api_calls", "10000500")]));
    assert_eq!(line(&inv, K::Overage, Some("work_orders")), "0.00");
    assert!(inv.lines.iter().any(|l| l.description == "work_orders: 900000 used, unlimited"));
    assert_eq!(line(&inv, K::Overage, Some("api_calls")), "0.40");
    assert_eq!(line(&inv, K::Minimum, None), "2499.60");
    // Charges 52,500: 3% of 2,500.
    assert_eq!(line(&inv, K::VolumeDiscount, None), "-75.00");
    assert_eq!(inv.total.to_string(), "52425.00");
    let inv = rate(&mut s, "2026-11", &usage(&[("active_users", "1100")]));
    assert_eq!(line(&inv, K::Seats, None), "5000.00");
    assert!(inv.lines.iter().all(|l| l.kind != K::Minimum), "5,000 of seats pass the minimum");
}

#[test]
fn enterprise_plus_is_annual_and_priced_per_deal() {
    let mut s = subscribe("initech", "enterprise_plus", Cycle::Annual, 2, false, "2026-11-01T00:00:00Z");
    let inv = rate(&mut s, "2026-11", &usage(&[]));
    assert_eq!(line(&inv, K::BaseFee, None), "500000.00");
    assert_eq!(line(&inv, K::TermDiscount, None), "-100000.00", "from $400,000 a year");
    assert_eq!(line(&inv, K::Minimum, None), "10000.00");

    let mut deal = subscribe("globex", "enterprise_plus", Cycle::Annual, 2, false, "2026-11-01T00:00:00Z");
    let inv = rate(&mut deal, "2026-11", &usage(&[("agent_tokens", "5000000001")]));
    assert_eq!(line(&inv, K::BaseFee, None), "650000.00");
    assert_eq!(line(&inv, K::TermDiscount, None), "-162500.00", "the deal's 25% replaces multi-year");
    assert_eq!(line(&inv, K::Overage, Some("agent_tokens")), "1.20");

    let setup = meter_rater::Setup {
        plan: "enterprise_plus".into(),
        cycle: Cycle::Monthly,
        term_years: 1,
        auto_renew: true,
        trial: false,
    };
    let refused = meter_rater::Subscription::create("s", "t", &setup, 0, "k", list()).unwrap_err();
    assert_eq!(refused.to_string(), "cycle: plan enterprise_plus is not sold monthly (cycles: annual)");
}

#[test]
fn an_upgrade_mid_cycle_credits_the_old_plan_and_charges_the_new_to_the_second() {
    let mut s = subscribe("acme", "starter", Cycle::Monthly, 1, false, "2026-11-01T00:00:00Z");
    act(&mut s, Command::ChangePlan { plan: "professional".into(), cycle: None }, "2026-11-16T00:00:00Z");
    let inv = rate(&mut s, "2026-11", &usage(&[("work_orders", "5200")]));
    assert_eq!(
        amounts(&inv)[..3],
        [(K::BaseFee, "5000.00".into()), (K::Proration, "-2500.00".into()), (K::Proration, "7500.00".into())]
    );
    assert_eq!(inv.plan.as_deref(), Some("professional"));
    assert_eq!(line(&inv, K::Overage, Some("work_orders")), "4000.00", "rated on Professional's allowance");
    // One second later, the pieces move by a second's worth.
    let mut t = subscribe("acme", "starter", Cycle::Monthly, 1, false, "2026-11-01T00:00:00Z");
    act(&mut t, Command::ChangePlan { plan: "professional".into(), cycle: None }, "2026-11-16T00:00:01Z");
    let inv = rate(&mut t, "2026-11", &usage(&[]));
    // The credit's share up to the change rounds to 2,500.00 (2,500.0019…), the charge's to 7,500.01.
    assert_eq!(amounts(&inv)[1..3], [(K::Proration, "-2500.00".into()), (K::Proration, "7499.99".into())]);
}

#[test]
fn a_downgrade_mid_cycle_credits_more_than_it_charges() {
    let mut s = subscribe("acme", "professional", Cycle::Monthly, 1, false, "2026-11-01T00:00:00Z");
    act(&mut s, Command::ChangePlan { plan: "starter".into(), cycle: None }, "2026-11-11T00:00:00Z");
    let inv = rate(&mut s, "2026-11", &usage(&[]));
    assert_eq!(
        amounts(&inv)[..3],
        [(K::BaseFee, "15000.00".into()), (K::Proration, "-10000.00".into()), (K::Proration, "3333.33".into())]
    );
    assert_eq!(inv.total.to_string(), "8333.33");
    // The next cycle bills Starter.
    assert_eq!(line(&rate(&mut s, "2026-12", &usage(&[])), K::BaseFee, None), "5000.00");
}

#[test]
fn moving_to_an_annual_cycle_credits_the_month_and_starts_a_discounted_year() {
    let mut s = subscribe("acme", "starter", Cycle::Monthly, 1, false, "2026-11-01T00:00:00Z");
    act(&mut s, Command::ChangePlan { plan: "starter".into(), cycle: Some(Cycle::Annual) }, "2026-11-21T00:00:00Z");
    let inv = rate(&mut s, "2026-11", &usage(&[]));
    assert_eq!(
        amounts(&inv)[..4],
        [
            (K::BaseFee, "5000.00".into()),
            (K::Proration, "-1666.67".into()),
            (K::BaseFee, "45000.00".into()),
            (K::TermDiscount, "-6750.00".into()),
        ]
    );
    assert_eq!(s.current_cycle(), Some((at("2026-11-21T00:00:00Z"), at("2027-11-21T00:00:00Z"))));
}

#[test]
fn a_trial_converts_after_14_days_and_bills_from_then() {
    let mut s = subscribe("acme", "starter", Cycle::Monthly, 1, true, "2026-11-03T10:00:00Z");
    assert_eq!(s.state(), State::Trial);
    let oct = rate(&mut s, "2026-10", &usage(SAMPLE_USAGE));
    assert!(oct.lines.is_empty(), "{:#?}", oct.lines);
    s.advance(at("2026-11-17T09:59:59Z"));
    assert_eq!(s.state(), State::Trial);
    let inv = rate(&mut s, "2026-11", &usage(SAMPLE_USAGE));
    assert_eq!(s.state(), State::Active);
    let kinds: Vec<_> = s.entries.iter().map(|e| (e.at_us, e.change.clone())).collect();
    assert_eq!(
        kinds[1],
        (at("2026-11-17T10:00:00Z"), Change::Converted { trial_started_us: at("2026-11-03T10:00:00Z") })
    );
    assert!(matches!(kinds[2].1, Change::CycleStarted { reason: CycleReason::Conversion, .. }));
    assert_eq!(line(&inv, K::BaseFee, None), "5000.00");
    assert_eq!(inv.total.to_string(), "9212.00");
    assert_eq!(s.entries[1].by, "schedule");

    // A trial cancelled expires at its end and never bills.
    let mut c = subscribe("b", "starter", Cycle::Monthly, 1, true, "2026-11-03T10:00:00Z");
    act(&mut c, Command::Cancel, "2026-11-05T00:00:00Z");
    assert_eq!(c.state(), State::Cancelled);
    let inv = rate(&mut c, "2026-11", &usage(SAMPLE_USAGE));
    assert_eq!(c.state(), State::Expired);
    assert!(inv.lines.is_empty());
    assert_eq!(c.entries.last().unwrap().at_us, at("2026-11-17T10:00:00Z"));

    // Converting early starts paying at once.
    let mut e = subscribe("c", "starter", Cycle::Monthly, 1, true, "2026-11-03T10:00:00Z");
    act(&mut e, Command::Convert, "2026-11-04T00:00:00Z");
    assert_eq!(e.current_cycle(), Some((at("2026-11-04T00:00:00Z"), at("2026-12-04T00:00:00Z"))));
}

#[test]
fn a_grace_period_given_with_the_failure_is_the_one_that_suspends_and_payment_clears_it() {
    let hour = 3_600_000_000;
    let mut s = subscribe("acme", "starter", Cycle::Monthly, 1, false, "2026-11-01T00:00:00Z");
    act(&mut s, Command::PaymentFailed { grace_us: Some(36 * hour) }, "2026-11-03T00:00:00Z");
    s.advance(at("2026-11-04T11:59:59Z"));
    assert_eq!(s.state(), State::PastDue, "still in its 36 h");
    s.advance(at("2026-11-04T12:00:00Z"));
    assert_eq!(s.state(), State::Suspended, "36 h after the failure, not 15 days");
    act(&mut s, Command::Reactivate, "2026-11-05T00:00:00Z");
    // A later failure without a grace of its own gets the default again.
    act(&mut s, Command::PaymentFailed { grace_us: None }, "2026-11-06T00:00:00Z");
    s.advance(at("2026-11-20T23:59:59Z"));
    assert_eq!(s.state(), State::PastDue, "the default 15 days, not the earlier 36 h");
    s.advance(at("2026-11-21T00:00:00Z"));
    assert_eq!(s.state(), State::Suspended);
    // The grace is part of the stored subscription.
    let mut back: meter_rater::Subscription = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
    back.advance(at("2026-11-22T00:00:00Z"));
    assert_eq!(back.state(), State::Suspended);
}

#[test]
fn steps_of_dunning_are_kept_in_the_trail_and_change_no_state() {
    use meter_rater::subscription::Dunning;
    let step = |attempt, outcome: &str| {
        Command::Dunning(Dunning {
            invoice: "in_1".into(),
            attempt,
            outcome: outcome.into(),
            reason: Some("card declined".into()),
            next_retry_us: None,
        })
    };
    let mut s = subscribe("acme", "starter", Cycle::Monthly, 1, false, "2026-11-01T00:00:00Z");
    act(&mut s, Command::PaymentFailed { grace_us: None }, "2026-11-03T00:00:00Z");
    act(&mut s, step(0, "failed"), "2026-11-03T00:00:00Z");
    assert_eq!(s.state(), State::PastDue);
    assert_eq!(s.suspends_at(), Some(at("2026-11-18T00:00:00Z")), "the grace runs on");
    s.advance(at("2026-11-18T00:00:00Z"));
    act(&mut s, step(1, "failed"), "2026-11-19T00:00:00Z");
    assert_eq!(s.state(), State::Suspended);
    let kinds: Vec<_> = s.entries.iter().filter(|e| matches!(e.change, Change::Dunning(_))).map(|e| e.state).collect();
    assert_eq!(kinds, [State::PastDue, State::Suspended]);
    // Nothing is billed in a trial: nothing to dun.
    let mut t = subscribe("beta", "starter", Cycle::Monthly, 1, true, "2026-11-01T00:00:00Z");
    let refused = t.apply(&step(0, "failed"), at("2026-11-02T00:00:00Z"), "k", list()).unwrap_err();
    assert!(matches!(refused, Refusal::Transition { state: State::Trial, .. }), "{refused:?}");
}

#[test]
fn past_due_is_suspended_after_15_days_and_reactivated_by_payment() {
    let mut s = subscribe("acme", "starter", Cycle::Monthly, 1, false, "2026-11-01T00:00:00Z");
    act(&mut s, Command::PaymentFailed { grace_us: None }, "2026-11-03T12:00:00Z");
    assert_eq!(s.state(), State::PastDue);
    s.advance(at("2026-11-18T11:59:59Z"));
    assert_eq!(s.state(), State::PastDue, "still in the grace period");
    s.advance(at("2026-11-18T12:00:00Z"));
    assert_eq!(s.state(), State::Suspended, "exactly 15 days later");
    assert_eq!(s.entries.last().unwrap().by, "schedule");
    let refused =
        s.apply(&Command::PaymentFailed { grace_us: None }, at("2026-11-19T00:00:00Z"), "k", list()).unwrap_err();
    assert_eq!(
        refused,
        Refusal::Transition {
            state: State::Suspended,
            action: "payment_failed",
            allowed: vec!["cancel", "reactivate"]
        }
    );
    act(&mut s, Command::Reactivate, "2026-11-20T00:00:00Z");
    assert_eq!(s.state(), State::Active);
    assert_eq!(
        s.current_cycle(),
        Some((at("2026-11-01T00:00:00Z"), at("2026-12-01T00:00:00Z"))),
        "the paid cycle goes on"
    );
    let states: Vec<_> = s.entries.iter().map(|e| e.state).collect();
    assert_eq!(states, [State::Active, State::Active, State::PastDue, State::Suspended, State::Active]);

    // Suspended past the cycle's end: nothing renews; paying starts a new cycle.
    let mut t = subscribe("b", "starter", Cycle::Monthly, 1, false, "2026-11-01T00:00:00Z");
    act(&mut t, Command::PaymentFailed { grace_us: None }, "2026-11-10T00:00:00Z");
    let dec = rate(&mut t, "2026-12", &usage(&[]));
    assert!(dec.lines.iter().all(|l| l.kind != K::BaseFee), "no renewal while past due is suspended");
    act(&mut t, Command::Reactivate, "2027-01-05T00:00:00Z");
    assert_eq!(t.current_cycle(), Some((at("2027-01-05T00:00:00Z"), at("2027-02-05T00:00:00Z"))));
    assert!(matches!(t.entries.last().unwrap().change, Change::CycleStarted { reason: CycleReason::Reactivation, .. }));
}

#[test]
fn a_past_due_subscription_renews_while_in_its_grace_period() {
    let mut s = subscribe("acme", "starter", Cycle::Monthly, 1, false, "2026-11-01T00:00:00Z");
    act(&mut s, Command::PaymentFailed { grace_us: None }, "2026-11-25T00:00:00Z");
    let dec = rate(&mut s, "2026-12", &usage(&[]));
    assert_eq!(line(&dec, K::BaseFee, None), "5000.00");
    assert_eq!(s.state(), State::Suspended, "suspended on December 10");
}

#[test]
fn cancelling_runs_to_the_cycle_end_and_reactivating_before_it_undoes_the_cancel() {
    let mut s = subscribe("acme", "starter", Cycle::Monthly, 1, false, "2026-11-01T00:00:00Z");
    act(&mut s, Command::Cancel, "2026-11-10T00:00:00Z");
    assert_eq!(s.ends_us(), Some(at("2026-12-01T00:00:00Z")));
    let nov = rate(&mut s, "2026-11", &usage(SAMPLE_USAGE));
    assert_eq!(nov.total.to_string(), "9212.00", "usage until the end is billed");
    let dec = rate(&mut s, "2026-12", &usage(SAMPLE_USAGE));
    assert_eq!(s.state(), State::Expired);
    assert!(dec.lines.is_empty());
    let refused = s.apply(&Command::Reactivate, at("2026-12-02T00:00:00Z"), "k", list()).unwrap_err();
    assert_eq!(refused.to_string(), "cannot reactivate a subscription that is expired; allowed: nothing");

    let mut t = subscribe("b", "starter", Cycle::Monthly, 1, false, "2026-11-01T00:00:00Z");
    act(&mut t, Command::Cancel, "2026-11-10T00:00:00Z");
    act(&mut t, Command::Reactivate, "2026-11-11T00:00:00Z");
    assert_eq!(t.state(), State::Active);
    assert_eq!(line(&rate(&mut t, "2026-12", &usage(&[])), K::BaseFee, None), "5000.00");
}

#[test]
fn cycles_renew_from_their_anchor_and_last_days_are_clamped() {
    assert_eq!(add_months(at("2027-01-31T08:00:00Z"), 1), at("2027-02-28T08:00:00Z"));
    assert_eq!(add_months(at("2028-01-31T08:00:00Z"), 1), at("2028-02-29T08:00:00Z"));
    assert_eq!(add_months(at("2026-11-15T00:00:00Z"), 12), at("2027-11-15T00:00:00Z"));
    let mut s = subscribe("acme", "starter", Cycle::Monthly, 1, false, "2027-01-31T08:00:00Z");
    s.advance(at("2027-03-31T08:00:00Z"));
    let starts: Vec<_> = s
        .entries
        .iter()
        .filter_map(|e| match e.change {
            Change::CycleStarted { start_us, .. } => Some(start_us),
            _ => None,
        })
        .collect();
    assert_eq!(starts, [at("2027-01-31T08:00:00Z"), at("2027-02-28T08:00:00Z"), at("2027-03-31T08:00:00Z")]);
    let mut q = subscribe("b", "professional", Cycle::Quarterly, 1, false, "2026-11-01T00:00:00Z");
    assert_eq!(line(&rate(&mut q, "2026-11", &usage(&[])), K::BaseFee, None), "36000.00");
    assert!(rate(&mut q, "2026-12", &usage(&[])).lines.iter().all(|l| l.kind != K::BaseFee));
    assert_eq!(line(&rate(&mut q, "2027-02", &usage(&[])), K::BaseFee, None), "36000.00");
}

#[test]
fn a_cycle_that_starts_at_the_last_microsecond_belongs_to_its_period() {
    let mut s = subscribe("acme", "starter", Cycle::Quarterly, 1, false, "2026-10-31T23:59:59.999999Z");
    assert_eq!(line(&rate(&mut s, "2026-10", &usage(&[])), K::BaseFee, None), "13500.00");
    assert!(rate(&mut s, "2026-11", &usage(&[])).lines.iter().all(|l| l.kind != K::BaseFee));
    let mut t = subscribe("b", "starter", Cycle::Monthly, 1, false, "2026-11-01T00:00:00Z");
    assert!(rate(&mut t, "2026-10", &usage(&[])).lines.is_empty());
    // A monthly cycle from the last microsecond of October renews at the last one of November.
    let mut m = subscribe("c", "starter", Cycle::Monthly, 1, false, "2026-10-31T23:59:59.999999Z");
    let nov = rate(&mut m, "2026-11", &usage(&[]));
    assert_eq!(line(&nov, K::BaseFee, None), "5000.00");
    assert!(
        nov.lines[0].description.ends_with("cycle 2026-11-30 to 2026-12-31 (Renewal)"),
        "{}",
        nov.lines[0].description
    );
}

#[test]
fn invalid_commands_name_what_is_allowed() {
    let mut s = subscribe("acme", "starter", Cycle::Monthly, 1, false, "2026-11-01T00:00:00Z");
    let e = s.apply(&Command::Convert, at("2026-11-02T00:00:00Z"), "k", list()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "cannot convert a subscription that is active; allowed: change_plan, cancel, payment_failed"
    );
    let e = s.apply(&Command::ChangePlan { plan: "gold".into(), cycle: None }, at("2026-11-02T00:00:00Z"), "k", list());
    assert!(e.unwrap_err().to_string().starts_with("plan: unknown plan \"gold\""));
    let e =
        s.apply(&Command::ChangePlan { plan: "starter".into(), cycle: None }, at("2026-11-02T00:00:00Z"), "k", list());
    assert_eq!(e.unwrap_err().to_string(), "plan: already on starter, monthly");
    let e = s.apply(&Command::Cancel, at("2026-10-02T00:00:00Z"), "k", list()).unwrap_err();
    assert!(matches!(e, Refusal::Invalid { field: "at", .. }));
    assert_eq!(s.entries.len(), 2, "refusals change nothing");
}

#[test]
fn reactivating_a_cancelled_subscription_makes_it_active_and_a_cancelled_trial_a_trial() {
    let mut s = subscribe("acme", "starter", Cycle::Monthly, 1, false, "2026-11-01T00:00:00Z");
    act(&mut s, Command::PaymentFailed { grace_us: None }, "2026-11-02T00:00:00Z");
    act(&mut s, Command::Cancel, "2026-11-03T00:00:00Z");
    act(&mut s, Command::Reactivate, "2026-11-04T00:00:00Z");
    assert_eq!(s.state(), State::Active, "payment received: not past due any more");
    s.advance(at("2026-12-15T00:00:00Z"));
    assert_eq!(s.state(), State::Active, "no grace period left running");

    let mut t = subscribe("b", "starter", Cycle::Monthly, 1, true, "2026-11-01T00:00:00Z");
    act(&mut t, Command::Cancel, "2026-11-03T00:00:00Z");
    act(&mut t, Command::Reactivate, "2026-11-04T00:00:00Z");
    assert_eq!(t.state(), State::Trial);
    t.advance(at("2026-11-15T00:00:00Z"));
    assert_eq!(t.state(), State::Active, "the trial still converts on its day");
}

#[test]
fn usage_billed_by_another_subscription_is_not_billed_again() {
    let mut s = subscribe("acme", "starter", Cycle::Monthly, 1, false, "2026-11-01T00:00:00Z");
    let period = p("2026-11");
    s.advance(period.end_us() - 1);
    let inv = meter_rater::rate(&s.tenant, &s.id, &s.entries, period, None, list()).unwrap();
    assert_eq!(amounts(&inv), [(K::BaseFee, "5000.00".into())]);
}

#[test]
fn the_next_change_time_alone_brings_is_known_ahead_and_renewals_are_not_one() {
    // A trial converts at its end.
    let t = subscribe("a", "starter", Cycle::Monthly, 1, true, "2026-11-03T10:00:00Z");
    assert_eq!(t.next_state_change(), Some(at("2026-11-17T10:00:00Z")));
    // An active subscription that renews itself keeps its state: nothing to expect.
    let r = subscribe("b", "starter", Cycle::Monthly, 1, false, "2026-11-01T00:00:00Z");
    assert_eq!(r.next_state_change(), None);
    // Cancelled, it expires at the end of what was paid.
    let mut c = r.clone();
    act(&mut c, Command::Cancel, "2026-11-05T00:00:00Z");
    assert_eq!(c.next_state_change(), Some(at("2026-12-01T00:00:00Z")));
    // Past due, it is suspended when its grace runs out, across a renewal.
    let mut p = r.clone();
    act(&mut p, Command::PaymentFailed { grace_us: None }, "2026-11-20T00:00:00Z");
    assert_eq!(p.next_state_change(), Some(at("2026-12-05T00:00:00Z")));
    // However long its grace, across as many renewals.
    let mut long = r.clone();
    act(&mut long, Command::PaymentFailed { grace_us: Some(200 * 86_400_000_000) }, "2026-11-20T00:00:00Z");
    assert_eq!(long.next_state_change(), Some(at("2027-06-08T00:00:00Z")));
    let mut ahead = long.clone();
    ahead.advance(at("2027-06-08T00:00:00Z"));
    assert_eq!(ahead.state(), State::Suspended);
    assert_eq!(ahead.next_state_change(), None, "suspended until paid");
    // One that does not renew expires at its cycle's end.
    let setup = Setup { plan: "starter".into(), cycle: Cycle::Monthly, term_years: 1, auto_renew: false, trial: false };
    let once = Subscription::create("sub_once", "once", &setup, at("2026-11-01T00:00:00Z"), "k", list()).unwrap();
    assert_eq!(once.next_state_change(), Some(at("2026-12-01T00:00:00Z")));
    let mut expired = once.clone();
    expired.advance(at("2026-12-01T00:00:00Z"));
    assert_eq!((expired.state(), expired.next_state_change()), (State::Expired, None));
}

/// A line's meters are written as the `BTreeMap` they were before (a JSON object in key order,
/// each figure at its scale, `{}` when there is none), and what was written then reads back as
/// it was, keys in any order: invoices recorded by earlier builds keep their bytes, and an
/// earlier build reads what this one writes.
#[test]
fn a_lines_meters_read_and_write_as_the_map_they_were() {
    let pairs =
        [("work_orders".to_string(), "620.50".parse().unwrap()), ("agent_tokens".to_string(), "7".parse().unwrap())];
    let old: std::collections::BTreeMap<String, rust_decimal::Decimal> = pairs.iter().cloned().collect();
    let new: meter_rater::Meters = pairs.iter().cloned().collect();
    let written = serde_json::to_string(&old).unwrap();
    assert_eq!(serde_json::to_string(&new).unwrap(), written);
    assert_eq!(written, r#"{"agent_tokens":"7","work_orders":"620.50"}"#);
    let read: meter_rater::Meters = serde_json::from_str(r#"{"work_orders":"620.50","agent_tokens":"7"}"#).unwrap();
    assert_eq!(serde_json::to_string(&read).unwrap(), written);
    assert_eq!(read.get("work_orders").unwrap().to_string(), "620.50");
    assert!(serde_json::from_str::<meter_rater::Meters>("{}").unwrap().is_empty());
    assert_eq!(serde_json::to_string(&meter_rater::Meters::new()).unwrap(), "{}");
    // In a line, with no meter too (a fee's): an object, as the `BTreeMap` wrote it.
    let lineage = |meters: meter_rater::Meters| meter_rater::Lineage {
        meters,
        watermark_us: None,
        price_version: "2026-01".into(),
        inputs_hash: "h".into(),
    };
    let json = |l: &meter_rater::Lineage| serde_json::to_string(l).unwrap();
    let fee = lineage(meter_rater::Meters::new());
    assert_eq!(json(&fee), r#"{"meters":{},"watermark_us":null,"price_version":"2026-01","inputs_hash":"h"}"#);
    assert_eq!(serde_json::from_str::<meter_rater::Lineage>(&json(&fee)).unwrap(), fee);
    let usage = lineage(new);
    assert!(json(&usage).starts_with(&format!(r#"{{"meters":{written},"#)), "{}", json(&usage));
    assert_eq!(serde_json::from_str::<meter_rater::Lineage>(&json(&usage)).unwrap(), usage);
}

/// A credit that rounds to nothing (a change a microsecond before the cycle ends) is 0.00, not
/// -0.00: a negative zero is written "-0.00" and reads back "0.00", so a close holding one
/// would not read back the bytes it was recorded with.
#[test]
fn a_credit_that_rounds_to_nothing_is_a_plain_zero() {
    let mut s = subscribe("acme", "starter", Cycle::Monthly, 1, false, "2026-11-01T00:00:00Z");
    act(&mut s, Command::ChangePlan { plan: "professional".into(), cycle: None }, "2026-11-30T23:59:59.999999Z");
    let inv = rate(&mut s, "2026-11", &usage(&[]));
    let credit = inv.lines.iter().find(|l| l.kind == K::Proration && l.description.starts_with("credit")).unwrap();
    assert!(credit.amount.is_zero(), "{inv:#?}");
    assert_eq!(serde_json::to_string(&credit.amount).unwrap(), r#""0.00""#);
    let json = serde_json::to_string(&inv).unwrap();
    assert!(!json.contains(r#""-0.00""#), "{json}");
}
