//! What every role of a process shares, opened once at start-up: keys, the log, the live
//! counters and the history, the price book, the ledger with every tenant's plan, the webhooks.

use crate::config::{Config, LogBackend, StateBackend, StoreBackend};
use anyhow::Context as _;
use meter_auth::{KeyStore, KeyTable, PgKeys, Role, SessionTable, Sessions, SqliteKeys};
use meter_billing::ledger::PgLedger;
use meter_billing::{Ledger, PlanAllowances};
use meter_eventlog::{EventLog, KafkaLog, KafkaSettings, SqliteLog};
use meter_postgres::Pg;
use meter_rater::PriceBook;
use meter_schemas::Catalog;
use meter_store::{ClickHouseStore, LiveStore, PgStore, SqliteStore, UsageStore};
use meter_webhooks::{PgWebhooks, Webhooks};
use std::sync::Arc;

/// The components a process's roles share.
pub(super) struct Shared {
    /// The shared state's Postgres pool, when it is there.
    pub pg: Option<Arc<Pg>>,
    pub keys: Arc<KeyStore>,
    /// Browser sessions, kept beside the keys.
    pub sessions: Arc<Sessions>,
    pub catalog: Arc<Catalog>,
    pub log: Arc<dyn EventLog>,
    /// The live counters (and the alerts they raise).
    pub live: Arc<dyn LiveStore>,
    /// ClickHouse, when it holds the history.
    pub clickhouse: Option<Arc<ClickHouseStore>>,
    pub book: Arc<PriceBook>,
    pub ledger: Ledger,
    /// Every tenant's plan; the live counters raise alerts against it.
    pub allowances: Arc<PlanAllowances>,
    pub webhooks: Arc<Webhooks>,
    /// The payment provider (one client, one rate limit, for the sync and the API).
    pub provider: Arc<dyn meter_billing_sync::Provider>,
    /// From a failed payment to suspension.
    pub grace: std::time::Duration,
}

impl Shared {
    /// Opens everything; the allowances are read before any counting starts, so that the first
    /// batch already raises its alerts.
    pub async fn open(config: &Config) -> anyhow::Result<Self> {
        let catalog = Arc::new(config.catalog()?);
        let State { pg, keys, sessions, live, ledger, webhooks } = State::open(config)?;
        if config.bootstrap_admin_key && keys.is_empty()? {
            let key = keys.create(Role::Admin, None)?;
            eprintln!(
                "\n  meter: created the first admin key; it is shown only this once:\n\n    {}\n\n  \
                 Create narrower keys with `meter keys create --role ingest|read [--tenant T]`.\n",
                key.secret
            );
        }
        let log = open_log(config).await?;
        let book = Arc::new(config.price_book()?);
        ledger.check_price_book(&book).await?;
        let allowances = Arc::new(PlanAllowances::new(book.clone()));
        allowances.refresh(&ledger, meter_schemas::period::now_us()).await?;
        live.set_allowances(allowances.clone());
        let clickhouse = match config.store_backend()? {
            StoreBackend::ClickHouse(url) => Some(Arc::new(
                ClickHouseStore::open(&url)
                    .await
                    .with_context(|| format!("opening the ClickHouse store {:?} at {}", url.database, url.http))?,
            )),
            StoreBackend::Sqlite(_) => None,
        };
        let provider = provider(config)?;
        let grace = config.billing.grace;
        Ok(Shared {
            pg,
            keys,
            sessions,
            catalog,
            log,
            live,
            clickhouse,
            book,
            ledger,
            allowances,
            webhooks,
            provider,
            grace,
        })
    }

    /// The history and the consumer whose watermarks it reports: ClickHouse and the sink's
    /// group, or the live counters and the aggregators'.
    pub fn history(&self, config: &Config) -> (Arc<dyn UsageStore>, String) {
        match &self.clickhouse {
            Some(ch) => (ch.clone(), config.sink.group.clone()),
            None => (self.live.clone(), config.aggregator.group.clone()),
        }
    }
}

