//! Metric names of billing, declared once.

/// Subscription changes made through the admin API, by `action`.
pub const SUBSCRIPTION_CHANGES: &str = "meter_billing_subscription_changes_total";
/// Periods closed (recorded for the first time).
pub const CLOSES: &str = "meter_billing_closes_total";
/// Time to close a period, census included.
pub const CLOSE_DURATION: &str = "meter_billing_close_duration_seconds";
/// Invoice drafts written by closes.
pub const INVOICES: &str = "meter_billing_invoices_total";
/// Reconciliation rows whose figures differ, over all closes.
pub const DIFFERENCES: &str = "meter_billing_reconciliation_differences_total";
