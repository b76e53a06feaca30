//! Subscriptions (`/api/v1/subscriptions`), period close and its exports (`/api/v1/periods`),
//! and the upcoming invoice (`/api/v1/invoices/upcoming`).

use crate::AppState;
use crate::auth::*;
use crate::check_tenant;
use crate::error::ApiError;
use axum::Json;
use axum::body::Body;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::header::{ACCEPT, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use meter_auth::Role;
use meter_billing::export::{Export, Format, Rows};
use meter_billing::ledger::Closed;
use meter_rater::subscription::allowed;
use meter_rater::{Command, Cycle, Entry, Setup, State as SubState, Subscription};
use meter_schemas::period::{format_time, now_us};
use meter_schemas::{FieldError, Period};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use utoipa::{IntoParams, ToSchema};

/// How far ahead of the server's clock a change may be dated.
const FUTURE_SKEW_US: i64 = 5 * 60 * 1_000_000;

/// A new subscription.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSubscription {
    /// The tenant it bills.
    pub tenant: String,
    /// Plan code (`starter`, `professional`, `enterprise`, `enterprise_plus` in the sample).
    pub plan: String,
    /// `monthly`, `quarterly` or `annual`.
    pub cycle: Cycle,
    /// Years committed, 1 to 10 (default 1; 2 or more earns the multi-year discount).
    pub term_years: Option<u32>,
    /// Renew at each cycle's end (default true).
    pub auto_renew: Option<bool>,
    /// Start with the plan's trial (default false).
    pub trial: Option<bool>,
    /// When it starts (RFC 3339; default now). Not in a closed period, not in the future.
    pub at: Option<String>,
}

/// A change to a subscription.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangeRequest {
    /// The new plan (`change_plan` only).
    pub plan: Option<String>,
    /// The new cycle (`change_plan` only; default: the current one).
    pub cycle: Option<Cycle>,
    /// When it takes effect (RFC 3339; default now): not before the subscription's last change,
    /// not in a closed period, not in the future.
    pub at: Option<String>,
}

/// A subscription as the API shows it: its state now and its whole audit trail.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SubscriptionView {
    /// Id.
    pub id: String,
    /// Tenant.
    pub tenant: String,
    /// Plan code.
    pub plan: String,
    /// Billing cycle.
    pub cycle: Cycle,
    /// State now.
    pub state: SubState,
    /// Years committed.
    pub term_years: u32,
    /// Renews by itself.
    pub auto_renew: bool,
    /// The running cycle's start (RFC 3339).
    pub cycle_start: Option<String>,
    /// The running cycle's end (RFC 3339).
    pub cycle_end: Option<String>,
    /// End of the trial, while in one.
    pub trial_ends: Option<String>,
    /// When a cancelled subscription expires.
    pub ends: Option<String>,
    /// The actions the state allows.
    pub allowed: Vec<String>,
    /// Every change, oldest first.
    pub trail: Vec<TrailEntry>,
}

/// An audit-trail entry with its time as text.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TrailEntry {
    /// When it took effect (RFC 3339).
    pub at: String,
    /// The entry.
    #[serde(flatten)]
    pub entry: Entry,
}

impl SubscriptionView {
    fn of(mut s: Subscription, now: i64) -> Self {
        s.advance(now);
        let state = s.state();
        SubscriptionView {
            plan: s.plan().to_string(),
            cycle: s.cycle(),
            state,
            cycle_start: s.current_cycle().map(|c| format_time(c.0)),
            cycle_end: s.current_cycle().map(|c| format_time(c.1)),
            trial_ends: s.trial_ends_us().map(format_time),
            ends: s.ends_us().filter(|_| state == SubState::Cancelled).map(format_time),
            allowed: allowed(state).iter().map(|a| a.to_string()).collect(),
            term_years: s.term_years,
            auto_renew: s.auto_renew,
            trail: s.entries.into_iter().map(|entry| TrailEntry { at: format_time(entry.at_us), entry }).collect(),
            id: s.id,
            tenant: s.tenant,
        }
    }
}

/// Query of the subscription list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only this tenant's (implied by a tenant-scoped read key).
    pub tenant: Option<String>,
}

