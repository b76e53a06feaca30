//! Stripe's events back (`POST /api/v1/stripe/webhook`): a verified body is kept by its event id
//! (a redelivery changes nothing) and answered at once; [`process_pending`] then works the kept
//! events per object, in the order Stripe made them:
//!
//! - `invoice.payment_failed`: the invoice is read back from Stripe (events come late and out of
//!   order): still unpaid, the tenant's subscription goes past_due (and suspended after the
//!   grace period, as the ledger does); paid since, it is recorded paid;
//! - `invoice.paid` (and `invoice.payment_succeeded`, which older API versions and localstripe
//!   send): the invoice is paid, and a past_due or suspended subscription active again;
//! - `customer.subscription.deleted` of a mirror meter made: meter cancels the subscription;
//! - an invoice's status never moves back: a failure read after the invoice was paid changes
//!   nothing;
//! - `checkout.session.completed` of a session meter made (its metadata names the tenant, plan
//!   and cycle, and its customer is the tenant's): the payment method it collected becomes the
//!   customer's default for invoices, and the subscription is provisioned;
//! - events about objects meter did not make, and every other type, are kept and ignored;
//! - an event whose processing fails for good (Stripe refused a read) keeps why as its outcome;
//!   one that fails for now (Stripe or the ledger unavailable) is processed again, before any
//!   event after it.

use crate::provider::{Ask, Collected, PaymentMethod};
use meter_billing::ledger::outbox::{ReceivedEvent, RemoteInvoice};
use meter_billing::{Ledger, Subscriptions};
use meter_rater::{Command, State};
use serde::Deserialize;

/// Why a verified body is not an event meter can keep.
#[derive(Debug, thiserror::Error)]
#[error("the event is malformed: {0}")]
pub struct Malformed(pub String);

#[derive(Deserialize)]
struct Envelope {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    created: i64,
    data: Data,
}

#[derive(Deserialize)]
struct Data {
    object: Object,
}

/// What an event is about; some objects (a balance) have no id.
#[derive(Deserialize)]
struct Object {
    #[serde(default)]
    id: String,
}

/// Reads a verified webhook body into the event to keep.
pub fn parse(body: &[u8]) -> Result<ReceivedEvent, Malformed> {
    let e: Envelope = serde_json::from_slice(body).map_err(|e| Malformed(e.to_string()))?;
    if !e.id.starts_with("evt_") {
        return Err(Malformed(format!("id: {:?} is not an event id (evt_…)", e.id)));
    }
    let body = String::from_utf8(body.to_vec()).map_err(|_| Malformed("the body is not UTF-8".into()))?;
    Ok(ReceivedEvent { id: e.id, kind: e.kind, created: e.created, object: e.data.object.id, body, outcome: None })
}

/// Keeps `event`; false when it was received before (a redelivery).
pub async fn receive(ledger: &Ledger, event: ReceivedEvent) -> Result<bool, meter_billing::Error> {
    let new = ledger.store().receive_event(event).await?;
    metrics::counter!(crate::metric::EVENTS_RECEIVED, "new" => if new { "true" } else { "false" }).increment(1);
    Ok(new)
}

/// How often the sync role reads Stripe's events for those a webhook missed.
pub const CATCH_UP_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// How far back catching up reads past the newest event kept: events are not always listed in
/// the order they were made.
const CATCH_UP_SLACK_S: i64 = 300;

/// Reads the provider's events since the newest kept (less a slack; the last 30 days when none
/// is kept) and keeps those a webhook missed, oldest first; returns how many were new.
///
/// Oldest first (Stripe lists newest first): the processor, running beside this, then meets
/// them in the order they were made, and a catch-up cut short (the ledger unavailable, the
/// process stopped) leaves no older event behind the newest kept, where the next catch-up,
/// reading from that less a slack, would miss it.
pub async fn catch_up(ledger: &Ledger, provider: &dyn crate::Provider, now_s: i64) -> Result<usize, crate::Error> {
    let latest = ledger.store().latest_event_created().await?;
    let since = latest.map_or(now_s - 30 * 86_400, |t| t - CATCH_UP_SLACK_S);
    let mut new = 0;
    for event in oldest_first(provider.events_since(since).await?) {
        if receive(ledger, event).await? {
            new += 1;
        }
    }
    if new > 0 {
        tracing::info!(new, "caught up on Stripe events a webhook missed");
    }
    Ok(new)
}

