//! Who may call a handler, as axum extractors: a handler names the caller it needs in its
//! arguments ([`Caller`], [`Reader`], [`Admin`]) and never runs for anyone else. Whether a key may
//! read a given tenant is [`meter_auth::Principal::readable_tenant`].

use crate::AppState;
use crate::error::ApiError;
use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use meter_auth::{AuthError, Principal, Role};
use std::marker::PhantomData;
use std::sync::Arc;

/// What a caller tries, named in the refusal ("an API key with role ingest may not read usage").
pub trait Action: Send + Sync + 'static {
    /// The words after "may not".
    const WHAT: &'static str;
}

macro_rules! actions {
    ($($(#[$doc:meta])* $name:ident => $what:literal),* $(,)?) => {
        $(
            $(#[$doc])*
            pub struct $name;
            impl Action for $name {
                const WHAT: &'static str = $what;
            }
        )*
    };
}

actions! {
    /// `GET /api/v1/usage…`.
    ReadUsage => "read usage",
    /// `GET /api/v1/alerts`.
    ReadAlerts => "read alerts",
    /// `/api/v1/webhooks…`.
    ManageWebhooks => "manage webhooks",
    /// Reading subscriptions and the upcoming invoice.
    ReadSubscriptions => "read subscriptions",
    /// Creating and changing subscriptions.
    ManageSubscriptions => "manage subscriptions",
    /// `POST /api/v1/periods/{period}/close`.
    ClosePeriods => "close periods",
    /// A closed period's exports.
    ExportPeriods => "export closed periods",
    /// The payment provider's sync: its dead list and retries.
    ManageSync => "manage the payment sync",
    /// `GET /api/v1/subscriptions/stats`.
    ReadStatistics => "read subscription statistics",
    /// Opening, listing and revoking portal and console sessions.
    ManageSessions => "manage browser sessions",
    /// The payment provider's customer portal, for a tenant's payment methods.
    ManagePaymentMethods => "manage payment methods",
}

/// The cookie a browser session is carried in (`HttpOnly`, `SameSite=Strict`).
pub const SESSION_COOKIE: &str = "meter_session";

/// The caller: an API key (`Authorization: Bearer …`), or else a browser session's cookie.
async fn authenticate(parts: &Parts, state: &AppState) -> Result<Principal, ApiError> {
    if parts.headers.contains_key(AUTHORIZATION) {
        return authenticate_key(parts, state).await;
    }
    let Some(secret) = session_cookie(parts) else {
        return Err(AuthError::Unauthenticated.into());
    };
    // A cookie goes with every request the browser makes to this site, a form posted from
    // another page of it included: a request that changes anything must come from this origin.
    if !parts.method.is_safe() && !same_origin(parts) {
        return Err(AuthError::CrossOrigin.into());
    }
    let sessions = state.sessions.clone();
    let now = meter_schemas::period::now_us();
    tokio::task::spawn_blocking(move || sessions.authenticate(&secret, now))
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?
        .map_err(Into::into)
}

/// The caller by its API key alone: no session.
async fn authenticate_key(parts: &Parts, state: &AppState) -> Result<Principal, ApiError> {
    Ok(state.keys.authenticate(parts.headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok())).await?)
}

/// Whether a browser says the request comes from a page of this origin (`Sec-Fetch-Site`, or
/// else `Origin` naming this host).
fn same_origin(parts: &Parts) -> bool {
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = header("sec-fetch-site") {
        return site == "same-origin";
    }
    match (header("origin"), header("host")) {
        (Some(origin), Some(host)) => origin.split_once("://").is_some_and(|(_, h)| h == host),
        _ => false,
    }
}

/// The session cookie's secret, if the request carries one.
fn session_cookie(parts: &Parts) -> Option<String> {
    parts
        .headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value.to_string())
}

/// Any valid key.
pub struct Caller(pub Principal);

/// A key that may read (not an ingest-only key), doing `A`.
pub struct Reader<A>(pub Principal, pub PhantomData<A>);

/// An admin's key, doing `A`.
pub struct Admin<A>(pub Principal, pub PhantomData<A>);

/// An API key that may read (not a browser session, not an ingest-only key), doing `A`:
/// what opens sessions, so that a session can never open another.
pub struct KeyHolder<A>(pub Principal, pub PhantomData<A>);

impl<A: Action> FromRequestParts<Arc<AppState>> for KeyHolder<A> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Self, ApiError> {
        let p = authenticate_key(parts, state).await?;
        match p.role {
            Role::Ingest => Err(AuthError::WrongRole { have: p.role, action: A::WHAT }.into()),
            Role::Read | Role::Admin => Ok(KeyHolder(p, PhantomData)),
        }
    }
}

impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Self, ApiError> {
        authenticate(parts, state).await.map(Caller)
    }
}

impl<A: Action> FromRequestParts<Arc<AppState>> for Reader<A> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Self, ApiError> {
        let p = authenticate(parts, state).await?;
        match p.role {
            Role::Ingest => Err(AuthError::WrongRole { have: p.role, action: A::WHAT }.into()),
            Role::Read | Role::Admin => Ok(Reader(p, PhantomData)),
        }
    }
}

impl<A: Action> FromRequestParts<Arc<AppState>> for Admin<A> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Self, ApiError> {
        let p = authenticate(parts, state).await?;
        match p.role {
            Role::Admin => Ok(Admin(p, PhantomData)),
            Role::Ingest | Role::Read => Err(AuthError::WrongRole { have: p.role, action: A::WHAT }.into()),
        }
    }
}

/// A body Stripe signed (`Stripe-Signature`, checked against `[stripe] webhook_secret` before
/// anything else is read). No API key: the signature is the authorization.
pub struct StripeSigned(pub axum::body::Bytes);

impl axum::extract::FromRequest<Arc<AppState>> for StripeSigned {
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &Arc<AppState>) -> Result<Self, Self::Rejection> {
        let secrets = &state.billing.stripe_webhook_secrets;
        if secrets.is_empty() {
            return Err(ApiError::Missing("Stripe's events are not taken here: set [stripe] webhook_secret".into()));
        }
        let header = req.headers().get("stripe-signature").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let body = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError::BadRequest(format!("the body cannot be read: {}", e.body_text())))?;
        let now_s = meter_schemas::period::now_us() / 1_000_000;
        meter_billing_sync::signature::verify(&body, header.as_deref(), secrets, now_s)?;
        Ok(StripeSigned(body))
    }
}
