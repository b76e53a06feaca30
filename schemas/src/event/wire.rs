//! The log's record of an event: its fields in a fixed order, each string length-prefixed, its
//! properties as a tagged tree. Every reader of the log (the aggregators, the sinks, the census)
//! decodes each event it reads; as JSON, that decode was a sixth of the aggregator's CPU
//! (BENCHMARKS.md).
//!
//! A record starts with [`VERSION`], which no JSON text starts with: records an earlier build
//! wrote as JSON read as before ([`Event::decode`]). Numbers keep their exact text, as
//! `arbitrary_precision` keeps them.
//!
//! ```text
//! record = VERSION flags:u8 time_us:i64 (little-endian) str(tenant) str(id) str(code)
//!          [str(subscription)] [str(source)] object(properties)
//! flags  = 1 implicit time | 2 a subscription follows | 4 a source follows
//! value  = 0 null | 1 false | 2 true | 3 str (a number's text) | 4 str
//!        | 5 count value* (an array) | 6 object
//! object = count (str value)*, keys in order, none twice
//! str    = count UTF-8 bytes
//! count  = unsigned LEB128
//! ```

use super::Event;
use serde_json::{Map, Number, Value};

/// The first byte of a record in this format.
pub const VERSION: u8 = 1;

const IMPLICIT_TIME: u8 = 1;
const SUBSCRIPTION: u8 = 2;
const SOURCE: u8 = 4;

/// Nesting deeper than this is refused on decode, as serde_json refuses it: a damaged record
/// cannot exhaust the stack. Ingest accepts far less.
const MAX_DEPTH: usize = 128;

const NULL: u8 = 0;
const FALSE: u8 = 1;
const TRUE: u8 = 2;
const NUMBER: u8 = 3;
const STRING: u8 = 4;
const ARRAY: u8 = 5;
const OBJECT: u8 = 6;

pub(super) fn encode(e: &Event) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + e.tenant.len() + e.id.len() + e.code.len() + 32 * e.properties.len());
    let flag = |on: bool, bit: u8| if on { bit } else { 0 };
    let flags = flag(e.implicit_time, IMPLICIT_TIME)
        | flag(e.subscription.is_some(), SUBSCRIPTION)
        | flag(e.source.is_some(), SOURCE);
    out.push(VERSION);
    out.push(flags);
    out.extend_from_slice(&e.time_us.to_le_bytes());
    for s in [&e.tenant, &e.id, &e.code] {
        put_str(&mut out, s);
    }
    for s in [&e.subscription, &e.source].into_iter().flatten() {
        put_str(&mut out, s);
    }
    put_object(&mut out, &e.properties);
    out
}

fn put_count(out: &mut Vec<u8>, mut n: usize) {
    while n >= 0x80 {
        out.push(n as u8 | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_count(out, s.len());
    out.extend_from_slice(s.as_bytes());
}

fn put_object(out: &mut Vec<u8>, map: &Map<String, Value>) {
    put_count(out, map.len());
    for (k, v) in map {
        put_str(out, k);
        put_value(out, v);
    }
}

fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Null => out.push(NULL),
        Value::Bool(false) => out.push(FALSE),
        Value::Bool(true) => out.push(TRUE),
        Value::Number(n) => {
            out.push(NUMBER);
            put_str(out, n.as_str());
        }
        Value::String(s) => {
            out.push(STRING);
            put_str(out, s);
        }
        Value::Array(items) => {
            out.push(ARRAY);
            put_count(out, items.len());
            items.iter().for_each(|i| put_value(out, i));
        }
        Value::Object(map) => {
            out.push(OBJECT);
            put_object(out, map);
        }
    }
}

