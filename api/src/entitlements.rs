//! `GET /api/v1/entitlements`: what a tenant's plan allows now, from its feature matrix and the
//! live counters.

use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use meter_auth::Principal;
use meter_billing::{Entitlement, Entitlements};
use meter_schemas::period::now_us;
use serde::Deserialize;
use std::sync::Arc;
use utoipa::IntoParams;

/// Query of the entitlement endpoints.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EntitlementsQuery {
    /// Tenant; implied by a tenant's key, required with an admin or service key.
    pub tenant: Option<String>,
}

async fn read(
    state: &AppState,
    p: Principal,
    query: Result<Query<EntitlementsQuery>, QueryRejection>,
) -> Result<Entitlements, ApiError> {
    let Query(q) = query?;
    crate::check_tenant(q.tenant.as_deref())?;
    let tenant = p.readable_tenant(q.tenant.as_deref())?;
    let coverage = state.reads.live_coverage(&tenant);
    let b = &state.billing.subscriptions;
    meter_billing::entitlements(&b.allowances, state.store(), coverage, &state.catalog, &tenant, now_us())
        .await
        .map_err(|e| match e {
            meter_billing::Error::NotFound(_) => ApiError::Missing(format!("tenant {tenant} has no live subscription")),
            // The plan is missing from the price list: the server's configuration, not the request.
            meter_billing::Error::PriceBook(m) => {
                tracing::error!(%tenant, error = %m, "entitlements: the price book does not have the tenant's plan");
                ApiError::Internal
            }
            e => e.into(),
        })
}

/// Every feature and meter the tenant's plan has: allowed or not, limit, used, remaining.
#[utoipa::path(get, path = "/api/v1/entitlements", tag = "alerts", operation_id = "list_entitlements", params(EntitlementsQuery),
    responses(
        (status = 200, description = "The tenant's entitlements", body = Entitlements),
        (status = 404, description = "The tenant has no live subscription", body = meter_ingest::Problem),
    ),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<Arc<AppState>>,
    // Tenant services ask too: any key may read entitlements (a tenant's, only its own).
    Caller(p): Caller,
    query: Result<Query<EntitlementsQuery>, QueryRejection>,
) -> Result<Json<Entitlements>, ApiError> {
    Ok(Json(read(&state, p, query).await?))
}

/// One feature or meter of the tenant's plan.
#[utoipa::path(get, path = "/api/v1/entitlements/{feature}", tag = "alerts", operation_id = "get_entitlement",
    params(("feature" = String, Path, description = "A feature of the plan's matrix, or a meter"), EntitlementsQuery),
    responses(
        (status = 200, description = "The entitlement", body = Entitlement),
        (status = 404, description = "No such feature or meter in the plan, or no live subscription", body = meter_ingest::Problem),
    ),
    security(("bearer" = [])))]
pub async fn one(
    State(state): State<Arc<AppState>>,
    Caller(p): Caller,
    Path(feature): Path<String>,
    query: Result<Query<EntitlementsQuery>, QueryRejection>,
) -> Result<Json<Entitlement>, ApiError> {
    let all = read(&state, p, query).await?;
    let names: Vec<String> = all.entitlements.iter().map(|e| e.name.clone()).collect();
    all.entitlements.into_iter().find(|e| e.name == feature).map(Json).ok_or_else(|| {
        ApiError::Missing(format!(
            "plan {} has no feature or meter {feature:?} (it has: {})",
            all.plan,
            names.join(", ")
        ))
    })
}
