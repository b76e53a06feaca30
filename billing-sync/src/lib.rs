//! billing-sync: the pipeline's last stage. Closed invoices and subscription state go to a
//! payment provider exactly once, and the provider's payment outcomes come back.
//!
//! - [`provider`]: the port (what billing needs from a provider) and the embedded default,
//!   [`NoProvider`] (invoices stay in meter).
//! - [`stripe`]: the Stripe backend; requests built by async-stripe, sent by meter's own client
//!   with keys derived from each request ([`key`]).
//! - [`amount`]: a line's amount in minor units, exactly, or the reason it cannot be sent.
//! - [`signature`]: Stripe's webhook signatures.
//! - [`worker`]: the outbox worker; [`collect`]: collecting a pushed invoice, and dunning.
//! - [`events`]: Stripe's events back; [`signup`]: Checkout and the customer portal.

pub mod amount;
pub mod collect;
pub mod events;
pub mod items;
pub mod key;
pub mod provider;
pub mod receivables;
pub mod reconcile;
pub mod signature;
pub mod signup;
pub mod status;
pub mod stripe;
pub mod worker;

#[cfg(feature = "testing")]
pub mod testing;

pub use provider::{
    Ask, Collected, Collection, Earlier, Held, HostedPage, NoProvider, PaymentMethod, Provider, Pushed, SignUp, Synced,
    Terms,
};

/// Metric names of the stage, declared once.
pub mod metric {
    /// Requests sent to Stripe, by outcome (ok, retried, refused).
    pub const STRIPE_REQUESTS: &str = "meter_stripe_requests_total";
    /// Stripe events received, by whether they were new (a redelivery is not).
    pub const EVENTS_RECEIVED: &str = "meter_stripe_events_received_total";
    /// Outbox operations settled, by outcome (done, again, dead).
    pub const OPERATIONS: &str = "meter_sync_operations_total";
}

/// Errors of the sync.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The tenant has no customer at the provider yet (it signs up, or is invoiced, first).
    #[error("tenant {0} has no customer at the payment provider yet: it signs up or is invoiced first")]
    NoCustomer(String),
    /// No payment provider is configured, and what was asked needs one.
    #[error("no payment provider is configured (set [stripe] api_key) {0}")]
    NoProvider(String),
    /// The provider's configuration is wrong (a key Stripe refuses, an unusable address).
    #[error("stripe configuration: {0}")]
    Config(String),
    /// A line the provider cannot represent; nothing of its invoice was sent.
    #[error("invoice {invoice}, line {line}: {reason}")]
    Unrepresentable {
        /// The meter invoice.
        invoice: String,
        /// The line.
        line: String,
        /// Why.
        reason: amount::Unrepresentable,
    },
    /// Stripe refused a request (a 4xx other than 409 and 429): sending it again cannot help.
    #[error("Stripe refused {what}: {status} {kind}{}: {message}", code.as_deref().map(|c| format!(" ({c})")).unwrap_or_default())]
    Refused {
        /// Method and path.
        what: String,
        /// HTTP status.
        status: u16,
        /// Stripe's error type (`invalid_request_error`, …).
        kind: String,
        /// Stripe's error code.
        code: Option<String>,
        /// The parameter it names.
        param: Option<String>,
        /// Stripe's message.
        message: String,
    },
    /// Stripe did not answer usefully after every try (429, 409, 5xx, timeouts, lost
    /// connections); the same request, with the same key, may be sent again later.
    #[error("Stripe unavailable for {what} after {tries} tries: {last}")]
    Unavailable {
        /// Method and path.
        what: String,
        /// Tries made.
        tries: u32,
        /// The last failure.
        last: String,
    },
    /// Stripe answered something meter cannot read.
    #[error("Stripe's answer to {what}: {detail}")]
    Protocol {
        /// Method and path.
        what: String,
        /// What was wrong.
        detail: String,
    },
    /// The ledger (where the outbox and the provider's ids are kept) failed; trying again later
    /// may succeed.
    #[error("ledger: {0}")]
    Ledger(#[from] meter_billing::Error),
    /// The tenant's webhook endpoints could not be told (their queue failed); trying again
    /// later may succeed.
    #[error("webhooks: {0}")]
    Notice(#[from] meter_webhooks::Error),
    /// Stripe's invoice differs from meter's: it was left unfinalized.
    #[error("Stripe's invoice for {invoice} differs from meter's: {detail}")]
    Mismatch {
        /// The meter invoice.
        invoice: String,
        /// How.
        detail: String,
    },
}

impl Error {
    /// Whether sending the same requests again later may succeed (the outbox keeps it);
    /// otherwise the operation belongs on the dead list with its reason.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Unavailable { .. } | Error::Ledger(_) | Error::Notice(_) => true,
            Error::Config(_)
            | Error::NoProvider(_)
            | Error::NoCustomer(_)
            | Error::Unrepresentable { .. }
            | Error::Refused { .. }
            | Error::Protocol { .. }
            | Error::Mismatch { .. } => false,
        }
    }
}
