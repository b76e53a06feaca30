//! Subscriptions: a state machine whose every change is an entry in an audit trail.
//!
//! ```text
//! trial ──(14 days, or convert)──▶ active ──payment_failed──▶ past_due ──(15 days)──▶ suspended
//!   │                               ▲  │                        │                       │
//!   │                               │  └─cycle end: renew──┐    └──reactivate──▶ active ◀┘ reactivate
//!   └─cancel─▶ cancelled ──(end of the paid cycle or trial)──▶ expired
//! ```
//!
//! Changes that happen with time (a trial converting, a grace period running out, a cycle
//! renewing or a cancelled subscription expiring) are derived from the entries, at the exact
//! instant they are due, by [`Subscription::advance`]: replaying the same commands always gives
//! the same trail.

use crate::pricebook::{Cycle, PriceList};
use serde::{Deserialize, Serialize};
use std::fmt;
use time::OffsetDateTime;

/// Days from `past_due` to `suspended` unless a command says otherwise (`[billing] grace`).
pub const GRACE_DAYS: i64 = 15;
const DAY_US: i64 = meter_schemas::period::DAY_US;
/// Who made the changes that come with time, in the trail.
pub const SCHEDULE: &str = "schedule";

/// Where a subscription is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Free trial: no fee; a period spent wholly in a trial charges no usage.
    Trial,
    /// Paid and running.
    Active,
    /// A payment failed; still running for the grace period.
    PastDue,
    /// The grace period ran out without payment; service is off until reactivated.
    Suspended,
    /// Will not renew; runs until the end of what was paid (or of the trial), then expires.
    Cancelled,
    /// Over. Nothing more can happen to it.
    Expired,
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            State::Trial => "trial",
            State::Active => "active",
            State::PastDue => "past_due",
            State::Suspended => "suspended",
            State::Cancelled => "cancelled",
            State::Expired => "expired",
        })
    }
}

/// What an admin (or, later, a payment provider) asks of a subscription.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Command {
    /// Move to another plan or billing cycle, prorated to the second.
    ChangePlan {
        /// The new plan's code.
        plan: String,
        /// The new cycle; default: the current one.
        cycle: Option<Cycle>,
    },
    /// Stop renewing; the subscription runs to the end of the paid cycle (or trial), then expires.
    Cancel,
    /// Payment received: past_due, suspended or cancelled (before it expired) becomes active; a
    /// cancelled trial goes back to its trial.
    Reactivate,
    /// A payment failed: active becomes past_due, and suspended when the grace period runs out
    /// unpaid.
    PaymentFailed {
        /// The grace period (µs); default [`GRACE_DAYS`].
        #[serde(default, skip_serializing_if = "Option::is_none")]
        grace_us: Option<i64>,
    },
    /// End a trial early and start paying.
    Convert,
    /// Record a step of dunning in the trail (the state does not change by it).
    Dunning(Dunning),
}

/// A step of dunning: an attempt to collect an invoice and what came of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Dunning {
    /// meter's invoice.
    pub invoice: String,
    /// The attempt: 0 the first, then each retry.
    pub attempt: u32,
    /// `failed`, `paid`.
    pub outcome: String,
    /// Why it failed, as the payment provider says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When the next retry comes (µs), if one is left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_retry_us: Option<i64>,
}

impl Command {
    /// The command's name, as the API and the CLI spell it.
    pub fn name(&self) -> &'static str {
        match self {
            Command::ChangePlan { .. } => "change_plan",
            Command::Cancel => "cancel",
            Command::Reactivate => "reactivate",
            Command::PaymentFailed { .. } => "payment_failed",
            Command::Convert => "convert",
            Command::Dunning(_) => "dunning",
        }
    }
}

/// The commands allowed in `state`.
pub fn allowed(state: State) -> &'static [&'static str] {
    match state {
        State::Trial => &["change_plan", "cancel", "convert"],
        State::Active => &["change_plan", "cancel", "payment_failed"],
        State::PastDue => &["change_plan", "cancel", "reactivate"],
        State::Suspended => &["cancel", "reactivate"],
        State::Cancelled => &["reactivate"],
        State::Expired => &[],
    }
}