fn body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    Ok(body.map(|Json(b)| b)?)
}

/// The instant of an `at` field: RFC 3339, not in the future; default now.
fn instant(at: Option<&str>, now: i64) -> Result<i64, ApiError> {
    let Some(text) = at else { return Ok(now) };
    let us = meter_schemas::period::parse_time(text).ok_or_else(|| {
        ApiError::Invalid(vec![FieldError::invalid("at", format!("{text:?} is not an RFC 3339 time"))])
    })?;
    if us > now + FUTURE_SKEW_US {
        return Err(ApiError::Invalid(vec![FieldError::invalid("at", "must not be in the future")]));
    }
    Ok(us)
}

/// Create a subscription (admin).
#[utoipa::path(post, path = "/api/v1/subscriptions", tag = "billing", request_body = NewSubscription,
    responses(
        (status = 201, description = "Created", body = SubscriptionView),
        (status = 409, description = "The tenant has a live subscription, or `at` is in a closed period", body = meter_ingest::Problem),
        (status = 422, description = "A bad field", body = meter_ingest::Problem),
    ),
    security(("bearer" = [])))]
pub async fn create_subscription(
    State(state): State<Arc<AppState>>,
    Admin(who, _): Admin<ManageSubscriptions>,
    new: Result<Json<NewSubscription>, JsonRejection>,
) -> Result<(StatusCode, Json<SubscriptionView>), ApiError> {
    let new = body(new)?;
    check_tenant(Some(&new.tenant))?;
    let now = now_us();
    let at = instant(new.at.as_deref(), now)?;
    let setup = Setup {
        plan: new.plan,
        cycle: new.cycle,
        term_years: new.term_years.unwrap_or(1),
        auto_renew: new.auto_renew.unwrap_or(true),
        trial: new.trial.unwrap_or(false),
    };
    let sub = state.billing.subscriptions.create(&new.tenant, setup, at, &who.key_id, now).await?;
    tracing::info!(subscription = %sub.id, key = %who.key_id, "subscription created");
    Ok((StatusCode::CREATED, Json(SubscriptionView::of(sub, now))))
}

/// List subscriptions: every one (admin), or a tenant's.
#[utoipa::path(get, path = "/api/v1/subscriptions", tag = "billing", params(ListQuery),
    responses((status = 200, description = "Subscriptions, oldest first", body = Vec<SubscriptionView>)),
    security(("bearer" = [])))]
pub async fn list_subscriptions(
    State(state): State<Arc<AppState>>,
    Reader(p, _): Reader<ReadSubscriptions>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Vec<SubscriptionView>>, ApiError> {
    let Query(q) = query?;
    check_tenant(q.tenant.as_deref())?;
    let tenant = match (&p.tenant, q.tenant) {
        (None, t) => t,
        (Some(_), t) => Some(p.readable_tenant(t.as_deref())?),
    };
    let now = now_us();
    let subs = state.billing.subscriptions.ledger.list(tenant.as_deref()).await?;
    Ok(Json(subs.into_iter().map(|s| SubscriptionView::of(s, now)).collect()))
}

/// One subscription with its audit trail (admin, or the tenant's read key).
#[utoipa::path(get, path = "/api/v1/subscriptions/{id}", tag = "billing",
    params(("id" = String, Path, description = "Subscription id")),
    responses(
        (status = 200, description = "The subscription", body = SubscriptionView),
        (status = 404, description = "No such subscription (or another tenant's)", body = meter_ingest::Problem),
    ),
    security(("bearer" = [])))]
pub async fn get_subscription(
    State(state): State<Arc<AppState>>,
    Reader(p, _): Reader<ReadSubscriptions>,
    Path(id): Path<String>,
) -> Result<Json<SubscriptionView>, ApiError> {
    let sub = state.billing.subscriptions.ledger.get(&id).await?;
    if p.tenant.as_ref().is_some_and(|t| *t != sub.tenant) {
        return Err(meter_billing::Error::NotFound(id).into());
    }
    Ok(Json(SubscriptionView::of(sub, now_us())))
}

