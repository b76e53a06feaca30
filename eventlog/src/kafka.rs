//! The event log on Kafka: one topic (`usage.events` by default), records keyed by tenant and sent
//! to the partition Kafka's default partitioner picks for that key (murmur2), so a tenant lands in
//! the same partition here as in the embedded log.
//!
//! The producer is idempotent with `acks=all`; an append answers only when every record has its
//! delivery report. Kafka cannot refuse a repeated `(tenant, id)` at append, so this log does not
//! deduplicate ([`EventLog::deduplicates`] is false): a retried append may store a record twice,
//! and the aggregator's dedup state counts it once.

use crate::{Batch, Encoded, Error, EventLog, LogReader, Outcome, Position, Record, decoded, encoded};
use async_trait::async_trait;
use meter_schemas::Event;
use meter_schemas::partition::partition_for;
use meter_schemas::period::now_us;
use once_cell::sync::OnceCell;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, ProducerContext, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Where the Kafka log is and how it produces.
#[derive(Clone, Debug)]
pub struct KafkaSettings {
    /// `host:port[,host:port…]`.
    pub bootstrap: String,
    /// Topic of the events.
    pub topic: String,
    /// Partitions of the topic (created with this many when missing; checked when present).
    pub partitions: u32,
    /// `linger.ms` of the producer.
    pub linger_ms: u32,
    /// How long a record may wait for its delivery report before the append fails.
    pub delivery_timeout: Duration,
    /// Records the producer may hold; past it appends fail at once (503) instead of queueing.
    pub queue_max_messages: u32,
    /// The aggregators' consumer group; partitions are shared among its members.
    pub group: String,
    /// How long a silent group member keeps its partitions (`session.timeout.ms`).
    pub session_timeout: Duration,
}

impl KafkaSettings {
    /// Defaults for the given brokers.
    pub fn new(bootstrap: &str) -> Self {
        Self {
            bootstrap: bootstrap.to_string(),
            topic: "usage.events".into(),
            partitions: 4,
            linger_ms: 2,
            delivery_timeout: Duration::from_secs(10),
            queue_max_messages: 200_000,
            group: crate::DEFAULT_GROUP.into(),
            session_timeout: Duration::from_secs(10),
        }
    }
}

fn unavailable(e: impl std::fmt::Display) -> Error {
    Error::Unavailable(format!("kafka: {e}"))
}

/// The delivery reports of one append, filled in by the producer's thread.
struct Pending {
    reports: Mutex<Vec<Option<Result<Position, String>>>>,
    remaining: AtomicUsize,
    /// Wakes the append once every record has its report: one wake-up an append, not one a record.
    done: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
}

/// Routes each delivery report to its append.
struct Deliveries;

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = Box<(Arc<Pending>, usize)>;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: Self::DeliveryOpaque) {
        let (pending, i) = *opaque;
        let report = match result {
            Ok(m) => Ok(Position { partition: m.partition() as u32, offset: m.offset() as u64 }),
            Err((e, _)) => Err(e.to_string()),
        };
        if let Some(slot) = pending.reports.lock().unwrap_or_else(|e| e.into_inner()).get_mut(i) {
            *slot = Some(report);
        }
        if pending.remaining.fetch_sub(1, Ordering::AcqRel) == 1
            && let Some(done) = pending.done.lock().unwrap_or_else(|e| e.into_inner()).take()
        {
            let _ = done.send(());
        }
    }
}

/// The Kafka event log.
pub struct KafkaLog {
    /// Made at the first append: a process that only reads the log (an aggregator, the sink)
    /// has none, and none of its polling thread's CPU (rdkafka's thread spins the last fraction
    /// of a millisecond of each of its 100 ms polls). Concurrent first appends make one: the
    /// others wait for it.
    producer: OnceCell<ThreadedProducer<Deliveries>>,
    settings: KafkaSettings,
}

