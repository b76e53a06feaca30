//! The one error type of the read API and the one place it becomes an HTTP answer
//! (`application/problem+json`).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use meter_auth::AuthError;
use meter_schemas::FieldError;
use meter_schemas::error::{problem_body, summary};

/// Why a read request failed.
#[derive(Debug)]
pub enum ApiError {
    /// The key is missing or may not do this.
    Auth(AuthError),
    /// A query parameter is wrong.
    Invalid(Vec<FieldError>),
    /// The request cannot be read at all (a webhook's signature or body).
    BadRequest(String),
    /// Storage failed.
    Unavailable(String),
    /// The payment provider failed or refused.
    Upstream(String),
    /// No route serves this path.
    NotFound(String),
    /// The resource (a subscription, a closed period) does not exist, or is another tenant's.
    Missing(String),
    /// The request conflicts with the resource's state; `allowed` lists what the state allows.
    Conflict {
        /// Why.
        detail: String,
        /// The actions the state allows, for a refused transition.
        allowed: Option<Vec<&'static str>>,
    },
    /// The request is well-formed but cannot be rated (an amount overflows).
    Unratable(String),
    /// A bug: the handler panicked.
    Internal,
}

impl ApiError {
    /// HTTP status, decided here and nowhere else.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Auth(AuthError::Unauthenticated) => StatusCode::UNAUTHORIZED,
            ApiError::Auth(AuthError::TenantRequired) | ApiError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Auth(AuthError::Unavailable(_)) | ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Upstream(_) => StatusCode::BAD_GATEWAY,
            ApiError::NotFound(_) | ApiError::Missing(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::Unratable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Auth(_) => StatusCode::FORBIDDEN,
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        ApiError::Auth(e)
    }
}

impl From<axum::extract::rejection::QueryRejection> for ApiError {
    fn from(e: axum::extract::rejection::QueryRejection) -> Self {
        ApiError::Invalid(vec![FieldError::invalid("query", e.body_text())])
    }
}

impl From<axum::extract::rejection::JsonRejection> for ApiError {
    fn from(e: axum::extract::rejection::JsonRejection) -> Self {
        ApiError::Invalid(vec![FieldError::invalid("body", e.body_text())])
    }
}

impl From<meter_billing::Error> for ApiError {
    fn from(e: meter_billing::Error) -> Self {
        use meter_billing::Error as B;
        use meter_rater::Refusal;
        match e {
            B::NotFound(what) => ApiError::Missing(format!("no subscription {what:?}")),
            B::NoOperation(what) => ApiError::Missing(format!("no {what}")),
            B::Refused(r) => match r {
                Refusal::Transition { ref allowed, .. } => {
                    ApiError::Conflict { allowed: Some(allowed.clone()), detail: r.to_string() }
                }
                Refusal::Invalid { field, message } => ApiError::Invalid(vec![FieldError::invalid(field, message)]),
            },
            B::Conflict(m) | B::Closed(m) | B::NotReady(m) | B::PriceBook(m) => {
                ApiError::Conflict { detail: m, allowed: None }
            }
            B::Rating(r) => ApiError::Unratable(r.to_string()),
            e @ (B::Store(_) | B::Log(_) | B::Storage(_) | B::Postgres(_)) => ApiError::Unavailable(e.to_string()),
            e @ (B::Task(_) | B::Spill(_)) => {
                tracing::error!(error = %e, "a task of the close failed");
                ApiError::Unavailable(e.to_string())
            }
            e @ (B::Json(_) | B::Corrupt(_)) => {
                tracing::error!(error = %e, "the ledger is inconsistent");
                ApiError::Internal
            }
        }
    }
}

impl From<meter_billing_sync::signature::SignatureError> for ApiError {
    fn from(e: meter_billing_sync::signature::SignatureError) -> Self {
        ApiError::BadRequest(e.to_string())
    }
}