/// Change a subscription (admin): `change_plan`, `cancel`, `reactivate`, `payment_failed` or
/// `convert`. A change the state does not allow is a 409 listing what it allows.
#[utoipa::path(post, path = "/api/v1/subscriptions/{id}/{action}", tag = "billing", request_body = ChangeRequest,
    params(("id" = String, Path, description = "Subscription id"), ("action" = String, Path, description = "change_plan, cancel, reactivate, payment_failed or convert")),
    responses(
        (status = 200, description = "Changed", body = SubscriptionView),
        (status = 404, description = "No such subscription or action", body = meter_ingest::Problem),
        (status = 409, description = "Not allowed in the subscription's state (the body lists `allowed`), or in a closed period", body = meter_ingest::Problem),
        (status = 422, description = "A bad field", body = meter_ingest::Problem),
    ),
    security(("bearer" = [])))]
pub async fn change_subscription(
    State(state): State<Arc<AppState>>,
    Admin(who, _): Admin<ManageSubscriptions>,
    Path((id, action)): Path<(String, String)>,
    change: Result<Json<ChangeRequest>, JsonRejection>,
) -> Result<Json<SubscriptionView>, ApiError> {
    let change = match change {
        Err(JsonRejection::MissingJsonContentType(_)) => ChangeRequest::default(),
        other => body(other)?,
    };
    if action != "change_plan" && (change.plan.is_some() || change.cycle.is_some()) {
        return Err(ApiError::Invalid(vec![FieldError::invalid(
            "plan",
            format!("is only for change_plan, not {action}"),
        )]));
    }
    let command = match action.as_str() {
        "change_plan" => {
            let plan = change
                .plan
                .ok_or_else(|| ApiError::Invalid(vec![FieldError::invalid("plan", "is required to change plan")]))?;
            Command::ChangePlan { plan, cycle: change.cycle }
        }
        "cancel" => Command::Cancel,
        "reactivate" => Command::Reactivate,
        "payment_failed" => Command::PaymentFailed { grace_us: None },
        "convert" => Command::Convert,
        other => {
            return Err(ApiError::Missing(format!(
                "no action {other:?}: use change_plan, cancel, reactivate, payment_failed or convert"
            )));
        }
    };
    let now = now_us();
    let at = instant(change.at.as_deref(), now)?;
    let sub = state.billing.subscriptions.apply(&id, command, at, &who.key_id, now).await?;
    tracing::info!(subscription = %id, action, key = %who.key_id, "subscription changed");
    Ok(Json(SubscriptionView::of(sub, now)))
}

/// A close, without its rows: its drafts and its report export separately
/// (`/api/v1/periods/{period}/invoices` and `/report`).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CloseSummary {
    /// `YYYY-MM`.
    pub period: String,
    /// When it was closed.
    pub closed_at: String,
    /// Every event acknowledged before this instant was counted.
    pub watermark: String,
    /// True when no event for the period could still arrive; otherwise late ones go into
    /// adjustments on the next period.
    pub complete: bool,
    /// The price list version.
    pub price_version: String,
    /// Number of invoice drafts.
    pub invoices: usize,
    /// Their sum by currency.
    pub totals: BTreeMap<String, String>,
    /// Report rows whose figures differ.
    pub differences: usize,
}

impl From<&Closed> for CloseSummary {
    fn from(closed: &Closed) -> Self {
        let c = &closed.header;
        CloseSummary {
            period: c.period.to_string(),
            closed_at: c.closed_at.clone(),
            watermark: c.watermark.clone(),
            complete: c.complete,
            price_version: c.price_version.clone(),
            invoices: closed.invoices,
            totals: c.totals.iter().map(|(k, v)| (k.clone(), v.to_string())).collect(),
            differences: closed.differences,
        }
    }
}

pub(crate) fn period_of(text: &str) -> Result<Period, ApiError> {
    text.parse().map_err(|e: meter_schemas::period::PeriodError| {
        ApiError::Invalid(vec![FieldError::invalid("period", e.to_string())])
    })
}

