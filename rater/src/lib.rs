//! Pricing for meter, with no I/O and no clock: the price book ([`pricebook`]), price models
//! ([`price`]), the subscription state machine ([`subscription`]) and the rater ([`rate`]), a
//! pure function from usage totals, a subscription's trail and a price list to invoice lines.
//!
//! Money is `rust_decimal`; every line is rounded once, half-even, to the currency's minor unit,
//! and arithmetic that could overflow is an [`Error`], never a panic.

pub mod money;
pub mod price;
pub mod pricebook;
pub mod rate;
pub mod recurring;
pub mod subscription;

pub use money::{Currency, Percent};
pub use pricebook::{Cycle, PriceBook, PriceBookError, PriceList};
pub use rate::{Invoice, Line, LineKind, Lineage, Meters, Service, Usage, adjustments, invoice_id, prorate, rate};
pub use subscription::{Command, Entry, Refusal, Setup, State, Subscription};

/// Errors of rating.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// An amount went past what a decimal holds exactly (or past 10^24).
    #[error("the amount of {0} overflows: the usage or prices are too large to rate exactly")]
    Overflow(String),
    /// The subscription names a plan the price list lacks.
    #[error("plan {0:?} is not in price list {1}")]
    UnknownPlan(String, String),
    /// The plan is not sold on that cycle.
    #[error("plan {0:?} is not sold {1}")]
    NotSold(String, Cycle),
}
