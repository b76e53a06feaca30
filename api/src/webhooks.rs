//! `/api/v1/webhooks`: endpoints that receive alerts (a tenant's read key registers its own; an
//! admin's, every tenant's or one's), their deliveries, and the dead-letter list.

use crate::AppState;
use crate::auth::*;
use crate::check_tenant;
use crate::error::ApiError;
use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use meter_auth::{Principal, Role};
use meter_schemas::FieldError;
use meter_webhooks::{Delivery, Endpoint, Scope};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use utoipa::{IntoParams, ToSchema};

/// A new endpoint.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewEndpoint {
    /// Where alerts are posted (http or https).
    pub url: String,
    /// Whose alerts: implied by a tenant's key; with an admin key, absent means every tenant's.
    pub tenant: Option<String>,
}

/// A registered endpoint with its signing secret, shown only at registration.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Registered {
    /// The endpoint.
    #[serde(flatten)]
    pub endpoint: Endpoint,
    /// Verifies `Meter-Signature` (see the README); shown only this once.
    pub secret: String,
}

fn scope(p: &Principal) -> Scope<'_> {
    match &p.tenant {
        Some(t) if p.role != Role::Admin => Scope::Tenant(t),
        _ => Scope::All,
    }
}

/// Register an endpoint for alerts.
#[utoipa::path(post, path = "/api/v1/webhooks", tag = "alerts", operation_id = "register_webhook", request_body = NewEndpoint,
    responses(
        (status = 201, description = "Registered; the secret is shown only now", body = Registered),
        (status = 422, description = "A bad field", body = meter_ingest::Problem),
    ),
    security(("bearer" = [])))]
pub async fn register(
    State(state): State<Arc<AppState>>,
    Reader(p, _): Reader<ManageWebhooks>,
    new: Result<Json<NewEndpoint>, JsonRejection>,
) -> Result<(StatusCode, Json<Registered>), ApiError> {
    let Json(new) = new?;
    check_tenant(new.tenant.as_deref())?;
    let tenant = match (&p.tenant, new.tenant) {
        (None, t) if p.role == Role::Admin => t,
        (_, t) => Some(p.readable_tenant(t.as_deref())?),
    };
    let (endpoint, secret) = state.webhooks.register(&new.url, tenant.as_deref(), p.role == Role::Admin).await?;
    tracing::info!(endpoint = %endpoint.id, key = %p.key_id, "webhook endpoint registered");
    Ok((StatusCode::CREATED, Json(Registered { endpoint, secret })))
}

/// The endpoints the key may see.
#[utoipa::path(get, path = "/api/v1/webhooks", tag = "alerts", operation_id = "list_webhooks",
    responses((status = 200, description = "Endpoints (without secrets)", body = Vec<Endpoint>)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<Arc<AppState>>,
    Reader(p, _): Reader<ManageWebhooks>,
) -> Result<Json<Vec<Endpoint>>, ApiError> {
    Ok(Json(state.webhooks.endpoints(scope(&p)).await?))
}

/// Remove an endpoint (and its pending deliveries).
#[utoipa::path(delete, path = "/api/v1/webhooks/{id}", tag = "alerts", operation_id = "remove_webhook",
    params(("id" = String, Path, description = "Endpoint id")),
    responses((status = 204, description = "Removed"), (status = 404, description = "No such endpoint", body = meter_ingest::Problem)),
    security(("bearer" = [])))]
pub async fn remove(
    State(state): State<Arc<AppState>>,
    Reader(p, _): Reader<ManageWebhooks>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.webhooks.remove(&id, scope(&p)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Query of the delivery list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeliveriesQuery {
    /// `pending`, `delivered` or `dead` (the dead-letter list).
    pub state: Option<String>,
}

/// Deliveries, newest first (at most 1,000); `?state=dead` is the dead-letter list.
#[utoipa::path(get, path = "/api/v1/webhooks/deliveries", tag = "alerts", params(DeliveriesQuery),
    responses((status = 200, description = "Deliveries", body = Vec<Delivery>)),
    security(("bearer" = [])))]
pub async fn deliveries(
    State(state): State<Arc<AppState>>,
    Reader(p, _): Reader<ManageWebhooks>,
    query: Result<Query<DeliveriesQuery>, QueryRejection>,
) -> Result<Json<Vec<Delivery>>, ApiError> {
    let Query(q) = query?;
    if let Some(s) = q.state.as_deref().filter(|s| !["pending", "delivered", "dead"].contains(s)) {
        return Err(ApiError::Invalid(vec![FieldError::invalid(
            "state",
            format!("must be pending, delivered or dead, not {s:?}"),
        )]));
    }
    Ok(Json(state.webhooks.deliveries(scope(&p), q.state.as_deref(), 1000).await?))
}

/// Send a dead delivery again, now, with a fresh retry window.
#[utoipa::path(post, path = "/api/v1/webhooks/deliveries/{id}/retry", tag = "alerts",
    params(("id" = u64, Path, description = "Delivery id")),
    responses((status = 202, description = "Queued"), (status = 404, description = "No such dead delivery", body = meter_ingest::Problem)),
    security(("bearer" = [])))]
pub async fn retry(
    State(state): State<Arc<AppState>>,
    Reader(p, _): Reader<ManageWebhooks>,
    Path(id): Path<u64>,
) -> Result<StatusCode, ApiError> {
    state.webhooks.retry(id, scope(&p)).await?;
    Ok(StatusCode::ACCEPTED)
}