/// Why a cycle started.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CycleReason {
    /// The subscription started without a trial.
    Start,
    /// A trial converted.
    Conversion,
    /// The previous cycle ended and the subscription renews itself.
    Renewal,
    /// A suspended subscription was paid after its cycle had ended.
    Reactivation,
    /// The plan changed to another billing cycle.
    CycleChange,
}

/// One change in the audit trail.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Change {
    /// The subscription was created.
    Created {
        /// Years committed (2 or more earns the multi-year discount).
        term_years: u32,
        /// Whether cycles renew by themselves.
        auto_renew: bool,
        /// End of the trial, when it starts with one (µs).
        trial_ends_us: Option<i64>,
    },
    /// A billing cycle started: its base fee is due (in advance).
    CycleStarted {
        /// Why.
        reason: CycleReason,
        /// Start (µs).
        start_us: i64,
        /// End (µs, excluded).
        end_us: i64,
    },
    /// The plan or cycle changed mid-cycle.
    PlanChanged {
        /// Plan before.
        from_plan: String,
        /// Cycle before.
        from_cycle: Cycle,
        /// Start of the cycle that was running (µs); absent in a trial.
        cycle_start_us: Option<i64>,
        /// End of the cycle that was running (µs).
        cycle_end_us: Option<i64>,
    },
    /// A trial became a paid subscription.
    Converted {
        /// When the trial started (µs).
        trial_started_us: i64,
    },
    /// A payment failed.
    PaymentFailed,
    /// A step of dunning (the state did not change by it).
    Dunning(Dunning),
    /// The grace period ran out.
    Suspended,
    /// Paid again (or un-cancelled).
    Reactivated,
    /// Cancelled; runs until `ends_us`.
    Cancelled {
        /// When it expires (µs).
        ends_us: i64,
    },
    /// Over.
    Expired,
}

/// An entry of the audit trail: a change, when it took effect, who made it, and the state after.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Entry {
    /// Position in the trail, from 1.
    pub seq: u32,
    /// When it took effect (µs since the epoch).
    pub at_us: i64,
    /// What changed.
    #[serde(flatten)]
    pub change: Change,
    /// The key that asked for it, or `schedule` for changes that come with time.
    pub by: String,
    /// State after the change.
    pub state: State,
    /// Plan after the change.
    pub plan: String,
    /// Cycle after the change.
    pub cycle: Cycle,
}

/// A command refused in the subscription's state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Not allowed in this state.
    #[error("cannot {action} a subscription that is {state}; allowed: {}", if .allowed.is_empty() { "nothing".to_string() } else { .allowed.join(", ") })]
    Transition {
        /// The state.
        state: State,
        /// What was asked.
        action: &'static str,
        /// What is allowed.
        allowed: Vec<&'static str>,
    },
    /// Allowed in principle, but not with these values.
    #[error("{field}: {message}")]
    Invalid {
        /// The field at fault.
        field: &'static str,
        /// Why.
        message: String,
    },
}

/// What a new subscription is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Setup {
    /// Plan code.
    pub plan: String,
    /// Billing cycle.
    pub cycle: Cycle,
    /// Years committed (default 1).
    pub term_years: u32,
    /// Renew at the end of each cycle.
    pub auto_renew: bool,
    /// Start with the plan's trial.
    pub trial: bool,
}

/// What time brings to a subscription next.
#[derive(Clone, Copy, Debug)]
enum Due {
    /// The trial ends: it converts.
    TrialEnds,
    /// A cancelled subscription runs out: it expires.
    CancelledEnds,
    /// A past_due subscription's grace period runs out: it is suspended.
    GraceEnds,
    /// The cycle ends: it renews, or expires when it does not renew by itself.
    CycleEnds,
    /// A suspended subscription's paid cycle runs out: nothing renews until it is paid.
    PaidCycleRunsOut,
}

/// A subscription and its audit trail.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscription {
    /// Id.
    pub id: String,
    /// The tenant it bills.
    pub tenant: String,
    /// Years committed.
    pub term_years: u32,
    /// Renews by itself.
    pub auto_renew: bool,
    /// Every change, oldest first.
    pub entries: Vec<Entry>,
    trial_started_us: Option<i64>,
    trial_ends_us: Option<i64>,
    anchor_us: Option<i64>,
    cycle_index: u32,
    cycle: Option<(i64, i64)>,
    past_due_since_us: Option<i64>,
    /// When a past_due subscription is suspended unless paid (absent in rows written before
    /// the grace period was configurable: [`GRACE_DAYS`] after it went past_due).
    #[serde(default)]
    suspends_us: Option<i64>,
    ends_us: Option<i64>,
    before_cancel: Option<State>,
}

