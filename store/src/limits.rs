//! What a hard-limit check at ingest reads of the live counters: for each tenant and period a
//! request touches, which of its event ids are counted already, the period values of the
//! limited meters, and which unique values those meters have counted. One read serves a whole
//! request, from one snapshot, so the ids and the values always agree.

use rust_decimal::Decimal;
use std::collections::{HashMap, HashSet};

/// One tenant's period, as a hard-limit check asks for it.
#[derive(Clone, Debug, Default)]
pub struct LimitQuery {
    /// The tenant.
    pub tenant: String,
    /// The period's bucket (`YYYY-MM`).
    pub bucket: String,
    /// Event ids to look up among those counted.
    pub ids: Vec<String>,
    /// Limited meters, each with the unique values to look up among its counted ones.
    pub meters: Vec<(String, Vec<String>)>,
}

/// The answers to a request's [`LimitQuery`]s, from one snapshot.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LimitSnapshot {
    /// How far the counters are in that snapshot: the sum of every partition's next offset.
    /// It never decreases, so an id counted at one `progress` is counted at every later one.
    pub progress: u64,
    /// One per query, in order.
    pub states: Vec<LimitState>,
}

/// The answer to a [`LimitQuery`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LimitState {
    /// The ids counted already.
    pub counted: HashSet<String>,
    /// Each meter's period value (absent: nothing counted).
    pub values: HashMap<String, Decimal>,
    /// Each meter's unique values counted already, of those asked.
    pub known: HashMap<String, HashSet<String>>,
}

/// An accepted event held against its tenant's hard limits until it is counted, as a store that
/// shares holds between processes keeps it: its id and what it adds (the caller's own text).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hold {
    /// The event's id.
    pub id: String,
    /// What it adds to the limited meters, as the caller wrote it.
    pub adds: String,
}

/// A shared hard-limit check's decision: given the snapshot and, per query, the holds not
/// counted in it, the holds to keep per query (the events accepted now) and the refusals; or
/// why a hold cannot be read (nothing is kept then).
pub type Decide =
    Box<dyn FnOnce(&LimitSnapshot, &[Vec<Hold>]) -> Result<(Vec<Vec<Hold>>, Vec<(usize, String)>), String> + Send>;
