//! The event log: an append-only, partitioned sequence of validated events.
//!
//! Ingest appends; the aggregator reads each partition from an offset. A backend guarantees that
//! an append acknowledged with `Ok` is durable. A backend that [deduplicates](EventLog::deduplicates)
//! (the SQLite log) is also idempotent by `(tenant, id)`: a repeated event is answered
//! [`Outcome::Duplicate`] and not stored twice, an id reused with different content is refused as
//! a conflict, and an append is all or nothing. One that does not (Kafka) may store a retried
//! event twice, or part of a failed append; the aggregator's dedup state counts each event once
//! either way.

#[cfg(feature = "testing")]
pub mod contract;
mod kafka;
mod sqlite;

pub use kafka::{KafkaLog, KafkaSettings, PartitionCount, ensure_topic};
pub use sqlite::SqliteLog;

use async_trait::async_trait;

/// The aggregators' consumer group unless configured otherwise (`aggregator.group`): on Kafka the
/// group, and on every log the name their checkpoints are stored under.
pub const DEFAULT_GROUP: &str = "meter-aggregator";
use meter_schemas::Event;
use std::time::Duration;

/// Where a record sits in the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    /// Partition number, from 0.
    pub partition: u32,
    /// Offset within the partition, from 0.
    pub offset: u64,
}

/// What happened to one event of an append.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Stored at this position.
    Appended(Position),
    /// The same event was stored before; nothing was written.
    Duplicate,
}

/// One event read back from the log: decoded, or as the log holds it ([`Encoded`], from
/// [`LogReader::poll_encoded`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Record<E = Event> {
    /// Where it is.
    pub position: Position,
    /// When ingest stored it, microseconds since the epoch.
    pub ingested_us: i64,
    /// The event.
    pub event: E,
}

/// An event as the log holds it: [`Event::encode`]'s bytes, or the JSON an earlier build wrote.
/// [`Event::decode`] reads it whole, [`Event::view`] in place.
pub type Encoded = Vec<u8>;

/// A record's bytes decoded whole: what [`LogReader::poll`] reads (`Err` with why the record is
/// damaged).
fn decoded(bytes: &[u8]) -> Result<Event, String> {
    Event::decode(bytes).map_err(|e| e.to_string())
}

/// A record's bytes as they are: what [`LogReader::poll_encoded`] reads.
fn encoded(bytes: &[u8]) -> Result<Encoded, String> {
    Ok(bytes.to_vec())
}

