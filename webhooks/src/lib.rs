//! Webhook delivery of alerts. Endpoints registered by tenants (their own alerts) and admins
//! (every tenant's, or one's) receive each alert as a signed POST ([`signature`]); a failed
//! delivery is retried with exponential backoff until [`Settings::retry_for`] has passed since
//! its first attempt, then kept in a dead-letter list from which it can be retried by hand.
//!
//! State lives in `webhooks.db`: endpoints, one delivery per alert and endpoint (so an alert is
//! never queued twice for one endpoint), and how far the alerts have been fanned out.

mod deliver;
pub mod guard;
pub mod signature;
pub mod topic;

pub use signature::{Invalid, sign, verify};

use meter_schemas::period::{format_time, now_us};
use meter_sqlite::rusqlite::{Connection, OptionalExtension, params};
use meter_sqlite::{Durability, Shared, migrate, open};
use meter_store::{Alert, LiveStore};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Duration;

const MIGRATIONS: &[&str] = &[
    "
    CREATE TABLE endpoints (
        id TEXT PRIMARY KEY, url TEXT NOT NULL, tenant TEXT, secret TEXT NOT NULL, created_us INTEGER NOT NULL
    );
    CREATE TABLE deliveries (
        id INTEGER PRIMARY KEY, alert_id TEXT NOT NULL, tenant TEXT NOT NULL, endpoint_id TEXT NOT NULL,
        body TEXT NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL, first_us INTEGER,
        next_us INTEGER NOT NULL, last_error TEXT, delivered_us INTEGER,
        UNIQUE (alert_id, endpoint_id)
    );
    CREATE INDEX deliveries_due ON deliveries (state, next_us);
    CREATE TABLE fanned_out (name TEXT PRIMARY KEY, seq INTEGER NOT NULL);
",
    "
    -- An endpoint an admin registered for a tenant is not that tenant's to see or change.
    ALTER TABLE endpoints ADD COLUMN by_admin INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL, until_us INTEGER NOT NULL);
",
];

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
    /// The usage store failed.
    #[error("usage store: {0}")]
    Store(#[from] meter_store::Error),
    /// The alerts topic's brokers failed or could not be reached.
    #[error("kafka: {0}")]
    Kafka(String),
    /// The HTTP client that posts deliveries could not be built.
    #[error("webhook HTTP client: {0}")]
    Client(String),
}

