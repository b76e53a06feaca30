//! What every role of a process shares, opened once at start-up: keys, the log, the live
//! counters and the history, the price book, the ledger with every tenant's plan, the webhooks.

use crate::config::{Config, LogBackend, StoreBackend};
use anyhow::Context as _;
use meter_auth::{KeyStore, Role, Sessions, SqliteKeys};
use meter_billing::{Ledger, PlanAllowances};
use meter_eventlog::{EventLog, KafkaLog, KafkaSettings, SqliteLog};
use meter_rater::PriceBook;
use meter_schemas::Catalog;
use meter_store::{ClickHouseStore, LiveStore, SqliteStore, UsageStore};
use meter_webhooks::Webhooks;
use std::sync::Arc;

/// The components a process's roles share.
pub(super) struct Shared {
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
        let keys = KeyStore::open(&config.keys_path()).context("opening the key table")?;
        let sessions = Sessions::new(Arc::new(SqliteKeys::open(&config.keys_path()).context("opening the sessions")?));
        if config.bootstrap_admin_key && keys.is_empty()? {
            let key = keys.create(Role::Admin, None)?;
            eprintln!(
                "\n  meter: created the first admin key; it is shown only this once:\n\n    {}\n\n  \
                 Create narrower keys with `meter keys create --role ingest|read [--tenant T]`.\n",
                key.secret
            );
        }
        let log = open_log(config).await?;
        let live: Arc<dyn LiveStore> = Arc::new(
            SqliteStore::open(&config.live_store_path()?, config.store.durability)
                .context("opening the usage store")?,
        );
        let book = Arc::new(config.price_book()?);
        let ledger = Ledger::open(&config.ledger_path()).context("opening the billing ledger")?;
        ledger.check_price_book(&book).await?;
        let allowances = Arc::new(PlanAllowances::new(book.clone()));
        allowances.refresh(&ledger, meter_schemas::period::now_us()).await?;
        live.set_allowances(allowances.clone());
        let webhooks = Arc::new(
            Webhooks::open(&config.webhooks_path(), config.webhooks.settings())
                .context("opening the webhook endpoints")?,
        );
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

/// Opens the configured event log. The SQLite log re-checks the lateness window at commit (see
/// ARCHITECTURE.md, Watermark).
async fn open_log(config: &Config) -> anyhow::Result<Arc<dyn EventLog>> {
    Ok(match config.log_backend()? {
        LogBackend::Sqlite(path) => {
            let lateness_us = config.ingest.limits().lateness_us;
            Arc::new(
                SqliteLog::open_with_lateness(&path, config.log.partitions, config.log.durability, lateness_us)
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
