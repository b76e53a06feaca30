//! Meters: how events become numbers. Meters are configuration; six defaults ship built in.

use crate::error::FieldError;
use crate::event::{Event, wire};
use crate::quantity::{self, QuantityError};
use hashbrown::{HashMap, HashSet};
use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::collections::BTreeMap;

/// How a meter folds the values of its events into one number per period.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Aggregation {
    /// Number of events.
    Count,
    /// Sum of the property (or of several properties).
    Sum,
    /// Number of distinct values of the property.
    UniqueCount,
    /// Largest value of the property.
    Max,
    /// Value of the property on the latest event (by event time, then id).
    Latest,
}

impl Aggregation {
    /// Every kind, for backends that map a stored code back to its kind.
    pub const ALL: [Aggregation; 5] =
        [Aggregation::Count, Aggregation::Sum, Aggregation::UniqueCount, Aggregation::Max, Aggregation::Latest];
}

/// One meter, as written in configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MeterDef {
    /// Name shown in the usage API, `[a-z][a-z0-9_]*`.
    pub name: String,
    /// Event code the meter reads.
    pub event: String,
    /// How values are folded.
    pub aggregation: Aggregation,
    /// Property (or properties, summed per event) the value is read from; none for `count`.
    #[serde(default, deserialize_with = "one_or_many", skip_serializing_if = "Vec::is_empty")]
    pub property: Vec<String>,
    /// Only events whose property equals one of the listed values count.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schema(value_type = BTreeMap<String, Vec<String>>)]
    pub filter: BTreeMap<String, FilterValues>,
    /// Free text for people.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Properties the meter's period total is also broken down by, each on its own (count and
    /// sum meters only; at most [`MAX_GROUP_BY`]). An event without the property counts under no
    /// value.
    #[serde(default, deserialize_with = "one_or_many", skip_serializing_if = "Vec::is_empty")]
    pub group_by: Vec<String>,
}

/// Most properties one meter is broken down by.
pub const MAX_GROUP_BY: usize = 4;

/// Allowed values of a filtered property, written as one value or a list.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(transparent)]
pub struct FilterValues(pub Vec<String>);

impl<'de> Deserialize<'de> for FilterValues {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Scalar {
            S(String),
            I(i64),
            B(bool),
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            One(Scalar),
            Many(Vec<Scalar>),
        }
        let text = |s: Scalar| match s {
            Scalar::S(s) => s,
            Scalar::I(i) => i.to_string(),
            Scalar::B(b) => b.to_string(),
        };
        Ok(match Form::deserialize(d)? {
            Form::One(s) => FilterValues(vec![text(s)]),
            Form::Many(v) => FilterValues(v.into_iter().map(text).collect()),
        })
    }
}

fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Form {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Form::deserialize(d)? {
        Form::One(s) => vec![s],
        Form::Many(v) => v,
    })
}

impl MeterDef {
    fn new(name: &str, event: &str, aggregation: Aggregation, property: &[&str], description: &str) -> Self {
        Self {
            name: name.into(),
            event: event.into(),
            aggregation,
            property: property.iter().map(|p| (*p).to_string()).collect(),
            filter: BTreeMap::new(),
            description: description.into(),
            group_by: Vec::new(),
        }
    }

    fn grouped_by(mut self, properties: &[&str]) -> Self {
        self.group_by = properties.iter().map(|p| (*p).to_string()).collect();
        self
    }

    /// The six meters every installation has.
    pub fn defaults() -> Vec<MeterDef> {
        use Aggregation::*;
        vec![
            Self::new("work_orders", "work_order.created", Count, &[], "Work orders created"),
            Self::new("work_orders_completed", "work_order.completed", Count, &[], "Work orders completed"),
            Self::new("agent_invocations", "agent.invocation", Count, &[], "AI agent invocations"),
            Self::new(
                "agent_tokens",
                "agent.invocation",
                Sum,
                &["input_tokens", "output_tokens"],
                "Input plus output tokens of AI agent invocations",
            )
            .grouped_by(&["model"]),
            Self::new("api_calls", "api.call", Count, &[], "API calls").grouped_by(&["route"]),
            Self::new("active_users", "user.login", UniqueCount, &["user_id"], "Distinct users who logged in"),
        ]
    }

