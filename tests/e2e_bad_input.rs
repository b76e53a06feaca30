//! End to end: bad inputs are refused with the right status and a message naming the field, and
//! nothing is stored or counted because of them.

mod common;

use common::*;
use serde_json::{Value, json};

/// Which key a case sends.
#[derive(Clone, Copy, Debug)]
enum Key {
    Admin,
    Service,
    Tenant,
    Read,
    Wrong,
    None,
    Raw(&'static str),
}

struct Case {
    name: &'static str,
    method: &'static str,
    path: String,
    content_type: &'static str,
    key: Key,
    body: String,
    status: u16,
    /// Expected field path and a fragment of its message; empty path: only the status is checked.
    field: (&'static str, &'static str),
}

fn lago(event: Value) -> String {
    json!({ "event": event }).to_string()
}

fn ev(over: Value) -> Value {
    let mut base = json!({"transaction_id": "bad-1", "external_customer_id": "acme", "code": "agent.invocation",
        "properties": {"model": "m", "input_tokens": 1, "output_tokens": 1}});
    for (k, v) in over.as_object().unwrap() {
        if let (true, Some(props)) = (k == "properties", v.as_object()) {
            for (pk, pv) in props {
                base["properties"][pk] = pv.clone();
            }
        } else if v.is_null() {
            base.as_object_mut().unwrap().remove(k);
        } else {
            base[k] = v.clone();
        }
    }
    base
}

fn case(name: &'static str, body: String, status: u16, field: (&'static str, &'static str)) -> Case {
    Case {
        name,
        method: "POST",
        path: "/api/v1/events".into(),
        content_type: "application/json",
        key: Key::Service,
        body,
        status,
        field,
    }
}

fn cases(now_s: i64) -> Vec<Case> {
    let ce = |over: Value| {
        let mut e = json!({"specversion": "1.0", "id": "ce-bad", "source": "t", "type": "user.login", "subject": "acme",
            "data": {"user_id": "u"}});
        for (k, v) in over.as_object().unwrap() {
            if v.is_null() {
                e.as_object_mut().unwrap().remove(k);
            } else {
                e[k] = v.clone();
            }
        }
        e.to_string()
    };
    let mut c = vec![
        case("malformed JSON", "{\"event\": {".into(), 400, ("body", "malformed JSON")),
        case("NaN literal is not JSON", r#"{"event":{"transaction_id":"n","external_customer_id":"acme","code":"agent.invocation","properties":{"model":"m","input_tokens":NaN,"output_tokens":1}}}"#.into(), 400, ("body", "malformed JSON")),
        case("id of the wrong type", lago(ev(json!({"transaction_id": 42}))), 422, ("event.transaction_id", "must be a string")),
        case("unknown code", lago(ev(json!({"code": "coffee.brewed"}))), 422, ("event.code", "unknown event code")),
        case("missing tenant with a service key", lago(ev(json!({"external_customer_id": null}))), 422, ("event.external_subscription_id", "must name the tenant")),
        case("negative tokens", lago(ev(json!({"properties": {"input_tokens": -5}}))), 422, ("event.properties.input_tokens", "non-negative integer")),
        case("fractional tokens", lago(ev(json!({"properties": {"output_tokens": 1.5}}))), 422, ("event.properties.output_tokens", "non-negative integer")),
        case("NaN string", lago(ev(json!({"properties": {"input_tokens": "NaN"}}))), 422, ("event.properties.input_tokens", "finite")),
        case("1e400", lago(ev(json!({"properties": {"input_tokens": "1e400"}}))), 422, ("event.properties.input_tokens", "beyond the decimal range")),
        case("30-digit quantity", r#"{"event":{"transaction_id":"d30","external_customer_id":"acme","code":"agent.invocation","properties":{"model":"m","input_tokens":123456789012345678901234567890,"output_tokens":1}}}"#.into(), 422, ("event.properties.input_tokens", "beyond the decimal range")),
        case("quantity over 10^18", lago(ev(json!({"properties": {"input_tokens": "2000000000000000000"}}))), 422, ("event.properties.input_tokens", "at most")),
        case("far-future timestamp", lago(ev(json!({"timestamp": now_s + 3600}))), 422, ("event.timestamp", "in the future")),
        case("ancient timestamp", lago(ev(json!({"timestamp": "1999-12-31T23:59:59Z"}))), 422, ("event.timestamp", "older than the lateness window")),
        case("timestamp that is not a date", lago(ev(json!({"timestamp": "yesterday"}))), 422, ("event.timestamp", "RFC 3339")),
        case("129-character id", lago(ev(json!({"transaction_id": "x".repeat(129)}))), 422, ("event.transaction_id", "at most 128 characters (got 129)")),
        case("control character in id", lago(ev(json!({"transaction_id": "a\u{1}b"}))), 422, ("event.transaction_id", "control characters")),
        case("space in tenant", lago(ev(json!({"external_customer_id": "acme corp"}))), 422, ("event.external_customer_id", "printable ASCII")),
        case("empty id", lago(ev(json!({"transaction_id": ""}))), 422, ("event.transaction_id", "must not be empty")),
        case("properties not an object", lago(ev(json!({"code": "work_order.created", "properties": [1, 2]}))), 422, ("event.properties", "must be an object")),
        case("missing required property", lago(ev(json!({"code": "user.login", "properties": {}}))), 422, ("event.properties.user_id", "is required")),
        case("HTTP status out of range", lago(ev(json!({"code": "api.call", "properties": {"route": "/", "method": "GET", "status": 700}}))), 422, ("event.properties.status", "100 to 599")),
        case("unknown field in a Lago event", lago(ev(json!({"colour": "red"}))), 422, ("event.colour", "unknown field")),
        case("unknown top-level field", json!({"event": ev(json!({})), "extra": 1}).to_string(), 422, ("extra", "unknown field")),
        case("CloudEvent without specversion", ce(json!({"specversion": null})), 422, ("specversion", "is required")),
        case("CloudEvent with a bad time", ce(json!({"time": "21/11/2026"})), 422, ("time", "RFC 3339")),
        case("CloudEvent without source", ce(json!({"source": null})), 422, ("source", "is required")),
    ];
    for x in c.iter_mut().rev().take(3) {
        x.content_type = "application/cloudevents+json";
    }
    c.extend([
        Case { key: Key::Tenant, ..case("another tenant's id with a tenant key", lago(ev(json!({"external_customer_id": "globex"}))), 403, ("event.external_customer_id", "another tenant")) },
        Case { key: Key::Tenant, content_type: "application/cloudevents+json", ..case("another tenant as CloudEvent subject", ce(json!({"subject": "globex"})), 403, ("subject", "another tenant")) },
        Case { key: Key::Wrong, ..case("unknown key", lago(ev(json!({}))), 401, ("", "")) },
        Case { key: Key::None, ..case("missing key", lago(ev(json!({}))), 401, ("", "")) },
        Case { key: Key::Raw("Token abc"), ..case("malformed Authorization header", lago(ev(json!({}))), 401, ("", "")) },
        Case { key: Key::Read, ..case("read key used to send events", lago(ev(json!({}))), 403, ("authorization", "may not send events")) },
        Case { content_type: "text/plain", ..case("unsupported content type", lago(ev(json!({}))), 415, ("content-type", "not accepted")) },
        case("oversized body", lago(ev(json!({"properties": {"blob": "x".repeat(70_000)}}))), 413, ("body", "larger than the limit")),
        Case { path: "/api/v1/events/batch".into(), ..case("too many events", json!({"events": (0..51).map(|i| ev(json!({"transaction_id": format!("m{i}")}))).collect::<Vec<_>>()}).to_string(), 413, ("events", "at most 50")) },
        Case { path: "/api/v1/events/batch".into(), ..case("empty batch", json!({"events": []}).to_string(), 422, ("events", "at least one event")) },
        Case { path: "/api/v1/events/batch".into(), ..case("events not an array", json!({"events": {"a": 1}}).to_string(), 422, ("events", "must be an array")) },
        Case { path: "/api/v1/events/batch".into(), ..case("one bad event refuses the batch", json!({"events": [ev(json!({"transaction_id": "ok-1"})), ev(json!({"transaction_id": "ok-2", "properties": {"input_tokens": -1}})), ev(json!({"transaction_id": "ok-3"}))]}).to_string(), 422, ("events[1].properties.input_tokens", "non-negative")) },
        Case { path: "/api/v1/events/batch".into(), ..case("same id twice in a batch, different payloads", json!({"events": [ev(json!({"transaction_id": "twin"})), ev(json!({"transaction_id": "twin", "properties": {"input_tokens": 2}}))]}).to_string(), 409, ("events[1].transaction_id", "different payload")) },
        case("duplicate id with a different payload", lago(ev(json!({"transaction_id": "seed", "properties": {"input_tokens": 999}}))), 409, ("event.transaction_id", "already used with a different payload")),
        Case { content_type: "application/x-ndjson", ..case("NDJSON with a malformed line", format!("{}\n{{nope\n", ev(json!({"transaction_id": "nd-1"}))), 400, ("lines[1]", "malformed JSON")) },
        Case { method: "GET", path: "/api/v1/usage?tenant=acme&period=2026-13".into(), key: Key::Read, ..case("usage with a bad period", String::new(), 422, ("period", "YYYY-MM")) },
        Case { method: "GET", path: "/api/v1/usage?tenant=acme&period=9999-12".into(), key: Key::Read, ..case("usage in a period past the calendar", String::new(), 422, ("period", "9998-12")) },
        Case { method: "POST", path: "/api/v1/stripe/webhook".into(), key: Key::None, ..case("a Stripe event where no webhook secret is set", r#"{"id":"evt_1"}"#.into(), 404, ("", "")) },
        Case { method: "GET", path: "/api/v1/sync/operations?state=lost".into(), key: Key::Admin, ..case("sync operations in an unknown state", String::new(), 422, ("state", "pending, done or dead")) },
        Case { method: "POST", path: "/api/v1/sync/operations/999999/retry".into(), key: Key::Admin, ..case("retrying a sync operation that is not dead", String::new(), 404, ("", "")) },
        Case { method: "GET", path: "/api/v1/periods/2026-13/sync".into(), key: Key::Admin, ..case("the sync of a month that does not exist", String::new(), 422, ("period", "")) },
        Case { method: "GET", path: "/api/v1/sync/operations".into(), key: Key::Read, ..case("sync operations with a read key", String::new(), 403, ("authorization", "may not manage the payment sync")) },
        Case { method: "POST", path: "/api/v1/checkout/sessions".into(), key: Key::Admin, ..case("a Checkout page with no payment provider", json!({"tenant": "newco", "plan": "starter", "cycle": "monthly", "success_url": "https://x.example/", "cancel_url": "https://x.example/"}).to_string(), 409, ("", "")) },
        Case { method: "POST", path: "/api/v1/checkout/sessions".into(), key: Key::Admin, ..case("a Checkout page for an unknown plan", json!({"tenant": "newco", "plan": "platinum", "cycle": "monthly", "success_url": "https://x.example/", "cancel_url": "https://x.example/"}).to_string(), 422, ("plan", "unknown plan")) },
        Case { method: "POST", path: "/api/v1/checkout/sessions".into(), key: Key::Admin, ..case("a Checkout page with an unknown field", json!({"tenant": "newco", "plan": "starter", "cycle": "monthly", "coupon": "x"}).to_string(), 422, ("body", "coupon")) },
        Case { method: "POST", path: "/api/v1/checkout/sessions".into(), key: Key::Read, ..case("a Checkout page with a read key", json!({"tenant": "acme", "plan": "starter", "cycle": "monthly"}).to_string(), 403, ("authorization", "")) },
        Case { method: "POST", path: "/api/v1/portal/sessions".into(), key: Key::Admin, ..case("a portal session lasting two days", json!({"tenant": "acme", "ttl": "2d"}).to_string(), 422, ("ttl", "between 1 minute and 24 hours")) },
        Case { method: "POST", path: "/api/v1/portal/sessions".into(), key: Key::Admin, ..case("a portal session with a ttl that is no duration", json!({"tenant": "acme", "ttl": "soon"}).to_string(), 422, ("ttl", "not a duration")) },
        Case { method: "POST", path: "/api/v1/portal/sessions".into(), key: Key::Read, ..case("a portal session for another tenant", json!({"tenant": "globex"}).to_string(), 403, ("tenant", "")) },
        Case { method: "POST", path: "/api/v1/portal/sessions".into(), key: Key::Admin, ..case("a portal session with malformed JSON", "{nope".into(), 422, ("body", "")) },
        Case { method: "POST", path: "/api/v1/console/sessions".into(), key: Key::Read, ..case("a console session with a read key", "{}".into(), 403, ("authorization", "console")) },
        Case { method: "POST", path: "/api/v1/sessions/exchange".into(), key: Key::None, ..case("a session link's token that was never given", json!({"token": "mtl_forged"}).to_string(), 401, ("", "")) },
        Case { method: "POST", path: "/api/v1/billing-portal/sessions".into(), key: Key::Admin, ..case("a portal page with no payment provider", json!({"tenant": "acme", "return_url": "https://x.example/"}).to_string(), 409, ("", "")) },
        Case { method: "GET", path: "/api/v1/nothing-here".into(), key: Key::Read, ..case("unknown endpoint", String::new(), 404, ("", "")) },
        case("quantity with 10 decimal places", lago(ev(json!({"code": "agent.invocation", "properties": {"input_tokens": "0.0000000001"}}))), 422, ("event.properties.input_tokens", "non-negative integer")),
        Case { method: "GET", path: "/api/v1/usage?tenant=globex".into(), key: Key::Read, ..case("usage of another tenant", String::new(), 403, ("tenant", "not the tenant")) },
        Case { method: "GET", path: "/api/v1/periods/2026-01/invoices/search?limit=0".into(), key: Key::Admin, ..case("an invoice search of no rows", String::new(), 422, ("limit", "from 1 to 500")) },
        Case { method: "GET", path: format!("/api/v1/periods/2026-01/invoices/search?q={}", "a".repeat(129)), key: Key::Admin, ..case("an invoice search for too long a text", String::new(), 422, ("q", "at most 128 characters")) },
        Case { method: "GET", path: "/api/v1/periods/2026-01/invoices/search?tenant=no%20such".into(), key: Key::Admin, ..case("an invoice search for a malformed tenant", String::new(), 422, ("tenant", "")) },
        Case { method: "GET", path: "/api/v1/periods/2026-01/invoices/search?q=acme".into(), key: Key::Admin, ..case("an invoice search of a month not closed", String::new(), 404, ("", "not closed")) },
        Case { method: "GET", path: "/api/v1/periods/2026-01/invoices/search?q=acme".into(), key: Key::Read, ..case("an invoice search with a read key", String::new(), 403, ("authorization", "may not export")) },
        Case { method: "GET", path: "/api/v1/usage/breakdown?tenant=acme&top=0".into(), key: Key::Read, ..case("a breakdown of no values", String::new(), 422, ("top", "from 1 to 100")) },
        Case { method: "GET", path: "/api/v1/usage/breakdown?tenant=globex".into(), key: Key::Read, ..case("another tenant's breakdown", String::new(), 403, ("tenant", "not the tenant")) },
        Case { method: "GET", path: "/api/v1/usage?tenant=acme".into(), key: Key::Service, ..case("usage with an ingest key", String::new(), 403, ("authorization", "may not read usage")) },
        Case { method: "GET", path: "/api/v1/usage?tenant=acme".into(), key: Key::Wrong, ..case("usage with an unknown key", String::new(), 401, ("", "")) },
    ]);
    c
}

/// `(path, message)` pairs from either error style.
fn field_errors(body: &Value) -> Vec<(String, String)> {
    if let Some(details) = body["error_details"].as_object() {
        return details
            .iter()
            .flat_map(|(p, msgs)| {
                msgs.as_array().unwrap().iter().map(move |m| (p.clone(), m.as_str().unwrap().to_string()))
            })
            .collect();
    }
    body["extensions"]["validationErrors"]
        .as_array()
        .map(|a| {
            a.iter().map(|e| (e["path"].as_str().unwrap().into(), e["message"].as_str().unwrap().into())).collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_are_refused_clearly_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let service = create_key(dir.path(), "ingest", None);
    let tenant = create_key(dir.path(), "ingest", Some("acme"));
    let read = create_key(dir.path(), "read", Some("acme"));
    let admin = create_key(dir.path(), "admin", None);
    let meter = Meter::start(
        dir.path(),
        &[("METER__INGEST__MAX_BODY_BYTES", "65536"), ("METER__INGEST__MAX_EVENTS_PER_REQUEST", "50")],
    );
    let c = client();
    let seed = lago(ev(json!({"transaction_id": "seed"})));
    let r = c
        .post(format!("{}/api/v1/events", meter.url))
        .bearer_auth(&service)
        .header("content-type", "application/json")
        .body(seed)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let before = wait_counted(&meter.url, &admin, "acme", now_us()).await;
    let before_globex = wait_counted(&meter.url, &admin, "globex", now_us()).await;

    let cases = cases(now_us() / 1_000_000);
    assert!(cases.len() >= 30, "the table has {} cases", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let url = format!("{}{}", meter.url, case.path);
        let mut req = if case.method == "GET" { c.get(&url) } else { c.post(&url).body(case.body.clone()) };
        req = req.header("content-type", case.content_type);
        req = match case.key {
            Key::Admin => req.bearer_auth(&admin),
            Key::Service => req.bearer_auth(&service),
            Key::Tenant => req.bearer_auth(&tenant),
            Key::Read => req.bearer_auth(&read),
            Key::Wrong => req.bearer_auth("mtr_this-key-does-not-exist-AAAAAAAAAAAAAAAAAAAAAA"),
            Key::None => req,
            Key::Raw(h) => req.header("authorization", h),
        };
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if status != case.status {
            failures.push(format!("{}: status {status}, expected {}: {text}", case.name, case.status));
            continue;
        }
        let (path, fragment) = case.field;
        if !path.is_empty() {
            let errors = field_errors(&body);
            if !errors.iter().any(|(p, m)| p == path && m.contains(fragment)) {
                failures.push(format!("{}: no error at {path} containing {fragment:?}: {text}", case.name));
            }
        }
        if status == 401 && body.is_null() {
            failures.push(format!("{}: 401 without a JSON body", case.name));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), cases.len(), failures.join("\n"));

    let after = wait_counted(&meter.url, &admin, "acme", now_us()).await;
    assert_eq!(values(&after), values(&before), "bad inputs changed acme's usage");
    assert_eq!(values(&after)["agent_invocations"], "1");
    let after_globex = wait_counted(&meter.url, &admin, "globex", now_us()).await;
    assert_eq!(values(&after_globex), values(&before_globex));
}