/// Reads a record that starts with [`VERSION`]. A damaged one is refused with what is wrong
/// and where; nothing in it can make the reader allocate more than the record's own size for
/// counts, or recurse past [`MAX_DEPTH`].
pub(super) fn decode(bytes: &[u8]) -> Result<Event, serde_json::Error> {
    let mut r = Reader { bytes, at: 1 };
    let flags = r.byte("the flags")?;
    if flags & !(IMPLICIT_TIME | SUBSCRIPTION | SOURCE) != 0 {
        return Err(fail(format!("unknown flags {flags:#04x}")));
    }
    let time_us = i64::from_le_bytes(r.take(8, "the time")?.try_into().expect("8 bytes"));
    let tenant = r.string("the tenant")?;
    let id = r.string("the id")?;
    let code = r.string("the code")?;
    let subscription = if flags & SUBSCRIPTION != 0 { Some(r.string("the subscription")?) } else { None };
    let source = if flags & SOURCE != 0 { Some(r.string("the source")?) } else { None };
    let properties = r.object(0)?;
    if r.at != bytes.len() {
        return Err(fail(format!("{} bytes follow the event", bytes.len() - r.at)));
    }
    Ok(Event { tenant, id, code, time_us, implicit_time: flags & IMPLICIT_TIME != 0, subscription, source, properties })
}

