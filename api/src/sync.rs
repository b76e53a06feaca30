//! The payment sync: where a closed period's invoices stand with the provider, the dead list,
//! and retrying an operation from it.

use crate::AppState;
use crate::auth::{Admin, ExportPeriods, ManageSync, StripeSigned};
use crate::billing::period_of;
use crate::error::ApiError;
use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use meter_billing::ledger::outbox::{OpState, Operation};
use meter_billing_sync::status::PeriodSync;
use meter_schemas::FieldError;
use serde::Deserialize;
use std::sync::Arc;
use utoipa::IntoParams;

/// Where a closed period's invoices stand with the payment provider (admin): synced (their
/// totals checked equal to meter's), not synced (no provider), pending, dead (with why).
#[utoipa::path(get, path = "/api/v1/periods/{period}/sync", tag = "billing", operation_id = "period_sync",
    params(("period" = String, Path, description = "YYYY-MM")),
    responses((status = 200, description = "The period's sync", body = PeriodSync)),
    security(("bearer" = [])))]
pub async fn period_sync(
    State(state): State<Arc<AppState>>,
    _: Admin<ExportPeriods>,
    Path(period): Path<String>,
) -> Result<Json<PeriodSync>, ApiError> {
    let period = period_of(&period)?;
    let now = meter_schemas::period::now_us();
    Ok(Json(meter_billing_sync::status::period_sync(&state.billing.subscriptions.ledger, period, now).await?))
}

/// A closed period reconciled against the payment provider (admin): for every meter invoice,
/// whether the provider holds it exactly once, in its currency, each line's amount and the total
/// before tax, its status there and the tax it added; money rated and pushed per currency.
#[utoipa::path(get, path = "/api/v1/periods/{period}/reconciliation", tag = "billing", operation_id = "reconcile_period",
    params(("period" = String, Path, description = "YYYY-MM")),
    responses((status = 200, description = "The reconciliation", body = meter_billing_sync::reconcile::Reconciliation)),
    security(("bearer" = [])))]
pub async fn reconciliation(
    State(state): State<Arc<AppState>>,
    _: Admin<ExportPeriods>,
    Path(period): Path<String>,
) -> Result<Json<meter_billing_sync::reconcile::Reconciliation>, ApiError> {
    let period = period_of(&period)?;
    let ledger = &state.billing.subscriptions.ledger;
    Ok(Json(meter_billing_sync::reconcile::reconcile(ledger, &*state.billing.provider, period).await?))
}

/// Query of the operation list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct OperationsQuery {
    /// `pending`, `done` or `dead` (the dead list).
    pub state: Option<String>,
}

/// The sync's operations (admin), oldest first; `?state=dead` is the dead list.
#[utoipa::path(get, path = "/api/v1/sync/operations", tag = "billing", operation_id = "list_sync_operations", params(OperationsQuery),
    responses((status = 200, description = "Operations", body = Vec<Operation>)),
    security(("bearer" = [])))]
pub async fn operations(
    State(state): State<Arc<AppState>>,
    _: Admin<ManageSync>,
    query: Result<Query<OperationsQuery>, QueryRejection>,
) -> Result<Json<Vec<Operation>>, ApiError> {
    let Query(q) = query?;
    let wanted = match q.state.as_deref() {
        None => None,
        Some(s) => Some(OpState::parse(s).ok_or_else(|| {
            ApiError::Invalid(vec![FieldError::invalid("state", format!("must be pending, done or dead, not {s:?}"))])
        })?),
    };
    Ok(Json(state.billing.subscriptions.ledger.operations(wanted, None).await?))
}

/// Try a dead operation again (admin), now; it keeps its idempotency keys.
#[utoipa::path(post, path = "/api/v1/sync/operations/{id}/retry", tag = "billing", operation_id = "retry_sync_operation",
    params(("id" = i64, Path, description = "Operation id")),
    responses((status = 202, description = "Queued"), (status = 404, description = "No such dead operation", body = meter_ingest::Problem)),
    security(("bearer" = [])))]
pub async fn retry(
    State(state): State<Arc<AppState>>,
    _: Admin<ManageSync>,
    Path(id): Path<i64>,
) -> Result<StatusCode, ApiError> {
    state.billing.subscriptions.ledger.revive(id, meter_schemas::period::now_us()).await?;
    Ok(StatusCode::ACCEPTED)
}

/// Stripe's events (signed by Stripe with `[stripe] webhook_secret`; no API key). A verified
/// event is kept by its id and answered at once; a redelivery changes nothing. A bad or stale
/// signature (older than 300 s) is a 400 and changes nothing.
#[utoipa::path(post, path = "/api/v1/stripe/webhook", tag = "billing", operation_id = "stripe_webhook", request_body = String,
    responses(
        (status = 200, description = "Kept (or kept before)"),
        (status = 400, description = "Signature missing, wrong or stale; or not an event", body = meter_ingest::Problem),
        (status = 404, description = "No webhook secret configured", body = meter_ingest::Problem),
    ))]
pub async fn stripe_webhook(
    State(state): State<Arc<AppState>>,
    StripeSigned(body): StripeSigned,
) -> Result<Json<serde_json::Value>, ApiError> {
    let event = meter_billing_sync::events::parse(&body)?;
    let id = event.id.clone();
    let new = meter_billing_sync::events::receive(&state.billing.subscriptions.ledger, event).await?;
    Ok(Json(serde_json::json!({"received": id, "duplicate": !new})))
}

/// Every month from the first closed one to this one, newest first (admin), each with where it
/// stands: open, ended, closable, not_closed, closed, complete or synced, and for a closed one
/// its invoices' sync.
#[utoipa::path(get, path = "/api/v1/periods", tag = "billing", operation_id = "list_periods",
    responses((status = 200, description = "The months", body = [meter_billing_sync::status::PeriodState])),
    security(("bearer" = [])))]
pub async fn periods(
    State(state): State<Arc<AppState>>,
    _: Admin<ExportPeriods>,
) -> Result<Json<Vec<meter_billing_sync::status::PeriodState>>, ApiError> {
    // The history's watermark: what a close checks before it closes a month.
    let sources = &state.billing.sources;
    let watermark = sources.history.watermark(&sources.history_consumer, sources.partitions).await?;
    let now = meter_schemas::period::now_us();
    let ledger = &state.billing.subscriptions.ledger;
    Ok(Json(meter_billing_sync::status::periods(ledger, watermark, sources.lateness_us, now).await?))
}
