//! Kafka scale-out end to end: separate `meter ingest` and `meter aggregate` processes around one
//! broker (`meter dev kafka`, librdkafka's mock cluster) and one shared data directory (usage store
//! and keys). Aggregators are killed, restarted, added and stopped during the stream; usage ends
//! exactly at the distinct events, and no partition's committed offset ever moves back.

mod common;

use common::*;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

const PARTITIONS: u32 = 8;

fn settings(kafka: &DevKafka) -> Vec<(&'static str, String)> {
    let mut env = kafka.env();
    // A killed aggregator's partitions move on after this long.
    env.push(("METER__AGGREGATOR__SESSION_TIMEOUT", "6s".into()));
    env
}

fn start(role: &'static str, dir: &Path, env: &[(&'static str, String)]) -> Meter {
    Meter::start_role(role, dir, &env_refs(env))
}

fn events(prefix: &str, n: usize, tenants: usize) -> Arc<Vec<Value>> {
    let now_s = now_us() / 1_000_000;
    Arc::new((0..n).map(|i| meter_tools::loadgen::event(prefix, i, tenants, now_s)).collect())
}

/// Samples, every 50 ms, each partition's offset as the usage store's checkpoint and as Kafka's
/// committed offset of the group, and notes any that moved back.
struct OffsetWatch {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(usize, Vec<String>)>,
}

impl OffsetWatch {
    fn start(store: PathBuf, kafka: &DevKafka) -> OffsetWatch {
        let (bootstrap, topic_name, group) = (kafka.bootstrap.clone(), kafka.topic.clone(), kafka.group.clone());
        let partitions = kafka.partitions;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let kafka: BaseConsumer = rdkafka::ClientConfig::new()
                .set("bootstrap.servers", &bootstrap)
                .set("group.id", &group)
                .create()
                .unwrap();
            let mut topic = TopicPartitionList::new();
            for p in 0..partitions as i32 {
                topic.add_partition(&topic_name, p);
            }
            let (mut highest, mut samples, mut regressions) = (BTreeMap::new(), 0, Vec::new());
            while !flag.load(Ordering::SeqCst) {
                let mut seen: Vec<(String, i64)> = Vec::new();
                if let Ok(db) = meter_sqlite::rusqlite::Connection::open(&store)
                    && let Ok(mut stmt) =
                        db.prepare("SELECT partition, next_offset FROM checkpoints WHERE consumer = ?1")
                    && let Ok(rows) = stmt.query_map([&group], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))
                {
                    seen.extend(rows.flatten().map(|(p, o)| (format!("store p{p}"), o)));
                }
                if let Ok(committed) = kafka.committed_offsets(topic.clone(), Duration::from_secs(2)) {
                    for e in committed.elements() {
                        if let Offset::Offset(o) = e.offset() {
                            seen.push((format!("kafka p{}", e.partition()), o));
                        }
                    }
                }
                for (what, offset) in seen {
                    let top = highest.entry(what.clone()).or_insert(offset);
                    if offset < *top {
                        regressions.push(format!("{what} moved back from {top} to {offset}"));
                    }
                    *top = (*top).max(offset);
                }
                samples += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            (samples, regressions)
        });
        OffsetWatch { stop, thread }
    }

    fn finish(self) {
        self.stop.store(true, Ordering::SeqCst);
        let (samples, regressions) = self.thread.join().unwrap();
        assert!(samples > 10, "the offsets were sampled ({samples} times)");
        assert!(regressions.is_empty(), "offsets moved back: {regressions:?}");
        eprintln!("{samples} offset samples, none moved back");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_ingest_and_two_aggregate_processes_stay_exact_while_aggregators_are_killed() {
    let kafka = DevKafka::start(PARTITIONS);
    let env = settings(&kafka);
    let dir = tempfile::tempdir().unwrap();
    let key = create_key(dir.path(), "admin", None);
    let ingest: Vec<Meter> = (0..2).map(|_| start("ingest", dir.path(), &env)).collect();
    let aggregators = Arc::new(Mutex::new((0..2).map(|_| start("aggregate", dir.path(), &env)).collect::<Vec<_>>()));
    let watch = OffsetWatch::start(dir.path().join("usage.db"), &kafka);

    let events = events("scale", 200_000, 1000);
    let urls = Arc::new(RwLock::new(ingest.iter().map(|m| m.url.clone()).collect()));
    let stream = Stream::start(events.clone(), urls, key.clone(), 8);
    // Every 3 s an aggregator is killed and restarted; the second time, one is frozen instead for
    // longer than the session timeout, so the group hands its partitions on while it still holds
    // its batch, which it then tries to apply.
    let mut kills = 0;
    while kills < 3 || stream.done.load(Ordering::SeqCst) < stream.batches {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let all = aggregators.clone();
        tokio::task::spawn_blocking(move || {
            let mut all = all.lock().unwrap();
            if kills == 1 { all[0].freeze(Duration::from_secs(8)) } else { all[kills % 2].restart() }
        })
        .await
        .unwrap();
        kills += 1;
    }
    let retries = stream.finish().await;
    eprintln!("{} aggregator SIGKILLs and a freeze, {retries} retried requests", kills - 1);
    // Every process answers for every tenant.
    assert_eq!(assert_exact(&ingest[0].url, &key, &events).await, 1000);
    let other = aggregators.lock().unwrap()[1].url.clone();
    assert_eq!(assert_exact(&other, &key, &events).await, 1000);
    watch.finish();
}

/// Two partitions, so that the third aggregator to join gets none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregators_joining_and_leaving_keep_totals_exact_and_offsets_never_move_back() {
    let kafka = DevKafka::start(2);
    let env = settings(&kafka);
    let dir = tempfile::tempdir().unwrap();
    let key = create_key(dir.path(), "admin", None);
    let ingest = start("ingest", dir.path(), &env);
    let mut aggregators = vec![start("aggregate", dir.path(), &env)];
    let watch = OffsetWatch::start(dir.path().join("usage.db"), &kafka);

    let events = events("rebalance", 60_000, 200);
    let stream = Stream::start(events.clone(), Arc::new(RwLock::new(vec![ingest.url.clone()])), key.clone(), 4);
    // A second and a third aggregator join; then the first and the second leave (SIGTERM).
    for step in 1..=4 {
        while stream.done.load(Ordering::SeqCst) < stream.batches * step / 5 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (dir, env) = (dir.path().to_path_buf(), env.clone());
        let mut leaving = if step <= 2 { None } else { Some(aggregators.remove(0)) };
        let joined = tokio::task::spawn_blocking(move || match leaving.as_mut() {
            Some(m) => {
                assert!(m.terminate().success(), "a leaving aggregator exits cleanly");
                None
            }
            None => Some(start("aggregate", &dir, &env)),
        })
        .await
        .unwrap();
        aggregators.extend(joined);
    }
    stream.finish().await;
    assert_eq!(aggregators.len(), 1);
    assert_eq!(assert_exact(&ingest.url, &key, &events).await, 200);
    watch.finish();
}
