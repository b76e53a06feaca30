//! The usage store: per-tenant, per-meter tallies for each period and day, the dedup state that
//! makes counting exact, and the log positions the tallies cover.
//!
//! [`UsageStore::apply`] is the one write: it deduplicates a batch by `(tenant, id)`, folds the
//! new events into the tallies and moves the checkpoint, all in one atomic step, so that a crash at
//! any instant neither loses nor double-counts an event.

pub mod alerts;
mod clickhouse;
#[cfg(feature = "testing")]
pub mod contract;
mod counters;
pub mod limits;
mod postgres;
pub mod reads;
mod sqlite;
#[cfg(feature = "testing")]
pub mod testing;

pub use alerts::{Alert, Allowances, Suggestion, Watch};
pub use clickhouse::{ClickHouseStore, ClickHouseUrl, SCHEMA_VERSION as CLICKHOUSE_SCHEMA_VERSION};
pub use limits::{Decide, Hold, LimitQuery, LimitSnapshot, LimitState};
pub use postgres::{COMPONENT as PG_COMPONENT, MIGRATIONS as PG_MIGRATIONS, PgStore};
pub use reads::{DailyRange, Dimension, Source, UsageReads};
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
    /// The stored checkpoint of a partition is not where the batch started: another consumer
    /// moved it, so this one no longer owns the partition. Nothing was applied.
    #[error("partition {partition} was moved to offset {stored} by another consumer (this batch started at {from})")]
    Fenced {
        /// The partition.
        partition: u32,
        /// Its stored next offset.
        stored: u64,
        /// Where the batch expected it.
        from: u64,
    },
    /// The store counts for another consumer. Two consumers writing one store would not fence
    /// each other, and one's cached tallies could overwrite the other's counts.
    #[error(
        "this usage store counts for consumer group {found:?}, not {asked:?}: one store serves one group \
         (set aggregator.group = {found:?}, or use another store)"
    )]
    OtherConsumer {
        /// The consumer whose checkpoints the store holds.
        found: String,
        /// The consumer that asked.
        asked: String,
    },
    /// A quantity the store cannot hold exactly (more than 10^18, or more than 9 decimal
    /// places; ingest never accepts one). Nothing was applied.
    #[error("quantity {0} is outside what the usage store holds (at most 10^18, at most 9 decimal places)")]
    OutOfRange(rust_decimal::Decimal),
    /// A stored row names an aggregation kind this build does not know (a newer writer's).
    #[error("stored aggregation kind {0} is unknown to this build of meter")]
    UnknownKind(u8),
    /// The store's schema is missing, older or newer than this meter's.
    #[error("{0}")]
    Schema(String),
    /// A stored value this build cannot read (a hand-edited or damaged store); nothing was
    /// applied.
    #[error("stored {0} cannot be read")]
    Unreadable(String),
    /// Rows the store had cached are no longer in the table (deleted or replaced under it);
    /// nothing was applied, and the next batch reads them again. Only a row that is gone is seen:
    /// restoring `tallies` or `breakdowns` alone, without the checkpoints, needs the aggregators
    /// restarted.
    #[error("{missing} of the {of} {table} rows this batch rewrites by id are no longer there; reading them again")]
    Replaced {
        /// The table.
        table: &'static str,
        /// How many of the rows were not found.
        missing: usize,
        /// How many the batch rewrites.
        of: usize,
    },
    /// A tenant's slot in SQLite's `counter_slots` is not the one this process gave the tenant's
    /// new rows their ids in (changed under the store); nothing was applied, and the next batch
    /// reads it again.
    #[error("tenant {tenant}'s slot in counter_slots is no longer {kept}; reading it again")]
    SlotMoved {
        /// The tenant.
        tenant: String,
        /// The slot this process kept for it.
        kept: i64,
    },
    /// The storage underneath failed.
    #[error(transparent)]
    Storage(#[from] meter_sqlite::Error),
    /// The live counters in Postgres failed or could not be reached.
    #[error(transparent)]
    Postgres(#[from] meter_postgres::Error),
    /// ClickHouse failed or could not be reached.
    #[error("clickhouse: {0}")]
    ClickHouse(#[from] ::clickhouse::error::Error),
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
    /// The event's offset in its log partition. Of several copies of one `(tenant, id)` (which
    /// share a partition), the one with the lowest offset counts.
    pub offset: u64,
    /// Event time, microseconds since the epoch.
    pub time_us: i64,
    /// What it adds, by index into the meter list given to [`UsageStore::apply`].
    pub contributions: Vec<(usize, Contribution)>,
    /// For each contribution whose meter is broken down (`group_by`), the event's values of the
    /// meter's `group_by` properties, in their order (`""` for none): what
    /// [`meter_schemas::Catalog::groups`] gives.
    pub groups: Vec<(usize, Vec<String>)>,
}

/// Where a consumer has got to: for each partition, the next offset to read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Checkpoint {
    /// `(partition, next offset)` pairs.
    pub positions: Vec<(u32, u64)>,
}

/// How far one partition moves in an [`UsageStore::apply`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Advance {
    /// The partition.
    pub partition: u32,
    /// Its next offset when the batch was read; the stored one must still be this.
    pub from: u64,
    /// Its next offset after the batch.
    pub to: u64,
}

