//! The server behind `meter serve`, `meter ingest`, `meter aggregate` and `meter sink`: every role
//! in one process, or one role per process (roles need a shared log: Kafka). [`run_roles`] opens
//! what the roles share ([`shared`]) and calls one starter per role, each starting what its role
//! needs: ingest ([`http`]), the aggregator and the sink ([`consumers`]), the alert loops
//! ([`alerts`]).

mod alerts;
mod consumers;
mod http;
mod shared;
mod sync;

pub(crate) use shared::State;

use crate::config::{Config, LogBackend};
use anyhow::Context as _;
use fs4::fs_std::FileExt;
use meter_api::{AppState, Health};
use std::fs::File;
use std::future::{Future, IntoFuture};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;

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
    /// The sync outbox's worker (`meter sync`): invoices to the payment provider.
    pub sync: bool,
}

impl Roles {
    /// Everything, as `meter serve` runs.
    pub const ALL: Roles = Roles { ingest: true, aggregate: true, sink: true, sync: true };
    /// `meter ingest`: the write API and the read API; stateless.
    pub const INGEST: Roles = Roles { ingest: true, aggregate: false, sink: false, sync: false };
    /// `meter aggregate`: an aggregator, with the read API, health and metrics.
    pub const AGGREGATE: Roles = Roles { ingest: false, aggregate: true, sink: false, sync: false };
    /// `meter sink`: the ClickHouse sink, with the read API, health and metrics.
    pub const SINK: Roles = Roles { ingest: false, aggregate: false, sink: true, sync: false };
    /// `meter sync`: the sync outbox's worker, with the read API, health and metrics.
    pub const SYNC: Roles = Roles { ingest: false, aggregate: false, sink: false, sync: true };
}

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
            "`meter ingest`, `meter aggregate`, `meter sink` and `meter sync` run as separate processes around a shared log; \
             give one with --log kafka://HOST:PORT, or run every role in one process with `meter serve`"
        );
    }
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create the data directory {}", config.data_dir.display()))?;
    // The embedded log is one process's; with Kafka, processes share the store and key files.
    let _lock = if kafka { None } else { Some(lock_data_dir(&config)?) };
    // A census killed with its process leaves its spill (gigabytes on a large log) until the
    // next census; remove it now, unless a census of another process holds it.
    meter_billing::census::remove_left_over(&meter_billing::census::spill_dir(&config.data_dir));
    let shared = shared::Shared::open(&config).await?;
    if roles == Roles::SINK && shared.clickhouse.is_none() {
        anyhow::bail!("`meter sink` fills a ClickHouse store; give one with --store clickhouse://HOST:PORT/DATABASE");
    }
    let mut tasks = alerts::start_alerts_if_needed(&shared, &config, roles.aggregate).await?;
    tasks.extend(sync::start_sync_if_needed(&shared, &config, roles.sync).await?);
    let (sink, maintenance) = consumers::start_sink_if_needed(&shared, &config, roles.sink)?;
    tasks.extend(maintenance);
    tasks.extend(consumers::start_log_compaction_if_needed(&shared, &config)?);
    let aggregator = consumers::start_aggregator_if_needed(&shared, &config, roles.aggregate)?;
    let ingest = http::start_ingest_if_needed(&shared, &config, roles.ingest)?;
    let state = Arc::new(app_state(
        &shared,
        &config,
        Health {
            runs_aggregator: roles.aggregate,
            aggregator: Mutex::new(aggregator),
            sink: Mutex::new(sink),
            state: shared.pg.clone().map(|pg| Arc::new(shared::PgProbe(pg)) as Arc<dyn meter_api::StateProbe>),
        },
    ));
    let app = http::app(state.clone(), ingest);

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
    for task in tasks {
        task.abort();
    }
    if let Some(s) = sink {
        // A sink that cannot reach ClickHouse stops at its first failure: the log keeps the rest.
        if let Err(e) = s.drain_and_stop() {
            tracing::warn!(error = %e, "the clickhouse sink stopped before inserting everything; it resumes at the next start");
        }
    }
    drop(shared);
    tracing::info!("meter stopped");
    Ok(())
}

/// What the API handlers share, from what the roles share.
fn app_state(shared: &shared::Shared, config: &Config, health: Health) -> AppState {
    let (history, history_consumer) = shared.history(config);
    let billing = meter_api::Billing {
        subscriptions: shared.subscriptions(),
        sources: meter_billing::Sources {
            live: shared.live.clone(),
            history: history.clone(),
            history_consumer: history_consumer.clone(),
            partitions: config.log.partitions,
            log: Some(shared.log.clone()),
            census_group: "meter-close".into(),
            scratch: config.data_dir.clone(),
            catalog: shared.catalog.clone(),
            book: shared.book.clone(),
            lateness_us: config.ingest.limits().lateness_us,
            tenants_a_part: meter_billing::close::TENANTS_A_PART,
        },
        // Refused at load when one is empty (`Config::validate`).
        stripe_webhook_secrets: config.stripe.webhook_secrets().unwrap_or_default(),
        return_url: config.stripe.return_url.clone(),
        provider: shared.provider.clone(),
    };
    AppState {
        keys: shared.keys.clone(),
        sessions: shared.sessions.clone(),
        live: shared.live.clone(),
        reads: meter_store::UsageReads {
            live: shared.live.clone(),
            consumer: config.aggregator.group.clone(),
            history,
            history_consumer,
            partitions: config.log.partitions,
            lateness_us: config.ingest.limits().lateness_us,
        },
        catalog: shared.catalog.clone(),
        billing,
        webhooks: shared.webhooks.clone(),
        metrics: crate::telemetry::prometheus().clone(),
        health,
    }
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
