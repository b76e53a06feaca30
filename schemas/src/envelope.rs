//! Parsing request bodies in every accepted envelope into [`Event`]s, reporting every problem at
//! once with its JSON path.
//!
//! Accepted: Lago (`{"event": {...}}`, `{"events": [...]}`), CloudEvents (one object, or an array),
//! and NDJSON whose lines are either.

use crate::error::{ErrorKind, FieldError};
use crate::event::Event;
use crate::meter::{Catalog, valid_code};
use crate::quantity::parse_decimal;
use hashbrown::HashMap;
use hashbrown::hash_map::Entry;
use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;
use serde_json::{Map, Value};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Longest id (transaction id, tenant id) accepted, in characters.
pub const MAX_ID_LEN: usize = 128;

/// Limits a request must stay within.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Most events in one request.
    pub max_events: usize,
    /// How far in the future an event time may be, in microseconds.
    pub max_future_us: i64,
    /// How far in the past an event time may be (the lateness window), in microseconds.
    pub lateness_us: i64,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_events: 1000, max_future_us: 300_000_000, lateness_us: 7 * 86_400_000_000 }
    }
}

/// How long the dedup state keeps an event id after it arrived, by default (35 days; Metronome
/// keeps 34). Never shorter than the lateness window plus how far ahead an event may be dated:
/// a resend arriving after its id was dropped is then refused as late.
pub const DEDUP_HORIZON_US: i64 = 35 * 86_400_000_000;

/// Which tenants the caller's key may write for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TenantScope {
    /// A service key: every event must name its tenant.
    Any,
    /// A tenant key: events are for this tenant; naming another is forbidden.
    Only(String),
}

/// The envelope of a request body, known from its path and content type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `application/json` on `/api/v1/events`: Lago's `{"event": ...}`, or CloudEvents.
    Json,
    /// `/api/v1/events/batch`: Lago's `{"events": [...]}`.
    LagoBatch,
    /// `application/cloudevents+json`: one CloudEvent.
    CloudEvent,
    /// `application/cloudevents-batch+json`: an array of CloudEvents.
    CloudEventBatch,
    /// `application/x-ndjson`: one event (either envelope) per line.
    Ndjson,
}

/// Which API's conventions a request follows, for the shape of its answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// Lago: 200 with the events echoed, Lago-style errors.
    Lago,
    /// OpenMeter: 204, `application/problem+json` errors.
    CloudEvents,
    /// NDJSON bulk: 200 with a summary.
    Ndjson,
}

/// A parsed request: the events, and for each where it sits in the body (for later errors).
#[derive(Debug)]
pub struct Parsed {
    /// The events, in request order.
    pub events: Vec<Event>,
    /// Where each event sits, one per event.
    pub paths: Vec<EventPath>,
    /// Which API's conventions to answer in.
    pub dialect: Dialect,
}

/// Where an event sits in its request's body, written out only for an error: `events[3]`,
/// `event`, `[2]`, `lines[4]`, or the body itself (one CloudEvent).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventPath {
    at: At,
    /// A Lago event (`transaction_id`, `timestamp`), or a CloudEvent (`id`, `time`).
    lago: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum At {
    Body,
    Event,
    Events(usize),
    Array(usize),
    Line(usize),
}

impl EventPath {
    /// `events[3]` and the like; nothing for the body itself.
    fn place(&self) -> Option<String> {
        match self.at {
            At::Body => None,
            At::Event => Some("event".to_string()),
            At::Events(i) => Some(format!("events[{i}]")),
            At::Array(i) => Some(format!("[{i}]")),
            At::Line(i) => Some(format!("lines[{i}]")),
        }
    }

    /// The path of the event's `field`: `events[3].code`, or `code` for the body itself.
    pub fn field(&self, field: &str) -> String {
        match self.place() {
            None => field.to_string(),
            Some(place) => format!("{place}.{field}"),
        }
    }

    /// The path of the event's id: `events[3].transaction_id`, `[0].id`.
    pub fn id(&self) -> String {
        self.field(if self.lago { "transaction_id" } else { "id" })
    }

    /// The path of the event's time: `events[3].timestamp`, `[0].time`.
    pub fn time(&self) -> String {
        self.field(if self.lago { "timestamp" } else { "time" })
    }

    /// The path of the event itself: `events[3]`, `event` for the body itself.
    pub fn event(&self) -> String {
        self.place().unwrap_or_else(|| "event".to_string())
    }

    /// The event's own path for an error about the whole of it: `body` for the body itself.
    fn whole(&self) -> String {
        self.place().unwrap_or_else(|| "body".to_string())
    }
}

/// A refused request: its dialect (for the error's shape) and every problem found.
#[derive(Debug)]
pub struct Refused {
    /// Which API's conventions to answer in.
    pub dialect: Dialect,
    /// Every problem, in request order.
    pub errors: Vec<FieldError>,
}

/// What parsing needs besides the body.
pub struct Context<'a> {
    /// Request limits.
    pub limits: &'a Limits,
    /// Meters and accepted codes.
    pub catalog: &'a Catalog,
    /// Tenants the key may write for.
    pub scope: &'a TenantScope,
    /// The time of receipt, microseconds since the epoch.
    pub now_us: i64,
}

/// The dialect a format answers in before its body is read (for errors about the body itself).
pub fn dialect_of(format: Format) -> Dialect {
    match format {
        Format::Json | Format::LagoBatch => Dialect::Lago,
        Format::CloudEvent | Format::CloudEventBatch => Dialect::CloudEvents,
        Format::Ndjson => Dialect::Ndjson,
    }
}

/// Parses and validates a whole request. Either every event is valid, or nothing is accepted and
/// every problem is reported.
pub fn parse(format: Format, body: &[u8], cx: &Context<'_>) -> Result<Parsed, Refused> {
    parse_with(format, body, cx, true)
}

