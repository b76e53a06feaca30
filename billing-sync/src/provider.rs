//! The provider port: what billing needs from a payment provider. meter owns prices, rating and
//! subscription state; the provider collects.

use crate::Error;
use async_trait::async_trait;
use meter_billing::ledger::outbox::{ReceivedEvent, RemoteCustomer};
use meter_rater::{Currency, Invoice};
use std::collections::BTreeMap;

/// How an invoice is collected (`{ method = "send_invoice", days_until_due = 30 }` in the
/// configuration).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "method", rename_all = "snake_case", deny_unknown_fields)]
pub enum Collection {
    /// The provider charges the customer's payment method (cards, the smaller tiers).
    ChargeAutomatically,
    /// The provider sends the invoice; the customer pays by transfer within the days given
    /// (net-30/60 terms).
    SendInvoice {
        /// Days until it is due.
        days_until_due: u32,
    },
}

/// What meter knows of earlier tries of a push.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Earlier {
    /// None, or all within the provider's idempotency window: replaying the same requests with
    /// the same keys gets their first replies.
    WithinWindow,
    /// One before the window: the provider forgot its keys, so what it made is looked up
    /// before anything is sent again.
    BeforeWindow,
}

/// How long Stripe keeps an idempotency key (24 h), less a margin for clocks.
pub const IDEMPOTENCY_WINDOW_US: i64 = 23 * 3_600_000_000;

/// Who is collected how: per plan, overridden per tenant (net-30 transfers for the largest
/// tiers, cards for the others); by default the provider charges the payment method.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Terms {
    /// By plan code.
    pub plans: BTreeMap<String, Collection>,
    /// By tenant, over its plan's.
    pub tenants: BTreeMap<String, Collection>,
}

impl Terms {
    /// How `tenant`'s invoice on `plan` is collected.
    pub fn of(&self, tenant: &str, plan: Option<&str>) -> Collection {
        self.tenants
            .get(tenant)
            .or_else(|| plan.and_then(|p| self.plans.get(p)))
            .copied()
            .unwrap_or(Collection::ChargeAutomatically)
    }
}

/// An invoice as the provider holds it, with the meter lines it carries.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Held {
    /// The provider's invoice id.
    pub id: String,
    /// draft, open, paid, uncollectible or void.
    pub status: String,
    /// Lowercase ISO code.
    pub currency: String,
    /// Its total before tax, minor units.
    pub total_excluding_tax: i64,
    /// The tax the provider added, minor units.
    pub tax: i64,
    /// Each meter line it carries (`meter_line_id`) with its amount, minor units.
    pub lines: BTreeMap<String, Vec<i64>>,
}

/// An invoice the provider holds.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Synced {
    /// The customer's id at the provider.
    pub customer: String,
    /// The invoice's id at the provider.
    pub invoice: String,
    /// Its status there (draft, open, paid, uncollectible, void).
    pub status: String,
    /// Its total before tax, minor units: meter's total, checked.
    pub total_minor: i64,
    /// Invoice items sent, one per line but for those aggregated.
    pub items: usize,
    /// Lines summed into one item because the invoice had more than the provider takes.
    pub aggregated: usize,
    /// The provider's page of the invoice for the customer, when it has one.
    pub hosted_url: Option<String>,
    /// The provider's PDF of the invoice, when it has one.
    pub pdf_url: Option<String>,
}

/// What pushing an invoice came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pushed {
    /// The provider holds it, finalized, its total equal to meter's.
    Synced(Synced),
    /// No provider is configured: the invoice stays in meter.
    NotSynced,
}

/// What a step of collection asks of the provider.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ask {
    /// Charge the customer's payment method now (`charge_automatically`).
    Pay,
    /// Send the invoice to the customer, who pays it by transfer (`send_invoice`); sent again,
    /// it is a reminder.
    Send,
    /// Only read where the invoice stands (at a due date: paid by transfer, or not).
    Check,
}

/// What a step of collection came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Collected {
    /// The invoice is paid.
    Paid,
    /// The invoice was sent (or, asked to check, is still to be paid).
    Sent,
    /// The payment failed (a card declined, no payment method); the provider's reason.
    Declined(String),
    /// There is nothing to collect: the invoice is void or uncollectible at the provider.
    Closed(String),
    /// A payment is on its way and not settled yet (a SEPA or ACH debit takes days): neither
    /// paid nor failed.
    Processing,
}

