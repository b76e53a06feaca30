//! The ingest endpoints.

use crate::docs::{
    CloudEvent, LagoBatchRequest, LagoBatchResponse, LagoError, LagoEventRequest, LagoEventResponse, NdjsonSummary,
    Problem,
};
use crate::{Ingest, IngestError, metric};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use meter_auth::{AuthError, Principal, Role};
use meter_eventlog::{Error as LogError, Outcome};
use meter_schemas::envelope::{self, Context, Dialect, EventPath, Format, Parsed};
use meter_schemas::error::summary;
use meter_schemas::period::{format_time, now_us};
use meter_schemas::{ErrorKind, Event, FieldError, TenantScope};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Instant;

/// Bodies larger than this are parsed off the async runtime.
const INLINE_PARSE_BYTES: usize = 256 * 1024;

/// A key that may send events: an ingest key (a tenant's, or a service's that names the tenant
/// of each event) or an admin's. Handlers take it as `Result<Sender, _>`, so that a refusal is
/// answered in the request's own dialect and counted like every other answer.
pub struct Sender(Principal);

impl FromRequestParts<Arc<Ingest>> for Sender {
    type Rejection = IngestError;

    async fn from_request_parts(parts: &mut Parts, ingest: &Arc<Ingest>) -> Result<Self, IngestError> {
        let auth = parts.headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        let principal = ingest.keys.authenticate(auth).await?;
        match principal.role {
            Role::Read => Err(AuthError::WrongRole { have: principal.role, action: "send events" }.into()),
            Role::Ingest | Role::Admin => Ok(Sender(principal)),
        }
    }
}

/// Sends events: Lago `{"event": ...}`, CloudEvents (one or a batch), or NDJSON.
#[utoipa::path(
    post,
    path = "/api/v1/events",
    tag = "ingest",
    request_body(content(
        (LagoEventRequest = "application/json"),
        (CloudEvent = "application/cloudevents+json"),
        (Vec<CloudEvent> = "application/cloudevents-batch+json"),
        (String = "application/x-ndjson"),
    )),
    responses(
        (status = 200, description = "Lago event stored (or a duplicate of one stored before)", body = LagoEventResponse),
        (status = 200, description = "NDJSON events stored", body = NdjsonSummary, content_type = "application/json"),
        (status = 204, description = "CloudEvents stored; headers Meter-Accepted and Meter-Duplicates count them"),
        (status = 400, description = "Malformed body (in the shape of the body sent, as every refusal but a 415)", content((LagoError = "application/json"), (Problem = "application/problem+json"))),
        (status = 401, description = "Missing, malformed, unknown or revoked key", content((LagoError = "application/json"), (Problem = "application/problem+json"))),
        (status = 403, description = "The key may not ingest, or not for this tenant", content((LagoError = "application/json"), (Problem = "application/problem+json"))),
        (status = 409, description = "An id was already used with a different payload", content((LagoError = "application/json"), (Problem = "application/problem+json"))),
        (status = 413, description = "Body or event count over the limit", content((LagoError = "application/json"), (Problem = "application/problem+json"))),
        (status = 415, description = "Unsupported content type", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid events; every problem is listed, nothing was stored", content((LagoError = "application/json"), (Problem = "application/problem+json"))),
        (status = 429, description = "A tenant is over its rate quota; nothing was stored, retry after Retry-After", headers(("Retry-After" = u64, description = "Whole seconds to wait before sending again")), content((LagoError = "application/json"), (Problem = "application/problem+json"))),
        (status = 503, description = "The log cannot take events now; retry after Retry-After", headers(("Retry-After" = u64, description = "Whole seconds to wait before sending again")), content((LagoError = "application/json"), (Problem = "application/problem+json"))),
    ),
    security(("bearer" = []))
)]
pub async fn post_events(
    State(ingest): State<Arc<Ingest>>,
    sender: Result<Sender, IngestError>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let format = match content_type(&headers) {
        Ok(f) => f,
        Err(e) => return e.into_response_for(Dialect::CloudEvents),
    };
    handle(&ingest, format, sender, body).await
}

