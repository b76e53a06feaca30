//! The alerts topic (`usage.alerts`) on Kafka: every alert, keyed by tenant, in the body a
//! webhook gets. At least once: a publisher that dies after producing and before moving its
//! cursor produces the same alerts again (consumers deduplicate on `id`).

use crate::{Error, Webhooks, body_of};
use meter_eventlog::PartitionCount;
use meter_store::LiveStore;
use once_cell::sync::OnceCell;
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::sync::Arc;
use std::time::Duration;

/// A producer of alerts to one topic.
pub struct AlertTopic {
    /// Made when there is a first alert to publish: an aggregator that raises none (or does not
    /// hold the publisher's lease) has no producer, and none of its polling thread's CPU.
    producer: OnceCell<FutureProducer>,
    bootstrap: String,
    topic: String,
    timeout: Duration,
}

fn failed(e: impl std::fmt::Display) -> Error {
    Error::Kafka(e.to_string())
}

/// The alerts producer's configuration: idempotent, every replica's acknowledgement.
fn producer_config(bootstrap: &str, timeout: Duration) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.timeout.ms", timeout.as_millis().to_string())
        .set("allow.auto.create.topics", "false");
    config
}

impl AlertTopic {
    /// Connects to `bootstrap`, creating `topic` with `partitions` partitions when it is missing.
    pub async fn open(bootstrap: &str, topic: &str, partitions: u32, timeout: Duration) -> Result<Self, Error> {
        // Its settings, the brokers and the delivery timeout, are the event log's, which checks
        // them when it opens (before this, in every process).
        meter_eventlog::ensure_topic(bootstrap, topic, PartitionCount::CreateWith(partitions), timeout)
            .await
            .map_err(failed)?;
        Ok(AlertTopic {
            producer: OnceCell::new(),
            bootstrap: bootstrap.to_string(),
            topic: topic.to_string(),
            timeout,
        })
    }

    /// The producer, made at the first call.
    fn producer(&self) -> Result<&FutureProducer, Error> {
        self.producer.get_or_try_init(|| producer_config(&self.bootstrap, self.timeout).create().map_err(failed))
    }

    /// Produces every alert raised since the last call (the `kafka` cursor in `webhooks.db`), and
    /// moves the cursor once the brokers acknowledged them all; returns how many.
    pub async fn publish(&self, cursor: &Webhooks, alerts: &dyn LiveStore) -> Result<usize, Error> {
        let after = cursor.cursor("kafka").await?;
        let new = alerts.alerts(None, after, 1000).await?;
        let Some(last) = new.last().map(|a| a.seq) else { return Ok(0) };
        let producer = self.producer()?;
        let sends = new.iter().map(|a| {
            let body = body_of(a);
            let (topic, tenant, timeout) = (&self.topic, a.tenant.clone(), self.timeout);
            async move {
                let record = FutureRecord::to(topic).key(&tenant).payload(&body);
                producer.send(record, timeout).await.map(|_| ()).map_err(|(e, _)| failed(e))
            }
        });
        for sent in futures_util::future::join_all(sends).await {
            sent?;
        }
        cursor.move_cursor("kafka", last).await?;
        Ok(new.len())
    }

    /// Publishes as soon as alerts are raised, and every `poll`, until dropped. Of several
    /// processes on one data directory only the holder of a lease publishes (another takes over
    /// within [`crate::LEASE`] of its death), so an alert is not produced once per process.
    pub async fn run(self, cursor: Arc<Webhooks>, alerts: Arc<dyn LiveStore>, poll: Duration) {
        let lease = cursor.single_runner("kafka");
        let mut rounds = crate::Rounds::new(&*alerts, poll);
        loop {
            rounds.next().await;
            if !lease.held().await {
                continue;
            }
            if let Err(e) = self.publish(&cursor, &*alerts).await {
                tracing::warn!(error = %e, topic = %self.topic, "publishing alerts to Kafka failed; trying again");
            }
        }
    }
}
