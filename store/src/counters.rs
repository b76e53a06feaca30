//! The live counters' keys and cached values, one definition for every backend that folds a batch
//! in Rust (SQLite, Postgres): a batch looks its counters up by borrowed keys ([`KeyRef`],
//! [`GroupRef`]) and copies a key only when it first adds to it.

use hashbrown::Equivalent;
use meter_schemas::Tally;
use std::hash::{Hash, Hasher};

/// `(tenant, meter, bucket)`, a bucket being a period `YYYY-MM` or a day `YYYY-MM-DD`.
pub(crate) type Key = (String, String, String);

/// `(tenant, period, meter, property, value)`: one value of a broken-down meter's property.
pub(crate) type GroupKey = (String, String, String, String, String);

/// Counters by key (hashbrown's map: a batch looks its keys up by reference).
pub(crate) type Counters<K> = hashbrown::HashMap<K, Counter>;

/// A counter's tally and, once it is stored, its row's id (rewritten by id).
#[derive(Clone, Debug, Default)]
pub(crate) struct Counter {
    pub(crate) tally: Tally,
    pub(crate) id: Option<i64>,
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
    use std::hash::BuildHasher;

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