    fn matches(&self, props: &(impl Properties + ?Sized)) -> bool {
        self.filter.iter().all(|(key, allowed)| {
            props.lookup(key).and_then(|v| scalar_text(&v)).is_some_and(|v| allowed.0.contains(&v))
        })
    }
}

/// What one event adds to one meter.
#[derive(Clone, Debug, PartialEq)]
pub enum Contribution {
    /// One more event.
    Count,
    /// A quantity to add.
    Sum(Decimal),
    /// A value whose distinct occurrences are counted.
    Unique(String),
    /// A candidate for the maximum.
    Max(Decimal),
    /// A candidate for the latest value.
    Latest(Decimal),
}

impl Contribution {
    /// The aggregation kind this contribution belongs to.
    pub fn aggregation(&self) -> Aggregation {
        match self {
            Contribution::Count => Aggregation::Count,
            Contribution::Sum(_) => Aggregation::Sum,
            Contribution::Unique(_) => Aggregation::UniqueCount,
            Contribution::Max(_) => Aggregation::Max,
            Contribution::Latest(_) => Aggregation::Latest,
        }
    }
}

/// The running state of one meter over one bucket (a period or a day).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// The value so far; `None` before any event (and for `max`/`latest`, "no value").
    pub value: Option<Decimal>,
    /// For `latest`: event time and id of the event that set the value.
    pub latest: Option<(i64, String)>,
}

/// A period total that no longer fits a decimal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("meter total overflows the decimal range")]
pub struct Overflow;

impl Tally {
    /// Folds a contribution in. For `Unique`, call only when the value was not seen before.
    /// The result does not depend on the order in which contributions arrive.
    pub fn add(&mut self, c: &Contribution, time_us: i64, id: &str) -> Result<(), Overflow> {
        let current = self.value.unwrap_or(Decimal::ZERO);
        match c {
            Contribution::Count | Contribution::Unique(_) => {
                self.value = Some(current.checked_add(Decimal::ONE).ok_or(Overflow)?);
            }
            Contribution::Sum(q) => {
                let sum = current.checked_add(*q).ok_or(Overflow)?;
                // A Decimal rounds rather than fail when a sum needs more than 28 digits, and only
                // then does the result have fewer decimal places than its operands: a lost digit is
                // an overflow here, never a silently inexact total.
                if sum.scale() < current.scale().max(q.scale()) {
                    return Err(Overflow);
                }
                self.value = Some(sum);
            }
            Contribution::Max(q) => self.value = Some(self.value.map_or(*q, |v| v.max(*q))),
            Contribution::Latest(q) => {
                let newer = match &self.latest {
                    None => true,
                    Some((t, i)) => (time_us, id) > (*t, i.as_str()),
                };
                if newer {
                    self.value = Some(*q);
                    self.latest = Some((time_us, id.to_string()));
                }
            }
        }
        Ok(())
    }

    /// The value as exact decimal text; zero for counts and sums with no event, `None` for
    /// `max`/`latest` with no event.
    pub fn display(&self, aggregation: Aggregation) -> Option<String> {
        match (self.value, aggregation) {
            (Some(v), _) => Some(v.normalize().to_string()),
            (None, Aggregation::Max | Aggregation::Latest) => None,
            (None, _) => Some("0".into()),
        }
    }
}

/// Why a meter configuration is refused.
#[derive(Debug, thiserror::Error)]
#[error("meters[{index}] ({name}): {reason}")]
pub struct MeterConfigError {
    index: usize,
    name: String,
    reason: String,
}

/// How a built-in property is typed.
#[derive(Clone, Copy, Debug)]
enum PropKind {
    Text,
    Count,
    HttpStatus,
}

struct PropSpec {
    name: &'static str,
    kind: PropKind,
    required: bool,
}

const fn prop(name: &'static str, kind: PropKind, required: bool) -> PropSpec {
    PropSpec { name, kind, required }
}

