//! Shapes of ingest requests and answers, for the OpenAPI document. Parsing itself is done by
//! `meter_schemas::envelope`, which reports every problem at once.
#![allow(dead_code)]

use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

/// A Lago event.
#[derive(Serialize, ToSchema)]
pub struct LagoEvent {
    /// Sender's id; with the tenant, the event's identity. 1 to 128 printable ASCII characters.
    pub transaction_id: String,
    /// The tenant. Optional with a tenant-scoped key.
    pub external_customer_id: Option<String>,
    /// Used as the tenant when `external_customer_id` is absent.
    pub external_subscription_id: Option<String>,
    /// Event code, e.g. `agent.invocation`.
    pub code: String,
    /// Unix seconds (number or string, fractions allowed) or RFC 3339; default: time of receipt.
    #[schema(value_type = Option<String>)]
    pub timestamp: Option<Value>,
    /// Event properties; quantities as numbers or numeric strings.
    #[schema(value_type = Option<Object>)]
    pub properties: Option<Value>,
}

/// `{"event": {...}}`.
#[derive(Serialize, ToSchema)]
pub struct LagoEventRequest {
    /// The event.
    pub event: LagoEvent,
}

/// `{"events": [...]}`.
#[derive(Serialize, ToSchema)]
pub struct LagoBatchRequest {
    /// The events; all are accepted or none.
    pub events: Vec<LagoEvent>,
}

/// A CloudEvent, as OpenMeter takes it.
#[derive(Serialize, ToSchema)]
pub struct CloudEvent {
    /// Must be `1.0`.
    pub specversion: String,
    /// Sender's id; with the tenant, the event's identity.
    pub id: String,
    /// Where the event comes from.
    pub source: String,
    /// Event code.
    #[serde(rename = "type")]
    pub type_: String,
    /// The tenant. Optional with a tenant-scoped key.
    pub subject: Option<String>,
    /// RFC 3339; default: time of receipt.
    pub time: Option<String>,
    /// Event properties.
    #[schema(value_type = Option<Object>)]
    pub data: Option<Value>,
}

/// An accepted Lago event, echoed as Lago does.
#[derive(Serialize, ToSchema)]
pub struct LagoEventOut {
    /// Stable UUID derived from tenant and transaction id.
    pub lago_id: String,
    /// As sent.
    pub transaction_id: String,
    /// Always null.
    pub lago_customer_id: Option<String>,
    /// As sent.
    pub code: String,
    /// ISO 8601 with milliseconds.
    pub timestamp: String,
    /// Always null.
    pub precise_total_amount_cents: Option<String>,
    /// As sent.
    #[schema(value_type = Object)]
    pub properties: Value,
    /// Always null.
    pub lago_subscription_id: Option<String>,
    /// As sent, or the tenant.
    pub external_subscription_id: String,
    /// The tenant.
    pub external_customer_id: String,
    /// When meter accepted the request.
    pub created_at: String,
    /// True when the event had been accepted before (it is counted once).
    pub duplicate: bool,
}

/// `{"event": {...}}`.
#[derive(Serialize, ToSchema)]
pub struct LagoEventResponse {
    /// The event.
    pub event: LagoEventOut,
}

/// `{"events": [...]}`.
#[derive(Serialize, ToSchema)]
pub struct LagoBatchResponse {
    /// The events, in request order.
    pub events: Vec<LagoEventOut>,
}

/// Answer to an NDJSON request.
#[derive(Serialize, ToSchema)]
pub struct NdjsonSummary {
    /// Events stored now.
    pub accepted: usize,
    /// Events that had been accepted before.
    pub duplicates: usize,
    /// Paths of the duplicate events' ids, e.g. `lines[3].transaction_id`.
    pub duplicate_paths: Vec<String>,
}

/// One field error.
#[derive(Serialize, ToSchema)]
pub struct FieldProblem {
    /// JSON path, e.g. `events[3].properties.input_tokens`.
    pub path: String,
    /// Why, e.g. `must be a non-negative integer`.
    pub message: String,
}

/// A Lago-style error.
#[derive(Serialize, ToSchema)]
pub struct LagoError {
    /// HTTP status.
    pub status: u16,
    /// Reason phrase.
    pub error: String,
    /// Machine-readable code, e.g. `validation_errors`.
    pub code: Option<String>,
    /// Messages by JSON path.
    #[schema(value_type = Option<Object>)]
    pub error_details: Option<Value>,
}

/// An RFC 7807 problem (OpenMeter style, and meter's own API).
#[derive(Serialize, ToSchema)]
pub struct Problem {
    /// Always `about:blank`.
    #[serde(rename = "type")]
    pub type_: String,
    /// Reason phrase.
    pub title: String,
    /// HTTP status.
    pub status: u16,
    /// The first problem, and how many more.
    pub detail: String,
    /// `{"validationErrors": [{"path", "message"}]}`.
    #[schema(value_type = Option<Object>)]
    pub extensions: Option<Value>,
}
