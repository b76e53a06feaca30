//! A recorded close: the rows the ledger keeps of a closed period (its invoice drafts, its
//! reconciliation report and what it was frozen at), which the close makes and every reader of
//! a closed period reads.

use meter_rater::Invoice;
use meter_schemas::Period;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One tenant's meter in the reconciliation report: the four figures and what differs.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct ReportRow {
    /// Tenant.
    pub tenant: String,
    /// Meter.
    pub meter: String,
    /// Metered again from the events the log accepted (absent when the census was skipped).
    pub accepted: Option<String>,
    /// The live counters.
    pub counted: Option<String>,
    /// The history store, which the invoice uses.
    pub stored: Option<String>,
    /// What the invoice lines used (absent for a meter no line prices).
    pub rated: Option<String>,
    /// `ok`, or each difference found.
    pub status: String,
}

impl ReportRow {
    /// The status of a row whose figures agree.
    pub const OK: &'static str = "ok";

    /// Whether its figures differ (a status other than [`ReportRow::OK`]).
    pub fn differs(&self) -> bool {
        self.status != Self::OK
    }
}

/// A closed period: its drafts, its report and what it was frozen at.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Close {
    /// `YYYY-MM`.
    #[schema(value_type = String)]
    pub period: Period,
    /// When it was closed (RFC 3339).
    pub closed_at: String,
    /// The same, µs.
    pub closed_us: i64,
    /// Every event acknowledged before this instant was counted (RFC 3339).
    pub watermark: String,
    /// The same, µs.
    pub watermark_us: i64,
    /// True when the watermark had passed the period's end plus the lateness window: no event
    /// for the period could still arrive. Otherwise later events go into adjustments.
    pub complete: bool,
    /// The price list version that rated it.
    pub price_version: String,
    /// The invoice drafts, by tenant.
    pub invoices: Vec<Invoice>,
    /// Sum of the drafts, by currency.
    #[schema(value_type = BTreeMap<String, String>)]
    pub totals: BTreeMap<String, Decimal>,
    /// The reconciliation report, by tenant and meter.
    pub report: Vec<ReportRow>,
    /// Earlier periods rated again on their totals at this close (the baseline of their next
    /// adjustments).
    #[schema(value_type = BTreeMap<String, Vec<Invoice>>)]
    pub revisions: BTreeMap<Period, Vec<Invoice>>,
}
