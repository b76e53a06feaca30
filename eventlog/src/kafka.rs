//! The event log on Kafka: one topic (`usage.events` by default), records keyed by tenant and sent
//! to the partition Kafka's default partitioner picks for that key (murmur2), so a tenant lands in
//! the same partition here as in the embedded log.
//!
//! The producer is idempotent with `acks=all`; an append answers only when every record has its
//! delivery report. Kafka cannot refuse a repeated `(tenant, id)` at append, so this log does not
//! deduplicate ([`EventLog::deduplicates`] is false): a retried append may store a record twice,
//! and the aggregator's dedup state counts it once.

use crate::{Batch, Error, EventLog, LogReader, Outcome, Position, Record};
use async_trait::async_trait;
use meter_schemas::Event;
use meter_schemas::partition::partition_for;
use meter_schemas::period::now_us;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
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
}

impl KafkaSettings {
    /// Defaults for the given brokers.
    pub fn new(bootstrap: &str) -> Self {
        Self {
            bootstrap: bootstrap.to_string(),
            topic: "usage.events".into(),
            partitions: 4,
            linger_ms: 5,
            delivery_timeout: Duration::from_secs(10),
            queue_max_messages: 200_000,
        }
    }
}

fn unavailable(e: impl std::fmt::Display) -> Error {
    Error::Unavailable(format!("kafka: {e}"))
}

/// The Kafka event log.
pub struct KafkaLog {
    producer: FutureProducer,
    settings: KafkaSettings,
}

impl KafkaLog {
    /// Connects, and creates the topic when it is missing. A topic with another partition count
    /// is refused: tenants would move between partitions.
    pub async fn open(settings: KafkaSettings) -> Result<Self, Error> {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &settings.bootstrap)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", "lz4")
            .set("linger.ms", settings.linger_ms.to_string())
            .set("batch.num.messages", "10000")
            .set("message.timeout.ms", settings.delivery_timeout.as_millis().to_string())
            .set("queue.buffering.max.messages", settings.queue_max_messages.to_string())
            .create()
            .map_err(unavailable)?;
        ensure_topic(&producer, &settings).await?;
        Ok(Self { producer, settings })
    }
}

/// Checks the topic's partition count, creating the topic when it does not exist.
async fn ensure_topic(producer: &FutureProducer, s: &KafkaSettings) -> Result<(), Error> {
    let client = producer.client();
    let found = {
        let metadata = client.fetch_metadata(Some(&s.topic), s.delivery_timeout).map_err(unavailable)?;
        metadata.topics().iter().find(|t| t.name() == s.topic && t.error().is_none()).map(|t| t.partitions().len())
    };
    match found {
        Some(n) if n == s.partitions as usize => Ok(()),
        Some(n) if n > 0 => Err(Error::Unavailable(format!(
            "topic {} has {n} partitions but {} are configured; the partition count of a log cannot change",
            s.topic, s.partitions
        ))),
        _ => {
            let admin: AdminClient<DefaultClientContext> =
                ClientConfig::new().set("bootstrap.servers", &s.bootstrap).create().map_err(unavailable)?;
            let topic = NewTopic::new(&s.topic, s.partitions as i32, TopicReplication::Fixed(1));
            let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
            for result in admin.create_topics([&topic], &options).await.map_err(unavailable)? {
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

    async fn append(&self, events: &[Event]) -> Result<Vec<Outcome>, Error> {
        let mut deliveries = Vec::with_capacity(events.len());
        for e in events {
            let payload = e.encode();
            let partition = partition_for(&e.tenant, self.settings.partitions);
            let record = FutureRecord::to(&self.settings.topic)
                .partition(partition as i32)
                .key(e.tenant.as_bytes())
                .payload(&payload);
            match self.producer.send_result(record) {
                Ok(delivery) => deliveries.push(delivery),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    return Err(Error::Unavailable("kafka: the producer queue is full".into()));
                }
                Err((e, _)) => return Err(unavailable(e)),
            }
        }
        let mut outcomes = Vec::with_capacity(deliveries.len());
        for d in deliveries {
            match d.await {
                Ok(Ok(delivery)) => outcomes.push(Outcome::Appended(Position {
                    partition: delivery.partition as u32,
                    offset: delivery.offset as u64,
                })),
                Ok(Err((e, _))) => return Err(unavailable(e)),
                Err(_) => return Err(Error::Unavailable("kafka: the producer stopped".into())),
            }
        }
        Ok(outcomes)
    }

    fn reader(&self) -> Result<Box<dyn LogReader>, Error> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.settings.bootstrap)
            .set("group.id", "meter-aggregator")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .set("isolation.level", "read_committed")
            .set("fetch.wait.max.ms", "10");
        let consumer: BaseConsumer = config.create().map_err(unavailable)?;
        let mut reader = KafkaReader {
            consumer,
            config,
            failed: false,
            topic: self.settings.topic.clone(),
            next: vec![0; self.settings.partitions as usize],
        };
        reader.assign()?;
        Ok(Box::new(reader))
    }
}