/// The built-in event codes and their typed properties.
const BUILTIN: &[(&str, &[PropSpec])] = &[
    ("work_order.created", &[prop("work_order_id", PropKind::Text, false)]),
    ("work_order.completed", &[prop("work_order_id", PropKind::Text, false)]),
    (
        "agent.invocation",
        &[
            prop("model", PropKind::Text, true),
            prop("input_tokens", PropKind::Count, true),
            prop("output_tokens", PropKind::Count, true),
        ],
    ),
    (
        "api.call",
        &[
            prop("route", PropKind::Text, true),
            prop("method", PropKind::Text, true),
            prop("status", PropKind::HttpStatus, true),
        ],
    ),
    ("user.login", &[prop("user_id", PropKind::Text, true)]),
];

/// Longest text property value accepted.
pub const MAX_TEXT_LEN: usize = 1024;

/// The compiled set of meters and the event codes they accept.
#[derive(Debug, Clone)]
pub struct Catalog {
    meters: Vec<MeterDef>,
    by_code: HashMap<String, Vec<usize>>,
}

impl Catalog {
    /// The six default meters followed by `custom` ones; a custom meter with a default's name
    /// replaces it.
    pub fn new(custom: Vec<MeterDef>) -> Result<Self, MeterConfigError> {
        let mut meters = MeterDef::defaults();
        for m in custom {
            match meters.iter().position(|d| d.name == m.name) {
                Some(i) => meters[i] = m,
                None => meters.push(m),
            }
        }
        let mut seen = HashSet::new();
        let mut by_code: HashMap<String, Vec<usize>> = HashMap::new();
        for (index, m) in meters.iter().enumerate() {
            let fail = |reason: &str| MeterConfigError { index, name: m.name.clone(), reason: reason.into() };
            let valid_name = m.name.len() <= 64
                && m.name.starts_with(|c: char| c.is_ascii_lowercase())
                && m.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if !valid_name {
                return Err(fail("name must match [a-z][a-z0-9_]{0,63}"));
            }
            if !seen.insert(m.name.clone()) {
                return Err(fail("name is used twice"));
            }
            if !valid_code(&m.event) {
                return Err(fail("event must be a code of 1 to 128 characters [A-Za-z0-9._:-]"));
            }
            match (m.aggregation, m.property.len()) {
                (Aggregation::Count, 0) | (Aggregation::Sum, 1..) => {}
                (Aggregation::Count, _) => return Err(fail("count takes no property")),
                (Aggregation::UniqueCount | Aggregation::Max | Aggregation::Latest, 1) => {}
                (Aggregation::Sum | Aggregation::UniqueCount | Aggregation::Max | Aggregation::Latest, _) => {
                    return Err(fail("this aggregation needs exactly one property (sum: one or more)"));
                }
            }
            if !m.group_by.is_empty() && !matches!(m.aggregation, Aggregation::Count | Aggregation::Sum) {
                return Err(fail("group_by: only count and sum meters can be broken down"));
            }
            if m.group_by.len() > MAX_GROUP_BY {
                return Err(fail(&format!("group_by: at most {MAX_GROUP_BY} properties")));
            }
            let mut names = HashSet::new();
            for p in &m.group_by {
                if p.is_empty() || p.len() > 128 || !names.insert(p) {
                    return Err(fail("group_by: each property is named once, in 1 to 128 characters"));
                }
            }
            by_code.entry(m.event.clone()).or_default().push(index);
        }
        Ok(Self { meters, by_code })
    }

    /// For each of `contributions` whose meter is broken down, the event's values of the
    /// meter's `group_by` properties, in order (`""` where the event has none). Empty, and no
    /// allocation, when no meter it reaches is broken down.
    pub fn groups(&self, contributions: &[(usize, Contribution)], event: &Event) -> Vec<(usize, Vec<String>)> {
        self.groups_of(contributions, &event.properties)
    }

