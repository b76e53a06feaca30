//! Contract tests of the event-log port: each body is written once and run against every backend
//! through [`Harness`]. A backend's test file calls [`eventlog_contract!`](crate::eventlog_contract).

use crate::{Error, EventLog, Outcome, Position};
use meter_schemas::Event;
use meter_schemas::partition::partition_for;
use std::sync::Arc;
use std::time::Duration;

/// Opens a backend for a test; `open` again must reach the same data.
#[async_trait::async_trait]
pub trait Harness: Send + Sync {
    /// Opens (or reopens) the log under test.
    async fn open(&self) -> Arc<dyn EventLog>;
}

/// An event of tenant `tenant` with id `id` and one property.
pub fn event(tenant: &str, id: &str, n: u64) -> Event {
    let mut properties = serde_json::Map::new();
    properties.insert("n".into(), n.into());
    Event {
        tenant: tenant.into(),
        id: id.into(),
        code: "work_order.created".into(),
        time_us: 1_763_683_200_000_000 + n as i64,
        implicit_time: false,
        subscription: None,
        source: None,
        properties,
    }
}

/// A one-broker librdkafka mock cluster, with `topic` created with its partition count when
/// given; it lives on a thread of its own (it is not `Send`) until the returned sender drops.
/// Returns its address.
pub fn mock_kafka(topic: Option<(&str, i32)>) -> (String, std::sync::mpsc::Sender<()>) {
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let (ready, bootstrap) = std::sync::mpsc::channel();
    let topic = topic.map(|(name, partitions)| (name.to_string(), partitions));
    std::thread::spawn(move || {
        let cluster = rdkafka::mocking::MockCluster::new(1).expect("mock cluster starts");
        if let Some((name, partitions)) = topic {
            cluster.create_topic(&name, partitions, 1).expect("topic");
        }
        ready.send(cluster.bootstrap_servers()).expect("test waits");
        let _ = stopped.recv();
    });
    (bootstrap.recv().expect("mock cluster address"), stop)
}

/// A reader of the whole log, resumed at `positions` once it owns every partition (a consumer
/// group first has to assign them).
pub fn owning_reader(log: &dyn EventLog, positions: &[Position]) -> Box<dyn crate::LogReader> {
    let mut reader = log.reader().unwrap();
    for _ in 0..600 {
        if reader.owned().len() == log.partitions() as usize {
            reader.seek(positions);
            return reader;
        }
        let batch = reader.poll(1, Duration::from_millis(50)).unwrap();
        assert!(batch.records.is_empty(), "records before the reader owns its partitions");
    }
    panic!("the reader was never given every partition");
}

async fn read_all(log: &dyn EventLog) -> Vec<(Position, Event)> {
    let mut reader = owning_reader(log, &[]);
    let mut out = Vec::new();
    loop {
        let batch = reader.poll(1000, Duration::from_millis(50)).unwrap();
        assert!(!batch.reassigned, "a lone reader keeps its partitions");
        let done = batch.caught_up && batch.records.is_empty();
        out.extend(batch.records.into_iter().map(|r| (r.position, r.event)));
        if done {
            return out;
        }
    }
}

/// Appended events read back in order, each partition from offset 0, at their tenant's partition.
pub async fn append_then_read(h: &dyn Harness) {
    let log = h.open().await;
    let events: Vec<Event> = (0..20).map(|i| event(&format!("t{}", i % 5), &format!("e{i}"), i)).collect();
    let outcomes = log.append(&events).await.unwrap();
    assert!(outcomes.iter().all(|o| matches!(o, Outcome::Appended(_))));
    let read = read_all(&*log).await;
    assert_eq!(read.len(), 20);
    for (pos, e) in &read {
        assert_eq!(pos.partition, partition_for(&e.tenant, log.partitions()));
    }
    let mut by_partition = std::collections::BTreeMap::<u32, Vec<u64>>::new();
    for (pos, _) in &read {
        by_partition.entry(pos.partition).or_default().push(pos.offset);
    }
    for offsets in by_partition.values() {
        assert_eq!(*offsets, (0..offsets.len() as u64).collect::<Vec<_>>());
    }
    let mut got: Vec<Event> = read.into_iter().map(|(_, e)| e).collect();
    got.sort_by_key(|e| e.properties["n"].to_string().parse::<u64>().unwrap());
    assert_eq!(got, events);
}

/// A deduplicating log answers a repeated event `Duplicate` and stores it once, within one append
/// and across appends; any other log stores each send, for the aggregator to deduplicate.
pub async fn duplicates_are_stored_once(h: &dyn Harness) {
    let log = h.open().await;
    let e = event("acme", "dup", 1);
    if !log.deduplicates() {
        let out = log.append(&[e.clone(), e.clone()]).await.unwrap();
        assert!(out.iter().all(|o| matches!(o, Outcome::Appended(_))));
        let read = read_all(&*log).await;
        assert_eq!(read.len(), 2);
        assert!(read.iter().all(|(_, r)| *r == e), "both copies are the event as sent");
        return;
    }
    let first = log.append(&[e.clone(), e.clone()]).await.unwrap();
    assert!(matches!(first[0], Outcome::Appended(_)));
    assert_eq!(first[1], Outcome::Duplicate);
    assert_eq!(log.append(&[e]).await.unwrap(), vec![Outcome::Duplicate]);
    assert_eq!(read_all(&*log).await.len(), 1);
}

