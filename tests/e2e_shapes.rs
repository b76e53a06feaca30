//! End to end: a real `meter serve` takes events in every accepted shape and meters them exactly;
//! sending them all again changes nothing.

mod common;

use common::*;
use serde_json::{Value, json};

struct Send {
    path: &'static str,
    content_type: &'static str,
    body: String,
    key: &'static str,
}

fn sends(now_s: i64) -> Vec<Send> {
    let t = time::OffsetDateTime::from_unix_timestamp(now_s).unwrap();
    let rfc = t.format(&time::format_description::well_known::Rfc3339).unwrap();
    let ce = |id: &str, ty: &str, data: Value| json!({"specversion": "1.0", "id": id, "source": "tests", "type": ty, "subject": "acme", "time": rfc, "data": data});
    vec![
        Send {
            path: "/api/v1/events",
            content_type: "application/json",
            key: "service",
            body: json!({"event": {"transaction_id": "w1", "external_customer_id": "acme", "code": "work_order.created", "timestamp": now_s}}).to_string(),
        },
        Send {
            path: "/api/v1/events/batch",
            content_type: "application/json",
            key: "service",
            body: json!({"events": [
                {"transaction_id": "w2", "external_customer_id": "acme", "code": "work_order.created", "timestamp": now_s.to_string()},
                {"transaction_id": "c1", "external_customer_id": "acme", "code": "work_order.completed", "timestamp": rfc},
                {"transaction_id": "a1", "external_customer_id": "acme", "code": "agent.invocation", "timestamp": now_s,
                 "properties": {"model": "m", "input_tokens": 100, "output_tokens": "20"}},
                {"transaction_id": "l1", "external_subscription_id": "acme", "code": "user.login", "timestamp": now_s, "properties": {"user_id": "u1"}},
                {"transaction_id": "w1", "external_customer_id": "other", "code": "work_order.created", "timestamp": now_s},
            ]})
            .to_string(),
        },
        Send {
            path: "/api/v1/events",
            content_type: "application/cloudevents+json",
            key: "service",
            body: ce("a2", "agent.invocation", json!({"model": "m", "input_tokens": 5, "output_tokens": 5})).to_string(),
        },
        Send {
            path: "/api/v1/events",
            content_type: "application/cloudevents-batch+json",
            key: "service",
            body: json!([
                ce("p1", "api.call", json!({"route": "/a", "method": "GET", "status": 200})),
                ce("p2", "api.call", json!({"route": "/b", "method": "POST", "status": 503})),
                ce("l2", "user.login", json!({"user_id": "u2"})),
            ])
            .to_string(),
        },
        Send {
            path: "/api/v1/events",
            content_type: "application/json",
            key: "service",
            body: json!([ce("l3", "user.login", json!({"user_id": "u1"}))]).to_string(),
        },
        Send {
            path: "/api/v1/events",
            content_type: "application/x-ndjson",
            key: "tenant",
            body: format!(
                "{}\n{}\n",
                json!({"transaction_id": "c2", "code": "work_order.completed", "timestamp": now_s}),
                json!({"specversion": "1.0", "id": "p3", "source": "s", "type": "api.call", "time": rfc,
                       "data": {"route": "/c", "method": "GET", "status": 404}})
            ),
        },
    ]
}

