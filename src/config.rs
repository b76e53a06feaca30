//! Configuration, layered: built-in defaults, then the file given with `--config`, then `METER__*`
//! environment variables (`METER__INGEST__MAX_EVENTS_PER_REQUEST=100`), then command-line flags.
//! Unknown keys are errors at every layer.

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use meter_eventlog::KafkaSettings;
use meter_rater::PriceBook;
use meter_schemas::{Catalog, Limits, MeterDef};
use meter_sqlite::Durability;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The whole configuration.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address the HTTP API listens on.
    pub listen: SocketAddr,
    /// Directory of the embedded backends' files.
    pub data_dir: PathBuf,
    /// Create an admin key, printed once, when the key table is empty.
    pub bootstrap_admin_key: bool,
    /// The event log.
    pub log: LogConfig,
    /// Where the state every process shares is kept: keys and sessions, the live counters, the
    /// billing ledger, the webhooks.
    pub state: StateConfig,
    /// The usage store.
    pub store: StoreConfig,
    /// The ingest API.
    pub ingest: IngestConfig,
    /// The aggregator.
    pub aggregator: AggregatorConfig,
    /// The sink that fills a ClickHouse store from the log.
    pub sink: SinkConfig,
    /// Meters besides the six defaults; one with a default's name replaces it.
    pub meters: Vec<MeterDef>,
    /// Subscriptions, prices and period close.
    pub billing: BillingConfig,
    /// Webhook delivery of alerts.
    pub webhooks: WebhooksConfig,
    /// Alerts.
    pub alerts: AlertsConfig,
    /// Stripe, the payment provider (sync is on when `api_key` is set).
    pub stripe: StripeConfig,
    /// The sync outbox's worker.
    pub sync: SyncConfig,
}

/// Stripe.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StripeConfig {
    /// The secret key (`sk_…` or a restricted `rk_…`); sync to Stripe is on when it is set.
    /// Never printed; `METER__STRIPE__API_KEY`.
    pub api_key: Option<Secret>,
    /// Stripe's address (tests point it at a stand-in).
    pub api_base: String,
    /// Requests a second at most (Stripe allows 25 in test mode, 100 live).
    pub rate_limit: u32,
    /// Stripe Tax on the invoices meter creates.
    pub automatic_tax: bool,
    /// Tries of one request before the outbox tries again later.
    pub attempts: u32,
    /// How long one request may take.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// The secret Stripe signs its events with (`whsec_…`); Stripe's events are taken at
    /// `/api/v1/stripe/webhook` when it is set. Never printed.
    pub webhook_secret: Option<Secret>,
    /// The secret before the last rotation, accepted too until it is removed.
    pub webhook_secret_previous: Option<Secret>,
    /// Where Checkout and the customer portal send the customer back to, unless a request says.
    pub return_url: Option<String>,
}

/// The defaults are billing-sync's, which owns them.
impl Default for StripeConfig {
    fn default() -> Self {
        let d = meter_billing_sync::stripe::Settings::new("");
        Self {
            api_key: None,
            api_base: d.api_base,
            rate_limit: d.rate_limit.get(),
            automatic_tax: false,
            attempts: d.attempts,
            timeout: d.timeout,
            webhook_secret: None,
            webhook_secret_previous: None,
            return_url: None,
        }
    }
}

impl StripeConfig {
    /// The webhook secrets, newest first; an empty one is refused (anyone could sign with it).
    pub fn webhook_secrets(&self) -> Result<Vec<String>, ConfigError> {
        let secrets: Vec<String> =
            [&self.webhook_secret, &self.webhook_secret_previous].into_iter().flatten().map(|s| s.0.clone()).collect();
        if secrets.iter().any(|s| s.trim().is_empty()) {
            return Err(ConfigError::Invalid(
                "stripe.webhook_secret: empty; give the endpoint's signing secret (whsec_…) or leave it out".into(),
            ));
        }
        Ok(secrets)
    }

    /// The client's settings, when a key is set; a rate limit of 0 is refused.
    pub fn settings(&self) -> Result<Option<meter_billing_sync::stripe::Settings>, ConfigError> {
        let Some(key) = &self.api_key else { return Ok(None) };
        let rate_limit = std::num::NonZeroU32::new(self.rate_limit)
            .ok_or_else(|| ConfigError::Invalid("stripe.rate_limit: must be at least 1 request a second".into()))?;
        Ok(Some(meter_billing_sync::stripe::Settings {
            api_base: self.api_base.clone(),
            rate_limit,
            attempts: self.attempts.max(1),
            timeout: self.timeout,
            ..meter_billing_sync::stripe::Settings::new(key.0.clone())
        }))
    }
}

/// The sync outbox's worker.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyncConfig {
    /// How often it looks for due operations when there were none.
    #[serde(with = "humantime_serde")]
    pub poll: Duration,
    /// How long a claimed operation is one worker's alone: after a crash, another worker (or
    /// this one restarted) takes it over after this.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// Operations (of as many tenants) worked side by side.
    pub batch: usize,
    /// The first pause after a transient failure, doubled up to `max_backoff`.
    #[serde(with = "humantime_serde")]
    pub min_backoff: Duration,
    /// The longest pause.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// How often Stripe's events are read from its API, for those a webhook missed.
    #[serde(with = "humantime_serde")]
    pub catch_up_every: Duration,
    /// Who is collected how: `plans` and `tenants`, each `{ method = "send_invoice",
    /// days_until_due = 30 }` or `{ method = "charge_automatically" }` (the default).
    pub collection: meter_billing_sync::Terms,
    /// Dunning: after a failed payment, when the payment is tried again (a reminder sent, for
    /// invoices paid by transfer), counted from the first failure; `[]` for none.
    pub retries: Vec<humantime_serde::Serde<Duration>>,
    /// While a payment is on its way (a SEPA or ACH debit takes days), how often its invoice is
    /// looked at again until it is paid or fails.
    #[serde(with = "humantime_serde")]
    pub settling_check: Duration,
}

