//! The server behind `meter serve`, `meter ingest` and `meter aggregate`: ingest, the aggregator
//! and the read API, all of them or one role per process (roles need a shared log: Kafka).

use crate::config::{Config, LogBackend, StoreBackend};
use anyhow::Context as _;
use axum::Json;
use axum::routing::get;
use fs4::fs_std::FileExt;
use meter_aggregator::{Aggregator, Settings};
use meter_api::{AppState, Health};
use meter_auth::{KeyStore, Role};
use meter_eventlog::{EventLog, KafkaLog, KafkaSettings, SqliteLog};
use meter_ingest::Ingest;
use meter_schemas::Catalog;
use meter_store::{ClickHouseStore, LiveStore, SqliteStore, UsageStore};
use std::fs::File;
use std::future::{Future, IntoFuture};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::timeout::TimeoutLayer;

/// Longest a request may take; a slow client cannot hold a connection (or shutdown) for ever.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest shutdown waits for requests in flight before it stops waiting.
const DRAIN_DEADLINE: Duration = Duration::from_secs(30);

/// Holds the data directory's lock for the life of the server.
struct DataDirLock(#[allow(dead_code)] File);

fn lock_data_dir(config: &Config) -> anyhow::Result<DataDirLock> {
    let path = config.data_dir.join("meter.lock");
    let file = File::create(&path).with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock_exclusive() {
        Ok(true) => Ok(DataDirLock(file)),
        _ => anyhow::bail!(
            "another meter process is using {}; stop it or pick another --data-dir",
            config.data_dir.display()
        ),
    }
}

/// What one process runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Roles {
    /// The write API (`meter ingest`).
    pub ingest: bool,
    /// A member of the aggregators' group (`meter aggregate`).
    pub aggregate: bool,
    /// A member of the ClickHouse sink's group (`meter sink`), when the store is ClickHouse.
    pub sink: bool,
}

impl Roles {
    /// Everything, as `meter serve` runs.
    pub const ALL: Roles = Roles { ingest: true, aggregate: true, sink: true };
    /// `meter ingest`: the write API and the read API; stateless.
    pub const INGEST: Roles = Roles { ingest: true, aggregate: false, sink: false };
    /// `meter aggregate`: an aggregator, with the read API, health and metrics.
    pub const AGGREGATE: Roles = Roles { ingest: false, aggregate: true, sink: false };
    /// `meter sink`: the ClickHouse sink, with the read API, health and metrics.
    pub const SINK: Roles = Roles { ingest: false, aggregate: false, sink: true };
}

/// How often the sink's process rolls up sealed days and drops raw events past retention.
const MAINTAIN_EVERY: Duration = Duration::from_secs(600);

/// Runs every role on `listener` until `shutdown` resolves (see [`run_roles`]).
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    run_roles(listener, config, Roles::ALL, shutdown).await
}

