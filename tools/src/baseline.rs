//! `meter dev http-baseline`: the least an HTTP server can do to put Lago batches on the Kafka
//! log, as the yardstick for `meter ingest` in benches/kafka.sh. One axum route reads the body,
//! parses it with serde_json into the log's [`Event`] and appends it with meter's producer and
//! its default settings: no key, no validation, no dedup, no hard limits, no answer body.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use clap::Args;
use meter_eventlog::{EventLog, KafkaLog, KafkaSettings};
use meter_schemas::Event;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::net::SocketAddr;
use std::sync::Arc;

/// `meter dev http-baseline`.
#[derive(Debug, Args)]
pub struct HttpBaselineArgs {
    /// The Kafka cluster to append to (HOST:PORT).
    #[arg(long, value_name = "HOST:PORT")]
    pub kafka: String,
    /// Partitions of the events topic.
    #[arg(long, default_value_t = 4)]
    pub partitions: u32,
    /// Where to listen for `POST /api/v1/events/batch`.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
}

/// A Lago batch as `meter loadgen` sends it, taken as it comes.
#[derive(Deserialize)]
struct Batch {
    events: Vec<LagoEvent>,
}

#[derive(Deserialize)]
struct LagoEvent {
    transaction_id: String,
    external_customer_id: String,
    code: String,
    /// Unix seconds.
    timestamp: i64,
    #[serde(default)]
    properties: Map<String, Value>,
}

impl From<LagoEvent> for Event {
    fn from(e: LagoEvent) -> Self {
        Event {
            tenant: e.external_customer_id,
            id: e.transaction_id,
            code: e.code,
            time_us: e.timestamp.saturating_mul(1_000_000),
            implicit_time: false,
            subscription: None,
            source: None,
            properties: e.properties,
        }
    }
}

/// Serves the baseline until `shutdown` resolves. Prints `http baseline listening on URL`.
#[allow(clippy::print_stdout)]
pub async fn http_baseline(
    args: HttpBaselineArgs,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let mut settings = KafkaSettings::new(&args.kafka);
    settings.partitions = args.partitions;
    let log = Arc::new(KafkaLog::open(settings).await?);
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    println!("http baseline listening on http://{}", listener.local_addr()?);
    serve(listener, log, shutdown).await
}

/// Serves the baseline's one route on `listener`, appending to `log`, until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    log: Arc<KafkaLog>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let app = Router::new().route("/api/v1/events/batch", post(append)).with_state(log);
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await?;
    Ok(())
}

async fn append(State(log): State<Arc<KafkaLog>>, body: Bytes) -> StatusCode {
    let Ok(batch) = serde_json::from_slice::<Batch>(&body) else { return StatusCode::BAD_REQUEST };
    let events: Vec<Event> = batch.events.into_iter().map(Event::from).collect();
    match log.append(&events).await {
        Ok(_) => StatusCode::OK,
        Err(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meter_schemas::envelope::{Context, Format, parse};
    use std::time::Duration;

    /// What the load generator sends lands on the Kafka log as the events meter's own parser
    /// reads from the same body, each once; a body that is not a Lago batch is refused with 400
    /// and appends nothing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_loadgen_batch_lands_on_the_log_as_meters_parser_reads_it() {
        let mut settings = KafkaSettings::new("");
        settings.partitions = 4;
        let (bootstrap, _stop) = meter_eventlog::contract::mock_kafka(Some((&settings.topic, 4)));
        settings.bootstrap = bootstrap;
        let log = Arc::new(KafkaLog::open(settings).await.unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/api/v1/events/batch", listener.local_addr().unwrap());
        tokio::spawn(serve(listener, log.clone(), std::future::pending()));
        let events: Vec<_> = (0..25).map(|i| crate::loadgen::event("bl", i, 3, 1_763_683_200)).collect();
        let body = serde_json::to_vec(&serde_json::json!({ "events": events })).unwrap();
        let client = reqwest::Client::new();
        for bad in [&b"{not json"[..], br#"{"events": [{"code": "api.call"}]}"#] {
            let answer = client.post(&url).body(bad.to_vec()).send().await.unwrap();
            assert_eq!(answer.status(), 400, "{}", String::from_utf8_lossy(bad));
        }
        let answer = client.post(&url).body(body.clone()).send().await.unwrap();
        assert_eq!(answer.status(), 200);
        assert!(answer.bytes().await.unwrap().is_empty(), "no answer body");

        let catalog = meter_schemas::Catalog::new(vec![]).unwrap();
        let limits = meter_schemas::Limits::default();
        let cx = Context {
            limits: &limits,
            catalog: &catalog,
            scope: &meter_schemas::TenantScope::Any,
            now_us: 1_763_683_200_000_000,
        };
        let mut expected = parse(Format::LagoBatch, &body, &cx).map_err(|r| r.errors).unwrap().events;
        let mut reader = meter_eventlog::contract::owning_reader(&*log, &[]);
        let mut read = Vec::new();
        for _ in 0..100 {
            let batch = reader.poll(1000, Duration::from_millis(50)).unwrap();
            read.extend(batch.records.into_iter().map(|r| r.event));
            if batch.caught_up && read.len() >= expected.len() {
                break;
            }
        }
        let by_id = |a: &Event, b: &Event| a.id.cmp(&b.id);
        read.sort_by(by_id);
        expected.sort_by(by_id);
        assert_eq!(read, expected);
    }
}