/// Close a period (admin): freeze it at the store's watermark, rate every subscription, write
/// the drafts once. Running it again returns the same close. With `Accept: application/x-ndjson`
/// the answer streams progress lines, then `{"close": …}` (or `{"error": …}`).
#[utoipa::path(post, path = "/api/v1/periods/{period}/close", tag = "billing",
    params(("period" = String, Path, description = "YYYY-MM")),
    responses(
        (status = 200, description = "Closed (now or before)", body = CloseSummary),
        (status = 409, description = "The period is still open, not counted yet, a later one is closed, or another close is running (named)", body = meter_ingest::Problem),
    ),
    security(("bearer" = [])))]
pub async fn close_period(
    State(state): State<Arc<AppState>>,
    Admin(who, _): Admin<ClosePeriods>,
    headers: HeaderMap,
    Path(period): Path<String>,
) -> Result<Response, ApiError> {
    let period = period_of(&period)?;
    let streaming =
        headers.get(ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("application/x-ndjson"));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<serde_json::Value>();
    let st = state.clone();
    let task = tokio::spawn(async move {
        let progress = tx.clone();
        let report = move |p: meter_billing::Progress| {
            let _ = progress.send(serde_json::json!({ "progress": p }));
        };
        let closed =
            meter_billing::close(&st.billing.subscriptions.ledger, period, &st.billing.sources, now_us(), &report)
                .await;
        if let Ok(c) = &closed {
            tracing::info!(%period, key = %who.key_id, invoices = c.invoices, complete = c.header.complete, "period closed");
        }
        closed
    });
    if !streaming {
        let closed = task.await.map_err(|_| ApiError::Internal)??;
        return Ok(Json(CloseSummary::from(&closed)).into_response());
    }
    let (line_tx, line_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        while let Some(p) = rx.recv().await {
            let _ = line_tx.send(format!("{p}\n"));
        }
        let last = match task.await {
            Ok(Ok(c)) => serde_json::json!({ "close": CloseSummary::from(&c) }),
            Ok(Err(e)) => {
                let e = ApiError::from(e);
                serde_json::json!({ "error": { "status": e.status().as_u16(), "detail": e.detail() } })
            }
            Err(_) => {
                serde_json::json!({ "error": { "status": 500, "detail": "the close failed; see the server log" } })
            }
        };
        let _ = line_tx.send(format!("{last}\n"));
    });
    let stream = futures_util::stream::unfold(line_rx, |mut rx| async move {
        rx.recv().await.map(|line| (Ok::<_, std::convert::Infallible>(line), rx))
    });
    let mut r = Body::from_stream(stream).into_response();
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
    Ok(r)
}

/// Query of an export.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ExportQuery {
    /// `json` (default) or `csv`.
    pub format: Option<String>,
}

/// The invoice drafts of a closed period (admin), as JSON or CSV; the same bytes every time.
#[utoipa::path(get, path = "/api/v1/periods/{period}/invoices", tag = "billing",
    params(("period" = String, Path, description = "YYYY-MM"), ExportQuery),
    responses((status = 200, description = "The drafts"), (status = 404, description = "Not closed", body = meter_ingest::Problem)),
    security(("bearer" = [])))]
pub async fn period_invoices(
    State(state): State<Arc<AppState>>,
    _: Admin<ExportPeriods>,
    Path(period): Path<String>,
    query: Result<Query<ExportQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    export(&state, &period, query, Rows::Invoices).await
}

/// Query of the invoice search.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct SearchQuery {
    /// A piece of the tenant's name or of the invoice's id (case-insensitive); none: every one.
    pub q: Option<String>,
    /// Exactly this tenant's invoices.
    pub tenant: Option<String>,
    /// Also invoices without lines (nothing billed); default false.
    pub empty: Option<bool>,
    /// Where the page starts among the matches; default 0.
    pub offset: Option<usize>,
    /// How many, 1 to 500; default 50.
    pub limit: Option<usize>,
}

/// A closed period's invoices (admin) whose tenant or id contains `q`: how many match, what they
/// come to per currency, and a page of them.
#[utoipa::path(get, path = "/api/v1/periods/{period}/invoices/search", tag = "billing",
    params(("period" = String, Path, description = "YYYY-MM"), SearchQuery),
    responses(
        (status = 200, description = "The matches", body = meter_billing::search::Search),
        (status = 404, description = "Not closed", body = meter_ingest::Problem),
        (status = 422, description = "A bad query parameter", body = meter_ingest::Problem),
    ),
    security(("bearer" = [])))]