impl KafkaLog {
    /// Connects, and creates the topic when it is missing. A topic with another partition count
    /// is refused: tenants would move between partitions.
    pub async fn open(settings: KafkaSettings) -> Result<Self, Error> {
        // The producer's settings are checked now, as when it was made here: each value by
        // librdkafka (without making a client), and the one rule between two of them that it
        // checks only when a client is made.
        if u128::from(settings.linger_ms) >= settings.delivery_timeout.as_millis() {
            return Err(unavailable(format!(
                "the producer's linger ({} ms) must be shorter than its delivery timeout ({:?})",
                settings.linger_ms, settings.delivery_timeout
            )));
        }
        producer_config(&settings).create_native_config().map_err(unavailable)?;
        let partitions = PartitionCount::Exactly(settings.partitions);
        ensure_topic(&settings.bootstrap, &settings.topic, partitions, settings.delivery_timeout).await?;
        Ok(Self { producer: OnceCell::new(), settings })
    }

    /// The producer, made at the first call.
    fn producer(&self) -> Result<&ThreadedProducer<Deliveries>, Error> {
        self.producer
            .get_or_try_init(|| producer_config(&self.settings).create_with_context(Deliveries).map_err(unavailable))
    }
}

/// The producer's configuration: idempotent, every replica's acknowledgement, lz4.
fn producer_config(settings: &KafkaSettings) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &settings.bootstrap)
        // Asking for a missing topic must not create it with the broker's default partitions.
        .set("allow.auto.create.topics", "false")
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", "lz4")
        .set("linger.ms", settings.linger_ms.to_string())
        .set("batch.num.messages", "10000")
        .set("message.timeout.ms", settings.delivery_timeout.as_millis().to_string())
        // How long the broker may wait for replicas before failing a send (a bound for
        // ingest's lateness margin, see `Config::ingest_limits`).
        .set("request.timeout.ms", settings.delivery_timeout.as_millis().to_string())
        .set("queue.buffering.max.messages", settings.queue_max_messages.to_string());
    config
}

/// The partition count a topic must have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PartitionCount {
    /// Exactly this many: records are placed by partition, so another count is refused.
    Exactly(u32),
    /// This many when the topic is created; an existing topic may have any count.
    CreateWith(u32),
}

/// Makes sure `topic` exists on the cluster at `bootstrap`: creates it when missing (a metadata
/// request must not let the broker auto-create it with its own default count) and refuses an
/// existing topic whose partition count `partitions` does not allow. The one place meter creates
/// Kafka topics.
pub async fn ensure_topic(
    bootstrap: &str,
    topic: &str,
    partitions: PartitionCount,
    timeout: Duration,
) -> Result<(), Error> {
    let admin: Arc<AdminClient<DefaultClientContext>> = Arc::new(
        ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("allow.auto.create.topics", "false")
            .create()
            .map_err(unavailable)?,
    );
    // Off the runtime: the metadata request blocks.
    let (probe, name) = (admin.clone(), topic.to_string());
    let found = tokio::task::spawn_blocking(move || {
        let metadata = probe.inner().fetch_metadata(Some(&name), timeout)?;
        Ok::<_, rdkafka::error::KafkaError>(
            metadata.topics().iter().find(|t| t.name() == name && t.error().is_none()).map(|t| t.partitions().len()),
        )
    })
    .await
    .map_err(|e| unavailable(format!("the metadata request's task failed: {e}")))?
    .map_err(unavailable)?;
    let (want, exact) = match partitions {
        PartitionCount::Exactly(n) => (n, true),
        PartitionCount::CreateWith(n) => (n, false),
    };
    match found {
        Some(n) if n > 0 && (!exact || n == want as usize) => Ok(()),
        Some(n) if n > 0 => Err(Error::Unavailable(format!(
            "topic {topic} has {n} partitions but {want} are configured; the partition count of a log cannot change"
        ))),
        _ => {
            let new = NewTopic::new(topic, want as i32, TopicReplication::Fixed(1));
            let options = AdminOptions::new().operation_timeout(Some(timeout)).request_timeout(Some(timeout));
            let created = admin.create_topics([&new], &options).await.map_err(|e| {
                unavailable(format!(
                    "topic {topic} does not exist and creating it failed ({e}); create it with {want} partitions"
                ))
            })?;
            for result in created {
                match result {
                    Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                    Err((name, code)) => return Err(unavailable(format!("cannot create topic {name}: {code}"))),
                }
            }
            Ok(())
        }
    }
}

