//! The one error type of ingest, and the one place it becomes an HTTP answer, in the style of the
//! API the request used.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use meter_auth::AuthError;
use meter_schemas::envelope::Dialect;
use meter_schemas::error::{dominant_kind, lago_body, problem_body, summary};
use meter_schemas::{ErrorKind, FieldError};

/// Why an ingest request was refused.
#[derive(Debug)]
pub enum IngestError {
    /// The key is missing, unknown, or may not ingest.
    Auth(AuthError),
    /// Problems with the body or its events; nothing was stored.
    Fields(Vec<FieldError>),
    /// The content type is not one ingest reads.
    UnsupportedMediaType(String),
    /// The log could not take the events; nothing was acknowledged, retry later.
    Unavailable(String),
    /// A tenant of the request is over its rate quota; nothing was stored, retry after a while.
    Throttled(crate::Throttled),
}

impl IngestError {
    /// HTTP status, decided here and nowhere else.
    pub fn status(&self) -> StatusCode {
        let code = match self {
            IngestError::Auth(AuthError::Unauthenticated) => 401,
            IngestError::Auth(AuthError::Unavailable(_)) | IngestError::Unavailable(_) => 503,
            IngestError::Auth(_) => 403,
            IngestError::Fields(errors) => dominant_kind(errors).status(),
            IngestError::UnsupportedMediaType(_) => 415,
            IngestError::Throttled(_) => 429,
        };
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn lago_code(&self) -> &'static str {
        match self {
            IngestError::Auth(AuthError::Unauthenticated) => "",
            IngestError::Auth(_) => "forbidden",
            IngestError::Fields(errors) => match dominant_kind(errors) {
                ErrorKind::Invalid => "validation_errors",
                ErrorKind::Malformed => "bad_request",
                ErrorKind::Conflict => "transaction_id_conflict",
                ErrorKind::Forbidden => "forbidden",
                ErrorKind::TooLarge => "payload_too_large",
            },
            IngestError::UnsupportedMediaType(_) => "unsupported_media_type",
            IngestError::Unavailable(_) => "service_unavailable",
            IngestError::Throttled(_) => "too_many_requests",
        }
    }

    fn detail(&self) -> String {
        match self {
            IngestError::Auth(e) => e.to_string(),
            IngestError::Fields(errors) => summary(errors),
            IngestError::UnsupportedMediaType(m) => m.clone(),
            IngestError::Unavailable(m) => {
                format!("the event log cannot take events now ({m}); nothing was stored, retry")
            }
            IngestError::Throttled(t) => format!("{t}; nothing was stored"),
        }
    }

    /// The answer to send, shaped for `dialect`.
    pub fn into_response_for(self, dialect: Dialect) -> Response {
        let status = self.status();
        let fields: Vec<FieldError> = match &self {
            IngestError::Fields(errors) => errors.clone(),
            IngestError::Auth(AuthError::Unauthenticated) => vec![],
            other => vec![FieldError::invalid(
                match other {
                    IngestError::Auth(_) => "authorization",
                    IngestError::UnsupportedMediaType(_) => "content-type",
                    IngestError::Throttled(_) => "tenant",
                    _ => "body",
                },
                other.detail(),
            )],
        };
        let (body, content_type) = match dialect {
            Dialect::Lago => (lago_body(status.as_u16(), self.lago_code(), &fields), "application/json"),
            Dialect::CloudEvents | Dialect::Ndjson => {
                (problem_body(status.as_u16(), &self.detail(), &fields), "application/problem+json")
            }
        };
        let mut response = (status, body.to_string()).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        match self {
            IngestError::Unavailable(_) | IngestError::Auth(AuthError::Unavailable(_)) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            IngestError::Throttled(t) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(t.retry_after_secs()));
            }
            IngestError::Auth(AuthError::Unauthenticated) => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        response
    }
}

impl From<AuthError> for IngestError {
    fn from(e: AuthError) -> Self {
        IngestError::Auth(e)
    }
}

impl IntoResponse for IngestError {
    fn into_response(self) -> Response {
        self.into_response_for(Dialect::Lago)
    }
}
