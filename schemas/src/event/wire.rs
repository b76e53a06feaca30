//! The log's record of an event: its fields in a fixed order, each string length-prefixed, its
//! properties as a tagged tree. The readers of the log decode each event they read (the sinks),
//! or view it in place ([`View`]: the aggregators, the census); as JSON, the decode was a sixth
//! of the aggregator's CPU (BENCHMARKS.md).
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
    let h = r.header()?;
    let properties = r.object(0)?;
    r.end()?;
    Ok(Event {
        tenant: h.tenant.to_owned(),
        id: h.id.to_owned(),
        code: h.code.to_owned(),
        time_us: h.time_us,
        implicit_time: h.flags & IMPLICIT_TIME != 0,
        subscription: h.subscription.map(str::to_owned),
        source: h.source.map(str::to_owned),
        properties,
    })
}

/// A record's fields before its properties, borrowed from it.
struct Header<'a> {
    flags: u8,
    time_us: i64,
    tenant: &'a str,
    id: &'a str,
    code: &'a str,
    subscription: Option<&'a str>,
    source: Option<&'a str>,
}

/// A record in this format read in place: the event's fields borrowed from its bytes, and its
/// properties looked up one at a time ([`View::property`]), for a reader that takes a few of
/// each event's fields rather than the whole event (the aggregator: the tenant, the id, the time
/// and what the meters read). Decoding an event builds every property, a map node, a key and a
/// value each. [`View::parse`] checks the whole record as [`Event::decode`] does, and refuses
/// what it refuses in the same words (test `a_view_refuses_and_reads_what_decode_does`).
#[derive(Clone, Copy, Debug)]
pub struct View<'a> {
    /// The tenant billed for the event.
    pub tenant: &'a str,
    /// The sender's id for the event.
    pub id: &'a str,
    /// Event code.
    pub code: &'a str,
    /// Event time in microseconds since the Unix epoch, UTC.
    pub time_us: i64,
    /// The properties' object, from its count on, checked whole.
    properties: &'a [u8],
}

