//! Metric names of ingest, declared once.

/// Requests answered, by `api` (lago, cloudevents, ndjson) and `status`.
pub const REQUESTS: &str = "meter_ingest_requests_total";
/// Events accepted, by `outcome` (`new` or `duplicate`).
pub const EVENTS: &str = "meter_ingest_events_total";
/// Time from request to answer, by `api`.
pub const DURATION: &str = "meter_ingest_request_duration_seconds";
/// Requests refused for a tenant's rate quota, by what it `exceeded` (`events`, `requests`).
pub const THROTTLED: &str = "meter_ingest_throttled_total";
