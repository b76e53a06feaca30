//! Collecting a pushed invoice, and dunning driven by meter (the provider's own automatic
//! collection stays off for the invoices meter makes).
//!
//! Each step is an outbox operation ([`OpKind::Collect`]) with its own idempotency key, written
//! by the step before it in the same transaction that settles that one:
//!
//! - **first**: a `charge_automatically` invoice is charged; a `send_invoice` one is sent, and
//!   its **due** step is written for its due date;
//! - **due**: a sent invoice unpaid at its due date (read back from the provider) counts as a
//!   failed payment from then;
//! - **retry n**: after a failure, the n-th retry (`[sync] retries`, 1, 3 and 7 days after the
//!   first failure by default) charges again, or sends a reminder;
//! - **settling**: a payment on its way (a SEPA or ACH debit, which takes days) is neither paid
//!   nor failed: its invoice is looked at again every `[sync] settling_check` (a day by
//!   default) until it is paid, or the payment did not go through, which is then the failure
//!   of the attempt that started it.
//!
//! A failure makes the tenant's active subscription past_due (suspended when its grace period,
//! `[billing] grace`, runs out unpaid) and writes the next retry, if one is left; the first
//! failure also writes the [`OpKind::CheckSuspension`] for the moment the grace runs out. Each
//! failure, each retry scheduled and the suspension are posted to the tenant's webhook
//! endpoints (`billing.payment_failed`, `billing.payment_retry_scheduled`, `billing.suspended`),
//! named so that a step tried again never posts twice. A payment at any point (a retry that
//! goes through, `invoice.paid` from the provider) makes the subscription active again, and the
//! steps still due find the invoice paid and do nothing.

use crate::events::{apply, paid};
use crate::provider::{Ask, Collected, Collection, Provider};
use meter_billing::Subscriptions;
use meter_billing::ledger::outbox::{NewOperation, OpKind, RemoteInvoice, Settle};
use meter_rater::subscription::{Change, Dunning};
use meter_rater::{Command, State};
use meter_schemas::period::format_time;
use meter_webhooks::Webhooks;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The retries of dunning by default: 1, 3 and 7 days after the first failure.
pub const DEFAULT_RETRIES: [Duration; 3] =
    [Duration::from_secs(86_400), Duration::from_secs(3 * 86_400), Duration::from_secs(7 * 86_400)];

/// While a payment is on its way, how often its invoice is looked at again by default.
pub const DEFAULT_SETTLING_CHECK: Duration = Duration::from_secs(86_400);

/// Which step of collecting an invoice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Step {
    /// Charge it, or send it.
    First,
    /// The due date of a sent invoice.
    Due,
    /// The `n`-th retry after a failure (1, 2, …).
    Retry {
        /// Which.
        n: u32,
    },
    /// The `n`-th look (1, 2, …) at a payment that attempt `attempt` started and that was on its
    /// way.
    Settling {
        /// The attempt whose payment it is.
        attempt: u32,
        /// Which look.
        n: u32,
    },
}

impl Step {
    /// Its name in the operation's subject.
    fn label(self) -> String {
        match self {
            Step::First => "first".into(),
            Step::Due => "due".into(),
            Step::Retry { n } => format!("retry-{n}"),
            Step::Settling { attempt, n } => format!("settling-{attempt}-{n}"),
        }
    }

    /// The attempt it makes at the provider: 0 first, n for the n-th retry.
    fn attempt(self) -> u32 {
        match self {
            Step::First | Step::Due => 0,
            Step::Retry { n } => n,
            Step::Settling { attempt, .. } => attempt,
        }
    }
}

/// The body of an [`OpKind::Collect`] operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Collect {
    /// meter's invoice.
    pub invoice: String,
    /// The provider's invoice.
    pub remote: String,
    /// The tenant.
    pub tenant: String,
    /// The subscription the invoice bills, whose trail records each step of dunning.
    #[serde(default)]
    pub subscription: Option<String>,
    /// The period the invoice bills.
    pub period: Option<String>,
    /// How it is collected.
    pub collection: Collection,
    /// Which step this is.
    #[serde(flatten)]
    pub step: Step,
    /// When it is due (`send_invoice`), µs.
    pub due_us: Option<i64>,
    /// When its payment first failed (dunning counts from then), µs.
    pub failed_us: Option<i64>,
}