/// The log positions a batch covers, moved in the same step as its tallies.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Every partition the consumer owns, including those the batch has no record of.
    pub partitions: Vec<Advance>,
    /// Set when the consumer has read all of these partitions: every event acknowledged into them
    /// before this instant (microseconds) is counted.
    pub watermark_us: Option<i64>,
}

/// Whose watermark a usage answer reports: the tenant's partition as read by this consumer.
#[derive(Clone, Copy, Debug)]
pub struct Coverage<'a> {
    /// The consumer (the aggregators' group).
    pub consumer: &'a str,
    /// The tenant's partition.
    pub partition: u32,
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
    /// Every event of the tenant acknowledged before this instant is counted.
    pub watermark_us: Option<i64>,
}

/// The usage-store port.
#[async_trait]
pub trait UsageStore: Send + Sync {
    /// Whether [`UsageStore::apply`] knows which events it saw before ([`Applied`] counts them
    /// as duplicates), or stores every copy and counts only the first when read (ClickHouse,
    /// whose [`Applied`] counts every event).
    fn deduplicates_at_write(&self) -> bool {
        true
    }

    /// The checkpoint of `consumer` (empty for a new consumer), to resume from. Resuming drops
    /// whatever the store cached for writing: another member of the group may have moved those
    /// tallies since. A store that holds another consumer's checkpoints refuses
    /// ([`Error::OtherConsumer`]). Blocking.
    fn checkpoint(&self, consumer: &str) -> Result<Checkpoint, Error>;

    /// Atomically: checks that every partition of `progress` is still at its `from` (else
    /// [`Error::Fenced`]), counts each event of `events` not counted before, and moves the
    /// partitions to `to`. `meters` gives the meters that contribution indexes point into.
    /// Blocking.
    fn apply(
        &self,
        consumer: &str,
        meters: &[MeterDef],
        events: &[Metered],
        progress: &Progress,
    ) -> Result<Applied, Error>;

    /// Moves the watermark of `partitions` forward (never back) when `consumer` has read all of
    /// them and nothing changed. Blocking.
    fn advance_watermark(&self, consumer: &str, partitions: &[u32], watermark_us: i64) -> Result<(), Error>;