/// The state every process of an installation shares: in the data directory's SQLite files, or
/// in one Postgres database for every host.
pub(crate) struct State {
    /// The Postgres pool, when the state is there.
    pub pg: Option<Arc<Pg>>,
    pub keys: Arc<KeyStore>,
    pub sessions: Arc<Sessions>,
    pub live: Arc<dyn LiveStore>,
    pub ledger: Ledger,
    pub webhooks: Arc<Webhooks>,
}

impl State {
    /// Opens the configured backend of each piece of shared state. On Postgres, a database
    /// that `meter migrate` has not brought to this build's schema is refused.
    pub fn open(config: &Config) -> anyhow::Result<Self> {
        let settings = config.webhooks.settings();
        let pg = Self::pool(config, meter_postgres::MAX_CONNECTIONS)?;
        let (keys, sessions) = Self::keys_on(config, pg.as_ref())?;
        Ok(match pg {
            None => State {
                pg: None,
                keys,
                sessions,
                live: Arc::new(
                    SqliteStore::open_with(&config.live_store_path()?, config.store.durability, config.dedup()?)
                        .context("opening the usage store")?,
                ),
                ledger: Ledger::open(&config.ledger_path()).context("opening the billing ledger")?,
                webhooks: Arc::new(
                    Webhooks::open(&config.webhooks_path(), settings).context("opening the webhook endpoints")?,
                ),
            },
            Some(pg) => State {
                keys,
                sessions,
                live: Arc::new(PgStore::open_with(pg.clone(), config.dedup()?)?),
                ledger: Ledger::new(Arc::new(PgLedger::open(pg.clone())?)),
                webhooks: Arc::new(Webhooks::new(Arc::new(PgWebhooks::open(pg.clone())?), settings)?),
                pg: Some(pg),
            },
        })
    }

    /// The key table, cached, and the browser sessions kept beside it (`meter keys`).
    pub fn keys(config: &Config) -> anyhow::Result<(Arc<KeyStore>, Arc<Sessions>)> {
        Self::keys_on(config, Self::pool(config, 2)?.as_ref())
    }

    /// A pool of at most `max` connections to the state's Postgres; none for SQLite.
    fn pool(config: &Config, max: usize) -> anyhow::Result<Option<Arc<Pg>>> {
        Ok(match config.state_backend()? {
            StateBackend::Sqlite => None,
            StateBackend::Postgres(url) => Some(Arc::new(Pg::connect(&url, max)?)),
        })
    }

    /// The key table and the sessions on `pg`, or in the data directory's `keys.db`.
    fn keys_on(config: &Config, pg: Option<&Arc<Pg>>) -> anyhow::Result<(Arc<KeyStore>, Arc<Sessions>)> {
        fn both<T: KeyTable + SessionTable + 'static>(t: T) -> anyhow::Result<(Arc<KeyStore>, Arc<Sessions>)> {
            let t = Arc::new(t);
            Ok((KeyStore::new(t.clone())?, Sessions::new(t)))
        }
        match pg {
            None => {
                std::fs::create_dir_all(&config.data_dir)?;
                both(SqliteKeys::open(&config.keys_path()).context("opening the key table")?)
            }
            Some(pg) => both(PgKeys::open(pg.clone())?),
        }
    }

    /// Creates or upgrades the shared state's schema (`meter migrate`); what was done, in words.
    pub fn migrate(config: &Config) -> anyhow::Result<String> {
        Ok(match config.state_backend()? {
            StateBackend::Sqlite => {
                std::fs::create_dir_all(&config.data_dir)?;
                Self::open(config)?;
                format!("SQLite state in {} is migrated", config.data_dir.display())
            }
            StateBackend::Postgres(url) => {
                let pg = Pg::connect(&url, 1)?;
                let versions = [
                    ("keys", PgKeys::migrate(&pg)?),
                    ("store", PgStore::migrate(&pg)?),
                    ("ledger", PgLedger::migrate(&pg)?),
                    ("webhooks", PgWebhooks::migrate(&pg)?),
                ];
                let versions: Vec<String> = versions.iter().map(|(c, v)| format!("{c} {v}")).collect();
                format!("Postgres state at {url} is at schema versions {}", versions.join(", "))
            }
        })
    }
}