/// [`parse`]; `typed` reads a Lago body whose events have only Lago's fields straight into
/// [`LagoFields`] (every value read in full, as in a tree), and anything else as a JSON tree
/// (`false`: always as a tree, which the tests compare with).
fn parse_with(format: Format, body: &[u8], cx: &Context<'_>, typed: bool) -> Result<Parsed, Refused> {
    let mut dialect = dialect_of(format);
    let refuse = |dialect, errors| Err(Refused { dialect, errors });
    let mut items: Vec<(EventPath, Item)> = Vec::new();
    let lago = match format {
        Format::LagoBatch if typed => {
            serde_json::from_slice::<ObjectOnly<LagoBatchBody>>(body).ok().map(|b| (b.0.events, "events"))
        }
        Format::Json if typed => {
            serde_json::from_slice::<ObjectOnly<LagoOneBody>>(body).ok().map(|b| (vec![b.0.event], "event"))
        }
        _ => None,
    };
    if let Some((events, field)) = lago {
        let at = |i| if field == "event" { At::Event } else { At::Events(i) };
        items.extend(
            events.into_iter().enumerate().map(|(i, e)| (EventPath { at: at(i), lago: true }, Item::Lago(e.0))),
        );
    } else if format == Format::Ndjson {
        let mut errors = Vec::new();
        let text = match std::str::from_utf8(body) {
            Ok(t) => t,
            Err(e) => {
                return refuse(dialect, vec![malformed("body", &format!("is not UTF-8: {e}"))]);
            }
        };
        for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            match serde_json::from_str::<Value>(line) {
                Ok(v) => {
                    let lago = v.get("specversion").is_none();
                    let item = if lago { Item::LagoValue(v) } else { Item::Cloud(v) };
                    items.push((EventPath { at: At::Line(i), lago }, item));
                }
                Err(e) => errors.push(malformed(&format!("lines[{i}]"), &format!("malformed JSON: {e}"))),
            }
        }
        if !errors.is_empty() {
            return refuse(dialect, errors);
        }
    } else {
        let root: Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => {
                return refuse(dialect, vec![malformed("body", &format!("malformed JSON: {e}"))]);
            }
        };
        let (shape, root) = match (format, root) {
            (Format::Json, Value::Object(mut o)) if o.contains_key("event") && o.get("specversion").is_none() => {
                let extra: Vec<FieldError> = o
                    .keys()
                    .filter(|k| *k != "event")
                    .map(|k| FieldError::invalid(k.as_str(), "unknown field"))
                    .collect();
                if !extra.is_empty() {
                    return refuse(dialect, extra);
                }
                let event = o.remove("event").unwrap_or(Value::Null);
                items.push((EventPath { at: At::Event, lago: true }, Item::LagoValue(event)));
                (None, Value::Null)
            }
            (Format::Json, v @ Value::Object(_)) => {
                dialect = Dialect::CloudEvents;
                (Some(Format::CloudEvent), v)
            }
            (Format::Json, v @ Value::Array(_)) => {
                dialect = Dialect::CloudEvents;
                (Some(Format::CloudEventBatch), v)
            }
            (Format::Json, _) => {
                return refuse(
                    dialect,
                    vec![FieldError::invalid("body", "must be {\"event\": {...}} or a CloudEvent")],
                );
            }
            (f, v) => (Some(f), v),
        };
        match (shape, root) {
            (None, _) => {}
            (Some(Format::LagoBatch), Value::Object(mut o)) => {
                let extra: Vec<FieldError> = o
                    .keys()
                    .filter(|k| *k != "events")
                    .map(|k| FieldError::invalid(k.as_str(), "unknown field"))
                    .collect();
                if !extra.is_empty() {
                    return refuse(dialect, extra);
                }
                match o.remove("events") {
                    Some(Value::Array(list)) => {
                        items.extend(
                            list.into_iter()
                                .enumerate()
                                .map(|(i, v)| (EventPath { at: At::Events(i), lago: true }, Item::LagoValue(v))),
                        );
                    }
                    Some(_) => {
                        return refuse(dialect, vec![FieldError::invalid("events", "must be an array")]);
                    }
                    None => {
                        return refuse(dialect, vec![FieldError::invalid("events", "is required")]);
                    }
                }
            }
            (Some(Format::LagoBatch), _) => {
                return refuse(dialect, vec![FieldError::invalid("body", "must be an object {\"events\": [...]}")]);
            }
            (Some(Format::CloudEvent), v @ Value::Object(_)) => {
                items.push((EventPath { at: At::Body, lago: false }, Item::Cloud(v)));
            }
            (Some(Format::CloudEvent), _) => {
                return refuse(dialect, vec![FieldError::invalid("body", "must be a CloudEvent object")]);
            }
            (Some(Format::CloudEventBatch), Value::Array(list)) => {
                items.extend(
                    list.into_iter()
                        .enumerate()
                        .map(|(i, v)| (EventPath { at: At::Array(i), lago: false }, Item::Cloud(v))),
                );
            }
            (Some(_), _) => {
                return refuse(dialect, vec![FieldError::invalid("body", "must be an array of CloudEvents")]);
            }
        }
    }

    let list_path = match format {
        Format::LagoBatch => "events",
        _ => "body",
    };
    if items.is_empty() {
        return refuse(dialect, vec![FieldError::invalid(list_path, "must contain at least one event")]);
    }
    if items.len() > cx.limits.max_events {
        let msg = format!("has {} events; at most {} are accepted per request", items.len(), cx.limits.max_events);
        return refuse(dialect, vec![FieldError::new(ErrorKind::TooLarge, list_path, msg)]);
    }

    let mut errors = Vec::new();
    let mut events = Vec::with_capacity(items.len());
    let mut paths = Vec::with_capacity(items.len());
    for (path, item) in items {
        let event = match item {
            Item::Lago(fields) => lago_fields(&path, fields, cx, &mut errors),
            Item::LagoValue(value) => lago_event(&path, value, cx, &mut errors),
            Item::Cloud(value) => cloud_event(&path, value, cx, &mut errors),
        };
        if let Some(e) = event {
            events.push(e);
            paths.push(path);
        }
    }
    if errors.is_empty() {
        conflicts_within(&events, &paths, &mut errors);
    }
    if errors.is_empty() { Ok(Parsed { events, paths, dialect }) } else { refuse(dialect, errors) }
}

