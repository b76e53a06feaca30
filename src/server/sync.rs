//! The sync role: the outbox's worker, pushing closed invoices to the payment provider (Stripe
//! when `[stripe] api_key` is set; otherwise none, and every push says it was not synced),
//! collecting them and dunning, and the processor of the provider's events.

use super::shared::Shared;
use crate::config::Config;
use anyhow::Context as _;
use meter_billing_sync::worker::Worker;
use tokio::task::JoinHandle;

/// Starts the outbox's worker when this process runs the sync role. A Stripe key that Stripe
/// refuses stops the start with an error that names the problem (never the key); a Stripe that
/// does not answer does not (metering goes on; the outbox waits).
pub async fn start_sync_if_needed(
    shared: &Shared,
    config: &Config,
    run: bool,
) -> anyhow::Result<Option<JoinHandle<()>>> {
    if !run {
        return Ok(None);
    }
    let provider = shared.provider.clone();
    if let Some(api_base) = config.stripe.api_key.as_ref().map(|_| &config.stripe.api_base) {
        match provider.verify().await {
            Ok(()) => tracing::info!(%api_base, "syncing invoices to Stripe"),
            // Stripe down or slow at start-up must not stop metering: the outbox waits.
            Err(e) if e.is_transient() => {
                tracing::warn!(%api_base, error = %e, "Stripe does not answer yet; the sync will keep trying")
            }
            Err(e) => return Err(e).with_context(|| format!("Stripe at {api_base} cannot be used")),
        }
    }
    let worker = Worker::new(shared.subscriptions(), provider.clone(), shared.webhooks.clone(), config.sync.settings());
    let events = meter_billing_sync::events::run(
        shared.ledger.clone(),
        shared.subscriptions(),
        provider,
        config.sync.poll,
        config.sync.catch_up_every,
        shared.webhooks.single_runner("stripe-events"),
    );
    Ok(Some(tokio::spawn(async move {
        tokio::join!(worker.run(std::future::pending()), events);
    })))
}