impl<'a> View<'a> {
    /// Checks a record that starts with [`VERSION`] and views it.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, serde_json::Error> {
        if bytes.first() != Some(&VERSION) {
            return Err(fail(format!("a record starts with {VERSION}")));
        }
        let mut r = Reader { bytes, at: 1 };
        let h = r.header()?;
        let start = r.at;
        r.skip_object(0)?;
        let properties = &bytes[start..r.at];
        r.end()?;
        Ok(View { tenant: h.tenant, id: h.id, code: h.code, time_us: h.time_us, properties })
    }

    /// The property `name`, as [`Event::decode`] reads it.
    pub fn property(&self, name: &str) -> Option<Value> {
        const CHECKED: &str = "properties checked whole by View::parse";
        let mut r = Reader { bytes: self.properties, at: 0 };
        for _ in 0..r.count("an object").expect(CHECKED) {
            if r.str("a key").expect(CHECKED) == name {
                return Some(r.value(1).expect(CHECKED));
            }
            r.pass_value().expect(CHECKED);
        }
        None
    }
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

    /// The fields before the properties, after [`VERSION`].
    fn header(&mut self) -> Result<Header<'a>, serde_json::Error> {
        let flags = self.byte("the flags")?;
        if flags & !(IMPLICIT_TIME | SUBSCRIPTION | SOURCE) != 0 {
            return Err(fail(format!("unknown flags {flags:#04x}")));
        }
        let time_us = i64::from_le_bytes(self.take(8, "the time")?.try_into().expect("8 bytes"));
        let tenant = self.str("the tenant")?;
        let id = self.str("the id")?;
        let code = self.str("the code")?;
        let subscription = if flags & SUBSCRIPTION != 0 { Some(self.str("the subscription")?) } else { None };
        let source = if flags & SOURCE != 0 { Some(self.str("the source")?) } else { None };
        Ok(Header { flags, time_us, tenant, id, code, subscription, source })
    }

    /// Refuses bytes after the event.
    fn end(&self) -> Result<(), serde_json::Error> {
        match self.bytes.len() - self.at {
            0 => Ok(()),
            n => Err(fail(format!("{n} bytes follow the event"))),
        }
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

    /// Checks an object as [`Reader::object`] reads it, building nothing while its keys come in
    /// order.
    fn skip_object(&mut self, depth: usize) -> Result<(), serde_json::Error> {
        let start = self.at;
        let n = self.count("an object")?;
        // Our writer puts the keys in order (a map's: serde_json's `Map` is a `BTreeMap` here,
        // without `preserve_order`), so a key above the greatest so far is new. From the first
        // one that is not, the keys are kept in a set: the entries before it are walked once more
        // for theirs, values skipped unchecked (each object's at most once, so a damaged record
        // costs at most its size times its depth).
        let mut greatest: Option<&str> = None;
        let mut keys: Option<std::collections::HashSet<&'a str>> = None;
        for i in 0..n {
            let key = self.str("a key")?;
            self.skip_value(depth + 1)?;
            let new = match (&mut keys, greatest) {
                (Some(keys), _) => keys.insert(key),
                (None, Some(g)) if key <= g => {
                    let mut before = self.keys_of(start, i)?;
                    let new = before.insert(key);
                    keys = Some(before);
                    new
                }
                (None, _) => {
                    greatest = Some(key);
                    true
                }
            };
            if !new {
                return Err(fail("an object holds a key twice".into()));
            }
        }
        Ok(())
    }

    /// The first `n` keys of the object at `start`, checked already.
    fn keys_of(&self, start: usize, n: usize) -> Result<std::collections::HashSet<&'a str>, serde_json::Error> {
        let mut r = Reader { bytes: self.bytes, at: start };
        r.count("an object")?;
        let mut keys = std::collections::HashSet::with_capacity(n + 1);
        for _ in 0..n {
            keys.insert(r.str("a key")?);
            r.pass_value()?;
        }
        Ok(keys)
    }

    /// Steps over a value checked already: its tags and lengths only.
    fn pass_value(&mut self) -> Result<(), serde_json::Error> {
        match self.byte("a value")? {
            NULL | FALSE | TRUE => {}
            NUMBER | STRING => {
                let n = self.count("a string")?;
                self.take(n, "a string")?;
            }
            ARRAY => {
                for _ in 0..self.count("an array")? {
                    self.pass_value()?;
                }
            }
            OBJECT => {
                for _ in 0..self.count("an object")? {
                    let n = self.count("a key")?;
                    self.take(n, "a key")?;
                    self.pass_value()?;
                }
            }
            tag => return Err(fail(format!("unknown value tag {tag}"))),
        }
        Ok(())
    }

    /// Checks a value as [`Reader::value`] reads it, building nothing (but a number's text,
    /// parsed as decoding parses it).
    fn skip_value(&mut self, depth: usize) -> Result<(), serde_json::Error> {
        if depth > MAX_DEPTH {
            return Err(fail(format!("the properties nest deeper than {MAX_DEPTH}")));
        }
        match self.byte("a value")? {
            NULL | FALSE | TRUE => {}
            NUMBER => {
                let text = self.str("a number")?;
                text.parse::<Number>().map_err(|_| fail(format!("{text:?} is not a JSON number")))?;
            }
            STRING => {
                self.str("a string")?;
            }
            ARRAY => {
                for _ in 0..self.count("an array")? {
                    self.skip_value(depth + 1)?;
                }
            }
            OBJECT => self.skip_object(depth)?,
            tag => return Err(fail(format!("unknown value tag {tag}"))),
        }
        Ok(())
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
        /// panics; an event it reads survives the encoding unchanged. A view of a record in this
        /// format refuses what decoding refuses, in its words, and reads what it reads.
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
                if bytes.first() == Some(&VERSION) {
                    same_as_decode(&bytes)?;
                }
            }
        }
    }

    /// A view of `bytes` refuses them as decoding does, in its words, or reads what it reads.
    fn same_as_decode(bytes: &[u8]) -> Result<(), proptest::test_runner::TestCaseError> {
        match (Event::decode(bytes), View::parse(bytes)) {
            (Ok(_), Ok(_)) => assert_view_reads_as_decode(bytes),
            (Err(d), Err(v)) => proptest::prop_assert_eq!(d.to_string(), v.to_string()),
            (d, v) => proptest::prop_assert!(false, "decode {:?}, view {:?}", d.err(), v.err()),
        }
        Ok(())
    }

    /// What a view reads of a record: the event's fields, and each property as decoding the
    /// whole event reads it.
    fn assert_view_reads_as_decode(bytes: &[u8]) {
        let e = Event::decode(bytes).unwrap();
        let v = View::parse(bytes).unwrap();
        assert_eq!((v.tenant, v.id, v.code, v.time_us), (e.tenant.as_str(), e.id.as_str(), e.code.as_str(), e.time_us));
        for (k, value) in &e.properties {
            assert_eq!(v.property(k).as_ref(), Some(value), "property {k:?}");
        }
        assert_eq!(v.property("not there"), None);
    }

    #[test]
    fn a_view_reads_the_fields_and_properties_decode_reads() {
        assert_view_reads_as_decode(&event(nested()).encode());
        let bare = Event { implicit_time: false, subscription: None, source: None, ..event(json!({})) };
        assert_view_reads_as_decode(&bare.encode());
        // Keys out of order (no writer of ours puts them so, but decode reads them).
        let mut swapped = event(json!({"a": 1, "b": 2})).encode();
        let at = swapped.len() - 10;
        assert_eq!(&swapped[at..], &[1, b'a', NUMBER, 1, b'1', 1, b'b', NUMBER, 1, b'2']);
        swapped[at + 1] = b'c';
        assert_view_reads_as_decode(&swapped);
    }

    #[test]
    fn a_view_refuses_a_damaged_record_as_decode_does() {
        let bytes = event(nested()).encode();
        let refusal = |b: &[u8]| View::parse(b).err().map(|e| e.to_string());
        let decoded = |b: &[u8]| Event::decode(b).err().map(|e| e.to_string());
        for cut in 1..bytes.len() {
            assert_eq!(refusal(&bytes[..cut]), decoded(&bytes[..cut]), "cut at {cut}");
        }
        let mut twice = event(json!({"a": null, "b": {"x": 1, "y": 2}})).encode();
        let at = twice.len() - 4; // "y", the nested object's second key
        twice[at] = b'x';
        assert!(refusal(&twice).unwrap().contains("a key twice"));
        assert_eq!(refusal(&twice), decoded(&twice));
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
        for bytes in [&twice, &deep] {
            assert_eq!(View::parse(bytes).unwrap_err().to_string(), Event::decode(bytes).unwrap_err().to_string());
        }
        // JSON, or nothing, is not this format: a view refuses it (`Event::view` decodes JSON).
        for bytes in [b"{}".as_slice(), b""] {
            assert!(View::parse(bytes).unwrap_err().to_string().contains("a record starts with 1"), "{bytes:?}");
        }
    }

    /// A tree of properties as a record may hold it: keys in any order, and twice.
    #[derive(Clone, Debug)]
    enum Tree {
        Leaf(Value),
        Array(Vec<Tree>),
        Object(Vec<(String, Tree)>),
    }

    fn put_tree(out: &mut Vec<u8>, t: &Tree) {
        match t {
            Tree::Leaf(v) => put_value(out, v),
            Tree::Array(items) => {
                out.push(ARRAY);
                put_count(out, items.len());
                items.iter().for_each(|i| put_tree(out, i));
            }
            Tree::Object(entries) => {
                out.push(OBJECT);
                put_entries(out, entries);
            }
        }
    }

    fn put_entries(out: &mut Vec<u8>, entries: &[(String, Tree)]) {
        put_count(out, entries.len());
        for (k, v) in entries {
            put_str(out, k);
            put_tree(out, v);
        }
    }

    /// A record of `properties` (its header as [`event`]'s, without the optional fields).
    fn record_of(properties: &[(String, Tree)]) -> Vec<u8> {
        let mut out = vec![VERSION, 0];
        out.extend_from_slice(&7i64.to_le_bytes());
        for s in ["t", "i", "c"] {
            put_str(&mut out, s);
        }
        put_entries(&mut out, properties);
        out
    }

    fn tree() -> impl proptest::strategy::Strategy<Value = Tree> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            (-1000i64..1000).prop_map(|n| json!(n)),
            "[a-c]{0,2}".prop_map(Value::String),
        ]
        .prop_map(Tree::Leaf);
        leaf.prop_recursive(6, 48, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Tree::Array),
                // Keys from three letters: in any order, and often twice.
                proptest::collection::vec(("[a-c]", inner), 0..4).prop_map(Tree::Object),
            ]
        })
    }

    proptest::proptest! {
        /// Properties of any shape, keys in any order and repeated at any depth, one byte changed
        /// or not: a view refuses what decoding refuses, in its words, and reads what it reads.
        #[test]
        fn a_view_of_any_tree_is_what_decode_makes_of_it(
            properties in proptest::collection::vec(("[a-c]", tree()), 0..4),
            flip in proptest::option::of((0usize..512, proptest::prelude::any::<u8>())),
        ) {
            let mut bytes = record_of(&properties);
            if let Some((at, b)) = flip {
                let header = 16; // VERSION, the flags, the time, and three one-byte strings
                let at = header + at % (bytes.len() - header);
                bytes[at] = b;
            }
            same_as_decode(&bytes)?;
        }
    }

    #[test]
    fn the_nesting_limit_is_the_same_for_arrays_and_objects() {
        for levels in [127, 128, 129] {
            let mut array = Tree::Leaf(Value::Null);
            let mut object = Tree::Leaf(Value::Null);
            for _ in 0..levels {
                array = Tree::Array(vec![array]);
                object = Tree::Object(vec![("k".into(), object)]);
            }
            for t in [array, object] {
                let bytes = record_of(&[("p".into(), t)]);
                let (d, v) = (Event::decode(&bytes), View::parse(&bytes));
                assert_eq!(d.is_ok(), levels < 128, "{levels} levels");
                assert_eq!(d.err().map(|e| e.to_string()), v.err().map(|e| e.to_string()), "{levels} levels");
            }
        }
    }

    /// Keys out of order at every level of a deep nest are found twice, or not, in time that
    /// grows with the record (each level's entries walked again once), not with 2 to the depth.
    #[test]
    fn keys_out_of_order_deep_down_are_checked_once_a_level() {
        for twice in [false, true] {
            let mut t = Tree::Leaf(Value::Null);
            for _ in 0..120 {
                let last = if twice { "b" } else { "a" };
                t = Tree::Object(vec![("b".into(), t), (last.into(), Tree::Leaf(Value::Null))]);
            }
            let bytes = record_of(&[("p".into(), t)]);
            let (d, v) = (Event::decode(&bytes), View::parse(&bytes));
            assert_eq!(d.is_ok(), !twice);
            assert_eq!(d.err().map(|e| e.to_string()), v.err().map(|e| e.to_string()));
        }
    }
}