/// Runs `roles` on `listener` until `shutdown` resolves; then stops taking requests, finishes
/// those in flight, lets the aggregator count everything it owns in the log, and returns.
pub async fn run_roles(
    listener: TcpListener,
    config: Config,
    roles: Roles,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let kafka = matches!(config.log_backend()?, LogBackend::Kafka(_));
    if roles != Roles::ALL && !kafka {
        anyhow::bail!(
            "`meter ingest`, `meter aggregate` and `meter sink` run as separate processes around a shared log; \
             give one with --log kafka://HOST:PORT, or run every role in one process with `meter serve`"
        );
    }
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create the data directory {}", config.data_dir.display()))?;
    // The embedded log is one process's; with Kafka, processes share the store and key files.
    let _lock = if kafka { None } else { Some(lock_data_dir(&config)?) };
    let catalog = Arc::new(config.catalog()?);
    let keys = KeyStore::open(&config.keys_path()).context("opening the key table")?;
    if config.bootstrap_admin_key && keys.is_empty()? {
        let key = keys.create(Role::Admin, None)?;
        eprintln!(
            "\n  meter: created the first admin key; it is shown only this once:\n\n    {}\n\n  \
             Create narrower keys with `meter keys create --role ingest|read [--tenant T]`.\n",
            key.secret
        );
    }
    let log = open_log(&config).await?;
    let live: Arc<dyn LiveStore> = Arc::new(
        SqliteStore::open(&config.live_store_path()?, config.store.durability).context("opening the usage store")?,
    );
    let store: Arc<dyn UsageStore> = live.clone();
    // Alerts are raised as counters change: the allowances must be known before counting starts.
    let book = Arc::new(config.price_book()?);
    let ledger = meter_billing::Ledger::open(&config.ledger_path()).context("opening the billing ledger")?;
    ledger.check_price_book(&book).await?;
    let allowances = Arc::new(meter_billing::PlanAllowances::new(book.clone()));
    allowances.refresh(&ledger, meter_schemas::period::now_us()).await?;
    live.set_allowances(allowances.clone());
    let refresher = tokio::spawn(refresh_allowances(allowances.clone(), ledger.clone()));
    let webhooks = Arc::new(
        meter_webhooks::Webhooks::open(&config.webhooks_path(), config.webhooks.settings())
            .context("opening the webhook endpoints")?,
    );
    // Alerts are raised where counters change: the process that aggregates delivers them.
    let dispatcher = roles.aggregate.then(|| tokio::spawn(webhooks.clone().run(live.clone())));
    // On Kafka every alert also goes to the alerts topic.
    let publisher = match (roles.aggregate, config.log_backend()?) {
        (true, crate::config::LogBackend::Kafka(brokers)) => {
            let topic = meter_webhooks::topic::AlertTopic::open(
                &brokers,
                &config.log.alerts_topic,
                config.log.partitions,
                config.log.delivery_timeout,
            )
            .await
            .context("opening the Kafka alerts topic")?;
            Some(tokio::spawn(topic.run(webhooks.clone(), live.clone(), Duration::from_millis(100))))
        }
        _ => None,
    };
    let advisor = roles.aggregate.then(|| {
        let advice = Advice {
            ledger: ledger.clone(),
            live: live.clone(),
            catalog: catalog.clone(),
            book: book.clone(),
            consumer: config.aggregator.group.clone(),
            partitions: config.log.partitions,
            after_us: config.alerts.advise_after.as_micros() as i64,
        };
        tokio::spawn(advise(advice, config.alerts.advise_every))
    });
    let clickhouse = match config.store_backend()? {
        StoreBackend::ClickHouse(url) => Some(Arc::new(
            ClickHouseStore::open(&url)
                .await
                .with_context(|| format!("opening the ClickHouse store {:?} at {}", url.database, url.http))?,
        )),
        StoreBackend::Sqlite(_) => None,
    };
    if roles == Roles::SINK && clickhouse.is_none() {
        anyhow::bail!("`meter sink` fills a ClickHouse store; give one with --store clickhouse://HOST:PORT/DATABASE");
    }
    let consumer = config.aggregator.group.clone();
    let (history, history_consumer): (Arc<dyn UsageStore>, String) = match &clickhouse {
        Some(ch) => (ch.clone(), config.sink.group.clone()),
        None => (store.clone(), consumer.clone()),
    };
    let (sink, maintenance) = match &clickhouse {
        Some(ch) if roles.sink => {
            let settings = Settings {
                batch_size: config.sink.batch_size,
                linger: config.sink.linger,
                consumer: config.sink.group.clone(),
                // Resume soon after ClickHouse is back; a retry costs one refused connection.
                max_backoff: Duration::from_secs(5),
                ..Settings::default()
            };
            let reader = log.reader_in(&config.sink.group)?;
            let sink = Aggregator::start(reader, ch.clone(), catalog.clone(), settings)?;
            (Some(sink), Some(tokio::spawn(maintain(ch.clone(), config.clone()))))
        }
        _ => (None, None),
    };
    let aggregator = if roles.aggregate {
        let settings = Settings {
            batch_size: config.aggregator.batch_size,
            linger: config.aggregator.linger,
            consumer: consumer.clone(),
            ..Settings::default()
        };
        Some(Aggregator::start(log.reader()?, store.clone(), catalog.clone(), settings)?)
    } else {
        None
    };
    let billing = meter_api::Billing {
        ledger,
        allowances,
        book: book.clone(),
        sources: meter_billing::Sources {
            live: store.clone(),
            history: history.clone(),
            history_consumer: history_consumer.clone(),
            partitions: config.log.partitions,
            log: Some(log.clone()),
            census_group: "meter-close".into(),
            catalog: catalog.clone(),
            book,
            lateness_us: config.ingest.limits().lateness_us,
        },
    };
    let state = Arc::new(AppState {
        keys: keys.clone(),
        live,
        history,
        history_consumer,
        catalog: catalog.clone(),
        limits: config.ingest.limits(),
        consumer,
        partitions: config.log.partitions,
        billing,
        webhooks,
        metrics: crate::telemetry::prometheus().clone(),
        health: Health { runs_aggregator: roles.aggregate, aggregator: Mutex::new(aggregator), sink: Mutex::new(sink) },
    });
    let mut routes = meter_api::router(state.clone());
    if roles.ingest {
        let quota =
            meter_billing::HardLimits::new(state.billing.allowances.clone(), state.live.clone(), catalog.clone());
        let ingest = Arc::new(Ingest {
            log: log.clone(),
            keys,
            catalog,
            limits: config.ingest_limits()?,
            max_body_bytes: config.ingest.max_body_bytes,
            quota: Some(Arc::new(quota)),
        });
        routes = routes.merge(meter_ingest::router(ingest));
    }
    let (router, openapi) = routes.split_for_parts();
    let openapi = Arc::new(openapi);
    let app = router
        .route("/api/v1/openapi.json", get(move || async move { Json(openapi.as_ref().clone()) }))
        .fallback(meter_api::not_found)
        .layer(TimeoutLayer::with_status_code(axum::http::StatusCode::REQUEST_TIMEOUT, REQUEST_TIMEOUT))
        .layer(CatchPanicLayer::custom(meter_api::panicked));

    crate::telemetry::prometheus();
    let addr = listener.local_addr()?;
    tracing::info!(%addr, data_dir = %config.data_dir.display(), ?roles, "meter serving");
    #[allow(clippy::print_stdout)]
    {
        println!("meter listening on http://{addr}");
    }
    let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        shutdown.await;
        let _ = stopping_tx.send(());
    };
    let serve = axum::serve(listener, app).with_graceful_shutdown(shutdown).into_future();
    let deadline = async move {
        if stopping_rx.await.is_ok() {
            tokio::time::sleep(DRAIN_DEADLINE).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        served = serve => served?,
        () = deadline => tracing::warn!("requests still in flight after {DRAIN_DEADLINE:?}; stopping anyway"),
    }
    tracing::info!("HTTP drained; letting the aggregator count what the log holds");
    let (aggregator, sink) = state.health.take();
    if let Some(a) = aggregator {
        a.drain_and_stop()?;
    }
    if let Some(m) = maintenance {
        m.abort();
    }
    refresher.abort();
    for task in [dispatcher, advisor, publisher].into_iter().flatten() {
        task.abort();
    }
    if let Some(s) = sink {
        // A sink that cannot reach ClickHouse stops at its first failure: the log keeps the rest.
        if let Err(e) = s.drain_and_stop() {
            tracing::warn!(error = %e, "the clickhouse sink stopped before inserting everything; it resumes at the next start");
        }
    }
    drop(log);
    tracing::info!("meter stopped");
    Ok(())
}