    /// `tenant`'s tallies for `period`, with the watermark of `coverage`, in one snapshot.
    async fn usage(&self, tenant: &str, period: Period, coverage: Coverage<'_>) -> Result<PeriodUsage, Error>;

    /// `tenant`'s daily tallies for the days `from..to` (`YYYY-MM-DD`, `to` excluded), by meter
    /// and day; days without events are absent.
    async fn daily(&self, tenant: &str, from: Date, to: Date) -> Result<Series, Error>;

    /// Every tenant's period tallies, by tenant and meter.
    async fn period_totals(&self, period: Period) -> Result<Totals, Error> {
        self.period_totals_in(period, None, None).await
    }

    /// The period tallies of the tenants after `after` up to `upto`, included (no bound where
    /// `None`), by tenant and meter: what closing `period` reads, a range of tenants at a time.
    async fn period_totals_in(&self, period: Period, after: Option<&str>, upto: Option<&str>) -> Result<Totals, Error>;

    /// `tenant`'s period totals of each broken-down meter (`group_by`), by property and then by
    /// the property's value (`""`: events without it), from events counted since the meter was
    /// broken down.
    async fn breakdown(&self, tenant: &str, period: Period) -> Result<Breakdown, Error>;

    /// The watermark of `consumer` over all `partitions`: the slowest partition's, and `None`
    /// until every partition has one. What a period close freezes at.
    async fn watermark(&self, consumer: &str, partitions: u32) -> Result<Option<i64>, Error>;

    /// Where `consumer` stands: the next offset of each partition it has stored, by partition
    /// (empty for a new consumer). Read only, unlike [`UsageStore::checkpoint`]: what compacting
    /// the embedded log reads.
    async fn positions(&self, consumer: &str) -> Result<Vec<(u32, u64)>, Error>;
}

/// The live counters' port: what the stages need beyond [`UsageStore`] from the store the
/// aggregator counts into. Threshold alerts are raised inside [`UsageStore::apply`]'s
/// transaction, with the counters and the checkpoint, once allowances are set; delivery reads
/// them back after a cursor; ingest's hard limits read one consistent snapshot. Every backend
/// of the live counters implements it; `contract` runs its suite against each.
#[async_trait]
pub trait LiveStore: UsageStore {
    /// From now on, every change of a period's counter raises the alerts its tenant's plan sets
    /// (see [`alerts`]), in the same transaction.
    fn set_allowances(&self, allowances: std::sync::Arc<dyn Allowances>);

    /// Raises the thresholds `tenant`'s counters of `period` have already reached (after its
    /// plan changed, when no event may come to trigger them); returns how many are new. Blocking.
    fn reevaluate(&self, tenant: &str, period: Period) -> Result<usize, Error>;

    /// Raises an `upgrade_suggested` alert, unless that tier was suggested to the tenant in the
    /// period before; returns whether it is new. Blocking.
    fn suggest(&self, s: Suggestion) -> Result<bool, Error>;

    /// Answers a hard-limit check's queries from one snapshot (see [`limits`]).
    async fn limit_states(&self, queries: Vec<LimitQuery>) -> Result<LimitSnapshot, Error>;

    /// Whether the store keeps hard-limit holds for every process (of every host) that checks
    /// limits ([`LiveStore::limit_check`]); otherwise each process keeps its own in memory,
    /// which is exact only while one process checks a tenant's limits.
    fn shares_holds(&self) -> bool;

    /// A hard-limit check against the holds the store shares: under a lock on each query's
    /// tenant and period, reads the queries' states with the holds not counted yet (a hold
    /// whose event is counted is dropped; so is one older than `release_after` once the
    /// counters moved past where it was accepted: its append failed), calls `decide`, keeps the
    /// holds it returns, and commits; returns its refusals. `None` from a store that does not
    /// share holds.
    async fn limit_check(
        &self,
        queries: Vec<LimitQuery>,
        release_after: std::time::Duration,
        decide: Decide,
    ) -> Result<Option<Vec<(usize, String)>>, Error>;

    /// Changes after every write that raised an alert, so that delivery need not poll; each
    /// subscriber (webhooks, the Kafka topic) sees every change.
    fn alerted(&self) -> tokio::sync::watch::Receiver<u64>;

    /// Alerts raised after `after_seq` (of `tenant`, when given), oldest first, at most `limit`.
    async fn alerts(&self, tenant: Option<&str>, after_seq: u64, limit: usize) -> Result<Vec<Alert>, Error>;
}

/// The slowest of `(partition, watermark)` marks over `0..partitions`; `None` unless each has one.
pub fn slowest(marks: &[(u32, i64)], partitions: u32) -> Option<i64> {
    (0..partitions)
        .map(|p| marks.iter().find(|(q, _)| *q == p).map(|(_, w)| *w))
        .collect::<Option<Vec<_>>>()?
        .into_iter()
        .min()
}

/// Period tallies by tenant and then by meter.
pub type Totals = BTreeMap<String, BTreeMap<String, Tally>>;

/// Period totals by meter, then by `group_by` property, then by the property's value.
pub type Breakdown = BTreeMap<String, BTreeMap<String, BTreeMap<String, rust_decimal::Decimal>>>;

/// Daily tallies by meter and then by day (`YYYY-MM-DD`).
pub type Series = BTreeMap<String, BTreeMap<String, Tally>>;

/// A calendar day (UTC).
pub type Date = meter_schemas::period::Date;