/// Sends a Lago batch `{"events": [...]}`: all events are stored, or none.
#[utoipa::path(
    post,
    path = "/api/v1/events/batch",
    tag = "ingest",
    request_body(content((LagoBatchRequest = "application/json"))),
    responses(
        (status = 200, description = "Events stored (duplicates are flagged)", body = LagoBatchResponse),
        (status = 400, description = "Malformed body", body = LagoError),
        (status = 401, description = "Missing, malformed, unknown or revoked key", body = LagoError),
        (status = 403, description = "The key may not ingest, or not for this tenant", body = LagoError),
        (status = 409, description = "An id was already used with a different payload", body = LagoError),
        (status = 413, description = "Body or event count over the limit", body = LagoError),
        (status = 422, description = "Invalid events; every problem is listed, nothing was stored", body = LagoError),
        (status = 429, description = "A tenant is over its rate quota; nothing was stored, retry after Retry-After", headers(("Retry-After" = u64, description = "Whole seconds to wait before sending again")), body = LagoError),
        (status = 503, description = "The log cannot take events now; retry after Retry-After", headers(("Retry-After" = u64, description = "Whole seconds to wait before sending again")), body = LagoError),
    ),
    security(("bearer" = []))
)]
pub async fn post_events_batch(
    State(ingest): State<Arc<Ingest>>,
    sender: Result<Sender, IngestError>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match content_type(&headers) {
        Ok(Format::Json) => handle(&ingest, Format::LagoBatch, sender, body).await,
        Ok(_) => IngestError::UnsupportedMediaType("the batch endpoint takes application/json".into())
            .into_response_for(Dialect::Lago),
        Err(e) => e.into_response_for(Dialect::Lago),
    }
}

fn content_type(headers: &HeaderMap) -> Result<Format, IngestError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(Format::Json);
    };
    let essence = value.to_str().unwrap_or("").split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    match essence.as_str() {
        "application/json" | "" => Ok(Format::Json),
        "application/cloudevents+json" => Ok(Format::CloudEvent),
        "application/cloudevents-batch+json" => Ok(Format::CloudEventBatch),
        "application/x-ndjson" | "application/ndjson" | "application/jsonl" => Ok(Format::Ndjson),
        other => Err(IngestError::UnsupportedMediaType(format!(
            "content type {other:?} is not accepted; use application/json, application/cloudevents+json, \
             application/cloudevents-batch+json or application/x-ndjson"
        ))),
    }
}

fn api_label(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::Lago => "lago",
        Dialect::CloudEvents => "cloudevents",
        Dialect::Ndjson => "ndjson",
    }
}

async fn handle(
    ingest: &Arc<Ingest>,
    format: Format,
    sender: Result<Sender, IngestError>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let mut dialect = envelope::dialect_of(format);
    let response = match accept(ingest, format, sender, body, &mut dialect).await {
        Ok(r) => r,
        Err(e) => {
            if let IngestError::Fields(errors) = &e {
                tracing::debug!(problems = errors.len(), first = %summary(errors), "ingest request refused");
            }
            e.into_response_for(dialect)
        }
    };
    let api = api_label(dialect);
    metrics::counter!(metric::REQUESTS, "api" => api, "status" => response.status().as_u16().to_string()).increment(1);
    metrics::histogram!(metric::DURATION, "api" => api).record(started.elapsed().as_secs_f64());
    response
}

