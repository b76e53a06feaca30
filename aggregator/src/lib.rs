//! The aggregator: reads the event log, turns each event into meter contributions, and applies them
//! to the usage store together with the log positions they cover, in one atomic step.
//!
//! On start it resumes from the checkpoint stored with the tallies, so after a crash it re-reads
//! at most the batch that was in flight; the store's dedup state makes that re-read count nothing
//! twice. It runs on its own thread because every call it makes blocks.

pub mod metric;

use backon::{BackoffBuilder, ExponentialBuilder};
use meter_eventlog::{LogReader, Position};
use meter_schemas::period::now_us;
use meter_schemas::{Catalog, Event};
use meter_store::{Advance, Metered, Progress, UsageStore};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Errors that stop the aggregator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading the log failed.
    #[error(transparent)]
    Log(#[from] meter_eventlog::Error),
    /// Writing the store failed.
    #[error(transparent)]
    Store(#[from] meter_store::Error),
    /// The store's checkpoint is behind what the log still holds: the records between were
    /// compacted away (behind every consumer known then), so they would never be counted.
    #[error(
        "consumer {consumer} stands at offset {at} of partition {partition}, but the log holds records from offset \
         {kept_from} on (it was compacted behind every consumer then known): this store cannot be filled from the \
         log; restore it, or start it on an empty log"
    )]
    Behind {
        /// The consumer.
        consumer: String,
        /// The partition.
        partition: u32,
        /// Where the consumer stands.
        at: u64,
        /// The first offset the log holds.
        kept_from: u64,
    },
}

/// Settings of the aggregator.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Name under which the checkpoint is stored.
    pub consumer: String,
    /// Most records applied in one transaction while the aggregator keeps up. A batch rewrites
    /// each counter it touches once, however many of its events add to it, so a backlog is
    /// counted for less CPU in larger batches (6-19 % less at 40,000 than at 10,000 on Kafka with
    /// SQLite, BENCHMARKS.md, "The aggregator's batches"); a live stream's batches are what
    /// arrived since the last one.
    pub batch_size: usize,
    /// Most records applied in one transaction while a backlog lasts: after a batch not known to
    /// have reached the end of the log (on Kafka the reader asks where its partitions end at most
    /// every 100 ms, so a live stream's batches are mostly not known to), the next may hold twice
    /// as many, up to this; a batch that reached the end, or a poll that found nothing, brings it
    /// back to `batch_size`. No batch waits for more because of it: a read stops at what the
    /// reader has at hand.
    pub max_batch_size: usize,
    /// How long a poll waits for new records.
    pub poll_timeout: Duration,
    /// Least time between watermark writes when idle.
    pub idle_watermark_every: Duration,
    /// After a small read, how long to wait for more records before applying: bigger batches
    /// rewrite each touched tally once for more events.
    pub linger: Duration,
    /// Longest pause between retries of a failing batch.
    pub max_backoff: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            consumer: meter_eventlog::DEFAULT_GROUP.into(),
            batch_size: 40_000,
            max_batch_size: 160_000,
            poll_timeout: Duration::from_millis(200),
            idle_watermark_every: Duration::from_millis(500),
            linger: Duration::from_millis(1),
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// A running aggregator.
pub struct Aggregator {
    stop: Arc<AtomicBool>,
    failure: Arc<Mutex<Option<String>>>,
    thread: JoinHandle<Result<(), Error>>,
}

impl Aggregator {
    /// Starts consuming `reader` into `store` from the stored checkpoint.
    pub fn start(
        reader: Box<dyn LogReader>,
        store: Arc<dyn UsageStore>,
        catalog: Arc<Catalog>,
        settings: Settings,
    ) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let failure = Arc::new(Mutex::new(None));
        let (flag, failing) = (stop.clone(), failure.clone());
        let thread = std::thread::Builder::new().name("meter-aggregator".into()).spawn(move || {
            let result = run(reader, &*store, &catalog, &settings, &flag, &failing);
            if let Err(e) = &result {
                tracing::error!(error = %e, "aggregator stopped");
            }
            result
        })?;
        Ok(Self { stop, failure, thread })
    }

    /// Whether the aggregator thread has ended (it ends only when asked to stop).
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// The last error, while batches keep failing; `None` once one succeeds again.
    pub fn failure(&self) -> Option<String> {
        self.failure.lock().map(|f| f.clone()).unwrap_or(None)
    }

    /// Asks the aggregator to finish what the log holds now, then stop; waits for it.
    pub fn drain_and_stop(self) -> Result<(), Error> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().unwrap_or_else(|_| {
            tracing::error!("aggregator thread panicked");
            Ok(())
        })
    }
}