fn fail(why: String) -> serde_json::Error {
    <serde_json::Error as serde::de::Error>::custom(format!("a log record in meter's format: {why}"))
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], serde_json::Error> {
        let end = self.at.checked_add(n).filter(|end| *end <= self.bytes.len());
        let end = end.ok_or_else(|| fail(format!("{what} runs past the record's end (at byte {})", self.at)))?;
        let taken = &self.bytes[self.at..end];
        self.at = end;
        Ok(taken)
    }

    fn byte(&mut self, what: &str) -> Result<u8, serde_json::Error> {
        Ok(self.take(1, what)?[0])
    }

    /// A count of bytes or of items; each item takes at least one byte, so a count larger than
    /// what is left of the record is damage.
    fn count(&mut self, what: &str) -> Result<usize, serde_json::Error> {
        let mut n: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.byte(what)?;
            n |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                let left = (self.bytes.len() - self.at) as u64;
                if n > left {
                    return Err(fail(format!("{what}'s length {n} is more than the {left} bytes left")));
                }
                return Ok(n as usize);
            }
        }
        Err(fail(format!("{what}'s length does not end")))
    }

    fn str(&mut self, what: &str) -> Result<&'a str, serde_json::Error> {
        let n = self.count(what)?;
        let raw = self.take(n, what)?;
        std::str::from_utf8(raw).map_err(|e| fail(format!("{what} is not UTF-8: {e}")))
    }

    fn string(&mut self, what: &str) -> Result<String, serde_json::Error> {
        self.str(what).map(str::to_owned)
    }

    fn object(&mut self, depth: usize) -> Result<Map<String, Value>, serde_json::Error> {
        let n = self.count("an object")?;
        // Inserted one at a time: for a few keys, cheaper than collecting them and building the
        // map at once (which sorts them first).
        let mut map = Map::new();
        for _ in 0..n {
            let key = self.string("a key")?;
            let value = self.value(depth + 1)?;
            if map.insert(key, value).is_some() {
                return Err(fail("an object holds a key twice".into()));
            }
        }
        Ok(map)
    }

    fn value(&mut self, depth: usize) -> Result<Value, serde_json::Error> {
        if depth > MAX_DEPTH {
            return Err(fail(format!("the properties nest deeper than {MAX_DEPTH}")));
        }
        Ok(match self.byte("a value")? {
            NULL => Value::Null,
            FALSE => Value::Bool(false),
            TRUE => Value::Bool(true),
            NUMBER => {
                let text = self.str("a number")?;
                let n: Number = text.parse().map_err(|_| fail(format!("{text:?} is not a JSON number")))?;
                Value::Number(n)
            }
            STRING => Value::String(self.string("a string")?),
            ARRAY => {
                let n = self.count("an array")?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(depth + 1)?);
                }
                Value::Array(items)
            }
            OBJECT => Value::Object(self.object(depth)?),
            tag => return Err(fail(format!("unknown value tag {tag}"))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(properties: Value) -> Event {
        Event {
            tenant: "acme".into(),
            id: "evt-1".into(),
            code: "agent.invocation".into(),
            time_us: -1_700_000_000_000_001,
            implicit_time: true,
            subscription: Some("sub_1".into()),
            source: Some("sdk/é".into()),
            properties: properties.as_object().unwrap().clone(),
        }
    }

    fn nested() -> Value {
        serde_json::from_str(
            r#"{"n":0.10000000000000000000001,"big":123456789012345678901234567890,"neg":-3e-7,
                "s":"tab\there \"q\" ☃","t":true,"f":false,"z":null,"a":[1,"x",[],{},[null]],
                "o":{"b":{"c":[{"d":1}]},"":""}}"#,
        )
        .unwrap()
    }

    #[test]
    fn every_field_and_value_reads_back_exactly() {
        let e = event(nested());
        let bytes = e.encode();
        assert_eq!(bytes[0], VERSION);
        let back = Event::decode(&bytes).unwrap();
        assert_eq!(back, e);
        assert_eq!(back.properties["n"].to_string(), "0.10000000000000000000001");
        assert_eq!(back.properties["big"].to_string(), "123456789012345678901234567890");
        let bare = Event { implicit_time: false, subscription: None, source: None, ..event(json!({})) };
        assert_eq!(Event::decode(&bare.encode()).unwrap(), bare);
    }

    #[test]
    fn records_written_as_json_still_read() {
        let e = event(nested());
        let json = serde_json::to_vec(&e).unwrap();
        assert_eq!(Event::decode(&json).unwrap(), e);
        let padded = [b" \n".as_slice(), &json].concat();
        assert_eq!(Event::decode(&padded).unwrap(), e);
    }

    #[test]
    fn a_damaged_record_is_refused_with_what_is_wrong() {
        assert!(Event::decode(&[]).is_err(), "an empty record");
        let bytes = event(nested()).encode();
        for cut in 1..bytes.len() {
            let err = Event::decode(&bytes[..cut]).unwrap_err().to_string();
            assert!(err.contains("meter's format"), "cut at {cut}: {err}");
        }
        let longer = [bytes.as_slice(), b"x"].concat();
        assert!(Event::decode(&longer).unwrap_err().to_string().contains("1 bytes follow the event"));
        let mut flags = bytes.clone();
        flags[1] |= 0x40;
        assert!(Event::decode(&flags).unwrap_err().to_string().contains("unknown flags"));
        // A count claiming more than the record holds allocates nothing.
        let mut huge = bytes[..10].to_vec();
        huge.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert!(Event::decode(&huge).unwrap_err().to_string().contains("is more than the"));
        let mut tag = event(json!({"k": null})).encode();
        *tag.last_mut().unwrap() = 9;
        assert!(Event::decode(&tag).unwrap_err().to_string().contains("unknown value tag 9"));
        let mut number = event(json!({"k": 12})).encode();
        *number.last_mut().unwrap() = b'x';
        assert!(Event::decode(&number).unwrap_err().to_string().contains("not a JSON number"));
        let mut utf8 = event(json!({})).encode();
        let at = utf8.iter().position(|b| *b == b'a').unwrap(); // the tenant's first byte
        utf8[at] = 0xff;
        assert!(Event::decode(&utf8).unwrap_err().to_string().contains("the tenant is not UTF-8"));
    }

    proptest::proptest! {
        /// Whatever a damaged record holds, its reader refuses it or reads an event, and never
        /// panics; an event it reads survives the encoding unchanged.
        #[test]
        fn any_bytes_are_refused_or_read_never_a_panic(
            tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256),
            cut in 0usize..64,
        ) {
            let whole = event(nested()).encode();
            for bytes in [[&[VERSION][..], &tail].concat(), [&whole[..cut.min(whole.len())], &tail].concat()] {
                if let Ok(e) = Event::decode(&bytes) {
                    proptest::prop_assert_eq!(Event::decode(&e.encode()).unwrap(), e);
                }
            }
        }
    }

    #[test]
    fn a_key_twice_and_nesting_too_deep_are_refused() {
        let mut twice = event(json!({"a": null, "b": null})).encode();
        let at = twice.len() - 2; // "b" of the last key
        twice[at] = b'a';
        assert!(Event::decode(&twice).unwrap_err().to_string().contains("a key twice"));
        let mut deep = vec![VERSION, 0];
        deep.extend_from_slice(&0i64.to_le_bytes());
        deep.extend_from_slice(&[1, b't', 1, b'i', 1, b'c', 1, 1, b'k']);
        for _ in 0..200 {
            deep.extend_from_slice(&[ARRAY, 1]);
        }
        deep.push(NULL);
        assert!(Event::decode(&deep).unwrap_err().to_string().contains("nest deeper than 128"));
    }
}
