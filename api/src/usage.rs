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
    let period = period_of(query.period.as_deref(), now, &mut problems);
    if !problems.is_empty() {
        return Err(ApiError::Invalid(problems));
    }
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

/// The `period` parameter: the current month when absent; a problem pushed when malformed.
fn period_of(period: Option<&str>, now: i64, problems: &mut Vec<FieldError>) -> Period {
    match period.map(str::parse::<Period>) {
        None => Period::containing(now),
        Some(Ok(p)) => p,
        Some(Err(e)) => {
            problems.push(FieldError::invalid("period", e.to_string()));
            Period::containing(now)
        }
    }
}

/// Query of the breakdown endpoint.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct BreakdownQuery {
    /// Tenant; implied by a tenant-scoped read key, required with an admin key.
    pub tenant: Option<String>,
    /// `YYYY-MM` (UTC calendar month); default: the current month.
    pub period: Option<String>,
    /// As for `/api/v1/usage`.
    pub source: Option<Source>,
    /// How many of the largest values to list for each property, 1 to 100; default 5.
    pub top: Option<u32>,
}

/// One value of a property and what its events add to the meter.
#[derive(Debug, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct Share {
    /// The property's value; null for events without it.
    pub value: Option<String>,
    /// Exact decimal text.
    pub amount: String,
}

/// Every value besides the top ones.
#[derive(Debug, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct Rest {
    /// How many values.
    pub values: usize,
    /// Their amount together, exact decimal text.
    pub amount: String,
}

/// A meter's period total by one of its `group_by` properties.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DimensionUsage {
    /// The meter.
    pub meter: String,
    /// The property.
    pub property: String,
    /// Every value's amount added up (the meter's total over the events counted since it was
    /// broken down), exact decimal text.
    pub total: String,
    /// The largest values, largest first.
    pub top: Vec<Share>,
    /// The others.
    pub rest: Rest,
}

/// A tenant's broken-down meters in a period.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Breakdown {
    /// Tenant.
    pub tenant: String,
    /// `YYYY-MM`.
    pub period: String,
    /// Where the figures come from.
    pub source: Source,
    /// Each broken-down meter with events, by property.
    pub dimensions: Vec<DimensionUsage>,
}

/// A tenant's usage by dimension: each meter that declares `group_by` properties (by default
/// `agent_tokens` by `model`, `api_calls` by `route`), with each property's largest values.
#[utoipa::path(
    get,
    path = "/api/v1/usage/breakdown",
    tag = "usage",
    params(BreakdownQuery),
    responses(
        (status = 200, description = "Usage by dimension", body = Breakdown),
        (status = 401, description = "Missing, malformed, unknown or revoked key", body = meter_ingest_docs::Problem),
        (status = 403, description = "The key may not read this tenant", body = meter_ingest_docs::Problem),
        (status = 422, description = "A bad query parameter", body = meter_ingest_docs::Problem),
    ),
    security(("bearer" = []))
)]
pub async fn get_breakdown(
    State(state): State<Arc<AppState>>,
    Reader(principal, _): Reader<ReadUsage>,
    query: Result<Query<BreakdownQuery>, QueryRejection>,
) -> Result<Json<Breakdown>, ApiError> {
    let (query, mut problems) = read_request(query, |q| q.tenant.as_deref())?;
    let now = now_us();
    let period = period_of(query.period.as_deref(), now, &mut problems);
    let top = query.top.unwrap_or(5);
    if !(1..=100).contains(&top) {
        problems.push(FieldError::invalid("top", format!("must be from 1 to 100, not {top}")));
    }
    if !problems.is_empty() {
        return Err(ApiError::Invalid(problems));
    }
    let tenant = principal.readable_tenant(query.tenant.as_deref())?;
    let source = query.source.unwrap_or(state.reads.default_source(period, now));
    let text = |d: rust_decimal::Decimal| d.normalize().to_string();
    let dimensions = state
        .reads
        .breakdown(&tenant, period, source, top as usize)
        .await?
        .into_iter()
        .map(|d| DimensionUsage {
            total: text(d.total),
            top: d
                .top
                .into_iter()
                .map(|(v, a)| Share { value: (!v.is_empty()).then_some(v), amount: text(a) })
                .collect(),
            rest: Rest { values: d.rest.0, amount: text(d.rest.1) },
            meter: d.meter,
            property: d.property,
        })
        .collect();
    Ok(Json(Breakdown { tenant, period: period.to_string(), source, dimensions }))
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
