//! Webhook delivery of alerts and billing notices. Endpoints registered by tenants (their own)
//! and admins (every tenant's, or one's) receive each alert (`usage.*`) and each billing notice
//! of the sync stage's dunning (`billing.payment_failed`, `billing.payment_retry_scheduled`,
//! `billing.suspended`; [`Webhooks::notify`]) as a signed POST ([`signature`]); a failed
//! delivery is retried with exponential backoff until [`Settings::retry_for`] has passed since
//! its first attempt, then kept in a dead-letter list from which it can be retried by hand.
//!
//! State lives behind the [`WebhookStore`] port (SQLite's `webhooks.db` by default): endpoints,
//! one delivery per alert and endpoint (so an alert is never queued twice for one endpoint), and
//! how far the alerts have been fanned out.

pub mod contract;
mod deliver;
pub mod guard;
mod postgres;
pub mod signature;
mod sqlite;
pub mod store;
pub mod topic;

pub use postgres::PgWebhooks;
pub use signature::{Invalid, sign, verify};
pub use sqlite::SqliteWebhooks;
pub use store::WebhookStore;

use meter_schemas::period::{format_time, now_us};
use meter_store::{Alert, LiveStore};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Metric names of webhook delivery, declared once.
pub mod metric {
    /// Delivery attempts, by `outcome` (`delivered`, `failed` or `dead`).
    pub const ATTEMPTS: &str = "meter_webhooks_attempts_total";
    /// Time from an alert being raised to its first successful delivery.
    pub const ALERT_TO_DELIVERY: &str = "meter_webhooks_alert_to_delivery_seconds";
}

/// How deliveries are retried.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Retry for this long after the first attempt, then give up (dead letter).
    pub retry_for: Duration,
    /// Wait after the first failure; doubled after each further one.
    pub first_backoff: Duration,
    /// Longest wait between attempts.
    pub max_backoff: Duration,
    /// A receiver that has not answered in this long failed.
    pub timeout: Duration,
    /// How often the dispatcher looks for new alerts and due deliveries.
    pub poll: Duration,
    /// Let tenants register endpoints on loopback, private and link-local addresses (for
    /// development; admins always may).
    pub allow_private_targets: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            retry_for: Duration::from_secs(24 * 3600),
            first_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(3600),
            timeout: Duration::from_secs(10),
            poll: Duration::from_millis(100),
            allow_private_targets: false,
        }
    }
}

