//! Logs (`tracing`, to stderr) and metrics (`metrics`, rendered for Prometheus at `/metrics`).

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use std::time::Duration;

/// How often the recorder's histograms are drained into their buckets (the exporter's own
/// default): their samples are kept one by one until then, about 24 bytes each.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Starts logging to stderr; `RUST_LOG` filters (default `info`). Safe to call twice.
pub fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).try_init();
}

/// The process-wide Prometheus recorder, installed on first use, with the thread that drains its
/// histograms. A histogram keeps every sample until drained, and a recorder made with
/// `build_recorder` drains only when `/metrics` is rendered: where nothing scrapes (the embedded
/// default with zero set-up), the aggregator's sample per counted event grew the process by
/// about 24 bytes an event, forever.
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        // Fine below 50 ms, where latencies are judged (event to counter: p99 ≤ 25 ms is the aim).
        let buckets = [
            0.0005, 0.001, 0.002, 0.003, 0.004, 0.005, 0.006, 0.008, 0.010, 0.012, 0.015, 0.020, 0.025, 0.030, 0.040,
            0.050, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ];
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &buckets)
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Suffix("_requests".into()),
                    &[1.0, 2.0, 5.0, 10.0, 50.0, 100.0, 500.0],
                )
            })
            .expect("bucket lists are not empty")
            .build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
        }
        start_upkeep(handle.clone(), UPKEEP_EVERY);
        handle
    })
}

/// Drains `handle`'s histograms every `every`, on a thread of its own for the process's life.
fn start_upkeep(handle: PrometheusHandle, every: Duration) {
    let started = std::thread::Builder::new().name(UPKEEP_THREAD.into()).spawn(move || {
        loop {
            std::thread::sleep(every);
            handle.run_upkeep();
        }
    });
    if let Err(e) = started {
        tracing::warn!(error = %e, "the metrics' upkeep thread did not start; histograms drain only when scraped");
    }
}

/// The upkeep thread's name, as `ps -T` shows it.
const UPKEEP_THREAD: &str = "metrics-upkeep";

#[cfg(test)]
mod tests {
    use super::*;

    /// Names of this process's threads.
    fn threads() -> Vec<String> {
        std::fs::read_dir("/proc/self/task")
            .expect("procfs")
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .map(|n| n.trim().to_string())
            .collect()
    }

    #[test]
    fn the_recorder_drains_its_histograms_with_nothing_scraping() {
        let handle = prometheus();
        // A new thread names itself once it runs: give it a moment.
        let named = || threads().iter().any(|n| n == UPKEEP_THREAD);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !named() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            named(),
            "no {UPKEEP_THREAD} thread among {:?}: histograms would keep every sample until a scrape",
            threads()
        );
        // What it drains into: a sample recorded, never rendered, is in the buckets after upkeep.
        metrics::histogram!("meter_test_upkeep_seconds").record(0.003);
        handle.run_upkeep();
        let text = handle.render();
        assert!(text.contains("meter_test_upkeep_seconds_count 1"), "{text}");
    }
}