impl From<meter_sqlite::rusqlite::Error> for Error {
    fn from(e: meter_sqlite::rusqlite::Error) -> Self {
        Error::Storage(e.into())
    }
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

/// Endpoints and deliveries in `webhooks.db`.
pub struct Webhooks {
    conn: Shared,
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
        let mut conn = open(path, Durability::Full)?;
        migrate(&mut conn, path, MIGRATIONS)?;
        let client = |private_allowed| {
            guard::client(settings.timeout, private_allowed).map_err(|e| Error::Client(e.to_string()))
        };
        let (http_admin, http_tenant) = (client(true)?, client(settings.allow_private_targets)?);
        Ok(Webhooks { conn: Shared::new(conn), settings, http_admin, http_tenant })
    }

    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        self.conn.with(f).await
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
        let (row, s) = (endpoint.clone(), secret.clone());
        self.with(move |c| {
            c.execute(
                "INSERT INTO endpoints (id, url, tenant, secret, created_us, by_admin) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![row.id, row.url, row.tenant, s, now, by_admin],
            )?;
            Ok(())
        })
        .await?;
        Ok((endpoint, secret))
    }

    /// The endpoints `scope` may see.
    pub async fn endpoints(&self, scope: Scope<'_>) -> Result<Vec<Endpoint>, Error> {
        let tenant = tenant_of(scope);
        self.with(move |c| {
            let mut stmt = c.prepare(
                "SELECT id, url, tenant, created_us FROM endpoints WHERE ?1 IS NULL OR (tenant = ?1 AND by_admin = 0)
                 ORDER BY created_us, id",
            )?;
            let rows = stmt.query_map(params![tenant], |r| {
                Ok(Endpoint { id: r.get(0)?, url: r.get(1)?, tenant: r.get(2)?, created_at: format_time(r.get(3)?) })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// Removes an endpoint and its deliveries not yet made (pending or dead).
    pub async fn remove(&self, id: &str, scope: Scope<'_>) -> Result<(), Error> {
        let (id, tenant) = (id.to_string(), tenant_of(scope));
        self.with(move |c| {
            let tx = c.transaction()?;
            let n = tx.execute(
                "DELETE FROM endpoints WHERE id = ?1 AND (?2 IS NULL OR (tenant = ?2 AND by_admin = 0))",
                params![id, tenant],
            )?;
            if n == 0 {
                return Err(Error::NotFound(format!("webhook endpoint {id:?}")));
            }
            tx.execute("DELETE FROM deliveries WHERE endpoint_id = ?1 AND state <> 'delivered'", params![id])?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// Deliveries `scope` may see, in `state` when given, newest first, at most `limit`.
    pub async fn deliveries(
        &self,
        scope: Scope<'_>,
        state: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Delivery>, Error> {
        let (tenant, state) = (tenant_of(scope), state.map(str::to_string));
        self.with(move |c| {
            let mut stmt = c.prepare(
                "SELECT d.id, d.alert_id, d.tenant, d.endpoint_id, d.state, d.attempts, d.next_us, d.last_error
                 FROM deliveries d JOIN endpoints e ON e.id = d.endpoint_id
                 WHERE (?1 IS NULL OR (e.tenant = ?1 AND e.by_admin = 0)) AND (?2 IS NULL OR d.state = ?2)
                 ORDER BY d.id DESC LIMIT ?3",
            )?;
            let rows = stmt.query_map(params![tenant, state, limit as i64], |r| {
                let state: String = r.get(4)?;
                let next: i64 = r.get(6)?;
                Ok(Delivery {
                    id: r.get::<_, i64>(0)? as u64,
                    alert_id: r.get(1)?,
                    tenant: r.get(2)?,
                    endpoint_id: r.get(3)?,
                    next_attempt: (state == "pending").then(|| format_time(next)),
                    state,
                    attempts: r.get(5)?,
                    last_error: r.get(7)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// Puts a dead delivery back in the queue, due now, with a fresh retry window.
    pub async fn retry(&self, id: u64, scope: Scope<'_>) -> Result<(), Error> {
        let tenant = tenant_of(scope);
        self.with(move |c| {
            let tx = c.transaction()?;
            let state: Option<String> = tx
                .query_row(
                    "SELECT d.state FROM deliveries d JOIN endpoints e ON e.id = d.endpoint_id
                     WHERE d.id = ?1 AND (?2 IS NULL OR (e.tenant = ?2 AND e.by_admin = 0))",
                    params![id as i64, tenant],
                    |r| r.get(0),
                )
                .optional()?;
            match state.as_deref() {
                None => return Err(Error::NotFound(format!("delivery {id}"))),
                Some("dead") => {}
                Some(other) => {
                    return Err(Error::Conflict(format!("delivery {id} is {other}; only a dead one is retried")));
                }
            }
            tx.execute(
                "UPDATE deliveries SET state = 'pending', attempts = 0, first_us = NULL, next_us = ?2 WHERE id = ?1",
                params![id as i64, now_us()],
            )?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// Takes or renews the lease `name` for `holder` until `for_` from now, unless another
    /// holder's lease is still running; returns whether `holder` holds it.
    pub async fn lease(&self, name: &str, holder: &str, for_: Duration) -> Result<bool, Error> {
        let (name, holder) = (name.to_string(), holder.to_string());
        let until = for_.as_micros().min(i64::MAX as u128) as i64;
        self.with(move |c| {
            let now = now_us();
            let n = c.execute(
                "INSERT INTO leases (name, holder, until_us) VALUES (?1, ?2, ?3)
                 ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until_us = excluded.until_us
                 WHERE leases.holder = excluded.holder OR leases.until_us < ?4",
                params![name, holder, now.saturating_add(until), now],
            )?;
            Ok(n == 1)
        })
        .await
    }

    /// How far the alerts have been handed on to `name` (the last alert's `seq`).
    pub async fn cursor(&self, name: &str) -> Result<u64, Error> {
        let name = name.to_string();
        self.with(move |c| {
            Ok(c.query_row("SELECT seq FROM fanned_out WHERE name = ?1", params![name], |r| r.get::<_, i64>(0))
                .optional()?
                .unwrap_or(0) as u64)
        })
        .await
    }

    /// Moves `name`'s cursor forward to `seq` (never back).
    pub async fn move_cursor(&self, name: &str, seq: u64) -> Result<(), Error> {
        let name = name.to_string();
        self.with(move |c| {
            c.execute(
                "INSERT INTO fanned_out (name, seq) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET seq = max(seq, excluded.seq)",
                params![name, seq as i64],
            )?;
            Ok(())
        })
        .await
    }

    /// Queues every alert raised since the last call for each endpoint that wants it.
    pub async fn fan_out(&self, alerts: &dyn LiveStore) -> Result<usize, Error> {
        let after = self.cursor("alerts").await?;
        let new = alerts.alerts(None, after, 1000).await?;
        let Some(last) = new.last().map(|a| a.seq) else { return Ok(0) };
        let n = new.len();
        self.with(move |c| {
            let tx = c.transaction()?;
            {
                let mut targets = tx.prepare_cached("SELECT id FROM endpoints WHERE tenant IS NULL OR tenant = ?1")?;
                let mut queue = tx.prepare_cached(
                    "INSERT OR IGNORE INTO deliveries (alert_id, tenant, endpoint_id, body, state, attempts, next_us)
                     VALUES (?1, ?2, ?3, ?4, 'pending', 0, ?5)",
                )?;
                for alert in &new {
                    let body = body_of(alert);
                    let ids = targets.query_map(params![alert.tenant], |r| r.get::<_, String>(0))?;
                    for endpoint in ids {
                        queue.execute(params![alert.id, alert.tenant, endpoint?, body, now_us()])?;
                    }
                }
            }
            tx.execute(
                "INSERT INTO fanned_out (name, seq) VALUES ('alerts', ?1) ON CONFLICT (name) DO UPDATE SET seq = max(seq, excluded.seq)",
                params![last as i64],
            )?;
            tx.commit()?;
            Ok(())
        })
        .await?;
        Ok(n)
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
