//! A tenant's closed invoices, each with where its payment stands: its own with a read key or a
//! portal session, any tenant's with an admin key; as JSON or CSV (one row per line, with its
//! lineage).

use crate::AppState;
use crate::auth::{ReadSubscriptions, Reader};
use crate::billing::wants_csv;
use crate::error::ApiError;
use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use meter_billing_sync::status::BilledInvoice;
use serde::Deserialize;
use std::sync::Arc;
use utoipa::IntoParams;

/// Whose invoices, and how.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct InvoicesQuery {
    /// The tenant; implied by a tenant's key or session, required with an admin key.
    pub tenant: Option<String>,
    /// `json` (default) or `csv`.
    pub format: Option<String>,
}

/// How one invoice is given.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct InvoiceQuery {
    /// `json` (default) or `csv`.
    pub format: Option<String>,
}

fn answer(invoices: Vec<BilledInvoice>, csv: bool) -> Response {
    if csv {
        let plain: Vec<meter_rater::Invoice> = invoices.into_iter().map(|b| b.invoice).collect();
        ([(CONTENT_TYPE, "text/csv; charset=utf-8")], meter_billing::export::invoices_csv(&plain)).into_response()
    } else {
        Json(invoices).into_response()
    }
}

/// A tenant's closed invoices, newest period first, each with its lines' lineage and where its
/// payment stands at the provider (status, sent, due, paid, overdue).
#[utoipa::path(get, path = "/api/v1/invoices", tag = "billing", operation_id = "list_invoices", params(InvoicesQuery),
    responses(
        (status = 200, description = "The invoices (JSON), or their lines (CSV)"),
        (status = 403, description = "Another tenant's", body = meter_ingest::Problem),
        (status = 422, description = "A bad tenant or format", body = meter_ingest::Problem),
    ),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<Arc<AppState>>,
    Reader(p, _): Reader<ReadSubscriptions>,
    query: Result<Query<InvoicesQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query?;
    crate::check_tenant(q.tenant.as_deref())?;
    let csv = wants_csv(q.format.as_deref())?;
    let tenant = p.readable_tenant(q.tenant.as_deref())?;
    let now = meter_schemas::period::now_us();
    let invoices = meter_billing_sync::status::invoices_of(&state.billing.subscriptions.ledger, &tenant, now).await?;
    Ok(answer(invoices, csv))
}

/// One closed invoice: its tenant's (404 for another tenant's, as for none), any with an admin
/// key.
#[utoipa::path(get, path = "/api/v1/invoices/{id}", tag = "billing", operation_id = "get_invoice",
    params(("id" = String, Path, description = "The invoice's id"), InvoiceQuery),
    responses(
        (status = 200, description = "The invoice (JSON), or its lines (CSV)"),
        (status = 404, description = "No such invoice of the caller's tenant", body = meter_ingest::Problem),
    ),
    security(("bearer" = [])))]
pub async fn one(
    State(state): State<Arc<AppState>>,
    Reader(p, _): Reader<ReadSubscriptions>,
    Path(id): Path<String>,
    query: Result<Query<InvoiceQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query?;
    let csv = wants_csv(q.format.as_deref())?;
    let now = meter_schemas::period::now_us();
    let ledger = &state.billing.subscriptions.ledger;
    let found = meter_billing_sync::status::invoice(ledger, &id, p.tenant.as_deref(), now)
        .await?
        .ok_or_else(|| ApiError::Missing(format!("no invoice {id}")))?;
    Ok(answer(vec![found], csv))
}

/// As of which day.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ReceivablesQuery {
    /// `YYYY-MM-DD` (UTC): as at the end of that day; default now.
    pub as_of: Option<String>,
}

/// Accounts receivable (admin): what customers owe on the invoices the payment provider holds,
/// per currency, by age (current, 1–30, 31–60, 61–90, over 90 days past due), with the last 90
/// days' billing, collection rate and DSO, and every outstanding invoice, most overdue first.
#[utoipa::path(get, path = "/api/v1/receivables", tag = "billing", operation_id = "get_receivables", params(ReceivablesQuery),
    responses(
        (status = 200, description = "Receivables"),
        (status = 422, description = "A bad as_of", body = meter_ingest::Problem),
    ),
    security(("bearer" = [])))]
pub async fn receivables(
    State(state): State<Arc<AppState>>,
    _: crate::auth::Admin<crate::auth::ExportPeriods>,
    query: Result<Query<ReceivablesQuery>, QueryRejection>,
) -> Result<Json<meter_billing_sync::receivables::Receivables>, ApiError> {
    let Query(q) = query?;
    let as_of = match q.as_of.as_deref() {
        None => meter_schemas::period::now_us(),
        Some(day) => {
            let format = time::macros::format_description!("[year]-[month]-[day]");
            let date = time::Date::parse(day, &format).map_err(|_| {
                ApiError::Invalid(vec![meter_schemas::FieldError::invalid(
                    "as_of",
                    format!("{day:?} is not a YYYY-MM-DD day"),
                )])
            })?;
            let next = date.next_day().unwrap_or(date).midnight().assume_utc();
            (next.unix_timestamp_nanos() / 1_000) as i64 - 1
        }
    };
    let ledger = &state.billing.subscriptions.ledger;
    Ok(Json(meter_billing_sync::receivables::of(ledger, as_of).await?))
}

/// Which month, and how.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct RevenueQuery {
    /// `YYYY-MM`.
    pub period: String,
    /// `json` (default) or `csv`.
    pub format: Option<String>,
}

/// A month's recurring revenue (admin), per currency: MRR at its start and end, ARR, and the
/// month's movements (new, expansion, contraction, churn, reactivation, net new); subscriptions
/// by state at its end.
#[utoipa::path(get, path = "/api/v1/revenue", tag = "billing", operation_id = "get_revenue", params(RevenueQuery),
    responses(
        (status = 200, description = "The month's revenue (JSON), or one row per currency (CSV)"),
        (status = 422, description = "A bad period or format", body = meter_ingest::Problem),
    ),
    security(("bearer" = [])))]
pub async fn revenue(
    State(state): State<Arc<AppState>>,
    _: crate::auth::Admin<crate::auth::ExportPeriods>,
    query: Result<Query<RevenueQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query?;
    let csv = wants_csv(q.format.as_deref())?;
    let period = crate::billing::period_of(&q.period)?;
    let revenue = state.billing.subscriptions.revenue(period, meter_schemas::period::now_us()).await?;
    Ok(if csv {
        ([(CONTENT_TYPE, "text/csv; charset=utf-8")], revenue.csv()).into_response()
    } else {
        Json(revenue).into_response()
    })
}