/// What the provider's mirror of a subscription shows (see ARCHITECTURE.md, the mapping of
/// meter's states).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MirrorState {
    /// meter's state (`metadata.meter_state`).
    pub state: meter_rater::State,
    /// Cancelled: it ends with the paid cycle.
    pub cancel_at_period_end: bool,
    /// In a trial: when it ends (unix seconds).
    pub trial_end: Option<i64>,
}

/// What mirroring came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mirrored {
    /// The mirror shows it.
    Updated,
    /// The mirror was ended (meter's subscription expired, or it was deleted at the provider).
    Ended,
    /// No provider.
    NotSynced,
}

/// What came of keeping the payment method a sign-up collected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PaymentMethod {
    /// It is now the customer's default for invoices: meter's charges use it.
    Default(String),
    /// Nothing was kept, and why (nothing collected, not the customer's).
    NotKept(String),
}

/// A page of the provider's where a customer acts: Checkout (sign-up, a payment method), the
/// customer portal (payment methods, invoices).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct HostedPage {
    /// The provider's id of the session.
    pub id: String,
    /// Where to send the customer.
    pub url: String,
    /// When the page stops working (unix seconds), when the provider says.
    #[serde(default)]
    pub expires_at: Option<i64>,
}

/// A sign-up through the provider's Checkout: the customer gives a payment method, and its
/// completion provisions the subscription in meter (meter bills; nothing is charged there).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignUp {
    /// The tenant.
    pub tenant: String,
    /// The plan's code.
    pub plan: String,
    /// Its billing cycle.
    pub cycle: meter_rater::Cycle,
    /// The plan's currency.
    pub currency: Currency,
    /// Where the customer goes back to when done.
    pub success_url: String,
    /// Where the customer goes back to on giving up.
    pub cancel_url: String,
}

/// A payment provider.
#[async_trait]
pub trait Provider: Send + Sync {
    /// `stripe`, `none`.
    fn name(&self) -> &'static str;

    /// Checks that the provider answers and takes meter's credentials: [`Error::Config`] when
    /// it refuses them.
    async fn verify(&self) -> Result<(), Error>;

    /// Whether the provider can take `invoice` as it is (every line's amount, exactly); checked
    /// before anything of it, its customer included, is sent.
    fn check(&self, invoice: &Invoice) -> Result<(), Error>;

    /// Makes `tenant` a customer, with a subscription that mirrors meter's (billing nothing:
    /// meter bills), and answers what the provider calls it; `None` without a provider. Asking
    /// again within the provider's idempotency window answers the same objects; the caller
    /// records them ([`meter_billing::Ledger::record_remote_customer`]) so as never to ask again.
    async fn ensure_customer(&self, tenant: &str, currency: Currency) -> Result<Option<RemoteCustomer>, Error>;

    /// Pushes a closed invoice to `customer`: one provider invoice carrying one item per line,
    /// each with the line's exact amount, its total checked equal to meter's before it is
    /// finalized. Pushing it again (after a lost reply, a crash) gets what the first push made
    /// instead of making it twice. A customer's invoices must be pushed one at a time.
    async fn push_invoice(
        &self,
        invoice: &Invoice,
        customer: &str,
        collection: Collection,
        earlier: Earlier,
    ) -> Result<Pushed, Error>;

    /// Every invoice of `customer` carrying lines of meter invoice `invoice`, as the provider
    /// holds it (reconciliation).
    async fn held(&self, customer: &str, invoice: &str) -> Result<Vec<Held>, Error>;

    /// Collects the provider's invoice `invoice` as `ask` says, for the `attempt`-th time (0
    /// first, then each retry of dunning): each attempt is made once however often it is
    /// asked again (after a lost reply, a crash), and a new attempt is a new one.
    async fn collect(&self, invoice: &str, ask: Ask, attempt: u32) -> Result<Collected, Error>;

    /// Makes the mirror subscription `mirror` show `state`; `occasion` names the change (each
    /// change of meter's is sent once, and a change back is a new one).
    async fn mirror(&self, mirror: &str, state: &MirrorState, occasion: &str) -> Result<Mirrored, Error>;

