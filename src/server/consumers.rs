//! The log's consumers a process runs: the aggregator (into the live counters) and the sink
//! (into ClickHouse, with its maintenance); and, on the embedded log, its compaction behind them.

use super::shared::Shared;
use crate::config::{Config, LogBackend};
use meter_aggregator::{Aggregator, Settings};
use meter_billing::compaction::LogCompaction;
use meter_store::ClickHouseStore;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// How often the sink's process rolls up sealed days and drops raw events past retention.
const MAINTAIN_EVERY: Duration = Duration::from_secs(600);

/// Starts a member of the aggregators' group when `aggregates`.
pub(super) fn start_aggregator_if_needed(
    shared: &Shared,
    config: &Config,
    aggregates: bool,
) -> anyhow::Result<Option<Aggregator>> {
    if !aggregates {
        return Ok(None);
    }
    let settings = Settings {
        batch_size: config.aggregator.batch_size,
        max_batch_size: config.aggregator.max_batch_size(),
        linger: config.aggregator.linger,
        consumer: config.aggregator.group.clone(),
        ..Settings::default()
    };
    Ok(Some(Aggregator::start(shared.log.reader()?, shared.live.clone(), shared.catalog.clone(), settings)?))
}

/// Starts a member of the ClickHouse sink's group, and its maintenance, when `sinks` and the
/// history is ClickHouse.
pub(super) fn start_sink_if_needed(
    shared: &Shared,
    config: &Config,
    sinks: bool,
) -> anyhow::Result<(Option<Aggregator>, Option<JoinHandle<()>>)> {
    let Some(ch) = shared.clickhouse.as_ref().filter(|_| sinks) else { return Ok((None, None)) };
    let settings = Settings {
        batch_size: config.sink.batch_size,
        // The sink's inserts keep their size, backlog or not.
        max_batch_size: config.sink.batch_size,
        linger: config.sink.linger,
        consumer: config.sink.group.clone(),
        // Resume soon after ClickHouse is back; a retry costs one refused connection.
        max_backoff: Duration::from_secs(5),
        ..Settings::default()
    };
    let reader = shared.log.reader_in(&config.sink.group)?;
    let sink = Aggregator::start(reader, ch.clone(), shared.catalog.clone(), settings)?;
    Ok((Some(sink), Some(tokio::spawn(maintain(ch.clone(), config.clone())))))
}

/// Compacts the embedded log behind the aggregator, the sink when there is one, and the census
/// of every period still to close. Kafka's retention is the broker's.
pub(super) fn start_log_compaction_if_needed(
    shared: &Shared,
    config: &Config,
) -> anyhow::Result<Option<JoinHandle<()>>> {
    if !matches!(config.log_backend()?, LogBackend::Sqlite(_)) {
        return Ok(None);
    }
    let mut consumers: Vec<(Arc<dyn meter_store::UsageStore>, String)> =
        vec![(shared.live.clone(), config.aggregator.group.clone())];
    if let Some(ch) = &shared.clickhouse {
        consumers.push((ch.clone(), config.sink.group.clone()));
    }
    let compaction = LogCompaction {
        log: shared.log.clone(),
        consumers,
        ledger: shared.ledger.clone(),
        max_future_us: config.ingest.limits().max_future_us,
    };
    Ok(Some(tokio::spawn(compaction.run())))
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
