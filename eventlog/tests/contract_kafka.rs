//! The event-log contract against Kafka: librdkafka's mock cluster (a real Kafka-protocol broker
//! in-process), or the broker named by `METER_TEST_KAFKA=HOST:PORT`.

use meter_eventlog::contract::{Harness, mock_kafka};
use meter_eventlog::{EventLog, KafkaLog, KafkaSettings, LogReader};
use rdkafka::consumer::Consumer;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

/// A Kafka for one test. The mock cluster is not `Send`, so a thread owns it until the harness drops.
struct Kafka {
    settings: KafkaSettings,
    _stop: Option<mpsc::Sender<()>>,
}

fn kafka() -> Kafka {
    let mut settings = KafkaSettings::new("");
    settings.partitions = 4;
    if let Ok(broker) = std::env::var("METER_TEST_KAFKA") {
        settings.bootstrap = broker;
        settings.topic = format!("usage.events.test-{}", rand_suffix());
        return Kafka { settings, _stop: None };
    }
    let (bootstrap, stop) = mock_kafka(Some((&settings.topic, 4)));
    settings.bootstrap = bootstrap;
    Kafka { settings, _stop: Some(stop) }
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
}

#[async_trait::async_trait]
impl Harness for Kafka {
    async fn open(&self) -> Arc<dyn EventLog> {
        Arc::new(KafkaLog::open(self.settings.clone()).await.expect("kafka log opens"))
    }
}

meter_eventlog::eventlog_contract!(kafka());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_with_another_partition_count_is_refused() {
    let k = kafka();
    // The topic exists with 4 partitions: made by this first open on a real broker (the mock
    // has it from the start, having no CreateTopics).
    k.open().await;
    let mut other = k.settings.clone();
    other.partitions = 8;
    let err = KafkaLog::open(other).await.err().expect("refused");
    assert!(err.to_string().contains("cannot change"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_is_down_fails_the_append_instead_of_acknowledging() {
    let mut settings = KafkaSettings::new("127.0.0.1:1");
    settings.delivery_timeout = std::time::Duration::from_millis(500);
    // Nothing listens on port 1: opening fails, or (if metadata was cached) the append does.
    match KafkaLog::open(settings).await {
        Err(e) => assert!(e.to_string().contains("kafka"), "{e}"),
        Ok(log) => assert!(log.append(&[meter_eventlog::contract::event("a", "1", 1)]).await.is_err()),
    }
}

/// The producer is made at the first append, but settings librdkafka would refuse it with still
/// fail the open, as when it was made there: a process does not start and answer 503 for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_settings_librdkafka_refuses_fail_the_open() {
    let k = kafka();
    let mut lingering = k.settings.clone();
    lingering.linger_ms = 5_000;
    lingering.delivery_timeout = Duration::from_secs(5);
    let err = KafkaLog::open(lingering).await.err().expect("a linger as long as the delivery timeout is refused");
    assert!(err.to_string().contains("linger"), "{err}");
    let mut endless = k.settings.clone();
    endless.delivery_timeout = Duration::from_secs(3_600);
    let err = KafkaLog::open(endless).await.err().expect("a delivery timeout past librdkafka's range is refused");
    assert!(err.to_string().contains("request.timeout.ms"), "{err}");
    KafkaLog::open(k.settings.clone()).await.expect("the defaults open");
}

/// Polls every reader (resuming each from offset 0 when its share changes) until each owns a
/// share and together they own every partition once: for up to a minute (a rebalance took
/// over 20 s once, with the rest of the suite's mock clusters on two cores).
fn settle(readers: &mut [Box<dyn LogReader>]) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        for r in readers.iter_mut() {
            if r.poll(1, Duration::from_millis(25)).unwrap().reassigned {
                r.seek(&[]);
            }
        }
        let mut owned: Vec<u32> = readers.iter().flat_map(|r| r.owned()).collect();
        owned.sort();
        if owned == vec![0, 1, 2, 3] && readers.iter().all(|r| !r.owned().is_empty()) {
            return;
        }
    }
    panic!("the group never settled: {:?}", readers.iter().map(|r| r.owned()).collect::<Vec<_>>());
}

/// Readers in one consumer group share the partitions without overlap, and a reader that leaves
/// hands its partitions to the one that stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_group_shares_the_partitions_and_hands_them_over() {
    let k = kafka();
    let log = k.open().await;
    let mut readers = vec![log.reader().unwrap(), log.reader().unwrap()];
    settle(&mut readers);
    drop(readers.pop());
    settle(&mut readers);
    assert_eq!(readers[0].owned(), vec![0, 1, 2, 3]);
}

