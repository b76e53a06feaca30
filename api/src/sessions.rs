//! Browser sessions: an API key opens a portal session (one tenant's dashboard) or a console
//! session (the finance console) and gets a link with a one-time token; the page exchanges the
//! token for an `HttpOnly`, `SameSite=Strict` cookie. A session can never open another.

use crate::AppState;
use crate::auth::{KeyHolder, ManageSessions, SESSION_COOKIE};
use crate::error::ApiError;
use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use meter_auth::session::{NewSession, SessionInfo, SessionKind};
use meter_auth::{AuthError, Role, Sessions};
use meter_schemas::FieldError;
use meter_schemas::period::format_time;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use utoipa::{IntoParams, ToSchema};

/// A portal session to open.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewPortalSession {
    /// The tenant it shows (a read key's own tenant, or any with an admin key).
    pub tenant: Option<String>,
    /// How long it lasts (`"1h"`, `"30m"`; 1 minute to 24 hours); default 1 hour.
    pub ttl: Option<String>,
}

/// A console session to open.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewConsoleSession {
    /// How long it lasts (1 minute to 24 hours); default 1 hour.
    pub ttl: Option<String>,
}

/// A session opened: the link to give, once.
#[derive(Debug, Serialize, ToSchema)]
pub struct OpenedSession {
    /// The session's id (to list or revoke it).
    pub id: String,
    /// `portal` or `console`.
    pub kind: String,
    /// The tenant of a portal session.
    pub tenant: Option<String>,
    /// The link, carrying the one-time token after `#` (never sent to a server by a browser).
    pub url: String,
    /// When the session ends (RFC 3339).
    pub expires_at: String,
}

/// A session as listed: never its token or cookie.
#[derive(Debug, Serialize, ToSchema)]
pub struct ListedSession {
    /// Id.
    pub id: String,
    /// `portal` or `console`.
    pub kind: String,
    /// Tenant of a portal session.
    pub tenant: Option<String>,
    /// The key that opened it.
    pub created_by: String,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub expires_at: String,
    /// When its link was used (RFC 3339).
    pub exchanged_at: Option<String>,
    /// When it was revoked (RFC 3339).
    pub revoked_at: Option<String>,
}

impl From<SessionInfo> for ListedSession {
    fn from(s: SessionInfo) -> Self {
        ListedSession {
            id: s.id,
            kind: s.kind.as_str().to_string(),
            tenant: s.tenant,
            created_by: s.created_by,
            created_at: format_time(s.created_us),
            expires_at: format_time(s.expires_us),
            exchanged_at: s.exchanged_us.map(format_time),
            revoked_at: s.revoked_us.map(format_time),
        }
    }
}

/// A link's token, to exchange for the session's cookie.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Exchange {
    /// The token from the link (after `#token=`).
    pub token: String,
}

/// Which sessions to list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct SessionQuery {
    /// The tenant (a read key's own; every tenant's with an admin key when absent).
    pub tenant: Option<String>,
}

fn ttl_of(ttl: Option<String>) -> Result<Duration, ApiError> {
    match ttl {
        None => Ok(Duration::from_secs(3600)),
        Some(t) => humantime::parse_duration(&t)
            .map_err(|e| ApiError::Invalid(vec![FieldError::invalid("ttl", format!("{t:?} is not a duration: {e}"))])),
    }
}

/// Where the link points: this server as the caller reached it.
fn link(headers: &HeaderMap, page: &str, token: &str) -> String {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost");
    let scheme = headers.get("x-forwarded-proto").and_then(|h| h.to_str().ok()).unwrap_or("http");
    format!("{scheme}://{host}/{page}#token={token}")
}

fn opened(headers: &HeaderMap, page: &str, new: NewSession) -> OpenedSession {
    OpenedSession {
        url: link(headers, page, &new.token),
        id: new.info.id,
        kind: new.info.kind.as_str().to_string(),
        tenant: new.info.tenant,
        expires_at: format_time(new.info.expires_us),
    }
}

async fn blocking<T: Send + 'static>(
    sessions: &Arc<Sessions>,
    f: impl FnOnce(&Sessions) -> Result<T, meter_auth::Error> + Send + 'static,
) -> Result<T, ApiError> {
    let sessions = sessions.clone();
    tokio::task::spawn_blocking(move || f(&sessions))
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?
        .map_err(Into::into)
}

/// Opens a portal session for a tenant: an admin key for any tenant, a read key for its own.
#[utoipa::path(post, path = "/api/v1/portal/sessions", tag = "usage", operation_id = "open_portal_session", request_body = NewPortalSession,
    responses(
        (status = 201, description = "The link, with its one-time token", body = OpenedSession),
        (status = 403, description = "Another tenant's, or asked by a session rather than a key", body = meter_ingest::Problem),
        (status = 422, description = "A bad tenant or ttl", body = meter_ingest::Problem),
    ),
    security(("bearer" = [])))]
