//! Compacting the embedded log: what no one reads again goes, so the log stays as large as the
//! periods still to close rather than everything ever accepted.
//!
//! Two readers need records: the consumers (the aggregator, the ClickHouse sink), up to where
//! each stands, and the census of every period still to close. Periods close in order, so the
//! census still to come reads periods after the newest close; an event of such a period arrived
//! at most `ingest.max_future` before the period began. A record goes once every consumer is
//! past it and it arrived before the first period not closed, less `max_future`. Until a first
//! close, any period may still be closed, and nothing goes.

use crate::{Error, Ledger};
use meter_eventlog::{EventLog, Position};
use meter_store::UsageStore;
use std::sync::Arc;
use std::time::Duration;

/// How often the log is compacted.
pub const COMPACT_EVERY: Duration = Duration::from_secs(600);

/// What compacting the log reads.
pub struct LogCompaction {
    /// The log.
    pub log: Arc<dyn EventLog>,
    /// Every consumer of the log, with the store that keeps its checkpoint.
    pub consumers: Vec<(Arc<dyn UsageStore>, String)>,
    /// The closes.
    pub ledger: Ledger,
    /// How far ahead of its arrival an event may be dated (`ingest.max_future`).
    pub max_future_us: i64,
}

impl LogCompaction {
    /// Where the log may be compacted now: behind the slowest consumer of each partition, and the
    /// arrival before which no census still to come reads; `None` before the first close.
    pub async fn bounds(&self) -> Result<Option<(Vec<Position>, i64)>, Error> {
        let closes = self.ledger.close_summaries().await?;
        let Some(newest) = closes.iter().map(|c| c.period).max() else { return Ok(None) };
        if self.consumers.is_empty() {
            return Ok(None);
        }
        let arrived_before_us = newest.next().start_us().saturating_sub(self.max_future_us);
        let mut behind: Vec<Position> =
            (0..self.log.partitions()).map(|partition| Position { partition, offset: u64::MAX }).collect();
        for (store, consumer) in &self.consumers {
            let at = store.positions(consumer).await?;
            for b in &mut behind {
                // A partition the consumer never stored is read from its first record.
                let offset = at.iter().find(|(p, _)| *p == b.partition).map_or(0, |(_, o)| *o);
                b.offset = b.offset.min(offset);
            }
        }
        Ok(Some((behind, arrived_before_us)))
    }

    /// Compacts the log once; returns how many records it dropped.
    pub async fn once(&self) -> Result<u64, Error> {
        match self.bounds().await? {
            Some((behind, arrived_before_us)) => Ok(self.log.compact(&behind, arrived_before_us).await?),
            None => Ok(0),
        }
    }

    /// Compacts the log now and every [`COMPACT_EVERY`]; a failure is logged and tried again
    /// next time.
    pub async fn run(self) {
        let mut every = tokio::time::interval(COMPACT_EVERY);
        loop {
            every.tick().await;
            match self.once().await {
                Ok(0) => {}
                Ok(dropped) => tracing::info!(dropped, "compacted the event log"),
                Err(e) => tracing::warn!(error = %e, "compacting the event log failed; trying again later"),
            }
        }
    }
}