impl Collect {
    /// The first step of collecting `remote`, the provider's invoice for meter's `invoice`.
    pub fn first(invoice: &meter_rater::Invoice, remote: &str, collection: Collection, due_us: Option<i64>) -> Self {
        Collect {
            invoice: invoice.id.clone(),
            remote: remote.to_string(),
            tenant: invoice.tenant.clone(),
            subscription: Some(invoice.subscription.clone()),
            period: Some(invoice.period.to_string()),
            collection,
            step: Step::First,
            due_us,
            failed_us: None,
        }
    }

    /// This step as an operation due at `next_us`.
    pub fn operation(&self, next_us: i64) -> NewOperation {
        NewOperation {
            kind: OpKind::Collect,
            subject: format!("{}/{}", self.invoice, self.step.label()),
            tenant: self.tenant.clone(),
            period: self.period.clone(),
            body: serde_json::to_string(self).expect("a collection step serializes"),
            next_us,
        }
    }
}

/// The body of an [`OpKind::CheckSuspension`] operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckSuspension {
    /// meter's invoice whose failed payment started the grace period.
    pub invoice: String,
    /// The provider's invoice.
    pub remote: String,
    /// The tenant.
    pub tenant: String,
    /// The subscription that went past_due.
    pub subscription: String,
}

/// What a step came to, as the operation's outcome records it.
#[derive(Serialize)]
struct Outcome<'a> {
    step: String,
    result: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
}

fn done(step: String, result: &str, detail: Option<String>, then: Vec<NewOperation>) -> Settle {
    let outcome = serde_json::to_string(&Outcome { step, result, detail }).expect("outcomes serialize");
    Settle::Done { outcome, then }
}

fn micros(d: Duration) -> i64 {
    d.as_micros().min(i64::MAX as u128) as i64
}

/// Works the steps of collection and dunning.
pub(crate) struct Collector<'a> {
    pub subs: &'a Subscriptions,
    pub provider: &'a dyn Provider,
    pub notices: &'a Webhooks,
    pub retries: &'a [Duration],
    pub settling_check: Duration,
}