/// The defaults are billing-sync's, which owns them.
impl Default for SyncConfig {
    fn default() -> Self {
        let d = meter_billing_sync::worker::Settings::default();
        Self {
            poll: d.poll,
            lease: d.lease,
            batch: d.batch,
            min_backoff: d.min_backoff,
            max_backoff: d.max_backoff,
            catch_up_every: meter_billing_sync::events::CATCH_UP_EVERY,
            collection: meter_billing_sync::Terms::default(),
            retries: d.retries.into_iter().map(Into::into).collect(),
            settling_check: d.settling_check,
        }
    }
}

impl SyncConfig {
    /// The worker's settings.
    pub fn settings(&self) -> meter_billing_sync::worker::Settings {
        meter_billing_sync::worker::Settings {
            poll: self.poll,
            lease: self.lease,
            batch: self.batch.max(1),
            min_backoff: self.min_backoff,
            max_backoff: self.max_backoff,
            terms: self.collection.clone(),
            retries: self.retries.iter().map(|r| **r).collect(),
            settling_check: self.settling_check,
        }
    }
}

/// Alerts.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// How often every tenant's projected usage is rated on the higher tiers for upgrade
    /// suggestions.
    #[serde(with = "humantime_serde")]
    pub advise_every: Duration,
    /// No suggestion before this far into a period: early projections are noise, and a
    /// suggestion stands for the whole period.
    #[serde(with = "humantime_serde")]
    pub advise_after: Duration,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self { advise_every: Duration::from_secs(60), advise_after: Duration::from_secs(3 * 86_400) }
    }
}

/// Webhook delivery of alerts.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksConfig {
    /// Retry a failing delivery for this long after its first attempt, then dead-letter it.
    #[serde(with = "humantime_serde")]
    pub retry_for: Duration,
    /// Wait after the first failure, doubled after each further one.
    #[serde(with = "humantime_serde")]
    pub first_backoff: Duration,
    /// Longest wait between attempts.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// A receiver that has not answered in this long failed.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Let tenants register endpoints on loopback, private and link-local addresses (for
    /// development; admin keys always may).
    pub allow_private_targets: bool,
}

/// The defaults are the webhooks crate's, which owns them.
impl Default for WebhooksConfig {
    fn default() -> Self {
        let d = meter_webhooks::Settings::default();
        Self {
            retry_for: d.retry_for,
            first_backoff: d.first_backoff,
            max_backoff: d.max_backoff,
            timeout: d.timeout,
            allow_private_targets: d.allow_private_targets,
        }
    }
}

impl WebhooksConfig {
    /// The delivery settings.
    pub fn settings(&self) -> meter_webhooks::Settings {
        meter_webhooks::Settings {
            retry_for: self.retry_for,
            first_backoff: self.first_backoff,
            max_backoff: self.max_backoff,
            timeout: self.timeout,
            allow_private_targets: self.allow_private_targets,
            ..meter_webhooks::Settings::default()
        }
    }
}

/// Subscriptions, prices and period close.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BillingConfig {
    /// The price book (TOML); default: the sample that ships with meter.
    pub price_book: Option<PathBuf>,
    /// From a failed payment (past_due) to suspension.
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
}

impl Default for BillingConfig {
    fn default() -> Self {
        BillingConfig { price_book: None, grace: meter_billing::subscriptions::DEFAULT_GRACE }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("meter-data"),
            bootstrap_admin_key: true,
            log: LogConfig::default(),
            state: StateConfig::default(),
            store: StoreConfig::default(),
            ingest: IngestConfig::default(),
            aggregator: AggregatorConfig::default(),
            sink: SinkConfig::default(),
            meters: Vec::new(),
            billing: BillingConfig::default(),
            webhooks: WebhooksConfig::default(),
            alerts: AlertsConfig::default(),
            stripe: StripeConfig::default(),
            sync: SyncConfig::default(),
        }
    }
}

/// The event log.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `sqlite` (a file in the data directory), `sqlite://PATH`, or `kafka://HOST:PORT[,HOST:PORT]`.
    pub url: String,
    /// Kafka topic of the events.
    pub topic: String,
    /// Kafka topic every alert is published to (created with `partitions` partitions if missing).
    pub alerts_topic: String,
    /// Kafka: how long an append waits for its delivery reports before answering 503.
    #[serde(with = "humantime_serde")]
    pub delivery_timeout: Duration,
    /// Kafka: how long the producer waits to fill a batch (`linger.ms`).
    #[serde(with = "humantime_serde")]
    pub linger: Duration,
    /// Kafka: the brokers' `replica.lag.time.max.ms`. A record a stalled replica holds back
    /// becomes readable up to this long after its send failed; ingest's lateness margin covers it.
    #[serde(with = "humantime_serde")]
    pub replica_lag_max: Duration,
    /// Partitions; fixed when the log is created.
    pub partitions: u32,
    /// `full` (survives power loss, the default) or `normal` (survives a crash).
    pub durability: Durability,
}

/// The Kafka settings' defaults are the event log crate's, which owns them.
impl Default for LogConfig {
    fn default() -> Self {
        let kafka = KafkaSettings::new("");
        Self {
            url: "sqlite".into(),
            topic: kafka.topic,
            alerts_topic: "usage.alerts".into(),
            delivery_timeout: kafka.delivery_timeout,
            linger: Duration::from_millis(kafka.linger_ms.into()),
            replica_lag_max: Duration::from_secs(30),
            partitions: kafka.partitions,
            durability: Durability::Full,
        }
    }
}