async fn post(url: &str, s: &Send, keys: &(String, String)) -> reqwest::Response {
    let key = if s.key == "service" { &keys.0 } else { &keys.1 };
    client()
        .post(format!("{url}{}", s.path))
        .bearer_auth(key)
        .header("content-type", s.content_type)
        .body(s.body.clone())
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_shape_is_metered_and_resending_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let admin = create_key(dir.path(), "admin", None);
    let keys = (create_key(dir.path(), "ingest", None), create_key(dir.path(), "ingest", Some("acme")));
    let reader = create_key(dir.path(), "read", Some("acme"));
    let meter = Meter::start(dir.path(), &[]);
    let now_s = now_us() / 1_000_000 - 60;

    for s in sends(now_s) {
        let r = post(&meter.url, &s, &keys).await;
        let status = r.status().as_u16();
        let body = r.text().await.unwrap();
        match s.content_type {
            "application/cloudevents+json" | "application/cloudevents-batch+json" => {
                assert_eq!(status, 204, "{body}")
            }
            "application/json" if s.body.starts_with('[') => assert_eq!(status, 204, "{body}"),
            _ => assert_eq!(status, 200, "{body}"),
        }
        if s.path.ends_with("/batch") {
            let v: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(v["events"].as_array().unwrap().len(), 5);
            assert_eq!(v["events"][0]["duplicate"], false);
            assert!(v["events"][0]["lago_id"].as_str().unwrap().len() == 36);
        }
    }
    let acked = now_us();
    let expected = json!({
        "work_orders": "2", "work_orders_completed": "2", "agent_invocations": "2",
        "agent_tokens": "130", "api_calls": "3", "active_users": "2",
    });
    let u = wait_counted(&meter.url, &reader, "acme", acked).await;
    assert_eq!(serde_json::to_value(values(&u)).unwrap(), expected, "{u}");
    let tokens = u["meters"].as_array().unwrap().iter().find(|m| m["name"] == "agent_tokens").unwrap();
    let today = tokens["daily"].as_array().unwrap().iter().find(|d| d["value"] != "0").unwrap();
    assert_eq!(today["value"], "130");
    let other = wait_counted(&meter.url, &admin, "other", acked).await;
    assert_eq!(values(&other)["work_orders"], "1");

    // Everything again: acknowledged, flagged as duplicates, counted once.
    for s in sends(now_s) {
        let r = post(&meter.url, &s, &keys).await;
        assert!(r.status().is_success(), "{}", r.status());
        if s.content_type.starts_with("application/cloudevents") {
            assert_eq!(r.headers()["meter-accepted"], "0");
        }
        let body = r.text().await.unwrap();
        if s.path.ends_with("/batch") {
            let v: Value = serde_json::from_str(&body).unwrap();
            assert!(v["events"].as_array().unwrap().iter().all(|e| e["duplicate"] == true), "{v}");
        }
        if s.content_type == "application/x-ndjson" {
            let v: Value = serde_json::from_str(&body).unwrap();
            assert_eq!((v["accepted"].as_u64(), v["duplicates"].as_u64()), (Some(0), Some(2)), "{v}");
        }
    }
    let u = wait_counted(&meter.url, &reader, "acme", now_us()).await;
    assert_eq!(serde_json::to_value(values(&u)).unwrap(), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_metrics_and_health_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let meter = Meter::start(dir.path(), &[]);
    let c = client();
    let doc: Value = c.get(format!("{}/api/v1/openapi.json", meter.url)).send().await.unwrap().json().await.unwrap();
    for path in ["/api/v1/events", "/api/v1/events/batch", "/api/v1/usage", "/healthz", "/readyz", "/metrics"] {
        assert!(doc["paths"][path].is_object(), "OpenAPI lacks {path}");
    }
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    assert_eq!(c.get(format!("{}/healthz", meter.url)).send().await.unwrap().status(), 200);
    assert_eq!(c.get(format!("{}/readyz", meter.url)).send().await.unwrap().status(), 200);
    let key = create_key(dir.path(), "ingest", Some("acme"));
    let body = json!({"event": {"transaction_id": "x", "code": "work_order.created"}});
    let r = c.post(format!("{}/api/v1/events", meter.url)).bearer_auth(&key).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let metrics = c.get(format!("{}/metrics", meter.url)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("meter_ingest_requests_total"), "{metrics}");
    assert!(metrics.contains("meter_log_appended_events_total"), "{metrics}");
    assert!(!metrics.contains("acme"), "tenant ids must never be metric labels");
    for line in metrics.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        assert!(line.starts_with("meter_"), "metric not named meter_…: {line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_restart_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let key = create_key(dir.path(), "admin", None);
    let mut meter = Meter::start(dir.path(), &[]);
    let events: Vec<Value> = (0..500).map(|i| meter_tools::loadgen::event("g", i, 3, now_us() / 1_000_000)).collect();
    for chunk in events.chunks(100) {
        let r = client()
            .post(format!("{}/api/v1/events/batch", meter.url))
            .bearer_auth(&key)
            .json(&json!({ "events": chunk }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let status = meter.terminate();
    assert!(status.success(), "meter exits cleanly on SIGTERM: {status}");
    let meter = Meter::start(dir.path(), &[]);
    // The drained aggregator counted everything before exit, so the usage is complete at once.
    let u = usage(&meter.url, &key, "tenant-0000").await;
    let v = values(&u);
    assert_eq!(v["work_orders"], "34", "{u}");
}

#[tokio::test]
async fn unknown_configuration_and_a_second_process_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(meter_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("METER__INGEST__MAX_EVENTZ", "5")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("max_eventz"), "{err}");

    let _first = Meter::start(dir.path(), &[]);
    let out = std::process::Command::new(meter_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("another meter process"));
}
