//! The events of the benches' logs: `meter loadgen`'s five codes in turn, so that the census
//! and the close read what a live log holds.

use meter_schemas::{Event, Period};
use serde_json::{Map, Value, json};

/// Tenant `tenant`'s `k`-th of `per` events: every tenant sends all five built-in codes in turn,
/// each event inside `october` but one in twenty just after it (so that a census of `october`
/// also leaves events out).
pub fn event(tenant: usize, k: usize, per: usize, october: Period) -> Event {
    let i = tenant * per + k;
    let properties = match (tenant + k) % 5 {
        0 => json!({"work_order_id": format!("wo-{i}")}),
        1 => json!({"work_order_id": format!("wo-{i}")}),
        2 => json!({"model": "gpt-x", "input_tokens": 1000 + i % 97, "output_tokens": 200 + i % 13}),
        3 => json!({"route": "/v1/orders", "method": "GET", "status": 200}),
        _ => json!({"user_id": format!("user-{}", i % 50)}),
    };
    let code =
        ["work_order.created", "work_order.completed", "agent.invocation", "api.call", "user.login"][(tenant + k) % 5];
    // One in twenty falls after October, so that the census also leaves events out.
    let time_us =
        if i % 20 == 19 { october.end_us() + 1_000 } else { october.start_us() + (i as i64 % 2_000_000) * 1_000_000 };
    let properties: Map<String, Value> = properties.as_object().cloned().unwrap_or_default();
    Event {
        tenant: format!("tenant-{tenant:07}"),
        id: format!("ev-{i:012}"),
        code: code.into(),
        time_us,
        implicit_time: false,
        subscription: None,
        source: None,
        properties,
    }
}
