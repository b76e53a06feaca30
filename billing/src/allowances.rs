//! What each tenant's plan includes, for the alerts the usage store raises: a snapshot in
//! memory of every tenant's current plan, refreshed from the ledger.

use crate::{Error, Ledger};
use meter_rater::pricebook::Allowance;
use meter_rater::{PriceBook, State};
use meter_schemas::Period;
use meter_store::{Allowances, Watch};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// Every tenant's plan (from its subscription that has not expired) and the price book.
pub struct PlanAllowances {
    book: Arc<PriceBook>,
    plans: RwLock<HashMap<String, String>>,
    /// One refresh at a time, so that an older snapshot never lands after a newer one.
    refreshing: tokio::sync::Mutex<()>,
}

impl PlanAllowances {
    /// Empty until the first [`PlanAllowances::refresh`].
    pub fn new(book: Arc<PriceBook>) -> Self {
        PlanAllowances { book, plans: RwLock::new(HashMap::new()), refreshing: tokio::sync::Mutex::new(()) }
    }

    /// Reads every subscription's plan at `now_us` from the ledger.
    pub async fn refresh(&self, ledger: &Ledger, now_us: i64) -> Result<(), Error> {
        let _one = self.refreshing.lock().await;
        let mut plans = HashMap::new();
        for mut s in ledger.list(None).await? {
            s.advance(now_us);
            if s.state() != State::Expired {
                plans.insert(s.tenant.clone(), s.plan().to_string());
            }
        }
        *self.plans.write().unwrap_or_else(|e| e.into_inner()) = plans;
        Ok(())
    }
}

impl PlanAllowances {
    /// The plan `tenant` is on now, if it has a subscription that has not expired.
    pub fn plan_of(&self, tenant: &str) -> Option<String> {
        self.plans.read().unwrap_or_else(|e| e.into_inner()).get(tenant).cloned()
    }

    /// The price book.
    pub fn book(&self) -> &PriceBook {
        &self.book
    }

    /// The hard limits of `tenant`'s plan in `period`: `(meter, included, plan)`.
    pub fn hard_limits(&self, tenant: &str, period: Period) -> Vec<(String, rust_decimal::Decimal, String)> {
        let Some(code) = self.plan_of(tenant) else { return Vec::new() };
        let Some(terms) = self.book.for_period(period).and_then(|l| l.terms(tenant, &code)) else { return Vec::new() };
        terms
            .meters()
            .into_iter()
            .filter(|(_, p)| p.hard_limit)
            .filter_map(|(m, p)| match p.included {
                Allowance::Up(q) => Some((m.to_string(), q, code.clone())),
                Allowance::Unlimited => None,
            })
            .collect()
    }
}

impl Allowances for PlanAllowances {
    fn watch(&self, tenant: &str, meter: &str, period: Period) -> Option<Watch> {
        let plans = self.plans.read().unwrap_or_else(|e| e.into_inner());
        let code = plans.get(tenant)?;
        let terms = self.book.for_period(period)?.terms(tenant, code)?;
        let included = match terms.seats().filter(|s| s.meter == meter) {
            Some(seats) => seats.included,
            None => match terms.meter(meter)?.included {
                Allowance::Up(q) => q,
                Allowance::Unlimited => return None,
            },
        };
        (included > rust_decimal::Decimal::ZERO).then(|| Watch {
            included,
            percents: terms.plan.alerts.clone(),
            plan: code.clone(),
        })
    }
}

/// Ingest's rate quotas go by the plan a tenant is on now.
impl meter_ingest::Plans for PlanAllowances {
    fn plan_of(&self, tenant: &str) -> Option<String> {
        PlanAllowances::plan_of(self, tenant)
    }
}
