//! Changing subscriptions, and what follows a change: the price list in effect at the change,
//! the ledger's record, and the alerts' view of the tenant's plan (thresholds its counters
//! already reached under the new plan are raised at once rather than at the next event). Also
//! the statistics finance reads (states, trial conversion).

use crate::{Error, Ledger, PlanAllowances};
use meter_rater::subscription::Change;
use meter_rater::{Command, PriceBook, PriceList, Refusal, Setup, State, Subscription};
use meter_schemas::Period;
use meter_store::LiveStore;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Subscriptions, with what a change must keep in step.
#[derive(Clone)]
pub struct Subscriptions {
    /// Subscriptions and closes.
    pub ledger: Ledger,
    /// Every tenant's plan, for alerts and hard limits.
    pub allowances: Arc<PlanAllowances>,
    /// Prices.
    pub book: Arc<PriceBook>,
    /// The live counters, which raise the alerts.
    pub live: Arc<dyn LiveStore>,
    /// From a failed payment to suspension, unless a command gives its own.
    pub grace: std::time::Duration,
}

/// The grace period by default: [`meter_rater::subscription::GRACE_DAYS`].
pub const DEFAULT_GRACE: std::time::Duration =
    std::time::Duration::from_secs(meter_rater::subscription::GRACE_DAYS as u64 * 86_400);

/// Subscriptions by state, and how trials end.
#[derive(Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SubscriptionStats {
    /// Count by state now.
    pub by_state: BTreeMap<String, usize>,
    /// Trials started.
    pub trials_started: usize,
    /// Trials that became paid subscriptions.
    pub trials_converted: usize,
    /// Trials cancelled before converting.
    pub trials_cancelled: usize,
    /// Trials still running.
    pub trials_running: usize,
    /// Converted over ended trials (converted + cancelled), 0 to 1, as decimal text; absent
    /// before any trial ended.
    pub conversion_rate: Option<String>,
}

impl Subscriptions {
    /// The price list in effect at `at_us`; a change dated where none is, is refused (`at`).
    fn list_at(&self, at_us: i64) -> Result<PriceList, Error> {
        let period = Period::containing(at_us);
        self.book.for_period(period).cloned().ok_or_else(|| {
            Error::Refused(Refusal::Invalid { field: "at", message: format!("no price list is effective in {period}") })
        })
    }

    /// Creates `tenant`'s subscription at `at_us`, by `by` (a key id).
    pub async fn create(
        &self,
        tenant: &str,
        setup: Setup,
        at_us: i64,
        by: &str,
        now_us: i64,
    ) -> Result<Subscription, Error> {
        let list = self.list_at(at_us)?;
        let sub = self.ledger.create(tenant, setup, at_us, by, &list).await?;
        self.plan_changed(&sub.tenant, now_us).await?;
        Ok(sub)
    }

    /// Whether `tenant` could start `setup` at `at_us` (a plan of the price list then, sold on
    /// that cycle; no other live subscription), without starting it: the price list it would
    /// start on. A sign-up checks this before it sends the customer to pay.
    pub async fn check_create(&self, tenant: &str, setup: &Setup, at_us: i64) -> Result<PriceList, Error> {
        let list = self.list_at(at_us)?;
        Subscription::create("sub_check", tenant, setup, at_us, "check", &list)?;
        crate::ledger::admit_new(&self.ledger.list(Some(tenant)).await?, at_us)?;
        Ok(list)
    }

    /// Applies `command` to subscription `id` at `at_us`, by `by` (a key id).
    pub async fn apply(
        &self,
        id: &str,
        command: Command,
        at_us: i64,
        by: &str,
        now_us: i64,
    ) -> Result<Subscription, Error> {
        let list = self.list_at(at_us)?;
        let command = match command {
            Command::PaymentFailed { grace_us: None } => {
                Command::PaymentFailed { grace_us: Some(self.grace.as_micros().min(i64::MAX as u128) as i64) }
            }
            other => other,
        };
        let sub = self.ledger.apply(id, command, at_us, by, list).await?;
        self.plan_changed(&sub.tenant, now_us).await?;
        Ok(sub)
    }

    /// After a subscription changed: the alerts use the new plan at once, and thresholds its
    /// counters already reached under it are raised now rather than at the next event.
    async fn plan_changed(&self, tenant: &str, now_us: i64) -> Result<(), Error> {
        self.allowances.refresh(&self.ledger, now_us).await?;
        let (live, tenant) = (self.live.clone(), tenant.to_string());
        tokio::task::spawn_blocking(move || live.reevaluate(&tenant, Period::containing(now_us)))
            .await
            .map_err(|e| Error::Task(e.to_string()))??;
        Ok(())
    }

    /// `period`'s recurring revenue: MRR, ARR and their movements ([`crate::revenue`]); and
    /// what it billed, collected by `as_of_us` and recognised, with deferred revenue
    /// ([`crate::recognition`]).
    pub async fn revenue(&self, period: Period, as_of_us: i64) -> Result<crate::revenue::Revenue, Error> {
        let subs = self.ledger.list(None).await?;
        let book = self.book.clone();
        let first = (0..crate::recognition::LOOKBACK_MONTHS).fold(period, |p, _| p.previous());
        let invoices = self.ledger.invoices_between(first, period).await?;
        // Where the month's own invoices stand at the provider: what was collected of them.
        let ids = invoices.iter().filter(|i| i.period == period).map(|i| i.id.clone()).collect();
        let held = self.ledger.store().remote_invoices_of(ids).await?;
        tokio::task::spawn_blocking(move || {
            let recognition = crate::recognition::recognition(&invoices, &held, period, as_of_us);
            crate::revenue::revenue(&subs, &book, period).with_recognition(recognition)
        })
        .await
        .map_err(|e| Error::Task(e.to_string()))
    }

    /// Counts of subscriptions by state at `now_us`, and how trials ended.
    pub async fn stats(&self, now_us: i64) -> Result<SubscriptionStats, Error> {
        let mut stats = SubscriptionStats::default();
        for mut s in self.ledger.list(None).await? {
            s.advance(now_us);
            *stats.by_state.entry(s.state().to_string()).or_default() += 1;
            let trial = s.entries.first().is_some_and(|e| e.state == State::Trial);
            if !trial {
                continue;
            }
            stats.trials_started += 1;
            let converted = s.entries.iter().any(|e| matches!(e.change, Change::Converted { .. }));
            match (converted, s.state()) {
                (true, _) => stats.trials_converted += 1,
                (false, State::Trial) => stats.trials_running += 1,
                (false, _) => stats.trials_cancelled += 1,
            }
        }
        let ended = stats.trials_converted + stats.trials_cancelled;
        if ended > 0 {
            let rate = Decimal::from(stats.trials_converted) / Decimal::from(ended);
            stats.conversion_rate = Some(rate.round_dp(4).normalize().to_string());
        }
        Ok(stats)
    }
}
