//! Liveness, readiness and metrics.

use crate::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use std::sync::Arc;

/// Liveness: the process answers HTTP.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "Alive", body = String)))]
pub async fn healthz() -> &'static str {
    "ok"
}

/// Readiness: the shared state's Postgres (when configured) answers, and the aggregator is
/// running and its batches succeed, so usage keeps up with ingest. The body says which
/// dependency fails, and also when the ClickHouse sink is failing.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses((status = 200, description = "Ready", body = String), (status = 503, description = "Not ready", body = String))
)]
pub async fn readyz(State(state): State<Arc<AppState>>) -> (StatusCode, String) {
    // The shared state's server down: keys, plans and the live counters cannot be read fresh.
    if let Some(probe) = &state.health.state
        && let Err(why) = probe.check().await
    {
        return (StatusCode::SERVICE_UNAVAILABLE, why);
    }
    // A failing ClickHouse sink does not make the process unready: ingest keeps accepting into
    // the log, and the sink catches up when ClickHouse is back.
    match (state.health.aggregator_status(), state.health.sink_status()) {
        (Err(why), _) => (StatusCode::SERVICE_UNAVAILABLE, why),
        (Ok(()), Ok(())) => (StatusCode::OK, "ready".into()),
        (Ok(()), Err(sink)) => (StatusCode::OK, format!("ready; {sink}")),
    }
}

/// Prometheus metrics, named `meter_<subsystem>_<name>_<unit>`.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain"))
)]
pub async fn metrics(State(state): State<Arc<AppState>>) -> String {
    state.metrics.render()
}