/// Readiness: the shared state's Postgres answers a `SELECT 1` within two seconds.
pub(super) struct PgProbe(pub Arc<Pg>);

impl meter_api::StateProbe for PgProbe {
    fn check(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(async move {
            let pg = self.0.clone();
            let asked = self.0.spawn(async move {
                let c = pg.client().await.map_err(|e| e.to_string())?;
                c.simple_query("SELECT 1").await.map(drop).map_err(|e| e.to_string())
            });
            match tokio::time::timeout(std::time::Duration::from_secs(2), asked).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(format!("postgres (the shared state) failing: {e}")),
                Err(_) => Err(format!("postgres (the shared state) at {} did not answer within 2 s", self.0.url())),
            }
        })
    }
}

/// Opens the configured event log. The SQLite log re-checks the lateness window at commit (see
/// ARCHITECTURE.md, Watermark).
async fn open_log(config: &Config) -> anyhow::Result<Arc<dyn EventLog>> {
    Ok(match config.log_backend()? {
        LogBackend::Sqlite(path) => {
            let lateness_us = config.ingest.limits().lateness_us;
            Arc::new(
                SqliteLog::open_with(&path, config.log.partitions, config.log.durability, lateness_us, config.dedup()?)
                    .context("opening the event log")?,
            )
        }
        LogBackend::Kafka(brokers) => {
            let mut settings = KafkaSettings::new(&brokers);
            settings.topic = config.log.topic.clone();
            settings.partitions = config.log.partitions;
            settings.delivery_timeout = config.log.delivery_timeout;
            settings.linger_ms = config.log.linger.as_millis() as u32;
            settings.group = config.aggregator.group.clone();
            settings.session_timeout = config.aggregator.session_timeout;
            Arc::new(KafkaLog::open(settings).await.context("opening the Kafka event log")?)
        }
    })
}

impl Shared {
    /// Subscription changes with what follows them, over what the roles share.
    pub fn subscriptions(&self) -> meter_billing::Subscriptions {
        meter_billing::Subscriptions {
            ledger: self.ledger.clone(),
            allowances: self.allowances.clone(),
            book: self.book.clone(),
            live: self.live.clone(),
            grace: self.grace,
        }
    }
}

/// The payment provider `config` names: Stripe when `[stripe] api_key` is set, otherwise none.
fn provider(config: &Config) -> anyhow::Result<Arc<dyn meter_billing_sync::Provider>> {
    Ok(match config.stripe.settings()? {
        Some(settings) => Arc::new(meter_billing_sync::stripe::Stripe::new(
            meter_billing_sync::stripe::Client::new(settings)?,
            config.stripe.automatic_tax,
        )),
        None => Arc::new(meter_billing_sync::NoProvider),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn the_served_log_refuses_events_past_the_lateness_window_at_commit() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config { data_dir: dir.path().to_path_buf(), ..Config::default() };
        config.ingest.lateness = Duration::from_secs(86_400);
        let log = open_log(&config).await.unwrap();
        let old = meter_schemas::Event {
            tenant: "a".into(),
            id: "late".into(),
            code: "work_order.created".into(),
            time_us: meter_schemas::period::now_us() - 2 * 86_400_000_000,
            implicit_time: false,
            subscription: None,
            source: None,
            properties: Default::default(),
        };
        let err = log.append(&[old]).await.unwrap_err();
        assert!(matches!(err, meter_eventlog::Error::TooLate(_)), "{err}");
    }
}