#[async_trait]
impl EventLog for KafkaLog {
    fn partitions(&self) -> u32 {
        self.settings.partitions
    }

    fn deduplicates(&self) -> bool {
        false
    }

    fn ready_to_append(&self) -> Result<(), Error> {
        self.producer().map(|_| ())
    }

    async fn append(&self, events: &[Event]) -> Result<Vec<Outcome>, Error> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let (done, delivered) = tokio::sync::oneshot::channel();
        let pending = Arc::new(Pending {
            reports: Mutex::new(vec![None; events.len()]),
            remaining: AtomicUsize::new(events.len()),
            done: Mutex::new(Some(done)),
        });
        let producer = self.producer()?;
        for (i, e) in events.iter().enumerate() {
            let payload = e.encode();
            let partition = partition_for(&e.tenant, self.settings.partitions);
            let record = BaseRecord::with_opaque_to(&self.settings.topic, Box::new((pending.clone(), i)))
                .partition(partition as i32)
                .key(e.tenant.as_bytes())
                .payload(&payload);
            match producer.send(record) {
                Ok(()) => {}
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    return Err(Error::Unavailable("kafka: the producer queue is full".into()));
                }
                Err((e, _)) => return Err(unavailable(e)),
            }
        }
        delivered.await.map_err(|_| Error::Unavailable("kafka: the producer stopped".into()))?;
        let reports = std::mem::take(&mut *pending.reports.lock().unwrap_or_else(|e| e.into_inner()));
        reports
            .into_iter()
            .map(|r| match r {
                Some(Ok(position)) => Ok(Outcome::Appended(position)),
                Some(Err(e)) => Err(unavailable(e)),
                None => Err(Error::Unavailable("kafka: a delivery report is missing".into())),
            })
            .collect()
    }

    fn reader(&self) -> Result<Box<dyn LogReader>, Error> {
        self.reader_in(&self.settings.group)
    }

    fn reader_in(&self, group: &str) -> Result<Box<dyn LogReader>, Error> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.settings.bootstrap)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            // A checkpoint the log no longer holds (retention deleted uncounted records) is an
            // error the aggregator reports and retries, never a silent jump to another offset.
            .set("auto.offset.reset", "error")
            .set("isolation.level", "read_committed")
            .set("session.timeout.ms", self.settings.session_timeout.as_millis().to_string())
            .set("heartbeat.interval.ms", (self.settings.session_timeout.as_millis() / 5).max(100).to_string())
            // Short: an idle partition's next record waits for the held fetch to return.
            .set("fetch.wait.max.ms", "2");
        let consumer = join(&config, &self.settings.topic)?;
        let mut ends_config = ClientConfig::new();
        ends_config.set("bootstrap.servers", &self.settings.bootstrap).set("isolation.level", "read_committed");
        Ok(Box::new(KafkaReader {
            consumer,
            config,
            rebuild: false,
            failing_since: None,
            topic: self.settings.topic.clone(),
            next: BTreeMap::new(),
            last_ends: None,
            last_commit: None,
            ends_client: ends_config.create().map_err(unavailable)?,
            ends_config,
        }))
    }

    async fn compact(&self, _behind: &[Position], _arrived_before_us: i64) -> Result<u64, Error> {
        // The topic's retention (`retention.ms`, the broker's) decides when records go; a reader
        // behind it fails (`auto.offset.reset=error`) rather than skipping them.
        Ok(0)
    }
}

fn join(config: &ClientConfig, topic: &str) -> Result<BaseConsumer<GroupContext>, Error> {
    let consumer: BaseConsumer<GroupContext> =
        config.create_with_context(GroupContext::default()).map_err(unavailable)?;
    consumer.subscribe(&[topic]).map_err(unavailable)?;
    Ok(consumer)
}

/// Takes the consumer group's decisions: a revocation is carried out at once; an assignment is
/// only noted, and carried out by [`LogReader::seek`] with the offsets of the checkpoint that the
/// caller reads from its store (the group waits for it meanwhile).
#[derive(Default)]
struct GroupContext {
    /// The partitions of the latest change not yet seen by the reader.
    change: Mutex<Option<Vec<u32>>>,
}

