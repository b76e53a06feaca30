//! The sync outbox: what the payment provider must be told, written in the same transaction as
//! what it follows (a close writes one operation per invoice it drafted), worked by the sync
//! stage (`meter sync`) until each operation is done or dead. Kept behind the ledger's port.

use serde::{Deserialize, Serialize};

/// What an operation does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    /// Push a closed invoice (its body is the invoice).
    PushInvoice,
    /// One step of collecting a pushed invoice: charge it, send it, check it at its due date,
    /// or retry after a failed payment (dunning). Its subject is `{invoice}/{step}`.
    Collect,
    /// Make the provider's mirror of a subscription show the subscription's state now. Its
    /// subject is `{subscription}#{entries}`, one per change.
    MirrorSubscription,
    /// When a change that time alone brings is due (a trial converting, a grace period running
    /// out, an expiry; nothing is written to the ledger then): if it came, write the
    /// [`OpKind::MirrorSubscription`] that mirrors it, in the tenant's mirror lane. Its subject
    /// is `{subscription}@{when}`.
    MirrorWhenDue,
    /// At the end of a failed payment's grace period: tell the tenant its subscription is
    /// suspended, unless it was paid meanwhile. Its subject is `{invoice}@{when}`.
    CheckSuspension,
}

impl OpKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            OpKind::PushInvoice => "push_invoice",
            OpKind::Collect => "collect",
            OpKind::CheckSuspension => "check_suspension",
            OpKind::MirrorSubscription => "mirror_subscription",
            OpKind::MirrorWhenDue => "mirror_when_due",
        }
    }

    /// The kind stored as `s`.
    pub fn parse(s: &str) -> Option<Self> {
        [
            OpKind::PushInvoice,
            OpKind::Collect,
            OpKind::CheckSuspension,
            OpKind::MirrorSubscription,
            OpKind::MirrorWhenDue,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }

    /// The lane of an operation of this kind about `subject`: a tenant's operations in one lane
    /// are worked one at a time, in the order they were written. Pushes share one lane per
    /// tenant (what one leaves at the provider, such as pending items, would go into the next);
    /// collecting an invoice is a lane of its own, so that a retry due in a week holds back
    /// neither the next push nor another invoice's collection.
    pub fn lane(self, subject: &str) -> String {
        match self {
            OpKind::PushInvoice => "push".into(),
            OpKind::Collect => format!("collect:{}", subject.split_once('/').map_or(subject, |(invoice, _)| invoice)),
            OpKind::CheckSuspension => format!("suspension:{subject}"),
            OpKind::MirrorSubscription => "mirror".into(),
            // Due later: a lane of its own, holding back no mirror written meanwhile.
            OpKind::MirrorWhenDue => format!("mirror:{subject}"),
        }
    }
}

/// The operations that keep the provider's mirror of `sub` true, written with each change (the
/// store calls it in the transaction that writes `sub`): one that mirrors the change now (none
/// for a change the mirror does not show, a step of dunning), and one for the next change time
/// alone will bring ([`mirror_when_due`]).
pub fn mirror_of(sub: &meter_rater::Subscription, now_us: i64) -> Vec<NewOperation> {
    let Some(last) = sub.entries.last() else { return Vec::new() };
    let now = (!matches!(last.change, meter_rater::subscription::Change::Dunning(_)))
        .then(|| mirror_now(&sub.id, &sub.tenant, &format!("#{}", sub.entries.len()), now_us));
    now.into_iter().chain(mirror_when_due(sub)).collect()
}

/// The operation that mirrors subscription `id` of `tenant` as it stands, due at `now_us`, in
/// the tenant's mirror lane; `occasion` (appended to the id) makes its subject: one per occasion.
pub fn mirror_now(id: &str, tenant: &str, occasion: &str, now_us: i64) -> NewOperation {
    NewOperation {
        kind: OpKind::MirrorSubscription,
        subject: format!("{id}{occasion}"),
        tenant: tenant.to_string(),
        period: None,
        body: serde_json::json!({ "subscription": id }).to_string(),
        next_us: now_us,
    }
}

/// The operation that mirrors the next change time alone brings to `sub`
/// ([`meter_rater::Subscription::next_state_change`]), due then; none when its state lasts until
/// a command changes it. Written again it changes nothing (one per subscription and instant).
pub fn mirror_when_due(sub: &meter_rater::Subscription) -> Option<NewOperation> {
    sub.next_state_change().map(|at_us| mirror_at(sub, at_us))
}

/// The operation that mirrors the change time brought to `sub` at `at_us`, due then.
pub fn mirror_at(sub: &meter_rater::Subscription, at_us: i64) -> NewOperation {
    NewOperation {
        kind: OpKind::MirrorWhenDue,
        subject: format!("{}@{at_us}", sub.id),
        tenant: sub.tenant.clone(),
        period: None,
        body: serde_json::json!({ "subscription": sub.id, "at_us": at_us }).to_string(),
        next_us: at_us,
    }
}

