//! The outbox worker (`meter sync`, and inside `meter serve`): claims the ledger's due
//! operations (a tenant's lane one at a time, in order; lanes and tenants side by side),
//! performs each through the provider, and settles it: done with what came of it and what
//! follows it (a pushed invoice's collection, dunning's next step), again later after a
//! transient failure (exponential backoff with jitter), or dead with its reason.

use crate::collect::{CheckSuspension, Collect, Collector};
use crate::provider::{Collection, Earlier, Provider, Pushed};
use backon::{BackoffBuilder, ExponentialBuilder};
use futures_util::StreamExt;
use meter_billing::Subscriptions;
use meter_billing::ledger::outbox::{NewOperation, OpKind, Operation, Settle, mirror_now};
use meter_webhooks::Webhooks;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// The body of an [`OpKind::MirrorSubscription`] or [`OpKind::MirrorWhenDue`] operation.
#[derive(serde::Deserialize)]
struct MirrorOp {
    subscription: String,
    /// For a change that comes with time: when it is due.
    #[serde(default)]
    at_us: Option<i64>,
}

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
    /// After a failed payment, when each retry comes, counted from the first failure.
    pub retries: Vec<Duration>,
    /// While a payment is on its way (a debit), how often its invoice is looked at again.
    pub settling_check: Duration,
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
            retries: crate::collect::DEFAULT_RETRIES.to_vec(),
            settling_check: crate::collect::DEFAULT_SETTLING_CHECK,
        }
    }
}

/// The outbox worker.
pub struct Worker {
    subs: Subscriptions,
    provider: Arc<dyn Provider>,
    notices: Arc<Webhooks>,
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
    /// A worker of the outbox of `subs`' ledger through `provider`, changing subscriptions
    /// through `subs` as payments fail and succeed and telling tenants through `notices`.
    pub fn new(subs: Subscriptions, provider: Arc<dyn Provider>, notices: Arc<Webhooks>, settings: Settings) -> Self {
        Worker { subs, provider, notices, settings }
    }