impl Subscription {
    /// Starts a subscription at `at_us`, checking the plan and cycle against `list`.
    pub fn create(
        id: &str,
        tenant: &str,
        setup: &Setup,
        at_us: i64,
        by: &str,
        list: &PriceList,
    ) -> Result<Self, Refusal> {
        let terms = list.terms(tenant, &setup.plan).ok_or_else(|| unknown_plan(&setup.plan, list))?;
        if terms.fee(setup.cycle).is_none() {
            return Err(not_sold(&setup.plan, setup.cycle, list));
        }
        if setup.term_years == 0 || setup.term_years > 10 {
            return Err(Refusal::Invalid { field: "term_years", message: "must be 1 to 10".into() });
        }
        let trial_ends_us = setup.trial.then(|| at_us + i64::from(terms.plan.trial_days) * DAY_US);
        let mut s = Subscription {
            id: id.into(),
            tenant: tenant.into(),
            term_years: setup.term_years,
            auto_renew: setup.auto_renew,
            entries: Vec::new(),
            trial_started_us: setup.trial.then_some(at_us),
            trial_ends_us,
            anchor_us: None,
            cycle_index: 0,
            cycle: None,
            past_due_since_us: None,
            suspends_us: None,
            ends_us: None,
            before_cancel: None,
        };
        let state = if setup.trial { State::Trial } else { State::Active };
        let created = Change::Created { term_years: setup.term_years, auto_renew: setup.auto_renew, trial_ends_us };
        s.push(at_us, created, by, state, &setup.plan, setup.cycle);
        if !setup.trial {
            s.start_cycle(at_us, CycleReason::Start, by, State::Active);
        }
        Ok(s)
    }

    /// The state now (as of the last entry; call [`Subscription::advance`] first).
    pub fn state(&self) -> State {
        self.last().state
    }

    /// The plan's code.
    pub fn plan(&self) -> &str {
        &self.last().plan
    }

    /// The billing cycle.
    pub fn cycle(&self) -> Cycle {
        self.last().cycle
    }

    /// When a past_due subscription is suspended unless paid (µs); `None` in any other state.
    pub fn suspends_at(&self) -> Option<i64> {
        match self.state() {
            State::PastDue => self.suspends_us.or(self.past_due_since_us.map(|t| t + GRACE_DAYS * DAY_US)),
            _ => None,
        }
    }

    /// The running cycle's start and end (µs), if one runs.
    pub fn current_cycle(&self) -> Option<(i64, i64)> {
        self.cycle
    }

    /// End of the trial (µs), while in one.
    pub fn trial_ends_us(&self) -> Option<i64> {
        self.trial_ends_us.filter(|_| self.state() == State::Trial)
    }

    /// When a cancelled subscription expires (µs).
    pub fn ends_us(&self) -> Option<i64> {
        self.ends_us
    }

    fn last(&self) -> &Entry {
        self.entries.last().expect("a subscription has its Created entry")
    }

    /// Applies every change that time brings up to `until_us` (trial ends, grace periods,
    /// renewals, expiries), each at the instant it was due.
    pub fn advance(&mut self, until_us: i64) {
        loop {
            let state = self.state();
            let Some((at, what)) = self.due().filter(|(at, _)| *at <= until_us) else { return };
            let (plan, cycle) = (self.plan().to_string(), self.cycle());
            match what {
                Due::TrialEnds => {
                    let trial_started_us = self.trial_started_us.unwrap_or(at);
                    self.push(at, Change::Converted { trial_started_us }, SCHEDULE, State::Active, &plan, cycle);
                    self.start_cycle(at, CycleReason::Conversion, SCHEDULE, State::Active);
                }
                Due::CancelledEnds => {
                    self.cycle = None;
                    self.push(at, Change::Expired, SCHEDULE, State::Expired, &plan, cycle);
                }
                Due::GraceEnds => self.push(at, Change::Suspended, SCHEDULE, State::Suspended, &plan, cycle),
                Due::CycleEnds if self.auto_renew => self.start_cycle(at, CycleReason::Renewal, SCHEDULE, state),
                Due::CycleEnds => {
                    self.cycle = None;
                    self.push(at, Change::Expired, SCHEDULE, State::Expired, &plan, cycle);
                }
                // A suspended subscription's paid cycle ran out: nothing renews until it is paid.
                Due::PaidCycleRunsOut => self.cycle = None,
            }
        }
    }

