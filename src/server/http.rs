//! The process's HTTP application: the API of every process, ingest's routes in a process that
//! ingests, the OpenAPI document of what it serves, and the layers every request passes.

use super::shared::Shared;
use crate::config::Config;
use anyhow::Context as _;
use axum::routing::get;
use axum::{Json, Router};
use meter_api::AppState;
use meter_ingest::Ingest;
use std::sync::Arc;
use std::time::Duration;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::timeout::TimeoutLayer;

/// Longest a request may take; a slow client cannot hold a connection (or shutdown) for ever.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest a request of [`meter_api::slow_router`] may take (a period's reconciliation reads
/// every invoice back from Stripe, at its rate limit).
const SLOW_REQUEST_TIMEOUT: Duration = Duration::from_secs(900);

/// The write API, with the hard limits and rate quotas of every tenant's plan, when `ingests`.
pub(super) fn start_ingest_if_needed(
    shared: &Shared,
    config: &Config,
    ingests: bool,
) -> anyhow::Result<Option<Arc<Ingest>>> {
    if !ingests {
        return Ok(None);
    }
    shared.log.ready_to_append().context("readying the event log for appends")?;
    let quota = meter_billing::HardLimits::new(shared.allowances.clone(), shared.live.clone(), shared.catalog.clone());
    let quotas = config.ingest_quotas()?;
    let throttle = quotas.any().then(|| Arc::new(meter_ingest::Throttle::new(quotas, shared.allowances.clone())));
    Ok(Some(Arc::new(Ingest {
        log: shared.log.clone(),
        keys: shared.keys.clone(),
        catalog: shared.catalog.clone(),
        limits: config.ingest_limits()?,
        max_body_bytes: config.ingest.max_body_bytes,
        quota: Some(Arc::new(quota)),
        throttle,
    })))
}

/// Every route this process serves, `/api/v1/openapi.json` describing them, and the answers for
/// unknown paths, slow requests and panics.
pub(super) fn app(state: Arc<AppState>, ingest: Option<Arc<Ingest>>) -> Router {
    let timeout = |limit| TimeoutLayer::with_status_code(axum::http::StatusCode::REQUEST_TIMEOUT, limit);
    let mut routes = meter_api::router(state.clone()).layer(timeout(REQUEST_TIMEOUT));
    if let Some(ingest) = ingest {
        routes = routes.merge(meter_ingest::router(ingest).layer(timeout(REQUEST_TIMEOUT)));
    }
    routes = routes.merge(meter_api::slow_router(state).layer(timeout(SLOW_REQUEST_TIMEOUT)));
    let (router, openapi) = routes.split_for_parts();
    let openapi = Arc::new(openapi);
    router
        .route("/api/v1/openapi.json", get(move || async move { Json(openapi.as_ref().clone()) }))
        .merge(meter_web::router())
        .fallback(meter_api::not_found)
        .layer(CatchPanicLayer::custom(meter_api::panicked))
}