/// A read never spins on the fraction of a millisecond in its wait. librdkafka waits in whole
/// milliseconds and rdkafka truncates: a wait of 0.7 ms (the aggregator's linger after a small
/// read) was none, and the reader polled again and again until its deadline (at half the maximum of
/// `benches/kafka.sh`, a fifth of the aggregator's CPU went to the clock and the queue's lock;
/// BENCHMARKS.md); a wait of 1.7 ms was passed whole, and rdkafka's own loop polled its last 0.7 ms
/// the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_with_a_fraction_of_a_millisecond_sleeps_it_rather_than_spins() {
    let k = kafka();
    let log = k.open().await;
    let mut readers = vec![log.reader().unwrap()];
    settle(&mut readers);
    // This thread's CPU time, in the kernel's clock ticks (USER_HZ: 100 a second).
    let ticks = || -> u64 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        let fields: Vec<&str> = stat.rsplit(')').next().unwrap().split_whitespace().collect();
        fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
    };
    for wait in [Duration::from_micros(700), Duration::from_micros(1_700)] {
        let (start, before) = (std::time::Instant::now(), ticks());
        let mut polls = 0;
        while start.elapsed() < Duration::from_millis(600) {
            assert!(readers[0].poll(100, wait).unwrap().records.is_empty());
            polls += 1;
        }
        let (used_ms, wall_ms) = ((ticks() - before) * 10, start.elapsed().as_millis() as u64);
        // Each read waited its whole time: the fraction was slept, not dropped.
        assert!(start.elapsed() >= wait * polls, "{polls} reads of {wait:?} in {wall_ms} ms: some ended early");
        assert!(
            used_ms * 4 < wall_ms,
            "{used_ms} ms of CPU in {wall_ms} ms over {polls} reads of {wait:?}: the reader spun"
        );
    }
}

/// Asking for a missing topic does not let the broker create it with its default partition count
/// (which the check would then refuse): meter creates it, or says it could not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_topic_is_not_auto_created_with_the_brokers_defaults() {
    if std::env::var("METER_TEST_KAFKA").is_ok() {
        return; // a real broker creates the topic; the contract tests cover that
    }
    let (bootstrap, stop) = mock_kafka(None);
    let mut settings = KafkaSettings::new(&bootstrap);
    settings.partitions = 8;
    settings.delivery_timeout = Duration::from_secs(1);
    // The mock cluster auto-creates topics (with 4 partitions) but has no CreateTopics.
    let err = KafkaLog::open(settings).await.err().expect("the mock cannot create topics");
    let err = err.to_string();
    assert!(err.contains("create it with 8 partitions"), "{err}");
    drop(stop);
}

/// A checkpoint whose records the broker has already deleted (retention) is an error the reader
/// reports, never a silent jump to the oldest record left: the events between would never be
/// counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_behind_the_logs_retention_is_an_error_not_a_jump() {
    if std::env::var("METER_TEST_KAFKA").is_ok() {
        return; // needs the mock's small retention (about 5 MB per partition)
    }
    let (bootstrap, stop) = mock_kafka(Some(("usage.events", 1)));
    let mut settings = KafkaSettings::new(&bootstrap);
    settings.partitions = 1;
    let log = KafkaLog::open(settings.clone()).await.unwrap();
    // Incompressible events until the mock drops the oldest segment.
    let mut n = 0u64;
    let dropped = loop {
        let batch: Vec<_> = (0..500)
            .map(|i| {
                let mut e = meter_eventlog::contract::event("t", &format!("e{n}-{i}"), i);
                let noise: String = (0..64)
                    .map(|k| format!("{:016x}", (n * 500 + i + k).wrapping_mul(0x9e37_79b9_7f4a_7c15)))
                    .collect();
                e.properties.insert("noise".into(), noise.into());
                e
            })
            .collect();
        log.append(&batch).await.unwrap();
        n += 1;
        let probe: rdkafka::consumer::BaseConsumer =
            rdkafka::ClientConfig::new().set("bootstrap.servers", &settings.bootstrap).create().unwrap();
        let (low, _) = probe.fetch_watermarks("usage.events", 0, Duration::from_secs(5)).unwrap();
        if low > 0 {
            break low;
        }
        assert!(n < 200, "the mock never dropped a segment");
    };
    let mut reader =
        meter_eventlog::contract::owning_reader(&log, &[meter_eventlog::Position { partition: 0, offset: 0 }]);
    let mut read = 0;
    for _ in 0..100 {
        match reader.poll(10_000, Duration::from_millis(100)) {
            Err(e) => {
                assert!(e.to_string().to_lowercase().contains("offset"), "{e}");
                assert_eq!(read, 0, "nothing was read from after the gap ({dropped} records deleted)");
                drop(stop);
                return;
            }
            Ok(batch) => read += batch.records.len(),
        }
    }
    panic!("read {read} records from a log whose first {dropped} were deleted, and no error");
}
