//! The live counters' keys and cached values, one definition for every backend that folds a batch
//! in Rust (SQLite, Postgres): a batch looks its counters up by borrowed keys ([`KeyRef`],
//! [`GroupRef`]) and copies a key only when it first adds to it. [`Cache`] keeps the committed
//! counters between batches, and a batch adds to them in place.

use crate::Error;
use hashbrown::Equivalent;
use meter_schemas::Tally;
use std::hash::{Hash, Hasher};
use std::sync::{Mutex, MutexGuard};

type Indexed<K> = indexmap::IndexMap<K, (Counter, u64), hashbrown::DefaultHashBuilder>;

/// `(tenant, meter, bucket)`, a bucket being a period `YYYY-MM` or a day `YYYY-MM-DD`.
pub(crate) type Key = (String, String, String);

/// `(tenant, period, meter, property, value)`: one value of a broken-down meter's property.
pub(crate) type GroupKey = (String, String, String, String, String);

/// A counter's tally and, once it is stored, its row's id (rewritten by id).
#[derive(Clone, Debug, Default)]
pub(crate) struct Counter {
    pub(crate) tally: Tally,
    pub(crate) id: Option<i64>,
}

/// The committed counters by key, kept from batch to batch, which a batch adds to in place: it
/// finds each by reference (one hash, no copy of a key it has met before) and lists the ones it
/// touched, each once. A batch that fails must [`Cache::clear`] it, since its counters were
/// changed in place (the database rolled back has the values).
pub(crate) struct Cache<K> {
    /// Each counter with the number of the batch that last touched it.
    map: Indexed<K>,
    /// The places in `map` of the counters this batch touched, in the order it met them.
    touched: Vec<usize>,
    /// This batch's number.
    batch: u64,
}

impl<K: Hash + Eq> Default for Cache<K> {
    fn default() -> Self {
        Cache { map: Indexed::default(), touched: Vec::new(), batch: 0 }
    }
}

impl<K: Hash + Eq> Cache<K> {
    /// Starts a batch: none of the counters is touched yet. Past `limit` counters the cache
    /// starts over (the database has every value).
    pub(crate) fn begin(&mut self, limit: usize) {
        self.batch += 1;
        self.touched.clear();
        if self.map.len() > limit {
            self.map.clear();
        }
    }

