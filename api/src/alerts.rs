//! `GET /api/v1/alerts`: the usage alerts raised as counters reached their thresholds.

use crate::AppState;
use crate::auth::*;
use crate::error::ApiError;
use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};

use meter_schemas::FieldError;
use meter_store::Alert;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use utoipa::{IntoParams, ToSchema};

/// Most alerts one answer lists.
const MAX_LIMIT: usize = 1000;

/// Query of the alert list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AlertsQuery {
    /// Only this tenant's (implied by a tenant's read key; optional with an admin key).
    pub tenant: Option<String>,
    /// Only alerts after this `seq` (to page, or to follow new ones).
    pub after: Option<u64>,
    /// At most this many (default and most: 1000).
    pub limit: Option<usize>,
}

/// A page of alerts.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Alerts {
    /// Oldest first.
    pub alerts: Vec<Alert>,
    /// The `after` that continues from here.
    pub next_after: u64,
}

/// Alerts raised: each meter of each tenant at each of its plan's percentages (80, 90, 100 by
/// default) of the included quantity, once per period.
#[utoipa::path(get, path = "/api/v1/alerts", tag = "alerts", params(AlertsQuery),
    responses(
        (status = 200, description = "Alerts, oldest first", body = Alerts),
        (status = 403, description = "The key may not read these alerts", body = meter_ingest::Problem),
        (status = 422, description = "A bad query parameter", body = meter_ingest::Problem),
    ),
    security(("bearer" = [])))]
pub async fn list_alerts(
    State(state): State<Arc<AppState>>,
    Reader(p, _): Reader<ReadAlerts>,
    query: Result<Query<AlertsQuery>, QueryRejection>,
) -> Result<Json<Alerts>, ApiError> {
    let Query(q) = query?;
    crate::check_tenant(q.tenant.as_deref())?;
    let limit = q.limit.unwrap_or(MAX_LIMIT);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(ApiError::Invalid(vec![FieldError::invalid("limit", format!("must be 1 to {MAX_LIMIT}"))]));
    }
    let tenant = match (&p.tenant, q.tenant) {
        (None, t) => t,
        (Some(_), t) => Some(p.readable_tenant(t.as_deref())?),
    };
    let after = q.after.unwrap_or(0);
    let alerts = state.live.alerts(tenant.as_deref(), after, limit).await?;
    let next_after = alerts.last().map_or(after, |a| a.seq);
    Ok(Json(Alerts { alerts, next_after }))
}