/// The events a listing read that meter can keep, oldest first. Stripe lists the newest first,
/// so the listing is reversed (its order within a second, where `created` cannot tell), then
/// sorted by `created` for a provider that lists otherwise.
fn oldest_first(listed: Vec<Option<ReceivedEvent>>) -> Vec<ReceivedEvent> {
    let mut events: Vec<ReceivedEvent> = listed.into_iter().rev().flatten().collect();
    events.sort_by_key(|e| e.created);
    events
}

/// Processes kept events as they come, looking every `poll` when there were none, and reads the
/// events a webhook may have missed from the provider's API, `catch_up_every` (at least `poll`)
/// after the last reading ended. The two run side by side, neither waiting for the other: a
/// provider slow to list its events (answering 429, timing out) does not hold back the events
/// already kept. Runs until dropped.
pub async fn run(
    ledger: Ledger,
    subscriptions: Subscriptions,
    provider: std::sync::Arc<dyn crate::Provider>,
    poll: std::time::Duration,
    catch_up_every: std::time::Duration,
    lease: meter_webhooks::Lease,
) {
    // One processor for every host: Stripe's events are applied in Stripe's order, once.
    let processing = async {
        loop {
            if lease.held().await {
                let now = meter_schemas::period::now_us();
                match process_pending(&ledger, &subscriptions, &*provider, 100, now).await {
                    Ok(n) if n > 0 => continue,
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "processing Stripe's events failed; trying again"),
                }
            }
            tokio::time::sleep(poll).await;
        }
    };
    // Only keeps what it reads (a redelivery changes nothing), so it needs no order with the
    // processing; under the same lease, so that one host reads the provider's events.
    let catching_up = async {
        loop {
            if lease.held().await {
                let now_s = meter_schemas::period::now_us() / 1_000_000;
                if let Err(e) = catch_up(&ledger, &*provider, now_s).await {
                    tracing::warn!(error = %e, "catching up on Stripe's events failed; trying again later");
                }
                tokio::time::sleep(catch_up_every.max(poll)).await;
            } else {
                tokio::time::sleep(poll).await;
            }
        }
    };
    tokio::join!(processing, catching_up);
}

/// Processes up to `limit` kept events; returns how many.
pub async fn process_pending(
    ledger: &Ledger,
    subscriptions: &Subscriptions,
    provider: &dyn crate::Provider,
    limit: usize,
    now_us: i64,
) -> Result<usize, crate::Error> {
    let events = ledger.store().unprocessed_events(limit).await?;
    let n = events.len();
    for event in events {
        let outcome = match process(ledger, subscriptions, provider, &event, now_us).await {
            Ok(outcome) => outcome,
            // Tried again at the next look, before any later event: the provider or the ledger
            // unavailable, or meter's key refused (revoked, rotated): no event is lost to that.
            Err(e) if holds(&e) => return Err(e),
            // The provider refused what it was asked about this one object (it does not know it):
            // no retry changes that, and it must not hold back every event after it.
            Err(e) => format!("failed: {e}"),
        };
        tracing::info!(event = %event.id, kind = %event.kind, object = %event.object, %outcome, "Stripe event processed");
        ledger.store().processed_event(event.id, outcome, now_us).await?;
    }
    Ok(n)
}

/// Whether a failure to process an event is one of meter's side (it holds the queue until it
/// passes), rather than the provider's answer about that event's object.
fn holds(e: &crate::Error) -> bool {
    e.is_transient()
        || matches!(
            e,
            crate::Error::Config(_)
                | crate::Error::NoProvider(_)
                | crate::Error::Protocol { .. }
                | crate::Error::Refused { status: 401 | 403, .. }
        )
}