    /// A Checkout page where `customer` signs up as `sign_up` says, carrying the tenant, plan
    /// and cycle in its metadata (`meter_tenant`, `meter_plan`, `meter_cycle`).
    async fn checkout(&self, customer: &str, sign_up: &SignUp) -> Result<HostedPage, Error>;

    /// A customer-portal page of `customer`'s, coming back to `return_url`.
    async fn billing_portal(&self, customer: &str, return_url: &str) -> Result<HostedPage, Error>;

    /// Makes the payment method that `customer`'s completed setup `setup` (a Checkout in setup
    /// mode) collected the customer's default for invoices, so that meter's charges use it.
    async fn keep_payment_method(&self, customer: &str, setup: &str) -> Result<PaymentMethod, Error>;

    /// The provider's events made at or after `created` (unix seconds), read from its API
    /// rather than received: what a webhook missed (`None` for one that is not an event meter
    /// can keep). None without a provider.
    async fn events_since(&self, created: i64) -> Result<Vec<Option<ReceivedEvent>>, Error>;
}

/// The embedded default: no provider; invoices stay in meter and every push says so.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoProvider;

#[async_trait]
impl Provider for NoProvider {
    fn name(&self) -> &'static str {
        "none"
    }

    async fn verify(&self) -> Result<(), Error> {
        Ok(())
    }

    fn check(&self, _invoice: &Invoice) -> Result<(), Error> {
        Ok(())
    }

    async fn ensure_customer(&self, _tenant: &str, _currency: Currency) -> Result<Option<RemoteCustomer>, Error> {
        Ok(None)
    }

    async fn push_invoice(
        &self,
        _invoice: &Invoice,
        _customer: &str,
        _collection: Collection,
        _earlier: Earlier,
    ) -> Result<Pushed, Error> {
        Ok(Pushed::NotSynced)
    }

    async fn events_since(&self, _created: i64) -> Result<Vec<Option<ReceivedEvent>>, Error> {
        Ok(Vec::new())
    }

    async fn held(&self, _customer: &str, _invoice: &str) -> Result<Vec<Held>, Error> {
        Ok(Vec::new())
    }

    async fn collect(&self, invoice: &str, _ask: Ask, _attempt: u32) -> Result<Collected, Error> {
        Err(Error::NoProvider(format!("to collect {invoice}")))
    }

    async fn mirror(&self, _mirror: &str, _state: &MirrorState, _occasion: &str) -> Result<Mirrored, Error> {
        Ok(Mirrored::NotSynced)
    }

    async fn checkout(&self, _customer: &str, _sign_up: &SignUp) -> Result<HostedPage, Error> {
        Err(Error::NoProvider("for a Checkout page".into()))
    }

    async fn billing_portal(&self, _customer: &str, _return_url: &str) -> Result<HostedPage, Error> {
        Err(Error::NoProvider("for a customer portal".into()))
    }

    async fn keep_payment_method(&self, _customer: &str, _setup: &str) -> Result<PaymentMethod, Error> {
        Err(Error::NoProvider("for a payment method".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenants_terms_override_its_plans_and_cards_are_the_default() {
        let terms: Terms = toml::from_str(
            r#"
            plans = { enterprise = { method = "send_invoice", days_until_due = 30 } }
            tenants = { globex = { method = "send_invoice", days_until_due = 60 }, acme = { method = "charge_automatically" } }
            "#,
        )
        .unwrap();
        assert_eq!(terms.of("initech", Some("enterprise")), Collection::SendInvoice { days_until_due: 30 });
        assert_eq!(terms.of("globex", Some("starter")), Collection::SendInvoice { days_until_due: 60 });
        assert_eq!(terms.of("acme", Some("enterprise")), Collection::ChargeAutomatically);
        assert_eq!(terms.of("hooli", Some("starter")), Collection::ChargeAutomatically);
        assert_eq!(terms.of("hooli", None), Collection::ChargeAutomatically);
        let e = toml::from_str::<Terms>(r#"plans = { x = { method = "wire" } }"#).unwrap_err();
        assert!(e.to_string().contains("wire"), "{e}");
    }
}