/// One event of a request, as read.
enum Item {
    /// A Lago event read straight into its fields.
    Lago(LagoFields),
    /// A Lago event as a JSON tree (anything, until checked).
    LagoValue(Value),
    /// A CloudEvent as a JSON tree.
    Cloud(Value),
}

/// `{"events": [...]}` with nothing else, each event an object of Lago's fields only.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LagoBatchBody {
    events: Vec<ObjectOnly<LagoFields>>,
}

/// `{"event": {...}}` with nothing else.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LagoOneBody {
    event: ObjectOnly<LagoFields>,
}

/// A Lago event's fields ([`LAGO_FIELDS`]), each `None` when absent (or `null`, read straight), read
/// straight from a body whose every event has only these (a typo is refused by serde, and the
/// body is then read again as a tree to report every problem with its path), or moved out of a
/// tree's object.
/// Reading a batch of 100 this way rather than as a tree: BENCHMARKS.md.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LagoFields {
    transaction_id: Option<Value>,
    external_customer_id: Option<Value>,
    external_subscription_id: Option<Value>,
    code: Option<Value>,
    timestamp: Option<Value>,
    properties: Option<Value>,
    /// Accepted and not kept; read in full all the same (serde's `IgnoredAny` would skip a
    /// malformed string or a nesting past the limit, which the tree refuses).
    #[allow(dead_code)]
    precise_total_amount_cents: Option<Value>,
}

/// A `T` read only from a JSON object: serde's derived structs also take an array of their
/// fields in order, which no envelope allows.
struct ObjectOnly<T>(T);

impl<'de, T: serde::Deserialize<'de>> serde::Deserialize<'de> for ObjectOnly<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit<T>(std::marker::PhantomData<T>);
        impl<'de, T: serde::Deserialize<'de>> serde::de::Visitor<'de> for Visit<T> {
            type Value = T;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }
        d.deserialize_map(Visit(std::marker::PhantomData)).map(ObjectOnly)
    }
}

fn malformed(path: &str, message: &str) -> FieldError {
    FieldError::new(ErrorKind::Malformed, path, message)
}

const LAGO_FIELDS: &[&str] = &[
    "transaction_id",
    "external_customer_id",
    "external_subscription_id",
    "code",
    "timestamp",
    "properties",
    "precise_total_amount_cents",
];

/// A Lago event read as a tree: its unknown fields reported, the rest checked as [`lago_fields`].
fn lago_event(path: &EventPath, value: Value, cx: &Context<'_>, errors: &mut Vec<FieldError>) -> Option<Event> {
    let Value::Object(mut o) = value else {
        errors.push(FieldError::invalid(path.whole(), "must be an object"));
        return None;
    };
    let before = errors.len();
    for k in o.keys().filter(|k| !LAGO_FIELDS.contains(&k.as_str())) {
        errors.push(FieldError::invalid(path.field(k), "unknown field"));
    }
    // Moved out of the tree, not read back from it with serde: with `arbitrary_precision`, an
    // object whose first key (in key order) is serde_json's number token reads back as a number.
    let fields = LagoFields {
        transaction_id: o.remove("transaction_id"),
        external_customer_id: o.remove("external_customer_id"),
        external_subscription_id: o.remove("external_subscription_id"),
        code: o.remove("code"),
        timestamp: o.remove("timestamp"),
        properties: o.remove("properties"),
        precise_total_amount_cents: o.remove("precise_total_amount_cents"),
    };
    let event = lago_fields(path, fields, cx, errors);
    if errors.len() > before { None } else { event }
}

/// Checks a Lago event's fields and builds the event when none is refused.
fn lago_fields(path: &EventPath, o: LagoFields, cx: &Context<'_>, errors: &mut Vec<FieldError>) -> Option<Event> {
    let before = errors.len();
    let id = required_id(o.transaction_id, path, "transaction_id", errors);
    let customer = optional_id(o.external_customer_id, path, "external_customer_id", errors);
    let subscription = optional_id(o.external_subscription_id, path, "external_subscription_id", errors);
    let tenant_field = if customer.is_some() { "external_customer_id" } else { "external_subscription_id" };
    let tenant = resolve_tenant(customer.or_else(|| subscription.clone()), path, tenant_field, cx, errors);
    let code = code(o.code, path, "code", cx, errors);
    let time = match &o.timestamp {
        None | Some(Value::Null) => Some((cx.now_us, true)),
        Some(v) => lago_time(v).map_err(|m| errors.push(FieldError::invalid(path.field("timestamp"), m))).ok(),
    };
    let parts = Parts { tenant, id, code, time, subscription, source: None };
    assemble(parts, o.properties, (path, "timestamp", "properties"), cx, errors, before)
}

const CLOUD_FIELDS: &[&str] =
    &["specversion", "id", "source", "type", "subject", "time", "data", "datacontenttype", "dataschema"];