/// Errors of webhook delivery.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No such endpoint or delivery (or not the caller's).
    #[error("no {0}")]
    NotFound(String),
    /// A bad field.
    #[error("{field}: {message}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// Why.
        message: String,
    },
    /// The delivery is not in a state that allows it.
    #[error("{0}")]
    Conflict(String),
    /// Storage failed.
    #[error(transparent)]
    Storage(#[from] meter_sqlite::Error),
    /// The shared state in Postgres failed.
    #[error(transparent)]
    Postgres(#[from] meter_postgres::Error),
    /// The usage store failed.
    #[error("usage store: {0}")]
    Store(#[from] meter_store::Error),
    /// The alerts topic's brokers failed or could not be reached.
    #[error("kafka: {0}")]
    Kafka(String),
    /// The HTTP client that posts deliveries could not be built.
    #[error("webhook HTTP client: {0}")]
    Client(String),
    /// A send's task panicked or was cancelled.
    #[error("{0}")]
    Task(String),
}

/// A registered endpoint (its secret is shown once, at registration).
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Endpoint {
    /// Id.
    pub id: String,
    /// Where alerts are posted.
    pub url: String,
    /// The tenant whose alerts it receives; absent for an admin endpoint receiving every tenant's.
    pub tenant: Option<String>,
    /// When it was registered (RFC 3339).
    pub created_at: String,
}

/// A delivery of one alert to one endpoint.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Delivery {
    /// Id (for a manual retry).
    pub id: u64,
    /// The alert.
    pub alert_id: String,
    /// The alert's tenant.
    pub tenant: String,
    /// The endpoint.
    pub endpoint_id: String,
    /// `pending`, `delivered` or `dead`.
    pub state: String,
    /// Attempts so far.
    pub attempts: u32,
    /// Next attempt (RFC 3339), while pending.
    pub next_attempt: Option<String>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
}

/// Who is asking: an admin (every endpoint) or a tenant (its own).
#[derive(Clone, Copy, Debug)]
pub enum Scope<'a> {
    /// Everything.
    All,
    /// One tenant's endpoints and deliveries.
    Tenant(&'a str),
}

/// Endpoints and deliveries, and the clients that post to them.
pub struct Webhooks {
    store: Arc<dyn WebhookStore>,
    settings: Settings,
    /// For admins' endpoints, which may be internal.
    http_admin: reqwest::Client,
    /// For tenants' endpoints: refuses names that resolve to an internal address, unless
    /// [`Settings::allow_private_targets`].
    http_tenant: reqwest::Client,
}

impl Webhooks {
    /// Opens (creating or upgrading) `webhooks.db` at `path`.
    pub fn open(path: &Path, settings: Settings) -> Result<Self, Error> {
        Self::new(Arc::new(SqliteWebhooks::open(path)?), settings)
    }

    /// Webhooks whose state is kept in `store`.
    pub fn new(store: Arc<dyn WebhookStore>, settings: Settings) -> Result<Self, Error> {
        let client = |private_allowed| {
            guard::client(settings.timeout, private_allowed).map_err(|e| Error::Client(e.to_string()))
        };
        let (http_admin, http_tenant) = (client(true)?, client(settings.allow_private_targets)?);
        Ok(Webhooks { store, settings, http_admin, http_tenant })
    }

    /// Registers `url` for `tenant`'s alerts (every tenant's when `None`), by an admin or by the
    /// tenant itself; returns the endpoint and its signing secret, which is shown only this once.
    pub async fn register(&self, url: &str, tenant: Option<&str>, by_admin: bool) -> Result<(Endpoint, String), Error> {
        let parsed = reqwest::Url::parse(url)
            .map_err(|e| Error::Invalid { field: "url", message: format!("{url:?} is not a URL: {e}") })?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
            return Err(Error::Invalid { field: "url", message: "must be an http or https URL with a host".into() });
        }
        if !by_admin && !self.settings.allow_private_targets && guard::internal(&parsed) {
            return Err(Error::Invalid {
                field: "url",
                message: "must not point to a loopback, private or link-local address".into(),
            });
        }
        let id = format!("we_{}", hex::encode(rand::random::<[u8; 8]>()));
        let secret = format!("whsec_{}", hex::encode(rand::random::<[u8; 24]>()));
        let now = now_us();
        let endpoint = Endpoint {
            id: id.clone(),
            url: url.to_string(),
            tenant: tenant.map(str::to_string),
            created_at: format_time(now),
        };
        let stored =
            store::StoredEndpoint { endpoint: endpoint.clone(), created_us: now, secret: secret.clone(), by_admin };
        self.store.insert_endpoint(stored).await?;
        Ok((endpoint, secret))
    }

    /// The endpoints `scope` may see.
    pub async fn endpoints(&self, scope: Scope<'_>) -> Result<Vec<Endpoint>, Error> {
        self.store.endpoints(tenant_of(scope)).await
    }

    /// Removes an endpoint and its deliveries not yet made (pending or dead).
    pub async fn remove(&self, id: &str, scope: Scope<'_>) -> Result<(), Error> {
        self.store.remove_endpoint(id.to_string(), tenant_of(scope)).await
    }

    /// Deliveries `scope` may see, in `state` when given, newest first, at most `limit`.
    pub async fn deliveries(
        &self,
        scope: Scope<'_>,
        state: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Delivery>, Error> {
        self.store.deliveries(tenant_of(scope), state.map(str::to_string), limit).await
    }

    /// Puts a dead delivery back in the queue, due now, with a fresh retry window.
    pub async fn retry(&self, id: u64, scope: Scope<'_>) -> Result<(), Error> {
        self.store.retry(id, tenant_of(scope), now_us()).await
    }

    /// Takes or renews the lease `name` for `holder` until `for_` from now, unless another
    /// holder's lease is still running; returns whether `holder` holds it.
    pub async fn lease(&self, name: &str, holder: &str, for_: Duration) -> Result<bool, Error> {
        let now = now_us();
        let until = now.saturating_add(for_.as_micros().min(i64::MAX as u128) as i64);
        self.store.lease(name.to_string(), holder.to_string(), until, now).await
    }

    /// A lease named `name` for a loop that must run on one process of the installation at a
    /// time (on every host): see [`Lease`].
    pub fn single_runner(self: &Arc<Self>, name: &str) -> Lease {
        Lease { store: self.clone(), name: name.to_string(), holder: meter_schemas::process::holder(), for_: LEASE }
    }

    /// How far the alerts have been handed on to `name` (the last alert's `seq`).
    pub async fn cursor(&self, name: &str) -> Result<u64, Error> {
        self.store.cursor(name.to_string()).await
    }

    /// Moves `name`'s cursor forward to `seq` (never back).
    pub async fn move_cursor(&self, name: &str, seq: u64) -> Result<(), Error> {
        self.store.move_cursor(name.to_string(), seq).await
    }

    /// Queues every alert raised since the last call for each endpoint that wants it.
    pub async fn fan_out(&self, alerts: &dyn LiveStore) -> Result<usize, Error> {
        let after = self.cursor("alerts").await?;
        let new = alerts.alerts(None, after, 1000).await?;
        let Some(last) = new.last().map(|a| a.seq) else { return Ok(0) };
        let n = new.len();
        let queued = new
            .iter()
            .map(|a| store::Queued { alert_id: a.id.clone(), tenant: a.tenant.clone(), body: body_of(a) })
            .collect();
        self.store.queue(queued, Some(last), now_us()).await?;
        Ok(n)
    }
}

impl Webhooks {
    /// Queues a billing notice for `tenant`'s endpoints (and every tenant's): `kind` such as
    /// `billing.payment_failed`, its `data`, made at `at_us`. `id` names it: a notice of an id
    /// queued before is not queued again, so a step that notifies and then crashes may notify
    /// again safely.
    pub async fn notify(
        &self,
        tenant: &str,
        id: &str,
        kind: &str,
        data: serde_json::Value,
        at_us: i64,
    ) -> Result<(), Error> {
        let body =
            serde_json::json!({ "id": id, "type": kind, "created": format_time(at_us), "data": data }).to_string();
        let notice = store::Queued { alert_id: id.to_string(), tenant: tenant.to_string(), body };
        self.store.queue(vec![notice], None, now_us()).await
    }
}

/// When a loop that hands alerts on goes round: as soon as the store raised one, and every
/// `poll` (for retries and for alerts another process raised).
pub(crate) struct Rounds {
    every: tokio::time::Interval,
    raised: tokio::sync::watch::Receiver<u64>,
}

impl Rounds {
    pub(crate) fn new(alerts: &dyn LiveStore, poll: Duration) -> Self {
        let mut every = tokio::time::interval(poll);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Rounds { every, raised: alerts.alerted() }
    }

    pub(crate) async fn next(&mut self) {
        tokio::select! {
            _ = self.every.tick() => {}
            Ok(()) = self.raised.changed() => {}
        }
    }
}

fn tenant_of(scope: Scope<'_>) -> Option<String> {
    match scope {
        Scope::All => None,
        Scope::Tenant(t) => Some(t.to_string()),
    }
}

/// The body posted for `alert`: the same bytes on every attempt.
pub(crate) fn body_of(alert: &Alert) -> String {
    serde_json::json!({
        "id": alert.id,
        "type": if alert.kind == "upgrade_suggested" { "usage.upgrade_suggested" } else { "usage.threshold_reached" },
        "created": alert.raised_at,
        "data": alert,
    })
    .to_string()
}

/// How long a loop's lease lasts: its holder renews it every round (well within it), and
/// another process takes over within this of the holder's death.
pub const LEASE: Duration = Duration::from_secs(10);

/// The right of one process of an installation (of every host sharing its state) to run a loop
/// that must not run twice at once: the alerts-topic publisher, the upgrade advisor, the
/// processor of the payment provider's events. Held until [`LEASE`] after its last renewal.
pub struct Lease {
    store: Arc<Webhooks>,
    name: String,
    holder: String,
    for_: Duration,
}

impl Lease {
    /// Takes or renews the lease; false (logged) when another process holds it or the store
    /// cannot be reached, so that the loop skips its round.
    pub async fn held(&self) -> bool {
        match self.store.lease(&self.name, &self.holder, self.for_).await {
            Ok(held) => held,
            Err(e) => {
                tracing::warn!(error = %e, lease = %self.name, "taking a loop's lease failed; skipping this round");
                false
            }
        }
    }
}