    /// Works what is due at `now_us` once; returns how many operations it settled.
    pub async fn work_due(&self, now_us: i64) -> Result<usize, meter_billing::Error> {
        let lease = self.settings.lease.as_micros() as i64;
        let ops = self.subs.ledger.claim_operations(now_us, lease, self.settings.batch).await?;
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
            self.record(id, settle).await?;
        }
        Ok(n)
    }

    /// Records what operation `id` came to.
    async fn record(&self, id: i64, settle: Settle) -> Result<(), meter_billing::Error> {
        let label = match &settle {
            Settle::Done { .. } => "done",
            Settle::Again { .. } => "again",
            Settle::Dead(_) => "dead",
        };
        metrics::counter!(crate::metric::OPERATIONS, "outcome" => label).increment(1);
        match self.subs.ledger.settle(id, settle).await {
            Ok(()) => Ok(()),
            // Its lease ran out and another worker settled it first: theirs stands.
            Err(meter_billing::Error::NoOperation(what)) => {
                tracing::warn!(op = id, %what, "operation settled by another worker meanwhile");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// The tenant's customer (made and recorded once), then the invoice.
    async fn push(
        &self,
        invoice: &meter_rater::Invoice,
        earlier: Earlier,
        now_us: i64,
    ) -> Result<(Pushed, Option<Collect>), crate::Error> {
        self.provider.check(invoice)?;
        let ledger = &self.subs.ledger;
        let known = ledger.remote_customer(&invoice.tenant).await?;
        let remote = match known {
            Some(r) => r,
            None => match self.provider.ensure_customer(&invoice.tenant, invoice.currency).await? {
                Some(r) => {
                    ledger.record_remote_customer(r.clone()).await?;
                    r
                }
                None => return Ok((Pushed::NotSynced, None)),
            },
        };
        let collection = self.settings.terms.of(&invoice.tenant, invoice.plan.as_deref());
        let pushed = self.provider.push_invoice(invoice, &remote.customer, collection, earlier).await?;
        let Pushed::Synced(s) = &pushed else { return Ok((pushed, None)) };
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
            hosted_url: s.hosted_url.clone(),
            pdf_url: s.pdf_url.clone(),
        };
        ledger.store().record_remote_invoice(known).await?;
        let collect = Collect::first(invoice, &s.invoice, collection, due_us);
        Ok((pushed, Some(collect)))
    }

    fn collector(&self) -> Collector<'_> {
        Collector {
            subs: &self.subs,
            provider: &*self.provider,
            notices: &self.notices,
            retries: &self.settings.retries,
            settling_check: self.settings.settling_check,
        }
    }

    async fn perform(&self, op: &Operation, now_us: i64) -> Settle {
        let result = match op.kind {
            OpKind::PushInvoice => match serde_json::from_str::<meter_rater::Invoice>(&op.body) {
                Ok(invoice) => {
                    let earlier = match op.first_tried_us {
                        Some(t) if now_us - t > crate::provider::IDEMPOTENCY_WINDOW_US => Earlier::BeforeWindow,
                        _ => Earlier::WithinWindow,
                    };
                    self.push(&invoice, earlier, now_us)
                        .await
                        .map(|(pushed, collect)| self.pushed(op, pushed, collect, now_us))
                }
                Err(e) => return Settle::Dead(format!("the stored invoice does not parse: {e}")),
            },
            OpKind::Collect => match serde_json::from_str::<Collect>(&op.body) {
                Ok(c) => self.collector().step(&c, op.first_tried_us.unwrap_or(now_us), now_us).await,
                Err(e) => return Settle::Dead(format!("the stored collection step does not parse: {e}")),
            },
            OpKind::MirrorSubscription | OpKind::MirrorWhenDue => match serde_json::from_str::<MirrorOp>(&op.body) {
                Ok(m) => self.mirror(&m, &op.subject, now_us).await,
                Err(e) => return Settle::Dead(format!("the stored mirror operation does not parse: {e}")),
            },
            OpKind::CheckSuspension => match serde_json::from_str::<CheckSuspension>(&op.body) {
                Ok(c) => self.collector().check_suspension(&c, now_us).await,
                Err(e) => return Settle::Dead(format!("the stored suspension check does not parse: {e}")),
            },
        };
        match result {
            Ok(settle) => settle,
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
                tracing::warn!(op = op.id, kind = op.kind.as_str(), subject = %op.subject, error = %e, ?pause, "sync failed; trying again later");
                Settle::Again { next_us: now_us + pause.as_micros() as i64, error: e.to_string() }
            }
            Err(e) => {
                tracing::error!(op = op.id, kind = op.kind.as_str(), subject = %op.subject, error = %e, "sync failed for good; on the dead list");
                Settle::Dead(e.to_string())
            }
        }
    }

    /// Makes the provider's mirror of the subscription show its state at `now_us`; `occasion`
    /// names the change. Before the tenant's first push there is no mirror yet: that push
    /// mirrors the state it finds. A change that was to come with time (`at_us`) but did not,
    /// because a command changed the subscription first, is not mirrored (that command's own
    /// operation was). Each mirroring also writes the one for the next change time will bring.
    async fn mirror(&self, m: &MirrorOp, occasion: &str, now_us: i64) -> Result<Settle, crate::Error> {
        let outcome = |result: &str, detail: String, then: Vec<NewOperation>| Settle::Done {
            outcome: json(&serde_json::json!({ "result": result, "detail": detail })),
            then,
        };
        let mut sub = match self.subs.ledger.get(&m.subscription).await {
            Ok(sub) => sub,
            Err(meter_billing::Error::NotFound(_)) => {
                return Ok(outcome("nothing_to_mirror", "no such subscription".into(), vec![]));
            }
            Err(e) => return Err(e.into()),
        };
        sub.advance(now_us);
        let mut then: Vec<NewOperation> = meter_billing::ledger::outbox::mirror_when_due(&sub).into_iter().collect();
        if let Some(at_us) = m.at_us {
            // A renewal at that instant keeps the state: it is not the change that was due.
            let came = sub.entries.windows(2).any(|w| {
                w[1].at_us == at_us && w[1].by == meter_rater::subscription::SCHEDULE && w[1].state != w[0].state
            });
            if !came {
                let why = format!("no change came with time at {at_us} µs: the subscription was changed before");
                return Ok(outcome("not_due", why, then));
            }
            // The change came: mirrored in the tenant's mirror lane, in order with the mirrors of
            // written changes (two updates of one mirror in flight at once could land in either
            // order).
            then.push(mirror_now(&sub.id, &sub.tenant, &format!("@{at_us}"), now_us));
            return Ok(outcome("came", format!("{} is {} since {at_us} µs", sub.id, sub.state()), then));
        }
        let remote = self.subs.ledger.remote_customer(&sub.tenant).await?;
        let Some(mirror) = remote.and_then(|r| r.subscription) else {
            return Ok(outcome("no_mirror_yet", "the tenant's first push makes the mirror".into(), then));
        };
        let state = crate::provider::MirrorState {
            state: sub.state(),
            cancel_at_period_end: sub.state() == meter_rater::State::Cancelled,
            trial_end: sub.trial_ends_us().filter(|_| sub.state() == meter_rater::State::Trial).map(|t| t / 1_000_000),
        };
        let done = self.provider.mirror(&mirror, &state, occasion).await?;
        Ok(outcome(&format!("{done:?}").to_lowercase(), format!("{mirror} shows {}", state.state), then))
    }

    /// A push's settlement: done, with its collection's first step when it synced.
    fn pushed(&self, op: &Operation, pushed: Pushed, collect: Option<Collect>, now_us: i64) -> Settle {
        let provider = self.provider.name();
        match pushed {
            Pushed::Synced(s) => {
                tracing::info!(op = op.id, invoice = %op.subject, remote = %s.invoice, "invoice synced");
                let mut then: Vec<NewOperation> = Vec::new();
                if let Some(c) = collect {
                    // The mirror, made by the tenant's first push as active, shows the
                    // subscription's state as it is now (once per subscription).
                    if let Some(sub) = &c.subscription {
                        then.push(mirror_now(sub, &c.tenant, "#push", now_us));
                    }
                    then.push(c.operation(now_us));
                }
                Settle::Done { outcome: json(&Outcome { provider, synced: true, invoice: Some(s) }), then }
            }
            Pushed::NotSynced => Settle::done(json(&Outcome { provider, synced: false, invoice: None })),
        }
    }

    /// Works the outbox until `shutdown` resolves.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let lease = self.settings.lease.as_micros() as i64;
        let batch = self.settings.batch.max(1);
        // Up to `batch` operations in flight; each slot that frees is filled at once, and free
        // slots are looked at every `poll` as well, so that a slow one (a timeout, a
        // Retry-After) holds back only itself. The claims of those in flight are renewed every
        // third of the lease, so that a long one is not taken over by another worker while it
        // runs; claiming again one still in flight (its renewal failed and its lease ran out)
        // holds it again and does not start it twice.
        let this = &self;
        let mut in_flight = futures_util::stream::FuturesUnordered::new();
        // In flight: each operation's id and the end of the claim held on it.
        let mut running = std::collections::HashMap::new();
        let mut renew = tokio::time::interval((self.settings.lease / 3).max(Duration::from_millis(1)));
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let room = batch - in_flight.len();
            let now = meter_schemas::period::now_us();
            let claimed = match room {
                0 => Vec::new(),
                _ => this.subs.ledger.claim_operations(now, lease, room).await.unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "the sync outbox could not be read; trying again");
                    Vec::new()
                }),
            };
            for op in claimed.into_iter().filter(|op| running.insert(op.id, now + lease).is_none()) {
                in_flight.push(async move {
                    let settle = this.perform(&op, now).await;
                    (op.id, settle)
                });
            }
            tokio::select! {
                () = &mut shutdown => return,
                Some((id, settle)) = in_flight.next(), if !in_flight.is_empty() => {
                    running.remove(&id);
                    if let Err(e) = this.record(id, settle).await {
                        // Not recorded: its lease runs out and it is worked again, with its keys.
                        tracing::warn!(op = id, error = %e, "an outcome could not be recorded; the operation will be tried again");
                    }
                }
                () = tokio::time::sleep(self.settings.poll), if in_flight.len() < batch => {}
                _ = renew.tick(), if !running.is_empty() => {
                    let now = meter_schemas::period::now_us();
                    let claims: Vec<(i64, i64)> = running.iter().map(|(id, until)| (*id, *until)).collect();
                    match this.subs.ledger.renew_claims(claims, now + lease).await {
                        Ok(renewed) => {
                            for id in renewed {
                                running.insert(id, now + lease);
                            }
                            for (id, until) in running.iter().filter(|(_, until)| **until <= now) {
                                tracing::warn!(op = id, until, "the claim on an operation in flight ran out");
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "renewing the claims in flight failed; trying again"),
                    }
                }
            }
        }
    }
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("outcomes serialize")
}