/// What the upgrade advisor reads.
struct Advice {
    ledger: meter_billing::Ledger,
    live: Arc<dyn LiveStore>,
    catalog: Arc<Catalog>,
    book: Arc<meter_rater::PriceBook>,
    consumer: String,
    partitions: u32,
    after_us: i64,
}

/// Every `every`, rates each tenant's projected usage on the higher tiers and raises an
/// `upgrade_suggested` alert (once per tier and period) where one is cheaper.
async fn advise(a: Advice, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = meter_schemas::period::now_us();
        let found = meter_billing::advisor::advise(
            a.after_us,
            &a.ledger,
            &*a.live,
            &a.consumer,
            a.partitions,
            &a.catalog,
            &a.book,
            now,
        )
        .await;
        let suggestions = match found {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "looking for upgrade suggestions failed; trying again");
                continue;
            }
        };
        let live = a.live.clone();
        let raised = tokio::task::spawn_blocking(move || {
            suggestions.into_iter().try_fold(0, |n, s| live.suggest(s).map(|new| n + usize::from(new)))
        })
        .await;
        match raised {
            Ok(Ok(n)) if n > 0 => tracing::info!(suggestions = n, "upgrade suggestions raised"),
            Ok(Err(e)) => tracing::warn!(error = %e, "raising upgrade suggestions failed; trying again"),
            _ => {}
        }
    }
}

/// Re-reads every tenant's plan each second (another process may have changed a subscription);
/// a failure is logged and tried again.
async fn refresh_allowances(allowances: Arc<meter_billing::PlanAllowances>, ledger: meter_billing::Ledger) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    loop {
        every.tick().await;
        if let Err(e) = allowances.refresh(&ledger, meter_schemas::period::now_us()).await {
            tracing::warn!(error = %e, "reading the tenants' plans for alerts failed; trying again");
        }
    }
}

/// Rolls up the days no event can reach any more and drops raw events past retention, now and
/// every [`MAINTAIN_EVERY`]; a failure is logged and tried again next time.
async fn maintain(store: Arc<ClickHouseStore>, config: Config) {
    let lateness_us = config.ingest.lateness.as_micros() as i64;
    let mut every = tokio::time::interval(MAINTAIN_EVERY);
    loop {
        every.tick().await;
        if let Err(e) = store.roll_up(&config.sink.group, config.log.partitions, lateness_us).await {
            tracing::warn!(error = %e, "clickhouse: rolling up days failed; trying again later");
        }
        let before = meter_schemas::period::now_us() - config.store.retention.as_micros() as i64;
        if let Err(e) = store.expire(before).await {
            tracing::warn!(error = %e, "clickhouse: dropping raw events past retention failed; trying again later");
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

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown requested");
}

#[cfg(test)]
mod tests {
    use super::*;

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
