//! The aggregator over the SQLite log and store: exact counts across restarts and re-reads.

use meter_aggregator::{Aggregator, Settings};
use meter_eventlog::{EventLog, SqliteLog};
use meter_schemas::{Catalog, Event, Period};
use meter_sqlite::Durability;
use meter_store::{Checkpoint, Coverage, SqliteStore, UsageStore};
use std::sync::Arc;
use std::time::Duration;

/// A SQLite log of 4 partitions and a SQLite store in `dir`.
fn log_and_store(dir: &tempfile::TempDir) -> (Arc<SqliteLog>, Arc<dyn UsageStore>) {
    let log = SqliteLog::open(&dir.path().join("events.db"), 4, Durability::Normal).unwrap();
    let store = SqliteStore::open(&dir.path().join("usage.db"), Durability::Normal).unwrap();
    (Arc::new(log), Arc::new(store))
}

fn invocation(tenant: &str, id: u32, tokens: u32) -> Event {
    let props = serde_json::json!({"model": "m", "input_tokens": tokens, "output_tokens": 1});
    Event {
        tenant: tenant.into(),
        id: format!("e{id}"),
        code: "agent.invocation".into(),
        time_us: meter_schemas::period::now_us(),
        implicit_time: false,
        subscription: None,
        source: None,
        properties: props.as_object().unwrap().clone(),
    }
}

/// The tenant's usage this month, with the watermark of its partition (of 4).
async fn usage(store: &dyn UsageStore, tenant: &str) -> meter_store::PeriodUsage {
    let period = Period::containing(meter_schemas::period::now_us());
    let partition = meter_schemas::partition::partition_for(tenant, 4);
    store.usage(tenant, period, Coverage { consumer: "meter-aggregator", partition }).await.unwrap()
}

async fn tokens(store: &dyn UsageStore, tenant: &str) -> String {
    let usage = usage(store, tenant).await;
    usage.meters.get("agent_tokens").and_then(|m| m.period.value).map_or("0".into(), |v| v.to_string())
}

