//! Billing for meter: the ledger of subscriptions and closed periods ([`Ledger`]), the period
//! close that rates every subscription and reconciles the figures ([`close`]), the preview of
//! the open period's invoice ([`upcoming`]), and what plans allow: allowances for alerts,
//! entitlements, and the hard limits ingest checks ([`HardLimits`]).

pub mod advisor;
pub mod allowances;
pub mod census;
pub mod close;
pub mod compaction;
pub mod entitlements;
pub mod export;
pub mod ledger;
pub mod limits;
pub mod metric;
pub mod preview;
pub mod recognition;
pub mod revenue;
pub mod search;
pub mod subscriptions;
#[cfg(feature = "testing")]
pub mod testing;

pub use allowances::PlanAllowances;
pub use close::{Progress, Sources, close};
pub use entitlements::{Entitlement, Entitlements, entitlements};
pub use ledger::{Close, Ledger, ReportRow};
pub use limits::HardLimits;
pub use preview::{Upcoming, upcoming};
pub use subscriptions::{SubscriptionStats, Subscriptions};

use meter_rater::Refusal;

/// Errors of billing. The server maps each to a status code in one place.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No such subscription.
    #[error("no subscription {0:?}")]
    NotFound(String),
    /// The subscription's state does not allow the command, or a value is wrong for it.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// Conflicts with what is there (a second live subscription for a tenant).
    #[error("{0}")]
    Conflict(String),
    /// The change falls in a closed period.
    #[error("{0}")]
    Closed(String),
    /// The period cannot be closed yet.
    #[error("{0}")]
    NotReady(String),
    /// The price book does not fit the ledger.
    #[error("{0}")]
    PriceBook(String),
    /// Rating failed (an overflow, or a plan missing from the price list).
    #[error(transparent)]
    Rating(#[from] meter_rater::Error),
    /// The usage store failed.
    #[error("usage store: {0}")]
    Store(#[from] meter_store::Error),
    /// The event log failed.
    #[error("event log: {0}")]
    Log(#[from] meter_eventlog::Error),
    /// The ledger's storage failed.
    #[error(transparent)]
    Storage(#[from] meter_sqlite::Error),
    /// The ledger's storage in Postgres failed.
    #[error(transparent)]
    Postgres(#[from] meter_postgres::Error),
    /// A task of the close (a rating thread, work off the async runtime) panicked or was
    /// cancelled.
    #[error("close task failed: {0}")]
    Task(String),
    /// A stored record does not parse.
    #[error("ledger record: {0}")]
    Json(#[from] serde_json::Error),
    /// No sync operation of that id in the state asked for.
    #[error("no {0}")]
    NoOperation(String),
    /// The census's spill files could not be written or read back (a full or unwritable disk).
    #[error("census spill: {0}")]
    Spill(#[from] std::io::Error),
    /// The ledger contradicts itself (a record another one names is missing or malformed).
    #[error("ledger: {0}")]
    Corrupt(String),
}

impl From<meter_sqlite::rusqlite::Error> for Error {
    fn from(e: meter_sqlite::rusqlite::Error) -> Self {
        Error::Storage(e.into())
    }
}