    /// When time alone next changes the state (a trial converting, a grace period running out,
    /// an expiry; a renewal keeps the state and does not count), if it ever does without a
    /// command. What a mirror of the subscription at a payment provider must be told then.
    pub fn next_state_change(&self) -> Option<i64> {
        // What `due` would bring, leaving out what keeps the state: a renewal (a cycle that
        // renews by itself), and a suspended subscription's paid cycle running out.
        let ends = self.cycle.map(|c| c.1).filter(|_| !self.auto_renew);
        match self.state() {
            State::Trial => self.trial_ends_us,
            State::Cancelled => self.ends_us,
            State::PastDue => {
                let suspends = self.suspends_us.or(self.past_due_since_us.map(|t| t + GRACE_DAYS * DAY_US));
                [suspends, ends].into_iter().flatten().min()
            }
            State::Active => ends,
            State::Suspended | State::Expired => None,
        }
    }

    /// The next thing time brings ([`Subscription::advance`]), and when.
    fn due(&self) -> Option<(i64, Due)> {
        match self.state() {
            State::Trial => self.trial_ends_us.map(|t| (t, Due::TrialEnds)),
            State::Cancelled => self.ends_us.map(|t| (t, Due::CancelledEnds)),
            State::PastDue => {
                let suspend = self.suspends_us.or(self.past_due_since_us.map(|t| t + GRACE_DAYS * DAY_US));
                let end = self.cycle.map(|c| c.1);
                match (suspend, end) {
                    (Some(s), Some(e)) if e < s => Some((e, Due::CycleEnds)),
                    (Some(s), _) => Some((s, Due::GraceEnds)),
                    (None, Some(e)) => Some((e, Due::CycleEnds)),
                    (None, None) => None,
                }
            }
            State::Active => self.cycle.map(|c| (c.1, Due::CycleEnds)),
            State::Suspended => self.cycle.map(|c| (c.1, Due::PaidCycleRunsOut)),
            State::Expired => None,
        }
    }

    /// Applies `command` at `at_us` (after bringing the subscription up to that instant), or
    /// refuses it with the commands the state allows.
    pub fn apply(&mut self, command: &Command, at_us: i64, by: &str, list: &PriceList) -> Result<(), Refusal> {
        if at_us < self.last().at_us {
            return Err(Refusal::Invalid {
                field: "at",
                message: "is before the subscription's last change: the audit trail only moves forward".into(),
            });
        }
        self.advance(at_us);
        let state = self.state();
        // Dunning is recorded while an invoice is being collected: in any state but a trial's
        // (nothing billed yet) and the end.
        let dunning = matches!(command, Command::Dunning(_)) && !matches!(state, State::Trial | State::Expired);
        if !dunning && !allowed(state).contains(&command.name()) {
            return Err(Refusal::Transition { state, action: command.name(), allowed: allowed(state).to_vec() });
        }
        let (plan, cycle) = (self.plan().to_string(), self.cycle());
        match command {
            Command::ChangePlan { plan: to, cycle: to_cycle } => {
                let to_cycle = to_cycle.unwrap_or(cycle);
                let terms = list.terms(&self.tenant, to).ok_or_else(|| unknown_plan(to, list))?;
                if terms.fee(to_cycle).is_none() {
                    return Err(not_sold(to, to_cycle, list));
                }
                if *to == plan && to_cycle == cycle {
                    return Err(Refusal::Invalid { field: "plan", message: format!("already on {plan}, {cycle}") });
                }
                let (cycle_start_us, cycle_end_us) = (self.cycle.map(|c| c.0), self.cycle.map(|c| c.1));
                let change = Change::PlanChanged { from_plan: plan, from_cycle: cycle, cycle_start_us, cycle_end_us };
                self.push(at_us, change, by, state, to, to_cycle);
                if to_cycle != cycle && state != State::Trial {
                    self.start_cycle(at_us, CycleReason::CycleChange, by, state);
                }
            }
            Command::Cancel => {
                let ends_us = match state {
                    State::Trial => self.trial_ends_us.unwrap_or(at_us),
                    _ => self.cycle.map_or(at_us, |c| c.1),
                };
                self.before_cancel = Some(state);
                self.ends_us = Some(ends_us);
                self.push(at_us, Change::Cancelled { ends_us }, by, State::Cancelled, &plan, cycle);
                self.advance(at_us);
            }
            Command::Reactivate => {
                // Payment makes it active; only a cancelled trial goes back to its trial.
                let to = match (state, self.before_cancel) {
                    (State::Cancelled, Some(State::Trial)) => State::Trial,
                    _ => State::Active,
                };
                self.ends_us = None;
                self.past_due_since_us = None;
                self.suspends_us = None;
                self.push(at_us, Change::Reactivated, by, to, &plan, cycle);
                if to != State::Trial && self.cycle.is_none() {
                    self.start_cycle(at_us, CycleReason::Reactivation, by, to);
                }
            }
            Command::PaymentFailed { grace_us } => {
                self.past_due_since_us = Some(at_us);
                self.suspends_us = Some(at_us.saturating_add(grace_us.unwrap_or(GRACE_DAYS * DAY_US)));
                self.push(at_us, Change::PaymentFailed, by, State::PastDue, &plan, cycle);
            }
            Command::Dunning(step) => self.push(at_us, Change::Dunning(step.clone()), by, state, &plan, cycle),
            Command::Convert => {
                let trial_started_us = self.trial_started_us.unwrap_or(at_us);
                self.push(at_us, Change::Converted { trial_started_us }, by, State::Active, &plan, cycle);
                self.start_cycle(at_us, CycleReason::Conversion, by, State::Active);
            }
        }
        Ok(())
    }