/// The usage store.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `sqlite` (a file in the data directory), `sqlite://PATH`, or
    /// `clickhouse://[USER@]HOST:PORT/DATABASE` (HTTP port). With ClickHouse, the live counters
    /// stay in `usage.db` in the data directory and ClickHouse holds the history.
    pub url: String,
    /// ClickHouse password (never printed).
    pub password: Option<Secret>,
    /// `normal` by default: a store commit lost to power failure is re-read from the durable log.
    pub durability: Durability,
    /// ClickHouse: how long raw events are kept (whole months are dropped once past it); daily
    /// rollups are kept.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            url: "sqlite".into(),
            password: None,
            durability: Durability::Normal,
            retention: Duration::from_secs(400 * 86_400),
        }
    }
}

/// The shared state: keys and sessions, the live counters, the billing ledger, the webhooks.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    /// `sqlite` (files in the data directory: one host) or
    /// `postgres://USER[:PASSWORD]@HOST:PORT/DATABASE` (every host; `meter migrate` creates the
    /// tables). The password is never printed.
    pub url: StateUrl,
}

impl Default for StateConfig {
    fn default() -> Self {
        Self { url: StateUrl("sqlite".into()) }
    }
}

/// A state URL as given; printed without its password.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct StateUrl(pub String);

impl std::fmt::Debug for StateUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match meter_postgres::PgUrl::parse(&self.0) {
            Ok(url) => write!(f, "\"{url}\""),
            Err(_) if !self.0.contains('@') => write!(f, "{:?}", self.0),
            Err(_) => f.write_str("\"***\""),
        }
    }
}

impl std::str::FromStr for StateUrl {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_string()))
    }
}

/// Where the shared state lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StateBackend {
    /// SQLite files in the data directory.
    Sqlite,
    /// A Postgres database every host shares.
    Postgres(meter_postgres::PgUrl),
}

/// A secret: read from configuration, never printed.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"***\"")
    }
}

/// The sink: a consumer of the log (its own group) that inserts events into ClickHouse in large
/// batches, and commits its offsets only after ClickHouse acknowledged them.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SinkConfig {
    /// Most events in one insert.
    pub batch_size: usize,
    /// Longest a batch waits to fill before it is inserted.
    #[serde(with = "humantime_serde")]
    pub linger: Duration,
    /// Its consumer group, and the name its checkpoints are stored under.
    pub group: String,
}

impl Default for SinkConfig {
    fn default() -> Self {
        Self { batch_size: 100_000, linger: Duration::from_secs(1), group: "meter-sink".into() }
    }
}

/// Where the usage store lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreBackend {
    /// A SQLite file.
    Sqlite(PathBuf),
    /// ClickHouse for history; the live counters in the data directory's `usage.db`.
    ClickHouse(meter_store::ClickHouseUrl),
}

/// The ingest API.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// Most events in one request.
    pub max_events_per_request: usize,
    /// How far in the future an event time may be.
    #[serde(with = "humantime_serde")]
    pub max_future: Duration,
    /// How old an event may be when it arrives.
    #[serde(with = "humantime_serde")]
    pub lateness: Duration,
    /// How long an event id is kept after it arrived, for duplicates: at least `lateness` plus
    /// `max_future` (plus the delivery margin on Kafka), so that a resend arriving after its id
    /// was dropped is refused as late. A CloudEvents resend with a fresh `time` past the horizon
    /// counts again. Unset: 35 days, or that least value when it is longer.
    #[serde(with = "humantime_serde")]
    pub dedup_horizon: Option<Duration>,
    /// Per-tenant rate quotas, by plan; none by default.
    pub quotas: QuotasConfig,
}

/// Per-tenant ingest rate quotas (`[ingest.quotas]`): a request that would take a tenant past its
/// plan's quota is answered 429 with `Retry-After`, and nothing of it is stored. Quotas live
/// here rather than in the price book, whose lists are frozen once they rate a closed period.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuotasConfig {
    /// The quota of a tenant whose plan has none below, or that has no plan; unset: such
    /// tenants are not limited.
    pub default: Option<RateQuotaConfig>,
    /// Quotas by plan code (`[ingest.quotas.plans.pro]`).
    pub plans: std::collections::BTreeMap<String, RateQuotaConfig>,
    /// Ingest hosts sharing the quotas (each enforces this share of them); unset: 1.
    pub hosts: Option<u32>,
}

/// One rate quota.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateQuotaConfig {
    /// Events a second, for the whole deployment.
    pub events_per_second: u32,
    /// Requests a second; unset: not limited apart from events.
    #[serde(default)]
    pub requests_per_second: Option<u32>,
    /// How much more than the rate may arrive at once: this long's worth of the quota (unset:
    /// a second's).
    #[serde(default, with = "humantime_serde")]
    pub burst: Option<Duration>,
}

impl RateQuotaConfig {
    /// The quota, or what is wrong with it (`at` names it).
    fn quota(&self, at: &str) -> Result<meter_ingest::RateQuota, ConfigError> {
        let positive = |v: u32, field: &str| {
            std::num::NonZeroU32::new(v)
                .ok_or_else(|| ConfigError::Invalid(format!("{at}.{field}: must be at least 1 a second")))
        };
        let burst = self.burst.unwrap_or(meter_ingest::RateQuota::DEFAULT_BURST);
        if burst.is_zero() {
            return Err(ConfigError::Invalid(format!("{at}.burst: must be more than 0")));
        }
        Ok(meter_ingest::RateQuota {
            events_per_second: positive(self.events_per_second, "events_per_second")?,
            requests_per_second: self.requests_per_second.map(|r| positive(r, "requests_per_second")).transpose()?,
            burst,
        })
    }
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 5 * 1024 * 1024,
            max_events_per_request: 1000,
            max_future: Duration::from_secs(300),
            lateness: Duration::from_secs(7 * 86_400),
            dedup_horizon: None,
            quotas: QuotasConfig::default(),
        }
    }
}

impl IngestConfig {
    /// The per-request limits ingest enforces.
    pub fn limits(&self) -> Limits {
        Limits {
            max_events: self.max_events_per_request,
            max_future_us: self.max_future.as_micros() as i64,
            lateness_us: self.lateness.as_micros() as i64,
        }
    }
}