/// In a deduplicating log, an id reused with other content refuses the whole append, and nothing
/// of it is stored.
pub async fn conflicts_refuse_the_whole_append(h: &dyn Harness) {
    let log = h.open().await;
    if !log.deduplicates() {
        return;
    }
    log.append(&[event("acme", "x", 1)]).await.unwrap();
    let err = log.append(&[event("acme", "fresh", 2), event("acme", "x", 99)]).await.unwrap_err();
    assert!(matches!(&err, Error::Conflicts(i) if *i == vec![1]), "{err}");
    let read = read_all(&*log).await;
    assert_eq!(read.len(), 1, "the fresh event of the refused append must not be stored");
    // The same id in another tenant is another event.
    log.append(&[event("other", "x", 99)]).await.unwrap();
    assert_eq!(read_all(&*log).await.len(), 2);
}

/// Concurrent appends all land, with no offset used twice.
pub async fn concurrent_appends_get_distinct_offsets(h: &dyn Harness) {
    let log = h.open().await;
    let mut tasks = Vec::new();
    for t in 0..8 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..25 {
                log.append(&[event(&format!("t{t}"), &format!("{t}-{i}"), i)]).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let read = read_all(&*log).await;
    assert_eq!(read.len(), 200);
    let positions: std::collections::HashSet<Position> = read.iter().map(|(p, _)| *p).collect();
    assert_eq!(positions.len(), 200);
}

/// A reader continues from where it was told; records survive a reopen.
pub async fn seek_resumes_and_data_survives_reopen(h: &dyn Harness) {
    let log = h.open().await;
    log.append(&(0..10).map(|i| event("acme", &format!("s{i}"), i)).collect::<Vec<_>>()).await.unwrap();
    let p = partition_for("acme", log.partitions());
    drop(log);
    let log = h.open().await;
    let mut reader = owning_reader(&*log, &[Position { partition: p, offset: 7 }]);
    let offsets: Vec<u64> = drain(&mut *reader).iter().map(|r| r.position.offset).collect();
    assert_eq!(offsets, vec![7, 8, 9], "only the rest of the sought partition");
    // Offsets continue after a reopen rather than restarting.
    let out = log.append(&[event("acme", "after", 10)]).await.unwrap();
    assert_eq!(out, vec![Outcome::Appended(Position { partition: p, offset: 10 })]);
    assert_eq!(drain(&mut *reader).iter().map(|r| r.position.offset).collect::<Vec<_>>(), vec![10]);
    // Seeking again rewinds: partitions the checkpoint does not list start over from 0.
    log.append(&[event("zed", "z0", 0)]).await.unwrap();
    reader.seek(&[]);
    let all = drain(&mut *reader);
    assert_eq!(all.len(), 12, "a seek to an empty checkpoint reads everything again");
    assert!(all.iter().any(|r| r.event.tenant == "zed"));
    // And a duplicate of an event from before the reopen is still recognised.
    if log.deduplicates() {
        assert_eq!(log.append(&[event("acme", "s3", 3)]).await.unwrap(), vec![Outcome::Duplicate]);
    }
}

/// A reader's records as the log holds them are its decoded records: the same positions and
/// times, and bytes that decode (and view) as the event.
pub async fn encoded_records_are_the_decoded_ones(h: &dyn Harness) {
    let log = h.open().await;
    let mut events: Vec<Event> = (0..20).map(|i| event(&format!("t{}", i % 5), &format!("x{i}"), i)).collect();
    events[3].subscription = Some("sub-3".into());
    events[4].source = Some("sdk".into());
    events[5].properties.insert("nested".into(), serde_json::json!({"a": [1, "b", null]}));
    log.append(&events).await.unwrap();
    let mut reader = owning_reader(&*log, &[]);
    let decoded = drain(&mut *reader);
    reader.seek(&[]);
    let mut encoded = Vec::new();
    for _ in 0..200 {
        let batch = reader.poll_encoded(1000, Duration::from_millis(50)).unwrap();
        assert!(!batch.reassigned, "a lone reader keeps its partitions");
        encoded.extend(batch.records);
        if batch.caught_up {
            break;
        }
    }
    // In log order within each partition; the partitions may interleave otherwise.
    let mut decoded = decoded;
    decoded.sort_by_key(|r| (r.position.partition, r.position.offset));
    encoded.sort_by_key(|r| (r.position.partition, r.position.offset));
    assert_eq!(encoded.len(), decoded.len());
    assert_eq!(decoded.len(), events.len());
    for (e, d) in encoded.iter().zip(&decoded) {
        assert_eq!((e.position, e.ingested_us), (d.position, d.ingested_us));
        assert_eq!(Event::decode(&e.event).unwrap(), d.event);
        let viewed = Event::view(&e.event, |v| (v.tenant.to_string(), v.id.to_string(), v.time_us)).unwrap();
        assert_eq!(viewed, (d.event.tenant.clone(), d.event.id.clone(), d.event.time_us));
    }
}

/// Everything a reader has left, polling until it says it caught up.
fn drain(reader: &mut dyn crate::LogReader) -> Vec<crate::Record> {
    let mut out = Vec::new();
    for _ in 0..200 {
        let batch = reader.poll(1000, Duration::from_millis(50)).unwrap();
        assert!(!batch.reassigned, "a lone reader keeps its partitions");
        let done = batch.caught_up;
        out.extend(batch.records);
        if done {
            return out;
        }
    }
    panic!("the reader never caught up");
}

/// Expands to one `#[tokio::test]` per contract body, for a backend given by a harness factory.
#[macro_export]
macro_rules! eventlog_contract {
    ($harness:expr) => {
        $crate::eventlog_contract!(@t $harness; append_then_read, duplicates_are_stored_once,
            conflicts_refuse_the_whole_append, concurrent_appends_get_distinct_offsets,
            seek_resumes_and_data_survives_reopen, encoded_records_are_the_decoded_ones);
    };
    (@t $harness:expr; $($name:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let h = $harness;
                $crate::contract::$name(&h).await;
            }
        )*
    };
}