pub async fn search_invoices(
    State(state): State<Arc<AppState>>,
    _: Admin<ExportPeriods>,
    Path(period): Path<String>,
    query: Result<Query<SearchQuery>, QueryRejection>,
) -> Result<Json<meter_billing::search::Search>, ApiError> {
    let period = period_of(&period)?;
    let Query(q) = query?;
    let (text, limit) = (q.q.unwrap_or_default(), q.limit.unwrap_or(50));
    let mut problems = Vec::new();
    if let Some(Err(m)) = q.tenant.as_deref().map(meter_schemas::envelope::check_id) {
        problems.push(FieldError::invalid("tenant", m));
    }
    if text.chars().count() > meter_billing::search::MAX_QUERY {
        problems
            .push(FieldError::invalid("q", format!("must be at most {} characters", meter_billing::search::MAX_QUERY)));
    }
    if !(1..=meter_billing::search::MAX_LIMIT).contains(&limit) {
        problems.push(FieldError::invalid(
            "limit",
            format!("must be from 1 to {}, not {limit}", meter_billing::search::MAX_LIMIT),
        ));
    }
    if !problems.is_empty() {
        return Err(ApiError::Invalid(problems));
    }
    let ledger = &state.billing.subscriptions.ledger;
    let query = meter_billing::search::Query {
        text,
        tenant: q.tenant,
        with_empty: q.empty.unwrap_or(false),
        offset: q.offset.unwrap_or(0),
        limit,
    };
    let found = meter_billing::search::of(ledger, period, &query).await?;
    Ok(Json(found.ok_or_else(|| ApiError::Missing(format!("period {period} is not closed")))?))
}

/// The reconciliation report of a closed period (admin), as JSON or CSV.
#[utoipa::path(get, path = "/api/v1/periods/{period}/report", tag = "billing",
    params(("period" = String, Path, description = "YYYY-MM"), ExportQuery),
    responses((status = 200, description = "The report"), (status = 404, description = "Not closed", body = meter_ingest::Problem)),
    security(("bearer" = [])))]
pub async fn period_report(
    State(state): State<Arc<AppState>>,
    _: Admin<ExportPeriods>,
    Path(period): Path<String>,
    query: Result<Query<ExportQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    export(&state, &period, query, Rows::Report).await
}

/// Whether an export's `format` asks for CSV (`json`, the default, or `csv`).
pub(crate) fn wants_csv(format: Option<&str>) -> Result<bool, ApiError> {
    match format {
        None | Some("json") => Ok(false),
        Some("csv") => Ok(true),
        Some(other) => {
            Err(ApiError::Invalid(vec![FieldError::invalid("format", format!("must be json or csv, not {other:?}"))]))
        }
    }
}

/// A closed period's `rows` in the format asked for, streamed as the ledger gives them a page
/// at a time (`meter_billing::export`): the same bytes every time, whatever the close's size.
async fn export(
    state: &AppState,
    period: &str,
    query: Result<Query<ExportQuery>, QueryRejection>,
    rows: Rows,
) -> Result<Response, ApiError> {
    let period = period_of(period)?;
    let Query(q) = query?;
    let csv = wants_csv(q.format.as_deref())?;
    let format = if csv { Format::Csv } else { Format::Json };
    let export = Export::open(&state.billing.subscriptions.ledger, period, rows, format)
        .await?
        .ok_or_else(|| ApiError::Missing(format!("period {period} is not closed")))?;
    let content_type = if csv { "text/csv; charset=utf-8" } else { "application/json" };
    let pieces = futures_util::stream::try_unfold(export, move |mut export| async move {
        match export.next().await {
            Ok(piece) => Ok(piece.map(|p| (p, export))),
            Err(e) => {
                // The status is sent: the answer is cut short, and the client sees it end early.
                tracing::error!(%period, error = %e, "an export failed midway");
                Err(e)
            }
        }
    });
    Ok(([(CONTENT_TYPE, content_type)], Body::from_stream(pieces)).into_response())
}