    fn start_cycle(&mut self, at_us: i64, reason: CycleReason, by: &str, state: State) {
        let months = self.cycle().months();
        let (start_us, end_us) = match (reason, self.anchor_us) {
            (CycleReason::Renewal, Some(anchor)) => {
                // Counted from the anchor, so that a clamped day (Jan 31 → Feb 28) does not drift.
                self.cycle_index += 1;
                (add_months(anchor, months * self.cycle_index), add_months(anchor, months * (self.cycle_index + 1)))
            }
            _ => {
                self.anchor_us = Some(at_us);
                self.cycle_index = 0;
                (at_us, add_months(at_us, months))
            }
        };
        self.cycle = Some((start_us, end_us));
        let (plan, cycle) = (self.plan().to_string(), self.cycle());
        self.push(at_us, Change::CycleStarted { reason, start_us, end_us }, by, state, &plan, cycle);
    }

    fn push(&mut self, at_us: i64, change: Change, by: &str, state: State, plan: &str, cycle: Cycle) {
        let seq = self.entries.len() as u32 + 1;
        self.entries.push(Entry { seq, at_us, change, by: by.into(), state, plan: plan.into(), cycle });
    }
}

fn unknown_plan(plan: &str, list: &PriceList) -> Refusal {
    let known: Vec<_> = list.plans.keys().map(String::as_str).collect();
    Refusal::Invalid { field: "plan", message: format!("unknown plan {plan:?} (plans: {})", known.join(", ")) }
}

fn not_sold(plan: &str, cycle: Cycle, list: &PriceList) -> Refusal {
    let offered: Vec<_> =
        list.plans.get(plan).map(|p| p.fee.keys().map(|c| c.to_string()).collect()).unwrap_or_default();
    Refusal::Invalid {
        field: "cycle",
        message: format!("plan {plan} is not sold {cycle} (cycles: {})", offered.join(", ")),
    }
}

/// `time_us` plus `months` calendar months, at the same time of day; a day that the month lacks
/// becomes its last (January 31 plus one month is February 28 or 29).
pub fn add_months(time_us: i64, months: u32) -> i64 {
    let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(time_us) * 1000).expect("a time in range");
    let total = t.year() * 12 + i32::from(u8::from(t.month())) - 1 + months as i32;
    let (year, month) = (total.div_euclid(12), time::Month::try_from((total.rem_euclid(12) + 1) as u8).expect("1-12"));
    let day = t.day().min(month.length(year));
    let date = time::Date::from_calendar_date(year, month, day).expect("a valid day");
    let moved = t.replace_date(date);
    (moved.unix_timestamp_nanos() / 1000) as i64
}
