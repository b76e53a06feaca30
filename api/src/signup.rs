//! Self-serve sign-up and payment methods through the payment provider's hosted pages: a
//! Checkout page for a new tenant (its completion provisions the subscription), and a
//! customer-portal page for a tenant's customer.

use crate::AppState;
use crate::auth::{Admin, ManagePaymentMethods, ManageSubscriptions, Reader};
use crate::check_tenant;
use crate::error::ApiError;
use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use meter_billing_sync::HostedPage;
use meter_billing_sync::signup::CheckoutAsk;
use meter_rater::Cycle;
use meter_schemas::FieldError;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use utoipa::{IntoParams, ToSchema};

/// A sign-up: a new tenant on a plan and cycle.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewCheckout {
    /// The new tenant's id.
    pub tenant: String,
    /// The plan's code.
    pub plan: String,
    /// The billing cycle.
    pub cycle: Cycle,
    /// Where the customer goes back to when done; default `[stripe] return_url`.
    pub success_url: Option<String>,
    /// Where the customer goes back to on giving up; default `[stripe] return_url`.
    pub cancel_url: Option<String>,
}

/// A customer-portal page for a tenant.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewPortal {
    /// The tenant; implied by a tenant's key or portal session, required with an admin key.
    pub tenant: Option<String>,
    /// Where the customer goes back to; default `[stripe] return_url`.
    pub return_url: Option<String>,
}

/// The URL the request gives in `field`, else the configured one: http or https, with a host.
fn url_of(field: &'static str, given: Option<String>, configured: Option<&String>) -> Result<String, ApiError> {
    let url = given.or_else(|| configured.cloned()).ok_or_else(|| {
        ApiError::Invalid(vec![FieldError::invalid(field, "is required (or set [stripe] return_url)")])
    })?;
    let web = url
        .parse::<axum::http::Uri>()
        .is_ok_and(|u| matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some_and(|h| !h.is_empty()));
    match web {
        true => Ok(url),
        false => {
            Err(ApiError::Invalid(vec![FieldError::invalid(field, format!("{url:?} is not an http or https URL"))]))
        }
    }
}

/// A Stripe Checkout page for a new tenant (admin: the SaaS's own sign-up backend). meter checks
/// first that the tenant could start the subscription; the page collects a payment method and
/// charges nothing (meter bills); its completion provisions the subscription.
#[utoipa::path(post, path = "/api/v1/checkout/sessions", tag = "billing", request_body = NewCheckout,
    responses(
        (status = 201, description = "The page to send the customer to", body = HostedPage),
        (status = 409, description = "The tenant has a live subscription, or no payment provider is configured", body = meter_ingest::Problem),
        (status = 422, description = "A bad field (an unknown plan, a cycle it is not sold on)", body = meter_ingest::Problem),
        (status = 502, description = "The payment provider failed", body = meter_ingest::Problem),
    ),
    security(("bearer" = [])))]
pub async fn create_checkout(
    State(state): State<Arc<AppState>>,
    _: Admin<ManageSubscriptions>,
    new: Result<Json<NewCheckout>, JsonRejection>,
) -> Result<(StatusCode, Json<HostedPage>), ApiError> {
    let Json(new) = new?;
    check_tenant(Some(&new.tenant))?;
    let configured = state.billing.return_url.as_ref();
    let ask = CheckoutAsk {
        success_url: url_of("success_url", new.success_url, configured)?,
        cancel_url: url_of("cancel_url", new.cancel_url, configured)?,
        tenant: new.tenant,
        plan: new.plan,
        cycle: new.cycle,
    };
    let now = meter_schemas::period::now_us();
    let page =
        meter_billing_sync::signup::checkout(&state.billing.subscriptions, &*state.billing.provider, ask, now).await?;
    Ok((StatusCode::CREATED, Json(page)))
}

/// A Stripe customer-portal page for a tenant's customer, where it updates its payment method and
/// downloads its invoices: an admin key for any tenant, a tenant's read key or portal session for
/// its own.
#[utoipa::path(post, path = "/api/v1/billing-portal/sessions", tag = "billing", request_body = NewPortal,
    responses(
        (status = 201, description = "The page to send the customer to", body = HostedPage),
        (status = 404, description = "The tenant has no customer at the provider yet", body = meter_ingest::Problem),
        (status = 409, description = "No payment provider is configured", body = meter_ingest::Problem),
        (status = 502, description = "The payment provider failed", body = meter_ingest::Problem),
    ),
    security(("bearer" = [])))]
pub async fn create_portal(
    State(state): State<Arc<AppState>>,
    Reader(p, _): Reader<ManagePaymentMethods>,
    new: Result<Json<NewPortal>, JsonRejection>,
) -> Result<(StatusCode, Json<HostedPage>), ApiError> {
    let Json(new) = new?;
    check_tenant(new.tenant.as_deref())?;
    let tenant = p.readable_tenant(new.tenant.as_deref())?;
    let return_url = url_of("return_url", new.return_url, state.billing.return_url.as_ref())?;
    let page = meter_billing_sync::signup::billing_portal(
        &state.billing.subscriptions,
        &*state.billing.provider,
        &tenant,
        &return_url,
    )
    .await?;
    Ok((StatusCode::CREATED, Json(page)))
}

/// Whether a tenant can open a customer-portal page.
#[derive(Debug, Serialize, ToSchema)]
pub struct PortalAvailability {
    /// The tenant.
    pub tenant: String,
    /// A payment provider is configured and the tenant is its customer.
    pub available: bool,
}

/// Which tenant.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PortalQuery {
    /// The tenant; implied by a tenant's key or portal session, required with an admin key.
    pub tenant: Option<String>,
}

/// Whether the tenant can open a customer-portal page (`POST /api/v1/billing-portal/sessions`):
/// what a dashboard asks before it shows a "manage payment method" button.
#[utoipa::path(get, path = "/api/v1/billing-portal", tag = "billing", operation_id = "billing_portal_availability", params(PortalQuery),
    responses((status = 200, description = "Whether it can", body = PortalAvailability)),
    security(("bearer" = [])))]
pub async fn portal_availability(
    State(state): State<Arc<AppState>>,
    Reader(p, _): Reader<ManagePaymentMethods>,
    q: Result<Query<PortalQuery>, QueryRejection>,
) -> Result<Json<PortalAvailability>, ApiError> {
    let Query(q) = q?;
    check_tenant(q.tenant.as_deref())?;
    let tenant = p.readable_tenant(q.tenant.as_deref())?;
    let subs = &state.billing.subscriptions;
    let available = meter_billing_sync::signup::portal_available(subs, &*state.billing.provider, &tenant).await?;
    Ok(Json(PortalAvailability { tenant, available }))
}