async fn accept(
    ingest: &Arc<Ingest>,
    format: Format,
    sender: Result<Sender, IngestError>,
    body: Result<Bytes, BytesRejection>,
    dialect: &mut Dialect,
) -> Result<Response, IngestError> {
    let Sender(principal) = sender?;
    // A tenant key's request is that tenant's whatever it carries: one refused before it carries
    // an event (a body too large or malformed) or carrying none still spends a request of its
    // quota, if one is left (if not, its next request is refused before its body is parsed); its
    // answer stays what was wrong with it.
    let key_tenant = principal.tenant.clone();
    let spend_request = || {
        if let (Some(throttle), Some(tenant)) = (&ingest.throttle, &key_tenant) {
            let _spent = throttle.admit(&[(tenant, 0)]);
        }
    };
    let body = body.map_err(|rejection| {
        spend_request();
        let error = if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            let limit = ingest.max_body_bytes;
            FieldError::new(ErrorKind::TooLarge, "body", format!("is larger than the limit of {limit} bytes"))
        } else {
            FieldError::new(ErrorKind::Malformed, "body", format!("cannot be read: {rejection}"))
        };
        IngestError::Fields(vec![error])
    })?;
    let throttled = |t: crate::Throttled| {
        metrics::counter!(metric::THROTTLED, "exceeded" => t.exceeded.as_str()).increment(1);
        tracing::debug!(tenant = %t.tenant, exceeded = t.exceeded.as_str(), "ingest request over a rate quota");
        IngestError::Throttled(t)
    };
    if let (Some(throttle), Some(tenant)) = (&ingest.throttle, &principal.tenant) {
        throttle.could_admit(tenant).map_err(|t| {
            // Answered in the request's own style: a CloudEvent may come as plain JSON.
            if format == Format::Json && body.windows(13).any(|w| w == b"\"specversion\"") {
                *dialect = Dialect::CloudEvents;
            }
            throttled(t)
        })?;
    }
    let scope = match principal.tenant {
        Some(t) => TenantScope::Only(t),
        None => TenantScope::Any,
    };
    let now = now_us();
    let inline = body.len() <= INLINE_PARSE_BYTES;
    let parse = {
        let ingest = ingest.clone();
        move || {
            let cx = Context { limits: &ingest.limits, catalog: &ingest.catalog, scope: &scope, now_us: now };
            envelope::parse(format, &body, &cx)
        }
    };
    let parsed = if inline {
        parse()
    } else {
        tokio::task::spawn_blocking(parse).await.map_err(|e| IngestError::Unavailable(e.to_string()))?
    };
    let parsed = parsed.map_err(|refused| {
        *dialect = refused.dialect;
        spend_request();
        IngestError::Fields(refused.errors)
    })?;
    *dialect = parsed.dialect;
    let Parsed { events, paths, dialect: _ } = parsed;
    let mut charged = per_tenant(&events);
    if let (true, Some(tenant)) = (charged.is_empty(), &key_tenant) {
        charged.push((tenant, 0));
    }
    let taken = match &ingest.throttle {
        Some(throttle) => Some(throttle.admit(&charged).map_err(throttled)?),
        None => None,
    };
    let outcomes = match store(ingest, &events, &paths).await {
        Ok(outcomes) => outcomes,
        Err(e) => {
            // Nothing was stored: the request costs its tenants no quota.
            if let (Some(throttle), Some(taken)) = (&ingest.throttle, taken) {
                throttle.give_back(taken);
            }
            return Err(e);
        }
    };
    let duplicates = outcomes.iter().filter(|o| **o == Outcome::Duplicate).count();
    metrics::counter!(metric::EVENTS, "outcome" => "new").increment((outcomes.len() - duplicates) as u64);
    metrics::counter!(metric::EVENTS, "outcome" => "duplicate").increment(duplicates as u64);
    Ok(respond(*dialect, format, &events, &paths, &outcomes, now))
}

/// Checks the hard limits of `events`' tenants and appends them to the log.
async fn store(ingest: &Ingest, events: &[Event], paths: &[EventPath]) -> Result<Vec<Outcome>, IngestError> {
    if let Some(quota) = &ingest.quota {
        let refused = quota.refused(events).await.map_err(IngestError::Unavailable)?;
        if !refused.is_empty() {
            let errors = refused
                .into_iter()
                .map(|(i, why)| FieldError::new(ErrorKind::Forbidden, paths[i].event(), why))
                .collect();
            return Err(IngestError::Fields(errors));
        }
    }
    match ingest.log.append(events).await {
        Ok(o) => Ok(o),
        Err(LogError::Conflicts(indexes)) => {
            let errors = indexes
                .into_iter()
                .map(|i| {
                    FieldError::new(ErrorKind::Conflict, paths[i].id(), "was already used with a different payload")
                })
                .collect();
            Err(IngestError::Fields(errors))
        }
        Err(LogError::TooLate(indexes)) => {
            let errors = indexes
                .into_iter()
                .map(|i| FieldError::invalid(paths[i].time(), "was older than the lateness window when stored"))
                .collect();
            Err(IngestError::Fields(errors))
        }
        Err(e) => Err(IngestError::Unavailable(e.to_string())),
    }
}