impl ClientContext for GroupContext {
    /// As the default, except that a failed offset commit is only a debug line: commits are for
    /// monitoring, and they fail routinely while the group rebalances.
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        match level {
            _ if fac == "COMMITFAIL" => tracing::debug!(target: "librdkafka", "{fac} {message}"),
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error => {
                tracing::error!(target: "librdkafka", "{fac} {message}")
            }
            RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", "{fac} {message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => tracing::info!(target: "librdkafka", "{fac} {message}"),
            RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", "{fac} {message}"),
        }
    }
}

impl ConsumerContext for GroupContext {
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        let owned = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                tpl.elements().iter().map(|e| e.partition() as u32).collect()
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                if let Err(e) = consumer.unassign() {
                    tracing::warn!(error = %e, "kafka reader could not give up its partitions");
                }
                Vec::new()
            }
            other => {
                tracing::warn!(error = %RDKafkaErrorCode::from(other), "kafka consumer group rebalance failed");
                if let Err(e) = consumer.unassign() {
                    tracing::warn!(error = %e, "kafka reader could not give up its partitions");
                }
                Vec::new()
            }
        };
        tracing::info!(partitions = ?owned, "kafka consumer group assignment changed");
        *self.change.lock().unwrap_or_else(|e| e.into_inner()) = Some(owned);
    }
}

/// Reads the partitions the consumer group gives it, from the offsets of the caller's checkpoint.
struct KafkaReader {
    consumer: BaseConsumer<GroupContext>,
    /// To build a fresh consumer (see [`REBUILD_AFTER`]).
    config: ClientConfig,
    /// An assign failed: the consumer must leave the group and join again.
    rebuild: bool,
    /// Since when reads fail without a healthy read between.
    failing_since: Option<Instant>,
    topic: String,
    /// The next offset of each owned partition.
    next: BTreeMap<u32, u64>,
    /// When the reader last asked where the partitions end.
    last_ends: Option<Instant>,
    /// When the reader last committed offsets to Kafka.
    last_commit: Option<Instant>,
    /// A client of its own to ask where partitions end: on the consumer's connection the
    /// question would wait behind a fetch held open by the broker (`fetch.wait.max.ms`).
    ends_client: BaseConsumer,
    ends_config: ClientConfig,
}

/// How long reads may keep failing before the reader rebuilds its consumer (a client that lost its
/// brokers does not always find them again by itself).
const REBUILD_AFTER: Duration = Duration::from_secs(30);

/// Least time between two offset commits to Kafka (they are for monitoring; the checkpoint in the
/// store is committed with every batch).
const COMMIT_EVERY: Duration = Duration::from_secs(1);

/// Least time between two questions to the broker of where the partitions end: each costs a
/// round trip during which nothing is read, and only the watermark waits for the answer.
const ENDS_EVERY: Duration = Duration::from_millis(100);

/// librdkafka waits in whole milliseconds, and rdkafka truncates: a wait below a millisecond
/// (what is left of the aggregator's linger) returned at once, and the reader spun on the clock
/// and the queue's lock until its deadline; a longer one spun on its fraction in rdkafka's own
/// loop. Rounded up, the linger overshot by up to a millisecond (event to counter p50 +0.4 ms at
/// 40,000 events/s). So librdkafka is asked for the whole milliseconds of a wait, and what is
/// left below a millisecond is slept before a last look.
const POLL_GRAIN: Duration = Duration::from_millis(1);

impl KafkaReader {
    /// Takes an assignment change, if the group made one since the last look.
    fn reassigned(&mut self) -> bool {
        let change = self.consumer.context().change.lock().unwrap_or_else(|e| e.into_inner()).take();
        match change {
            Some(owned) => {
                self.next = owned.into_iter().map(|p| (p, 0)).collect();
                true
            }
            None => false,
        }
    }

