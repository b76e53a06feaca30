//! Stripe's objects as meter reads them: only the fields it uses. async-stripe's generated types
//! require every field of the API version they were generated from, so a reply of another
//! version (an account pinned to an older one, a stand-in) fails to parse as a whole.

use serde::Deserialize;
use std::collections::BTreeMap;

/// A page of a list.
#[derive(Debug, Deserialize)]
pub struct List<T> {
    /// The objects.
    pub data: Vec<T>,
    /// Whether more follow.
    #[serde(default)]
    pub has_more: bool,
}

/// A customer.
#[derive(Debug, Deserialize)]
pub struct Customer {
    /// `cus_…`.
    pub id: String,
    /// Its metadata (`meter_tenant`).
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

/// A setup intent: what a Checkout session in setup mode collected.
#[derive(Debug, Deserialize)]
pub struct SetupIntent {
    /// `seti_…`.
    pub id: String,
    /// The customer it is for.
    #[serde(default)]
    pub customer: Option<String>,
    /// The payment method it collected (its id; absent until one was given).
    #[serde(default)]
    pub payment_method: Option<String>,
    /// `succeeded` once the payment method can be used.
    pub status: String,
}

/// An invoice.
#[derive(Debug, Deserialize)]
pub struct Invoice {
    /// `in_…`.
    pub id: String,
    /// draft, open, paid, uncollectible or void.
    pub status: Option<String>,
    /// Lowercase ISO code.
    pub currency: String,
    /// The total before tax, minor units.
    pub total_excluding_tax: Option<i64>,
    /// The total, minor units.
    pub total: i64,
    /// Its metadata (`meter_invoice_id`).
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// The customer's page of it, once finalized.
    #[serde(default)]
    pub hosted_invoice_url: Option<String>,
    /// Its PDF, once finalized.
    #[serde(default)]
    pub invoice_pdf: Option<String>,
    /// The subscription that made it (API versions before 2025-03-31).
    #[serde(default)]
    pub subscription: Option<serde_json::Value>,
    /// What made it (`subscription_details` for a subscription's; later API versions).
    #[serde(default)]
    pub parent: Option<serde_json::Value>,
    /// Its payments (API versions from 2025-03-31), each payment intent expanded when asked
    /// ([`Invoice::EXPAND_PAYMENTS`]).
    #[serde(default)]
    pub payments: Option<List<serde_json::Value>>,
    /// Its payment intent (earlier API versions), expanded when asked.
    #[serde(default)]
    pub payment_intent: Option<serde_json::Value>,
}

impl Invoice {
    /// What to expand to see whether a payment is on its way ([`Invoice::payment_processing`]).
    pub const EXPAND_PAYMENTS: &'static str = "payments.data.payment.payment_intent";

    /// Whether a payment of it is on its way, not settled yet (a debit's payment intent
    /// `processing`): read from its payments, or its payment intent in earlier API versions.
    pub fn payment_processing(&self) -> bool {
        let processing = |intent: &serde_json::Value| intent["status"] == "processing";
        self.payment_intent.as_ref().is_some_and(processing)
            || self.payments.iter().flat_map(|p| &p.data).any(|p| processing(&p["payment"]["payment_intent"]))
    }

    /// Whether a subscription made it with nothing to pay: a mirror subscription's invoice,
    /// which cannot carry meter's money.
    pub fn is_empty_subscription_invoice(&self) -> bool {
        let of_subscription = self.subscription.as_ref().is_some_and(|s| !s.is_null())
            || self.parent.as_ref().is_some_and(|p| !p["subscription_details"].is_null());
        of_subscription && self.total == 0
    }
}

/// A line of an invoice.
#[derive(Debug, Deserialize)]
pub struct InvoiceLine {
    /// `il_…`.
    pub id: String,
    /// Minor units.
    pub amount: i64,
    /// Its metadata (`meter_line_id`), copied from the invoice item.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

/// An invoice item.
#[derive(Debug, Deserialize)]
pub struct InvoiceItem {
    /// `ii_…`.
    pub id: String,
    /// Minor units.
    pub amount: i64,
    /// Its metadata (`meter_invoice_id`, `meter_line_id`).
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}
