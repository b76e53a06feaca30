//! Ingest: the HTTP write API. It authenticates the key, parses and validates the whole request
//! (every problem at once), appends the events to the log, and answers 2xx only once the log has
//! made them durable.
//!
//! Two existing APIs are served unchanged, so that their client SDKs work against meter:
//! Lago (`POST /api/v1/events`, `POST /api/v1/events/batch`) and OpenMeter's CloudEvents
//! (`POST /api/v1/events` with `application/cloudevents+json` or
//! `application/cloudevents-batch+json`). NDJSON on the same path serves bulk senders.

mod docs;
mod error;
mod handlers;
pub mod metric;
mod throttle;

pub use docs::Problem;
pub use error::IngestError;
pub use throttle::{Exceeded, Plans, Quotas, RateQuota, Throttle, Throttled};

use axum::extract::DefaultBodyLimit;
use meter_auth::KeyStore;
use meter_eventlog::EventLog;
use meter_schemas::{Catalog, Limits};
use std::sync::Arc;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// What the ingest handlers need.
pub struct Ingest {
    /// Where accepted events go.
    pub log: Arc<dyn EventLog>,
    /// API keys.
    pub keys: Arc<KeyStore>,
    /// Meters, and so the accepted event codes.
    pub catalog: Arc<Catalog>,
    /// Per-request limits.
    pub limits: Limits,
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// Hard limits of the tenants' plans; `None` enforces none.
    pub quota: Option<Arc<dyn Quota>>,
    /// Rate quotas of the tenants' plans; `None` enforces none.
    pub throttle: Option<Arc<Throttle>>,
}

/// Hard limits: events a tenant's plan does not allow any more.
#[async_trait::async_trait]
pub trait Quota: Send + Sync {
    /// For each event of `events` (by index) that would take its tenant past a hard limit, why.
    /// An event already counted (a resend) is never refused.
    async fn refused(&self, events: &[meter_schemas::Event]) -> Result<Vec<(usize, String)>, String>;
}

/// The ingest routes, documented for OpenAPI.
pub fn router(ingest: Arc<Ingest>) -> OpenApiRouter {
    let limit = DefaultBodyLimit::max(ingest.max_body_bytes);
    OpenApiRouter::new()
        .routes(routes!(handlers::post_events))
        .routes(routes!(handlers::post_events_batch))
        .layer(limit)
        .with_state(ingest)
}