/// An operation to write to the outbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewOperation {
    /// What it does.
    pub kind: OpKind,
    /// What it is about; one operation per kind and subject is ever written (writing it again
    /// changes nothing).
    pub subject: String,
    /// The tenant.
    pub tenant: String,
    /// The period it follows from, if any.
    pub period: Option<String>,
    /// What it needs, as JSON; '' for a close's push whose invoice row (of its id) holds the
    /// invoice, which the ledger reads there.
    pub body: String,
    /// When it is due (µs).
    pub next_us: i64,
}

/// Where an operation stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OpState {
    /// To be tried (again) from `next_us`.
    Pending,
    /// Done; `outcome` says what came of it.
    Done,
    /// Failed in a way trying again cannot change; `outcome` says why. An admin may retry it.
    Dead,
}

impl OpState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            OpState::Pending => "pending",
            OpState::Done => "done",
            OpState::Dead => "dead",
        }
    }

    /// The state stored as `s`.
    pub fn parse(s: &str) -> Option<Self> {
        [OpState::Pending, OpState::Done, OpState::Dead].into_iter().find(|k| k.as_str() == s)
    }
}

/// One operation of the outbox.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Operation {
    /// Its number, in the order operations were written.
    pub id: i64,
    /// What it does.
    pub kind: OpKind,
    /// What it is about (the meter invoice's id).
    pub subject: String,
    /// The tenant: a tenant's operations are worked one at a time, in order.
    pub tenant: String,
    /// The period it follows from, if any.
    pub period: Option<String>,
    /// What it needs, as JSON (the invoice).
    pub body: String,
    /// When it was written (µs).
    pub created_us: i64,
    /// When it was first tried (µs): past the provider's idempotency window, what it made must
    /// be looked up before it is sent again.
    pub first_tried_us: Option<i64>,
    /// Tries so far.
    pub attempts: u32,
    /// When it is due (µs).
    pub next_us: i64,
    /// Where it stands.
    pub state: OpState,
    /// What came of it (JSON), or why it failed.
    pub outcome: Option<String>,
}

/// What a try of an operation came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Settle {
    /// Done, with what came of it (JSON), writing the operations that follow from it in the
    /// same transaction (the next step of collecting an invoice).
    Done {
        /// What came of it (JSON).
        outcome: String,
        /// What follows.
        then: Vec<NewOperation>,
    },
    /// Failed for now; try again from `next_us`.
    Again {
        /// When to try again (µs).
        next_us: i64,
        /// Why it failed.
        error: String,
    },
    /// Failed for good; on the dead list with its reason.
    Dead(String),
}

impl Settle {
    /// Done, with what came of it, and nothing following.
    pub fn done(outcome: String) -> Self {
        Settle::Done { outcome, then: Vec::new() }
    }
}

/// What the payment provider calls a tenant: its customer, and the subscription that mirrors
/// meter's there. Recorded once made, so that they are never made twice.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RemoteCustomer {
    /// The tenant.
    pub tenant: String,
    /// The provider's customer id.
    pub customer: String,
    /// The provider's subscription mirroring meter's, once made.
    pub subscription: Option<String>,
}

/// An invoice the provider holds for meter: its id there, meter's invoice, the tenant, and its
/// status there, which only moves forward (draft, open, then paid, uncollectible or void).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RemoteInvoice {
    /// The provider's invoice id.
    pub remote: String,
    /// meter's invoice id.
    pub invoice: String,
    /// The tenant.
    pub tenant: String,
    /// Its status at the provider.
    pub status: String,
    /// When it was sent (finalized) to the customer, µs.
    pub sent_us: Option<i64>,
    /// When it is due (invoices sent for payment by transfer), µs.
    pub due_us: Option<i64>,
    /// When it was paid, µs.
    pub paid_us: Option<i64>,
    /// The provider's page of the invoice for the customer (Stripe's hosted invoice), once sent.
    #[serde(default)]
    pub hosted_url: Option<String>,
    /// The provider's PDF of it, once sent.
    #[serde(default)]
    pub pdf_url: Option<String>,
}

impl RemoteInvoice {
    /// How far along a status at the provider is: draft 0, open 1, then paid, uncollectible or
    /// void 2 (settled). A recorded status never moves back.
    pub fn rank(status: &str) -> u8 {
        match status {
            "open" => 1,
            "paid" | "uncollectible" | "void" => 2,
            _ => 0,
        }
    }

    /// Whether it is past collecting (paid, uncollectible or void).
    pub fn is_settled(&self) -> bool {
        Self::rank(&self.status) == 2
    }
}

/// An event the provider sent (a webhook), kept by its id: a redelivery changes nothing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReceivedEvent {
    /// The provider's event id.
    pub id: String,
    /// Its type (`invoice.payment_failed`, …).
    pub kind: String,
    /// When the provider made it (unix seconds): a provider's events are processed per object
    /// in this order.
    pub created: i64,
    /// The id of the object it is about.
    pub object: String,
    /// The whole event, as received.
    pub body: String,
    /// What processing it came to, once processed.
    pub outcome: Option<String>,
}