/// The aggregator.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AggregatorConfig {
    /// Most events applied in one transaction while the aggregator keeps up.
    pub batch_size: usize,
    /// Most events applied in one transaction while a backlog lasts (batches double from
    /// `batch_size` up to this; fewer, larger batches catch up for less CPU, holding more events
    /// in memory). Unset: the aggregator's default, or `batch_size` if that is larger.
    pub max_batch_size: Option<usize>,
    /// After a small read, how long to wait for more before applying (bigger batches cost less
    /// per event; every event waits this much longer to be counted).
    #[serde(with = "humantime_serde")]
    pub linger: Duration,
    /// The aggregators' consumer group (on Kafka), and the name their checkpoints are stored under.
    pub group: String,
    /// Kafka: how long a silent aggregator keeps its partitions before the group hands them on.
    #[serde(with = "humantime_serde")]
    pub session_timeout: Duration,
}

/// The defaults are the aggregator's and (the session) the Kafka log's, which own them.
impl Default for AggregatorConfig {
    fn default() -> Self {
        let d = meter_aggregator::Settings::default();
        Self {
            batch_size: d.batch_size,
            max_batch_size: None,
            linger: d.linger,
            group: d.consumer,
            session_timeout: KafkaSettings::new("").session_timeout,
        }
    }
}

impl AggregatorConfig {
    /// The largest batch while a backlog lasts: as set, else the aggregator's default or
    /// `batch_size` if larger (a configuration from before the setting keeps its batches).
    pub fn max_batch_size(&self) -> usize {
        self.max_batch_size.unwrap_or_else(|| meter_aggregator::Settings::default().max_batch_size.max(self.batch_size))
    }
}

/// Where the event log lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogBackend {
    /// A SQLite file.
    Sqlite(PathBuf),
    /// Kafka brokers, `host:port[,host:port]`.
    Kafka(String),
}

/// Command-line values that override every other layer.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// `--listen`.
    pub listen: Option<SocketAddr>,
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `--log`.
    pub log_url: Option<String>,
    /// `--store`.
    pub store_url: Option<String>,
    /// `--state`.
    pub state_url: Option<StateUrl>,
}