    /// Locks `cache`. One a batch panicked while holding (poisoned) may hold counters it changed
    /// in place and never stored: it is emptied, and no longer poisoned.
    pub(crate) fn lock(cache: &Mutex<Self>) -> MutexGuard<'_, Self> {
        lock_or_clear(cache, Self::clear)
    }

    /// Forgets every counter (after a failed batch, or when another writer may have written).
    pub(crate) fn clear(&mut self) {
        self.map.clear();
        self.touched.clear();
    }

    /// The tally of `key` for this batch to add to: the cached one, else the one `load` reads
    /// (with its row's id, if it has a row), kept under a copy of the key.
    pub(crate) fn current<Q>(
        &mut self,
        key: &Q,
        load: impl FnOnce(&Q) -> Result<Counter, Error>,
    ) -> Result<&mut Tally, Error>
    where
        Q: Hash + Equivalent<K>,
        for<'q> &'q Q: Into<K>,
    {
        let Cache { map, touched, batch } = self;
        let at = match map.get_index_of(key) {
            Some(at) => at,
            None => map.insert_full(key.into(), (load(key)?, 0)).0,
        };
        let (_, (counter, by)) = map.get_index_mut(at).expect("a place the map just gave");
        if *by != *batch {
            *by = *batch;
            touched.push(at);
        }
        Ok(&mut counter.tally)
    }

    /// The place of `key`'s counter, for a batch that finds each of its counters once, reads those
    /// the cache lacks in one query, then adds to them by place ([`Cache::at`]): `true` with it
    /// when the cache lacked it and holds an empty counter there now, untouched, to be replaced
    /// by what the database has ([`Cache::load`]) before the batch adds to it. Places stay put
    /// until the next [`Cache::begin`] or [`Cache::clear`].
    pub(crate) fn slot<Q>(&mut self, key: &Q) -> (usize, bool)
    where
        Q: Hash + Equivalent<K>,
        for<'q> &'q Q: Into<K>,
    {
        match self.map.get_index_of(key) {
            Some(at) => (at, false),
            None => (self.map.insert_full(key.into(), (Counter::default(), 0)).0, true),
        }
    }

    /// The key at `at`, a place [`Cache::slot`] gave.
    pub(crate) fn key_at(&self, at: usize) -> &K {
        self.map.get_index(at).expect("a place the cache gave").0
    }

    /// Puts the stored `counter` of `key` in its place, which [`Cache::slot`] gave and left
    /// empty; `false` if the cache has no place for `key`.
    pub(crate) fn load<Q: Hash + Equivalent<K>>(&mut self, key: &Q, counter: Counter) -> bool {
        match self.map.get_mut(key) {
            Some((held, _)) => {
                *held = counter;
                true
            }
            None => false,
        }
    }

    /// The tally at `at` (a place [`Cache::slot`] gave) for this batch to add to.
    pub(crate) fn at(&mut self, at: usize) -> &mut Tally {
        let Cache { map, touched, batch } = self;
        let (_, (counter, by)) = map.get_index_mut(at).expect("a place the cache gave");
        if *by != *batch {
            *by = *batch;
            touched.push(at);
        }
        &mut counter.tally
    }

    /// The counter of `key`, if cached (to give it its new row's id).
    pub(crate) fn get_mut<Q: Hash + Equivalent<K>>(&mut self, key: &Q) -> Option<&mut Counter> {
        self.map.get_mut(key).map(|(counter, _)| counter)
    }

    /// The counters this batch touched.
    pub(crate) fn touched(&self) -> impl Iterator<Item = (&K, &Counter)> {
        self.touched.iter().filter_map(|&at| self.map.get_index(at)).map(|(k, (c, _))| (k, c))
    }

    /// Hands `write` each counter this batch touched: those with a row's id first, in the order
    /// met, then the new ones in key order, so a tenant's new counters follow each other.
    pub(crate) fn write_touched(
        &mut self,
        mut write: impl FnMut(&K, &mut Counter) -> Result<(), Error>,
    ) -> Result<(), Error>
    where
        K: Ord,
    {
        let Cache { map, touched, .. } = self;
        let mut new = Vec::new();
        for &at in touched.iter() {
            let Some((key, (counter, _))) = map.get_index_mut(at) else { continue };
            if counter.id.is_some() {
                write(key, counter)?;
            } else {
                new.push(at);
            }
        }
        // Only the new ones are sorted (few once a tenant's counters exist).
        new.sort_unstable_by(|&a, &b| map.get_index(a).map(|e| e.0).cmp(&map.get_index(b).map(|e| e.0)));
        for at in new {
            if let Some((key, (counter, _))) = map.get_index_mut(at) {
                write(key, counter)?;
            }
        }
        Ok(())
    }
}

/// Locks `held`. One a batch panicked while holding (poisoned) may hold what the batch changed in
/// place and never stored: `clear` empties it, and it is no longer poisoned.
pub(crate) fn lock_or_clear<T>(held: &Mutex<T>, clear: impl FnOnce(&mut T)) -> MutexGuard<'_, T> {
    match held.lock() {
        Ok(guard) => guard,
        Err(poisoned) => {
            let mut guard = poisoned.into_inner();
            clear(&mut guard);
            held.clear_poison();
            guard
        }
    }
}

/// A [`Key`] looked up without copying its strings: hashes and compares as the key.
pub(crate) struct KeyRef<'a>(pub(crate) &'a str, pub(crate) &'a str, pub(crate) &'a str);

/// A [`GroupKey`] looked up without copying its strings.
pub(crate) struct GroupRef<'a>(
    pub(crate) &'a str,
    pub(crate) &'a str,
    pub(crate) &'a str,
    pub(crate) &'a str,
    pub(crate) &'a str,
);

impl Hash for KeyRef<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (self.0, self.1, self.2).hash(state);
    }
}