async fn process(
    ledger: &Ledger,
    subs: &Subscriptions,
    provider: &dyn crate::Provider,
    event: &ReceivedEvent,
    now_us: i64,
) -> Result<String, crate::Error> {
    let settled = RemoteInvoice::is_settled;
    match event.kind.as_str() {
        "invoice.payment_failed" => match ledger.store().remote_invoice(event.object.clone()).await? {
            None => Ok("ignored: not an invoice meter made".into()),
            Some(known) if settled(&known) => Ok(format!("no change: the invoice is already {}", known.status)),
            // Events come out of order and late: the invoice as it stands at the provider now
            // decides (paid since, a failure is no failure).
            Some(known) => match provider.collect(&known.remote, Ask::Check, 0).await? {
                Collected::Paid => Ok(format!("read back paid: {}", paid(ledger, subs, known, now_us, now_us).await?)),
                Collected::Closed(status) => {
                    let status = ledger
                        .store()
                        .record_remote_invoice(RemoteInvoice { status: status.clone(), ..known })
                        .await?
                        .status;
                    Ok(format!("no change: the invoice is {status}"))
                }
                // Another payment started since the one that failed: its outcome decides.
                Collected::Processing => Ok("no change: a payment of the invoice is on its way".into()),
                Collected::Sent | Collected::Declined(_) => apply(
                    ledger,
                    subs,
                    &known.tenant,
                    Command::PaymentFailed { grace_us: None },
                    &[State::Active],
                    now_us,
                )
                .await
                .map_err(Into::into),
            },
        },
        "invoice.paid" | "invoice.payment_succeeded" => {
            match ledger.store().remote_invoice(event.object.clone()).await? {
                None => Ok("ignored: not an invoice meter made".into()),
                Some(known) if settled(&known) => Ok(format!("no change: the invoice is already {}", known.status)),
                Some(known) => paid(ledger, subs, known, event.created * 1_000_000, now_us).await.map_err(Into::into),
            }
        }
        "customer.subscription.deleted" => match ledger.store().remote_customer_by_id(event.object.clone()).await? {
            Some(remote) if remote.subscription.as_deref() == Some(event.object.as_str()) => apply(
                ledger,
                subs,
                &remote.tenant,
                Command::Cancel,
                &[State::Trial, State::Active, State::PastDue, State::Suspended],
                now_us,
            )
            .await
            .map_err(Into::into),
            _ => Ok("ignored: not a subscription meter made".into()),
        },
        "checkout.session.completed" => provision(ledger, subs, provider, event, now_us).await,
        other => Ok(format!("ignored: meter does not act on {other}")),
    }
}

/// A completed Checkout of meter's (its metadata names the tenant, plan and cycle, and its
/// customer is the tenant's): the payment method it collected becomes the customer's default
/// for invoices, and the subscription starts now. Any other session is ignored; a tenant
/// subscribed meanwhile keeps what it has. Should the provider fail to answer, the event is
/// processed again: nothing is started before the payment method is kept.
async fn provision(
    ledger: &Ledger,
    subs: &Subscriptions,
    provider: &dyn crate::Provider,
    event: &ReceivedEvent,
    now_us: i64,
) -> Result<String, crate::Error> {
    #[derive(Deserialize)]
    struct Session {
        customer: Option<String>,
        #[serde(default)]
        setup_intent: Option<String>,
        #[serde(default)]
        metadata: std::collections::BTreeMap<String, String>,
    }
    #[derive(Deserialize)]
    struct Completed {
        data: Data<Session>,
    }
    #[derive(Deserialize)]
    struct Data<T> {
        object: T,
    }
    let Ok(Completed { data: Data { object: session } }) = serde_json::from_str::<Completed>(&event.body) else {
        return Ok("ignored: not a Checkout session".into());
    };
    let field = |k: &str| session.metadata.get(k).cloned();
    let (Some(tenant), Some(plan), Some(cycle)) = (field("meter_tenant"), field("meter_plan"), field("meter_cycle"))
    else {
        return Ok("ignored: not a Checkout session meter made".into());
    };
    let ours = ledger.remote_customer(&tenant).await?.is_some_and(|r| Some(&r.customer) == session.customer.as_ref());
    if !ours {
        return Ok(format!("ignored: its customer is not {tenant}'s"));
    }
    let Ok(cycle) = serde_json::from_value::<meter_rater::Cycle>(serde_json::Value::String(cycle.clone())) else {
        return Ok(format!("ignored: meter_cycle {cycle:?} is not a cycle"));
    };
    let customer = session.customer.as_deref().unwrap_or_default();
    // The customer finished Checkout: a card the provider will not make the default (its setup
    // unknown there) still starts the subscription, and says so; only a failure of meter's side
    // holds it, to be processed again.
    let method = match session.setup_intent.as_deref() {
        Some(setup) => match provider.keep_payment_method(customer, setup).await {
            Ok(PaymentMethod::Default(pm)) => format!("payment method {pm} is the default for invoices"),
            Ok(PaymentMethod::NotKept(why)) => format!("no payment method kept: {why}"),
            Err(e) if holds(&e) => return Err(e),
            Err(e) => format!("no payment method kept: {e}"),
        },
        None => "no payment method kept: the session collected none".into(),
    };
    match subs.create(&tenant, crate::signup::setup_of(&plan, cycle), now_us, "stripe", now_us).await {
        Ok(sub) => Ok(format!("provisioned: subscription {} of {tenant} on {plan}, {cycle}; {method}", sub.id)),
        Err(e @ (meter_billing::Error::Conflict(_) | meter_billing::Error::Refused(_))) => {
            Ok(format!("no change: {e}; {method}"))
        }
        Err(e) => Err(e.into()),
    }
}