    /// [`LogReader::poll`], each event as `decode` makes it ([`KafkaReader::read`]). A read that
    /// fails counts towards rebuilding the consumer ([`REBUILD_AFTER`]); one of [`decoded`]
    /// events fails on a damaged record, one of [`encoded`] events leaves it to the caller (the
    /// aggregator, which fails its batch and reads it again from the checkpoint: a damaged record
    /// is no lost broker, and rebuilding the consumer would not mend it).
    fn poll_as<E>(
        &mut self,
        max: usize,
        timeout: Duration,
        decode: impl Fn(&[u8]) -> Result<E, String>,
    ) -> Result<Batch<E>, Error> {
        if self.rebuild {
            // The caller resumes from its checkpoint, and `seek` rebuilds the consumer.
            return Err(Error::Unavailable("kafka: the reader lost its partitions; rejoining the group".into()));
        }
        let result = self.read(max, timeout, decode);
        match &result {
            Err(_) => {
                self.failing_since.get_or_insert_with(Instant::now);
            }
            Ok(batch) if !batch.records.is_empty() || batch.caught_up => self.failing_since = None,
            Ok(_) => {}
        }
        result
    }

    /// Waits up to `timeout` for a first record, then takes what the consumer already holds, up to
    /// `max`. Only when it runs dry does it ask the broker where each partition ends: a read that
    /// reached those marks has every record acknowledged before `started_us`, taken just before
    /// asking. A busy stream pays no round trip. Each event is what `decode` makes of the record's
    /// bytes (`Err` with why the record is damaged).
    fn read<E>(
        &mut self,
        max: usize,
        timeout: Duration,
        decode: impl Fn(&[u8]) -> Result<E, String>,
    ) -> Result<Batch<E>, Error> {
        let deadline = Instant::now() + timeout;
        let mut records = Vec::new();
        let reassigned = Batch { reassigned: true, started_us: now_us(), ..Batch::default() };
        if self.reassigned() {
            return Ok(reassigned);
        }
        while records.len() < max {
            let wait = match records.is_empty() {
                true => deadline.saturating_duration_since(Instant::now()),
                false => Duration::ZERO,
            };
            let wait = match !wait.is_zero() && wait < POLL_GRAIN {
                true => {
                    std::thread::sleep(wait);
                    Duration::ZERO
                }
                false => Duration::from_millis(wait.as_millis() as u64),
            };
            let polled =
                match self.consumer.poll(wait) {
                    None => None,
                    Some(message) => {
                        let m = message.map_err(unavailable)?;
                        let (partition, offset) = (m.partition() as u32, m.offset() as u64);
                        match self.next.get(&partition) {
                            Some(next) if offset >= *next => {
                                let event = decode(m.payload().unwrap_or_default())
                                    .map_err(|reason| Error::Corrupt { partition, offset, reason })?;
                                let ingested_us = m.timestamp().to_millis().map_or_else(now_us, |ms| ms * 1000);
                                Some(Some(Record { position: Position { partition, offset }, ingested_us, event }))
                            }
                            _ => Some(None), // not ours, or from before a seek
                        }
                    }
                };
            if self.reassigned() {
                return Ok(reassigned);
            }
            match polled {
                // A poll also ends early for an event that is no message (an offset commit).
                None if records.is_empty() && Instant::now() < deadline => {}
                None => break,
                Some(None) => {}
                Some(Some(record)) => {
                    self.next.insert(record.position.partition, record.position.offset + 1);
                    records.push(record);
                }
            }
        }
        let started_us = now_us();
        if records.len() >= max {
            return Ok(Batch { records, caught_up: false, started_us, reassigned: false });
        }
        if self.last_ends.is_some_and(|t| t.elapsed() < ENDS_EVERY) {
            return Ok(Batch { records, caught_up: false, started_us, reassigned: false });
        }
        self.last_ends = Some(Instant::now());
        // Not knowing where a partition ends (its leader is away) holds back only the watermark;
        // the records read are counted.
        let caught_up = match self.ends() {
            Ok(ends) => ends.iter().all(|(p, end)| self.next.get(p).is_some_and(|n| n >= end)),
            Err(e) => {
                tracing::warn!(error = %e, "kafka reader cannot tell where its partitions end; the watermark waits");
                false
            }
        };
        Ok(Batch { records, caught_up, started_us, reassigned: false })
    }

