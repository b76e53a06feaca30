//! What the handlers share: built by the composition root (`meter serve` and the role starters).

use meter_aggregator::Aggregator;
use meter_auth::KeyStore;
use meter_billing::{Sources, Subscriptions};
use meter_schemas::Catalog;
use meter_store::{LiveStore, UsageReads, UsageStore};
use metrics_exporter_prometheus::PrometheusHandle;
use std::sync::{Arc, Mutex};

/// What the API handlers share.
pub struct AppState {
    /// API keys.
    pub keys: Arc<KeyStore>,
    /// Browser sessions: the customer portal's and the finance console's.
    pub sessions: Arc<meter_auth::Sessions>,
    /// The live counters: the aggregator's store, and the alerts it raises.
    pub live: Arc<dyn LiveStore>,
    /// Where usage is read from: the live counters or the history.
    pub reads: UsageReads,
    /// Meters.
    pub catalog: Arc<Catalog>,
    /// Subscriptions, prices and period close.
    pub billing: Billing,
    /// Webhook endpoints and deliveries.
    pub webhooks: Arc<meter_webhooks::Webhooks>,
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
    /// The roles this process runs, for readiness.
    pub health: Health,
}

impl AppState {
    /// The live counters as the usage-store port.
    pub fn store(&self) -> &dyn UsageStore {
        &*self.live
    }
}

/// What billing needs besides the rest of the state.
pub struct Billing {
    /// Subscriptions (with the ledger, the prices and every tenant's plan).
    pub subscriptions: Subscriptions,
    /// Where a close reads its figures.
    pub sources: Sources,
    /// The secrets Stripe signs its events with (`[stripe] webhook_secret`, and the previous
    /// one during a rotation); none: Stripe's events are not taken.
    pub stripe_webhook_secrets: Vec<String>,
    /// The payment provider, for reconciliation, Checkout and the customer portal.
    pub provider: Arc<dyn meter_billing_sync::Provider>,
    /// Where Checkout and the customer portal send the customer back to, unless a request says
    /// (`[stripe] return_url`).
    pub return_url: Option<String>,
}

/// The consumers this process runs, whose state readiness reports. The composition root takes
/// them back at shutdown to drain them.
#[derive(Default)]
pub struct Health {
    /// Whether this process aggregates (an aggregator that stopped makes it unready).
    pub runs_aggregator: bool,
    /// The aggregator, while it runs.
    pub aggregator: Mutex<Option<Aggregator>>,
    /// The ClickHouse sink, while it runs.
    pub sink: Mutex<Option<Aggregator>>,
    /// The shared state's database, when it is a server (Postgres): checked at each readiness
    /// probe.
    pub state: Option<Arc<dyn StateProbe>>,
}

/// A check that the shared state's server answers.
pub trait StateProbe: Send + Sync {
    /// `Ok` when it answers in time; otherwise why not, naming the server (never a password).
    fn check(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + '_>>;
}

impl Health {
    /// `Ok` while the aggregator consumes (or this process runs none); otherwise why not.
    pub fn aggregator_status(&self) -> Result<(), String> {
        if !self.runs_aggregator {
            return Ok(());
        }
        let guard = self.aggregator.lock().map_err(|_| "state poisoned".to_string())?;
        match guard.as_ref() {
            None => Err("aggregator stopped".into()),
            Some(a) if a.is_finished() => Err("aggregator stopped".into()),
            Some(a) => a.failure().map_or(Ok(()), |e| Err(format!("aggregator failing, retrying: {e}"))),
        }
    }

    /// `Ok` while the ClickHouse sink inserts (or this process runs none); otherwise why not.
    /// Ingest keeps accepting meanwhile: the log holds what the sink has not inserted yet.
    pub fn sink_status(&self) -> Result<(), String> {
        let guard = self.sink.lock().map_err(|_| "state poisoned".to_string())?;
        match guard.as_ref() {
            None => Ok(()),
            Some(s) if s.is_finished() => Err("clickhouse sink stopped".into()),
            Some(s) => s.failure().map_or(Ok(()), |e| Err(format!("clickhouse sink failing, retrying: {e}"))),
        }
    }

    /// Takes the aggregator and the sink back, for shutdown.
    pub fn take(&self) -> (Option<Aggregator>, Option<Aggregator>) {
        let take = |m: &Mutex<Option<Aggregator>>| m.lock().unwrap_or_else(|e| e.into_inner()).take();
        (take(&self.aggregator), take(&self.sink))
    }
}
