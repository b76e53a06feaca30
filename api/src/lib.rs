//! The HTTP API besides ingest: usage, billing, alerts, webhooks, health, metrics, and the
//! OpenAPI document of it all. Handlers parse, authorize (an extractor from [`auth`]), call one
//! function of the crate they serve, and answer; errors become answers in [`error`] alone.

pub mod alerts;
pub mod auth;
pub mod billing;
pub mod entitlements;
pub mod error;
pub mod health;
pub mod invoices;
pub mod sessions;
pub mod signup;
mod state;
pub mod sync;
pub mod usage;
pub mod webhooks;

pub use state::{AppState, Billing, Health, StateProbe};

use meter_schemas::envelope::check_id;
use std::sync::Arc;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

#[derive(OpenApi)]
#[openapi(
    info(title = "meter", description = "Usage metering: ingest events, read exact usage."),
    modifiers(&BearerAuth),
    tags(
        (name = "ingest", description = "Send usage events (Lago and OpenMeter compatible)"),
        (name = "usage", description = "Read usage"),
        (name = "billing", description = "Subscriptions, period close, invoices"),
        (name = "alerts", description = "Usage alerts"),
        (name = "operations", description = "Health and metrics"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("mtr_…").build()),
        );
    }
}

/// Refuses a `tenant` field (query or body) that is not a valid id.
pub fn check_tenant(tenant: Option<&str>) -> Result<(), error::ApiError> {
    match tenant.map(check_id) {
        Some(Err(m)) => Err(error::ApiError::Invalid(vec![meter_schemas::FieldError::invalid("tenant", m)])),
        _ => Ok(()),
    }
}

/// Answer for paths no route serves.
pub async fn not_found(uri: axum::http::Uri) -> error::ApiError {
    error::ApiError::NotFound(uri.path().to_string())
}

/// Answer when a handler panicked: a 500 in the API's error shape, never a dropped connection.
pub fn panicked(_: Box<dyn std::any::Any + Send + 'static>) -> axum::response::Response {
    tracing::error!("a request handler panicked");
    axum::response::IntoResponse::into_response(error::ApiError::Internal)
}

/// The routes whose work is long by nature and grows with the data (reading every invoice of
/// a period back from the payment provider, through its rate limit): served under a longer
/// request timeout than [`router`]'s.
pub fn slow_router(state: Arc<AppState>) -> OpenApiRouter {
    OpenApiRouter::new().routes(routes!(sync::reconciliation)).with_state(state)
}

/// Every route but ingest's and [`slow_router`]'s, with the document that describes them.
pub fn router(state: Arc<AppState>) -> OpenApiRouter {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(usage::get_usage))
        .routes(routes!(usage::get_daily))
        .routes(routes!(usage::get_breakdown))
        .routes(routes!(billing::create_subscription, billing::list_subscriptions))
        .routes(routes!(billing::subscription_stats))
        .routes(routes!(billing::get_subscription))
        .routes(routes!(billing::list_plans))
        .routes(routes!(billing::change_subscription))
        .routes(routes!(billing::close_period))
        .routes(routes!(billing::period_invoices))
        .routes(routes!(billing::period_report))
        .routes(routes!(invoices::list))
        .routes(routes!(invoices::one))
        .routes(routes!(invoices::receivables))
        .routes(routes!(invoices::revenue))
        .routes(routes!(billing::upcoming_invoice))
        .routes(routes!(sync::periods))
        .routes(routes!(billing::search_invoices))
        .routes(routes!(sync::period_sync))
        .routes(routes!(sync::operations))
        .routes(routes!(sync::retry))
        .routes(routes!(sync::stripe_webhook))
        .routes(routes!(signup::create_checkout))
        .routes(routes!(signup::create_portal))
        .routes(routes!(signup::portal_availability))
        .routes(routes!(sessions::open_portal))
        .routes(routes!(sessions::open_console))
        .routes(routes!(sessions::list))
        .routes(routes!(sessions::revoke))
        .routes(routes!(sessions::exchange))
        .routes(routes!(alerts::list_alerts))
        .routes(routes!(entitlements::list))
        .routes(routes!(entitlements::one))
        .routes(routes!(webhooks::register, webhooks::list))
        .routes(routes!(webhooks::remove))
        .routes(routes!(webhooks::deliveries))
        .routes(routes!(webhooks::retry))
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(health::metrics))
        .with_state(state)
}