/// Query of the upcoming invoice.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UpcomingQuery {
    /// Tenant; implied by a tenant-scoped read key, required with an admin key.
    pub tenant: Option<String>,
}

/// The open period's invoice so far, and projected to the period's end.
#[utoipa::path(get, path = "/api/v1/invoices/upcoming", tag = "billing", params(UpcomingQuery),
    responses(
        (status = 200, description = "So far and projected", body = meter_billing::Upcoming),
        (status = 404, description = "The tenant has no live subscription", body = meter_ingest::Problem),
    ),
    security(("bearer" = [])))]
pub async fn upcoming_invoice(
    State(state): State<Arc<AppState>>,
    Reader(p, _): Reader<ReadSubscriptions>,
    query: Result<Query<UpcomingQuery>, QueryRejection>,
) -> Result<Json<meter_billing::Upcoming>, ApiError> {
    let Query(q) = query?;
    check_tenant(q.tenant.as_deref())?;
    let tenant = p.readable_tenant(q.tenant.as_deref())?;
    let coverage = state.reads.live_coverage(&tenant);
    let b = &state.billing.subscriptions;
    let up = meter_billing::upcoming(&b.ledger, state.store(), coverage, &state.catalog, &b.book, &tenant, now_us())
        .await
        .map_err(|e| match e {
            meter_billing::Error::NotFound(_) => ApiError::Missing(format!("tenant {tenant} has no live subscription")),
            e => e.into(),
        })?;
    Ok(Json(up))
}

/// Query of the plan list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PlansQuery {
    /// `YYYY-MM`: the list that rates that period (default: the current one).
    pub period: Option<String>,
}

/// The plans of a price list, with their fees, allowances, prices and feature matrix. Per-tenant
/// deals are shown to admins, and to a tenant's read key only its own.
#[derive(Debug, Serialize, ToSchema)]
pub struct Plans {
    /// The price list's version.
    pub version: String,
    /// First day it rates.
    pub effective: String,
    /// Currency of every amount.
    pub currency: String,
    /// The list as written in the price book (plans, discounts, deals as allowed).
    #[schema(value_type = Object)]
    pub list: serde_json::Value,
}

/// The price list in effect: plans, fees, allowances, prices, discounts and the feature matrix.
#[utoipa::path(get, path = "/api/v1/plans", tag = "billing", params(PlansQuery),
    responses(
        (status = 200, description = "The price list", body = Plans),
        (status = 404, description = "No price list rates that period", body = meter_ingest::Problem),
    ),
    security(("bearer" = [])))]
pub async fn list_plans(
    State(state): State<Arc<AppState>>,
    Caller(p): Caller,
    query: Result<Query<PlansQuery>, QueryRejection>,
) -> Result<Json<Plans>, ApiError> {
    let Query(q) = query?;
    let period = match q.period.as_deref() {
        Some(text) => period_of(text)?,
        None => Period::containing(now_us()),
    };
    let list = state
        .billing
        .subscriptions
        .book
        .for_period(period)
        .ok_or_else(|| ApiError::Missing(format!("no price list rates {period}")))?;
    let shown = match p.role {
        Role::Admin => list.clone(),
        Role::Ingest | Role::Read => list.with_deals_of(p.tenant.as_deref()),
    };
    Ok(Json(Plans {
        version: list.version.clone(),
        effective: meter_schemas::period::format_day(list.effective),
        currency: list.currency.to_string(),
        list: serde_json::to_value(&shown).map_err(|_| ApiError::Internal)?,
    }))
}

/// Counts of subscriptions by state and the trial conversion rate (admin).
#[utoipa::path(get, path = "/api/v1/subscriptions/stats", tag = "billing",
    responses((status = 200, description = "Counts", body = meter_billing::SubscriptionStats)),
    security(("bearer" = [])))]
pub async fn subscription_stats(
    State(state): State<Arc<AppState>>,
    _: Admin<ReadStatistics>,
) -> Result<Json<meter_billing::SubscriptionStats>, ApiError> {
    Ok(Json(state.billing.subscriptions.stats(now_us()).await?))
}
