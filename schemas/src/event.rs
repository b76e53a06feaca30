//! The validated event: what ingest writes to the log and the aggregator reads back.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

pub mod wire;

/// A usage event after validation, in one normal form whatever envelope it arrived in.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// The tenant billed for the event.
    pub tenant: String,
    /// The sender's id for the event; `(tenant, id)` is its identity.
    pub id: String,
    /// Event code, e.g. `agent.invocation`.
    pub code: String,
    /// Event time in microseconds since the Unix epoch, UTC.
    pub time_us: i64,
    /// True when the sender gave no time and ingest used the time of receipt.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub implicit_time: bool,
    /// Lago's `external_subscription_id`, when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscription: Option<String>,
    /// CloudEvents `source`, when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Event properties (CloudEvents `data`), numbers kept as their exact text.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub properties: Map<String, Value>,
}

impl Event {
    /// Whether the event's time is part of what the sender said about it, so that a resend with
    /// another time is a different payload. Not when ingest filled it in, and not for
    /// CloudEvents (the one envelope with a `source`): OpenMeter's SDKs stamp `time` with the
    /// current instant on every send, and OpenMeter takes a resend that differs only in `time`
    /// for a duplicate; it counts once, at the first copy's time.
    pub fn time_is_identity(&self) -> bool {
        !self.implicit_time && self.source.is_none()
    }

    /// SHA-256 of what the sender said: two sends of the same event hash alike, and an id reused
    /// for different content does not. A time that is not part of the event's identity
    /// ([`Event::time_is_identity`]) is left out.
    pub fn payload_hash(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        for part in [self.tenant.as_str(), self.id.as_str(), self.code.as_str()] {
            write_str(&mut h, part);
        }
        if !self.time_is_identity() {
            h.update(b"t-");
        } else {
            h.update(b"t+");
            h.update(self.time_us.to_le_bytes());
        }
        for opt in [&self.subscription, &self.source] {
            match opt {
                Some(s) => write_str(&mut h, s),
                None => h.update(b"-"),
            }
        }
        canonical_map(&mut h, &self.properties);
        h.finalize().into()
    }

    /// The bytes written to the log: [`wire`]'s format.
    pub fn encode(&self) -> Vec<u8> {
        wire::encode(self)
    }

    /// Reads an event written by [`Event::encode`], or by an earlier build as JSON.
    pub fn decode(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        match bytes.first() {
            Some(&wire::VERSION) => wire::decode(bytes),
            _ => serde_json::from_slice(bytes),
        }
    }

    /// What `read` takes of the event a record holds, viewed in place ([`wire::View`]): a
    /// record an earlier build wrote as JSON is decoded and encoded again first. A damaged record
    /// is refused as [`Event::decode`] refuses it.
    pub fn view<T>(bytes: &[u8], read: impl FnOnce(&wire::View<'_>) -> T) -> Result<T, serde_json::Error> {
        match bytes.first() {
            Some(&wire::VERSION) => Ok(read(&wire::View::parse(bytes)?)),
            _ => {
                let encoded = Event::decode(bytes)?.encode();
                Ok(read(&wire::View::parse(&encoded)?))
            }
        }
    }
}

fn write_str(h: &mut Sha256, s: &str) {
    h.update((s.len() as u64).to_le_bytes());
    h.update(s.as_bytes());
}

/// Hashes a JSON value with object keys in sorted order, whatever order the map keeps.
fn canonical(h: &mut Sha256, v: &Value) {
    match v {
        Value::Null => h.update(b"n"),
        Value::Bool(b) => h.update(if *b { b"T" } else { b"F" }),
        Value::Number(n) => {
            h.update(b"#");
            write_str(h, n.as_str());
        }
        Value::String(s) => {
            h.update(b"s");
            write_str(h, s);
        }
        Value::Array(items) => {
            h.update(b"[");
            h.update((items.len() as u64).to_le_bytes());
            items.iter().for_each(|i| canonical(h, i));
        }
        Value::Object(map) => canonical_map(h, map),
    }
}

fn canonical_map(h: &mut Sha256, map: &Map<String, Value>) {
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort_unstable();
    h.update(b"{");
    h.update((keys.len() as u64).to_le_bytes());
    for k in keys {
        write_str(h, k);
        canonical(h, &map[k]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(props: Value) -> Event {
        Event {
            tenant: "acme".into(),
            id: "e1".into(),
            code: "agent.invocation".into(),
            time_us: 1_700_000_000_000_000,
            implicit_time: false,
            subscription: None,
            source: None,
            properties: props.as_object().unwrap().clone(),
        }
    }

    #[test]
    fn hash_ignores_key_order_but_not_content() {
        let a: Value = serde_json::from_str(r#"{"a":1,"b":"x"}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"b":"x","a":1}"#).unwrap();
        assert_eq!(event(a.clone()).payload_hash(), event(b).payload_hash());
        assert_ne!(event(a).payload_hash(), event(json!({"a": 2, "b": "x"})).payload_hash());
    }

    #[test]
    fn implicit_time_is_not_part_of_the_hash() {
        let mut a = event(json!({}));
        a.implicit_time = true;
        let mut b = a.clone();
        b.time_us += 5_000_000;
        assert_eq!(a.payload_hash(), b.payload_hash());
    }

    #[test]
    fn a_cloudevent_resent_with_another_time_hashes_alike_but_not_with_another_source() {
        let mut a = event(json!({"n": 1}));
        a.source = Some("sdk".into());
        let mut b = a.clone();
        b.time_us += 5_000_000;
        assert_eq!(a.payload_hash(), b.payload_hash());
        b.source = Some("other".into());
        assert_ne!(a.payload_hash(), b.payload_hash());
        let mut lago = event(json!({"n": 1}));
        let first = lago.payload_hash();
        lago.time_us += 5_000_000;
        assert_ne!(first, lago.payload_hash(), "a Lago event's explicit timestamp is part of it");
    }

    #[test]
    fn encode_round_trips_exact_numbers() {
        let v: Value = serde_json::from_str(r#"{"n":0.10000000000000000000001}"#).unwrap();
        let e = event(v);
        let back = Event::decode(&e.encode()).unwrap();
        assert_eq!(back, e);
        assert_eq!(back.properties["n"].to_string(), "0.10000000000000000000001");
    }
}