/// How many events of each tenant `events` holds, tenants in order of first appearance.
fn per_tenant(events: &[Event]) -> Vec<(&str, u32)> {
    let mut counts: Vec<(&str, u32)> = Vec::new();
    let mut at: hashbrown::HashMap<&str, usize> = hashbrown::HashMap::with_capacity(events.len());
    for e in events {
        let i = *at.entry(&e.tenant).or_insert_with(|| {
            counts.push((&e.tenant, 0));
            counts.len() - 1
        });
        counts[i].1 += 1;
    }
    counts
}

fn respond(
    dialect: Dialect,
    format: Format,
    events: &[Event],
    paths: &[EventPath],
    outcomes: &[Outcome],
    now: i64,
) -> Response {
    let duplicates = outcomes.iter().filter(|o| **o == Outcome::Duplicate).count();
    match dialect {
        Dialect::Lago => {
            let body = lago_answer(format == Format::LagoBatch, events, outcomes, now);
            let mut r = (StatusCode::OK, body.unwrap_or_default()).into_response();
            r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            r
        }
        Dialect::CloudEvents => {
            let mut r = StatusCode::NO_CONTENT.into_response();
            r.headers_mut().insert("meter-accepted", HeaderValue::from(outcomes.len() - duplicates));
            r.headers_mut().insert("meter-duplicates", HeaderValue::from(duplicates));
            r
        }
        Dialect::Ndjson => {
            let duplicate_paths: Vec<String> =
                paths.iter().zip(outcomes).filter(|(_, o)| **o == Outcome::Duplicate).map(|(p, _)| p.id()).collect();
            let body = json!({
                "accepted": outcomes.len() - duplicates,
                "duplicates": duplicates,
                "duplicate_paths": duplicate_paths,
            });
            (StatusCode::OK, axum::Json(body)).into_response()
        }
    }
}

/// A stable UUID (version 8) for an event, from its tenant and id: its `lago_id`.
fn lago_uuid(tenant: &str, id: &str) -> uuid::Uuid {
    let digest = Sha256::new().chain_update(tenant.as_bytes()).chain_update([0]).chain_update(id.as_bytes()).finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&digest[..16]);
    uuid::Uuid::new_v8(b)
}

/// Room for one event's echo: the load generator's events, a few short properties each, take
/// 399-441 bytes (test `an_echo_of_a_few_short_properties_fits_its_room`; at 384 a batch's body
/// was copied once more as it grew). A larger event grows the body as a `Vec` does.
const ECHO_BYTES: usize = 512;

/// Lago's answer to the events of a request, each echoed as Lago does: `{"events":[…]}` for a
/// batch, `{"event":…}` for one event. Written straight into the body: the field names and the
/// fields Lago leaves `null` as constant bytes, and only the event's own strings escaped (a
/// derived `Serialize` escaped every field name of every event; the echo was 13-15 % of ingest's
/// CPU; BENCHMARKS.md). Its bytes are the derived serializer's (test
/// `the_echo_is_byte_for_byte_what_serde_writes`).
fn lago_answer(batch: bool, events: &[Event], outcomes: &[Outcome], now: i64) -> serde_json::Result<Vec<u8>> {
    let created_at = serde_json::to_vec(&format_time(now / 1_000_000 * 1_000_000))?;
    let echoed = if batch { events.len() } else { events.len().min(1) };
    let mut out = Vec::with_capacity(32 + ECHO_BYTES * echoed);
    out.extend_from_slice(if batch { b"{\"events\":[" } else { b"{\"event\":" });
    for (i, (e, o)) in events.iter().zip(outcomes).take(echoed).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_echo(&mut out, e, *o == Outcome::Duplicate, &created_at)?;
    }
    if echoed == 0 && !batch {
        out.extend_from_slice(b"null");
    }
    out.extend_from_slice(if batch { b"]}" } else { b"}" });
    Ok(out)
}