impl From<meter_billing_sync::Error> for ApiError {
    fn from(e: meter_billing_sync::Error) -> Self {
        use meter_billing_sync::Error as S;
        match e {
            // The ledger's refusals (an unknown plan, a live subscription) as the ledger's API says them.
            S::Ledger(e) => ApiError::from(e),
            e @ S::Notice(_) => ApiError::Unavailable(e.to_string()),
            e @ S::Unavailable { .. } => ApiError::Upstream(e.to_string()),
            e @ (S::Config(_) | S::Refused { .. } | S::Protocol { .. }) => {
                tracing::error!(error = %e, "the payment provider refused or answered wrongly");
                ApiError::Upstream(e.to_string())
            }
            e @ S::NoCustomer(_) => ApiError::Missing(e.to_string()),
            e @ S::NoProvider(_) => ApiError::Conflict { detail: e.to_string(), allowed: None },
            e @ (S::Unrepresentable { .. } | S::Mismatch { .. }) => {
                ApiError::Conflict { detail: e.to_string(), allowed: None }
            }
        }
    }
}

impl From<meter_billing_sync::events::Malformed> for ApiError {
    fn from(e: meter_billing_sync::events::Malformed) -> Self {
        ApiError::BadRequest(e.to_string())
    }
}

impl From<meter_webhooks::Error> for ApiError {
    fn from(e: meter_webhooks::Error) -> Self {
        use meter_webhooks::Error as W;
        match e {
            W::NotFound(what) => ApiError::Missing(format!("no {what}")),
            W::Invalid { field, message } => ApiError::Invalid(vec![FieldError::invalid(field, message)]),
            W::Conflict(m) => ApiError::Conflict { detail: m, allowed: None },
            e @ (W::Storage(_) | W::Postgres(_) | W::Store(_) | W::Kafka(_) | W::Client(_) | W::Task(_)) => {
                ApiError::Unavailable(e.to_string())
            }
        }
    }
}

impl From<meter_auth::Error> for ApiError {
    fn from(e: meter_auth::Error) -> Self {
        match e {
            // "field: why", as the auth crate words a bad argument.
            meter_auth::Error::Invalid(m) => {
                let (field, why) = m.split_once(": ").unwrap_or(("body", m.as_str()));
                let field = if field.contains(' ') { "body" } else { field };
                ApiError::Invalid(vec![FieldError::invalid(field, why.to_string())])
            }
            e => ApiError::Unavailable(e.to_string()),
        }
    }
}

impl From<meter_store::Error> for ApiError {
    fn from(e: meter_store::Error) -> Self {
        ApiError::Unavailable(e.to_string())
    }
}

impl ApiError {
    /// The field errors the answer lists.
    fn errors(&self) -> Vec<FieldError> {
        match self {
            ApiError::Invalid(e) => e.clone(),
            ApiError::Auth(AuthError::TenantRequired) => {
                vec![FieldError::invalid("tenant", "is required with an admin key")]
            }
            ApiError::Auth(AuthError::OtherTenant) => {
                vec![FieldError::invalid("tenant", "is not the tenant this API key belongs to")]
            }
            ApiError::Auth(e @ AuthError::WrongRole { .. }) => {
                vec![FieldError::invalid("authorization", e.to_string())]
            }
            ApiError::Auth(e @ AuthError::CrossOrigin) => vec![FieldError::invalid("origin", e.to_string())],
            _ => vec![],
        }
    }

    /// The answer's `detail`.
    pub fn detail(&self) -> String {
        let errors = self.errors();
        match self {
            ApiError::Auth(e @ AuthError::WrongRole { .. }) => e.to_string(),
            ApiError::Auth(e) if errors.is_empty() => e.to_string(),
            ApiError::Unavailable(m) => format!("storage unavailable: {m}"),
            ApiError::Upstream(m) => format!("payment provider: {m}"),
            ApiError::NotFound(path) => format!("no such endpoint: {path}; see /api/v1/openapi.json"),
            ApiError::Missing(m)
            | ApiError::Conflict { detail: m, .. }
            | ApiError::Unratable(m)
            | ApiError::BadRequest(m) => m.clone(),
            ApiError::Internal => "internal error; the server log has the details".into(),
            _ => summary(&errors),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let (errors, detail) = (self.errors(), self.detail());
        let mut body = problem_body(status.as_u16(), &detail, &errors);
        if let ApiError::Conflict { allowed: Some(allowed), .. } = &self {
            body["allowed"] = serde_json::json!(allowed);
        }
        let body = body.to_string();
        let mut r = (status, body).into_response();
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        r
    }
}