    /// [`Catalog::groups`] of an event's properties, wherever they are read from.
    pub fn groups_of(
        &self,
        contributions: &[(usize, Contribution)],
        props: &(impl Properties + ?Sized),
    ) -> Vec<(usize, Vec<String>)> {
        let mut out = Vec::new();
        for (i, _) in contributions {
            let Some(m) = self.meters.get(*i) else { continue };
            if m.group_by.is_empty() {
                continue;
            }
            let values =
                m.group_by.iter().map(|p| props.lookup(p).and_then(|v| scalar_text(&v)).unwrap_or_default()).collect();
            out.push((*i, values));
        }
        out
    }

    /// All meters, defaults first.
    pub fn meters(&self) -> &[MeterDef] {
        &self.meters
    }

    /// Whether events of `code` are accepted: a built-in code, or one a meter reads.
    pub fn accepts(&self, code: &str) -> bool {
        builtin(code).is_some() || self.by_code.contains_key(code)
    }

    /// Codes accepted, sorted, for error messages.
    pub fn codes(&self) -> Vec<String> {
        let mut codes: Vec<String> = BUILTIN.iter().map(|(c, _)| (*c).to_string()).collect();
        codes.extend(self.by_code.keys().cloned());
        codes.sort();
        codes.dedup();
        codes
    }

    /// Checks the properties of an event of `code` (known to be accepted): the built-in types,
    /// then whatever the meters reading it need. Problems are pushed with paths under the one
    /// `path` writes out (called only for a problem: most events have none).
    pub fn check_properties(
        &self,
        code: &str,
        props: &Map<String, Value>,
        path: impl Fn() -> String,
        out: &mut Vec<FieldError>,
    ) {
        let mut reported = HashSet::new();
        for spec in builtin(code).unwrap_or(&[]) {
            let problem = match props.get(spec.name) {
                None | Some(Value::Null) if spec.required => Some("is required".to_string()),
                None | Some(Value::Null) => None,
                Some(v) => check_kind(spec.kind, v).err(),
            };
            if let Some(message) = problem {
                out.push(FieldError::invalid(format!("{}.{}", path(), spec.name), message));
                reported.insert(spec.name);
            }
        }
        for &i in self.by_code.get(code).map(Vec::as_slice).unwrap_or(&[]) {
            let m = &self.meters[i];
            if !m.matches(props) {
                continue;
            }
            for name in &m.property {
                if reported.contains(name.as_str()) {
                    continue;
                }
                let problem = match props.get(name) {
                    None | Some(Value::Null) => Some(format!("is required by meter {}", m.name)),
                    Some(v) => contribution_value(m.aggregation, v).err().map(|e| e.to_string()),
                };
                if let Some(message) = problem {
                    out.push(FieldError::invalid(format!("{}.{name}", path()), message));
                    reported.insert(name.as_str());
                }
            }
        }
    }

    /// What `event` adds to each meter, by meter index. Meters whose property is missing or
    /// invalid (possible only when configuration changed after ingest) are left out and
    /// counted in the second value.
    pub fn contributions(&self, event: &Event) -> (Vec<(usize, Contribution)>, usize) {
        self.contributions_of(&event.code, &event.properties)
    }

    /// [`Catalog::contributions`] of an event of `code` with the properties `props`, wherever
    /// they are read from.
    pub fn contributions_of(
        &self,
        code: &str,
        props: &(impl Properties + ?Sized),
    ) -> (Vec<(usize, Contribution)>, usize) {
        let mut out = Vec::new();
        let mut skipped = 0;
        for &i in self.by_code.get(code).map(Vec::as_slice).unwrap_or(&[]) {
            let m = &self.meters[i];
            if !m.matches(props) {
                continue;
            }
            match contribution(m, props) {
                Some(c) => out.push((i, c)),
                None => skipped += 1,
            }
        }
        (out, skipped)
    }
}

/// An event's properties as the meters read them, one by name: the map of a decoded event, or
/// a record viewed in place ([`wire::View`]).
pub trait Properties {
    /// The property `name`, if the event has it.
    fn lookup(&self, name: &str) -> Option<Cow<'_, Value>>;
}

impl Properties for Map<String, Value> {
    fn lookup(&self, name: &str) -> Option<Cow<'_, Value>> {
        self.get(name).map(Cow::Borrowed)
    }
}