/// One event as Lago echoes it (its properties borrowed, not copied). `created_at` is written
/// as given: a JSON string, quotes included.
fn write_echo(out: &mut Vec<u8>, e: &Event, duplicate: bool, created_at: &[u8]) -> serde_json::Result<()> {
    out.extend_from_slice(b"{\"lago_id\":\"");
    out.extend_from_slice(
        lago_uuid(&e.tenant, &e.id).hyphenated().encode_lower(&mut uuid::Uuid::encode_buffer()).as_bytes(),
    );
    out.extend_from_slice(b"\",\"transaction_id\":");
    serde_json::to_writer(&mut *out, &e.id)?;
    out.extend_from_slice(b",\"lago_customer_id\":null,\"code\":");
    serde_json::to_writer(&mut *out, &e.code)?;
    out.extend_from_slice(b",\"timestamp\":");
    write_time(out, e.time_us)?;
    out.extend_from_slice(b",\"precise_total_amount_cents\":null,\"properties\":");
    serde_json::to_writer(&mut *out, &e.properties)?;
    out.extend_from_slice(b",\"lago_subscription_id\":null,\"external_subscription_id\":");
    serde_json::to_writer(&mut *out, e.subscription.as_deref().unwrap_or(&e.tenant))?;
    out.extend_from_slice(b",\"external_customer_id\":");
    serde_json::to_writer(&mut *out, &e.tenant)?;
    out.extend_from_slice(b",\"created_at\":");
    out.extend_from_slice(created_at);
    out.extend_from_slice(if duplicate { b",\"duplicate\":true}" } else { b",\"duplicate\":false}" });
    Ok(())
}