fn cloud_event(path: &EventPath, value: Value, cx: &Context<'_>, errors: &mut Vec<FieldError>) -> Option<Event> {
    let before = errors.len();
    let Value::Object(mut o) = value else {
        errors.push(FieldError::invalid(path.whole(), "must be an object"));
        return None;
    };
    for k in o.keys().filter(|k| !CLOUD_FIELDS.contains(&k.as_str())) {
        // CloudEvents extension attributes: lower-case letters and digits, at most 20.
        let extension = k.len() <= 20 && k.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if !extension {
            errors.push(FieldError::invalid(path.field(k), "unknown attribute (extensions are [a-z0-9]{1,20})"));
        }
    }
    match o.get("specversion") {
        Some(Value::String(s)) if s == "1.0" => {}
        None | Some(Value::Null) => {
            errors.push(FieldError::invalid(path.field("specversion"), "is required (\"1.0\")"))
        }
        Some(_) => errors.push(FieldError::invalid(path.field("specversion"), "must be \"1.0\"")),
    }
    let id = required_id(o.remove("id"), path, "id", errors);
    let source = match o.remove("source") {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= 1024 && !s.chars().any(char::is_control) => Some(s),
        None | Some(Value::Null) => {
            errors.push(FieldError::invalid(path.field("source"), "is required"));
            None
        }
        Some(_) => {
            errors.push(FieldError::invalid(
                path.field("source"),
                "must be a non-empty URI reference of at most 1024 characters",
            ));
            None
        }
    };
    let subject = optional_id(o.remove("subject"), path, "subject", errors);
    let tenant = resolve_tenant(subject, path, "subject", cx, errors);
    let code = code(o.remove("type"), path, "type", cx, errors);
    match o.get("datacontenttype") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s.starts_with("application/json") => {}
        Some(_) => errors.push(FieldError::invalid(path.field("datacontenttype"), "must be application/json")),
    }
    let time = match o.get("time") {
        None | Some(Value::Null) => Some((cx.now_us, true)),
        Some(Value::String(s)) => {
            rfc3339(s).map(|t| (t, false)).map_err(|m| errors.push(FieldError::invalid(path.field("time"), m))).ok()
        }
        Some(_) => {
            errors.push(FieldError::invalid(path.field("time"), "must be an RFC 3339 date-time string"));
            None
        }
    };
    let parts = Parts { tenant, id, code, time, subscription: None, source };
    assemble(parts, o.remove("data"), (path, "time", "data"), cx, errors, before)
}

/// The fields of an event read from either envelope, each `None` where it was refused.
struct Parts {
    tenant: Option<String>,
    id: Option<String>,
    code: Option<String>,
    /// Event time, and whether ingest filled it in.
    time: Option<(i64, bool)>,
    subscription: Option<String>,
    source: Option<String>,
}

/// Checks what both envelopes check alike (the time window, the properties against the meters)
/// and builds the event when nothing about it was refused since `before` errors.
/// `fields` is `(path, time field, properties field)`.
fn assemble(
    parts: Parts,
    props: Option<Value>,
    (path, time_field, props_field): (&EventPath, &str, &str),
    cx: &Context<'_>,
    errors: &mut Vec<FieldError>,
    before: usize,
) -> Option<Event> {
    let time = parts
        .time
        .and_then(|(t, implicit)| check_window(t, || path.field(time_field), cx, errors).map(|t| (t, implicit)));
    let props_path = || path.field(props_field);
    let properties = properties(props, props_path, errors);
    if let (Some(code), Some(props)) = (&parts.code, &properties) {
        cx.catalog.check_properties(code, props, props_path, errors);
    }
    if errors.len() > before {
        return None;
    }
    let (time_us, implicit_time) = time?;
    Some(Event {
        tenant: parts.tenant?,
        id: parts.id?,
        code: parts.code?,
        time_us,
        implicit_time,
        subscription: parts.subscription,
        source: parts.source,
        properties: properties?,
    })
}

/// Checks an id's text: 1 to 128 printable ASCII characters, no spaces.
pub fn check_id(text: &str) -> Result<(), String> {
    if text.is_empty() {
        return Err("must not be empty".into());
    }
    // The common case in one pass: printable ASCII, so as many characters as bytes.
    if text.len() <= MAX_ID_LEN && text.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Ok(());
    }
    let len = text.chars().count();
    if len > MAX_ID_LEN {
        return Err(format!("must be at most {MAX_ID_LEN} characters (got {len})"));
    }
    if text.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    if !text.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err("may contain only printable ASCII characters, without spaces".into());
    }
    Ok(())
}

fn id_value(v: Value) -> Result<String, String> {
    match v {
        Value::String(s) => check_id(&s).map(|()| s),
        _ => Err("must be a string".into()),
    }
}

/// The id in `field`'s value `v`.
fn required_id(v: Option<Value>, path: &EventPath, field: &str, errors: &mut Vec<FieldError>) -> Option<String> {
    match v {
        None | Some(Value::Null) => {
            errors.push(FieldError::invalid(path.field(field), "is required"));
            None
        }
        Some(v) => id_value(v).map_err(|m| errors.push(FieldError::invalid(path.field(field), m))).ok(),
    }
}

/// The id in `field`'s value `v`, if it has one.
fn optional_id(v: Option<Value>, path: &EventPath, field: &str, errors: &mut Vec<FieldError>) -> Option<String> {
    match v {
        None | Some(Value::Null) => None,
        Some(v) => id_value(v).map_err(|m| errors.push(FieldError::invalid(path.field(field), m))).ok(),
    }
}

fn resolve_tenant(
    named: Option<String>,
    path: &EventPath,
    field: &str,
    cx: &Context<'_>,
    errors: &mut Vec<FieldError>,
) -> Option<String> {
    match (named, cx.scope) {
        (Some(t), TenantScope::Only(own)) if t != *own => {
            errors.push(FieldError::new(
                ErrorKind::Forbidden,
                path.field(field),
                "names another tenant than the one the API key belongs to",
            ));
            None
        }
        (Some(t), _) => Some(t),
        (None, TenantScope::Only(own)) => Some(own.clone()),
        (None, TenantScope::Any) => {
            errors.push(FieldError::invalid(
                path.field(field),
                "is required: a service key must name the tenant of each event",
            ));
            None
        }
    }
}

/// The event code in `field`'s value `v`.
fn code(
    v: Option<Value>,
    path: &EventPath,
    field: &str,
    cx: &Context<'_>,
    errors: &mut Vec<FieldError>,
) -> Option<String> {
    // The field's path is written out only for an error: most events have none.
    let p = || path.field(field);
    match v {
        None | Some(Value::Null) => errors.push(FieldError::invalid(p(), "is required")),
        Some(Value::String(c)) if !valid_code(&c) => {
            errors.push(FieldError::invalid(p(), "must be 1 to 128 characters of [A-Za-z0-9._:-]"));
        }
        Some(Value::String(c)) if !cx.catalog.accepts(&c) => errors.push(FieldError::invalid(
            p(),
            format!("unknown event code {c:?}; accepted codes: {}", cx.catalog.codes().join(", ")),
        )),
        Some(Value::String(c)) => return Some(c),
        Some(_) => errors.push(FieldError::invalid(p(), "must be a string")),
    }
    None
}