/// Why the configuration is refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A layer has an unknown key, a wrong type, or is unreadable.
    #[error("configuration: {0}")]
    Layer(#[from] Box<figment::Error>),
    /// Values are individually fine but do not make sense.
    #[error("configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Loads defaults, then `file`, then `METER__*` env, then `overrides`.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::Invalid(format!("config file {} does not exist", path.display())));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        figment = figment.merge(Env::prefixed("METER__").split("__"));
        let mut config: Config = figment.extract().map_err(Box::new)?;
        if let Some(l) = overrides.listen {
            config.listen = l;
        }
        if let Some(d) = &overrides.data_dir {
            config.data_dir = d.clone();
        }
        if let Some(u) = &overrides.log_url {
            config.log.url = u.clone();
        }
        if let Some(u) = &overrides.store_url {
            config.store.url = u.clone();
        }
        if let Some(u) = &overrides.state_url {
            config.state.url = u.clone();
        }
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.stripe.webhook_secrets()?;
        self.stripe.settings()?;
        self.catalog()?;
        let i = &self.ingest;
        if i.max_events_per_request == 0 || i.max_body_bytes < 1024 {
            return Err(ConfigError::Invalid(
                "ingest.max_events_per_request must be at least 1 and ingest.max_body_bytes at least 1024".into(),
            ));
        }
        if self.log.partitions == 0 || self.log.partitions > 1024 {
            return Err(ConfigError::Invalid("log.partitions must be from 1 to 1024".into()));
        }
        self.log_backend()?;
        self.store_backend()?;
        self.state_backend()?;
        let a = &self.aggregator;
        if a.batch_size == 0 {
            return Err(ConfigError::Invalid("aggregator.batch_size must be at least 1".into()));
        }
        if let Some(max) = a.max_batch_size.filter(|max| *max < a.batch_size) {
            return Err(ConfigError::Invalid(format!(
                "aggregator.max_batch_size ({max}) must be at least aggregator.batch_size ({})",
                a.batch_size
            )));
        }
        if self.sink.batch_size == 0 {
            return Err(ConfigError::Invalid("sink.batch_size must be at least 1".into()));
        }
        self.ingest_limits()?;
        self.ingest_quotas()?;
        self.dedup()?;
        self.price_book()?;
        if self.alerts.advise_every.is_zero() {
            return Err(ConfigError::Invalid("alerts.advise_every must be more than 0".into()));
        }
        if self.webhooks.timeout.is_zero() || self.webhooks.first_backoff.is_zero() {
            return Err(ConfigError::Invalid("webhooks.timeout and webhooks.first_backoff must be more than 0".into()));
        }
        if self.billing.grace.is_zero() {
            return Err(ConfigError::Invalid("billing.grace: must be more than 0".into()));
        }
        if self.sync.settling_check.is_zero() {
            return Err(ConfigError::Invalid("sync.settling_check: must be more than 0".into()));
        }
        if !self.sync.retries.windows(2).all(|w| *w[0] < *w[1])
            || self.sync.retries.first().is_some_and(|r| r.is_zero())
        {
            return Err(ConfigError::Invalid(
                "sync.retries: each retry must come after the one before it, and after the failure".into(),
            ));
        }
        Ok(())
    }

    /// The meters: defaults plus configured ones.
    pub fn catalog(&self) -> Result<Catalog, ConfigError> {
        Catalog::new(self.meters.clone()).map_err(|e| ConfigError::Invalid(e.to_string()))
    }

    fn sqlite_path(&self, what: &str, url: &str, file: &str) -> Result<PathBuf, ConfigError> {
        match url {
            "sqlite" | "sqlite://" => Ok(self.data_dir.join(file)),
            u if u.starts_with("sqlite://") => Ok(PathBuf::from(&u["sqlite://".len()..])),
            u => Err(ConfigError::Invalid(format!(
                "{what}.url {u:?} is not supported; use \"sqlite\" or \"sqlite://PATH\"{}",
                if what == "log" { " or \"kafka://HOST:PORT\"" } else { " or \"clickhouse://HOST:PORT/DATABASE\"" }
            ))),
        }
    }

    /// Where the event log is.
    pub fn log_backend(&self) -> Result<LogBackend, ConfigError> {
        match self.log.url.strip_prefix("kafka://") {
            Some("") => Err(ConfigError::Invalid("log.url kafka:// needs HOST:PORT".into())),
            Some(brokers) => Ok(LogBackend::Kafka(brokers.to_string())),
            None => self.sqlite_path("log", &self.log.url, "events.db").map(LogBackend::Sqlite),
        }
    }

    /// The limits ingest enforces. On Kafka the lateness window is shortened by the longest a
    /// record can take to become readable after ingest checked it: the delivery timeout, the
    /// broker's wait for replicas (as long again), and the replica lag after which a stalled
    /// replica stops holding it back. The usage API's `complete` counts on no record of a closed
    /// period arriving after the full window (ARCHITECTURE.md, Watermark).
    pub fn ingest_limits(&self) -> Result<Limits, ConfigError> {
        let mut limits = self.ingest.limits();
        if let LogBackend::Kafka(_) = self.log_backend()? {
            let margin = 2 * self.log.delivery_timeout + self.log.replica_lag_max;
            if limits.lateness_us <= margin.as_micros() as i64 {
                return Err(ConfigError::Invalid(format!(
                    "ingest.lateness must exceed {margin:?} on Kafka (twice log.delivery_timeout plus \
                     log.replica_lag_max)"
                )));
            }
            limits.lateness_us -= margin.as_micros() as i64;
        }
        Ok(limits)
    }

    /// The tenants' rate quotas: each a positive rate, on a plan of the price book, and letting a
    /// host take a request of `ingest.max_events_per_request` events at once.
    pub fn ingest_quotas(&self) -> Result<meter_ingest::Quotas, ConfigError> {
        let q = &self.ingest.quotas;
        let hosts = std::num::NonZeroU32::new(q.hosts.unwrap_or(1))
            .ok_or_else(|| ConfigError::Invalid("ingest.quotas.hosts: must be at least 1".into()))?;
        let book = self.price_book()?;
        let mut named = Vec::new();
        if let Some(d) = &q.default {
            named.push(("ingest.quotas.default".to_string(), None, d));
        }
        for (plan, quota) in &q.plans {
            let at = format!("ingest.quotas.plans.{plan}");
            if !book.lists().iter().any(|l| l.plans.contains_key(plan)) {
                return Err(ConfigError::Invalid(format!("{at}: no price list of the price book has a plan {plan:?}")));
            }
            named.push((at, Some(plan), quota));
        }
        let mut quotas = meter_ingest::Quotas { hosts, ..meter_ingest::Quotas::default() };
        let max = self.ingest.max_events_per_request;
        for (at, plan, quota) in named {
            let quota = quota.quota(&at)?;
            if let Some(at_once) = quotas.too_small_for(&quota, max) {
                return Err(ConfigError::Invalid(format!(
                    "{at}: its burst lets a host take {at_once} events at once (events_per_second × burst ÷ \
                     ingest.quotas.hosts), fewer than ingest.max_events_per_request ({max}): such a request \
                     could never be admitted"
                )));
            }
            match plan {
                Some(plan) => {
                    quotas.plans.insert(plan.clone(), quota);
                }
                None => quotas.default = Some(quota),
            }
        }
        Ok(quotas)
    }

    /// How the embedded backends keep event ids for duplicates: `ingest.dedup_horizon`, refused
    /// when shorter than the lateness window plus `ingest.max_future` (plus, on Kafka, the
    /// delivery margin): a resend could then arrive after its id was dropped and still be on time.
    pub fn dedup(&self) -> Result<meter_sqlite::dedup::Settings, ConfigError> {
        let mut least = self.ingest.lateness + self.ingest.max_future;
        let mut what = "ingest.lateness + ingest.max_future";
        if let LogBackend::Kafka(_) = self.log_backend()? {
            least += 2 * self.log.delivery_timeout + self.log.replica_lag_max;
            what = "ingest.lateness + ingest.max_future + twice log.delivery_timeout + log.replica_lag_max";
        }
        let horizon = match self.ingest.dedup_horizon {
            Some(h) if h < least => {
                return Err(ConfigError::Invalid(format!(
                    "ingest.dedup_horizon ({}) must be at least {what} ({}): a resend arriving after its id was \
                     dropped would count again",
                    humantime::format_duration(h),
                    humantime::format_duration(least)
                )));
            }
            Some(h) => h,
            None => Duration::from_micros(meter_schemas::envelope::DEDUP_HORIZON_US as u64).max(least),
        };
        Ok(meter_sqlite::dedup::Settings::new(horizon.as_micros().min(i64::MAX as u128) as i64))
    }

    /// Where the usage store is.
    pub fn store_backend(&self) -> Result<StoreBackend, ConfigError> {
        if self.store.url.starts_with("clickhouse://") {
            let mut url = meter_store::ClickHouseUrl::parse(&self.store.url)
                .map_err(|e| ConfigError::Invalid(format!("store.url {:?}: {e}", self.store.url)))?;
            url.password = self.store.password.as_ref().map(|s| s.0.clone());
            return Ok(StoreBackend::ClickHouse(url));
        }
        self.sqlite_path("store", &self.store.url, "usage.db").map(StoreBackend::Sqlite)
    }

    /// Where the shared state is.
    pub fn state_backend(&self) -> Result<StateBackend, ConfigError> {
        match self.state.url.0.as_str() {
            "sqlite" => Ok(StateBackend::Sqlite),
            u if u.starts_with("postgres://") || u.starts_with("postgresql://") => meter_postgres::PgUrl::parse(u)
                .map(StateBackend::Postgres)
                .map_err(|e| ConfigError::Invalid(format!("state.url: {e}"))),
            _ => Err(ConfigError::Invalid(format!(
                "state.url {:?} is not supported; use \"sqlite\" or \"postgres://USER:PASSWORD@HOST:PORT/DATABASE\"",
                self.state.url
            ))),
        }
    }

    /// File of the live counters: the SQLite store, or `usage.db` beside a ClickHouse store.
    pub fn live_store_path(&self) -> Result<PathBuf, ConfigError> {
        match self.store_backend()? {
            StoreBackend::Sqlite(path) => Ok(path),
            StoreBackend::ClickHouse(_) => Ok(self.data_dir.join("usage.db")),
        }
    }

    /// File of the API keys.
    pub fn keys_path(&self) -> PathBuf {
        self.data_dir.join("keys.db")
    }

    /// The webhook endpoints' and deliveries' file.
    pub fn webhooks_path(&self) -> PathBuf {
        self.data_dir.join("webhooks.db")
    }

    /// The billing ledger's file.
    pub fn ledger_path(&self) -> PathBuf {
        self.data_dir.join("billing.db")
    }

    /// The price book, checked against the meters.
    pub fn price_book(&self) -> Result<PriceBook, ConfigError> {
        let text = match &self.billing.price_book {
            None => meter_rater::pricebook::SAMPLE.to_string(),
            Some(path) => std::fs::read_to_string(path)
                .map_err(|e| ConfigError::Invalid(format!("billing.price_book {}: {e}", path.display())))?,
        };
        let catalog = self.catalog()?;
        let names: Vec<&str> = catalog.meters().iter().map(|m| m.name.as_str()).collect();
        let unique: Vec<&str> = catalog
            .meters()
            .iter()
            .filter(|m| m.aggregation == meter_schemas::Aggregation::UniqueCount)
            .map(|m| m.name.as_str())
            .collect();
        PriceBook::parse(&text, &names, &unique).map_err(|e| ConfigError::Invalid(e.to_string()))
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    #[test]
    fn the_state_url_is_parsed_and_its_password_never_printed() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("METER__STATE__URL", "postgres://meter:s3cret@db:5432/meter");
            let c = Config::load(None, &Overrides::default()).unwrap();
            let StateBackend::Postgres(url) = c.state_backend().unwrap() else { panic!("postgres") };
            assert_eq!(url.to_string(), "postgres://meter@db:5432/meter");
            let printed = format!("{c:?}");
            assert!(printed.contains("postgres://meter@db:5432/meter") && !printed.contains("s3cret"), "{printed}");
            let flag = Overrides { state_url: Some(StateUrl("sqlite".into())), ..Overrides::default() };
            assert_eq!(Config::load(None, &flag).unwrap().state_backend().unwrap(), StateBackend::Sqlite);
            for (bad, says) in [
                ("mysql://u:pw@h/d", "state.url"),
                ("postgres://u:s3cret@h/d?sslmode=require", "sslmode=require"),
                ("postgres://u:s3cret@h:99999/d", "port"),
            ] {
                let o = Overrides { state_url: Some(StateUrl(bad.into())), ..Overrides::default() };
                let e = Config::load(None, &o).unwrap_err().to_string();
                assert!(e.contains(says) && !e.contains("s3cret") && !e.contains(":pw@"), "{bad}: {e}");
            }
            Ok(())
        });
    }

    #[test]
    fn rate_quotas_are_read_by_plan_and_checked_at_load() {
        figment::Jail::expect_with(|jail| {
            let c = Config::load(None, &Overrides::default()).unwrap();
            assert!(!c.ingest_quotas().unwrap().any(), "no quota by default");
            jail.create_file(
                "q.toml",
                "[ingest.quotas]\nhosts = 2\n[ingest.quotas.default]\nevents_per_second = 4000\n\
                 requests_per_second = 50\n[ingest.quotas.plans.professional]\nevents_per_second = 20000\n\
                 burst = \"500ms\"\n",
            )?;
            let q = Config::load(Some(Path::new("q.toml")), &Overrides::default()).unwrap().ingest_quotas().unwrap();
            assert_eq!(q.hosts.get(), 2);
            let d = q.default.unwrap();
            assert_eq!((d.events_per_second.get(), d.requests_per_second.map(|r| r.get())), (4000, Some(50)));
            assert_eq!(d.burst, Duration::from_secs(1), "a second's worth unless set");
            let p = q.plans["professional"];
            assert_eq!(
                (p.events_per_second.get(), p.requests_per_second, p.burst),
                (20000, None, Duration::from_millis(500))
            );
            // Each refusal names the field and why.
            for (file, field, why) in [
                ("[ingest.quotas.plans.gold]\nevents_per_second = 5000\n", "ingest.quotas.plans.gold", "no price list"),
                (
                    "[ingest.quotas.default]\nevents_per_second = 0\n",
                    "ingest.quotas.default.events_per_second",
                    "at least 1",
                ),
                (
                    "[ingest.quotas.default]\nevents_per_second = 5000\nrequests_per_second = 0\n",
                    "ingest.quotas.default.requests_per_second",
                    "at least 1",
                ),
                (
                    "[ingest.quotas.default]\nevents_per_second = 5000\nburst = \"0s\"\n",
                    "ingest.quotas.default.burst",
                    "more than 0",
                ),
                ("[ingest.quotas]\nhosts = 0\n", "ingest.quotas.hosts", "at least 1"),
                // 1,000 events a request, but 4,000 a second over 8 hosts lets a host take 500 at once.
                (
                    "[ingest.quotas]\nhosts = 8\n[ingest.quotas.default]\nevents_per_second = 4000\n",
                    "ingest.quotas.default",
                    "take 500 events at once",
                ),
                ("[ingest.quotas.default]\nevents_per_second = 5000\nper_minute = 3\n", "per_minute", "unknown field"),
                ("[aggregator]\nbatch_size = 0\n", "aggregator.batch_size", "at least 1"),
                (
                    "[aggregator]\nbatch_size = 50000\nmax_batch_size = 40000\n",
                    "aggregator.max_batch_size (40000)",
                    "at least aggregator.batch_size (50000)",
                ),
            ] {
                jail.create_file("bad.toml", file)?;
                let err = Config::load(Some(Path::new("bad.toml")), &Overrides::default()).unwrap_err().to_string();
                assert!(err.contains(field) && err.contains(why), "{file}: {err}");
            }
            Ok(())
        });
    }

    #[test]
    fn the_largest_batch_follows_a_larger_batch_size_unless_set() {
        figment::Jail::expect_with(|jail| {
            let c = Config::load(None, &Overrides::default()).unwrap();
            assert_eq!((c.aggregator.batch_size, c.aggregator.max_batch_size()), (40_000, 160_000));
            jail.set_env("METER__AGGREGATOR__BATCH_SIZE", "200000");
            let c = Config::load(None, &Overrides::default()).unwrap();
            assert_eq!(c.aggregator.max_batch_size(), 200_000, "a configuration from before the setting loads");
            jail.set_env("METER__AGGREGATOR__MAX_BATCH_SIZE", "400000");
            let c = Config::load(None, &Overrides::default()).unwrap();
            assert_eq!(c.aggregator.max_batch_size(), 400_000);
            Ok(())
        });
    }

    #[test]
    fn a_dedup_horizon_shorter_than_the_windows_is_refused() {
        figment::Jail::expect_with(|jail| {
            let c = Config::load(None, &Overrides::default()).unwrap();
            assert_eq!(c.dedup().unwrap().horizon_us, 35 * 86_400_000_000, "35 days by default");
            // Unset, it follows a lateness window longer than 35 days.
            jail.set_env("METER__INGEST__LATENESS", "120days");
            let c = Config::load(None, &Overrides::default()).unwrap();
            assert_eq!(c.dedup().unwrap().horizon_us, (120 * 86_400 + 300) * 1_000_000);
            jail.set_env("METER__INGEST__LATENESS", "2days");
            jail.set_env("METER__INGEST__DEDUP_HORIZON", "2days");
            let e = Config::load(None, &Overrides::default()).unwrap_err().to_string();
            assert!(
                e.contains(
                    "ingest.dedup_horizon (2days) must be at least ingest.lateness + ingest.max_future (2days 5m)"
                ),
                "{e}"
            );
            jail.set_env("METER__INGEST__DEDUP_HORIZON", "3days");
            assert_eq!(
                Config::load(None, &Overrides::default()).unwrap().dedup().unwrap().horizon_us,
                3 * 86_400_000_000
            );
            // On Kafka the delivery margin is added.
            let kafka = Overrides { log_url: Some("kafka://k:9092".into()), ..Overrides::default() };
            jail.set_env("METER__INGEST__DEDUP_HORIZON", "2days 5m 30s");
            let e = Config::load(None, &kafka).unwrap_err().to_string();
            assert!(e.contains("twice log.delivery_timeout"), "{e}");
            Ok(())
        });
    }

    #[test]
    fn layers_apply_in_order_and_unknown_keys_are_errors() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("meter.toml", "listen = \"127.0.0.1:9000\"\n[ingest]\nmax_events_per_request = 50\n")?;
            jail.set_env("METER__INGEST__MAX_EVENTS_PER_REQUEST", "70");
            let c = Config::load(Some(Path::new("meter.toml")), &Overrides::default()).unwrap();
            assert_eq!(c.listen.port(), 9000);
            assert_eq!(c.ingest.max_events_per_request, 70);
            let o = Overrides {
                listen: Some("127.0.0.1:1".parse().unwrap()),
                data_dir: None,
                log_url: Some("kafka://k:9092".into()),
                store_url: None,
                state_url: None,
            };
            let c = Config::load(Some(Path::new("meter.toml")), &o).unwrap();
            assert_eq!(c.listen.port(), 1);
            assert_eq!(c.log_backend().unwrap(), LogBackend::Kafka("k:9092".into()));
            assert_eq!(c.aggregator.group, "meter-aggregator");
            let window = (c.ingest.lateness - 2 * c.log.delivery_timeout - c.log.replica_lag_max).as_micros() as i64;
            assert_eq!(c.ingest_limits().unwrap().lateness_us, window, "Kafka shortens the window at arrival");
            // A window no longer than the margin would refuse every event: refused at start-up.
            jail.set_env("METER__INGEST__LATENESS", "40s");
            let err = Config::load(Some(Path::new("meter.toml")), &o).unwrap_err().to_string();
            assert!(err.contains("ingest.lateness must exceed 50s"), "{err}");

            jail.create_file("bad.toml", "[ingest]\nmax_event = 5\n")?;
            let err = Config::load(Some(Path::new("bad.toml")), &Overrides::default()).unwrap_err().to_string();
            assert!(err.contains("max_event"), "{err}");
            jail.set_env("METER__NOPE", "1");
            assert!(Config::load(None, &Overrides::default()).unwrap_err().to_string().contains("nope"));
            Ok(())
        });
    }

    #[test]
    fn stripe_settings_are_checked_at_load_and_secrets_never_print() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "meter.toml",
                "[stripe]\napi_key = \"sk_test_secret\"\nwebhook_secret = \"whsec_secret\"\n\
                 [sync.collection]\nplans = { enterprise = { method = \"send_invoice\", days_until_due = 30 } }\n",
            )?;
            let c = Config::load(Some(Path::new("meter.toml")), &Overrides::default()).unwrap();
            assert_eq!(c.stripe.webhook_secrets().unwrap(), ["whsec_secret"]);
            assert_eq!(
                c.sync.settings().terms.of("acme", Some("enterprise")),
                meter_billing_sync::Collection::SendInvoice { days_until_due: 30 }
            );
            let printed = format!("{c:?}");
            assert!(!printed.contains("sk_test_secret") && !printed.contains("whsec_secret"), "{printed}");
            // Anyone could sign with an empty secret.
            jail.set_env("METER__STRIPE__WEBHOOK_SECRET", "");
            let err = Config::load(Some(Path::new("meter.toml")), &Overrides::default()).unwrap_err().to_string();
            assert!(err.contains("stripe.webhook_secret: empty"), "{err}");
            jail.set_env("METER__STRIPE__WEBHOOK_SECRET", "whsec_secret");
            jail.set_env("METER__STRIPE__RATE_LIMIT", "0");
            let err = Config::load(Some(Path::new("meter.toml")), &Overrides::default()).unwrap_err().to_string();
            assert!(err.contains("stripe.rate_limit"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn dunning_durations_default_to_15_days_and_1_3_7_and_are_checked() {
        figment::Jail::expect_with(|jail| {
            let day = Duration::from_secs(86_400);
            let c = Config::load(None, &Overrides::default()).unwrap();
            assert_eq!(c.billing.grace, 15 * day);
            assert_eq!(c.sync.settings().retries, [day, 3 * day, 7 * day]);
            jail.create_file("d.toml", "[billing]\ngrace = \"90s\"\n[sync]\nretries = [\"10s\", \"30s\"]\n")?;
            let c = Config::load(Some(Path::new("d.toml")), &Overrides::default()).unwrap();
            assert_eq!(c.billing.grace, Duration::from_secs(90));
            assert_eq!(c.sync.settings().retries, [Duration::from_secs(10), Duration::from_secs(30)]);
            jail.create_file("o.toml", "[sync]\nretries = [\"3days\", \"1day\"]\n")?;
            let err = Config::load(Some(Path::new("o.toml")), &Overrides::default()).unwrap_err().to_string();
            assert!(err.contains("sync.retries"), "{err}");
            jail.create_file("z.toml", "[billing]\ngrace = \"0s\"\n")?;
            let err = Config::load(Some(Path::new("z.toml")), &Overrides::default()).unwrap_err().to_string();
            assert!(err.contains("billing.grace"), "{err}");
            // A debit on its way is looked at daily by default; never "0s".
            assert_eq!(c.sync.settings().settling_check, day);
            jail.create_file("s.toml", "[sync]\nsettling_check = \"6h\"\n")?;
            let c = Config::load(Some(Path::new("s.toml")), &Overrides::default()).unwrap();
            assert_eq!(c.sync.settings().settling_check, Duration::from_secs(6 * 3600));
            jail.create_file("s0.toml", "[sync]\nsettling_check = \"0s\"\n")?;
            let err = Config::load(Some(Path::new("s0.toml")), &Overrides::default()).unwrap_err().to_string();
            assert!(err.contains("sync.settling_check"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn the_price_book_is_the_sample_or_a_file_checked_against_the_meters() {
        figment::Jail::expect_with(|jail| {
            let c = Config::load(None, &Overrides::default()).unwrap();
            assert!(c.price_book().unwrap().version("2026-01").is_some(), "the sample is the default");
            jail.set_env("METER__BILLING__PRICE_BOOK", "missing.toml");
            let err = Config::load(None, &Overrides::default()).unwrap_err().to_string();
            assert!(err.contains("billing.price_book missing.toml"), "{err}");
            let book = meter_rater::pricebook::SAMPLE
                .replace("[list.plans.starter.meters.api_calls]", "[list.plans.starter.meters.api_calls_v2]");
            jail.create_file("book.toml", &book)?;
            jail.set_env("METER__BILLING__PRICE_BOOK", "book.toml");
            let err = Config::load(None, &Overrides::default()).unwrap_err().to_string();
            assert!(err.contains("plans.starter.meters.api_calls_v2: unknown meter"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn durations_and_meters_from_a_file() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "m.toml",
                "[ingest]\nlateness = \"30days\"\n[[meters]]\nname = \"gb\"\nevent = \"storage\"\naggregation = \"max\"\nproperty = \"gb\"\n",
            )?;
            let c = Config::load(Some(Path::new("m.toml")), &Overrides::default()).unwrap();
            assert_eq!(c.ingest.lateness, Duration::from_secs(30 * 86_400));
            assert!(c.catalog().unwrap().accepts("storage"));
            jail.create_file("k.toml", "[log]\nurl = \"kafka://x:9092,y:9092\"\n")?;
            let k = Config::load(Some(Path::new("k.toml")), &Overrides::default()).unwrap();
            assert_eq!(k.log_backend().unwrap(), LogBackend::Kafka("x:9092,y:9092".into()));
            jail.create_file("c.toml", "[store]\nurl = \"clickhouse://x:8123/db\"\npassword = \"hunter2\"\n")?;
            let c = Config::load(Some(Path::new("c.toml")), &Overrides::default()).unwrap();
            let StoreBackend::ClickHouse(url) = c.store_backend().unwrap() else { panic!("not ClickHouse") };
            assert_eq!((url.http.as_str(), url.database.as_str()), ("http://x:8123", "db"));
            assert_eq!(url.password.as_deref(), Some("hunter2"));
            assert!(!format!("{c:?} {url:?}").contains("hunter2"), "the password never prints");
            assert_eq!(c.live_store_path().unwrap(), c.data_dir.join("usage.db"));
            jail.create_file("d.toml", "[store]\nurl = \"clickhouse://x:8123/my-db\"\n")?;
            let err = Config::load(Some(Path::new("d.toml")), &Overrides::default()).unwrap_err().to_string();
            assert!(err.contains("store.url") && err.contains("letters, digits and underscores"), "{err}");
            Ok(())
        });
    }
}