/// An event's time in a Lago answer, as a JSON string: its whole milliseconds,
/// `"2025-11-21T09:30:00.250Z"`. Written digit by digit for the years 0 to 9999, with no `String`
/// per event (with the `lago_id`'s, ingest's CPU 0.95-1.00 of before; BENCHMARKS.md); any other
/// year as [`lago_time`] writes it.
fn write_time(out: &mut Vec<u8>, time_us: i64) -> serde_json::Result<()> {
    let millis = time_us.div_euclid(1000);
    let at = time::OffsetDateTime::from_unix_timestamp(millis.div_euclid(1000)).ok();
    let Some(at) = at.filter(|t| (0..=9999).contains(&t.year())) else {
        return serde_json::to_writer(out, &lago_time(time_us));
    };
    let mut b = *b"\"0000-00-00T00:00:00.000Z\"";
    let mut put = |end: usize, width: usize, mut v: u32| {
        for i in (end + 1 - width..end + 1).rev() {
            b[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(4, 4, at.year() as u32);
    put(7, 2, u32::from(u8::from(at.month())));
    put(10, 2, u32::from(at.day()));
    put(13, 2, u32::from(at.hour()));
    put(16, 2, u32::from(at.minute()));
    put(19, 2, u32::from(at.second()));
    put(23, 3, millis.rem_euclid(1000) as u32);
    out.extend_from_slice(&b);
    Ok(())
}

/// An event's time (µs) as Lago echoes it, through the `time` crate's formatter: its whole
/// milliseconds, or nothing if `time` cannot represent it.
fn lago_time(time_us: i64) -> String {
    let millis = i128::from(time_us.div_euclid(1000));
    time::OffsetDateTime::from_unix_timestamp_nanos(millis * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(time::macros::format_description!(
                "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
            ))
            .ok()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// The document says what a refusal carries: on both routes a 429 and a 503 give
    /// `Retry-After`; on `POST /api/v1/events` every refusal but a 415 comes in the shape of the
    /// body sent (Lago's for a Lago event, a problem document for CloudEvents and NDJSON).
    #[test]
    fn the_document_gives_retry_after_and_each_shape_a_refusal_comes_in() {
        use utoipa::Path;
        let events = serde_json::to_value(__path_post_events::operation()).unwrap();
        let batch = serde_json::to_value(__path_post_events_batch::operation()).unwrap();
        for (route, doc) in [("events", &events), ("events/batch", &batch)] {
            for status in ["429", "503"] {
                let header = &doc["responses"][status]["headers"]["Retry-After"];
                assert!(header.is_object(), "{route} {status} declares no Retry-After: {}", doc["responses"][status]);
            }
        }
        for status in ["400", "401", "403", "409", "413", "422", "429", "503"] {
            let content = &events["responses"][status]["content"];
            for media in ["application/json", "application/problem+json"] {
                assert!(content[media].is_object(), "events {status} lacks {media}: {content}");
            }
        }
    }

    /// The echo's times, written by hand, are byte for byte what the `time` crate's formatter
    /// writes: across four centuries in steps that cross every month, leap days and year ends,
    /// before 1970 and at the range's edges.
    #[test]
    fn the_echo_writes_times_as_the_formatter_does() {
        let time = |t: i64| {
            let mut out = Vec::new();
            write_time(&mut out, t).unwrap();
            String::from_utf8(out).unwrap()
        };
        let mut t = -12_219_292_800_000_000i64; // 1582-10-15
        while t < 253_402_300_800_000_000 {
            assert_eq!(time(t), format!("\"{}\"", lago_time(t)), "at {t} µs");
            t += 7_777_777_777_777;
        }
        for t in [
            -1,
            0,
            1,
            999,
            1_000,
            951_782_400_000_123,
            253_402_300_799_999_999,
            253_402_300_800_000_000,
            -62_167_219_200_000_000,
            -62_167_219_200_000_001,
            i64::MIN,
            i64::MAX,
        ] {
            assert_eq!(time(t), format!("\"{}\"", lago_time(t)), "at {t} µs");
        }
        assert_eq!(time(951_782_400_000_123), "\"2000-02-29T00:00:00.000Z\"");
    }

    /// Lago's echo as a derived `Serialize` writes it, from the formatters' own strings: what
    /// [`lago_answer`] must write byte for byte.
    #[derive(serde::Serialize)]
    struct Echo<'a> {
        lago_id: String,
        transaction_id: &'a str,
        lago_customer_id: Option<()>,
        code: &'a str,
        timestamp: String,
        precise_total_amount_cents: Option<()>,
        properties: &'a serde_json::Map<String, Value>,
        lago_subscription_id: Option<()>,
        external_subscription_id: &'a str,
        external_customer_id: &'a str,
        created_at: String,
        duplicate: bool,
    }

    fn echo(e: &Event, duplicate: bool, now: i64) -> Echo<'_> {
        Echo {
            lago_id: lago_id(&e.tenant, &e.id),
            transaction_id: &e.id,
            lago_customer_id: None,
            code: &e.code,
            timestamp: lago_time(e.time_us),
            precise_total_amount_cents: None,
            properties: &e.properties,
            lago_subscription_id: None,
            external_subscription_id: e.subscription.as_deref().unwrap_or(&e.tenant),
            external_customer_id: &e.tenant,
            created_at: format_time(now / 1_000_000 * 1_000_000),
            duplicate,
        }
    }

    /// The load generator's events (its five codes, its ids) fit [`ECHO_BYTES`].
    #[test]
    fn an_echo_of_a_few_short_properties_fits_its_room() {
        let shapes = [
            ("work_order.created", serde_json::json!({"work_order_id": "wo-1234567"})),
            ("work_order.completed", serde_json::json!({"work_order_id": "wo-1234567"})),
            ("agent.invocation", serde_json::json!({"model": "gpt-x", "input_tokens": 1096, "output_tokens": 212})),
            ("api.call", serde_json::json!({"route": "/v1/orders", "method": "GET", "status": 200})),
            ("user.login", serde_json::json!({"user_id": "user-49"})),
        ];
        for (code, properties) in shapes {
            let Value::Object(properties) = properties else { unreachable!() };
            let e = Event {
                tenant: "tenant-0999".into(),
                id: "http-000001234567".into(),
                code: code.into(),
                time_us: 1_764_000_000_000_000,
                implicit_time: false,
                subscription: None,
                source: None,
                properties,
            };
            let mut out = Vec::new();
            write_echo(&mut out, &e, false, br#""2025-11-24T16:00:00Z""#).unwrap();
            assert!(out.len() <= ECHO_BYTES, "{code}: {} bytes", out.len());
        }
    }

    /// The hand-written echo is byte for byte what serde writes for the same fields, for strings
    /// that need escaping (quotes, backslashes, control characters, non-ASCII), nested and exact
    /// numeric properties, a subscription or none, times in and outside the years written by
    /// hand, duplicates, a batch and a single event.
    #[test]
    fn the_echo_is_byte_for_byte_what_serde_writes() {
        let properties: serde_json::Map<String, Value> = serde_json::from_str(
            r#"{"tokens":"12345678901234567890.000100","model":"gpt-\"4\"\\o","nested":{"a":[1,2.50,null,true],"é":"\u0001\n"},"n":1e3}"#,
        )
        .unwrap();
        let event = |tenant: &str, id: &str, code: &str, time_us: i64, subscription: Option<&str>| Event {
            tenant: tenant.into(),
            id: id.into(),
            code: code.into(),
            time_us,
            implicit_time: false,
            subscription: subscription.map(str::to_string),
            source: None,
            properties: properties.clone(),
        };
        let events = vec![
            event("acme", "t1", "agent.invocation", 1_764_000_000_123_456, None),
            event("ac\"me\\", "id \u{1}\n\t/é😀", "code\u{7f}", -1, Some("sub \"1\"")),
            event("tenant-0001", "x", "api.call", 253_402_300_800_000_000, Some("")),
            Event { properties: serde_json::Map::new(), ..event("t", "empty", "c", i64::MIN, None) },
        ];
        let at = |offset| Outcome::Appended(meter_eventlog::Position { partition: 0, offset });
        let outcomes = [at(1), Outcome::Duplicate, at(2), Outcome::Duplicate];
        let now = 1_764_000_123_456_789;
        let all: Vec<Echo<'_>> =
            events.iter().zip(&outcomes).map(|(e, o)| echo(e, *o == Outcome::Duplicate, now)).collect();
        let batch = lago_answer(true, &events, &outcomes, now).unwrap();
        #[derive(serde::Serialize)]
        struct Events<'a> {
            events: &'a [Echo<'a>],
        }
        #[derive(serde::Serialize)]
        struct One<'a> {
            event: &'a Echo<'a>,
        }
        assert_eq!(String::from_utf8(batch).unwrap(), serde_json::to_string(&Events { events: &all }).unwrap());
        let one = lago_answer(false, &events[1..2], &outcomes[1..2], now).unwrap();
        assert_eq!(String::from_utf8(one).unwrap(), serde_json::to_string(&One { event: &all[1] }).unwrap());
        assert_eq!(lago_answer(false, &[], &[], now).unwrap(), br#"{"event":null}"#);
        assert_eq!(lago_answer(true, &[], &[], now).unwrap(), br#"{"events":[]}"#);
    }

    fn lago_id(tenant: &str, id: &str) -> String {
        lago_uuid(tenant, id).hyphenated().to_string()
    }

    #[test]
    fn lago_ids_are_stable_uuids() {
        let id = lago_id("acme", "t1");
        assert_eq!(id, lago_id("acme", "t1"));
        assert_ne!(id, lago_id("acme", "t2"));
        assert_ne!(lago_id("a", "bc"), lago_id("ab", "c"), "tenant and id are separated");
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "8", "version 8");
        assert_eq!(id, "6bde20fe-44bd-8fee-9ce7-d90b7473fe33", "ids never change between releases");
    }
}