/// Errors of the event log.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// These events (by index in the append) reuse a stored id with different content; nothing
    /// of the append was written.
    #[error("{} event id(s) already used with a different payload", .0.len())]
    Conflicts(Vec<usize>),
    /// These events (by index in the append) were older than the lateness window when the log
    /// committed; nothing of the append was written.
    #[error("{} event(s) older than the lateness window at commit", .0.len())]
    TooLate(Vec<usize>),
    /// The log cannot take writes now; the caller may retry.
    #[error("event log unavailable: {0}")]
    Unavailable(String),
    /// A stored record cannot be read.
    #[error("corrupt record at partition {partition} offset {offset}: {reason}")]
    Corrupt {
        /// Partition of the record.
        partition: u32,
        /// Offset of the record.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// The storage underneath failed.
    #[error(transparent)]
    Storage(#[from] meter_sqlite::Error),
}

impl From<meter_sqlite::rusqlite::Error> for Error {
    fn from(e: meter_sqlite::rusqlite::Error) -> Self {
        Error::Storage(e.into())
    }
}

/// The write side of the log.
#[async_trait]
pub trait EventLog: Send + Sync {
    /// Number of partitions.
    fn partitions(&self) -> u32;

    /// Whether appends are idempotent by `(tenant, id)` and all-or-nothing (see the module docs).
    fn deduplicates(&self) -> bool {
        true
    }

    /// Readies the log for appends now rather than at the first: a process that appends calls
    /// it at start-up, so that its first requests do not wait for a connection (Kafka makes its
    /// producer at the first append otherwise; a process that only reads never makes one).
    fn ready_to_append(&self) -> Result<(), Error> {
        Ok(())
    }

    /// Appends `events`. On `Ok`, every event is durable and the outcome of each is given in order;
    /// on `Err`, a deduplicating log stored none of them.
    async fn append(&self, events: &[Event]) -> Result<Vec<Outcome>, Error>;

    /// A reader: of every partition from offset 0 (SQLite), or of the partitions the consumer
    /// group gives it, from where [`LogReader::seek`] says (Kafka).
    fn reader(&self) -> Result<Box<dyn LogReader>, Error>;

    /// A reader for another consumer group than the aggregators' (the ClickHouse sink's). A log
    /// without groups reads every partition either way.
    fn reader_in(&self, group: &str) -> Result<Box<dyn LogReader>, Error> {
        let _ = group;
        self.reader()
    }

    /// Drops the records no one will read again: of each partition in `behind`, those below its
    /// offset (where the slowest consumer stands) that arrived before `arrived_before_us` (what
    /// no census still to come reads), as one prefix of the partition. Returns how many it
    /// dropped. Kafka's retention is the broker's: it drops nothing here.
    async fn compact(&self, behind: &[Position], arrived_before_us: i64) -> Result<u64, Error>;
}

/// Records read in one poll.
#[derive(Debug)]
pub struct Batch<E = Event> {
    /// Records in log order within each partition.
    pub records: Vec<Record<E>>,
    /// True when the poll reached the end of every partition.
    pub caught_up: bool,
    /// An instant such that, if `caught_up`, every event acknowledged before it is in this batch
    /// or an earlier one (the SQLite reader takes it before reading, the Kafka reader before it
    /// asks where the partitions end).
    pub started_us: i64,
    /// The partitions this reader owns changed (a consumer-group rebalance): `records` is empty,
    /// and the caller resumes from its checkpoint with [`LogReader::seek`].
    pub reassigned: bool,
}

impl<E> Default for Batch<E> {
    fn default() -> Self {
        Batch { records: Vec::new(), caught_up: false, started_us: 0, reassigned: false }
    }
}

/// The read side of the log, used from one blocking thread.
pub trait LogReader: Send {
    /// Resumes from a checkpoint: each owned partition at the offset listed for it, or at 0.
    fn seek(&mut self, positions: &[Position]);

    /// Reads up to `max` records of the owned partitions, waiting up to `timeout` when there are
    /// none.
    fn poll(&mut self, max: usize, timeout: Duration) -> Result<Batch, Error>;

    /// [`LogReader::poll`], with each event as the log holds it, for a reader that takes a few
    /// fields of each event in place ([`Event::view`]) rather than decoding it whole (the
    /// aggregator); refusing a damaged record ([`Error::Corrupt`]) may then be the caller's (the
    /// Kafka and SQLite readers hand its bytes on). By default, the events `poll` reads, encoded
    /// again.
    fn poll_encoded(&mut self, max: usize, timeout: Duration) -> Result<Batch<Encoded>, Error> {
        let Batch { records, caught_up, started_us, reassigned } = self.poll(max, timeout)?;
        let records = records
            .into_iter()
            .map(|r| Record { position: r.position, ingested_us: r.ingested_us, event: r.event.encode() })
            .collect();
        Ok(Batch { records, caught_up, started_us, reassigned })
    }

    /// The partitions this reader reads now: all of them, or a consumer group's share.
    fn owned(&self) -> Vec<u32>;

    /// The first offset each compacted partition still holds ([`EventLog::compact`]): a consumer
    /// behind it would never read the records before it. Empty for a log never compacted.
    fn kept_from(&self) -> Result<Vec<Position>, Error> {
        Ok(Vec::new())
    }

    /// Tells the backend that everything before `positions` is counted and stored, for a backend
    /// that reports consumer progress itself (Kafka's committed offsets, which monitoring reads).
    /// Resuming never depends on it: the checkpoint in the usage store is the truth.
    fn stored(&mut self, _positions: &[Position]) {}
}
