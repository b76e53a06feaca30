//! `GET /api/v1/usage`: a tenant's usage in a period, per meter, with the daily series and the
//! watermark up to which it is complete.

use crate::AppState;
use crate::auth::{ReadUsage, Reader};
use crate::error::ApiError;
use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use meter_schemas::envelope::check_id;
use meter_schemas::period::{date_start_us, day_of, format_day, format_time, now_us};
use meter_schemas::{Aggregation, FieldError, Period};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use utoipa::{IntoParams, ToSchema};

/// Query of the usage endpoint.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UsageQuery {
    /// Tenant; implied by a tenant-scoped read key, required with an admin key.
    pub tenant: Option<String>,
    /// `YYYY-MM` (UTC calendar month); default: the current month.
    pub period: Option<String>,
    /// `live` (the aggregator's counters) or `store` (the history: ClickHouse when configured);
    /// default: `live` while events can still arrive for the period, `store` after.
    pub source: Option<Source>,
}

pub use meter_store::Source;

/// One day of a meter's series.
#[derive(Debug, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct DayValue {
    /// `YYYY-MM-DD`.
    pub date: String,
    /// Exact decimal text; null for `max`/`latest` on a day without events.
    pub value: Option<String>,
}

/// One meter's usage.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MeterUsage {
    /// Meter name.
    pub name: String,
    /// How the meter folds events.
    pub aggregation: Aggregation,
    /// Event code it reads.
    pub event: String,
    /// Period-to-date value, exact decimal text; null for `max`/`latest` with no events.
    pub value: Option<String>,
    /// One entry per day of the period up to today.
    pub daily: Vec<DayValue>,
}

/// A tenant's usage in a period.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Usage {
    /// Tenant.
    pub tenant: String,
    /// `YYYY-MM`.
    pub period: String,
    /// First instant of the period (RFC 3339).
    pub from: String,
    /// First instant after the period (RFC 3339).
    pub to: String,
    /// Every event acknowledged by ingest before this instant is counted (RFC 3339); null until
    /// the aggregator has caught up once.
    pub watermark: Option<String>,
    /// True once no more events can arrive for the period: the watermark is past the period's
    /// end plus the lateness window.
    pub complete: bool,
    /// Where the figures come from.
    pub source: Source,
    /// Every configured meter, in configuration order.
    pub meters: Vec<MeterUsage>,
}

/// A tenant's usage in a period.
#[utoipa::path(
    get,
    path = "/api/v1/usage",
    tag = "usage",
    params(UsageQuery),
    responses(
        (status = 200, description = "Usage per meter", body = Usage),
        (status = 401, description = "Missing, malformed, unknown or revoked key", body = meter_ingest_docs::Problem),
        (status = 403, description = "The key may not read this tenant", body = meter_ingest_docs::Problem),
        (status = 422, description = "A bad query parameter", body = meter_ingest_docs::Problem),
    ),
    security(("bearer" = []))
)]
pub async fn get_usage(
    State(state): State<Arc<AppState>>,
    Reader(principal, _): Reader<ReadUsage>,
    query: Result<Query<UsageQuery>, QueryRejection>,
) -> Result<Json<Usage>, ApiError> {
    let (query, mut problems) = read_request(query, |q| q.tenant.as_deref())?;
    let now = now_us();
    let period = match query.period.as_deref().map(str::parse::<Period>) {
        None => Some(Period::containing(now)),
        Some(Ok(p)) => Some(p),
        Some(Err(e)) => {
            problems.push(FieldError::invalid("period", e.to_string()));
            None
        }
    };
    if !problems.is_empty() {
        return Err(ApiError::Invalid(problems));
    }
    let period = period.expect("checked above");
    let tenant = principal.readable_tenant(query.tenant.as_deref())?;
    let source = query.source.unwrap_or(state.reads.default_source(period, now));
    let stored = state.reads.usage(&tenant, period, source).await?;
    let days_so_far: Vec<_> = period.days().filter(|d| date_start_us(*d) <= now).collect();
    let meters = state
        .catalog
        .meters()
        .iter()
        .map(|m| {
            let tallies = stored.meters.get(&m.name).cloned().unwrap_or_default();
            let daily = days_so_far
                .iter()
                .map(|d| {
                    let date = format_day(*d);
                    let value = tallies.days.get(&date).cloned().unwrap_or_default().display(m.aggregation);
                    DayValue { date, value }
                })
                .collect();
            MeterUsage {
                name: m.name.clone(),
                aggregation: m.aggregation,
                event: m.event.clone(),
                value: tallies.period.display(m.aggregation),
                daily,
            }
        })
        .collect();
    let complete = state.reads.complete(period, stored.watermark_us);
    Ok(Json(Usage {
        tenant,
        period: period.to_string(),
        from: format_time(period.start_us()),
        to: format_time(period.end_us()),
        watermark: stored.watermark_us.map(format_time),
        complete,
        source,
        meters,
    }))
}

