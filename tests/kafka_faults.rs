//! Faults on a Kafka log, injected with librdkafka's mock cluster of three brokers: a broker
//! slower than the delivery timeout, or down, gives 503s (never a 2xx for an event that is not
//! stored); dropped connections, produce errors and fetch errors are retried; the consumer group's
//! coordinator fails over twice; and usage ends exactly at the distinct events.

mod common;

use meter::config::Config;
use serde_json::{Value, json};
use std::sync::mpsc;
use std::time::Duration;

/// Commands to the thread that owns the (not `Send`) mock cluster.
enum Fault {
    /// Every answer of the broker takes this long.
    Slow(Duration),
    ProduceErrors(usize),
    FetchErrors(usize),
    /// Connections drop on the next produce requests.
    Disconnects(usize),
    /// The consumer group's coordinator moves to this broker.
    Coordinator(i32),
    /// The broker stops: its connections drop and it takes no new ones.
    Down(i32),
    /// The broker takes connections again.
    Up(i32),
}

const BROKERS: i32 = 3;

fn mock_cluster(partitions: i32) -> (String, mpsc::Sender<Fault>) {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let (faults, commands) = mpsc::channel();
    let (ready, address) = mpsc::channel();
    std::thread::spawn(move || {
        let cluster = rdkafka::mocking::MockCluster::new(BROKERS).expect("mock cluster");
        cluster.create_topic("usage.events", partitions, 1).expect("topic");
        cluster.create_topic("usage.alerts", partitions, 1).expect("topic");
        ready.send(cluster.bootstrap_servers()).expect("test waits");
        for fault in commands {
            match fault {
                Fault::Slow(rtt) => (1..=BROKERS).for_each(|b| cluster.broker_round_trip_time(b, rtt).expect("rtt")),
                Fault::Down(broker) => cluster.broker_down(broker).expect("down"),
                Fault::Up(broker) => cluster.broker_up(broker).expect("up"),
                Fault::Coordinator(broker) => cluster
                    .coordinator(rdkafka::mocking::MockCoordinator::Group("meter-aggregator".into()), broker)
                    .expect("coordinator"),
                Fault::Disconnects(n) => cluster
                    .request_errors(RDKafkaApiKey::Produce, &vec![RDKafkaRespErr::RD_KAFKA_RESP_ERR__TRANSPORT; n]),
                Fault::ProduceErrors(n) => cluster.request_errors(
                    RDKafkaApiKey::Produce,
                    &vec![RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION; n],
                ),
                Fault::FetchErrors(n) => cluster.request_errors(
                    RDKafkaApiKey::Fetch,
                    &vec![RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION; n],
                ),
            }
        }
    });
    (address.recv().expect("mock cluster address"), faults)
}

async fn send(url: &str, key: &str, batch: &[Value]) -> (u16, Option<String>) {
    let r = common::client()
        .post(format!("{url}/api/v1/events/batch"))
        .bearer_auth(key)
        .json(&json!({ "events": batch }))
        .send()
        .await
        .unwrap();
    let retry_after = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
    (r.status().as_u16(), retry_after)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_give_503s_and_never_lose_or_double_count_an_acknowledged_event() {
    meter::telemetry::init_logs();
    let (bootstrap, faults) = mock_cluster(4);
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config { data_dir: dir.path().to_path_buf(), bootstrap_admin_key: false, ..Config::default() };
    config.log.url = format!("kafka://{bootstrap}");
    config.log.delivery_timeout = Duration::from_secs(2);
    std::fs::create_dir_all(&config.data_dir).unwrap();
    let key =
        meter_auth::KeyStore::open(&config.keys_path()).unwrap().create(meter_auth::Role::Admin, None).unwrap().secret;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(meter::server::run(listener, config, async move {
        let _ = stopped.await;
    }));

    let now_s = common::now_us() / 1_000_000;
    let events: Vec<Value> = (0..3000).map(|i| meter_tools::loadgen::event("fault", i, 10, now_s)).collect();
    let batches: Vec<&[Value]> = events.chunks(100).collect();
    let mut acked = vec![false; batches.len()];

    // Healthy.
    for (i, batch) in batches.iter().enumerate().take(10) {
        acked[i] = send(&url, &key, batch).await.0 == 200;
    }
    assert!(acked[..10].iter().all(|a| *a));

    // The broker answers slower than the delivery timeout: every answer is a 503 with
    // Retry-After, never a 2xx.
    faults.send(Fault::Slow(Duration::from_secs(4))).unwrap();
    for (i, batch) in batches.iter().enumerate().skip(10).take(3) {
        let (status, retry_after) = send(&url, &key, batch).await;
        assert_eq!(status, 503, "batch {i} while the broker is too slow");
        assert_eq!(retry_after.as_deref(), Some("1"));
    }
    faults.send(Fault::Slow(Duration::ZERO)).unwrap();

    // A broker is down: requests with events for its partitions answer 503, never a 2xx.
    faults.send(Fault::Down(2)).unwrap();
    for (i, batch) in batches.iter().enumerate().skip(13).take(2) {
        let (status, retry_after) = send(&url, &key, batch).await;
        assert_eq!(status, 503, "batch {i} while broker 2 is down");
        assert_eq!(retry_after.as_deref(), Some("1"));
    }
    faults.send(Fault::Up(2)).unwrap();
    faults.send(Fault::Disconnects(5)).unwrap();

    // Produce errors and fetch errors while the rest streams in; the client retries until 200.
    faults.send(Fault::ProduceErrors(20)).unwrap();
    faults.send(Fault::FetchErrors(20)).unwrap();
    // Meanwhile the group coordinator fails over twice.
    let mut retries = 0;
    for (i, batch) in batches.iter().enumerate().skip(10) {
        if i == 12 || i == 20 {
            faults.send(Fault::Coordinator(if i == 12 { 2 } else { 3 })).unwrap();
        }
        while send(&url, &key, batch).await.0 != 200 {
            retries += 1;
            assert!(retries < 200, "the log never recovered");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        acked[i] = true;
    }
    // Resend a third of everything, as clients that lost the answers would.
    for batch in batches.iter().step_by(3) {
        assert_eq!(send(&url, &key, batch).await.0, 200);
    }

    let acked_at = common::now_us();
    for tenant in 0..10 {
        let name = format!("tenant-{tenant:04}");
        let usage = common::wait_counted(&url, &key, &name, acked_at).await;
        let v = common::values(&usage);
        let mine: Vec<&Value> = events.iter().filter(|e| e["external_customer_id"] == name.as_str()).collect();
        let count = |code: &str| mine.iter().filter(|e| e["code"] == code).count().to_string();
        assert_eq!(v["work_orders"], count("work_order.created").as_str(), "{name}");
        assert_eq!(v["api_calls"], count("api.call").as_str(), "{name}");
        assert_eq!(v["agent_invocations"], count("agent.invocation").as_str(), "{name}");
    }
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