/// Consumes until stopped. A failed batch is not skipped: after a pause (doubling up to
/// `max_backoff`, with jitter) the
/// aggregator resumes from the checkpoint in the store, so it retries the same records, and
/// `failure` says why meanwhile.
fn run(
    mut reader: Box<dyn LogReader>,
    store: &dyn UsageStore,
    catalog: &Catalog,
    settings: &Settings,
    stop: &AtomicBool,
    failure: &Mutex<Option<String>>,
) -> Result<(), Error> {
    // 100 ms doubling up to `max_backoff`, with jitter so that aggregators failing together do
    // not retry together; started again once a batch got through.
    let policy = ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(settings.max_backoff)
        .with_jitter()
        .without_max_times();
    let mut backoff = policy.build();
    loop {
        let mut progressed = false;
        match consume(&mut *reader, store, catalog, settings, stop, failure, &mut progressed) {
            Ok(Ended::Drained) => return Ok(()),
            Ok(Ended::Reassigned) => continue,
            Err(e) if stop.load(Ordering::SeqCst) => return Err(e),
            Err(Error::Store(e @ meter_store::Error::Fenced { .. })) => {
                // Another aggregator took the partition; the group tells this one at its next poll.
                tracing::info!(error = %e, "aggregator fenced off a partition; resuming from the checkpoint");
                metrics::counter!(metric::FENCED, "consumer" => settings.consumer.clone()).increment(1);
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => {
                if progressed {
                    backoff = policy.build();
                }
                // backon adds its jitter after the cap: keep `max_backoff` a maximum.
                let wait = backoff.next().unwrap_or(settings.max_backoff).min(settings.max_backoff);
                tracing::error!(consumer = %settings.consumer, error = %e, retry_in = ?wait, "batch failed; retrying from the checkpoint");
                metrics::counter!(metric::FAILURES, "consumer" => settings.consumer.clone()).increment(1);
                if let Ok(mut f) = failure.lock() {
                    *f = Some(e.to_string());
                }
                std::thread::sleep(wait);
            }
        }
    }
}

/// Why [`consume`] returned without an error.
enum Ended {
    /// Asked to stop, and everything in the log is counted.
    Drained,
    /// The partitions this aggregator owns changed; resume from the checkpoint.
    Reassigned,
}

fn consume(
    reader: &mut dyn LogReader,
    store: &dyn UsageStore,
    catalog: &Catalog,
    settings: &Settings,
    stop: &AtomicBool,
    failure: &Mutex<Option<String>>,
    progressed: &mut bool,
) -> Result<Ended, Error> {
    let start = store.checkpoint(&settings.consumer)?;
    let positions: Vec<Position> =
        start.positions.iter().map(|&(partition, offset)| Position { partition, offset }).collect();
    reader.seek(&positions);
    let owned = reader.owned();
    // Where each owned partition stands in the store; a batch moves it only from here.
    let mut at: BTreeMap<u32, u64> =
        owned.iter().map(|p| (*p, positions.iter().find(|q| q.partition == *p).map_or(0, |q| q.offset))).collect();
    for kept in reader.kept_from()? {
        if let Some(&at) = at.get(&kept.partition).filter(|&&at| at < kept.offset) {
            let (consumer, partition, kept_from) = (settings.consumer.clone(), kept.partition, kept.offset);
            return Err(Error::Behind { consumer, partition, at, kept_from });
        }
    }
    tracing::info!(consumer = %settings.consumer, partitions = ?owned, "aggregator resumed from checkpoint");
    metrics::gauge!(metric::PARTITIONS, "consumer" => settings.consumer.clone()).set(owned.len() as f64);
    let mut last_watermark = Instant::now() - settings.idle_watermark_every;
    // Most records in the next batch: `batch_size`, doubling while a backlog lasts.
    let mut limit = settings.batch_size;
    loop {
        let stopping = stop.load(Ordering::SeqCst);
        let timeout = if stopping { Duration::ZERO } else { settings.poll_timeout };
        let mut batch = reader.poll_encoded(limit, timeout)?;
        // A small batch waits up to `linger` to fill (by size and by time).
        let lingering = Instant::now();
        let linger = !stopping && !batch.records.is_empty() && batch.records.len() < settings.batch_size / 4;
        while linger && !batch.reassigned && batch.records.len() < limit {
            let Some(left) = settings.linger.checked_sub(lingering.elapsed()).filter(|l| !l.is_zero()) else { break };
            let more = reader.poll_encoded(limit - batch.records.len(), left)?;
            batch.records.extend(more.records);
            batch.caught_up = more.caught_up;
            batch.started_us = more.started_us;
            batch.reassigned = more.reassigned;
        }
        if batch.reassigned {
            return Ok(Ended::Reassigned);
        }
        if batch.records.is_empty() {
            if batch.caught_up && last_watermark.elapsed() >= settings.idle_watermark_every {
                store.advance_watermark(&settings.consumer, &owned, batch.started_us)?;
                last_watermark = Instant::now();
            }
            metrics::gauge!(metric::LAG, "consumer" => settings.consumer.clone()).set(0.0);
            // Nothing at hand: no backlog, whatever the last batch knew.
            limit = settings.batch_size;
            if stopping && batch.caught_up {
                tracing::info!("aggregator drained the log and stopped");
                return Ok(Ended::Drained);
            }
            continue;
        }
        let started = Instant::now();
        let mut next: BTreeMap<u32, u64> = BTreeMap::new();
        let mut skipped = 0;
        // When each event was stored, by millisecond (Kafka's timestamps have no finer grain).
        let mut stored_ms: BTreeMap<i64, usize> = BTreeMap::new();
        // Each event is read in place: only what the meters take of it is copied out.
        let metered = std::mem::take(&mut batch.records)
            .into_iter()
            .map(|r| {
                let Position { partition, offset } = r.position;
                let p = next.entry(partition).or_default();
                *p = (*p).max(offset + 1);
                *stored_ms.entry(r.ingested_us.div_euclid(1000)).or_default() += 1;
                let metered = Event::view(&r.event, |e| {
                    let (contributions, s) = catalog.contributions_of(e.code, e);
                    skipped += s;
                    let groups = catalog.groups_of(&contributions, e);
                    Metered {
                        groups,
                        tenant: e.tenant.to_owned(),
                        id: e.id.to_owned(),
                        offset,
                        time_us: e.time_us,
                        contributions,
                    }
                });
                metered.map_err(|e| meter_eventlog::Error::Corrupt { partition, offset, reason: e.to_string() })
            })
            .collect::<Result<Vec<Metered>, _>>()?;
        let progress = Progress {
            partitions: at
                .iter()
                .map(|(p, from)| Advance { partition: *p, from: *from, to: next.get(p).copied().unwrap_or(*from) })
                .collect(),
            watermark_us: batch.caught_up.then_some(batch.started_us),
        };
        let applied = store.apply(&settings.consumer, catalog.meters(), &metered, &progress)?;
        for a in &progress.partitions {
            at.insert(a.partition, a.to);
        }
        reader.stored(
            &progress.partitions.iter().map(|a| Position { partition: a.partition, offset: a.to }).collect::<Vec<_>>(),
        );
        *progressed = true;
        if let Ok(mut f) = failure.lock() {
            f.take();
        }
        if batch.caught_up {
            last_watermark = Instant::now();
        }
        let now = now_us();
        metrics::counter!(metric::EVENTS, "consumer" => settings.consumer.clone(), "outcome" => "counted")
            .increment(applied.counted as u64);
        metrics::counter!(metric::EVENTS, "consumer" => settings.consumer.clone(), "outcome" => "duplicate")
            .increment(applied.duplicates as u64);
        metrics::counter!(metric::SKIPPED, "consumer" => settings.consumer.clone()).increment(skipped as u64);
        metrics::histogram!(metric::BATCH_DURATION, "consumer" => settings.consumer.clone())
            .record(started.elapsed().as_secs_f64());
        let to_counter = metrics::histogram!(metric::EVENT_TO_COUNTER, "consumer" => settings.consumer.clone());
        for (ms, n) in stored_ms {
            to_counter.record_many((now - ms * 1000).max(0) as f64 / 1e6, n);
        }
        metrics::gauge!(metric::LAG, "consumer" => settings.consumer.clone()).set(if batch.caught_up {
            0.0
        } else {
            settings.batch_size as f64
        });
        limit = if batch.caught_up {
            settings.batch_size
        } else {
            limit.saturating_mul(2).min(settings.max_batch_size).max(settings.batch_size)
        };
        if skipped > 0 {
            tracing::warn!(skipped, "events the current meters cannot read (configuration changed since ingest)");
        }
    }
}
