//! The sync role: the outbox's worker, pushing closed invoices to the payment provider (Stripe
//! when `[stripe] api_key` is set; otherwise none, and every push says it was not synced).

use super::shared::Shared;
use crate::config::Config;
use anyhow::Context as _;
use meter_billing_sync::Provider;
use meter_billing_sync::worker::Worker;
use std::sync::Arc;
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
    let worker = Worker::new(shared.ledger.clone(), provider.clone(), config.sync.settings());
    let events = process_events(shared, provider, config.sync.poll, config.sync.catch_up_every);
    Ok(Some(tokio::spawn(async move {
        tokio::join!(worker.run(std::future::pending()), events);
    })))
}

/// Processes Stripe's kept events as they come, and every `catch_up_every` reads the events a
/// webhook may have missed from Stripe's API.
fn process_events(
    shared: &Shared,
    provider: Arc<dyn Provider>,
    poll: std::time::Duration,
    catch_up_every: std::time::Duration,
) -> impl std::future::Future<Output = ()> + use<> {
    let ledger = shared.ledger.clone();
    let subscriptions = meter_billing::Subscriptions {
        ledger: shared.ledger.clone(),
        allowances: shared.allowances.clone(),
        book: shared.book.clone(),
        live: shared.live.clone(),
    };
    async move {
        let mut caught_up = std::time::Instant::now() - catch_up_every;
        loop {
            let now = meter_schemas::period::now_us();
            if caught_up.elapsed() >= catch_up_every {
                caught_up = std::time::Instant::now();
                if let Err(e) = meter_billing_sync::events::catch_up(&ledger, &*provider, now / 1_000_000).await {
                    tracing::warn!(error = %e, "catching up on Stripe's events failed; trying again later");
                }
            }
            match meter_billing_sync::events::process_pending(&ledger, &subscriptions, 100, now).await {
                Ok(n) if n > 0 => continue,
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "processing Stripe's events failed; trying again"),
            }
            tokio::time::sleep(poll).await;
        }
    }
}