async fn wait_for(store: &dyn UsageStore, tenant: &str, want: &str) {
    for _ in 0..200 {
        if tokens(store, tenant).await == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{tenant}: expected {want}, have {}", tokens(store, tenant).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_exactly_across_restarts_and_rereads() {
    let dir = tempfile::tempdir().unwrap();
    let (log, store) = log_and_store(&dir);
    let catalog = Arc::new(Catalog::new(vec![]).unwrap());
    let start =
        || Aggregator::start(log.reader().unwrap(), store.clone(), catalog.clone(), Settings::default()).unwrap();

    log.append(&(0..100).map(|i| invocation("a", i, 10)).collect::<Vec<_>>()).await.unwrap();
    let agg = start();
    wait_for(&*store, "a", "1100").await;
    agg.drain_and_stop().unwrap();

    // Rewind the checkpoint as if the process had died before committing: the re-read counts nothing twice.
    let db = meter_sqlite::rusqlite::Connection::open(dir.path().join("usage.db")).unwrap();
    assert_eq!(db.execute("UPDATE checkpoints SET next_offset = 0", []).unwrap(), 4);
    drop(db);
    log.append(&(100..150).map(|i| invocation("a", i, 10)).collect::<Vec<_>>()).await.unwrap();
    log.append(&(0..10).map(|i| invocation("b", i, 1)).collect::<Vec<_>>()).await.unwrap();
    let agg = start();
    wait_for(&*store, "a", "1650").await;
    wait_for(&*store, "b", "20").await;
    agg.drain_and_stop().unwrap();
    let usage = usage(&*store, "a").await;
    assert_eq!(usage.meters["agent_invocations"].period.value.unwrap().to_string(), "150");
    assert!(usage.watermark_us.is_some(), "a caught-up aggregator publishes a watermark");
}

/// A store whose first `fail` applies fail, as a full disk or a locked file would, and which
/// records how many events each batch it applied held.
struct Flaky {
    inner: Arc<dyn UsageStore>,
    fail: std::sync::atomic::AtomicUsize,
    sizes: std::sync::Mutex<Vec<usize>>,
}

impl Flaky {
    fn new(inner: Arc<dyn UsageStore>, fail: usize) -> Arc<Self> {
        Arc::new(Flaky { inner, fail: fail.into(), sizes: Default::default() })
    }
}

#[async_trait::async_trait]
impl UsageStore for Flaky {
    fn checkpoint(&self, consumer: &str) -> Result<Checkpoint, meter_store::Error> {
        self.inner.checkpoint(consumer)
    }
    fn apply(
        &self,
        consumer: &str,
        meters: &[meter_schemas::MeterDef],
        events: &[meter_store::Metered],
        progress: &meter_store::Progress,
    ) -> Result<meter_store::Applied, meter_store::Error> {
        let left = self.fail.load(std::sync::atomic::Ordering::SeqCst);
        if left > 0 {
            self.fail.store(left - 1, std::sync::atomic::Ordering::SeqCst);
            return Err(meter_store::Error::UnknownMeter(usize::MAX));
        }
        // Recorded before the batch commits, so that a test seeing its counts sees its size.
        self.sizes.lock().unwrap().push(events.len());
        self.inner.apply(consumer, meters, events, progress)
    }
    fn advance_watermark(
        &self,
        consumer: &str,
        partitions: &[u32],
        watermark_us: i64,
    ) -> Result<(), meter_store::Error> {
        self.inner.advance_watermark(consumer, partitions, watermark_us)
    }
    async fn usage(
        &self,
        tenant: &str,
        period: Period,
        coverage: Coverage<'_>,
    ) -> Result<meter_store::PeriodUsage, meter_store::Error> {
        self.inner.usage(tenant, period, coverage).await
    }
    async fn daily(
        &self,
        tenant: &str,
        from: meter_store::Date,
        to: meter_store::Date,
    ) -> Result<meter_store::Series, meter_store::Error> {
        self.inner.daily(tenant, from, to).await
    }
    async fn period_totals_in(
        &self,
        period: Period,
        after: Option<&str>,
        upto: Option<&str>,
    ) -> Result<meter_store::Totals, meter_store::Error> {
        self.inner.period_totals_in(period, after, upto).await
    }

    async fn breakdown(&self, tenant: &str, period: Period) -> Result<meter_store::Breakdown, meter_store::Error> {
        self.inner.breakdown(tenant, period).await
    }

    async fn watermark(&self, consumer: &str, partitions: u32) -> Result<Option<i64>, meter_store::Error> {
        self.inner.watermark(consumer, partitions).await
    }

    async fn positions(&self, consumer: &str) -> Result<Vec<(u32, u64)>, meter_store::Error> {
        self.inner.positions(consumer).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_batches_are_retried_not_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let (log, inner) = log_and_store(&dir);
    let flaky = Flaky::new(inner.clone(), 3);
    let catalog = Arc::new(Catalog::new(vec![]).unwrap());
    log.append(&(0..40).map(|i| invocation("a", i, 10)).collect::<Vec<_>>()).await.unwrap();
    let agg = Aggregator::start(log.reader().unwrap(), flaky.clone(), catalog, Settings::default()).unwrap();
    let mut saw_failure = false;
    for _ in 0..100 {
        saw_failure |= agg.failure().is_some();
        if tokens(&*inner, "a").await == "440" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(saw_failure, "the failure is reported while batches fail");
    wait_for(&*inner, "a", "440").await;
    assert_eq!(agg.failure(), None, "a successful batch clears the failure");
    agg.drain_and_stop().unwrap();
}

/// A reader that cuts the last byte off the record at `offset` of every partition, as a damaged
/// log would hold it, until `mended`.
struct Damaging {
    inner: Box<dyn meter_eventlog::LogReader>,
    offset: u64,
    mended: Arc<std::sync::atomic::AtomicBool>,
}

impl meter_eventlog::LogReader for Damaging {
    fn seek(&mut self, positions: &[meter_eventlog::Position]) {
        self.inner.seek(positions)
    }
    fn poll(&mut self, max: usize, timeout: Duration) -> Result<meter_eventlog::Batch, meter_eventlog::Error> {
        self.inner.poll(max, timeout)
    }
    fn poll_encoded(
        &mut self,
        max: usize,
        timeout: Duration,
    ) -> Result<meter_eventlog::Batch<meter_eventlog::Encoded>, meter_eventlog::Error> {
        let mut batch = self.inner.poll_encoded(max, timeout)?;
        if !self.mended.load(std::sync::atomic::Ordering::SeqCst) {
            for r in batch.records.iter_mut().filter(|r| r.position.offset == self.offset) {
                r.event.pop();
            }
        }
        Ok(batch)
    }
    fn owned(&self) -> Vec<u32> {
        self.inner.owned()
    }
}

/// A damaged record stops its batch, with where it is and what is wrong, and nothing of the
/// batch is counted; the records are read again (from the checkpoint) until it can be read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_record_holds_its_batch_back_and_says_where_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let (log, store) = log_and_store(&dir);
    let catalog = Arc::new(Catalog::new(vec![]).unwrap());
    log.append(&(0..5).map(|i| invocation("a", i, 10)).collect::<Vec<_>>()).await.unwrap();
    let mended = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = Damaging { inner: log.reader().unwrap(), offset: 2, mended: mended.clone() };
    let agg = Aggregator::start(Box::new(reader), store.clone(), catalog, Settings::default()).unwrap();
    let mut failure = None;
    for _ in 0..200 {
        failure = agg.failure();
        if failure.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let partition = meter_schemas::partition::partition_for("a", 4);
    let failure = failure.expect("the damaged record is reported");
    assert!(
        failure.starts_with(&format!("corrupt record at partition {partition} offset 2: ")),
        "where it is: {failure}"
    );
    assert!(failure.contains("meter's format"), "what is wrong: {failure}");
    assert_eq!(tokens(&*store, "a").await, "0", "nothing of the batch is counted");
    assert!(store.checkpoint("meter-aggregator").unwrap().positions.is_empty(), "the checkpoint stays");
    mended.store(true, std::sync::atomic::Ordering::SeqCst);
    wait_for(&*store, "a", "55").await;
    agg.drain_and_stop().unwrap();
}

/// A backlog is counted in batches that double, up to `max_batch_size`, while the log holds more
/// than a batch (each batch rewrites every counter it touches once, so fewer, larger batches
/// catch up for less); once a poll finds nothing, batches start again from `batch_size`, even
/// when the backlog's last batch was full and so not known to be caught up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_is_counted_in_batches_that_grow_and_shrink_again_once_caught_up() {
    let dir = tempfile::tempdir().unwrap();
    let (log, inner) = log_and_store(&dir);
    let store = Flaky::new(inner.clone(), 0);
    let catalog = Arc::new(Catalog::new(vec![]).unwrap());
    // A tenant in each of the 4 partitions: a read of `limit` takes a quarter of it from each.
    let tenants: Vec<String> = (0..4)
        .map(|p| (0..).map(|i| format!("t{i}")).find(|t| meter_schemas::partition::partition_for(t, 4) == p).unwrap())
        .collect();
    let events = |from: u32, to: u32| -> Vec<Event> {
        (from..to).map(|i| invocation(&tenants[i as usize % tenants.len()], i, 1)).collect()
    };
    // 102 events a partition: reads of 2, 4, then 8 twelve times, the last of them full.
    log.append(&events(0, 408)).await.unwrap();
    let settings =
        Settings { batch_size: 8, max_batch_size: 32, poll_timeout: Duration::from_millis(20), ..Settings::default() };
    let agg = Aggregator::start(log.reader().unwrap(), store.clone(), catalog, settings).unwrap();
    for t in &tenants {
        wait_for(&*inner, t, "204").await;
    }
    let backlog = std::mem::take(&mut *store.sizes.lock().unwrap());
    assert_eq!(backlog.iter().sum::<usize>(), 408, "{backlog:?}");
    assert!(backlog[0] <= 8, "the first batch is at most batch_size: {backlog:?}");
    assert!(backlog.iter().all(|&n| n <= 32), "no batch above max_batch_size: {backlog:?}");
    assert!(backlog.iter().any(|&n| n > 16), "batches grow while a backlog lasts: {backlog:?}");
    assert_eq!(backlog.last(), Some(&32), "the backlog ends on a full batch: {backlog:?}");

    // Polls that find nothing (every 20 ms) come before the next events.
    tokio::time::sleep(Duration::from_millis(200)).await;
    log.append(&events(408, 488)).await.unwrap();
    for t in &tenants {
        wait_for(&*inner, t, "244").await;
    }
    agg.drain_and_stop().unwrap();
    let after = store.sizes.lock().unwrap().clone();
    assert_eq!(after.iter().sum::<usize>(), 80, "{after:?}");
    assert!(after[0] <= 8, "after a poll that found nothing, batches start again from batch_size: {after:?}");
}

/// A store whose checkpoint is behind what a compacted log holds (a usage store lost and started
/// empty) is refused, naming the partition and offsets, rather than counting only what is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_behind_the_compacted_log_is_refused() {
    use meter_eventlog::Position;
    let dir = tempfile::tempdir().unwrap();
    let (log, store) = log_and_store(&dir);
    let catalog = Arc::new(Catalog::new(vec![]).unwrap());
    log.append(&(0..10).map(|i| invocation("a", i, 10)).collect::<Vec<_>>()).await.unwrap();
    let partition = meter_schemas::partition::partition_for("a", 4);
    assert_eq!(log.compact(&[Position { partition, offset: 4 }], i64::MAX).await.unwrap(), 4);

    let agg = Aggregator::start(log.reader().unwrap(), store.clone(), catalog, Settings::default()).unwrap();
    let mut failure = None;
    for _ in 0..200 {
        failure = agg.failure();
        if failure.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let failure = failure.expect("the aggregator refuses to resume");
    assert!(
        failure.contains(&format!("offset 0 of partition {partition}")) && failure.contains("from offset 4 on"),
        "{failure}"
    );
    assert_eq!(tokens(&*store, "a").await, "0", "nothing counted");
    drop(agg);
}
