//! The outbox worker (`meter sync`, and inside `meter serve`): claims the ledger's due
//! operations (a tenant's one at a time, in order; tenants side by side), performs each through
//! the provider, and settles it: done with what came of it, again later after a transient
//! failure (exponential backoff with jitter), or dead with its reason.

use crate::provider::{Collection, Earlier, Provider, Pushed};
use backon::{BackoffBuilder, ExponentialBuilder};
use futures_util::StreamExt;
use meter_billing::Ledger;
use meter_billing::ledger::outbox::{OpKind, Operation, Settle};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// How the worker works.
#[derive(Clone, Debug)]
pub struct Settings {
    /// How often it looks for due operations when there were none.
    pub poll: Duration,
    /// How long a claimed operation is its alone (another worker takes it after that).
    pub lease: Duration,
    /// Operations claimed at once (of as many tenants), worked side by side.
    pub batch: usize,
    /// The first pause after a transient failure; it doubles, with jitter, up to `max_backoff`.
    pub min_backoff: Duration,
    /// The longest pause.
    pub max_backoff: Duration,
    /// Who is collected how.
    pub terms: crate::provider::Terms,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            poll: Duration::from_secs(1),
            lease: Duration::from_secs(300),
            batch: 16,
            min_backoff: Duration::from_secs(5),
            max_backoff: Duration::from_secs(3600),
            terms: Default::default(),
        }
    }
}

/// The outbox worker.
pub struct Worker {
    ledger: Ledger,
    provider: Arc<dyn Provider>,
    settings: Settings,
}

/// What a settled operation came to, as its outcome records it.
#[derive(Debug, serde::Serialize)]
struct Outcome<'a> {
    provider: &'a str,
    synced: bool,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    invoice: Option<crate::provider::Synced>,
}

impl Worker {
    /// A worker of `ledger`'s outbox through `provider`.
    pub fn new(ledger: Ledger, provider: Arc<dyn Provider>, settings: Settings) -> Self {
        Worker { ledger, provider, settings }
    }

    /// Works what is due at `now_us` once; returns how many operations it settled.
    pub async fn work_due(&self, now_us: i64) -> Result<usize, meter_billing::Error> {
        let lease = self.settings.lease.as_micros() as i64;
        let ops = self.ledger.claim_operations(now_us, lease, self.settings.batch).await?;
        let n = ops.len();
        let settled = futures_util::stream::iter(ops)
            .map(|op| async move {
                let settle = self.perform(&op, now_us).await;
                (op.id, settle)
            })
            .buffer_unordered(self.settings.batch.max(1))
            .collect::<Vec<_>>()
            .await;
        for (id, settle) in settled {
            let label = match &settle {
                Settle::Done(_) => "done",
                Settle::Again { .. } => "again",
                Settle::Dead(_) => "dead",
            };
            metrics::counter!(crate::metric::OPERATIONS, "outcome" => label).increment(1);
            match self.ledger.settle(id, settle).await {
                Ok(()) => {}
                // Its lease ran out and another worker settled it first: theirs stands.
                Err(meter_billing::Error::NoOperation(what)) => {
                    tracing::warn!(op = id, %what, "operation settled by another worker meanwhile")
                }
                Err(e) => return Err(e),
            }
        }
        Ok(n)
    }

    /// The tenant's customer (made and recorded once), then the invoice.
    async fn push(
        &self,
        invoice: &meter_rater::Invoice,
        earlier: Earlier,
        now_us: i64,
    ) -> Result<Pushed, crate::Error> {
        self.provider.check(invoice)?;
        let known = self.ledger.remote_customer(&invoice.tenant).await?;
        let remote = match known {
            Some(r) => r,
            None => match self.provider.ensure_customer(&invoice.tenant, invoice.currency).await? {
                Some(r) => {
                    self.ledger.record_remote_customer(r.clone()).await?;
                    r
                }
                None => return Ok(Pushed::NotSynced),
            },
        };
        let collection = self.settings.terms.of(&invoice.tenant, invoice.plan.as_deref());
        let pushed = self.provider.push_invoice(invoice, &remote.customer, collection, earlier).await?;
        if let Pushed::Synced(s) = &pushed {
            let due_us = match collection {
                Collection::SendInvoice { days_until_due } => Some(now_us + i64::from(days_until_due) * 86_400_000_000),
                Collection::ChargeAutomatically => None,
            };
            let known = meter_billing::ledger::outbox::RemoteInvoice {
                remote: s.invoice.clone(),
                invoice: invoice.id.clone(),
                tenant: invoice.tenant.clone(),
                status: s.status.clone(),
                sent_us: Some(now_us),
                due_us,
                paid_us: None,
            };
            self.ledger.store().record_remote_invoice(known).await?;
        }
        Ok(pushed)
    }

    async fn perform(&self, op: &Operation, now_us: i64) -> Settle {
        let result = match op.kind {
            OpKind::PushInvoice => match serde_json::from_str::<meter_rater::Invoice>(&op.body) {
                Ok(invoice) => {
                    let earlier = match op.first_tried_us {
                        Some(t) if now_us - t > crate::provider::IDEMPOTENCY_WINDOW_US => Earlier::BeforeWindow,
                        _ => Earlier::WithinWindow,
                    };
                    self.push(&invoice, earlier, now_us).await
                }
                Err(e) => return Settle::Dead(format!("the stored invoice does not parse: {e}")),
            },
        };
        let provider = self.provider.name();
        match result {
            Ok(Pushed::Synced(s)) => {
                tracing::info!(op = op.id, invoice = %op.subject, remote = %s.invoice, "invoice synced");
                Settle::Done(json(&Outcome { provider, synced: true, invoice: Some(s) }))
            }
            Ok(Pushed::NotSynced) => Settle::Done(json(&Outcome { provider, synced: false, invoice: None })),
            Err(e) if e.is_transient() => {
                let pause = ExponentialBuilder::default()
                    .with_min_delay(self.settings.min_backoff)
                    .with_max_delay(self.settings.max_backoff)
                    .with_jitter()
                    .without_max_times()
                    .build()
                    .nth(op.attempts as usize)
                    .unwrap_or(self.settings.max_backoff)
                    .min(self.settings.max_backoff);
                tracing::warn!(op = op.id, invoice = %op.subject, error = %e, ?pause, "sync failed; trying again later");
                Settle::Again { next_us: now_us + pause.as_micros() as i64, error: e.to_string() }
            }
            Err(e) => {
                tracing::error!(op = op.id, invoice = %op.subject, error = %e, "sync failed for good; on the dead list");
                Settle::Dead(e.to_string())
            }
        }
    }

    /// Works the outbox until `shutdown` resolves.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            let now = meter_schemas::period::now_us();
            let pause = match self.work_due(now).await {
                Ok(0) => self.settings.poll,
                Ok(_) => Duration::ZERO,
                Err(e) => {
                    tracing::warn!(error = %e, "the sync outbox could not be read; trying again");
                    self.settings.poll
                }
            };
            tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep(pause) => {}
            }
        }
    }
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("outcomes serialize")
}