pub async fn open_portal(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    KeyHolder(p, _): KeyHolder<ManageSessions>,
    new: Result<Json<NewPortalSession>, JsonRejection>,
) -> Result<(StatusCode, Json<OpenedSession>), ApiError> {
    let Json(new) = new?;
    crate::check_tenant(new.tenant.as_deref())?;
    let tenant = p.readable_tenant(new.tenant.as_deref())?;
    let ttl = ttl_of(new.ttl)?;
    let now = meter_schemas::period::now_us();
    let by = p.key_id.clone();
    let made = blocking(&state.sessions, move |s| s.create(SessionKind::Portal, Some(&tenant), ttl, &by, now)).await?;
    Ok((StatusCode::CREATED, Json(opened(&headers, "portal", made))))
}

/// Opens a console session (admin key).
#[utoipa::path(post, path = "/api/v1/console/sessions", tag = "billing", operation_id = "open_console_session", request_body = NewConsoleSession,
    responses(
        (status = 201, description = "The link, with its one-time token", body = OpenedSession),
        (status = 403, description = "Not an admin key", body = meter_ingest::Problem),
        (status = 422, description = "A bad ttl", body = meter_ingest::Problem),
    ),
    security(("bearer" = [])))]
pub async fn open_console(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    KeyHolder(p, _): KeyHolder<ManageSessions>,
    new: Result<Json<NewConsoleSession>, JsonRejection>,
) -> Result<(StatusCode, Json<OpenedSession>), ApiError> {
    if p.role != Role::Admin {
        return Err(AuthError::WrongRole { have: p.role, action: "open a console session" }.into());
    }
    let Json(new) = new?;
    let ttl = ttl_of(new.ttl)?;
    let now = meter_schemas::period::now_us();
    let by = p.key_id.clone();
    let made = blocking(&state.sessions, move |s| s.create(SessionKind::Console, None, ttl, &by, now)).await?;
    Ok((StatusCode::CREATED, Json(opened(&headers, "console", made))))
}

/// The sessions of a tenant (a read key's own), or every one (admin key), newest first.
#[utoipa::path(get, path = "/api/v1/sessions", tag = "usage", operation_id = "list_sessions", params(SessionQuery),
    responses((status = 200, description = "Sessions, without their secrets", body = [ListedSession])),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<Arc<AppState>>,
    KeyHolder(p, _): KeyHolder<ManageSessions>,
    q: Result<Query<SessionQuery>, QueryRejection>,
) -> Result<Json<Vec<ListedSession>>, ApiError> {
    let Query(q) = q?;
    crate::check_tenant(q.tenant.as_deref())?;
    let tenant = match (p.role, q.tenant) {
        (Role::Admin, asked) => asked,
        (_, asked) => Some(p.readable_tenant(asked.as_deref())?),
    };
    let all = blocking(&state.sessions, move |s| s.list(tenant.as_deref())).await?;
    Ok(Json(all.into_iter().map(Into::into).collect()))
}

/// Revokes a session: an admin key any, a read key its own tenant's.
#[utoipa::path(delete, path = "/api/v1/sessions/{id}", tag = "usage", operation_id = "revoke_session",
    params(("id" = String, Path, description = "The session's id")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 404, description = "No such live session of the key's tenant", body = meter_ingest::Problem),
    ),
    security(("bearer" = [])))]
pub async fn revoke(
    State(state): State<Arc<AppState>>,
    KeyHolder(p, _): KeyHolder<ManageSessions>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let missing = || ApiError::Missing(format!("no live session {id}"));
    let lookup = id.clone();
    let found = blocking(&state.sessions, move |s| s.get(&lookup)).await?.ok_or_else(missing)?;
    if p.role != Role::Admin && (p.tenant.is_none() || found.tenant != p.tenant) {
        return Err(missing());
    }
    let now = meter_schemas::period::now_us();
    let target = id.clone();
    match blocking(&state.sessions, move |s| s.revoke(&target, now)).await? {
        true => Ok(StatusCode::NO_CONTENT),
        false => Err(missing()),
    }
}

/// Exchanges a link's one-time token for the session's cookie (`HttpOnly`, `SameSite=Strict`).
/// No key: the token is the authorization, and it works once.
#[utoipa::path(post, path = "/api/v1/sessions/exchange", tag = "usage", operation_id = "exchange_session", request_body = Exchange,
    responses(
        (status = 200, description = "The session; its cookie is set", body = ListedSession),
        (status = 401, description = "An unknown, used, expired or revoked token", body = meter_ingest::Problem),
    ))]
pub async fn exchange(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Json<Exchange>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body?;
    let now = meter_schemas::period::now_us();
    let exchanged = blocking(&state.sessions, move |s| s.exchange(&body.token, now))
        .await?
        .ok_or(ApiError::Auth(AuthError::Unauthenticated))?;
    let max_age = (exchanged.info.expires_us - now).max(0) / 1_000_000;
    // Secure behind TLS (a proxy says so); a plain-HTTP local install could not keep it otherwise.
    let https = headers.get("x-forwarded-proto").is_some_and(|p| p.as_bytes().eq_ignore_ascii_case(b"https"));
    let secure = if https { "; Secure" } else { "" };
    let cookie =
        format!("{SESSION_COOKIE}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}", exchanged.secret);
    let mut r = Json(ListedSession::from(exchanged.info)).into_response();
    let value = HeaderValue::from_str(&cookie).map_err(|_| ApiError::Internal)?;
    r.headers_mut().insert(header::SET_COOKIE, value);
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(r)
}