/// What both usage reads check first: a query that parses, and the tenant's form (a problem to
/// report with the others).
fn read_request<Q>(
    query: Result<Query<Q>, QueryRejection>,
    tenant: impl Fn(&Q) -> Option<&str>,
) -> Result<(Q, Vec<FieldError>), ApiError> {
    let Query(query) = query?;
    let mut problems = Vec::new();
    if let Some(Err(m)) = tenant(&query).map(check_id) {
        problems.push(FieldError::invalid("tenant", m));
    }
    Ok((query, problems))
}

/// Query of the daily series endpoint.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DailyQuery {
    /// Tenant; implied by a tenant-scoped read key, required with an admin key.
    pub tenant: Option<String>,
    /// How many days back from today (UTC), today included: 30, 60 or 90.
    pub days: Option<u32>,
}

/// One meter's daily values.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MeterSeries {
    /// Meter name.
    pub name: String,
    /// How the meter folds events.
    pub aggregation: Aggregation,
    /// One entry per day, oldest first.
    pub daily: Vec<DayValue>,
}

/// A tenant's daily series.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DailySeries {
    /// Tenant.
    pub tenant: String,
    /// First day (`YYYY-MM-DD`).
    pub from: String,
    /// Last day, today (`YYYY-MM-DD`).
    pub to: String,
    /// Days from this one on come from the live counters (periods events can still arrive
    /// for); earlier days from the store's history.
    pub live_from: String,
    /// Every configured meter, in configuration order.
    pub meters: Vec<MeterSeries>,
}

/// A tenant's daily usage over the last 30, 60 or 90 days.
#[utoipa::path(
    get,
    path = "/api/v1/usage/daily",
    tag = "usage",
    params(DailyQuery),
    responses(
        (status = 200, description = "Daily values per meter", body = DailySeries),
        (status = 401, description = "Missing, malformed, unknown or revoked key", body = meter_ingest_docs::Problem),
        (status = 403, description = "The key may not read this tenant", body = meter_ingest_docs::Problem),
        (status = 422, description = "A bad query parameter", body = meter_ingest_docs::Problem),
    ),
    security(("bearer" = []))
)]
pub async fn get_daily(
    State(state): State<Arc<AppState>>,
    Reader(principal, _): Reader<ReadUsage>,
    query: Result<Query<DailyQuery>, QueryRejection>,
) -> Result<Json<DailySeries>, ApiError> {
    let (query, mut problems) = read_request(query, |q| q.tenant.as_deref())?;
    let days = query.days.unwrap_or(30);
    if ![30, 60, 90].contains(&days) {
        problems.push(FieldError::invalid("days", format!("must be 30, 60 or 90, not {days}")));
    }
    if !problems.is_empty() {
        return Err(ApiError::Invalid(problems));
    }
    let tenant = principal.readable_tenant(query.tenant.as_deref())?;
    let now = now_us();
    let today = day_of(now);
    let first = today - time::Duration::days(i64::from(days) - 1);
    let range = state.reads.daily(&tenant, first, today, now).await?;
    let (series, live_from) = (range.series, range.live_from);
    let dates: Vec<String> = (0..days).map(|i| format_day(first + time::Duration::days(i64::from(i)))).collect();
    let meters = state
        .catalog
        .meters()
        .iter()
        .map(|m| {
            let values = series.get(&m.name);
            let daily = dates
                .iter()
                .map(|date| DayValue {
                    date: date.clone(),
                    value: values.and_then(|v| v.get(date)).cloned().unwrap_or_default().display(m.aggregation),
                })
                .collect();
            MeterSeries { name: m.name.clone(), aggregation: m.aggregation, daily }
        })
        .collect();
    Ok(Json(DailySeries {
        tenant,
        from: format_day(first),
        to: format_day(today),
        live_from: format_day(live_from),
        meters,
    }))
}

/// Re-export of the problem schema for the document.
mod meter_ingest_docs {
    pub use meter_ingest::Problem;
}