/// `path` writes out the field's path, for an error.
fn properties(v: Option<Value>, path: impl Fn() -> String, errors: &mut Vec<FieldError>) -> Option<Map<String, Value>> {
    match v {
        None | Some(Value::Null) => Some(Map::new()),
        Some(Value::Object(m)) => {
            let bad: Vec<_> =
                m.keys().filter(|k| k.is_empty() || k.len() > 128 || k.chars().any(char::is_control)).collect();
            for k in &bad {
                errors.push(FieldError::invalid(
                    format!("{}.{k}", path()),
                    "property names must be 1 to 128 characters without control characters",
                ));
            }
            bad.is_empty().then_some(m)
        }
        Some(_) => {
            errors.push(FieldError::invalid(path(), "must be an object"));
            None
        }
    }
}

const TIME_HINT: &str = "must be Unix seconds (a number or a string of digits) or an RFC 3339 date-time";

/// Lago timestamps: Unix seconds as a number or string (fractions allowed), or RFC 3339.
fn lago_time(v: &Value) -> Result<(i64, bool), String> {
    let text = match v {
        Value::Number(n) => n.as_str(),
        Value::String(s) => s.as_str(),
        _ => return Err(TIME_HINT.into()),
    };
    if text.bytes().all(|b| b.is_ascii_digit() || b == b'.' || b == b'-') && !text.is_empty() {
        return match whole_seconds(text) {
            Some(secs) => secs.checked_mul(1_000_000).ok_or_else(|| "is out of range".to_string()),
            None => decimal_seconds_us(text),
        }
        .map(|us| (us, false));
    }
    if matches!(v, Value::String(_)) {
        return rfc3339(text).map(|t| (t, false)).map_err(|_| TIME_HINT.into());
    }
    Err(TIME_HINT.into())
}

/// Whole seconds written as at most 18 digits, with a minus or not (what clients send, and what
/// an `i64` holds whatever the digits): read without a decimal. Anything else is `None`.
fn whole_seconds(text: &str) -> Option<i64> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    if digits.is_empty() || digits.len() > 18 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Seconds of any form [`parse_decimal`] reads, as whole microseconds (truncated).
fn decimal_seconds_us(text: &str) -> Result<i64, String> {
    let secs: Decimal = parse_decimal(text).map_err(|_| TIME_HINT.to_string())?;
    secs.checked_mul(Decimal::from(1_000_000))
        .and_then(|d| d.trunc().to_i64())
        .ok_or_else(|| "is out of range".to_string())
}

fn rfc3339(s: &str) -> Result<i64, String> {
    let t =
        OffsetDateTime::parse(s, &Rfc3339).map_err(|_| "must be an RFC 3339 date-time, e.g. 2026-11-21T10:00:00Z")?;
    Ok((t.unix_timestamp_nanos() / 1000) as i64)
}

/// `path` writes out the field's path, for an error.
fn check_window(t: i64, path: impl Fn() -> String, cx: &Context<'_>, errors: &mut Vec<FieldError>) -> Option<i64> {
    if t > cx.now_us.saturating_add(cx.limits.max_future_us) {
        errors.push(FieldError::invalid(
            path(),
            format!("is more than {} in the future", human(cx.limits.max_future_us)),
        ));
        None
    } else if t < cx.now_us.saturating_sub(cx.limits.lateness_us) {
        errors.push(FieldError::invalid(
            path(),
            format!("is older than the lateness window of {}", human(cx.limits.lateness_us)),
        ));
        None
    } else {
        Some(t)
    }
}

/// `7 days`, `5 minutes`, `6 days 23 hours 59 minutes 40 seconds`.
fn human(us: i64) -> String {
    let s = us / 1_000_000;
    let parts: Vec<String> =
        [(s / 86_400, "day"), (s / 3600 % 24, "hour"), (s / 60 % 60, "minute"), (s % 60, "second")]
            .into_iter()
            .filter(|(n, _)| *n != 0)
            .map(|(n, unit)| format!("{n} {unit}{}", if n == 1 { "" } else { "s" }))
            .collect();
    if parts.is_empty() { "0 seconds".into() } else { parts.join(" ") }
}

