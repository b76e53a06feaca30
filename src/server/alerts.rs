//! The alert loops of a process: every process keeps its tenants' plans fresh (the live
//! counters raise alerts against them); the process that aggregates also delivers webhooks,
//! publishes to the Kafka alerts topic, and looks for upgrade suggestions.

use super::shared::Shared;
use crate::config::{Config, LogBackend};
use anyhow::Context as _;
use meter_schemas::Catalog;
use meter_store::LiveStore;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// Starts the plan refresher, and when `aggregates`, the webhook dispatcher, the alerts-topic
/// publisher (on a Kafka log) and the upgrade advisor. Returns their tasks, to abort at shutdown.
pub(super) async fn start_alerts_if_needed(
    shared: &Shared,
    config: &Config,
    aggregates: bool,
) -> anyhow::Result<Vec<JoinHandle<()>>> {
    let mut tasks = vec![tokio::spawn(refresh_allowances(shared.allowances.clone(), shared.ledger.clone()))];
    if !aggregates {
        return Ok(tasks);
    }
    // Alerts are raised where counters change: the process that aggregates delivers them.
    tasks.push(tokio::spawn(shared.webhooks.clone().run(shared.live.clone())));
    // On Kafka every alert also goes to the alerts topic.
    if let LogBackend::Kafka(brokers) = config.log_backend()? {
        let topic = meter_webhooks::topic::AlertTopic::open(
            &brokers,
            &config.log.alerts_topic,
            config.log.partitions,
            config.log.delivery_timeout,
        )
        .await
        .context("opening the Kafka alerts topic")?;
        tasks.push(tokio::spawn(topic.run(shared.webhooks.clone(), shared.live.clone(), Duration::from_millis(100))));
    }
    let advice = Advice {
        ledger: shared.ledger.clone(),
        live: shared.live.clone(),
        catalog: shared.catalog.clone(),
        book: shared.book.clone(),
        consumer: config.aggregator.group.clone(),
        partitions: config.log.partitions,
        after_us: config.alerts.advise_after.as_micros() as i64,
        lease: shared.webhooks.single_runner("advisor"),
    };
    tasks.push(tokio::spawn(advise(advice, config.alerts.advise_every)));
    Ok(tasks)
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
    /// One advisor for every host.
    lease: meter_webhooks::Lease,
}

/// Every `every`, rates each tenant's projected usage on the higher tiers and raises an
/// `upgrade_suggested` alert (once per tier and period) where one is cheaper.
async fn advise(a: Advice, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if !a.lease.held().await {
            continue;
        }
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