    /// Where each owned partition ends now (its last stable offset, which is the high watermark
    /// without transactions): every record acknowledged by now is below it. One request for all.
    /// A failed answer replaces the asking client: one that lost a broker does not always find it
    /// again by itself, and it is not a group member, so replacing it costs nothing.
    fn ends(&mut self) -> Result<Vec<(u32, u64)>, Error> {
        if self.next.is_empty() {
            return Ok(Vec::new());
        }
        let mut latest = TopicPartitionList::new();
        for p in self.next.keys() {
            latest.add_partition_offset(&self.topic, *p as i32, Offset::End).map_err(unavailable)?;
        }
        let found = self.ends_client.offsets_for_times(latest, Duration::from_secs(5)).map_err(unavailable);
        let ends = found.and_then(|found| {
            found
                .elements()
                .iter()
                .map(|e| match (e.offset(), e.error()) {
                    (Offset::Offset(o), Ok(())) => Ok((e.partition() as u32, o.max(0) as u64)),
                    (other, error) => Err(unavailable(format!(
                        "no end offset for partition {} ({other:?}, {error:?})",
                        e.partition()
                    ))),
                })
                .collect()
        });
        if ends.is_err() {
            match self.ends_config.create() {
                Ok(fresh) => self.ends_client = fresh,
                Err(e) => tracing::warn!(error = %e, "kafka reader could not rebuild its offsets client"),
            }
        }
        ends
    }

    fn list(&self, positions: impl Iterator<Item = (u32, u64)>) -> Result<TopicPartitionList, Error> {
        let mut list = TopicPartitionList::new();
        for (p, offset) in positions {
            list.add_partition_offset(&self.topic, p as i32, Offset::Offset(offset as i64)).map_err(unavailable)?;
        }
        Ok(list)
    }
}

impl LogReader for KafkaReader {
    fn seek(&mut self, positions: &[Position]) {
        if self.rebuild || self.failing_since.is_some_and(|t| t.elapsed() >= REBUILD_AFTER) {
            // Leaving and rejoining rebalances the whole group, so only after a failed assign or
            // errors that librdkafka did not get over by itself.
            match join(&self.config, &self.topic) {
                Ok(fresh) => {
                    // A new member: the group assigns it partitions, which the next poll reports.
                    self.consumer = fresh;
                    self.next.clear();
                    self.rebuild = false;
                    self.failing_since = None;
                }
                Err(e) => tracing::warn!(error = %e, "kafka reader could not rebuild its consumer"),
            }
        }
        for (p, next) in self.next.iter_mut() {
            *next = positions.iter().find(|q| q.partition == *p).map_or(0, |q| q.offset);
        }
        // Always assign, even nothing: after an assignment the group waits for this call, also
        // when this member's share is empty.
        let assign = self
            .list(self.next.iter().map(|(p, n)| (*p, *n)))
            .and_then(|list| self.consumer.assign(&list).map_err(unavailable));
        if let Err(e) = assign {
            tracing::warn!(error = %e, "kafka reader could not take its partitions; rejoining the group");
            self.rebuild = true;
        }
    }

    fn poll(&mut self, max: usize, timeout: Duration) -> Result<Batch, Error> {
        self.poll_as(max, timeout, decoded)
    }

    fn poll_encoded(&mut self, max: usize, timeout: Duration) -> Result<Batch<Encoded>, Error> {
        self.poll_as(max, timeout, encoded)
    }

    fn owned(&self) -> Vec<u32> {
        self.next.keys().copied().collect()
    }

    fn stored(&mut self, positions: &[Position]) {
        if self.last_commit.is_some_and(|t| t.elapsed() < COMMIT_EVERY) {
            return;
        }
        self.last_commit = Some(Instant::now());
        let owned = positions.iter().filter(|p| self.next.contains_key(&p.partition));
        match self.list(owned.map(|p| (p.partition, p.offset))) {
            Ok(list) if list.count() > 0 => {
                if let Err(e) = self.consumer.commit(&list, CommitMode::Async) {
                    tracing::debug!(error = %e, "kafka offsets not committed (monitoring only)");
                }
            }
            _ => {}
        }
    }
}