impl Collector<'_> {
    /// Performs step `c` at `now_us`; it was first tried at `first_tried_us` (a failure of a
    /// first step or a due date counts from then, however often it is tried again).
    pub async fn step(&self, c: &Collect, first_tried_us: i64, now_us: i64) -> Result<Settle, crate::Error> {
        let ledger = &self.subs.ledger;
        let label = c.step.label();
        let known = ledger.store().remote_invoice(c.remote.clone()).await?;
        if let Some(k) = known.as_ref().filter(|k| k.is_settled()) {
            return Ok(done(label, "nothing_to_collect", Some(format!("the invoice is {}", k.status)), vec![]));
        }
        // A failure counts from the first failure (retries), or from when this step was first
        // tried (a first charge, a due date), however often it is tried again.
        let since = c.failed_us.unwrap_or(first_tried_us);
        // At a due date, where the invoice stands at the provider, not only what meter heard of
        // it (a transfer's invoice.paid may not have come yet).
        let ask = match (c.step, c.collection) {
            (Step::Due | Step::Settling { .. }, _) => Ask::Check,
            (_, Collection::ChargeAutomatically) => Ask::Pay,
            (_, Collection::SendInvoice { .. }) => Ask::Send,
        };
        match self.provider.collect(&c.remote, ask, c.step.attempt()).await? {
            Collected::Paid => {
                let known = known.unwrap_or_else(|| self.unrecorded(c));
                let detail = paid(ledger, self.subs, known, now_us, now_us).await?;
                self.trail(c, "paid", None, None, now_us).await?;
                Ok(done(label, "paid", Some(detail), vec![]))
            }
            Collected::Closed(status) => {
                let known = known.unwrap_or_else(|| self.unrecorded(c));
                ledger.store().record_remote_invoice(RemoteInvoice { status: status.clone(), ..known }).await?;
                Ok(done(label, "nothing_to_collect", Some(format!("the invoice is {status}")), vec![]))
            }
            Collected::Processing => {
                let n = match c.step {
                    Step::Settling { n, .. } => n + 1,
                    _ => 1,
                };
                let next_us = now_us.saturating_add(micros(self.settling_check));
                let look = Collect { step: Step::Settling { attempt: c.step.attempt(), n }, ..c.clone() };
                let detail = format!("a payment is on its way; looked at again at {}", format_time(next_us));
                Ok(done(label, "processing", Some(detail), vec![look.operation(next_us)]))
            }
            Collected::Sent if matches!(c.step, Step::Settling { .. }) => {
                self.failed(c, since, "the payment on its way did not go through".into(), now_us).await
            }
            Collected::Sent if c.step == Step::Due => {
                self.failed(c, since, "unpaid at its due date".into(), now_us).await
            }
            Collected::Sent if c.step == Step::First => {
                let due_us = c.due_us.unwrap_or(now_us);
                let due = Collect { step: Step::Due, ..c.clone() };
                Ok(done(label, "sent", Some(format!("due {}", format_time(due_us))), vec![due.operation(due_us)]))
            }
            Collected::Sent => {
                self.failed(c, since, "still unpaid after its due date; a reminder was sent".into(), now_us).await
            }
            Collected::Declined(reason) => self.failed(c, since, reason, now_us).await,
        }
    }

    /// What meter records of an invoice it pushed but finds no record of (a ledger restored
    /// from before the push).
    fn unrecorded(&self, c: &Collect) -> RemoteInvoice {
        RemoteInvoice {
            remote: c.remote.clone(),
            invoice: c.invoice.clone(),
            tenant: c.tenant.clone(),
            status: "open".into(),
            sent_us: None,
            due_us: c.due_us,
            paid_us: None,
            hosted_url: None,
            pdf_url: None,
        }
    }

    /// Attempt `c` ended unpaid (dunning counting from `failed_us`): the subscription goes
    /// past_due, the tenant is told, and the next retry and the end of the grace period are
    /// written.
    async fn failed(&self, c: &Collect, failed_us: i64, reason: String, now_us: i64) -> Result<Settle, crate::Error> {
        let ledger = &self.subs.ledger;
        let attempt = c.step.attempt();
        let subscription =
            apply(ledger, self.subs, &c.tenant, Command::PaymentFailed { grace_us: None }, &[State::Active], now_us)
                .await?;
        let data = serde_json::json!({
            "invoice": c.invoice, "provider_invoice": c.remote, "attempt": attempt, "reason": reason,
            "failed_at": format_time(failed_us),
        });
        let id = format!("billing.payment_failed:{}:{attempt}", c.remote);
        self.notices.notify(&c.tenant, &id, "billing.payment_failed", data, now_us).await?;
        let mut then = Vec::new();
        let mut detail = format!("{reason}; {subscription}");
        let next_us = self.retries.get(attempt as usize).map(|pause| failed_us.saturating_add(micros(*pause)));
        self.trail(c, "failed", Some(reason.clone()), next_us, now_us).await?;
        if let Some(at_us) = next_us {
            let n = attempt + 1;
            then.push(Collect { step: Step::Retry { n }, failed_us: Some(failed_us), ..c.clone() }.operation(at_us));
            let data = serde_json::json!({
                "invoice": c.invoice, "provider_invoice": c.remote, "attempt": n, "at": format_time(at_us),
            });
            let id = format!("billing.payment_retry_scheduled:{}:{n}", c.remote);
            self.notices.notify(&c.tenant, &id, "billing.payment_retry_scheduled", data, now_us).await?;
            detail.push_str(&format!("; retry {n} at {}", format_time(at_us)));
        } else {
            detail.push_str("; no retry left");
        }
        // The end of the grace period, written whenever the subscription is past_due after a
        // failure: named by when it comes, so the same grace is written once however often it
        // is seen, and a new one (past_due again after a payment) gets its own.
        if let Some((sub, suspends_us)) = self.past_due(&c.tenant, now_us).await? {
            let check = CheckSuspension {
                invoice: c.invoice.clone(),
                remote: c.remote.clone(),
                tenant: c.tenant.clone(),
                subscription: sub,
            };
            then.push(NewOperation {
                kind: OpKind::CheckSuspension,
                subject: format!("{}@{suspends_us}", c.invoice),
                tenant: c.tenant.clone(),
                period: c.period.clone(),
                body: serde_json::to_string(&check).expect("a suspension check serializes"),
                next_us: suspends_us,
            });
            detail.push_str(&format!("; suspended at {} unless paid", format_time(suspends_us)));
        }
        Ok(done(c.step.label(), "failed", Some(detail), then))
    }

    /// Records step `c`'s `outcome` in its subscription's trail, once (a step tried again after a
    /// crash finds it there). A subscription that can no longer take it (expired) is left as it
    /// is.
    async fn trail(
        &self,
        c: &Collect,
        outcome: &str,
        reason: Option<String>,
        next_retry_us: Option<i64>,
        now_us: i64,
    ) -> Result<(), crate::Error> {
        let Some(id) = &c.subscription else { return Ok(()) };
        let step = Dunning {
            invoice: c.invoice.clone(),
            attempt: c.step.attempt(),
            outcome: outcome.into(),
            reason,
            next_retry_us,
        };
        let sub = match self.subs.ledger.get(id).await {
            Ok(sub) => sub,
            Err(meter_billing::Error::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let recorded = sub.entries.iter().any(|e| {
            matches!(&e.change, Change::Dunning(d) if d.invoice == step.invoice && d.attempt == step.attempt && d.outcome == step.outcome)
        });
        if recorded {
            return Ok(());
        }
        // Not before the trail's last entry (the events' processor may have written one since
        // this step's clock was read).
        let at_us = sub.entries.last().map_or(now_us, |e| e.at_us.max(now_us));
        match self.subs.apply(id, Command::Dunning(step), at_us, "meter", now_us).await {
            Ok(_) => Ok(()),
            Err(
                e @ (meter_billing::Error::Refused(meter_rater::Refusal::Transition { .. })
                | meter_billing::Error::Closed(_)),
            ) => {
                tracing::warn!(subscription = %id, error = %e, "a step of dunning not recorded in the trail");
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The tenant's past_due subscription at `now_us` and when it is suspended unless paid.
    async fn past_due(&self, tenant: &str, now_us: i64) -> Result<Option<(String, i64)>, crate::Error> {
        let subs = self.subs.ledger.list(Some(tenant)).await?;
        Ok(subs.into_iter().rev().find_map(|mut s| {
            s.advance(now_us);
            s.suspends_at().map(|at| (s.id.clone(), at))
        }))
    }

    /// At the end of the grace period: tells the tenant its subscription is suspended, unless
    /// the invoice was paid meanwhile.
    pub async fn check_suspension(&self, c: &CheckSuspension, now_us: i64) -> Result<Settle, crate::Error> {
        let ledger = &self.subs.ledger;
        let step = "check_suspension".to_string();
        if let Some(k) = ledger.store().remote_invoice(c.remote.clone()).await?.filter(|k| k.is_settled()) {
            return Ok(done(step, "not_suspended", Some(format!("the invoice is {}", k.status)), vec![]));
        }
        let mut sub = ledger.get(&c.subscription).await?;
        sub.advance(now_us);
        if sub.state() != State::Suspended {
            return Ok(done(step, "not_suspended", Some(format!("the subscription is {}", sub.state())), vec![]));
        }
        let since = sub.entries.iter().rev().find(|e| e.state != State::Suspended).map_or(0, |e| e.seq + 1);
        let at_us = sub.entries.iter().find(|e| e.seq == since).map_or(now_us, |e| e.at_us);
        let data = serde_json::json!({
            "subscription": sub.id, "invoice": c.invoice, "provider_invoice": c.remote, "suspended_at": format_time(at_us),
        });
        let id = format!("billing.suspended:{}:{since}", sub.id);
        self.notices.notify(&c.tenant, &id, "billing.suspended", data, now_us).await?;
        // The suspension came with time, not with a change written to the ledger: its mirror is
        // the one written with the failure (the same operation, should that one be missing).
        let mirror = vec![meter_billing::ledger::outbox::mirror_at(&sub, at_us)];
        Ok(done(
            step,
            "suspended",
            Some(format!("subscription {} suspended at {}", sub.id, format_time(at_us))),
            mirror,
        ))
    }
}