/// The same `(tenant, id)` twice in one request with different content is a conflict.
/// Payloads are hashed only for an id that comes again: most requests repeat none.
fn conflicts_within(events: &[Event], paths: &[EventPath], errors: &mut Vec<FieldError>) {
    // (tenant, id) -> the first event with them, and its payload's hash once one came again.
    type First = (usize, Option<[u8; 32]>);
    let mut first: HashMap<(&str, &str), First> = HashMap::with_capacity(events.len());
    for (i, e) in events.iter().enumerate() {
        match first.entry((e.tenant.as_str(), e.id.as_str())) {
            Entry::Occupied(mut o) => {
                let (j, hash) = o.get_mut();
                if *hash.get_or_insert_with(|| events[*j].payload_hash()) != e.payload_hash() {
                    errors.push(FieldError::new(
                        ErrorKind::Conflict,
                        paths[i].id(),
                        format!("repeats the id of {} with a different payload", paths[*j].id()),
                    ));
                }
            }
            Entry::Vacant(v) => {
                v.insert((i, None));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_763_683_200_000_000; // 2025-11-21T00:00:00Z

    #[test]
    fn windows_read_as_words() {
        assert_eq!(human(7 * 86_400_000_000), "7 days");
        assert_eq!(human(300_000_000), "5 minutes");
        assert_eq!(human(90_000_000), "1 minute 30 seconds");
        // Kafka ingest's window: 7 days less twice a 10 s delivery timeout.
        assert_eq!(human(7 * 86_400_000_000 - 20_000_000), "6 days 23 hours 59 minutes 40 seconds");
    }

    fn run(format: Format, body: &str, scope: TenantScope) -> Result<Parsed, Refused> {
        let catalog = Catalog::new(vec![]).unwrap();
        let limits = Limits { max_events: 3, ..Limits::default() };
        parse(format, body.as_bytes(), &Context { limits: &limits, catalog: &catalog, scope: &scope, now_us: NOW })
    }

    fn errors(format: Format, body: &str) -> Vec<String> {
        run(format, body, TenantScope::Any).unwrap_err().errors.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn lago_single_with_unix_seconds_string() {
        let p = run(
            Format::Json,
            r#"{"event":{"transaction_id":"t1","external_customer_id":"acme","code":"user.login","timestamp":"1763683100","properties":{"user_id":"u1"}}}"#,
            TenantScope::Any,
        )
        .unwrap();
        assert_eq!(p.dialect, Dialect::Lago);
        assert_eq!(p.events[0].tenant, "acme");
        assert_eq!(p.events[0].time_us, 1_763_683_100_000_000);
        assert_eq!(p.paths.iter().map(EventPath::id).collect::<Vec<_>>(), vec!["event.transaction_id"]);
    }

    #[test]
    fn cloud_event_batch_with_tenant_key() {
        let body = r#"[{"specversion":"1.0","id":"a","source":"svc","type":"api.call","time":"2025-11-20T23:59:59.999Z","data":{"route":"/x","method":"GET","status":200}}]"#;
        let p = run(Format::CloudEventBatch, body, TenantScope::Only("acme".into())).unwrap();
        assert_eq!(p.events[0].tenant, "acme");
        assert_eq!(p.events[0].time_us, NOW - 1000);
        assert_eq!(p.dialect, Dialect::CloudEvents);
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let body = r#"{"events":[
            {"transaction_id":"ok","external_customer_id":"a","code":"work_order.created"},
            {"transaction_id":"","external_customer_id":"a","code":"nope"},
            {"transaction_id":"x","code":"agent.invocation","properties":{"model":"m","input_tokens":"NaN","output_tokens":1e400}}
        ]}"#;
        let e = errors(Format::LagoBatch, body);
        assert_eq!(e.len(), 5, "{e:#?}");
        assert_eq!(e[0], "events[1].transaction_id: must not be empty");
        assert!(e[1].starts_with("events[1].code: unknown event code \"nope\""));
        assert!(e[2].starts_with("events[2].external_subscription_id: is required"));
        assert_eq!(e[3], "events[2].properties.input_tokens: must be a finite decimal number");
        assert_eq!(
            e[4],
            "events[2].properties.output_tokens: is beyond the decimal range (at most 28 significant digits)"
        );
    }

    #[test]
    fn limits_and_windows() {
        let four = r#"{"events":[{},{},{},{}]}"#;
        let r = run(Format::LagoBatch, four, TenantScope::Any).unwrap_err();
        assert_eq!(r.errors[0].kind, ErrorKind::TooLarge);
        let future = r#"{"event":{"transaction_id":"f","external_customer_id":"a","code":"work_order.created","timestamp":4102444800}}"#;
        assert_eq!(errors(Format::Json, future), vec!["event.timestamp: is more than 5 minutes in the future"]);
        let old = r#"{"event":{"transaction_id":"f","external_customer_id":"a","code":"work_order.created","timestamp":"2020-01-01T00:00:00Z"}}"#;
        assert_eq!(errors(Format::Json, old), vec!["event.timestamp: is older than the lateness window of 7 days"]);
    }

    #[test]
    fn another_tenant_is_forbidden() {
        let body = r#"{"event":{"transaction_id":"x","external_customer_id":"other","code":"work_order.created"}}"#;
        let r = run(Format::Json, body, TenantScope::Only("acme".into())).unwrap_err();
        assert_eq!(r.errors[0].kind, ErrorKind::Forbidden);
        assert_eq!(r.errors[0].path, "event.external_customer_id");
    }

    #[test]
    fn same_id_twice_with_different_payload_conflicts() {
        let body = r#"{"events":[
            {"transaction_id":"d","external_customer_id":"a","code":"work_order.created","timestamp":1763683000},
            {"transaction_id":"d","external_customer_id":"a","code":"work_order.completed","timestamp":1763683000}]}"#;
        let r = run(Format::LagoBatch, body, TenantScope::Any).unwrap_err();
        assert_eq!(r.errors[0].kind, ErrorKind::Conflict);
        assert_eq!(
            r.errors[0].to_string(),
            "events[1].transaction_id: repeats the id of events[0].transaction_id with a different payload"
        );
    }

    #[test]
    fn ndjson_mixes_envelopes_and_reports_bad_lines() {
        let body = "{\"transaction_id\":\"1\",\"external_customer_id\":\"a\",\"code\":\"work_order.created\"}\n\n{\"specversion\":\"1.0\",\"id\":\"2\",\"source\":\"s\",\"type\":\"work_order.created\",\"subject\":\"a\"}\n";
        assert_eq!(run(Format::Ndjson, body, TenantScope::Any).unwrap().events.len(), 2);
        let e = errors(Format::Ndjson, "{\"a\":\n");
        assert!(e[0].starts_with("lines[0]: malformed JSON"));
    }

    proptest::proptest! {
        /// The stable-toolchain twin of `fuzz/fuzz_targets/parse.rs`: no input panics the parser,
        /// and accepted events survive the log encoding.
        #[test]
        fn hostile_bodies_never_panic(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512),
                                      json in "[\\[\\]{}\",:a-z0-9.eE+-]{0,200}") {
            for bytes in [body.as_slice(), json.as_bytes()] {
                for format in [Format::Json, Format::LagoBatch, Format::CloudEvent, Format::CloudEventBatch, Format::Ndjson] {
                    if let Ok(p) = run(format, std::str::from_utf8(bytes).unwrap_or("\u{fffd}"), TenantScope::Any) {
                        for e in p.events {
                            proptest::prop_assert_eq!(Event::decode(&e.encode()).unwrap(), e);
                        }
                    }
                }
            }
        }

        /// Whole seconds read without a decimal give what the decimal reading gives, the error
        /// words included, over texts of digits, minus signs and points (the edges have a test of
        /// their own below): as a JSON number and as a string.
        #[test]
        fn whole_seconds_read_as_the_decimal_reading(
            text in "-{0,2}[0-9]{0,22}|-?0*[0-9]{17,20}|[0-9.-]{0,24}",
        ) {
            let decimal = |t: &str| {
                if t.is_empty() { Err(TIME_HINT.to_string()) } else { decimal_seconds_us(t).map(|us| (us, false)) }
            };
            proptest::prop_assert_eq!(lago_time(&Value::String(text.clone())), decimal(&text));
            if let Ok(n) = serde_json::from_str::<serde_json::Number>(&text) {
                proptest::prop_assert_eq!(lago_time(&Value::Number(n)), decimal(&text));
            }
        }

        /// Structured near-valid events: every field drawn from good and bad values.
        #[test]
        fn near_valid_events_are_accepted_or_refused_with_paths(
            id in proptest::option::of("[ -~]{0,130}"),
            tokens in proptest::option::of("-?[0-9]{0,31}(\\.[0-9]{0,12})?(e[0-9]{1,3})?"),
            ts in proptest::option::of(0i64..4_000_000_000),
        ) {
            let mut ev = serde_json::json!({"external_customer_id": "acme", "code": "agent.invocation",
                "properties": {"model": "m", "output_tokens": 1}});
            if let Some(id) = id { ev["transaction_id"] = id.into(); }
            if let Some(t) = tokens { ev["properties"]["input_tokens"] = t.into(); }
            if let Some(ts) = ts { ev["timestamp"] = ts.into(); }
            let body = serde_json::json!({"event": ev}).to_string();
            match run(Format::Json, &body, TenantScope::Any) {
                Ok(p) => proptest::prop_assert_eq!(p.events.len(), 1),
                Err(r) => {
                    proptest::prop_assert!(!r.errors.is_empty());
                    for e in &r.errors {
                        proptest::prop_assert!(e.path.starts_with("event."), "{}", e);
                    }
                }
            }
        }
    }

    /// The edges of reading whole seconds without a decimal: signs, zeros, and the largest
    /// number of seconds whose microseconds an `i64` holds, either side.
    #[test]
    fn whole_seconds_at_their_edges_read_as_the_decimal_reading() {
        let nines = "9".repeat(18);
        let mut texts = vec!["0", "-0", "-000", "007", "-", "--1", "1-", "-1", "9223372036854", "9223372036855"];
        texts.extend(["-9223372036854", "-9223372036855", "-9223372036856", &nines, "1000000000000000000"]);
        for text in texts {
            let decimal = decimal_seconds_us(text).map(|us| (us, false));
            assert_eq!(lago_time(&Value::String(text.into())), decimal, "{text:?} as a string");
            if let Ok(n) = serde_json::from_str::<serde_json::Number>(text) {
                assert_eq!(lago_time(&Value::Number(n)), decimal, "{text} as a number");
            }
        }
        assert_eq!(lago_time(&Value::String("9223372036854".into())), Ok((9_223_372_036_854_000_000, false)));
        assert_eq!(lago_time(&Value::String("9223372036855".into())), Err("is out of range".into()));
    }

    /// `parse` on the tree path only, for comparing with the typed one.
    fn run_as_tree(format: Format, body: &str) -> Result<Parsed, Refused> {
        let catalog = Catalog::new(vec![]).unwrap();
        let limits = Limits { max_events: 3, ..Limits::default() };
        let cx = Context { limits: &limits, catalog: &catalog, scope: &TenantScope::Any, now_us: NOW };
        parse_with(format, body.as_bytes(), &cx, false)
    }

    /// One field of a generated Lago event, as JSON text: good values, bad ones and `null`.
    fn lago_value(field: &str, pick: usize) -> String {
        let choices: &[&str] = match field {
            "transaction_id" | "external_customer_id" | "external_subscription_id" => {
                &[r#""t-1""#, r#""acme""#, r#""""#, "7", "null", r#""a b""#, "[]"]
            }
            "code" => &[r#""agent.invocation""#, r#""user.login""#, r#""nope""#, "1", "null", r#""a b""#],
            "timestamp" => &[
                "1763683100",
                r#""1763683100.5""#,
                r#""2025-11-20T23:00:00Z""#,
                "4102444800",
                "1.5e9",
                "true",
                "null",
                r#""soon""#,
                "-1",
            ],
            "properties" => &[
                r#"{"model":"m","input_tokens":10,"output_tokens":"2.5","user_id":"u"}"#,
                r#"{"model":"m","input_tokens":"NaN","output_tokens":1e400}"#,
                "{}",
                "null",
                "[1]",
                r#"{"":1}"#,
                // Read back from a tree, an object whose first key (in key order) is this is a number.
                r#"{"a":1,"$serde_json::private::Number":0}"#,
            ],
            // A lone surrogate, and deeper than serde_json's limit: malformed however the body is read.
            "precise_total_amount_cents" if pick % 5 == 4 => return format!("{}{}", "[".repeat(200), "]".repeat(200)),
            "precise_total_amount_cents" => &["\"12.5\"", "null", "{}", r#""\udc00""#],
            _ => &["1", "null"],
        };
        choices[pick % choices.len()].to_string()
    }

    proptest::proptest! {
        /// Reading a Lago body straight into its fields gives what reading it as a tree gives,
        /// events and errors alike, over generated bodies: unknown and repeated fields, events
        /// that are not objects, other top-level keys, too many events, malformed or too deep
        /// values in the field that is not kept, serde_json's number token as a key. (Both
        /// readings share [`lago_fields`]; what it checks has tests of its own above.)
        #[test]
        fn lago_bodies_read_typed_as_read_as_trees(
            events in proptest::collection::vec(
                proptest::collection::vec((0usize..9, 0usize..12), 0..9), 0..5),
            shape in 0usize..8,
        ) {
            const NAMES: [&str; 9] = ["transaction_id", "external_customer_id", "external_subscription_id",
                "code", "timestamp", "properties", "precise_total_amount_cents", "extra", "transaction_id"];
            let texts: Vec<String> = events.iter().map(|fields| {
                let body: Vec<String> =
                    fields.iter().map(|&(f, v)| format!("\"{}\":{}", NAMES[f], lago_value(NAMES[f], v))).collect();
                match shape {
                    6 => format!("[{}]", fields.iter().map(|&(f, v)| lago_value(NAMES[f], v)).collect::<Vec<_>>().join(",")),
                    7 if fields.is_empty() => "null".into(),
                    _ => format!("{{{}}}", body.join(",")),
                }
            }).collect();
            let first = texts.first().cloned().unwrap_or_else(|| "{}".into());
            let bodies = [
                (Format::LagoBatch, format!("{{\"events\":[{}]}}", texts.join(","))),
                (Format::LagoBatch, format!("{{\"events\":[{}],\"more\":1}}", texts.join(","))),
                (Format::LagoBatch, format!("[[{}]]", texts.join(","))),
                (Format::Json, format!("{{\"event\":{first}}}")),
                (Format::Json, format!("{{\"event\":{first},\"specversion\":\"1.0\"}}")),
                (Format::Json, format!("{{\"event\":{first},\"event\":{first}}}")),
            ];
            for (format, body) in &bodies {
                let typed = format!("{:?}", run(*format, body, TenantScope::Any));
                let tree = format!("{:?}", run_as_tree(*format, body));
                proptest::prop_assert_eq!(typed, tree, "{}", body);
            }
        }
    }

    #[test]
    fn a_well_formed_lago_body_is_read_typed_and_an_array_of_fields_is_not() {
        let event = r#"{"transaction_id":"t","external_customer_id":"a","code":"user.login","timestamp":1763683100,"properties":{"user_id":"u"}}"#;
        let batch = format!(r#"{{"events":[{event},{event}]}}"#);
        assert!(serde_json::from_slice::<ObjectOnly<LagoBatchBody>>(batch.as_bytes()).is_ok());
        assert!(
            serde_json::from_slice::<ObjectOnly<LagoOneBody>>(format!(r#"{{"event":{event}}}"#).as_bytes()).is_ok()
        );
        // serde's derived structs take `[...]` for their fields in order; an envelope does not.
        let list = r#"["t","a",null,"user.login",1763683100,{},null]"#;
        assert!(serde_json::from_str::<LagoFields>(list).is_ok());
        assert!(serde_json::from_str::<ObjectOnly<LagoFields>>(list).is_err());
        let fields = format!(r#"{{"events":[{list}]}}"#);
        assert!(serde_json::from_slice::<ObjectOnly<LagoBatchBody>>(fields.as_bytes()).is_err());
        assert_eq!(errors(Format::LagoBatch, &fields), vec!["events[0]: must be an object"]);
    }

    #[test]
    fn the_typed_fields_are_lagos_fields() {
        // serde names every field it expects when it meets another.
        let err = serde_json::from_str::<LagoFields>(r#"{"unknown":1}"#).err().unwrap().to_string();
        let expected: Vec<String> = LAGO_FIELDS.iter().map(|f| format!("`{f}`")).collect();
        assert!(err.contains(&format!("expected one of {} at line", expected.join(", "))), "{err}");
    }

    /// Each envelope's events, their ids', times' and own paths, for errors found after parsing.
    #[test]
    fn every_envelope_names_its_events_ids_and_times() {
        let lago =
            r#"{"transaction_id":"t","external_customer_id":"a","code":"user.login","properties":{"user_id":"u"}}"#;
        let cloud =
            r#"{"specversion":"1.0","id":"c","source":"s","type":"user.login","subject":"a","data":{"user_id":"u"}}"#;
        let cases = [
            (
                Format::LagoBatch,
                format!(r#"{{"events":[{lago},{lago}]}}"#),
                1,
                ["events[1].transaction_id", "events[1].timestamp", "events[1]"],
            ),
            (Format::Json, format!(r#"{{"event":{lago}}}"#), 0, ["event.transaction_id", "event.timestamp", "event"]),
            (Format::Json, cloud.to_string(), 0, ["id", "time", "event"]),
            (Format::CloudEvent, cloud.to_string(), 0, ["id", "time", "event"]),
            (Format::CloudEventBatch, format!("[{cloud}]"), 0, ["[0].id", "[0].time", "[0]"]),
            (
                Format::Ndjson,
                format!("{cloud}\n\n\n{lago}\n"),
                1,
                ["lines[3].transaction_id", "lines[3].timestamp", "lines[3]"],
            ),
            (Format::Ndjson, format!("{cloud}\n"), 0, ["lines[0].id", "lines[0].time", "lines[0]"]),
        ];
        for (format, body, i, [id, time, event]) in cases {
            let p = run(format, &body, TenantScope::Any).unwrap();
            let path = p.paths[i];
            assert_eq!([path.id(), path.time(), path.event()], [id, time, event], "{body}");
        }
    }

    #[test]
    fn ids_with_bad_characters_are_refused() {
        assert!(check_id(&"x".repeat(128)).is_ok());
        assert_eq!(check_id(&"x".repeat(129)).unwrap_err(), "must be at most 128 characters (got 129)");
        assert_eq!(check_id("a\u{0}b").unwrap_err(), "must not contain control characters");
        assert!(check_id("a b").is_err());
        assert!(check_id("é").is_err());
        // Length is in characters, and said before the characters themselves.
        assert_eq!(
            check_id(&"é".repeat(128)).unwrap_err(),
            "may contain only printable ASCII characters, without spaces"
        );
        assert_eq!(check_id(&"é".repeat(129)).unwrap_err(), "must be at most 128 characters (got 129)");
        assert_eq!(check_id(&format!("{} ", "x".repeat(128))).unwrap_err(), "must be at most 128 characters (got 129)");
        assert!(check_id("~!").is_ok());
    }
}
