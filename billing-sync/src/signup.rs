//! Self-serve sign-up and payment methods through the provider's hosted pages.
//!
//! - [`checkout`]: the SaaS's own sign-up backend asks (admin key) for a Checkout page for a new
//!   tenant on a plan and cycle. meter checks first that the tenant could start that
//!   subscription (the plan is sold on that cycle, the tenant has no live subscription), so a
//!   customer is never sent to pay for what meter would refuse; then makes the tenant a
//!   customer (once) and asks for the page, in setup mode: the customer gives a payment method
//!   and pays nothing there (meter bills). Its completion (`checkout.session.completed`, see
//!   [`crate::events`]) provisions the subscription.
//! - [`billing_portal`]: a customer-portal page where the tenant's customer updates its payment
//!   method and downloads its invoices.

use crate::Error;
use crate::provider::{HostedPage, Provider, SignUp};
use meter_billing::Subscriptions;
use meter_rater::{Cycle, Setup};

/// What a sign-up asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckoutAsk {
    /// The new tenant.
    pub tenant: String,
    /// The plan's code.
    pub plan: String,
    /// Its billing cycle.
    pub cycle: Cycle,
    /// Where the customer goes back to when done.
    pub success_url: String,
    /// Where the customer goes back to on giving up.
    pub cancel_url: String,
}

/// The subscription a completed sign-up starts: the plan and cycle chosen, renewing, no trial
/// (the customer has just given a payment method).
pub fn setup_of(plan: &str, cycle: Cycle) -> Setup {
    Setup { plan: plan.to_string(), cycle, term_years: 1, auto_renew: true, trial: false }
}

/// A Checkout page for `ask`, at `now_us`.
pub async fn checkout(
    subs: &Subscriptions,
    provider: &dyn Provider,
    ask: CheckoutAsk,
    now_us: i64,
) -> Result<HostedPage, Error> {
    let list = subs.check_create(&ask.tenant, &setup_of(&ask.plan, ask.cycle), now_us).await?;
    let customer = customer_of(subs, provider, &ask.tenant, list.currency).await?;
    let sign_up = SignUp {
        tenant: ask.tenant,
        plan: ask.plan,
        cycle: ask.cycle,
        currency: list.currency,
        success_url: ask.success_url,
        cancel_url: ask.cancel_url,
    };
    provider.checkout(&customer, &sign_up).await
}

/// A customer-portal page of `tenant`'s customer, coming back to `return_url`.
pub async fn billing_portal(
    subs: &Subscriptions,
    provider: &dyn Provider,
    tenant: &str,
    return_url: &str,
) -> Result<HostedPage, Error> {
    if provider.name() == "none" {
        return Err(Error::NoProvider("for a customer portal".into()));
    }
    let Some(remote) = subs.ledger.remote_customer(tenant).await? else {
        return Err(Error::NoCustomer(tenant.to_string()));
    };
    provider.billing_portal(&remote.customer, return_url).await
}

/// Whether `tenant` can open a customer-portal page: a provider is configured and the tenant is
/// its customer.
pub async fn portal_available(subs: &Subscriptions, provider: &dyn Provider, tenant: &str) -> Result<bool, Error> {
    Ok(provider.name() != "none" && subs.ledger.remote_customer(tenant).await?.is_some())
}

/// The tenant's customer at the provider, made and recorded the first time.
async fn customer_of(
    subs: &Subscriptions,
    provider: &dyn Provider,
    tenant: &str,
    currency: meter_rater::Currency,
) -> Result<String, Error> {
    if let Some(remote) = subs.ledger.remote_customer(tenant).await? {
        return Ok(remote.customer);
    }
    match provider.ensure_customer(tenant, currency).await? {
        Some(remote) => {
            subs.ledger.record_remote_customer(remote.clone()).await?;
            Ok(remote.customer)
        }
        None => Err(Error::NoProvider("for a customer".into())),
    }
}
