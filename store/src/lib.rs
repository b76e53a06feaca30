//! The usage store: per-tenant, per-meter tallies for each period and day, the dedup state that
//! makes counting exact, and the log positions the tallies cover.
//!
//! [`UsageStore::apply`] is the one write: it deduplicates a batch by `(tenant, id)`, folds the
//! new events into the tallies and moves the checkpoint, all in one atomic step, so that a crash at
//! any instant neither loses nor double-counts an event.

#[cfg(feature = "testing")]
pub mod contract;
mod sqlite;

pub use sqlite::SqliteStore;

use async_trait::async_trait;
use meter_schemas::{Contribution, MeterDef, Period, Tally};
use std::collections::BTreeMap;

/// Errors of the usage store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A total no longer fits a decimal; the batch was not applied.
    #[error(transparent)]
    Overflow(#[from] meter_schemas::meter::Overflow),
    /// A contribution names a meter index the store was not given.
    #[error("unknown meter index {0}")]
    UnknownMeter(usize),
    /// The storage underneath failed.
    #[error(transparent)]
    Storage(#[from] meter_sqlite::Error),
}

impl From<meter_sqlite::rusqlite::Error> for Error {
    fn from(e: meter_sqlite::rusqlite::Error) -> Self {
        Error::Storage(e.into())
    }
}

/// An event reduced to what the tallies need.
#[derive(Clone, Debug, PartialEq)]
pub struct Metered {
    /// Tenant.
    pub tenant: String,
    /// The event's id; `(tenant, id)` is what is deduplicated.
    pub id: String,
    /// Event time, microseconds since the epoch.
    pub time_us: i64,
    /// What it adds, by index into the meter list given to [`UsageStore::apply`].
    pub contributions: Vec<(usize, Contribution)>,
}

/// Where a consumer has got to: for each partition, the next offset to read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Checkpoint {
    /// `(partition, next offset)` pairs.
    pub positions: Vec<(u32, u64)>,
    /// Every event acknowledged before this instant (microseconds) is counted.
    pub watermark_us: Option<i64>,
}

/// What [`UsageStore::apply`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Events counted for the first time.
    pub counted: usize,
    /// Events already counted before, ignored.
    pub duplicates: usize,
}

/// The tallies of one meter over a period.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MeterTallies {
    /// The whole period so far.
    pub period: Tally,
    /// Each day with events, by `YYYY-MM-DD`.
    pub days: BTreeMap<String, Tally>,
}

/// A tenant's usage in a period, as one consistent snapshot.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PeriodUsage {
    /// By meter name; meters with no events are absent.
    pub meters: BTreeMap<String, MeterTallies>,
    /// Every event acknowledged before this instant is counted (the lowest over all consumers).
    pub watermark_us: Option<i64>,
}

/// The usage-store port.
#[async_trait]
pub trait UsageStore: Send + Sync {
    /// The checkpoint of `consumer` (empty for a new consumer). Blocking.
    fn checkpoint(&self, consumer: &str) -> Result<Checkpoint, Error>;

    /// Atomically: counts each event of `events` not counted before, and stores `checkpoint` as
    /// `consumer`'s. `meters` gives the meters that contribution indexes point into. Blocking.
    fn apply(
        &self,
        consumer: &str,
        meters: &[MeterDef],
        events: &[Metered],
        checkpoint: &Checkpoint,
    ) -> Result<Applied, Error>;

    /// Moves `consumer`'s watermark forward when it has read everything and nothing changed.
    /// Blocking.
    fn advance_watermark(&self, consumer: &str, watermark_us: i64) -> Result<(), Error>;

    /// `tenant`'s tallies for `period`.
    async fn usage(&self, tenant: &str, period: Period) -> Result<PeriodUsage, Error>;
}