/// Reads every partition of the topic, by manual assignment, from the offsets it is given.
struct KafkaReader {
    consumer: BaseConsumer,
    /// To build a fresh consumer after a failure: a client that lost its broker does not always
    /// find it again by itself.
    config: ClientConfig,
    failed: bool,
    topic: String,
    next: Vec<u64>,
}

impl KafkaReader {
    fn assign(&mut self) -> Result<(), Error> {
        let mut list = TopicPartitionList::new();
        for (p, next) in self.next.iter().enumerate() {
            list.add_partition_offset(&self.topic, p as i32, Offset::Offset(*next as i64)).map_err(unavailable)?;
        }
        self.consumer.assign(&list).map_err(unavailable)
    }

    /// Waits up to `timeout` for a first record, then takes what the consumer already holds, up to
    /// `max`. Only when it runs dry does it ask the broker where each partition ends: a read that
    /// reached those marks has every record acknowledged before `started_us`, taken just before
    /// asking. A busy stream pays no round trip.
    fn read(&mut self, max: usize, timeout: Duration) -> Result<Batch, Error> {
        let deadline = Instant::now() + timeout;
        let mut records = Vec::new();
        while records.len() < max {
            let wait =
                if records.is_empty() { deadline.saturating_duration_since(Instant::now()) } else { Duration::ZERO };
            let Some(message) = self.consumer.poll(wait) else { break };
            let m = message.map_err(unavailable)?;
            let (partition, offset) = (m.partition() as u32, m.offset() as u64);
            let Some(next) = self.next.get_mut(partition as usize) else { continue };
            if offset < *next {
                continue; // from before a seek
            }
            let event = Event::decode(m.payload().unwrap_or_default()).map_err(|e| Error::Corrupt {
                partition,
                offset,
                reason: e.to_string(),
            })?;
            let ingested_us = m.timestamp().to_millis().map_or_else(now_us, |ms| ms * 1000);
            records.push(Record { position: Position { partition, offset }, ingested_us, event });
            *next = offset + 1;
        }
        let started_us = now_us();
        if records.len() >= max {
            return Ok(Batch { records, caught_up: false, started_us });
        }
        let highs = self.high_watermarks()?;
        let caught_up = self.next.iter().zip(&highs).all(|(n, h)| n >= h);
        Ok(Batch { records, caught_up, started_us })
    }

    /// The high watermark of each partition: every record acknowledged by now is below it.
    fn high_watermarks(&self) -> Result<Vec<u64>, Error> {
        (0..self.next.len())
            .map(|p| {
                self.consumer
                    .fetch_watermarks(&self.topic, p as i32, Duration::from_secs(5))
                    .map(|(_, high)| high.max(0) as u64)
                    .map_err(unavailable)
            })
            .collect()
    }
}

impl LogReader for KafkaReader {
    fn seek(&mut self, positions: &[Position]) {
        if self.failed {
            match self.config.create::<BaseConsumer>() {
                Ok(fresh) => {
                    self.consumer = fresh;
                    self.failed = false;
                }
                Err(e) => tracing::warn!(error = %e, "kafka reader could not rebuild its consumer"),
            }
        }
        self.next.iter_mut().for_each(|n| *n = 0);
        for p in positions {
            if let Some(n) = self.next.get_mut(p.partition as usize) {
                *n = p.offset;
            }
        }
        if let Err(e) = self.assign() {
            tracing::warn!(error = %e, "kafka reader could not reassign; the next poll retries");
        }
    }

    fn poll(&mut self, max: usize, timeout: Duration) -> Result<Batch, Error> {
        let result = self.read(max, timeout);
        self.failed |= result.is_err();
        result
    }
}