impl Properties for wire::View<'_> {
    fn lookup(&self, name: &str) -> Option<Cow<'_, Value>> {
        self.property(name).map(Cow::Owned)
    }
}

fn builtin(code: &str) -> Option<&'static [PropSpec]> {
    BUILTIN.iter().find(|(c, _)| *c == code).map(|(_, s)| *s)
}

/// Event codes: 1 to 128 characters of `[A-Za-z0-9._:-]`.
pub fn valid_code(code: &str) -> bool {
    !code.is_empty()
        && code.len() <= 128
        && code.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

fn check_kind(kind: PropKind, v: &Value) -> Result<(), String> {
    match kind {
        PropKind::Text => match v {
            Value::String(s) if s.is_empty() => Err("must not be empty".into()),
            // A text has no more characters than bytes: only a long one is counted.
            Value::String(s) if s.len() > MAX_TEXT_LEN && s.chars().count() > MAX_TEXT_LEN => {
                Err(format!("must be at most {MAX_TEXT_LEN} characters"))
            }
            Value::String(s) if s.chars().any(char::is_control) => Err("must not contain control characters".into()),
            Value::String(_) => Ok(()),
            _ => Err("must be a string".into()),
        },
        PropKind::Count => quantity::count(v).map(|_| ()).map_err(|e| match e {
            QuantityError::NotInteger | QuantityError::NotANumber => "must be a non-negative integer".into(),
            other => other.to_string(),
        }),
        PropKind::HttpStatus => match quantity::count(v) {
            Ok(d) if d >= Decimal::from(100) && d <= Decimal::from(599) => Ok(()),
            _ => Err("must be an HTTP status code from 100 to 599".into()),
        },
    }
}

fn contribution_value(aggregation: Aggregation, v: &Value) -> Result<Contribution, QuantityError> {
    Ok(match aggregation {
        Aggregation::Count => Contribution::Count,
        Aggregation::Sum => Contribution::Sum(quantity::quantity(v)?),
        Aggregation::Max => Contribution::Max(quantity::quantity(v)?),
        Aggregation::Latest => Contribution::Latest(quantity::quantity(v)?),
        Aggregation::UniqueCount => Contribution::Unique(scalar_text(v).ok_or(QuantityError::NotANumber)?),
    })
}

fn contribution(m: &MeterDef, props: &(impl Properties + ?Sized)) -> Option<Contribution> {
    match m.aggregation {
        Aggregation::Count => Some(Contribution::Count),
        Aggregation::Sum => {
            let mut total = Decimal::ZERO;
            for name in &m.property {
                total = total.checked_add(quantity::quantity(&*props.lookup(name)?).ok()?)?;
            }
            Some(Contribution::Sum(total))
        }
        Aggregation::UniqueCount | Aggregation::Max | Aggregation::Latest => {
            contribution_value(m.aggregation, &*props.lookup(m.property.first()?)?).ok()
        }
    }
}

/// Text of a scalar JSON value: strings as they are, numbers normalized, booleans as words.
fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => {
            let t = n.as_str();
            Some(quantity::parse_decimal(t).map_or_else(|_| t.to_string(), |d| d.normalize().to_string()))
        }
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(code: &str, props: Value) -> Event {
        Event {
            tenant: "t".into(),
            id: "1".into(),
            code: code.into(),
            time_us: 0,
            implicit_time: false,
            subscription: None,
            source: None,
            properties: props.as_object().unwrap().clone(),
        }
    }

    fn check(code: &str, props: Value) -> Vec<String> {
        let mut out = Vec::new();
        Catalog::new(vec![]).unwrap().check_properties(code, props.as_object().unwrap(), || "p".to_string(), &mut out);
        out.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn agent_tokens_sums_input_and_output() {
        let c = Catalog::new(vec![]).unwrap();
        let e = event("agent.invocation", json!({"model": "m", "input_tokens": 10, "output_tokens": "5"}));
        let (contribs, skipped) = c.contributions(&e);
        assert_eq!(skipped, 0);
        let names: Vec<_> = contribs.iter().map(|(i, c)| (c.clone(), c_name(&c_meters(), *i))).collect();
        assert!(names.contains(&(Contribution::Count, "agent_invocations".into())));
        assert!(names.contains(&(Contribution::Sum(Decimal::from(15)), "agent_tokens".into())));
    }

    fn c_meters() -> Vec<MeterDef> {
        Catalog::new(vec![]).unwrap().meters().to_vec()
    }

    fn c_name(m: &[MeterDef], i: usize) -> String {
        m[i].name.clone()
    }

    #[test]
    fn typed_properties_are_checked() {
        assert_eq!(
            check("agent.invocation", json!({"model": "m", "input_tokens": -1, "output_tokens": 1.5})),
            vec!["p.input_tokens: must be a non-negative integer", "p.output_tokens: must be a non-negative integer"]
        );
        assert_eq!(
            check("api.call", json!({"route": "/x", "method": "GET", "status": 700})),
            vec!["p.status: must be an HTTP status code from 100 to 599"]
        );
        assert_eq!(check("user.login", json!({})), vec!["p.user_id: is required"]);
        assert!(check("work_order.created", json!({})).is_empty());
    }

    #[test]
    fn custom_meters_with_filters() {
        let custom: MeterDef = serde_json::from_value(json!({
            "name": "storage_gb_max", "event": "storage.sample", "aggregation": "max",
            "property": "gb", "filter": {"region": ["eu", "us"]}
        }))
        .unwrap();
        let c = Catalog::new(vec![custom]).unwrap();
        assert!(c.accepts("storage.sample"));
        assert!(!c.accepts("storage.other"));
        let (hit, _) = c.contributions(&event("storage.sample", json!({"gb": "2.5", "region": "eu"})));
        assert_eq!(hit.len(), 1);
        let (miss, _) = c.contributions(&event("storage.sample", json!({"gb": "2.5", "region": "ap"})));
        assert!(miss.is_empty());
    }

    #[test]
    fn broken_down_meters_carry_their_group_values() {
        let c = Catalog::new(vec![]).unwrap();
        let e = event("agent.invocation", json!({"model": "m-1", "input_tokens": 1, "output_tokens": 2}));
        let (contribs, _) = c.contributions(&e);
        let groups = c.groups(&contribs, &e);
        assert_eq!(groups.len(), 1, "agent_tokens by model; agent_invocations is not broken down");
        assert_eq!(c_name(&c_meters(), groups[0].0), "agent_tokens");
        assert_eq!(groups[0].1, vec!["m-1".to_string()]);
        let login = event("user.login", json!({"user_id": "u"}));
        assert!(c.groups(&c.contributions(&login).0, &login).is_empty());
        // A custom meter by two properties; a missing one is the empty value.
        let custom: MeterDef = serde_json::from_value(json!({
            "name": "gb", "event": "storage.sample", "aggregation": "sum", "property": "gb",
            "group_by": ["region", "tier"]
        }))
        .unwrap();
        let c = Catalog::new(vec![custom]).unwrap();
        let e = event("storage.sample", json!({"gb": 2, "region": "eu", "tier": 3}));
        let (contribs, _) = c.contributions(&e);
        assert_eq!(c.groups(&contribs, &e)[0].1, vec!["eu".to_string(), "3".to_string()]);
        let e = event("storage.sample", json!({"gb": 2}));
        assert_eq!(c.groups(&c.contributions(&e).0, &e)[0].1, vec![String::new(), String::new()]);
    }

    #[test]
    fn a_record_viewed_in_place_meters_as_its_decoded_event() {
        let customs = [
            json!({"name": "gb_max", "event": "storage.sample", "aggregation": "max", "property": "gb",
                   "filter": {"region": ["eu", "us"]}}),
            json!({"name": "gb", "event": "storage.sample", "aggregation": "sum", "property": ["gb", "extra"],
                   "group_by": ["region", "tier"]}),
            json!({"name": "gb_last", "event": "storage.sample", "aggregation": "latest", "property": "gb"}),
            json!({"name": "hosts", "event": "storage.sample", "aggregation": "unique_count", "property": "host"}),
        ];
        let c = Catalog::new(customs.into_iter().map(|m| serde_json::from_value(m).unwrap()).collect()).unwrap();
        let events = [
            event("agent.invocation", json!({"model": "m-1", "input_tokens": 10, "output_tokens": "5"})),
            event("agent.invocation", json!({"input_tokens": 1})),
            event("user.login", json!({"user_id": "u-7", "other": [1, {"x": null}]})),
            event("api.call", json!({"route": "/v1", "method": "GET", "status": 200})),
            event("work_order.created", json!({})),
            event("storage.sample", json!({"gb": "2.50", "extra": 1e2, "region": "eu", "tier": 3, "host": 4.0})),
            event("storage.sample", json!({"gb": 0.1, "region": "ap", "host": true})),
            event("storage.sample", json!({"gb": "x", "extra": null, "host": ""})),
            event("unknown.code", json!({"gb": 1})),
        ];
        let (mut metered, mut skips, mut grouped) = (0, 0, 0);
        for e in &events {
            let json = serde_json::to_vec(e).unwrap();
            for bytes in [e.encode(), json] {
                let (contributions, skipped) = c.contributions(e);
                let groups = c.groups(&contributions, e);
                let viewed = Event::view(&bytes, |v| {
                    let (contributions, skipped) = c.contributions_of(v.code, v);
                    let groups = c.groups_of(&contributions, v);
                    (contributions, skipped, groups)
                })
                .unwrap();
                (metered, skips, grouped) = (metered + contributions.len(), skips + skipped, grouped + groups.len());
                assert_eq!(viewed, (contributions, skipped, groups), "{e:?}");
            }
        }
        assert_eq!((metered, skips, grouped), (2 * 12, 2 * 5, 2 * 3), "what the events reach");
    }

    #[test]
    fn group_by_is_refused_where_it_cannot_add_up() {
        let refused = |v: Value| Catalog::new(vec![serde_json::from_value(v).unwrap()]).unwrap_err().to_string();
        let max = refused(json!({"name": "m", "event": "x", "aggregation": "max", "property": "v", "group_by": "r"}));
        assert!(max.contains("group_by: only count and sum meters"), "{max}");
        let twice = refused(json!({"name": "m", "event": "x", "aggregation": "count", "group_by": ["r", "r"]}));
        assert!(twice.contains("each property is named once"), "{twice}");
        let many =
            refused(json!({"name": "m", "event": "x", "aggregation": "count", "group_by": ["a","b","c","d","e"]}));
        assert!(many.contains("at most 4"), "{many}");
    }

    #[test]
    fn bad_meter_configs_are_refused() {
        let bad = MeterDef::new("Bad Name", "x", Aggregation::Count, &[], "");
        assert!(Catalog::new(vec![bad]).is_err());
        let no_prop = MeterDef::new("s", "x", Aggregation::Sum, &[], "");
        assert!(Catalog::new(vec![no_prop]).is_err());
    }

    #[test]
    fn a_sum_that_would_round_is_an_overflow() {
        let mut t = Tally { value: Some(Decimal::from_str_exact("10000000000000000000").unwrap()), latest: None };
        let tiny = Decimal::from_str_exact("0.000000001").unwrap();
        t.add(&Contribution::Sum(tiny), 0, "a").unwrap();
        assert_eq!(t.value.unwrap().to_string(), "10000000000000000000.000000001");
        let mut big = Tally { value: Some(Decimal::from_str_exact("100000000000000000000").unwrap()), latest: None };
        assert_eq!(big.add(&Contribution::Sum(tiny), 0, "a"), Err(Overflow));
    }

    #[test]
    fn tally_is_order_independent() {
        let items =
            [(Contribution::Latest(Decimal::from(3)), 5, "b"), (Contribution::Latest(Decimal::from(7)), 5, "a")];
        let mut fwd = Tally::default();
        let mut rev = Tally::default();
        for (c, t, id) in &items {
            fwd.add(c, *t, id).unwrap();
        }
        for (c, t, id) in items.iter().rev() {
            rev.add(c, *t, id).unwrap();
        }
        assert_eq!(fwd, rev);
        assert_eq!(fwd.value, Some(Decimal::from(3)));
    }
}
