//! Liveness, readiness and metrics.

use crate::server::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use std::sync::Arc;

/// Liveness: the process answers HTTP.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "Alive", body = String)))]
pub async fn healthz() -> &'static str {
    "ok"
}

/// Readiness: the aggregator is running and its batches succeed, so usage keeps up with ingest.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses((status = 200, description = "Ready", body = String), (status = 503, description = "Not ready", body = String))
)]
pub async fn readyz(State(state): State<Arc<AppState>>) -> (StatusCode, String) {
    match state.aggregator_status() {
        Ok(()) => (StatusCode::OK, "ready".into()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
    }
}

/// Prometheus metrics, named `meter_<subsystem>_<name>_<unit>`.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain"))
)]
pub async fn metrics() -> String {
    crate::telemetry::prometheus().render()
}