/// Records `known` paid at `paid_us` and makes its tenant's past_due or suspended subscription
/// active again.
pub(crate) async fn paid(
    ledger: &Ledger,
    subs: &Subscriptions,
    known: RemoteInvoice,
    paid_us: i64,
    now_us: i64,
) -> Result<String, meter_billing::Error> {
    let tenant = known.tenant.clone();
    ledger
        .store()
        .record_remote_invoice(RemoteInvoice { status: "paid".into(), paid_us: Some(paid_us), ..known })
        .await?;
    apply(ledger, subs, &tenant, Command::Reactivate, &[State::PastDue, State::Suspended], now_us).await
}

/// Applies `command` to `tenant`'s live subscription when it is in one of `from`.
pub(crate) async fn apply(
    ledger: &Ledger,
    subs: &Subscriptions,
    tenant: &str,
    command: Command,
    from: &[State],
    now_us: i64,
) -> Result<String, meter_billing::Error> {
    let name = command.name();
    let live = ledger.list(Some(tenant)).await?.into_iter().rev().find(|s| {
        let mut s = s.clone();
        s.advance(now_us);
        s.state() != State::Expired
    });
    let Some(sub) = live else { return Ok(format!("no change: {tenant} has no live subscription")) };
    let mut current = sub.clone();
    current.advance(now_us);
    if !from.contains(&current.state()) {
        return Ok(format!("no change: subscription {} is {}", sub.id, current.state()));
    }
    let changed = subs.apply(&sub.id, command, now_us, "stripe", now_us).await?;
    Ok(format!("{name}: subscription {} is now {}", changed.id, changed.state()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(id: &str, created: i64) -> Option<ReceivedEvent> {
        Some(ReceivedEvent {
            id: id.into(),
            kind: "invoice.paid".into(),
            created,
            object: "in_1".into(),
            body: "{}".into(),
            outcome: None,
        })
    }

    /// Stripe's listing, newest first (two made in one second, one meter cannot keep), is kept
    /// oldest first; a listing oldest first too.
    #[test]
    fn a_listing_is_kept_oldest_first() {
        let ids = |events: Vec<ReceivedEvent>| events.into_iter().map(|e| e.id).collect::<Vec<_>>();
        let newest_first =
            vec![listed("evt_4", 30), listed("evt_3", 20), None, listed("evt_2", 20), listed("evt_1", 10)];
        assert_eq!(ids(oldest_first(newest_first)), ["evt_1", "evt_2", "evt_3", "evt_4"]);
        let oldest = vec![listed("evt_1", 10), listed("evt_2", 20), listed("evt_4", 30)];
        assert_eq!(ids(oldest_first(oldest)), ["evt_1", "evt_2", "evt_4"]);
    }
}