impl Equivalent<Key> for KeyRef<'_> {
    fn equivalent(&self, k: &Key) -> bool {
        (self.0, self.1, self.2) == (k.0.as_str(), k.1.as_str(), k.2.as_str())
    }
}

impl From<&KeyRef<'_>> for Key {
    fn from(k: &KeyRef<'_>) -> Key {
        (k.0.to_string(), k.1.to_string(), k.2.to_string())
    }
}

impl Hash for GroupRef<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (self.0, self.1, self.2, self.3, self.4).hash(state);
    }
}

impl Equivalent<GroupKey> for GroupRef<'_> {
    fn equivalent(&self, k: &GroupKey) -> bool {
        (self.0, self.1, self.2, self.3, self.4)
            == (k.0.as_str(), k.1.as_str(), k.2.as_str(), k.3.as_str(), k.4.as_str())
    }
}

impl From<&GroupRef<'_>> for GroupKey {
    fn from(k: &GroupRef<'_>) -> GroupKey {
        (k.0.to_string(), k.1.to_string(), k.2.to_string(), k.3.to_string(), k.4.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hashbrown::HashSet;
    use meter_schemas::Contribution;
    use std::hash::BuildHasher;

    fn touched(cache: &Cache<Key>) -> Vec<(String, String)> {
        cache.touched().map(|(k, c)| (k.0.clone(), c.tally.value.map(|v| v.to_string()).unwrap_or_default())).collect()
    }

    /// A batch adds to the cached counters in place, loads only the keys the cache lacks, and
    /// lists each counter it touched once; the next batch starts with none touched and keeps the
    /// values; past its limit the cache starts over.
    #[test]
    fn a_batch_adds_in_place_and_lists_what_it_touched_once() {
        let mut cache: Cache<Key> = Cache::default();
        let loads = std::cell::Cell::new(0);
        let load = |_: &KeyRef<'_>| {
            loads.set(loads.get() + 1);
            Ok(Counter::default())
        };
        cache.begin(10);
        for t in ["b", "a", "b"] {
            cache.current(&KeyRef(t, "m", "2026-11"), load).unwrap().add(&Contribution::Count, 0, "e").unwrap();
        }
        assert_eq!(touched(&cache), [("b".into(), "2".into()), ("a".into(), "1".into())]);
        cache.begin(10);
        assert!(touched(&cache).is_empty());
        cache.current(&KeyRef("a", "m", "2026-11"), load).unwrap().add(&Contribution::Count, 0, "e").unwrap();
        assert_eq!(touched(&cache), [("a".into(), "2".into())]);
        assert_eq!(loads.get(), 2, "a key the cache has is not loaded again");
        cache.begin(1);
        cache.current(&KeyRef("a", "m", "2026-11"), load).unwrap();
        assert_eq!(loads.get(), 3, "past its limit the cache starts over");
        cache.clear();
        assert!(touched(&cache).is_empty());
    }

    /// A batch that panicked while adding in place leaves the lock poisoned: the next lock finds
    /// the cache empty (the database never had those values) and no longer poisoned.
    #[test]
    fn a_cache_a_batch_panicked_in_is_emptied() {
        let cache: Mutex<Cache<Key>> = Mutex::default();
        Cache::lock(&cache).begin(10);
        Cache::lock(&cache).current(&KeyRef("a", "m", "2026-11"), |_| Ok(Counter::default())).unwrap();
        let panicked = std::panic::catch_unwind(|| {
            let mut held = Cache::lock(&cache);
            held.current(&KeyRef("b", "m", "2026-11"), |_| Ok(Counter::default())).unwrap();
            panic!("a batch fails half-way");
        });
        assert!(panicked.is_err() && cache.is_poisoned());
        let held = Cache::lock(&cache);
        assert!(held.map.is_empty() && held.touched().next().is_none());
        drop(held);
        assert!(!cache.is_poisoned());
    }

    /// A batch that finds its counters' places first: a place is given once per key, an empty
    /// untouched counter stands in for one the cache lacked until the stored one is put there, and
    /// adding by place touches each counter once.
    #[test]
    fn counters_found_by_place_are_read_once_and_touched_when_added_to() {
        let mut cache: Cache<Key> = Cache::default();
        let stored = |v: i64, id| Counter { tally: Tally { value: Some(v.into()), latest: None }, id: Some(id) };
        cache.begin(10);
        cache.current(&KeyRef("a", "m", "2026-11"), |_| Ok(stored(1, 1))).unwrap();
        cache.begin(10);
        let (a, a_new) = cache.slot(&KeyRef("a", "m", "2026-11"));
        let (b, b_new) = cache.slot(&KeyRef("b", "m", "2026-11"));
        assert!(!a_new && b_new, "only the key the cache lacked is to be read");
        assert_eq!(cache.slot(&KeyRef("b", "m", "2026-11")), (b, false), "a key's place is given once");
        assert!(touched(&cache).is_empty(), "a place found is not a counter touched");
        assert_eq!(cache.key_at(b), &("b".to_string(), "m".to_string(), "2026-11".to_string()));
        assert!(cache.load(&KeyRef("b", "m", "2026-11"), stored(5, 2)));
        assert!(!cache.load(&KeyRef("c", "m", "2026-11"), stored(9, 3)), "no place, nothing kept");
        for at in [b, a, b] {
            cache.at(at).add(&Contribution::Count, 0, "e").unwrap();
        }
        assert_eq!(touched(&cache), [("b".into(), "7".into()), ("a".into(), "2".into())]);
        assert_eq!(cache.get_mut(&KeyRef("b", "m", "2026-11")).unwrap().id, Some(2));
    }

    /// Counters with a row are written first, in the order met; new ones after them, by key.
    #[test]
    fn counters_with_a_row_are_written_first_and_new_ones_by_key() {
        let mut cache: Cache<Key> = Cache::default();
        cache.begin(10);
        let touched = [("d", "m", None), ("c", "m", Some(7)), ("a", "n", None), ("b", "m", Some(3)), ("a", "m", None)];
        for (t, m, id) in touched {
            cache.current(&KeyRef(t, m, "2026-11"), |_| Ok(Counter { tally: Tally::default(), id })).unwrap();
        }
        let mut order = Vec::new();
        cache
            .write_touched(|k, c| {
                order.push(k.0.clone() + &k.1);
                c.id.get_or_insert(1);
                Ok(())
            })
            .unwrap();
        assert_eq!(order, ["cm", "bm", "am", "an", "dm"]);
        assert!(cache.touched().all(|(_, c)| c.id.is_some()), "the ids given stay with the counters");
    }

    /// A batch finds its counters by borrowed keys: each must hash and compare as the owned key,
    /// or a batch would miss the counters the cache holds for it and read them again.
    #[test]
    fn borrowed_keys_find_their_owned_keys() {
        let owned: Key = ("acme".into(), "tokens".into(), "2026-11".into());
        let hasher = hashbrown::DefaultHashBuilder::default();
        assert_eq!(hasher.hash_one(KeyRef("acme", "tokens", "2026-11")), hasher.hash_one(&owned));
        assert_eq!(Key::from(&KeyRef("acme", "tokens", "2026-11")), owned);
        let tallies: HashSet<Key> = [owned].into_iter().collect();
        assert!(tallies.contains(&KeyRef("acme", "tokens", "2026-11")));
        assert!(!tallies.contains(&KeyRef("acme", "tokens2", "026-11")));
        let group: GroupKey = ("acme".into(), "2026-11".into(), "tokens".into(), "model".into(), "m1".into());
        assert_eq!(hasher.hash_one(GroupRef("acme", "2026-11", "tokens", "model", "m1")), hasher.hash_one(&group));
        assert_eq!(GroupKey::from(&GroupRef("acme", "2026-11", "tokens", "model", "m1")), group);
        let groups: HashSet<GroupKey> = [group].into_iter().collect();
        assert!(groups.contains(&GroupRef("acme", "2026-11", "tokens", "model", "m1")));
        assert!(!groups.contains(&GroupRef("acme", "2026-11", "tokens", "mode", "lm1")));
    }
}
